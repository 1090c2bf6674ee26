"""SynthRooms-QA: VSI-Bench-style spatial questions with exact answers, generated from SynthRooms scenes.

Every SynthRooms scene (:func:`~spa3_vlm.data.synthrooms.load_synthrooms`) is a short video of a room with
exactly known furniture boxes, so the ten VSI-Bench question types (eight tasks) can be asked with exact
ground truth, in VSI-Bench's wording and answer formats:

=============================  ==========================================================================
question type                  ground truth
=============================  ==========================================================================
object_counting                number of instances of a category (int), all of them visible in the video;
                               one category for each count a scene has, in scenes with two counts or more
                               (VSI-Bench asks only about categories with >= 2 instances; SynthRooms rooms
                               rarely hold 3 of a kind, so that rule made "2" the answer to 83 %)
object_abs_distance            closest-point distance between the two objects' boxes, metres, 2 decimals
object_size_estimation         longest side of the object's box, centimetres, rounded to an int
room_size_estimation           floor area ``w * d`` of the (box-shaped) room, m², 2 decimals
object_rel_distance            letter of the category closest to the anchor object (closest instance,
                               box distance); the closest beats the runner-up by >= ``REL_DISTANCE_GAP``
object_rel_direction_easy      left / right
object_rel_direction_medium    left / right / back (back: the turn to face it is >= 135°)
object_rel_direction_hard      front-left / front-right / back-left / back-right (quadrants)
route_planning                 the sequence of turns ("Turn Left", "Turn Right", "Turn Back")
obj_appearance_order           the categories sorted by the first frame in which they are visible
=============================  ==========================================================================

Geometry (world frame z up, metres; see :mod:`.synthrooms_scene`). An object is its upright oriented
bounding box: footprint rectangle (``center[:2]``, ``size[:2]``, rotated by ``yaw``) times the height
interval ``center[2] ± size[2] / 2``. Because both boxes are such prisms, the exact distance between their
closest points separates into a horizontal and a vertical part: ``hypot(d_xy, d_z)``, with ``d_xy`` the
distance between the two footprint rectangles (0 if they overlap; otherwise the smallest vertex-to-edge
distance, exact for convex polygons) and ``d_z`` the gap between the height intervals. (VSI-Bench samples
points inside the boxes and takes the smallest pairwise distance, which approximates the same quantity.)

Directions are horizontal: standing at the positioning object's footprint centre ``P`` and facing the
facing object's centre ``F``, the query ``Q`` is at the signed angle from ``F - P`` to ``Q - P``
(counter-clockwise, i.e. to the left, positive). A question is kept only if that angle is at least
``DIRECTION_MARGIN_DEG`` away from every class boundary, both objects are at least ``MIN_DIRECTION_RANGE``
from ``P``, and the class is the same when standing at any corner of the positioning object's footprint.
Routes walk straight between footprint centres (obstacles are ignored): at the start the robot faces the
facing object, then turns towards each next object; a turn is "Turn Left"/"Turn Right" for
30°–120° and "Turn Back" for >= 150°; routes with any other turn (nearly straight, or between side and
back) or a leg shorter than ``MIN_ROUTE_SEGMENT`` are not asked.

Selection rules: a question that names a single object ("the sofa") only uses objects whose category is
unique in the scene and that are visible in at least one frame. Category-level mentions (counting, the
options of relative distance) need every instance of the category to be visible; appearance order uses
the first frame in which any instance of the category is visible, and only categories whose first frames
all differ. Everything is deterministic given ``seed`` and the scenes (each scene draws from its own
random stream, keyed on its SynthRooms seed).

Output formats:

* :func:`synthrooms_qa_records` returns VSI-Bench records (the ``nyu-visionx/VSI-Bench`` field names: ``id``,
  ``dataset``, ``scene_name``, ``question_type``, ``question``, ``options`` (``None`` for numerical
  types, else ``["A. ...", ...]``), ``ground_truth`` (a string: the number, or the option letter)) plus
  ``frames``, the row index of the scene in the scenes dataset. ``id`` is a string here
  (``"<scene_id>-q<k>"``), VSI-Bench uses ints; :func:`~spa3_vlm.evaluation.scoring.vsibench_scores`
  takes both.
* :func:`build_synthrooms_qa` returns a ``datasets.Dataset`` with those columns plus the scene's frames
  (``images``) and ``messages`` in TRL's vision chat format, whose user text is exactly
  :func:`~spa3_vlm.vsibench.build_vsibench_prompt` (the evaluation prompt) and whose assistant
  text is the ground truth.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..vsibench import QUESTION_TYPES, validate_record, vsibench_messages
from .synthrooms_scene import rectangles_overlap

__all__ = [
    "DATASET_NAME",
    "QA_FORMAT_VERSION",
    "box_distance",
    "build_synthrooms_qa",
    "footprint_corners",
    "horizontal_angle_deg",
    "route_turns",
    "synthrooms_qa_features",
    "synthrooms_qa_records",
]

DATASET_NAME = "synthrooms"
# Part of the cache fingerprint of build_synthrooms_qa: bump whenever generated questions change.
QA_FORMAT_VERSION = 2  # 2: counting asks about every count, 1 included

MIN_ABS_DISTANCE = 0.10  # m; below this, 2-decimal rounding alone costs > 5 % relative accuracy
REL_DISTANCE_GAP = 0.15  # m between the closest option and the runner-up (VSI-Bench: 15-30 cm)
DIRECTION_MARGIN_DEG = 15.0
MIN_DIRECTION_RANGE = 0.5  # m from the positioning object's centre to the facing / query object
TURN_SIDE_RANGE_DEG = (30.0, 120.0)
TURN_BACK_MIN_DEG = 150.0
MIN_ROUTE_SEGMENT = 0.5  # m
ROUTE_TRIES = 200
SUBSET_TRIES = 30

COUNTING_TEMPLATE = "How many {category}(s) are in this room?"
ABS_DISTANCE_TEMPLATE = (
    "Measuring from the closest point of each object, what is the direct distance between the {first} and the "
    "{second} (in meters)?\nIf there are multiple instances of an object category, use the pair of instances "
    "with the shortest distance."
)
SIZE_TEMPLATE = (
    "What is the length of the longest dimension (length, width, or height) of the {category}, measured in "
    "centimeters?"
)
ROOM_SIZE_TEMPLATE = (
    "What is the size of this room (in square meters)?\n"
    "If multiple rooms are shown, estimate the size of the combined space."
)
REL_DISTANCE_TEMPLATE = (
    "Measuring from the closest point of each object, which of these objects ({choices}) is the closest to the "
    "{anchor}?\nIf there are multiple instances of an object category, measure to the closest."
)
DIRECTION_EASY_TEMPLATE = (
    "If I am standing by the {position} and facing the {facing}, is the {query} to the left or the right of the "
    "{facing}?"
)
DIRECTION_MEDIUM_TEMPLATE = (
    "If I am standing by the {position} and facing the {facing}, is the {query} to my left, right, or back?\n"
    "An object is to my back if I would have to turn at least 135 degrees in order to face it."
)
DIRECTION_HARD_TEMPLATE = (
    "If I am standing by the {position} and facing the {facing}, is the {query} to my front-left, front-right, "
    "back-left, or back-right?\nThe directions refer to the quadrants of a Cartesian plane (if I am standing at "
    "the origin and facing along the positive y-axis)."
)
ROUTE_TEMPLATE = (
    "You are a robot beginning at the {start} facing the {facing}. You want to navigate to the {destination}. "
    "You will perform the following actions (Note: for each [please fill in], choose either 'turn back,' "
    "'turn left,' or 'turn right.'): {actions} You have reached the final destination."
)
APPEARANCE_TEMPLATE = (
    "What will be the first-time appearance order of the following categories in the video: {categories}?"
)

DIRECTION_CLASSES = {
    "object_rel_direction_easy": ("left", "right"),
    "object_rel_direction_medium": ("left", "right", "back"),
    "object_rel_direction_hard": ("front-left", "front-right", "back-left", "back-right"),
}
TURNS = ("Turn Left", "Turn Right", "Turn Back")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SCENE_COLUMNS = ("scene_id", "seed", "room_size", "objects", "visible_objects")


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def footprint_corners(center: Sequence[float], size: Sequence[float], yaw: float) -> np.ndarray:
    """``[4, 2]`` world xy corners of an upright box's footprint (``center[:2]``, ``size[:2]``, ``yaw``)."""
    cos, sin = math.cos(yaw), math.sin(yaw)
    rotation = np.array([[cos, -sin], [sin, cos]])
    half = np.asarray(size[:2], dtype=np.float64) / 2
    signs = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    return np.asarray(center[:2], dtype=np.float64) + (signs * half) @ rotation.T


def _points_to_segment(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    edge = end - start
    t = np.clip((points - start) @ edge / (edge @ edge), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[:, None] * edge), axis=-1)


def _footprint_distance(corners_a: np.ndarray, corners_b: np.ndarray) -> float:
    if rectangles_overlap(corners_a, corners_b):
        return 0.0
    # Two disjoint convex polygons are closest at a vertex of one and an edge of the other.
    best = math.inf
    for points, polygon in ((corners_a, corners_b), (corners_b, corners_a)):
        for i in range(4):
            best = min(best, float(_points_to_segment(points, polygon[i], polygon[(i + 1) % 4]).min()))
    return best


def box_distance(first: Mapping[str, Any], second: Mapping[str, Any]) -> float:
    """Exact distance (m) between the closest points of two upright oriented boxes.

    Each object is a mapping with ``center [3]``, ``size [3]`` and ``yaw`` (a SynthRooms ``objects`` entry).
    Returns 0 when the boxes intersect.
    """
    horizontal = _footprint_distance(
        footprint_corners(first["center"], first["size"], first["yaw"]),
        footprint_corners(second["center"], second["size"], second["yaw"]),
    )
    low_a, high_a = first["center"][2] - first["size"][2] / 2, first["center"][2] + first["size"][2] / 2
    low_b, high_b = second["center"][2] - second["size"][2] / 2, second["center"][2] + second["size"][2] / 2
    vertical = max(0.0, low_b - high_a, low_a - high_b)
    return math.hypot(horizontal, vertical)


def horizontal_angle_deg(origin: Sequence[float], toward: Sequence[float], query: Sequence[float]) -> float:
    """Signed horizontal angle (degrees, (-180, 180]) from ``toward - origin`` to ``query - origin``;
    positive is counter-clockwise seen from above, i.e. to the left of someone at ``origin`` facing ``toward``."""
    fx, fy = toward[0] - origin[0], toward[1] - origin[1]
    qx, qy = query[0] - origin[0], query[1] - origin[1]
    return math.degrees(math.atan2(fx * qy - fy * qx, fx * qx + fy * qy))


def _direction_class(angle: float, question_type: str, margin: float) -> Optional[str]:
    """The answer class of a signed angle, or ``None`` within ``margin`` degrees of a class boundary."""
    size = abs(angle)
    side = "left" if angle > 0 else "right"
    if question_type == "object_rel_direction_easy":
        return side if margin <= size <= 180.0 - margin else None
    if question_type == "object_rel_direction_medium":
        if size < margin or abs(size - 135.0) < margin:
            return None
        return "back" if size > 135.0 else side
    if size < margin or abs(size - 90.0) < margin or size > 180.0 - margin:
        return None
    return ("front-" if size < 90.0 else "back-") + side


def _turn(angle: float) -> Optional[str]:
    size = abs(angle)
    if TURN_SIDE_RANGE_DEG[0] <= size <= TURN_SIDE_RANGE_DEG[1]:
        return "Turn Left" if angle > 0 else "Turn Right"
    return "Turn Back" if size >= TURN_BACK_MIN_DEG else None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


# --------------------------------------------------------------------------------------------------
# Record validation and chat messages
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Scene view
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    id: int
    category: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float

    def __getitem__(self, key: str):  # lets box_distance take objects and dataset rows alike
        return getattr(self, key)

    @property
    def xy(self) -> tuple[float, float]:
        return self.center[0], self.center[1]


@dataclass
class _Scene:
    index: int
    name: str
    key: int  # random-stream key: the SynthRooms seed, or the row index for hand-made scenes
    room_size: tuple[float, float, float]
    objects: list[_Object]
    first_frame: dict[int, int]  # object id -> first frame where it is visible (absent: never visible)

    def __post_init__(self) -> None:
        self.by_category: dict[str, list[_Object]] = {}
        for obj in self.objects:
            self.by_category.setdefault(obj.category, []).append(obj)
        # Objects a question may name as "the <category>": unique category, seen at least once.
        self.named = [
            obj for obj in self.objects if len(self.by_category[obj.category]) == 1 and obj.id in self.first_frame
        ]
        # Categories a question may refer to as a whole: every instance seen.
        self.fully_visible = [c for c, objs in self.by_category.items() if all(o.id in self.first_frame for o in objs)]
        self._distances: dict[tuple[int, int], float] = {}

    def distance(self, a: _Object, b: _Object) -> float:
        key = (min(a.id, b.id), max(a.id, b.id))
        if key not in self._distances:
            self._distances[key] = box_distance(a, b)
        return self._distances[key]


_OBJECT_KEYS = ("id", "category", "center", "size", "yaw")
_MAX_SHOWN = 200  # characters of a bad value quoted in an error message


def _show(value: Any) -> str:
    """``repr`` of a bad value for an error message, cut to ``_MAX_SHOWN`` characters."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _scalar(value: Any) -> Any:
    """A 0-d numpy / torch value as its Python scalar (rows in ``datasets``' numpy or torch format hold
    those), a ``str`` subclass such as ``np.str_`` as a plain ``str``; anything else as it is."""
    if isinstance(value, str):
        return str(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _is_list(value: Any) -> bool:
    """A list-like field: a sequence that is not text, or an array / tensor of >= 1 dimension."""
    if not isinstance(value, (str, bytes)) and getattr(value, "ndim", None) is not None:
        return value.ndim >= 1
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _finite_float(value: Any) -> Optional[float]:
    """``float(value)`` for a finite real number (bool, text and None are not numbers), else ``None``."""
    value = _scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _vector3(value: Any, positive: bool = False) -> Optional[tuple[float, float, float]]:
    """The three floats of a list of 3 finite (and, if ``positive``, > 0) numbers, else ``None``."""
    if not _is_list(value) or len(value) != 3:
        return None
    numbers = [_finite_float(v) for v in value]
    if any(v is None or (positive and v <= 0) for v in numbers):
        return None
    x, y, z = numbers
    return x, y, z


def _parse_object(entry: Any, where: str) -> _Object:
    """One ``objects`` entry as an ``_Object``; ``where`` names the scene and the object's index."""
    if not isinstance(entry, Mapping):
        raise ValueError(
            f"{where}: an object must be a mapping with keys {list(_OBJECT_KEYS)}, "
            f"got {type(entry).__name__} {_show(entry)}"
        )
    where = f"{where} (id {_show(_scalar(entry.get('id')))})"
    missing = [key for key in _OBJECT_KEYS if key not in entry]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; an object needs {list(_OBJECT_KEYS)}")
    object_id = _scalar(entry["id"])
    if not (_is_int(object_id) and object_id >= 1):
        raise ValueError(
            f"{where}: 'id' must be an int >= 1 (0 is the room shell in the instance masks), got {_show(object_id)}"
        )
    category = _scalar(entry["category"])
    if not isinstance(category, str) or not category.strip():
        raise ValueError(f"{where}: 'category' must be a non-empty str, got {_show(category)}")
    center = _vector3(entry["center"])
    if center is None:
        raise ValueError(f"{where}: 'center' must be 3 finite numbers (x, y, z in metres), got {_show(entry['center'])}")
    size = _vector3(entry["size"], positive=True)
    if size is None:
        raise ValueError(f"{where}: 'size' must be 3 finite numbers > 0 (metres), got {_show(entry['size'])}")
    yaw = _finite_float(entry["yaw"])
    if yaw is None:
        raise ValueError(f"{where}: 'yaw' must be a finite number (radians), got {_show(entry['yaw'])}")
    return _Object(int(object_id), str(category), center, size, yaw)


def _visible_from_masks(instances: Any, ids: set[int], min_visible_pixels: int, where: str) -> list[list[int]]:
    """Per frame, the sorted ids covering at least ``min_visible_pixels`` pixels of the instance mask."""
    if not _is_list(instances):
        raise ValueError(f"{where}: 'instances' must be a list of per-frame masks, got {_show(instances)}")
    visible = []
    for frame, mask in enumerate(instances):
        try:
            array = np.asarray(mask)
        except ValueError:  # ragged nested lists
            array = np.asarray(None)
        if not np.issubdtype(array.dtype, np.integer) or array.ndim != 2 or (array.size and array.min() < 0):
            lowest = f", minimum {array.min()}" if array.size and np.issubdtype(array.dtype, np.number) else ""
            raise ValueError(
                f"{where}: 'instances' frame {frame} must be a 2-D mask of non-negative int ids (0 = room shell), "
                f"got dtype {array.dtype}, shape {array.shape}{lowest}"
            )
        counts = np.bincount(array.astype(np.int64).ravel(), minlength=max(ids, default=0) + 1)
        visible.append([k for k in sorted(ids) if counts[k] >= min_visible_pixels])
    return visible


def _first_frames(visible: Any, ids: set[int], where: str) -> dict[int, int]:
    """Object id -> first frame of ``visible_objects`` that lists it (checked: lists of known int ids)."""
    if not _is_list(visible):
        raise ValueError(
            f"{where}: 'visible_objects' must be a list with one list of object ids per frame, got {_show(visible)}"
        )
    first_frame: dict[int, int] = {}
    for frame, frame_ids in enumerate(visible):
        if not _is_list(frame_ids):
            raise ValueError(
                f"{where}: 'visible_objects' frame {frame} must be a list of int object ids, got {_show(frame_ids)}"
            )
        for object_id in map(_scalar, frame_ids):
            if not _is_int(object_id):
                raise ValueError(
                    f"{where}: 'visible_objects' frame {frame} lists {_show(object_id)}, which is not an int object id"
                )
            if int(object_id) not in ids:
                raise ValueError(
                    f"{where}: 'visible_objects' frame {frame} lists visible object {object_id}, which is not in "
                    f"objects (ids {sorted(ids)})"
                )
            first_frame.setdefault(int(object_id), frame)
    return first_frame


def _parse_scene(row: Mapping[str, Any], index: int, min_visible_pixels: int) -> _Scene:
    """Check every field of one scene row and view it as a ``_Scene``.

    Raises ``ValueError`` naming the scene (row index and ``scene_id``), the object (index and ``id``) where
    there is one, the field, the bad value and what is expected.
    """
    where = f"scene #{index} (scene_id {_show(_scalar(row.get('scene_id')))})"
    missing = [c for c in _SCENE_COLUMNS if c not in row and c != "seed"]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; a SynthRooms row has {list(_SCENE_COLUMNS)}")
    scene_id = _scalar(row["scene_id"])
    if not ((isinstance(scene_id, str) and scene_id.strip()) or _is_int(scene_id)):
        raise ValueError(f"{where}: 'scene_id' must be a non-empty str or an int, got {_show(scene_id)}")
    name = str(scene_id)
    seed = _scalar(row.get("seed"))
    if seed is not None and not _is_int(seed):
        raise ValueError(f"{where}: 'seed' must be an int or None, got {_show(seed)}")
    room = _vector3(row["room_size"], positive=True)
    if room is None:
        raise ValueError(
            f"{where}: 'room_size' must be 3 finite numbers > 0 (w, d, h in metres), got {_show(row['room_size'])}"
        )
    entries = row["objects"]
    if not _is_list(entries):
        raise ValueError(
            f"{where}: 'objects' must be a list of object mappings (keys {list(_OBJECT_KEYS)}), "
            f"got {type(entries).__name__} {_show(entries)}"
        )
    objects = [_parse_object(entry, f"{where} object #{k}") for k, entry in enumerate(entries)]
    ids = {obj.id for obj in objects}
    if len(ids) != len(objects):
        raise ValueError(f"{where}: object ids are not unique: {[obj.id for obj in objects]}")
    # visible_objects is checked even when the masks decide visibility: every field of the row is.
    first_frame = _first_frames(row["visible_objects"], ids, where)
    if min_visible_pixels > 1:
        if "instances" not in row:
            raise ValueError(f"{where}: min_visible_pixels > 1 needs the 'instances' masks")
        first_frame = {}
        for frame, frame_ids in enumerate(_visible_from_masks(row["instances"], ids, min_visible_pixels, where)):
            for object_id in frame_ids:
                first_frame.setdefault(object_id, frame)
    key = int(seed) if seed is not None and int(seed) >= 0 else index
    return _Scene(index, name, key, room, objects, first_frame)


# --------------------------------------------------------------------------------------------------
# Question generators: each returns candidate (question_type, question, options, ground_truth) tuples
# --------------------------------------------------------------------------------------------------


def _lettered(choices: Sequence[str]) -> list[str]:
    return [f"{_LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]


def _multiple_choice(question_type: str, question: str, choices: Sequence[str], answer: str):
    return question_type, question, _lettered(choices), _LETTERS[list(choices).index(answer)]


def _counting(scene: _Scene, rng: np.random.Generator) -> list:
    by_count: dict[int, list[str]] = {}
    for category in scene.fully_visible:
        by_count.setdefault(len(scene.by_category[category]), []).append(category)
    if len(by_count) < 2:
        return []  # every category has the same count: the answer would be the scene's only one
    # One category per count: a scene of many single objects and one pair asks "1" and "2" equally often.
    return [
        ("object_counting", COUNTING_TEMPLATE.format(category=categories[rng.integers(len(categories))]), None, str(count))
        for count, categories in sorted(by_count.items())
    ]


def _abs_distance(scene: _Scene, rng: np.random.Generator) -> list:
    out = []
    for a, b in itertools.combinations(scene.named, 2):
        distance = scene.distance(a, b)
        if distance < MIN_ABS_DISTANCE:
            continue
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        question = ABS_DISTANCE_TEMPLATE.format(first=first.category, second=second.category)
        out.append(("object_abs_distance", question, None, _format_number(distance, 2)))
    return out


def _size(scene: _Scene, rng: np.random.Generator) -> list:
    return [
        ("object_size_estimation", SIZE_TEMPLATE.format(category=obj.category), None, str(round(max(obj.size) * 100)))
        for obj in scene.named
    ]


def _room_size(scene: _Scene, rng: np.random.Generator) -> list:
    area = scene.room_size[0] * scene.room_size[1]
    return [("room_size_estimation", ROOM_SIZE_TEMPLATE, None, _format_number(area, 2))]


def _rel_distance(scene: _Scene, rng: np.random.Generator) -> list:
    out = []
    for anchor in scene.named:
        candidates = [c for c in scene.fully_visible if c != anchor.category]
        if len(candidates) < 3:
            continue
        distance = {c: min(scene.distance(anchor, obj) for obj in scene.by_category[c]) for c in candidates}
        num_choices = min(4, len(candidates))
        for _ in range(SUBSET_TRIES):
            choices = [candidates[i] for i in rng.choice(len(candidates), num_choices, replace=False)]
            ranked = sorted(distance[c] for c in choices)
            if ranked[1] - ranked[0] >= REL_DISTANCE_GAP:
                closest = min(choices, key=distance.__getitem__)
                question = REL_DISTANCE_TEMPLATE.format(choices=", ".join(choices), anchor=anchor.category)
                out.append(_multiple_choice("object_rel_distance", question, choices, closest))
                break
    return out


def _direction_answer(position: _Object, facing: _Object, query: _Object, question_type: str) -> Optional[str]:
    """The class of ``query`` seen from ``position`` facing ``facing``, if unambiguous (see module doc)."""
    for other in (facing, query):
        if math.dist(position.xy, other.xy) < MIN_DIRECTION_RANGE:
            return None
    angle = horizontal_angle_deg(position.xy, facing.xy, query.xy)
    answer = _direction_class(angle, question_type, DIRECTION_MARGIN_DEG)
    if answer is None:
        return None
    for corner in footprint_corners(position.center, position.size, position.yaw):
        if _direction_class(horizontal_angle_deg(corner, facing.xy, query.xy), question_type, 0.0) != answer:
            return None
    return answer


def _direction(question_type: str, template: str):
    def generate(scene: _Scene, rng: np.random.Generator) -> list:
        out = []
        for position, facing, query in itertools.permutations(scene.named, 3):
            answer = _direction_answer(position, facing, query, question_type)
            if answer is None:
                continue
            classes = DIRECTION_CLASSES[question_type]
            choices = [classes[i] for i in rng.permutation(len(classes))]
            question = template.format(position=position.category, facing=facing.category, query=query.category)
            out.append(_multiple_choice(question_type, question, choices, answer))
        return out

    return generate


def route_turns(
    start: Sequence[float], facing: Sequence[float], stops: Sequence[Sequence[float]]
) -> Optional[list[str]]:
    """Turns of a robot at ``start`` facing ``facing`` that walks straight to each of ``stops`` in turn (xy
    points): one turn before each leg. ``None`` if a turn is ambiguous or a leg shorter than
    ``MIN_ROUTE_SEGMENT`` (see module doc)."""
    turns, here, ahead = [], start, facing
    for stop in stops:
        if math.dist(here, stop) < MIN_ROUTE_SEGMENT or math.dist(here, ahead) < MIN_ROUTE_SEGMENT:
            return None
        turn = _turn(horizontal_angle_deg(here, ahead, stop))
        if turn is None:
            return None
        turns.append(turn)
        # Walking on from ``stop`` keeps the heading of the leg just walked.
        ahead = (2 * stop[0] - here[0], 2 * stop[1] - here[1])
        here = stop
    return turns


def _route(scene: _Scene, rng: np.random.Generator) -> list:
    named = scene.named
    out, seen = [], set()
    for _ in range(ROUTE_TRIES):
        max_waypoints = min(2, len(named) - 3)
        if max_waypoints < 1:
            break
        num_waypoints = int(rng.integers(1, max_waypoints + 1))
        picks = [named[i] for i in rng.choice(len(named), num_waypoints + 3, replace=False)]
        start, facing, stops = picks[0], picks[1], picks[2:]
        turns = route_turns(start.xy, facing.xy, [obj.xy for obj in stops])
        if turns is None:
            continue
        steps = []
        for k, stop in enumerate(stops):
            steps += [f"{2 * k + 1}. [please fill in]", f"{2 * k + 2}. Go forward until the {stop.category}"]
        question = ROUTE_TEMPLATE.format(
            start=start.category, facing=facing.category, destination=stops[-1].category, actions=" ".join(steps) + "."
        )
        if question in seen:
            continue
        seen.add(question)
        answer = ", ".join(turns)
        others = [", ".join(seq) for seq in itertools.product(TURNS, repeat=len(turns)) if ", ".join(seq) != answer]
        choices = [others[i] for i in rng.choice(len(others), min(3, len(others)), replace=False)] + [answer]
        choices = [choices[i] for i in rng.permutation(len(choices))]
        out.append(_multiple_choice("route_planning", question, choices, answer))
    return out


def _appearance_order(scene: _Scene, rng: np.random.Generator) -> list:
    first = {
        category: min(scene.first_frame[obj.id] for obj in objs if obj.id in scene.first_frame)
        for category, objs in scene.by_category.items()
        if any(obj.id in scene.first_frame for obj in objs)
    }
    categories = list(first)
    size = min(4, len(set(first.values())))
    if size < 3:
        return []
    out, seen = [], set()
    for _ in range(SUBSET_TRIES):
        listed = [categories[i] for i in rng.choice(len(categories), size, replace=False)]
        if len({first[c] for c in listed}) < size or frozenset(listed) in seen:
            continue
        seen.add(frozenset(listed))
        answer = ", ".join(sorted(listed, key=first.__getitem__))
        others = [", ".join(p) for p in itertools.permutations(listed) if ", ".join(p) != answer]
        choices = [others[i] for i in rng.choice(len(others), 3, replace=False)] + [answer]
        choices = [choices[i] for i in rng.permutation(len(choices))]
        question = APPEARANCE_TEMPLATE.format(categories=", ".join(listed))
        out.append(_multiple_choice("obj_appearance_order", question, choices, answer))
    return out


_GENERATORS = {
    "object_counting": _counting,
    "object_abs_distance": _abs_distance,
    "object_size_estimation": _size,
    "room_size_estimation": _room_size,
    "object_rel_distance": _rel_distance,
    "object_rel_direction_easy": _direction("object_rel_direction_easy", DIRECTION_EASY_TEMPLATE),
    "object_rel_direction_medium": _direction("object_rel_direction_medium", DIRECTION_MEDIUM_TEMPLATE),
    "object_rel_direction_hard": _direction("object_rel_direction_hard", DIRECTION_HARD_TEMPLATE),
    "route_planning": _route,
    "obj_appearance_order": _appearance_order,
}
assert set(_GENERATORS) == set(QUESTION_TYPES)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _scene_rows(scenes_dataset: Any, min_visible_pixels: int) -> Iterable[Mapping[str, Any]]:
    try:
        import datasets

        is_dataset = isinstance(scenes_dataset, datasets.Dataset)
    except ImportError:  # pragma: no cover - datasets is a dependency of the data extra
        is_dataset = False
    if is_dataset:
        columns = [c for c in _SCENE_COLUMNS if c in scenes_dataset.column_names]
        if min_visible_pixels > 1:
            if "instances" not in scenes_dataset.column_names:
                raise ValueError("min_visible_pixels > 1 needs the scenes' 'instances' column")
            masks = scenes_dataset.select_columns(["instances"]).with_format("numpy")
        view = scenes_dataset.select_columns(columns)  # skip decoding images and depth
        for index in range(len(view)):
            row = dict(view[index])
            if min_visible_pixels > 1:
                row["instances"] = masks[index]["instances"]
            yield row
        return
    if isinstance(scenes_dataset, (str, bytes, Mapping)) or not isinstance(scenes_dataset, Iterable):
        raise ValueError(
            "scenes_dataset must be a SynthRooms datasets.Dataset or a list of scene rows, "
            f"got {type(scenes_dataset).__name__}"
        )
    for index, row in enumerate(scenes_dataset):
        if not isinstance(row, Mapping):
            raise ValueError(
                f"scene #{index}: expected a mapping with {list(_SCENE_COLUMNS)}, got {type(row).__name__}"
            )
        yield row


def _check_question_types(question_types: Optional[Sequence[str]]) -> tuple[str, ...]:
    if question_types is None:
        return QUESTION_TYPES
    if isinstance(question_types, str):
        question_types = [question_types]
    unknown = [t for t in question_types if t not in QUESTION_TYPES]
    if unknown or not question_types:
        raise ValueError(f"question_types must be a non-empty subset of {list(QUESTION_TYPES)}, got {question_types!r}")
    return tuple(t for t in QUESTION_TYPES if t in question_types)


def synthrooms_qa_records(
    scenes_dataset: Any,
    seed: int = 0,
    per_scene: Optional[int] = 10,
    *,
    question_types: Optional[Sequence[str]] = None,
    min_visible_pixels: int = 1,
) -> list[dict]:
    """VSI-Bench records (module doc) for every scene of a SynthRooms dataset.

    Args:
        scenes_dataset: a :func:`load_synthrooms` dataset, or a list of rows with ``scene_id``, ``room_size``,
            ``objects``, ``visible_objects`` (and optionally ``seed``), e.g. hand-made scenes.
        seed: question sampling seed (options, distractors, which objects are asked about).
        per_scene: at most this many questions per scene, taken round-robin over the question types (in a
            per-scene random order) so every available type is represented; ``None`` keeps all candidates.
        question_types: restrict to these VSI-Bench question types (default: all ten).
        min_visible_pixels: an object counts as visible in a frame when it covers at least this many pixels
            of the instance mask; 1 uses the dataset's ``visible_objects``, more needs ``instances``.

    Returns:
        A list of dicts ``id, dataset, scene_name, question_type, question, options, ground_truth, frames``
        (``frames`` = the scene's row index), each checked by :func:`validate_record`.

    Raises:
        ValueError: on a bad argument, or a bad scene row, with the scene (row index and ``scene_id``), the
            object (index and ``id``), the field, the bad value and what is expected. A row needs a unique
            non-empty str or int ``scene_id``; ``seed`` an int or ``None`` (< 0: keyed on the row index);
            ``room_size`` 3 finite numbers > 0; ``objects`` a list of mappings with ``id`` (int >= 1, unique:
            0 is the room shell in the instance masks), ``category`` (non-empty str), ``center`` (3 finite
            numbers), ``size`` (3 finite numbers > 0) and ``yaw`` (finite number); ``visible_objects`` one list
            of those ids per frame. No row is turned into questions before it has passed these checks.
    """
    if not (_is_int(seed) and seed >= 0):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if per_scene is not None and not (_is_int(per_scene) and per_scene >= 1):
        raise ValueError(f"per_scene must be a positive int or None, got {per_scene!r}")
    if not (_is_int(min_visible_pixels) and min_visible_pixels >= 1):
        raise ValueError(f"min_visible_pixels must be a positive int, got {min_visible_pixels!r}")
    types = _check_question_types(question_types)

    records = []
    names: dict[str, int] = {}
    for index, row in enumerate(_scene_rows(scenes_dataset, int(min_visible_pixels))):
        scene = _parse_scene(row, index, int(min_visible_pixels))
        if names.setdefault(scene.name, index) != index:
            raise ValueError(
                f"scene #{index} (scene_id {scene.name!r}): 'scene_id' repeats scene #{names[scene.name]}'s; "
                "record ids '<scene_id>-q<k>' would collide"
            )
        candidates = {}
        for question_type in types:
            # One stream per (scene, type): restricting question_types leaves the other types' questions as they are.
            rng = np.random.default_rng([int(seed), scene.key, QUESTION_TYPES.index(question_type)])
            found = _GENERATORS[question_type](scene, rng)
            candidates[question_type] = [found[i] for i in rng.permutation(len(found))]
        order_rng = np.random.default_rng([int(seed), scene.key, len(QUESTION_TYPES)])
        order = [types[i] for i in order_rng.permutation(len(types))]
        chosen: list = []
        for depth in itertools.count():
            layer = [candidates[t][depth] for t in order if depth < len(candidates[t])]
            if not layer:
                break
            chosen += layer
        if per_scene is not None:
            chosen = chosen[:per_scene]
        for k, (question_type, question, options, ground_truth) in enumerate(chosen):
            record = {
                "id": f"{scene.name}-q{k:03d}",
                "dataset": DATASET_NAME,
                "scene_name": scene.name,
                "question_type": question_type,
                "question": question,
                "options": options,
                "ground_truth": ground_truth,
                "frames": index,
            }
            records.append(validate_record(record))
    return records


def synthrooms_qa_features():
    """The ``datasets.Features`` of :func:`build_synthrooms_qa`."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "dataset": Value("string"),
            "scene_name": Value("string"),
            "question_type": Value("string"),
            "question": Value("string"),
            "options": List(Value("string")),
            "ground_truth": Value("string"),
            "frames": Value("int32"),
            "images": List(Image()),
            "messages": List(
                {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
            ),
        }
    )


def _qa_rows(records: list[dict], scenes):
    # Arrow rows hand over the stored PNG bytes as they are: no decode / re-encode of the frames.
    frames = scenes.select_columns(["images"]).with_format("arrow")
    current, images = None, None
    for record in records:
        if record["frames"] != current:  # records come grouped by scene
            current, images = record["frames"], frames[record["frames"]].column("images")[0].as_py()
        yield {**record, "images": images, "messages": vsibench_messages(record, len(images))}


def build_synthrooms_qa(
    num_scenes: int = 8,
    frames_per_scene: int = 8,
    image_size: tuple[int, int] = (84, 112),
    seed: int = 0,
    split: str = "train",
    *,
    per_scene: Optional[int] = 10,
    question_types: Optional[Sequence[str]] = None,
    min_visible_pixels: int = 1,
    cache_dir: Optional[str] = None,
    **synthrooms_kwargs,
):
    """SynthRooms-QA as a ``datasets.Dataset`` ready for TRL's ``SFTTrainer`` (one row per question).

    Scenes come from :func:`load_synthrooms` ``(num_scenes, frames_per_scene, image_size, seed, split)``;
    the splits use disjoint scene seeds, so ``"validation"``/``"test"`` questions are about rooms never
    seen in ``"train"``. Columns: the :func:`synthrooms_qa_records` fields, ``images`` (the scene's V
    frames) and ``messages``::

        [{"role": "user", "content": [{"type": "image"} x V, {"type": "text", "text": build_vsibench_prompt(...)}]},
         {"role": "assistant", "content": [{"type": "text", "text": ground_truth}]}]

    (stored by ``datasets`` with ``"text": None`` on the image entries). ``synthrooms_kwargs`` go to
    :func:`load_synthrooms` (e.g. ``num_objects``, ``shadows``).
    """
    import datasets

    from .synthrooms import load_synthrooms

    scenes = load_synthrooms(
        num_scenes, frames_per_scene, image_size, seed, split, cache_dir=cache_dir, **synthrooms_kwargs
    )
    records = synthrooms_qa_records(
        scenes, seed, per_scene, question_types=question_types, min_visible_pixels=min_visible_pixels
    )
    if not records:
        raise ValueError(
            f"no question could be generated from the {num_scenes} scene(s); use more scenes or question types"
        )
    # The questions and the scene dataset's own fingerprint define the rows: hash them for the cache.
    digest = hashlib.sha256(
        json.dumps([QA_FORMAT_VERSION, getattr(scenes, "_fingerprint", None), records], sort_keys=True).encode()
    ).hexdigest()[:32]
    return datasets.Dataset.from_generator(
        _qa_rows,
        features=synthrooms_qa_features(),
        gen_kwargs={"records": records, "scenes": scenes},
        cache_dir=cache_dir,
        split=datasets.Split(split),
        fingerprint=f"synthrooms-qa-{digest}",
    )
