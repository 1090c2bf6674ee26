"""A geometry teacher made here: a tiny ``VGGTModel`` trained on a renderer's exact ground truth.

The objective is VGGT's own (Wang et al., 2025, Sec. 3.4), computed against SynthRooms' exact cameras and
z-depth and the world points they imply:

- **camera**: Huber loss (or L1) on the pose encoding (translation, quaternion, field of view) of every refinement step of
  the camera head, later steps weighted more (``gamma ** (steps - 1 - i)``);
- **depth** and **point maps**: the aleatoric-uncertainty loss ``c·|x̂ - x| + c·|∇x̂ - ∇x| - α·log c`` with the
  head's confidence ``c >= 1``;
- **token read-out** (ours): a linear map from each last-layer patch token to its patch's mean log depth and
  mean point. Spa3R encodes and predicts exactly these tokens, so the geometry must be readable from them and
  not only from the DPT heads' multi-layer features (``shared/reference/teacher-probe.md``: without it, depth was
  in the model but only weakly in single last-layer tokens).

Points are expressed in view 0's camera frame, as VGGT predicts them. SynthRooms is metric (rooms of 3-10 m seen
from eye height), so targets stay in metres instead of being normalised by the mean point distance as VGGT does
for real data of unknown scale.

:func:`evaluate_geometry_teacher` scores depth (abs-rel, δ<1.25; metric and per-image median-scaled) against a
constant per-image median depth, and cameras (rotation, translation direction and translation error of views
1.. relative to view 0) against the identity pose and, for the direction, against the training views' mean direction
(:func:`mean_translation_direction`): camera walks move in a preferred direction, so a constant guess already
scores well below the 90° of chance. Whether the camera beats them is the paired difference of errors on the same
poses with a 95% interval from resampling the held-out scenes, not a comparison of two means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ..configuration_vggt import VGGTConfig
from ..data.psfm import PSFMCollator, PSFMDataset
from ..data.synthrooms import SynthRoomsConfig, generate_scene, scene_seed
from ..evaluation.statistics import paired_mean_difference
from ..modeling_geometry import cameras_to_pose_encoding, invert_intrinsics, invert_rigid, to_homogeneous
from ..modeling_vggt import VGGTModel, VGGTPreTrainedModel

__all__ = [
    "GeometryTeacherOutput",
    "VGGTForGeometryTraining",
    "confidence_loss",
    "evaluate_geometry_teacher",
    "format_geometry_report",
    "mean_translation_direction",
    "pool_patches",
    "score_geometry_teacher",
    "training_walks",
    "world_points_from_depth",
]


def world_points_from_depth(depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject z-depth through pixel centres into view 0's camera frame.

    Args:
        depth: ``[B, V, H, W]`` metres; extrinsics: ``[B, V, 3|4, 4]`` world-to-camera with world = view 0's
            camera; intrinsics: ``[B, V, 3, 3]`` pixels.
    Returns:
        ``[B, V, H, W, 3]``.
    """
    height, width = depth.shape[-2:]
    rows = torch.arange(height, device=depth.device, dtype=depth.dtype) + 0.5
    cols = torch.arange(width, device=depth.device, dtype=depth.dtype) + 0.5
    pixels = torch.stack([cols[None, :].expand(height, width), rows[:, None].expand(height, width), torch.ones_like(depth[0, 0])], -1)
    rays = torch.einsum("bvij,hwj->bvhwi", invert_intrinsics(intrinsics.to(depth.dtype)), pixels)  # z = 1
    camera_points = rays * depth[..., None]
    to_world = invert_rigid(to_homogeneous(extrinsics.to(depth.dtype)))
    return torch.einsum("bvij,bvhwj->bvhwi", to_world[..., :3, :3], camera_points) + to_world[..., None, None, :3, 3]


def translation_direction_loss(predicted: torch.Tensor, target: torch.Tensor, min_length: float = 1e-6) -> torch.Tensor:
    """Mean ``1 - cos`` between predicted and true translations ``[..., 3]`` over those at least ``min_length`` long
    (the first view's is zero); 0 when there are none."""
    moving = target.norm(dim=-1) >= min_length
    if not moving.any():
        return predicted.sum() * 0.0  # keeps the graph (and DDP) whole
    return (1 - F.cosine_similarity(predicted[moving], target[moving], dim=-1, eps=1e-8)).mean()


def pool_patches(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, V, H, W, C]`` -> per-patch means ``[B, V, N, C]`` (row-major patches)."""
    batch, views, height, width, channels = maps.shape
    pooled = F.avg_pool2d(maps.permute(0, 1, 4, 2, 3).flatten(0, 1), patch_size)
    return pooled.flatten(2).transpose(1, 2).reshape(batch, views, -1, channels)


def confidence_loss(
    prediction: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor, alpha: float
) -> torch.Tensor:
    """VGGT's uncertainty-weighted regression with a gradient term.

    Args:
        prediction / target: ``[B, V, H, W, C]``; confidence: ``[B, V, H, W]`` (``>= 1``).
    Returns:
        ``mean(c·|x̂ - x|₁) + mean(c·|∂x(x̂ - x)|₁ + c·|∂y(x̂ - x)|₁) - α·mean(log c)``.
    """
    error = prediction - target
    regression = (confidence * error.abs().sum(-1)).mean()
    grad_x = (error[:, :, :, 1:] - error[:, :, :, :-1]).abs().sum(-1)
    grad_y = (error[:, :, 1:] - error[:, :, :-1]).abs().sum(-1)
    gradient = (confidence[:, :, :, 1:] * grad_x).mean() + (confidence[:, :, 1:] * grad_y).mean()
    return regression + gradient - alpha * confidence.log().mean()


@dataclass
class GeometryTeacherOutput(ModelOutput):
    """``loss``: weighted sum of ``losses`` (each unweighted, for logging)."""

    loss: Optional[torch.Tensor] = None
    losses: Optional[dict] = None


class VGGTForGeometryTraining(VGGTPreTrainedModel):
    """``VGGTModel`` plus the token read-out, with VGGT's training losses (module doc).

    Only ``self.vggt`` is the teacher: export it with ``model.vggt.save_pretrained(folder)``.

    Args:
        config: the ``VGGTConfig`` of the teacher.
        loss_weights: name -> weight for ``camera``, ``depth``, ``points``, ``readout`` (VGGT weighs the camera
            loss 5, the dense losses 1).
        confidence_alpha: ``α`` of :func:`confidence_loss`.
        camera_gamma: weight decay over the camera head's refinement steps (the last step weighs 1).
        camera_loss_type: ``"huber"`` (the paper's ε-norm) or ``"l1"`` on the pose-encoding parts.
        camera_part_weights: weights of the translation, rotation and field-of-view parts of the camera loss
            (VGGT: equal). Metric translations of a few decimetres give small residuals; weighing them up keeps the
            head from settling on near-zero translations.
        translation_direction_weight: weight of an extra camera term, ``1 - cos`` between the predicted and the true
            translation of every view but the first (0 = off, VGGT's loss). It does not shrink with the translation's
            length, so a few centimetres of camera motion pull the direction as hard as metres do.
    """

    DEFAULT_LOSS_WEIGHTS = {"camera": 5.0, "depth": 1.0, "points": 1.0, "readout": 1.0}

    def __init__(
        self,
        config: VGGTConfig,
        loss_weights: Optional[dict[str, float]] = None,
        confidence_alpha: float = 0.2,
        camera_gamma: float = 0.6,
        camera_loss_type: str = "huber",
        camera_part_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        translation_direction_weight: float = 0.0,
    ):
        super().__init__(config)
        if not translation_direction_weight >= 0:
            raise ValueError(f"translation_direction_weight must be >= 0, got {translation_direction_weight!r}")
        self.translation_direction_weight = float(translation_direction_weight)
        if len(camera_part_weights) != 3 or not all(w >= 0 for w in camera_part_weights):
            raise ValueError(f"camera_part_weights must be three weights >= 0 (translation, rotation, fov), got {camera_part_weights!r}")
        self.camera_part_weights = tuple(float(w) for w in camera_part_weights)
        if camera_loss_type not in ("l1", "huber"):
            raise ValueError(f"camera_loss_type must be 'l1' or 'huber', got {camera_loss_type!r}")
        self.camera_loss = F.l1_loss if camera_loss_type == "l1" else F.huber_loss
        unknown = set(loss_weights or {}) - set(self.DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"loss_weights has unknown names {sorted(unknown)}; expected {sorted(self.DEFAULT_LOSS_WEIGHTS)}")
        self.loss_weights = {**self.DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        self.confidence_alpha = confidence_alpha
        self.camera_gamma = camera_gamma
        self.vggt = VGGTModel(config)
        # Per patch: mean log depth (1) and mean point in view 0's frame (3).
        self.readout = nn.Linear(config.output_hidden_size, 4)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        depth: torch.Tensor,
        extrinsics: torch.Tensor,
        intrinsics: torch.Tensor,
        **unused,
    ) -> GeometryTeacherOutput:
        """
        Args:
            pixel_values: ``[B, V, 3, H, W]`` in [0, 1]; depth: ``[B, V, H, W]`` z-depth in metres (> 0);
            extrinsics: ``[B, V, 3|4, 4]`` world-to-camera relative to view 0; intrinsics: ``[B, V, 3, 3]`` pixels.
            Other batch entries (``view_mask``, ...) are ignored.
        """
        if depth.shape != pixel_values.shape[:2] + pixel_values.shape[-2:]:
            raise ValueError(f"depth must be [B, V, H, W] = {tuple(pixel_values.shape[:2] + pixel_values.shape[-2:])}, got {tuple(depth.shape)}")
        if not (depth > 0).all():
            raise ValueError("depth must be positive everywhere (SynthRooms rooms are closed boxes)")
        config = self.config
        image_size = tuple(pixel_values.shape[-2:])
        output = self.vggt(
            pixel_values,
            # A head whose loss weighs 0 is not run (the DPT heads cost more than the aggregator at this size).
            compute_cameras=self.loss_weights["camera"] > 0,
            compute_depth=self.loss_weights["depth"] > 0,
            compute_points=self.loss_weights["points"] > 0,
            output_all_layers=False,
        )
        points = world_points_from_depth(depth.float(), extrinsics.float(), intrinsics.float())
        losses = {}
        if output.pose_enc_list is not None:
            target = cameras_to_pose_encoding(extrinsics.float(), intrinsics.float(), image_size)
            steps = len(output.pose_enc_list)
            camera = torch.zeros((), device=depth.device)
            for index, encoding in enumerate(output.pose_enc_list):
                weight = self.camera_gamma ** (steps - 1 - index)
                for part, part_weight in zip((slice(0, 3), slice(3, 7), slice(7, 9)), self.camera_part_weights):
                    camera = camera + weight * part_weight * self.camera_loss(encoding[..., part].float(), target[..., part])
                if self.translation_direction_weight > 0:
                    camera = camera + weight * self.translation_direction_weight * translation_direction_loss(
                        encoding[..., :3].float(), target[..., :3]
                    )
            losses["camera"] = camera
        if output.depth is not None:
            losses["depth"] = confidence_loss(output.depth.float(), depth[..., None].float(), output.depth_conf.float(), self.confidence_alpha)
        if output.world_points is not None:
            losses["points"] = confidence_loss(output.world_points.float(), points, output.world_points_conf.float(), self.confidence_alpha)
        readout = self.readout(output.last_patch_tokens)
        patch_targets = pool_patches(torch.cat([depth[..., None].float().log(), points], -1), config.patch_size)
        losses["readout"] = F.l1_loss(readout.float(), patch_targets)
        loss = sum(self.loss_weights[name] * value for name, value in losses.items())
        return GeometryTeacherOutput(loss=loss, losses=losses)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def _depth_scores(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    ratio = torch.maximum(prediction / target, target / prediction)
    return {"abs_rel": ((prediction - target).abs() / target).mean().item(), "delta1": (ratio < 1.25).float().mean().item()}


def _rotation_angle_deg(rotation: torch.Tensor) -> torch.Tensor:
    trace = rotation.diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.acos(((trace - 1) / 2).clamp(-1, 1)))


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (°) between the vectors ``a [..., 3]`` and ``b [..., 3]``."""
    return torch.rad2deg(torch.acos(F.cosine_similarity(a, b, dim=-1, eps=1e-9).clamp(-1, 1)))


@torch.no_grad()
def mean_translation_direction(batches: Iterable[dict]) -> torch.Tensor:
    """The mean direction ``[3]`` (unit length) of the camera centres of views 1.. in view 0's frame over
    ``batches`` (collated samples with ``extrinsics``): the best constant guess of a translation's direction that
    the training views allow, the baseline a camera head must beat."""
    total = torch.zeros(3)
    for batch in batches:
        centres = invert_rigid(to_homogeneous(batch["extrinsics"].float())[:, 1:])[..., :3, 3].reshape(-1, 3).cpu()
        total += F.normalize(centres, dim=-1, eps=1e-9).sum(0)
    if not total.norm() > 0:
        raise ValueError("the batches hold no moving camera (views 1.. of every sample sit at view 0's centre)")
    return F.normalize(total, dim=0)


@torch.no_grad()
def evaluate_geometry_teacher(
    vggt: VGGTModel, batches: Iterable[dict], prior_direction: Optional[torch.Tensor] = None
) -> dict:
    """Held-out scores of a VGGT teacher and its baselines.

    ``batches``: collated samples with ``pixel_values``, ``depth``, ``extrinsics`` and ``intrinsics`` (relative to
    view 0). Returns ``{"depth": {method: {"metric": {...}, "median_scaled": {...}}}, "camera": {method: {...}},
    "num_views": ...}`` with depth methods ``model`` and ``median_baseline`` (every pixel = the image's true median
    depth) and camera methods ``model`` and ``identity`` over views 1.. of every sample: mean rotation error (°),
    mean translation-direction error (°, camera centre in view 0's frame; undefined for the identity) and mean
    translation error (m). With ``prior_direction`` (``[3]``, e.g. :func:`mean_translation_direction` of training
    batches), camera method ``prior_direction`` scores that constant guess's translation direction (°).

    ``camera_vs_baselines`` says whether the camera beats its baselines beyond chance: the teacher's error minus the
    baseline's on the same poses (``rotation_deg`` against the identity, ``translation_direction_deg`` against
    ``prior_direction``), with a 95% interval from resampling scenes (:func:`~spa3_vlm.evaluation.statistics.
    paired_mean_difference`; a scene's poses move alike). A batch's ``scene_id`` list names each sample's scene;
    without it every sample counts as a scene of its own.
    """
    vggt.eval()
    device = next(vggt.parameters()).device
    sums: dict = {}
    count = {"depth": 0, "camera": 0}
    per_pose: dict[str, list] = {name: [] for name in ("rotation", "rotation_identity", "direction", "direction_prior", "scene")}
    samples_seen = 0

    def add(path: tuple, values: dict, weight: int) -> None:
        node = sums
        for key in path:
            node = node.setdefault(key, {})
        for name, value in values.items():
            node[name] = node.get(name, 0.0) + value * weight

    for batch in batches:
        pixel_values = batch["pixel_values"].to(device)
        depth = batch["depth"].to(device).float()
        output = vggt(pixel_values, compute_cameras=True, compute_depth=True, output_all_layers=False)
        predicted = output.depth[..., 0].float().clamp_min(1e-3)
        images = predicted.flatten(0, 1).flatten(1)
        truth = depth.flatten(0, 1).flatten(1)
        median_truth = truth.median(dim=1, keepdim=True).values
        scaled = images * median_truth / images.median(dim=1, keepdim=True).values
        views = truth.shape[0]
        add(("depth", "model", "metric"), _depth_scores(images, truth), views)
        add(("depth", "model", "median_scaled"), _depth_scores(scaled, truth), views)
        add(("depth", "median_baseline", "median_scaled"), _depth_scores(median_truth.expand_as(truth), truth), views)
        count["depth"] += views

        gt = to_homogeneous(batch["extrinsics"].to(device).float())[:, 1:]
        if gt.shape[1] == 0:
            continue
        pred = to_homogeneous(output.extrinsics.float())[:, 1:]
        centres_true, centres_pred = invert_rigid(gt)[..., :3, 3], invert_rigid(pred)[..., :3, 3]  # camera centres
        rotation = _rotation_angle_deg(pred[..., :3, :3] @ gt[..., :3, :3].transpose(-1, -2))
        rotation_identity = _rotation_angle_deg(gt[..., :3, :3])
        direction = _angle_deg(centres_pred, centres_true)
        pairs = gt.shape[0] * gt.shape[1]
        add(
            ("camera", "model"),
            {
                "rotation_deg": rotation.mean().item(),
                "translation_direction_deg": direction.mean().item(),
                "translation_m": (centres_pred - centres_true).norm(dim=-1).mean().item(),
            },
            pairs,
        )
        add(("camera", "identity"), {"rotation_deg": rotation_identity.mean().item(), "translation_m": centres_true.norm(dim=-1).mean().item()}, pairs)
        scenes = batch.get("scene_id") or [f"sample {samples_seen + i}" for i in range(gt.shape[0])]
        if len(scenes) != gt.shape[0]:
            raise ValueError(f"a batch's scene_id names {len(scenes)} scenes for its {gt.shape[0]} samples: one per sample")
        samples_seen += gt.shape[0]
        per_pose["scene"] += [str(scene) for scene in scenes for _ in range(gt.shape[1])]
        per_pose["rotation"].append(rotation.flatten().cpu())
        per_pose["rotation_identity"].append(rotation_identity.flatten().cpu())
        per_pose["direction"].append(direction.flatten().cpu())
        if prior_direction is not None:
            prior_error = _angle_deg(prior_direction.to(centres_true).expand_as(centres_true), centres_true)
            add(("camera", "prior_direction"), {"translation_direction_deg": prior_error.mean().item()}, pairs)
            per_pose["direction_prior"].append(prior_error.flatten().cpu())
        count["camera"] += pairs
    if count["depth"] == 0:
        raise ValueError("no batches to evaluate")

    def average(node, total):
        return {key: average(value, total) if isinstance(value, dict) else value / total for key, value in node.items()}

    results = {part: average(sums[part], count[part]) for part in sums}
    if count["camera"]:
        gains = {"rotation_deg": ("rotation", "rotation_identity"), "translation_direction_deg": ("direction", "direction_prior")}
        results["camera_vs_baselines"] = {
            name: paired_mean_difference(torch.cat(per_pose[model]), torch.cat(per_pose[baseline]), per_pose["scene"])
            for name, (model, baseline) in gains.items()
            if per_pose[baseline]
        }
    results["num_views"] = count["depth"]
    results["num_relative_poses"] = count["camera"]
    return results


def training_walks(num_scenes: int, frames_per_scene: int = 16, seed: int = 0) -> list[dict]:
    """The cameras of the first ``num_scenes`` SynthRooms training scenes of ``seed``, without rendering (``scene_id``
    and float32 ``extrinsics``, as :func:`~spa3_vlm.data.synthrooms.load_synthrooms` rows hold them): enough for
    :meth:`PSFMDataset.relative_extrinsics`, hence for the direction prior of :func:`score_geometry_teacher`."""
    config = SynthRoomsConfig(frames_per_scene=frames_per_scene)
    return [
        {
            "scene_id": f"train-{index:05d}",
            "extrinsics": generate_scene(scene_seed(seed, "train", index), config).extrinsics.astype(np.float32),
        }
        for index in range(num_scenes)
    ]


def score_geometry_teacher(vggt: VGGTModel, train_scenes, test_scenes, num_prior_scenes: int = 512) -> dict:
    """The report of ``train/train_geometry_teacher.py``: :func:`evaluate_geometry_teacher` on fixed 6-view samples
    of ``test_scenes`` (SynthRooms rows: a ``datasets.Dataset`` or a list), 1-4 frames apart whatever the run's own
    intervals, so that the reports of runs and of fine-tuning stages compare; the direction baseline is the mean
    direction of the same kind of samples of the first ``num_prior_scenes`` of ``train_scenes``."""
    def samples(rows):
        return PSFMDataset(rows, (6, 6), (1, 4), samples_per_scene=2, seed=12345)

    first = range(min(num_prior_scenes, len(train_scenes)))
    prior_samples = samples(train_scenes.select(first) if hasattr(train_scenes, "select") else [train_scenes[i] for i in first])
    prior = mean_translation_direction({"extrinsics": prior_samples.relative_extrinsics(i)[None]} for i in range(len(prior_samples)))
    collator = PSFMCollator(vggt.config.patch_size, mask_ratio=0.0, depth_maps=True)
    held_out = samples(test_scenes)
    batches = []
    for start in range(0, len(held_out), 4):
        chunk = [held_out[i] for i in range(start, min(start + 4, len(held_out)))]
        batches.append({**collator(chunk), "scene_id": [sample["scene_id"] for sample in chunk]})
    return evaluate_geometry_teacher(vggt, batches, prior_direction=prior)


def format_geometry_report(results: dict) -> str:
    """The scores of :func:`evaluate_geometry_teacher` as a Markdown table pair."""
    depth = results["depth"]
    lines = [
        f"Depth on {results['num_views']} held-out views (abs-rel lower is better, δ<1.25 higher is better):",
        "",
        "| method | abs-rel (median-scaled) | δ<1.25 (median-scaled) | abs-rel (metric) | δ<1.25 (metric) |",
        "|---|---|---|---|---|",
    ]
    names = {"model": "teacher", "median_baseline": "per-image true median"}
    for method, scores in depth.items():
        scaled, metric = scores.get("median_scaled", {}), scores.get("metric")
        metric_cells = f"{metric['abs_rel']:.3f} | {metric['delta1']:.3f}" if metric else "– | –"
        lines.append(f"| {names.get(method, method)} | {scaled['abs_rel']:.3f} | {scaled['delta1']:.3f} | {metric_cells} |")
    camera = results.get("camera")
    if camera:
        lines += [
            "",
            f"Cameras of views 1.. relative to view 0 ({results['num_relative_poses']} poses; lower is better):",
            "",
            "| method | rotation (°) | translation direction (°) | translation (m) |",
            "|---|---|---|---|",
        ]
        labels = {"model": "teacher", "identity": "identity pose", "prior_direction": "training views' mean direction"}
        for method, scores in camera.items():
            rotation, direction, translation = (
                scores.get(name) for name in ("rotation_deg", "translation_direction_deg", "translation_m")
            )
            cells = [
                "–" if rotation is None else f"{rotation:.1f}",
                "undefined" if direction is None else f"{direction:.1f}",
                "–" if translation is None else f"{translation:.3f}",
            ]
            lines.append(f"| {labels.get(method, method)} | " + " | ".join(cells) + " |")
    gains = results.get("camera_vs_baselines")
    if gains:
        baselines = {"rotation_deg": ("rotation", "identity pose"), "translation_direction_deg": ("translation direction", "mean direction")}
        first = next(iter(gains.values()))
        lines += [
            "",
            f"Teacher minus baseline on the same poses, with a {first['confidence']:.0%} interval from "
            f"{first['num_resamples']:,} resamples of the {first['num_scenes']} held-out scenes (it beats the baseline "
            "when the whole interval is below 0):",
            "",
        ]
        for name, gain in gains.items():
            what, baseline = baselines[name]
            verdict = "beats it" if gain["high"] < 0 else ("worse" if gain["low"] > 0 else "not distinguishable")
            lines.append(
                f"- {what} against the {baseline}: {gain['difference']:+.1f}° [{gain['low']:+.1f}, {gain['high']:+.1f}]: {verdict}"
            )
    return "\n".join(lines)

