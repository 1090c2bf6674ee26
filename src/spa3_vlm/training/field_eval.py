"""How good is a predicted spatial field? Scores on target views against two baselines (pictures of fields:
:mod:`spa3_vlm.visualization`).

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

from ..modeling_geometry import camera_centers_and_directions
from .geometry_teacher import pool_patches
from .psfm import field_model_inputs

METHODS = ("model", "model_images_only", "context_mean", "nearest_view")


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
