"""Issue 17: SynthRooms-QA refuses bad scene rows and bad records with a ValueError that says what is wrong.

A scene row that is wrong anywhere (a missing key, the wrong type, NaN or infinite geometry, an empty
category, an id that cannot be an instance id) must never turn into questions, nor fail with a bare
KeyError / AttributeError / TypeError: the message names the scene, the object, the field and the value.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from spa3_vlm.data.synthrooms import CATEGORIES
from spa3_vlm.data.synthrooms_qa import synthrooms_qa_records
from spa3_vlm.vsibench import validate_record

SCENE_ID = "reliability-0"
SCENE = f"scene #0 (scene_id '{SCENE_ID}')"
OBJECT_KEYS = ("id", "category", "center", "size", "yaw")
MISSING = object()  # corruption value: delete the key
NAN, INF = float("nan"), float("inf")

# Five unique SynthRooms categories and two instances of a sixth, spread over a 6 m x 5 m room.
_PLACES = [(1.0, 1.0), (1.0, 4.0), (4.5, 1.0), (4.5, 4.0), (3.0, 2.5), (2.0, 2.5), (5.0, 2.5)]


def _valid_row() -> dict:
    """A hand-made row in the SynthRooms schema (``load_synthrooms``' columns), with the module's own categories."""
    names = [c for c in CATEGORIES if c != "chair"][:5] + ["chair", "chair"]
    objects = [
        {"id": k + 1, "category": name, "shape": "box", "center": [x, y, 0.4], "size": [0.6, 0.5, 0.8], "yaw": 0.3 * k}
        for k, (name, (x, y)) in enumerate(zip(names, _PLACES, strict=True))
    ]
    visible = [[1, 2], [2, 3, 6, 7], [4, 5], [5]]
    return {"scene_id": SCENE_ID, "seed": 7, "room_size": [6.0, 5.0, 2.8], "objects": objects, "visible_objects": visible}


def _corrupt(path: tuple, value) -> dict:
    """A deep copy of the valid row with the field at ``path`` (keys / indices) set to ``value`` or deleted."""
    row = copy.deepcopy(_valid_row())
    parent = row
    for key in path[:-1]:
        parent = parent[key]
    if value is MISSING:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return row


OBJ = ("objects", 1)  # the second object, id 2

# (case id, path, bad value, text naming the field, text showing the bad value)
BAD_ROWS = [
    # scene-level fields
    ("scene_id-none", ("scene_id",), None, "'scene_id'", "None"),
    ("scene_id-empty", ("scene_id",), "  ", "'scene_id'", "'  '"),
    ("scene_id-float", ("scene_id",), 1.5, "'scene_id'", "1.5"),
    ("seed-float", ("seed",), 1.5, "'seed'", "1.5"),
    ("seed-str", ("seed",), "7", "'seed'", "'7'"),
    ("seed-bool", ("seed",), True, "'seed'", "True"),
    ("room_size-nan", ("room_size",), [6.0, NAN, 2.8], "'room_size'", "[6.0, nan, 2.8]"),
    ("room_size-inf", ("room_size",), [6.0, 5.0, INF], "'room_size'", "[6.0, 5.0, inf]"),
    ("room_size-zero", ("room_size",), [6.0, 0.0, 2.8], "'room_size'", "[6.0, 0.0, 2.8]"),
    ("room_size-negative", ("room_size",), [-6.0, 5.0, 2.8], "'room_size'", "[-6.0, 5.0, 2.8]"),
    ("room_size-two-values", ("room_size",), [6.0, 5.0], "'room_size'", "[6.0, 5.0]"),
    ("room_size-str", ("room_size",), "652", "'room_size'", "'652'"),
    ("room_size-str-item", ("room_size",), [6.0, "5", 2.8], "'room_size'", "[6.0, '5', 2.8]"),
    ("room_size-none", ("room_size",), None, "'room_size'", "None"),
    ("objects-str", ("objects",), "chair", "'objects'", "'chair'"),
    ("objects-none", ("objects",), None, "'objects'", "None"),
    ("objects-mapping", ("objects",), {"id": 1}, "'objects'", "{'id': 1}"),
    ("objects-int", ("objects",), 3, "'objects'", "3"),
    ("visible-str", ("visible_objects",), "12", "'visible_objects'", "'12'"),
    ("visible-none", ("visible_objects",), None, "'visible_objects'", "None"),
    ("visible-frame-int", ("visible_objects", 1), 2, "'visible_objects' frame 1", "2"),
    ("visible-frame-str", ("visible_objects", 1), "23", "'visible_objects' frame 1", "'23'"),
    ("visible-id-float", ("visible_objects", 0, 1), 2.0, "'visible_objects' frame 0", "2.0"),
    ("visible-id-str", ("visible_objects", 0, 1), "2", "'visible_objects' frame 0", "'2'"),
    ("visible-id-bool", ("visible_objects", 0, 0), True, "'visible_objects' frame 0", "True"),
    ("visible-id-unknown", ("visible_objects", 2, 0), 99, "'visible_objects' frame 2", "99"),
    ("visible-id-shell", ("visible_objects", 2, 0), 0, "'visible_objects' frame 2", "0"),
    # object entries
    ("object-str", OBJ, "chair", f"{SCENE} object #1", "'chair'"),
    ("object-none", OBJ, None, f"{SCENE} object #1", "None"),
    ("object-list", OBJ, [2, "table"], f"{SCENE} object #1", "[2, 'table']"),
    ("id-bool", (*OBJ, "id"), True, "'id'", "True"),
    ("id-zero-room-shell", (*OBJ, "id"), 0, "'id'", "0"),
    ("id-negative", (*OBJ, "id"), -2, "'id'", "-2"),
    ("id-float", (*OBJ, "id"), 2.0, "'id'", "2.0"),
    ("id-str", (*OBJ, "id"), "2", "'id'", "'2'"),
    ("id-none", (*OBJ, "id"), None, "'id'", "None"),
    ("category-none", (*OBJ, "category"), None, "'category'", "None"),
    ("category-empty", (*OBJ, "category"), "", "'category'", "''"),
    ("category-blank", (*OBJ, "category"), "  ", "'category'", "'  '"),
    ("category-int", (*OBJ, "category"), 3, "'category'", "3"),
    ("center-nan", (*OBJ, "center"), [NAN, 4.0, 0.4], "'center'", "[nan, 4.0, 0.4]"),
    ("center-inf", (*OBJ, "center"), [1.0, -INF, 0.4], "'center'", "[1.0, -inf, 0.4]"),
    ("center-two-values", (*OBJ, "center"), [1.0, 4.0], "'center'", "[1.0, 4.0]"),
    ("center-str", (*OBJ, "center"), "140", "'center'", "'140'"),
    ("center-none-item", (*OBJ, "center"), [1.0, None, 0.4], "'center'", "[1.0, None, 0.4]"),
    ("center-bool-item", (*OBJ, "center"), [1.0, 4.0, True], "'center'", "[1.0, 4.0, True]"),
    ("size-inf", (*OBJ, "size"), [INF, 0.5, 0.8], "'size'", "[inf, 0.5, 0.8]"),
    ("size-nan", (*OBJ, "size"), [0.6, NAN, 0.8], "'size'", "[0.6, nan, 0.8]"),
    ("size-zero", (*OBJ, "size"), [0.6, 0.5, 0.0], "'size'", "[0.6, 0.5, 0.0]"),
    ("size-negative", (*OBJ, "size"), [-0.6, 0.5, 0.8], "'size'", "[-0.6, 0.5, 0.8]"),
    ("size-overflowing-int", (*OBJ, "size"), [10**400, 0.5, 0.8], "'size'", "[1000000000"),
    ("size-four-values", (*OBJ, "size"), [0.6, 0.5, 0.8, 1.0], "'size'", "[0.6, 0.5, 0.8, 1.0]"),
    ("size-scalar", (*OBJ, "size"), 0.6, "'size'", "0.6"),
    ("yaw-str", (*OBJ, "yaw"), "north", "'yaw'", "'north'"),
    ("yaw-none", (*OBJ, "yaw"), None, "'yaw'", "None"),
    ("yaw-nan", (*OBJ, "yaw"), NAN, "'yaw'", "nan"),
    ("yaw-inf", (*OBJ, "yaw"), INF, "'yaw'", "inf"),
    ("yaw-list", (*OBJ, "yaw"), [0.3], "'yaw'", "[0.3]"),
    ("yaw-bool", (*OBJ, "yaw"), False, "'yaw'", "False"),
] + [(f"missing-{key}", (*OBJ, key), MISSING, "missing key(s)", f"['{key}']") for key in OBJECT_KEYS]


def test_valid_row_makes_questions():
    row = _valid_row()
    records = synthrooms_qa_records([row], seed=0, per_scene=None)
    types = {r["question_type"] for r in records}
    assert {"object_counting", "object_size_estimation", "room_size_estimation", "obj_appearance_order"} <= types
    assert row == _valid_row()  # the row is read, never changed


@pytest.mark.parametrize(
    ("path", "value", "field", "shown"), [case[1:] for case in BAD_ROWS], ids=[case[0] for case in BAD_ROWS]
)
def test_bad_row_is_refused_with_a_precise_message(path, value, field, shown):
    row = _corrupt(path, value)
    with pytest.raises(ValueError) as caught:
        synthrooms_qa_records([row], seed=0, per_scene=None)
    message = str(caught.value)
    scene = SCENE if path != ("scene_id",) else f"scene #0 (scene_id {value!r})"
    assert message.startswith(scene), message
    if path[0] == "objects" and len(path) == 3:
        shown_id = 2 if path[2] != "id" else (None if value is MISSING else value)
        assert message.startswith(f"{SCENE} object #1 (id {shown_id!r})"), message
    assert field in message, message
    assert shown in message, message


ISSUE_CORRUPTIONS = {
    "missing size": ((*OBJ, "size"), MISSING),
    "objects as a string": (("objects",), "chair, table"),
    "non-numeric yaw": ((*OBJ, "yaw"), "45 degrees"),
    "NaN center": ((*OBJ, "center"), [NAN, 4.0, 0.4]),
    "inf size": ((*OBJ, "size"), [0.6, INF, 0.8]),
    "None category": ((*OBJ, "category"), None),
}


def test_every_corruption_named_in_the_issue_is_refused():
    for name, (path, value) in ISSUE_CORRUPTIONS.items():
        row = _corrupt(path, value)
        try:
            records = synthrooms_qa_records([row], seed=0, per_scene=None)
        except ValueError as error:  # KeyError / AttributeError / TypeError would escape and fail the test
            assert SCENE in str(error), (name, error)
        else:
            pytest.fail(f"{name}: produced {len(records)} record(s) instead of a ValueError")


def test_the_bad_row_and_object_are_named_among_several():
    good, bad = _valid_row(), _corrupt(("objects", 3, "size"), [0.6, NAN, 0.8])
    good["scene_id"], bad["scene_id"] = "good-0", "bad-1"
    with pytest.raises(ValueError, match=r"^scene #1 \(scene_id 'bad-1'\) object #3 \(id 4\): 'size' .*nan"):
        synthrooms_qa_records([good, bad], seed=0)


def test_duplicate_object_ids_and_scene_ids_are_refused():
    row = _corrupt(("objects", 1, "id"), 1)
    with pytest.raises(ValueError, match=r"^scene #0 \(scene_id 'reliability-0'\): object ids are not unique"):
        synthrooms_qa_records([row])
    with pytest.raises(ValueError, match=r"^scene #1 \(scene_id 'reliability-0'\): 'scene_id' repeats scene #0"):
        synthrooms_qa_records([_valid_row(), _valid_row()])


def test_accepted_variants_keep_their_questions():
    """Equivalent spellings of a valid row: tuples, numpy values, no seed column, an int scene_id."""
    expected = synthrooms_qa_records([_valid_row()], seed=0, per_scene=None)
    variant = _valid_row()
    variant["room_size"] = np.array(variant["room_size"], dtype=np.float64)
    variant["visible_objects"] = [np.array(ids, dtype=np.int64) for ids in variant["visible_objects"]]
    for obj in variant["objects"]:
        obj["id"], obj["center"], obj["yaw"] = np.int32(obj["id"]), tuple(obj["center"]), np.float64(obj["yaw"])
    variant["seed"] = np.int64(variant["seed"])
    assert synthrooms_qa_records([variant], seed=0, per_scene=None) == expected
    # Without a seed (or with a negative one) the scene's random stream is keyed on its row index.
    unseeded = {k: v for k, v in _valid_row().items() if k != "seed"}
    assert synthrooms_qa_records([unseeded], seed=0, per_scene=None) == synthrooms_qa_records(
        [{**_valid_row(), "seed": -1}], seed=0, per_scene=None
    )
    numbered = synthrooms_qa_records([{**_valid_row(), "scene_id": 12}], seed=0, per_scene=None)
    assert [r["id"] for r in numbered][:2] == ["12-q000", "12-q001"]


def test_generated_rows_in_every_format_pass_unchanged():
    from spa3_vlm.data import load_synthrooms

    scenes = load_synthrooms(num_scenes=2, frames_per_scene=3, image_size=(84, 112))
    columns = ["scene_id", "seed", "room_size", "objects", "visible_objects"]
    expected = synthrooms_qa_records(scenes, seed=0, per_scene=None)
    assert expected
    assert synthrooms_qa_records(scenes.select_columns(columns).to_list(), seed=0, per_scene=None) == expected
    for form in ("numpy", "torch"):
        rows = list(scenes.select_columns(columns).with_format(form))
        assert synthrooms_qa_records(rows, seed=0, per_scene=None) == expected, form
    # min_visible_pixels > 1 reads the instance masks: those are checked too.
    rows = scenes.select_columns([*columns, "instances"]).with_format("numpy")
    rows = [dict(rows[i]) for i in range(len(rows))]
    assert synthrooms_qa_records(rows, seed=0, per_scene=None, min_visible_pixels=5) == synthrooms_qa_records(
        scenes, seed=0, per_scene=None, min_visible_pixels=5
    )
    rows[1]["instances"] = [mask.astype(np.float32) for mask in rows[1]["instances"]]
    with pytest.raises(ValueError, match=r"^scene #1 \(scene_id 'train-00001'\): 'instances' frame 0 must be"):
        synthrooms_qa_records(rows, seed=0, min_visible_pixels=5)


# ---------------------------------------------------------------- records


GOOD_NUMERICAL = {"id": "s-q000", "question_type": "object_abs_distance", "question": "q?", "options": None}
GOOD_NUMERICAL["ground_truth"] = "1.25"


@pytest.mark.parametrize("ground_truth", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999"])
def test_validate_record_refuses_non_finite_ground_truth(ground_truth):
    with pytest.raises(ValueError, match=rf"record 's-q000': ground_truth '{ground_truth}' must be a finite number"):
        validate_record({**GOOD_NUMERICAL, "ground_truth": ground_truth})


@pytest.mark.parametrize("ground_truth", [math.nan, math.inf, 1.25, 3, None])
def test_validate_record_refuses_non_string_ground_truth(ground_truth):
    with pytest.raises(ValueError, match=r"record 's-q000': ground_truth must be a string, got"):
        validate_record({**GOOD_NUMERICAL, "ground_truth": ground_truth})


@pytest.mark.parametrize("question", [None, 3, math.nan, ["q?"], b"q?", "", "   "])
def test_validate_record_refuses_non_string_or_empty_question(question):
    with pytest.raises(ValueError, match=r"record 's-q000': question must be a non-empty string, got"):
        validate_record({**GOOD_NUMERICAL, "question": question})


def test_validate_record_accepts_the_good_record():
    assert validate_record(GOOD_NUMERICAL) is GOOD_NUMERICAL
