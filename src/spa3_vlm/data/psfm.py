"""PSFM pre-training samples: view sampling over multi-view scenes, and a size-aligning collator.

A *scene source* is any indexable of rows with ``images`` (V frames: PIL images or ``[H, W, 3]`` arrays),
``extrinsics`` (V world-to-camera 4x4), ``intrinsics`` (V 3x3 pixels) and optionally ``depths`` (V
``[H, W]`` metric z-depth) and ``scene_id`` -- a SynthRooms ``datasets.Dataset`` or the real-data loader.

Randomness is a pure function of ``(seed, sample index)``: the HF Trainer's seeded sampler decides the
order, and a resumed run draws exactly the same views and masks as an uninterrupted one.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling_geometry import relative_to_first

_COLUMNS = ("scene_id", "images", "extrinsics", "intrinsics", "depths")


def _check_range(name: str, value: Sequence[int], minimum: int) -> tuple[int, int]:
    low, high = (int(v) for v in value)
    if low < minimum or high < low:
        raise ValueError(f"{name} must be an inclusive range (low, high) with {minimum} <= low <= high, got {tuple(value)}")
    return low, high


def sample_strided_frames(
    num_frames: int, num_views: int, interval: tuple[int, int], rng: np.random.Generator, scene: str = "?"
) -> list[int]:
    """Increasing frame indices for one sample, like a strided walk through a video.

    Steps between consecutive indices are drawn from ``interval`` (inclusive), shrunk when the scene is
    too short for the upper bound; a scene shorter than ``(num_views - 1) * low`` takes distinct frames at
    random. A scene with fewer frames than ``num_views`` is an error (the reference silently repeats frames).
    Nothing is mutated: ``interval`` is never changed by a short scene.
    """
    low, high = interval
    if num_frames < num_views:
        raise ValueError(f"scene {scene} has {num_frames} frames, fewer than the {num_views} views requested")
    if num_views == 1:
        return [int(rng.integers(num_frames))]
    if num_frames > (num_views - 1) * low:
        high = min(high, (num_frames - 1) // (num_views - 1))
        start = int(rng.integers(0, num_frames - (num_views - 1) * high))
        steps = rng.integers(low, high + 1, size=num_views - 1)
        return [start] + (start + np.cumsum(steps)).tolist()
    return sorted(rng.choice(num_frames, size=num_views, replace=False).tolist())


def _to_float_image(image) -> torch.Tensor:
    """PIL image or ``[H, W, 3]`` uint8/float array -> ``[3, H, W]`` float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got an array of shape {array.shape}")
    tensor = torch.from_numpy(np.array(array))  # a writable copy: decoded rows may be read-only views
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    return tensor.permute(2, 0, 1)


def _relative_cameras(extrinsics, frames: list[int], scene: str) -> torch.Tensor:
    """``[V, 4, 4]`` float32 world-to-camera of ``frames`` expressed in the first one's frame, as VGGT predicts them
    (view 0 = identity); composed in float64, so that far-from-origin scenes lose nothing."""
    stacked = torch.as_tensor(np.stack([np.asarray(extrinsics[i], dtype=np.float64) for i in frames]))
    if not torch.isfinite(stacked).all():
        raise ValueError(f"scene {scene} has NaN or infinite camera poses in frames {frames}")
    return relative_to_first(stacked).float()


class PSFMDataset(torch.utils.data.Dataset):
    """Multi-view samples drawn from scenes.

    Args:
        scenes: a scene source (see module doc).
        num_views: inclusive range of views per sample (the reference uses 4–12).
        interval: inclusive range of frame steps between consecutive views.
        samples_per_scene: how many differently sampled view sets each scene yields per epoch.
        seed: base seed of the view sampling.
        cache_scenes: keep decoded scenes in memory after their first use (for small sources such as
            SynthRooms, where decoding a whole row per sample would dominate the step time).
    """

    def __init__(
        self,
        scenes,
        num_views: tuple[int, int] = (4, 12),
        interval: tuple[int, int] = (1, 1),
        samples_per_scene: int = 1,
        seed: int = 0,
        cache_scenes: bool = False,
    ):
        if len(scenes) == 0:
            raise ValueError("the scene source holds no scenes")
        if samples_per_scene < 1:
            raise ValueError(f"samples_per_scene must be >= 1, got {samples_per_scene}")
        if hasattr(scenes, "select_columns"):  # a datasets.Dataset: decode only the columns a sample reads
            scenes = scenes.select_columns([c for c in _COLUMNS if c in scenes.column_names])
        self.scenes = scenes
        self.num_views = _check_range("num_views", num_views, 1)
        self.interval = _check_range("interval", interval, 1)
        self.samples_per_scene = samples_per_scene
        self.seed = seed
        self._cache: Optional[dict] = {} if cache_scenes else None
        # relative_extrinsics reads the cameras alone: no image of a datasets.Dataset gets decoded for it.
        has_columns = hasattr(scenes, "select_columns") and "extrinsics" in scenes.column_names
        self._cameras = scenes.select_columns([c for c in ("scene_id", "extrinsics") if c in scenes.column_names]) if has_columns else scenes

    def _scene(self, index: int) -> dict:
        if self._cache is None:
            return self.scenes[index]
        if index not in self._cache:
            row = self.scenes[index]
            self._cache[index] = {
                "scene_id": row.get("scene_id", index),
                "images": [np.asarray(image.convert("RGB") if hasattr(image, "convert") else image) for image in row["images"]],
                "extrinsics": None if row.get("extrinsics") is None else [np.asarray(e) for e in row["extrinsics"]],
                "intrinsics": None if row.get("intrinsics") is None else [np.asarray(k) for k in row["intrinsics"]],
                "depths": None if row.get("depths") is None else [np.asarray(d) for d in row["depths"]],
            }
        return self._cache[index]

    def __len__(self) -> int:
        return len(self.scenes) * self.samples_per_scene

    def _frames(self, index: int, num_frames: int, scene: str, batch_views: Optional[int] = None) -> list[int]:
        """The frames of sample ``index``: a view count, then strided frames, both drawn from ``(seed, index)``."""
        rng = np.random.default_rng([self.seed, index])
        num_views = int(rng.integers(self.num_views[0], self.num_views[1] + 1))
        if batch_views is not None:
            num_views = int(batch_views)
        return sample_strided_frames(num_frames, num_views, self.interval, rng, scene)

    def relative_extrinsics(self, index: int) -> torch.Tensor:
        """The cameras of sample ``index`` alone, ``[V, 4, 4]`` in its first view's frame, as ``self[index]`` holds
        them, without reading its images (scenes need only an ``extrinsics`` column)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        row = self._cameras[index % len(self.scenes)]
        scene, extrinsics = str(row.get("scene_id", index % len(self.scenes))), row.get("extrinsics")
        if extrinsics is None:
            raise ValueError(f"scene {scene} has no cameras (extrinsics)")
        return _relative_cameras(extrinsics, self._frames(index, len(extrinsics), scene), scene)

    def __getitem__(self, index) -> dict:
        """``index``, or ``(index, num_views)`` as :class:`ViewBudgetBatchSampler` yields (the view count of the whole
        batch, instead of one drawn for this sample)."""
        index, batch_views = index if isinstance(index, tuple) else (index, None)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        row = self._scene(index % len(self.scenes))
        scene = str(row.get("scene_id", index % len(self.scenes)))
        frames = self._frames(index, len(row["images"]), scene, batch_views)
        images = [_to_float_image(row["images"][i]) for i in frames]
        sizes = {tuple(image.shape[1:]) for image in images}
        if len(sizes) != 1:
            raise ValueError(f"scene {scene} mixes image sizes {sorted(sizes)} across its frames")
        sample = {"index": index, "scene_id": scene, "pixel_values": torch.stack(images)}
        if row.get("extrinsics") is not None:  # sources without cameras need pose_source="backbone"
            intrinsics = torch.as_tensor(np.stack([np.asarray(row["intrinsics"][i], dtype=np.float32) for i in frames]))
            if not torch.isfinite(intrinsics).all():
                raise ValueError(f"scene {scene} has NaN or infinite camera intrinsics in frames {frames}")
            sample["extrinsics"] = _relative_cameras(row["extrinsics"], frames, scene)
            sample["intrinsics"] = intrinsics
        if "depths" in row and row["depths"] is not None:
            sample["depth"] = torch.stack([torch.as_tensor(np.asarray(row["depths"][i], dtype=np.float32)) for i in frames])
        return sample


class ConcatPSFMDataset(torch.utils.data.ConcatDataset):
    """``ConcatDataset`` of :class:`PSFMDataset` s (e.g. ScanNet and ScanNet++, each with its own frame steps) that
    also takes the ``(index, num_views)`` form, as the reference's does."""

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            return super().__getitem__(index)
        index, views = index
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        part = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[part - 1] if part > 0 else 0
        return self.datasets[part][(index - start, views)]


class ViewBudgetBatchSampler(torch.utils.data.Sampler):
    """The reference's ``DynamicBatchSampler``: every batch draws one view count ``V`` from ``num_views`` and holds
    ``max(1, images_per_batch // V)`` samples of ``V`` views each (24 images: 6 samples of 4 views ... 2 of 12), so
    the view counts are not biased low (a per-sample draw cut to the batch minimum is). Yields lists of
    ``(index, V)`` for :class:`PSFMDataset`.

    Deterministic in ``(seed, epoch)`` (``set_epoch``, called by the Trainer), so a resumed run skips exactly the
    batches it trained. An epoch has a fixed number of batches, ``ceil(num_samples / mean batch size)``; samples
    come from a shuffled order that is refilled when used up (the reference stops when its sampler runs out, so its
    epoch length varies; the Trainer plans steps from a fixed length).
    """

    def __init__(self, num_samples: int, num_views: tuple[int, int] = (4, 12), images_per_batch: int = 24, seed: int = 0):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_views = _check_range("num_views", num_views, 1)
        if images_per_batch < 1:
            raise ValueError(f"images_per_batch must be >= 1, got {images_per_batch}")
        self.num_samples, self.images_per_batch, self.seed, self.epoch = num_samples, images_per_batch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batch_size(self, views: int) -> int:
        return max(1, self.images_per_batch // views)

    def __len__(self) -> int:
        low, high = self.num_views
        mean_batch = sum(self.batch_size(v) for v in range(low, high + 1)) / (high - low + 1)
        return math.ceil(self.num_samples / mean_batch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order: list[int] = []
        for _ in range(len(self)):
            views = int(rng.integers(self.num_views[0], self.num_views[1] + 1))
            size = min(self.batch_size(views), self.num_samples)
            while len(order) < size:
                order += rng.permutation(self.num_samples).tolist()
            batch, order = order[:size], order[size:]
            yield [(index, views) for index in batch]


def _center_crop(tensor: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
    top = (tensor.shape[-2] - height) // 2
    left = (tensor.shape[-1] - width) // 2
    return tensor[..., top : top + height, left : left + width], top, left


@dataclass
class PSFMCollator:
    """Batch samples with different view counts and image sizes.

    As in the reference, sizes are aligned by centre-cropping every sample to the smallest height and width
    in the batch (intrinsics follow the crop); view counts are aligned by keeping the first ``min V`` views.
    Per-patch renderer targets are pooled *after* cropping, and the view split is drawn from
    ``(seed, sample indices)``.

    Args:
        patch_size: backbone patch size; crops keep multiples of it.
        mask_ratio: fraction of target-only views (view 0 is always context).
        field_targets: per-patch targets to build from the renderer: ``"rgb"`` (mean colour, 3) and/or
            ``"metric_depth"`` (mean z-depth in metres, 1; needs ``depth`` in the samples).
        seed: base seed of the view split.
        depth_maps: also return the cropped full-resolution depth maps as ``depth [B, V, H, W]`` (metres),
            the dense ground truth of geometry-teacher training.
    """

    patch_size: int = 14
    mask_ratio: float = 0.5
    field_targets: tuple[str, ...] = ()
    seed: int = 0
    depth_maps: bool = False

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        views = min(s["pixel_values"].shape[0] for s in samples)
        height = min(s["pixel_values"].shape[-2] for s in samples)
        width = min(s["pixel_values"].shape[-1] for s in samples)
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image sizes must be multiples of the patch size {self.patch_size}, got {height}x{width} "
                f"(scenes {[s.get('scene_id') for s in samples]})"
            )
        with_cameras = sum("extrinsics" in s for s in samples)
        if with_cameras not in (0, len(samples)):
            raise ValueError(f"{with_cameras} of {len(samples)} samples carry cameras: a batch needs all or none")
        pixel_values, intrinsics, depths = [], [], []
        for sample in samples:
            images, top, left = _center_crop(sample["pixel_values"][:views], height, width)
            pixel_values.append(images)
            if with_cameras:
                k = sample["intrinsics"][:views].clone()
                k[:, 0, 2] -= left
                k[:, 1, 2] -= top
                intrinsics.append(k)
            if "depth" in sample:
                depths.append(_center_crop(sample["depth"][:views], height, width)[0])
        batch = {"pixel_values": torch.stack(pixel_values)}
        if with_cameras:
            batch["extrinsics"] = torch.stack([s["extrinsics"][:views] for s in samples])
            batch["intrinsics"] = torch.stack(intrinsics)
        if (self.depth_maps or "metric_depth" in self.field_targets) and len(depths) != len(samples):
            raise ValueError("depth maps and the 'metric_depth' field target need a depth map in every sample")
        if self.depth_maps:
            batch["depth"] = torch.stack(depths)
        targets = {}
        if "rgb" in self.field_targets:
            targets["rgb"] = self.pool_patches(batch["pixel_values"])
        if "metric_depth" in self.field_targets:
            targets["metric_depth"] = self.pool_patches(torch.stack(depths)[:, :, None])
        if targets:
            batch["field_targets"] = targets
        rng = np.random.default_rng([self.seed, *[int(s["index"]) for s in samples]])
        num_context = max(1, int(views * (1 - self.mask_ratio)))
        view_mask = np.ones((len(samples), views), dtype=bool)
        view_mask[:, 0] = False
        for row in view_mask:
            row[1 + rng.permutation(views - 1)[: num_context - 1]] = False
        batch["view_mask"] = torch.from_numpy(view_mask)
        return batch

    def pool_patches(self, maps: torch.Tensor) -> torch.Tensor:
        """``[B, V, C, H, W]`` -> per-patch means ``[B, V, N, C]`` (row-major patches)."""
        batch, views, channels = maps.shape[:3]
        pooled = F.avg_pool2d(maps.flatten(0, 1).float(), self.patch_size)
        return pooled.flatten(2).transpose(1, 2).reshape(batch, views, -1, channels)
