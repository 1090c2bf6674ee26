"""A semantic teacher made here: a tiny DINOv3 ViT that knows what every patch of a SynthRooms view shows.

The real ``sem`` teacher (DINOv3 ViT-L) learned its features by self-distillation on a billion-plus images. On a
2-core CPU with minutes to spend, self-distillation would learn little; what the student needs from the teacher is
that patch features say *what* is there. SynthRooms' renderer knows that exactly, so the tiny teacher (the same
class, ``DINOv3ViTModel``) learns it directly: a linear classifier on each last-layer patch token predicts the
patch's class distribution (floor, wall, ceiling or a furniture category, by pixel share), trained with soft
cross-entropy. The features Spa3R predicts are those patch tokens.

Images reach the teacher exactly as in ``Spa3RForFieldPrediction.semantic_features``: resized bilinearly to a
square ``image_size`` and ImageNet-normalised.

:func:`evaluate_semantic_teacher` fits linear probes (per-patch majority class) on training views and scores them
on held-out scenes: teacher features against the patch's raw pixel colours and its mean colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel
from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTPreTrainedModel
from transformers.utils import ModelOutput

from ..data.synthrooms import CATEGORIES
from ..modeling_spa3r import semantic_teacher_inputs

__all__ = [
    "SEMANTIC_CLASSES",
    "DINOv3ForPatchClassification",
    "SemanticViews",
    "collate_semantic_views",
    "evaluate_semantic_teacher",
    "format_semantic_report",
    "patch_class_histograms",
    "pixel_classes",
    "teacher_patch_tokens",
]

SEMANTIC_CLASSES = ("floor", "wall", "ceiling", *CATEGORIES)
# A room-shell pixel this close (metres) to the floor or ceiling plane belongs to it; walls meet both at right angles.
_SHELL_TOLERANCE = 0.02


def pixel_classes(
    depth: np.ndarray,
    instance: np.ndarray,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    categories: Sequence[str],
    room_height: float,
) -> np.ndarray:
    """Class index (into :data:`SEMANTIC_CLASSES`) of every pixel of one rendered view.

    Args:
        depth: ``[H, W]`` z-depth (m); instance: ``[H, W]`` (0 = room shell, k = object k); extrinsics: ``[4, 4]``
            world-to-camera with the room's world frame (z up, floor at 0); intrinsics: ``[3, 3]`` pixels;
            categories: category of object k at index k - 1; room_height: ceiling height (m).
    Returns:
        ``[H, W]`` int64. Shell pixels are floor or ceiling by the height of the surface they show, else wall.
    """
    height, width = depth.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    rays = np.stack([cols, rows, np.ones_like(cols)], -1) @ np.linalg.inv(np.asarray(intrinsics, dtype=np.float64)).T
    points = rays * depth[..., None]
    rotation, translation = extrinsics[:3, :3], extrinsics[:3, 3]
    world_z = ((points - translation) @ rotation)[..., 2]  # Rᵀ (x - t), z component
    shell = np.where(world_z < _SHELL_TOLERANCE, 0, np.where(world_z > room_height - _SHELL_TOLERANCE, 2, 1))
    lookup = np.array([0] + [SEMANTIC_CLASSES.index(category) for category in categories], dtype=np.int64)
    if instance.max(initial=0) >= len(lookup):
        raise ValueError(f"instance mask names object {int(instance.max())} but the scene has {len(categories)} objects")
    return np.where(instance > 0, lookup[instance], shell)


def patch_class_histograms(labels: torch.Tensor, image_size: int, patch_size: int) -> torch.Tensor:
    """``[N, H, W]`` class maps -> per-patch class shares ``[N, G*G, K]`` on the teacher's ``G x G`` patch grid."""
    resized = F.interpolate(labels[:, None].float(), size=(image_size, image_size), mode="nearest")[:, 0].long()
    one_hot = F.one_hot(resized, len(SEMANTIC_CLASSES)).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(one_hot, patch_size).flatten(2).transpose(1, 2)


def teacher_patch_tokens(teacher: DINOv3ViTModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> the teacher's last-layer patch tokens ``[N, G*G, C]`` (class and register
    tokens dropped): what Spa3R's ``sem`` head predicts."""
    size = teacher.config.image_size
    hidden = teacher(pixel_values=semantic_teacher_inputs(pixel_values, size)).last_hidden_state
    grid = size // teacher.config.patch_size
    return hidden[:, hidden.shape[1] - grid * grid :]


class SemanticViews(torch.utils.data.Dataset):
    """Every frame of every SynthRooms scene as one item: ``pixel_values [3, H, W]`` and ``labels [H, W]``.

    ``scenes``: a SynthRooms dataset (columns ``images``, ``depths``, ``instances``, ``extrinsics``,
    ``intrinsics``, ``objects``, ``room_size``). Class maps are computed once per scene and kept.
    """

    def __init__(self, scenes, flip: bool = False, seed: int = 0):
        if len(scenes) == 0:
            raise ValueError("the scene source holds no scenes")
        self.scenes = scenes
        self.frames = len(scenes[0]["images"])
        self.flip = flip
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.scenes) * self.frames

    def _scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:
            row = self.scenes[index]
            categories = [obj["category"] for obj in row["objects"]]
            images = np.stack([np.asarray(image.convert("RGB")) for image in row["images"]])
            labels = np.stack(
                [
                    pixel_classes(np.asarray(d), np.asarray(m), np.asarray(e), np.asarray(k), categories, row["room_size"][2])
                    for d, m, e, k in zip(row["depths"], row["instances"], row["extrinsics"], row["intrinsics"])
                ]
            ).astype(np.uint8)
            self._cache[index] = (images, labels)
        return self._cache[index]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"view index {index} out of range for {len(self)} views")
        images, labels = self._scene(index // self.frames)
        image = torch.from_numpy(images[index % self.frames]).permute(2, 0, 1).float() / 255.0
        label = torch.from_numpy(labels[index % self.frames].astype(np.int64))
        if self.flip and np.random.default_rng([self.seed, index]).random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return {"pixel_values": image, "labels": label}


def collate_semantic_views(items: list[dict]) -> dict:
    return {key: torch.stack([item[key] for item in items]) for key in ("pixel_values", "labels")}


@dataclass
class PatchClassificationOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    losses: Optional[dict] = None
    logits: Optional[torch.Tensor] = None


class DINOv3ForPatchClassification(DINOv3ViTPreTrainedModel):
    """``DINOv3ViTModel`` plus a linear classifier on its last-layer patch tokens (soft cross-entropy).

    Only ``self.model`` is the teacher: export it with ``model.model.save_pretrained(folder)``.
    """

    def __init__(self, config: DINOv3ViTConfig):
        super().__init__(config)
        self.model = DINOv3ViTModel(config)
        self.classifier = nn.Linear(config.hidden_size, len(SEMANTIC_CLASSES))
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **unused) -> PatchClassificationOutput:
        """pixel_values: ``[N, 3, H, W]`` in [0, 1]; labels: ``[N, H, W]`` class indices (optional)."""
        logits = self.classifier(teacher_patch_tokens(self.model, pixel_values))
        output = PatchClassificationOutput(logits=logits)
        if labels is not None:
            shares = patch_class_histograms(labels, self.config.image_size, self.config.patch_size)
            loss = -(shares * logits.float().log_softmax(-1)).sum(-1).mean()
            output.loss, output.losses = loss, {"patch_class": loss.detach()}
        return output


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def _probe_inputs(teacher: DINOv3ViTModel, views: SemanticViews, indices: Sequence[int], batch_size: int = 64):
    """Per-patch features (teacher, raw pixels, mean colour) and majority labels for ``views[indices]``."""
    size, patch = teacher.config.image_size, teacher.config.patch_size
    feats: dict[str, list] = {"teacher": [], "raw_pixels": [], "mean_colour": []}
    labels = []
    teacher.eval()
    for start in range(0, len(indices), batch_size):
        batch = collate_semantic_views([views[i] for i in indices[start : start + batch_size]])
        feats["teacher"].append(teacher_patch_tokens(teacher, batch["pixel_values"]).flatten(0, 1).float())
        resized = F.interpolate(batch["pixel_values"], size=(size, size), mode="bilinear", align_corners=False)
        patches = F.unfold(resized, patch, stride=patch).transpose(1, 2)  # [N, G*G, 3*p*p]
        feats["raw_pixels"].append(patches.flatten(0, 1))
        feats["mean_colour"].append(patches.reshape(*patches.shape[:2], 3, -1).mean(-1).flatten(0, 1))
        labels.append(patch_class_histograms(batch["labels"], size, patch).argmax(-1).flatten())
    return {name: torch.cat(values) for name, values in feats.items()}, torch.cat(labels)


def _fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, steps: int = 300, weight_decay: float = 1e-4):
    """Multinomial logistic regression on standardised features (full-batch L-BFGS); returns a predict function."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    probe = nn.Linear(x.shape[1], len(SEMANTIC_CLASSES))
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), labels) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda new: probe((new - mean) / std).argmax(-1)


def evaluate_semantic_teacher(
    teacher: DINOv3ViTModel, train_views: SemanticViews, test_views: SemanticViews, num_train_views: int = 1024, seed: int = 0
) -> dict:
    """Per-patch linear-probe class accuracy on held-out views: teacher features vs raw patch pixels vs mean colour.

    Probes are fit on ``num_train_views`` random training views and scored on every test view. Returns
    ``{method: {"accuracy", "balanced_accuracy"}}`` (balanced: the mean of per-class recalls over the classes present)
    plus ``num_test_patches`` and ``class_shares`` (test patches per class).
    """
    rng = np.random.default_rng(seed)
    train_indices = sorted(rng.choice(len(train_views), size=min(num_train_views, len(train_views)), replace=False).tolist())
    train_feats, train_labels = _probe_inputs(teacher, train_views, train_indices)
    test_feats, test_labels = _probe_inputs(teacher, test_views, list(range(len(test_views))))
    results = {}
    present = test_labels.unique()
    with torch.enable_grad():
        for name in ("teacher", "raw_pixels", "mean_colour"):
            predict = _fit_linear_probe(train_feats[name], train_labels)
            with torch.no_grad():
                predicted = predict(test_feats[name])
            recalls = [(predicted[test_labels == c] == c).float().mean().item() for c in present]
            results[name] = {
                "accuracy": (predicted == test_labels).float().mean().item(),
                "balanced_accuracy": float(np.mean(recalls)),
            }
    counts = torch.bincount(test_labels, minlength=len(SEMANTIC_CLASSES)).tolist()
    results["num_test_patches"] = len(test_labels)
    results["class_shares"] = {c: n / len(test_labels) for c, n in zip(SEMANTIC_CLASSES, counts) if n}
    return results


def format_semantic_report(results: dict) -> str:
    """The scores of :func:`evaluate_semantic_teacher` as a Markdown table."""
    names = {"teacher": "teacher features", "raw_pixels": "raw patch pixels", "mean_colour": "mean patch colour"}
    lines = [
        f"Linear probe, per-patch object class ({len(SEMANTIC_CLASSES)} classes), {results['num_test_patches']} "
        "held-out patches (higher is better):",
        "",
        "| probe input | accuracy | balanced accuracy |",
        "|---|---|---|",
    ]
    for method, label in names.items():
        scores = results[method]
        lines.append(f"| {label} | {scores['accuracy']:.3f} | {scores['balanced_accuracy']:.3f} |")
    return "\n".join(lines)
