"""SynthRooms: procedural multi-view indoor scenes with exact geometry, for CPU pre-training and QA.

Each scene is a box-shaped room (3-10 m x 3-10 m x 2.4-3.2 m) with textured floor, walls and ceiling,
3-12 pieces of furniture (see ``CATEGORIES``) standing on the floor without overlap, and a hand-held
camera walk at eye height. Views are ray-cast (:func:`render`) into RGB, z-depth and instance masks.

World frame: z up, room = ``[0, w] x [0, d] x [0, h]``. Cameras: world->camera 4x4 extrinsics with
OpenCV axes, pixel intrinsics with the principal point at the image centre (the VGGT conventions);
``modeling_geometry.relative_to_first`` re-expresses them in frame 0's camera frame as VGGT predicts them.
See :mod:`.synthrooms_scene` for the object frame and size conventions.

Dataset columns built by :func:`load_synthrooms` (one row per scene, V = ``frames_per_scene``):

- ``scene_id`` (str, ``"<split>-<index>"``), ``split`` (str), ``seed`` (int64), ``height``/``width`` (int32)
- ``images``: ``List(Image())`` of V RGB PNGs (uint8)
- ``depths``: ``List(Array2D((H, W), float32))`` z-depth in metres (exact, not quantised)
- ``instances``: ``List(Array2D((H, W), uint8))``, 0 = room shell, k = object with ``id`` k
- ``extrinsics``: ``List(Array2D((4, 4), float32))`` world->camera; ``intrinsics``: ``List(Array2D((3, 3), float32))``
- ``hfov_deg`` (float32), ``room_size``: ``[w, d, h]`` (float32, metres)
- ``objects``: list of ``{id, category, shape, center [3], size [3], yaw}`` (metres, radians)
- ``visible_objects``: per frame, the sorted ids of objects with at least one pixel in the instance mask
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .synthrooms_render import render
from .synthrooms_scene import (
    CATEGORIES,
    Light,
    Part,
    RoomStyle,
    Scene,
    SceneObject,
    check_image_size,
    check_range,
    check_seed,
    intrinsics_from_fov,
    look_extrinsics,
    make_object,
    points_to_first_camera,
    project_points,
    sample_scene,
)

__all__ = [
    "CATEGORIES",
    "Light",
    "Part",
    "RoomStyle",
    "Scene",
    "SceneObject",
    "SynthRoomsConfig",
    "SPLITS",
    "generate_scene",
    "intrinsics_from_fov",
    "load_synthrooms",
    "look_extrinsics",
    "make_object",
    "points_to_first_camera",
    "project_points",
    "render",
    "render_scene_frames",
    "scene_seed",
    "synthrooms_features",
]

SPLITS = ("train", "validation", "test")
TINY_IMAGE_SIZE = (84, 112)
DEFAULT_IMAGE_SIZE = (392, 518)


@dataclass(frozen=True)
class SynthRoomsConfig:
    """Everything that defines a SynthRooms split; validated on construction.

    Attributes:
        num_scenes: rows of the dataset.
        frames_per_scene: views per scene (V).
        image_size: ``(H, W)``; ``(392, 518)`` matches VGGT's width, ``(84, 112)`` is the CPU size.
        seed: base seed; scene ``i`` of ``split`` uses :func:`scene_seed` ``(seed, split, i)``.
        split: ``"train"``, ``"validation"`` or ``"test"``; splits never share a scene.
        hfov_deg: range of the horizontal field of view (degrees), drawn once per scene.
        num_objects: inclusive range of the object count (fewer than the upper bound may fit a small room).
        shadows: render hard shadows from the room light.
    """

    num_scenes: int = 8
    frames_per_scene: int = 8
    image_size: tuple[int, int] = TINY_IMAGE_SIZE
    seed: int = 0
    split: str = "train"
    hfov_deg: tuple[float, float] = (60.0, 75.0)
    num_objects: tuple[int, int] = (3, 12)
    shadows: bool = True

    def __post_init__(self) -> None:
        for name in ("num_scenes", "frames_per_scene"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        object.__setattr__(self, "image_size", check_image_size(self.image_size))
        check_seed(self.seed)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        object.__setattr__(self, "hfov_deg", check_range("hfov_deg", self.hfov_deg, 10.0, 150.0))
        lo, hi = check_range("num_objects", self.num_objects, 0, 16)
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"num_objects must be a pair of ints, got {self.num_objects!r}")
        object.__setattr__(self, "num_objects", (int(lo), int(hi)))


def scene_seed(seed: int, split: str, index: int) -> int:
    """Seed of scene ``index`` of ``split``: a 63-bit hash of (seed, split, index), so splits are disjoint."""
    check_seed(seed)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    state = np.random.SeedSequence([int(seed), SPLITS.index(split), int(index), 0x5EED]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) | (int(state[1]) >> 1))


def generate_scene(seed: int, config: Optional[SynthRoomsConfig] = None) -> Scene:
    """Room, furniture and camera walk for ``seed`` (deterministic); cameras use ``config``'s
    ``frames_per_scene``, ``image_size``, ``hfov_deg`` and ``num_objects`` (defaults if omitted)."""
    config = config or SynthRoomsConfig()
    return sample_scene(check_seed(seed), config.frames_per_scene, config.image_size, config.hfov_deg, config.num_objects)


def render_scene_frames(
    scene: Scene,
    image_size: Optional[tuple[int, int]] = None,
    *,
    shadows: bool = True,
    device: Union[str, torch.device, None] = None,
) -> dict:
    """Render every camera of ``scene``.

    Returns the :func:`render` arrays (``rgb [V, H, W, 3]``, ``depth [V, H, W]``, ``instance [V, H, W]``)
    plus ``extrinsics [V, 4, 4]``, ``intrinsics [V, 3, 3]`` (for ``image_size``) and
    ``visible_objects`` (per frame, sorted ids present in the instance mask).
    """
    image_size = scene.image_size if image_size is None else check_image_size(image_size)
    intrinsics = scene.intrinsics_at(image_size)
    frames = render(scene, scene.extrinsics, intrinsics, image_size, shadows=shadows, device=device)
    frames["extrinsics"] = scene.extrinsics.copy()
    frames["intrinsics"] = intrinsics
    frames["visible_objects"] = [[int(k) for k in np.unique(mask) if k > 0] for mask in frames["instance"]]
    return frames


def synthrooms_features(image_size: tuple[int, int]):
    """The ``datasets.Features`` of a SynthRooms dataset at ``(H, W)``."""
    from datasets import Array2D, Features, Image, List, Value

    height, width = check_image_size(image_size)
    vec3 = List(Value("float32"), length=3)
    return Features(
        {
            "scene_id": Value("string"),
            "split": Value("string"),
            "seed": Value("int64"),
            "height": Value("int32"),
            "width": Value("int32"),
            "images": List(Image()),
            "depths": List(Array2D((height, width), "float32")),
            "instances": List(Array2D((height, width), "uint8")),
            "extrinsics": List(Array2D((4, 4), "float32")),
            "intrinsics": List(Array2D((3, 3), "float32")),
            "hfov_deg": Value("float32"),
            "room_size": vec3,
            "objects": List(
                {
                    "id": Value("int32"),
                    "category": Value("string"),
                    "shape": Value("string"),
                    "center": vec3,
                    "size": vec3,
                    "yaw": Value("float32"),
                }
            ),
            "visible_objects": List(List(Value("int32"))),
        }
    )


def scene_to_row(scene: Scene, frames: dict, scene_id: str, split: str) -> dict:
    """One dataset row from a scene and its :func:`render_scene_frames` output."""
    from PIL import Image

    if len(scene.objects) > 255:
        raise ValueError(f"instance masks are stored as uint8: at most 255 objects, got {len(scene.objects)}")
    height, width = frames["depth"].shape[1:]
    images = [Image.fromarray(np.round(rgb * 255.0).astype(np.uint8)) for rgb in frames["rgb"]]
    return {
        "scene_id": scene_id,
        "split": split,
        "seed": scene.seed,
        "height": int(height),
        "width": int(width),
        "images": images,
        "depths": list(frames["depth"].astype(np.float32)),
        "instances": list(frames["instance"].astype(np.uint8)),
        "extrinsics": list(frames["extrinsics"].astype(np.float32)),
        "intrinsics": list(frames["intrinsics"].astype(np.float32)),
        "hfov_deg": scene.hfov_deg,
        "room_size": list(scene.room_size),
        "objects": [
            {"id": k + 1, "category": obj.category, "shape": obj.shape, "center": list(obj.center), "size": list(obj.size), "yaw": obj.yaw}
            for k, obj in enumerate(scene.objects)
        ],
        "visible_objects": frames["visible_objects"],
    }


def _code_fingerprint() -> str:
    """Hash of the SynthRooms sources: part of the datasets cache key, so that a changed generator or
    renderer never reuses rows cached by an older version."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], sys.modules[render.__module__], sys.modules[sample_scene.__module__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _generate_rows(
    config: SynthRoomsConfig, device: Optional[str], code_fingerprint: str, indices: list[int], threads: Optional[int]
):
    del code_fingerprint  # only there to key the cache
    if threads is not None:  # worker processes of a multi-process build: one thread each, not one per core each
        torch.set_num_threads(threads)
    for index in indices:
        scene = generate_scene(scene_seed(config.seed, config.split, index), config)
        frames = render_scene_frames(scene, shadows=config.shadows, device=device)
        yield scene_to_row(scene, frames, f"{config.split}-{index:05d}", config.split)


def load_synthrooms(
    num_scenes: int = 8,
    frames_per_scene: int = 8,
    image_size: tuple[int, int] = TINY_IMAGE_SIZE,
    seed: int = 0,
    split: str = "train",
    *,
    hfov_deg: tuple[float, float] = (60.0, 75.0),
    num_objects: tuple[int, int] = (3, 12),
    shadows: bool = True,
    cache_dir: Optional[str] = None,
    device: Optional[str] = None,
    num_proc: Optional[int] = None,
):
    """Build a SynthRooms split as a ``datasets.Dataset`` (one row per scene; columns in the module doc).

    The rows are generated on the fly and written to an Arrow cache (``cache_dir``, default under
    ``HF_HOME``); identical arguments reuse the cache. ``device`` only moves the ray caster. ``num_proc`` renders
    scenes in that many processes (one torch thread each); every scene depends only on its index, so the rows are
    the same for any ``num_proc``.
    """
    import datasets

    config = SynthRoomsConfig(
        num_scenes=num_scenes,
        frames_per_scene=frames_per_scene,
        image_size=image_size,
        seed=seed,
        split=split,
        hfov_deg=hfov_deg,
        num_objects=num_objects,
        shadows=shadows,
    )
    parallel = num_proc is not None and num_proc > 1 and config.num_scenes > 1
    return datasets.Dataset.from_generator(
        _generate_rows,
        features=synthrooms_features(config.image_size),
        gen_kwargs={
            "config": config,
            "device": device,
            "code_fingerprint": _code_fingerprint(),
            "indices": list(range(config.num_scenes)),
            "threads": 1 if parallel else None,
        },
        cache_dir=cache_dir,
        split=datasets.Split(split),
        num_proc=num_proc if parallel else None,
    )

