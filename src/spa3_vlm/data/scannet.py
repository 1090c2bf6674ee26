"""Real-data scene sources for PSFM pre-training: processed ScanNet and ScanNet++ folders.

:class:`ScanNetScenes` is a lazy scene source for :class:`~spa3_vlm.data.psfm.PSFMDataset`: one row per scene,

- ``scene_id`` (str), ``image_paths`` (tuple of V file paths, frame order),
- ``images``: a lazy sequence of V frames; item ``i`` decodes frame ``i`` only and returns it preprocessed by
  :func:`pretraining_image_processor` (the reference's pre-training transform: RGB PIL image, width 518, height
  cropped to a multiple of 14; 640x480 -> 518x378),
- ``extrinsics``: lazy V world-to-camera ``[4, 4]`` float64 (OpenCV axes: x right, y down, z forward), or None,
- ``intrinsics``: lazy V ``[3, 3]`` float64 pixel intrinsics *of the preprocessed image*, or None.

``extrinsics``/``intrinsics`` are None when the data has no cameras (or ``load_poses=False``): train those
with ``Spa3RConfig(pose_source="backbone")``. Pixel convention, as in the rest of the package: pixel
``(u, v)`` spans ``[u, u+1) x [v, v+1)``; source intrinsics are taken in that convention (the half-pixel
ambiguity of the sources is at most 0.2 output pixels after the ~2.5x downscale of ScanNet/ScanNet++ frames).

Folder layouts (as the reference's processed data):

- ``layout="scannet"``: ``<root>/scene*/color/<n>.jpg|png`` (sorted by frame number), optional camera-to-world
  ``<root>/scene*/pose/<n>.txt`` and ``<root>/scene*/intrinsic/intrinsic_color.txt`` (4x4).
- ``layout="scannetpp"``: scene ids in ``<root>/splits/nvs_sem_<split>.txt``, frames in
  ``<root>/data/<scene>/dslr/undistorted_images/``, optional cameras in
  ``<root>/data/<scene>/dslr/nerfstudio/transforms_undistorted.json`` (camera-to-world, OpenGL axes).

Recommended view intervals (the reference's config): ScanNet ``interval=(2, 6)``, ScanNet++
``interval=(20, 60)`` (see :data:`RECOMMENDED_INTERVALS`). Different intervals per source need one
``PSFMDataset`` per source, joined with ``torch.utils.data.ConcatDataset``::

    from torch.utils.data import ConcatDataset
    from spa3_vlm.data.psfm import PSFMDataset
    from spa3_vlm.data.scannet import RECOMMENDED_INTERVALS, ScanNetScenes

    scannet = ScanNetScenes("/data/scannet_processed", layout="scannet")
    scannetpp = ScanNetScenes("/data/scannetpp", layout="scannetpp", split="train")
    train_set = ConcatDataset([
        PSFMDataset(scannet, num_views=(4, 12), interval=RECOMMENDED_INTERVALS["scannet"]),
        PSFMDataset(scannetpp, num_views=(4, 12), interval=RECOMMENDED_INTERVALS["scannetpp"]),
    ])

With one shared interval, :class:`ConcatScenes` joins the scene sources instead.

Nothing is written into the data folders: the scene index lives in memory (once per process and set of
options) and, if ``cache_dir`` is given, in a JSON file there. Problems raise errors naming the file, scene
or frame; only ``skip_bad_scenes`` / ``skip_bad_frames`` drop data, and they log how much.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np
import PIL.Image

from ..processing_spa3r import Spa3RImageProcessor

__all__ = [
    "LAYOUTS",
    "RECOMMENDED_INTERVALS",
    "ConcatScenes",
    "SceneRecord",
    "ScanNetScenes",
    "camera_to_world_to_extrinsics",
    "clear_index_cache",
    "load_scannet_scenes",
    "natural_sort_key",
    "pretraining_image_processor",
    "resized_intrinsics",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("scannet", "scannetpp")
RECOMMENDED_INTERVALS = {"scannet": (2, 6), "scannetpp": (20, 60)}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_EXPECTED_LAYOUT = {
    "scannet": "<root>/scene*/color/*.jpg|png "
    "(optional <scene>/pose/<frame>.txt, <scene>/intrinsic/intrinsic_color.txt)",
    "scannetpp": "<root>/splits/nvs_sem_<split>.txt and <root>/data/<scene>/dslr/undistorted_images/*.JPG|png "
    "(optional <scene>/dslr/nerfstudio/transforms_undistorted.json)",
}
# OpenGL/nerfstudio camera axes (y up, z backwards) -> OpenCV (y down, z forwards): negate camera y and z.
_OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
_INDEX_VERSION = 1
_INDEX_CACHE: dict[tuple, "_SceneIndex"] = {}


def natural_sort_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers: ``"9.jpg" < "10.jpg"``, ``"DSC00009" < "DSC00010"``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


def camera_to_world_to_extrinsics(camera_to_world: np.ndarray, opengl: bool = False) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` (OpenCV axes, or OpenGL axes if ``opengl``) -> world-to-camera OpenCV ``[4, 4]``."""
    pose = np.asarray(camera_to_world, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"expected a camera-to-world matrix of shape (4, 4), got {pose.shape}")
    if opengl:
        pose = pose @ _OPENGL_TO_OPENCV
    rotation, translation = pose[:3, :3], pose[:3, 3]
    # Rigid inverse: exact for the orthonormal rotations of real poses, unlike a general matrix inverse.
    extrinsics = np.eye(4)
    extrinsics[:3, :3] = rotation.T
    extrinsics[:3, 3] = -rotation.T @ translation
    return extrinsics


def pretraining_image_processor(target_width: int = 518, patch_size: int = 14) -> Spa3RImageProcessor:
    """The reference's PSFM pre-training transform (``BaseFrameDataset``): width ``target_width``, height
    ``int(target_width * h / w)`` with an antialiased bilinear resize, both sides centre-cropped down to whole
    patches (ScanNet's 4:3 -> 518x378, 27 patch rows; ScanNet++'s 3:2 -> 518x336). The VLM pipeline rounds instead
    (518x392); see ``Spa3RImageProcessor.resize_mode``. Heights are capped at twice the width (the reference has
    no cap; these sources are landscape)."""
    cap = 2 * target_width // patch_size * patch_size
    return Spa3RImageProcessor(target_width=target_width, max_height=cap, patch_size=patch_size, resize_mode="crop")


def resized_intrinsics(
    intrinsics: np.ndarray, image_size: tuple[int, int], processor: Spa3RImageProcessor
) -> np.ndarray:
    """Pixel intrinsics ``[3, 3]`` of an image of ``image_size`` (W, H) -> those of ``processor.resize_frame``'s output.

    The processor scales x by ``new_width / W`` and y by ``new_height / H`` (the two differ slightly: the new height
    is rounded or truncated to whole pixels or patches), then crops (:meth:`Spa3RImageProcessor.crop_box`).
    """
    width, height = image_size
    matrix = np.asarray(intrinsics, dtype=np.float64)
    if matrix.shape != (3, 3):
        raise ValueError(f"expected intrinsics of shape (3, 3), got {matrix.shape}")
    new_width, new_height = processor.output_size(width, height)
    left, top, _, _ = processor.crop_box(width, height)
    affine = np.array(
        [[new_width / width, 0.0, -float(left)], [0.0, new_height / height, -float(top)], [0.0, 0.0, 1.0]]
    )
    return affine @ matrix


@dataclass(frozen=True)
class SceneRecord:
    """One indexed scene: where its frames and cameras are; ``image_size`` is frame 0's (W, H)."""

    scene_id: str
    frame_dir: str
    frame_names: tuple[str, ...]
    image_size: tuple[int, int]
    camera_format: Optional[str] = None  # None, "scannet" (pose txt files) or "nerfstudio" (transforms json)
    camera_path: Optional[str] = None  # the pose folder or the transforms json
    intrinsics_path: Optional[str] = None  # ScanNet's intrinsic_color.txt


@dataclass
class _SceneIndex:
    records: tuple[SceneRecord, ...]
    skipped_scenes: dict[str, str]
    skipped_frames: dict[str, list[str]]


class _SceneProblem(ValueError):
    """A scene that fails index-time validation (skippable with ``skip_bad_scenes``)."""


def clear_index_cache() -> None:
    """Forget the in-memory scene indices (e.g. after the data folders changed)."""
    _INDEX_CACHE.clear()


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def _read_matrix(path: str, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as handle:
            values = [float(token) for token in handle.read().split()]
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot parse {what} file {path}: {err}") from err
    if len(values) != shape[0] * shape[1]:
        raise ValueError(f"{what} file {path} holds {len(values)} numbers, expected a {shape[0]}x{shape[1]} matrix")
    return np.array(values, dtype=np.float64).reshape(shape)


def _image_size(path: str, scene_id: str) -> tuple[int, int]:
    """(W, H) from the file header only (no decoding)."""
    try:
        with PIL.Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise FileNotFoundError(f"scene {scene_id}: frame file not found: {path}") from None
    except (OSError, PIL.UnidentifiedImageError) as err:
        raise _SceneProblem(f"scene {scene_id}: cannot read image file {path}: {err}") from err


def _list_frames(frame_dir: str, scene_id: str) -> tuple[str, ...]:
    try:
        names = [entry.name for entry in os.scandir(frame_dir) if entry.is_file()]
    except OSError as err:
        raise _SceneProblem(f"scene {scene_id}: cannot list its frame folder {frame_dir}: {err}") from err
    frames = sorted((n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)), key=natural_sort_key)
    if not frames:
        raise _SceneProblem(
            f"scene {scene_id} has no frames ({'/'.join(IMAGE_EXTENSIONS)} files) in {frame_dir}"
        )
    return tuple(frames)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _scannet_pose_name(frame_name: str) -> str:
    return os.path.splitext(frame_name)[0] + ".txt"


def _load_transforms(path: str, scene_id: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            transforms = json.load(handle)
    except (OSError, ValueError) as err:
        raise _SceneProblem(f"scene {scene_id}: cannot read camera file {path}: {err}") from err
    missing = [key for key in ("fl_x", "fl_y", "cx", "cy", "frames") if key not in transforms]
    if missing:
        raise _SceneProblem(f"scene {scene_id}: camera file {path} lacks the keys {missing}")
    return transforms


def _nerfstudio_poses(transforms: dict, path: str, scene_id: str) -> dict[str, Any]:
    """Image file name -> camera-to-world (OpenGL) as stored; ScanNet++ lists test views in ``test_frames``."""
    poses = {}
    for frame in list(transforms["frames"]) + list(transforms.get("test_frames", [])):
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise _SceneProblem(f"scene {scene_id}: a frame of {path} lacks 'file_path' or 'transform_matrix': {frame}")
        poses[os.path.basename(frame["file_path"])] = frame["transform_matrix"]
    return poses


def _checked_pose(matrix: Any, scene_id: str, frame_name: str, source: str, opengl: bool) -> np.ndarray:
    pose = np.asarray(matrix, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(
            f"scene {scene_id} frame {frame_name} ({source}): pose has shape {pose.shape}, expected (4, 4)"
        )
    if not np.isfinite(pose).all():
        raise ValueError(
            f"scene {scene_id} frame {frame_name} ({source}): camera pose has NaN or infinite values; pass "
            "skip_bad_frames=True to drop such frames when indexing, or load_poses=False"
        )
    rotation = pose[:3, :3]
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > 1e-3 or np.abs(pose[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise ValueError(
            f"scene {scene_id} frame {frame_name} ({source}): camera-to-world pose is not rigid "
            f"(rotation not orthonormal or last row not [0, 0, 0, 1]): {pose.tolist()}"
        )
    return camera_to_world_to_extrinsics(pose, opengl=opengl)


# --------------------------------------------------------------------------------------------------
# Lazy per-scene sequences
# --------------------------------------------------------------------------------------------------


class _LazySequence(Sequence):
    def __init__(self, record: SceneRecord):
        self.record = record

    def __len__(self) -> int:
        return len(self.record.frame_names)

    def _frame_index(self, index: int) -> int:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame indices must be integers, got {type(index).__name__}")
        count = len(self)
        position = int(index) + count if index < 0 else int(index)
        if not 0 <= position < count:
            raise IndexError(f"frame index {index} out of range for scene {self.record.scene_id} with {count} frames")
        return position

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._load(i) for i in range(*index.indices(len(self)))]
        return self._load(self._frame_index(index))

    def _load(self, position: int):
        raise NotImplementedError


class LazyFrames(_LazySequence):
    """Frames of one scene; ``frames[i]`` decodes frame i and returns it preprocessed (RGB PIL image)."""

    def __init__(self, record: SceneRecord, processor: Spa3RImageProcessor):
        super().__init__(record)
        self.processor = processor

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(os.path.join(self.record.frame_dir, name) for name in self.record.frame_names)

    def _load(self, position: int) -> PIL.Image.Image:
        record = self.record
        path = os.path.join(record.frame_dir, record.frame_names[position])
        try:
            with PIL.Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except FileNotFoundError:
            raise FileNotFoundError(f"scene {record.scene_id}: frame file not found: {path}") from None
        except (OSError, PIL.UnidentifiedImageError) as err:
            raise ValueError(f"scene {record.scene_id}: cannot decode image file {path}: {err}") from err
        if image.size != tuple(record.image_size):
            first = os.path.join(record.frame_dir, record.frame_names[0])
            raise ValueError(
                f"scene {record.scene_id} mixes image sizes: frame 0 ({first}) is "
                f"{record.image_size[0]}x{record.image_size[1]} but frame {position} ({path}) is "
                f"{image.size[0]}x{image.size[1]} (WxH)"
            )
        return self.processor.resize_frame(image)


class _SceneCameras:
    """Cameras of one scene, read on first use (one json parse or one intrinsics file per row)."""

    def __init__(self, record: SceneRecord, processor: Spa3RImageProcessor):
        self.record = record
        self.processor = processor
        self._intrinsics: Optional[np.ndarray] = None
        self._poses: Optional[dict[str, Any]] = None

    def _transforms(self) -> dict:
        try:
            return _load_transforms(self.record.camera_path, self.record.scene_id)
        except _SceneProblem as err:
            raise ValueError(str(err)) from err

    def intrinsics(self) -> np.ndarray:
        if self._intrinsics is None:
            record = self.record
            if record.camera_format == "scannet":
                source = _read_matrix(record.intrinsics_path, (4, 4), "intrinsics")[:3, :3]
                where = record.intrinsics_path
            else:
                transforms = self._transforms()
                fx, fy, cx, cy = (transforms[key] for key in ("fl_x", "fl_y", "cx", "cy"))
                source = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)
                where = record.camera_path
            if not np.isfinite(source).all() or source[0, 0] <= 0 or source[1, 1] <= 0:
                raise ValueError(f"scene {record.scene_id}: invalid intrinsics in {where}: {source.tolist()}")
            self._intrinsics = resized_intrinsics(source, record.image_size, self.processor)
        return self._intrinsics.copy()

    def extrinsics(self, position: int) -> np.ndarray:
        record = self.record
        name = record.frame_names[position]
        if record.camera_format == "scannet":
            path = os.path.join(record.camera_path, _scannet_pose_name(name))
            try:
                matrix = _read_matrix(path, (4, 4), "pose")
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"scene {record.scene_id}: pose file not found for frame {name}: {path}"
                ) from None
            return _checked_pose(matrix, record.scene_id, name, path, opengl=False)
        if self._poses is None:
            self._poses = _nerfstudio_poses(self._transforms(), record.camera_path, record.scene_id)
        if name not in self._poses:
            raise ValueError(f"scene {record.scene_id}: frame {name} has no pose in {record.camera_path}")
        return _checked_pose(self._poses[name], record.scene_id, name, record.camera_path, opengl=True)


class LazyExtrinsics(_LazySequence):
    """World-to-camera ``[4, 4]`` float64 per frame (OpenCV axes), read on access."""

    def __init__(self, cameras: _SceneCameras):
        super().__init__(cameras.record)
        self.cameras = cameras

    def _load(self, position: int) -> np.ndarray:
        return self.cameras.extrinsics(position)


class LazyIntrinsics(_LazySequence):
    """Pixel intrinsics ``[3, 3]`` float64 of the preprocessed frames (one camera per scene)."""

    def __init__(self, cameras: _SceneCameras):
        super().__init__(cameras.record)
        self.cameras = cameras

    def _load(self, position: int) -> np.ndarray:
        return self.cameras.intrinsics()


# --------------------------------------------------------------------------------------------------
# Indexing
# --------------------------------------------------------------------------------------------------


def _valid_frames(record: SceneRecord) -> tuple[list[str], list[str]]:
    """Split a scene's frames into (with a finite pose, without); reads every pose once."""
    good, bad = [], []
    if record.camera_format == "scannet":
        for name in record.frame_names:
            try:
                matrix = _read_matrix(os.path.join(record.camera_path, _scannet_pose_name(name)), (4, 4), "pose")
            except (OSError, ValueError):
                bad.append(name)
                continue
            (good if np.isfinite(matrix).all() else bad).append(name)
    else:
        transforms = _load_transforms(record.camera_path, record.scene_id)
        poses = _nerfstudio_poses(transforms, record.camera_path, record.scene_id)
        for name in record.frame_names:
            matrix = np.asarray(poses.get(name, np.nan), dtype=np.float64)
            (good if matrix.shape == (4, 4) and np.isfinite(matrix).all() else bad).append(name)
    return good, bad


class ScanNetScenes(Sequence):
    """Lazy scene source over a processed ScanNet or ScanNet++ folder (see the module doc for row contents).

    Args:
        root: the dataset folder.
        layout: ``"scannet"`` or ``"scannetpp"``.
        split: ScanNet++: ``"train"`` (default) or ``"val"`` (``splits/nvs_sem_<split>.txt``). ScanNet: None (every
            ``scene*`` folder, as the reference), ``"train"``/``"val"`` (``<root>/scannetv2_<split>.txt``, the
            benchmark lists; keep VSI-Bench's ScanNet val scenes out of pre-training) or a path to a list file.
        target_width: output width of the frames (height follows the aspect ratio, cropped to whole 14-px patches).
        load_poses: ``"auto"`` (cameras if every scene has them, none if no scene has them, error if mixed),
            True (every scene must have cameras) or False (rows carry ``extrinsics = intrinsics = None``).
        skip_bad_scenes: drop scenes failing index-time checks (no frames, unreadable listing or first frame,
            missing pose files, ...) instead of raising; they are logged and kept in ``skipped_scenes``.
        skip_bad_frames: drop frames whose pose is missing or non-finite (reads every pose while indexing; use
            ``cache_dir`` to do it once); logged and kept in ``skipped_frames``.
        cache_dir: optional folder for a JSON copy of the index (never the dataset root).
        image_processor: the geometry preprocessing; default :func:`pretraining_image_processor` (the reference's
            PSFM transform: 640x480 frames become 518x378).
        rebuild_index: ignore the in-memory and ``cache_dir`` indices and scan the folders again.

    Frames of one scene must all have frame 0's size; this is checked as frames are decoded (the index only
    reads frame 0's header).
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        layout: str = "scannet",
        split: Optional[str] = None,
        target_width: int = 518,
        load_poses: Union[bool, str] = "auto",
        skip_bad_scenes: bool = False,
        skip_bad_frames: bool = False,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        image_processor: Optional[Spa3RImageProcessor] = None,
        rebuild_index: bool = False,
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if load_poses not in ("auto", True, False):
            raise ValueError(f"load_poses must be 'auto', True or False, got {load_poses!r}")
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise FileNotFoundError(
                f"{layout} root folder not found: {self.root} (expected {_EXPECTED_LAYOUT[layout]})"
            )
        if layout == "scannetpp" and split is None:
            split = "train"
        if image_processor is None:
            image_processor = pretraining_image_processor(target_width)
        elif image_processor.target_width != target_width:
            raise ValueError(
                f"target_width={target_width} disagrees with image_processor.target_width="
                f"{image_processor.target_width}; pass one of them"
            )
        self.layout = layout
        self.split = split
        self.load_poses = load_poses
        self.skip_bad_scenes = bool(skip_bad_scenes)
        self.skip_bad_frames = bool(skip_bad_frames)
        self.image_processor = image_processor
        key = (self.root, layout, split, load_poses, self.skip_bad_scenes, self.skip_bad_frames)
        index = None if rebuild_index else _INDEX_CACHE.get(key)
        cache_file = None
        if cache_dir is not None:
            digest = hashlib.sha1(repr((_INDEX_VERSION, key)).encode()).hexdigest()[:16]
            cache_file = os.path.join(os.fspath(cache_dir), f"{layout}_index_{digest}.json")
            if index is None and not rebuild_index and os.path.isfile(cache_file):
                index = self._read_cache(cache_file, key)
        if index is None:
            index = self._build_index()
            if cache_file is not None:
                self._write_cache(cache_file, key, index)
        _INDEX_CACHE[key] = index
        self.records = index.records
        self.skipped_scenes = dict(index.skipped_scenes)
        self.skipped_frames = {scene: list(names) for scene, names in index.skipped_frames.items()}

    # ---- Sequence interface

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"scene indices must be integers, got {type(index).__name__}")
        position = int(index) + len(self) if index < 0 else int(index)
        if not 0 <= position < len(self):
            raise IndexError(f"scene index {index} out of range for {len(self)} scenes")
        record = self.records[position]
        frames = LazyFrames(record, self.image_processor)
        row = {"scene_id": record.scene_id, "image_paths": frames.paths, "images": frames}
        if record.camera_format is None:
            row["extrinsics"] = row["intrinsics"] = None
        else:
            cameras = _SceneCameras(record, self.image_processor)
            row["extrinsics"] = LazyExtrinsics(cameras)
            row["intrinsics"] = LazyIntrinsics(cameras)
        return row

    @property
    def scene_ids(self) -> list[str]:
        return [record.scene_id for record in self.records]

    @property
    def has_cameras(self) -> bool:
        return bool(self.records) and self.records[0].camera_format is not None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, layout={self.layout!r}, split={self.split!r}, "
            f"scenes={len(self)}, cameras={self.has_cameras}, skipped_scenes={len(self.skipped_scenes)})"
        )

    # ---- index

    def _scene_folders(self) -> list[tuple[str, str]]:
        """(scene id, frame folder) for every scene the layout names, before validation."""
        expected = _EXPECTED_LAYOUT[self.layout]
        if self.layout == "scannetpp":
            split_file = os.path.join(self.root, "splits", f"nvs_sem_{self.split}.txt")
            if not os.path.isfile(split_file):
                raise ValueError(
                    f"ScanNet++ split file not found: {split_file} (root {self.root}, expected {expected})"
                )
            scene_ids = _read_lines(split_file)
            if not scene_ids:
                raise ValueError(f"no scenes in {self.root}: split file {split_file} is empty (expected {expected})")
            return [(s, os.path.join(self.root, "data", s, "dslr", "undistorted_images")) for s in scene_ids]
        names = sorted(
            entry.name for entry in os.scandir(self.root) if entry.name.startswith("scene") and entry.is_dir()
        )
        if not names:
            raise ValueError(f"no scenes in {self.root}: no folder named scene* (expected layout {expected})")
        if self.split is not None:
            split_file = self.split
            if not os.path.isfile(split_file):
                split_file = os.path.join(self.root, f"scannetv2_{self.split}.txt")
            if not os.path.isfile(split_file):
                raise ValueError(
                    f"ScanNet split {self.split!r}: no list file {split_file}; pass None (every scene*), 'train'/'val' "
                    "with scannetv2_<split>.txt in the root, or the path of a file of scene ids"
                )
            names = _read_lines(split_file)
        return [(name, os.path.join(self.root, name, "color")) for name in names]

    def _camera_files(self, scene_id: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
        """(format, pose folder or transforms json, intrinsics file) when the scene has cameras on disk."""
        if self.layout == "scannet":
            pose_dir = os.path.join(self.root, scene_id, "pose")
            if os.path.isdir(pose_dir):
                return "scannet", pose_dir, os.path.join(self.root, scene_id, "intrinsic", "intrinsic_color.txt")
            return None, None, None
        path = os.path.join(self.root, "data", scene_id, "dslr", "nerfstudio", "transforms_undistorted.json")
        return ("nerfstudio", path, None) if os.path.isfile(path) else (None, None, None)

    def _index_scene(self, scene_id: str, frame_dir: str) -> SceneRecord:
        frames = _list_frames(frame_dir, scene_id)
        image_size = _image_size(os.path.join(frame_dir, frames[0]), scene_id)
        camera_format, camera_path, intrinsics_path = (None, None, None)
        if self.load_poses is not False:
            camera_format, camera_path, intrinsics_path = self._camera_files(scene_id)
        if camera_format is None and self.load_poses is True:
            where = "a pose/ folder" if self.layout == "scannet" else "dslr/nerfstudio/transforms_undistorted.json"
            raise _SceneProblem(f"scene {scene_id} has no cameras ({where}) but load_poses=True")
        if camera_format == "scannet":
            if not os.path.isfile(intrinsics_path):
                raise _SceneProblem(f"scene {scene_id}: intrinsics file not found: {intrinsics_path}")
            try:
                pose_files = set(os.listdir(camera_path))
            except OSError as err:
                raise _SceneProblem(f"scene {scene_id}: cannot list its pose folder {camera_path}: {err}") from err
            missing = [n for n in frames if _scannet_pose_name(n) not in pose_files]
        elif camera_format == "nerfstudio":
            transforms = _load_transforms(camera_path, scene_id)
            size = (transforms.get("w"), transforms.get("h"))
            if None not in size and tuple(int(v) for v in size) != tuple(image_size):
                raise _SceneProblem(
                    f"scene {scene_id}: {camera_path} describes {size[0]}x{size[1]} images but frame 0 "
                    f"({os.path.join(frame_dir, frames[0])}) is {image_size[0]}x{image_size[1]}"
                )
            missing = [n for n in frames if n not in _nerfstudio_poses(transforms, camera_path, scene_id)]
        else:
            missing = []
        record = SceneRecord(
            scene_id, frame_dir, frames, tuple(image_size), camera_format, camera_path, intrinsics_path
        )
        if missing and not self.skip_bad_frames:
            shown = (
                os.path.join(camera_path, _scannet_pose_name(missing[0]))
                if camera_format == "scannet"
                else f"{missing[0]} in {camera_path}"
            )
            raise _SceneProblem(
                f"scene {scene_id}: no pose for {len(missing)} of {len(frames)} frames, first missing: {shown}; pass "
                "skip_bad_frames=True to drop such frames, or load_poses=False"
            )
        return record

    def _build_index(self) -> _SceneIndex:
        records, skipped_scenes, skipped_frames = [], {}, {}
        for scene_id, frame_dir in self._scene_folders():
            try:
                record = self._index_scene(scene_id, frame_dir)
                if self.skip_bad_frames and record.camera_format is not None:
                    good, bad = _valid_frames(record)
                    if bad:
                        skipped_frames[scene_id] = bad
                        if not good:
                            raise _SceneProblem(f"scene {scene_id}: none of its {len(bad)} frames has a valid pose")
                        first_size = _image_size(os.path.join(frame_dir, good[0]), scene_id)
                        record = SceneRecord(
                            scene_id, frame_dir, tuple(good), tuple(first_size), record.camera_format,
                            record.camera_path, record.intrinsics_path,
                        )
            except (_SceneProblem, FileNotFoundError) as err:
                if not self.skip_bad_scenes:
                    raise ValueError(str(err)) from None
                skipped_scenes[scene_id] = str(err)
                continue
            records.append(record)
        if skipped_scenes:
            logger.warning(
                "%s %s: skipped %d of %d scenes that failed validation: %s",
                self.layout, self.root, len(skipped_scenes), len(skipped_scenes) + len(records),
                "; ".join(skipped_scenes.values()),
            )
        if skipped_frames:
            logger.warning(
                "%s %s: skipped %d frames without a valid pose in %d scenes (%s)",
                self.layout, self.root, sum(len(v) for v in skipped_frames.values()), len(skipped_frames),
                ", ".join(f"{scene}: {len(names)}" for scene, names in skipped_frames.items()),
            )
        if not records:
            raise ValueError(
                f"no usable scenes in {self.root} (layout {self.layout!r}, expected {_EXPECTED_LAYOUT[self.layout]}); "
                f"{len(skipped_scenes)} skipped"
            )
        with_cameras = [r.scene_id for r in records if r.camera_format is not None]
        if self.load_poses == "auto" and 0 < len(with_cameras) < len(records):
            without = [r.scene_id for r in records if r.camera_format is None]
            raise ValueError(
                f"{self.root}: {len(with_cameras)} scenes have cameras but {len(without)} do not (e.g. {without[:3]}); "
                "pass load_poses=False to train without dataset cameras, or skip_bad_scenes=True with "
                "load_poses=True to drop the scenes without them"
            )
        return _SceneIndex(tuple(records), skipped_scenes, skipped_frames)

    @staticmethod
    def _write_cache(path: str, key: tuple, index: _SceneIndex) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        payload = {
            "version": _INDEX_VERSION,
            "key": list(key),
            "records": [asdict(record) for record in index.records],
            "skipped_scenes": index.skipped_scenes,
            "skipped_frames": index.skipped_frames,
        }
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        os.replace(temporary, path)  # atomic: concurrent ranks never read a half-written index

    @staticmethod
    def _read_cache(path: str, key: tuple) -> Optional[_SceneIndex]:
        try:
            with open(path, encoding="utf-8") as handle:
                payload = json.load(handle)
        except (OSError, ValueError) as err:
            logger.warning("ignoring unreadable scene index cache %s: %s", path, err)
            return None
        if payload.get("version") != _INDEX_VERSION or payload.get("key") != list(key):
            return None
        records = tuple(
            SceneRecord(
                **{**record, "frame_names": tuple(record["frame_names"]), "image_size": tuple(record["image_size"])}
            )
            for record in payload["records"]
        )
        logger.info("loaded the scene index of %s from %s", key[0], path)
        return _SceneIndex(records, dict(payload["skipped_scenes"]), dict(payload["skipped_frames"]))


def _detect_layout(root: str) -> str:
    if os.path.isdir(os.path.join(root, "splits")) and os.path.isdir(os.path.join(root, "data")):
        return "scannetpp"
    return "scannet"


def load_scannet_scenes(
    root: Union[str, os.PathLike], layout: str = "auto", split: Optional[str] = None, **kwargs
) -> ScanNetScenes:
    """:class:`ScanNetScenes` with the layout detected from the folder (``splits/`` + ``data/`` = ScanNet++).

    Use ``interval=RECOMMENDED_INTERVALS[scenes.layout]`` in ``PSFMDataset`` (ScanNet (2, 6), ScanNet++ (20, 60)).
    """
    root = os.fspath(root)
    if layout == "auto":
        layout = _detect_layout(root)
    return ScanNetScenes(root, layout=layout, split=split, **kwargs)


class ConcatScenes(Sequence):
    """Several scene sources seen as one (rows of source 0, then source 1, ...).

    Every sample then shares one ``PSFMDataset`` interval; for the reference's per-source intervals
    (ScanNet (2, 6), ScanNet++ (20, 60)) build one ``PSFMDataset`` per source and join them with
    ``torch.utils.data.ConcatDataset`` (example in the module doc).
    """

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("ConcatScenes needs at least one scene source, got none")
        for position, source in enumerate(self.sources):
            if len(source) == 0:
                raise ValueError(f"scene source {position} ({source!r}) holds no scenes")
        self.offsets = np.cumsum([0] + [len(source) for source in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"scene indices must be integers, got {type(index).__name__}")
        position = int(index) + len(self) if index < 0 else int(index)
        if not 0 <= position < len(self):
            raise IndexError(f"scene index {index} out of range for {len(self)} scenes")
        source = int(np.searchsorted(self.offsets, position, side="right")) - 1
        return self.sources[source][position - int(self.offsets[source])]
