"""Pictures of feature fields: PCA colours, depth colours, the paper's Figure 2 and patch-grid images.

Used by PSFM evaluation (``train/pretrain_psfm.py``), the ``spa3-vlm field`` command and the Space. Colours of
features come from the top 3 principal components of a basis (the teacher's features), so the same colour means
the same feature in every picture drawn with that basis.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

__all__ = ["depth_colors", "field_pca_figure", "patch_picture", "pca_colors", "upscale"]


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


def upscale(image: torch.Tensor, width: int, mode: str = "bilinear") -> PIL.Image.Image:
    """``[3, H, W]`` in [0, 1] -> a PIL image about ``width`` pixels wide (an integer factor, at least 1)."""
    factor = max(1, width // image.shape[-1])
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    big = F.interpolate(image[None].float(), scale_factor=factor, mode=mode, **kwargs)[0]
    array = (big.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(array)


def patch_picture(features: torch.Tensor, basis: torch.Tensor, grid: tuple[int, int], width: int) -> PIL.Image.Image:
    """PCA colours of one view's ``features [N, C]`` (``N = h * w`` patches) in the top-3 components of
    ``basis [M, C]``, drawn as a patch image about ``width`` pixels wide."""
    colours = pca_colors(features.float(), basis.float()).reshape(*grid, 3).permute(2, 0, 1)
    return upscale(colours, width, "nearest")
