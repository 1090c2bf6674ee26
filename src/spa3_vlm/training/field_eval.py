"""How good is a predicted spatial field? Scores on target views against two baselines, and a PCA figure.

For every held-out (target-only) view, each field head's prediction is compared with its teacher target,
next to two baselines computed from the same batch:

- ``context_mean``: the per-patch mean of the context views' targets;
- ``nearest_view``: the targets of the context view whose camera is nearest (centre distance plus the
  distance between unit viewing directions), at the same patch positions.

A model whose encoder also reads context fields (``config.context_inputs``) gets a second row,
``model_images_only``: the same model with those inputs withheld, as the Spa3-VLM encoder runs it.

Baselines copy what the context *images* give, as the model only sees images: the teacher features for ``geo`` and
``sem``. A depth probe trained on a renderer's depth (``config.depth_probe_target != "backbone"``) is scored against
that true depth, and its baselines copy the geometry teacher's depth *estimate* of the context views; copies of their
true depth, which no images-only method has, are reported apart (``depth_true_copies``).

Metrics per head: ``cosine`` (mean per-patch cosine similarity, heads wider than 1 channel) and ``l1``
(mean absolute error).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .geometry_teacher import pool_patches
from .psfm import field_model_inputs

METHODS = ("model", "model_images_only", "context_mean", "nearest_view")


def camera_centers_and_directions(extrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera ``[..., 4, 4]`` -> camera centres ``[..., 3]`` and unit viewing directions ``[..., 3]``."""
    rotation, translation = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    centers = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]
    directions = rotation[..., 2, :]  # the camera's +z axis in world coordinates
    return centers, directions


def nearest_context_view(extrinsics: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` index of the nearest context view for every view (see module doc for the distance)."""
    centers, directions = camera_centers_and_directions(extrinsics.float())
    distance = torch.cdist(centers, centers) + torch.cdist(directions, directions)
    distance = distance.masked_fill(view_mask[:, None, :], float("inf"))  # only context views are candidates
    return distance.argmin(dim=-1)


def teacher_depth(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Per-patch mean of the geometry teacher's depth estimate of every view: ``[B, V, N, 1]``."""
    backbone = model.spa3r.backbone
    if backbone is None or backbone.depth_head is None:
        raise ValueError("scoring a depth probe against a renderer's depth needs a backbone with a depth head (baselines)")
    depth = backbone(pixel_values, compute_cameras=False, compute_depth=True, output_all_layers=False).depth
    return pool_patches(depth.float(), model.config.patch_size)


def _scores(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    scores = {"l1": (prediction - target).abs().mean().item()}
    if target.shape[-1] > 1:
        scores["cosine"] = F.cosine_similarity(prediction, target, dim=-1).mean().item()
    return scores


@torch.no_grad()
def evaluate_field(model, batches: Iterable[dict], device: Optional[torch.device] = None) -> dict:
    """Average the scores of the model and both baselines over ``batches`` (collated PSFM batches with a view
    mask holding at least one target view).

    Returns ``{head: {method: {metric: value}}}`` with methods in :data:`METHODS` (``model_images_only`` only
    for models with ``config.context_inputs``), plus ``num_views``.
    """
    model.eval()
    device = device or next(model.parameters()).device
    sums: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    counts: dict = defaultdict(int)
    for batch in batches:
        batch = {k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in batch.items()}
        view_mask = batch["view_mask"]
        inputs = field_model_inputs(model, batch)
        output = model(**inputs)
        images_only = None
        if getattr(getattr(model, "config", None), "context_inputs", None):
            images_only = model(**inputs, use_context_inputs=False)
        extrinsics = batch.get("extrinsics")
        if extrinsics is None:
            raise ValueError("field evaluation needs camera extrinsics in the batch to find the nearest context view")
        nearest = nearest_context_view(extrinsics, view_mask)
        context = (~view_mask).float()[..., None, None]
        estimates = {}
        if "depth" in output.targets and getattr(model.config, "depth_probe_target", "backbone") != "backbone":
            estimates["depth"] = teacher_depth(model, batch["pixel_values"])

        def copies(values: torch.Tensor) -> dict[str, torch.Tensor]:
            mean = (values * context).sum(1, keepdim=True) / context.sum(1, keepdim=True)
            index = nearest[..., None, None].expand(-1, -1, *values.shape[2:])
            return {"context_mean": mean.expand_as(values), "nearest_view": torch.gather(values, 1, index)}

        for name, target in output.targets.items():
            target = target.float()
            candidates = {"model": output.predictions[name].float()}
            if images_only is not None:
                candidates["model_images_only"] = images_only.predictions[name].float()
            candidates.update(copies(estimates.get(name, target).float()))
            for method, values in candidates.items():
                for metric, value in _scores(values[view_mask], target[view_mask]).items():
                    sums[name][method][metric] += value * int(view_mask.sum())
            if name in estimates:
                for method, values in copies(target).items():
                    for metric, value in _scores(values[view_mask], target[view_mask]).items():
                        sums[f"{name}_true_copies"][method][metric] += value * int(view_mask.sum())
                counts[f"{name}_true_copies"] += int(view_mask.sum())
            counts[name] += int(view_mask.sum())
    if not counts:
        raise ValueError("no target views to evaluate: the batches need view_mask entries set to True")
    return {
        name: {method: {metric: total / counts[name] for metric, total in metrics.items()} for method, metrics in methods.items()}
        for name, methods in sums.items()
    } | {"num_views": max(counts.values())}


def format_field_table(results: dict) -> str:
    """A plain-text table: one row per (head, metric), one column per method; the best value is starred. Copies of
    true values that only a renderer has (``*_true_copies``) follow as a note."""
    heads = {name: methods for name, methods in results.items() if name != "num_views" and not name.endswith("_true_copies")}
    present = [m for m in METHODS if any(m in methods for methods in heads.values())]
    width = max(15, *(len(m) + 2 for m in present))
    lines = [f"{'head':<14}{'metric':<8}" + "".join(f"{m:>{width}}" for m in present)]
    for name, methods in heads.items():
        for metric in methods["model"]:
            values = [methods[m][metric] for m in present]
            best = int(np.argmax(values) if metric == "cosine" else np.argmin(values))
            cells = "".join(f"{v:>{width - 1}.4f}{'*' if i == best else ' '}" for i, v in enumerate(values))
            lines.append(f"{name:<14}{metric:<8}{cells}")
    lines.append(f"({results.get('num_views', 0)} held-out target views; cosine: higher is better, l1: lower is better)")
    for name, methods in results.items():
        if name.endswith("_true_copies"):
            head = name[: -len("_true_copies")]
            values = ", ".join(f"{method} {scores['l1']:.4f}" for method, scores in methods.items())
            lines.append(f"{head} baselines copy the teacher's estimate from the context images; copying their true {head} "
                         f"instead (a renderer's privilege) gives l1 {values}")
    return "\n".join(lines)


def pca_colors(features: torch.Tensor, basis_from: torch.Tensor) -> torch.Tensor:
    """Project ``features [..., C]`` on the top-3 principal components of ``basis_from [M, C]`` -> RGB in [0, 1]."""
    mean = basis_from.mean(0)
    _, _, vh = torch.linalg.svd(basis_from - mean, full_matrices=False)
    components = vh[:3].T  # [C, 3]
    reference = (basis_from - mean) @ components
    low, high = reference.quantile(0.02, dim=0), reference.quantile(0.98, dim=0)
    return (((features - mean) @ components - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


# A perceptually ordered colour ramp (dark blue -> teal -> yellow) for depth maps: near is bright.
_DEPTH_RAMP = torch.tensor([[0.27, 0.00, 0.33], [0.23, 0.32, 0.55], [0.13, 0.57, 0.55], [0.37, 0.79, 0.38], [0.99, 0.91, 0.14]])


def depth_colors(depth: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """``depth [...]`` in metres -> RGB ``[..., 3]`` in [0, 1] on a fixed ramp, ``near`` brightest, ``far`` darkest."""
    position = (1 - ((depth.float() - near) / max(far - near, 1e-6)).clamp(0, 1)) * (len(_DEPTH_RAMP) - 1)
    low = position.floor().long().clamp(max=len(_DEPTH_RAMP) - 2)
    weight = (position - low)[..., None]
    return _DEPTH_RAMP[low] * (1 - weight) + _DEPTH_RAMP[low + 1] * weight


def field_pca_figure(
    images: torch.Tensor,
    teacher: torch.Tensor,
    predicted: torch.Tensor,
    view_mask: torch.Tensor,
    patch_size: int = 14,
    true_depth: Optional[torch.Tensor] = None,
    predicted_depth: Optional[torch.Tensor] = None,
):
    """The paper's Figure 2 for one sample: rows = input views, teacher features, predicted features (both in the
    teacher's PCA basis, so colours mean the same in both rows) and, if given, true depth and the field's depth
    read-out (one colour scale for both).

    Args:
        images: ``[V, 3, H, W]`` in [0, 1]; teacher / predicted: ``[V, N, C]``; view_mask: ``[V]`` (True = unseen);
        true_depth / predicted_depth: optional ``[V, N]`` (or ``[V, N, 1]``) per-patch depths in metres.
    Returns:
        a PIL image with row labels; unseen (target) views are framed in red.
    """
    from PIL import Image, ImageDraw

    views, _, height, width = images.shape
    grid = (height // patch_size, width // patch_size)
    if teacher.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"features have {teacher.shape[1]} patches per view, the images have {grid[0] * grid[1]}")
    if teacher.shape[-1] < 3:
        raise ValueError(f"a PCA figure needs features with at least 3 channels, got {teacher.shape[-1]}")
    if (true_depth is None) != (predicted_depth is None):
        raise ValueError("pass both true_depth and predicted_depth, or neither")

    def tiles(colors: torch.Tensor) -> torch.Tensor:  # [V, N, 3] -> [V, 3, H, W]
        return F.interpolate(colors.reshape(views, *grid, 3).permute(0, 3, 1, 2), size=(height, width), mode="nearest")

    basis = teacher.reshape(-1, teacher.shape[-1]).float()
    rows = [("views", images.float())]
    rows += [(label, tiles(pca_colors(features.float(), basis))) for label, features in (("teacher", teacher), ("predicted", predicted))]
    if true_depth is not None:
        true_depth, predicted_depth = true_depth.reshape(views, -1), predicted_depth.reshape(views, -1)
        near, far = true_depth.float().quantile(0.02).item(), true_depth.float().quantile(0.98).item()
        rows += [("true depth", tiles(depth_colors(true_depth, near, far))), ("read-out", tiles(depth_colors(predicted_depth, near, far)))]
    pad, margin = 4, 70
    canvas = Image.new("RGB", (margin + views * (width + pad) + pad, len(rows) * (height + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, row) in enumerate(rows):
        y = pad + r * (height + pad)
        draw.text((4, y + height // 2 - 5), label, fill=(40, 40, 40))
        for v in range(views):
            tile = (row[v].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
            x = margin + pad + v * (width + pad)
            canvas.paste(Image.fromarray(tile), (x, y))
            if bool(view_mask[v]):
                draw.rectangle([x - 2, y - 2, x + width + 1, y + height + 1], outline=(220, 30, 30), width=2)
    return canvas
