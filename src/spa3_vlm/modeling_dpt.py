"""VGGT's DPT head: dense depth / point-map prediction from aggregator tokens.

A re-implementation of the dense head of VGGT (facebookresearch/vggt, ``vggt/heads/dpt_head.py`` at
commit 44b3afbd), itself a DPT ("Vision Transformers for Dense Prediction") decoder. Parameter names
and shapes equal the reference's, so the ``depth_head.*`` / ``point_head.*`` tensors of the released
``facebook/VGGT-1B`` checkpoint load with ``load_state_dict(strict=True)``.

Pipeline for one chunk of frames (``hp, wp`` = patch grid, ``H, W`` = image size)::

    4 selected layers [B*S, hp*wp, dim_in] --LayerNorm (shared)--> 1x1 conv projections
      --> + sin/cos UV embedding --> resize x4, x2, x1, x1/2
      --> RefineNet fusion (coarse to fine) --> output_conv1
      --> bilinear (align_corners) to (H, W) --> + sin/cos UV embedding
      --> output_conv2 --> activation: preds [.., output_dim-1], confidence [..]

In *feature-only* mode (VGGT's tracking head) ``output_conv1`` keeps all ``features`` channels, there is no
``output_conv2`` and no activation: the head returns the resized feature map ``[B, S, features, H', W']``.

Ships to the Hub with ``save_pretrained``: imports only torch and the standard library.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DPTHead",
    "FeatureFusionBlock",
    "ResidualConvUnit",
    "DPTScratch",
    "activate_head",
    "inverse_log_transform",
    "create_uv_grid",
    "position_grid_to_embed",
    "make_sincos_pos_embed",
    "interpolate_bilinear",
    "add_uv_position_embedding",
    "POINT_ACTIVATIONS",
    "CONF_ACTIVATIONS",
]

POINT_ACTIVATIONS = ("norm_exp", "norm", "exp", "relu", "inv_log", "xy_inv_log", "sigmoid", "linear")
CONF_ACTIVATIONS = ("expp1", "expp0", "sigmoid")

# Above this many output elements one `F.interpolate` call can overflow 32-bit indexing on some
# backends; the reference splits the batch into chunks then. Same threshold, same semantics.
INTERPOLATE_MAX_ELEMENTS = 1610612736

# Channel width of the hidden layer of `output_conv2`; fixed in the reference.
_OUTPUT_HIDDEN_CHANNELS = 32


# --------------------------------------------------------------------------------------------------
# Functional helpers
# --------------------------------------------------------------------------------------------------


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """``sign(y) * (exp(|y|) - 1)``, elementwise (inverse of ``sign(x) * log(1 + |x|)``)."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def activate_head(
    out: torch.Tensor, activation: str = "norm_exp", conf_activation: str = "expp1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a raw head output into activated predictions and confidence.

    Args:
        out: ``[N, C, H, W]`` raw output; channels ``0..C-2`` are the prediction, ``C-1`` the
            confidence logit.
        activation: one of :data:`POINT_ACTIVATIONS`.
        conf_activation: one of :data:`CONF_ACTIVATIONS`.

    Returns:
        ``preds [N, H, W, C-1]`` and ``conf [N, H, W]``.
    """
    fmap = out.permute(0, 2, 3, 1)
    raw, conf_logit = fmap[..., :-1], fmap[..., -1]

    if activation == "norm_exp":
        # Direction times expm1(length): a log-scaled radius that keeps the direction exact.
        length = raw.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        preds = raw / length * torch.expm1(length)
    elif activation == "norm":
        preds = raw / raw.norm(dim=-1, keepdim=True)
    elif activation == "exp":
        preds = torch.exp(raw)
    elif activation == "relu":
        preds = F.relu(raw)
    elif activation == "inv_log":
        preds = inverse_log_transform(raw)
    elif activation == "xy_inv_log":
        xy, z = raw.split([raw.shape[-1] - 1, 1], dim=-1)
        z = inverse_log_transform(z)
        preds = torch.cat([xy * z, z], dim=-1)
    elif activation == "sigmoid":
        preds = torch.sigmoid(raw)
    elif activation == "linear":
        preds = raw
    else:
        raise ValueError(f"Unknown activation {activation!r}; expected one of {POINT_ACTIVATIONS}")

    if conf_activation == "expp1":
        conf = 1 + conf_logit.exp()
    elif conf_activation == "expp0":
        conf = conf_logit.exp()
    elif conf_activation == "sigmoid":
        conf = torch.sigmoid(conf_logit)
    else:
        raise ValueError(
            f"Unknown conf_activation {conf_activation!r}; expected one of {CONF_ACTIVATIONS}"
        )
    return preds, conf


def create_uv_grid(
    width: int,
    height: int,
    aspect_ratio: Optional[float] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Pixel-centre UV coordinates normalised by the image diagonal (MoGe convention).

    The grid spans ``±span * (n-1)/n`` on each axis, with ``span_x = a / sqrt(1+a²)`` and
    ``span_y = 1 / sqrt(1+a²)`` for aspect ratio ``a = width/height`` (unless given).

    Returns:
        ``[height, width, 2]``, where ``[..., 0]`` is u (varies along width) and ``[..., 1]`` is v.
    """
    if aspect_ratio is None:
        aspect_ratio = float(width) / float(height)
    diagonal = (aspect_ratio**2 + 1.0) ** 0.5
    span_x = aspect_ratio / diagonal
    span_y = 1.0 / diagonal
    extent_x = span_x * (width - 1) / width
    extent_y = span_y * (height - 1) / height
    u = torch.linspace(-extent_x, extent_x, steps=width, dtype=dtype, device=device)
    v = torch.linspace(-extent_y, extent_y, steps=height, dtype=dtype, device=device)
    grid_u, grid_v = torch.meshgrid(u, v, indexing="xy")
    return torch.stack((grid_u, grid_v), dim=-1)


def make_sincos_pos_embed(embed_dim: int, pos: torch.Tensor, omega_0: float = 100) -> torch.Tensor:
    """1D sin/cos embedding, computed in float64.

    Args:
        embed_dim: even output width D.
        pos: positions, any shape (flattened to ``M`` values).
        omega_0: frequency base; frequencies are ``omega_0 ** (-2k / D)``, ``k < D/2``.

    Returns:
        ``[M, D]`` float64: ``[sin(pos * freq) | cos(pos * freq)]``.
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even for a sin/cos embedding, got {embed_dim}")
    exponent = torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device) / (embed_dim / 2.0)
    freqs = 1.0 / omega_0**exponent
    angles = pos.reshape(-1).to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def position_grid_to_embed(pos_grid: torch.Tensor, embed_dim: int, omega_0: float = 100) -> torch.Tensor:
    """2D sin/cos embedding of a ``[H, W, 2]`` grid.

    Returns:
        ``[H, W, embed_dim]`` float64: ``[emb(u) | emb(v)]``, each half ``[sin | cos]``.
    """
    height, width, grid_dim = pos_grid.shape
    if grid_dim != 2:
        raise ValueError(f"pos_grid must be [H, W, 2], got shape {tuple(pos_grid.shape)}")
    flat = pos_grid.reshape(-1, 2)
    emb_u = make_sincos_pos_embed(embed_dim // 2, flat[:, 0], omega_0=omega_0)
    emb_v = make_sincos_pos_embed(embed_dim // 2, flat[:, 1], omega_0=omega_0)
    return torch.cat([emb_u, emb_v], dim=-1).view(height, width, embed_dim)


def interpolate_bilinear(x: torch.Tensor, size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of ``[N, C, h, w]`` to ``[N, C, *size]``.

    Huge outputs (more than :data:`INTERPOLATE_MAX_ELEMENTS` elements) are resized in batch chunks;
    each sample is resized independently, so the result is the same as one call.
    """
    size = (int(size[0]), int(size[1]))
    num_elements = size[0] * size[1] * x.shape[0] * x.shape[1]
    if num_elements <= INTERPOLATE_MAX_ELEMENTS:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    num_chunks = num_elements // INTERPOLATE_MAX_ELEMENTS + 1
    pieces = [
        F.interpolate(chunk, size=size, mode="bilinear", align_corners=align_corners)
        for chunk in torch.chunk(x, chunks=num_chunks, dim=0)
    ]
    return torch.cat(pieces, dim=0).contiguous()


def add_uv_position_embedding(
    x: torch.Tensor, image_width: int, image_height: int, ratio: float = 0.1
) -> torch.Tensor:
    """Add ``ratio`` times the 2D sin/cos UV embedding of ``x``'s own grid to ``x``.

    Args:
        x: ``[N, C, h, w]`` feature map, C divisible by 4.
        image_width, image_height: size of the input image; only its aspect ratio is used, so every
            feature level shares the image's UV frame.

    Returns:
        ``[N, C, h, w]`` in ``x.dtype`` (the sin/cos values are computed in float64, then cast to
        ``x.dtype`` so that they follow the features under autocast).
    """
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    # The reference builds the grid in the feature dtype (float32); doing the same keeps float32
    # outputs bit-identical, while half-precision features still get a float32 grid.
    grid_dtype = torch.promote_types(x.dtype, torch.float32)
    grid = create_uv_grid(
        width, height, aspect_ratio=image_width / image_height, dtype=grid_dtype, device=x.device
    )
    # Cast before scaling, as the reference does, so float32 results match it bit for bit.
    embed = position_grid_to_embed(grid, channels).to(x.dtype) * ratio
    return x + embed.permute(2, 0, 1)[None]


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class ResidualConvUnit(nn.Module):
    """Pre-activation residual block: ``relu(x) + conv2(relu(conv1(relu(x))))``.

    The skip branch carries ``relu(x)``, not ``x``: the reference applies an in-place ReLU to its
    input before the convolutions, which also rewrites the tensor it later adds back. That is
    reproduced here without mutating the caller's tensor.

    Shapes: ``[N, features, h, w] -> [N, features, h, w]``.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion step: merge a skip feature, refine, upsample, 1x1 conv.

    ``out = out_conv(resize(rcu2(coarse + rcu1(skip))))``; the coarsest block has no skip input and
    no ``resConfUnit1``.

    Shapes: ``coarse [N, F, h, w]``, ``skip [N, F, h, w]`` -> ``[N, F, *size]`` (default ``2h, 2w``).
    """

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        # Registration order matches the reference's state_dict order.
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self,
        coarse: torch.Tensor,
        skip: Optional[torch.Tensor] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> torch.Tensor:
        if self.has_residual:
            if skip is None:
                raise ValueError("this fusion block has a residual branch and needs a skip feature")
            coarse = coarse + self.resConfUnit1(skip)
        elif skip is not None:
            raise ValueError("this fusion block has no residual branch; got an unexpected skip feature")
        out = self.resConfUnit2(coarse)
        if size is None:
            size = (out.shape[-2] * 2, out.shape[-1] * 2)
        out = interpolate_bilinear(out, size, align_corners=True)
        return self.out_conv(out)


class DPTScratch(nn.Module):
    """The DPT decoder trunk (the reference's ``scratch`` container).

    ``layer{i}_rn`` map the four resized feature levels to ``features`` channels (3x3, no bias);
    ``refinenet4 -> 1`` fuse them coarse to fine; ``output_conv1`` halves the width.
    ``output_conv2`` (3x3 conv, ReLU, 1x1 conv to ``output_dim``) is applied by :class:`DPTHead`
    after the full-resolution resize. With ``feature_only`` ``output_conv1`` keeps the width and there
    is no ``output_conv2``.

    Shapes (``forward``): four maps ``[N, out_channels[i], h_i, w_i]`` with
    ``(h_i, w_i) = (4hp, 4wp), (2hp, 2wp), (hp, wp), (ceil(hp/2), ceil(wp/2))``
    -> ``[N, features // 2, 8hp, 8wp]`` (``[N, features, 8hp, 8wp]`` with ``feature_only``).
    """

    def __init__(self, out_channels: Sequence[int], features: int, output_dim: int, feature_only: bool = False) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(out_channels[0], features, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(out_channels[1], features, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(out_channels[2], features, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(out_channels[3], features, kernel_size=3, stride=1, padding=1, bias=False)
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            self.output_conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1)
            return
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, _OUTPUT_HIDDEN_CHANNELS, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(_OUTPUT_HIDDEN_CHANNELS, output_dim, kernel_size=1, stride=1, padding=0),
        )

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        level1 = self.layer1_rn(levels[0])
        level2 = self.layer2_rn(levels[1])
        level3 = self.layer3_rn(levels[2])
        level4 = self.layer4_rn(levels[3])
        out = self.refinenet4(level4, size=level3.shape[-2:])
        out = self.refinenet3(out, level3, size=level2.shape[-2:])
        out = self.refinenet2(out, level2, size=level1.shape[-2:])
        out = self.refinenet1(out, level1)
        return self.output_conv1(out)


class DPTHead(nn.Module):
    """VGGT's DPT head for dense per-pixel predictions (depth maps or world point maps).

    Args:
        dim_in: token width (``2 * embed_dim`` of the aggregator; 2048 for VGGT-1B).
        patch_size: pixels per patch side.
        output_dim: raw output channels; the last one is the confidence logit (depth: 2, points: 4).
        activation: prediction activation, one of :data:`POINT_ACTIVATIONS`.
        conf_activation: confidence activation, one of :data:`CONF_ACTIVATIONS`.
        features: decoder width.
        out_channels: widths of the four projected feature levels.
        intermediate_layer_idx: which four entries of the aggregator's token list are used.
        pos_embed: add the sin/cos UV embedding to every level and to the full-resolution map.
        feature_only: return the ``features``-channel map itself (no ``output_conv2``, no activation);
            ``output_dim`` and the activations are then unused.
        down_ratio: predict at ``(H / down_ratio, W / down_ratio)`` instead of ``(H, W)``.
        frames_chunk_size: default number of frames per chunk in :meth:`forward` (``None``: all).
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
        frames_chunk_size: Optional[int] = 8,
    ) -> None:
        super().__init__()
        out_channels = [int(c) for c in out_channels]
        intermediate_layer_idx = [int(i) for i in intermediate_layer_idx]
        if len(out_channels) != 4:
            raise ValueError(f"out_channels must have 4 entries, got {out_channels}")
        if len(intermediate_layer_idx) != 4:
            raise ValueError(f"intermediate_layer_idx must have 4 entries, got {intermediate_layer_idx}")
        if min(intermediate_layer_idx) < 0:
            raise ValueError(f"intermediate_layer_idx must be non-negative, got {intermediate_layer_idx}")
        if output_dim < 2:
            raise ValueError(f"output_dim must be >= 2 (predictions + confidence), got {output_dim}")
        if activation not in POINT_ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; expected one of {POINT_ACTIVATIONS}")
        if conf_activation not in CONF_ACTIVATIONS:
            raise ValueError(
                f"Unknown conf_activation {conf_activation!r}; expected one of {CONF_ACTIVATIONS}"
            )
        if isinstance(down_ratio, bool) or not isinstance(down_ratio, int) or down_ratio < 1:
            raise ValueError(f"down_ratio must be a positive int, got {down_ratio!r}")
        if pos_embed:
            output_width = features if feature_only else features // 2
            embedded_widths = out_channels + [output_width]
            if any(c % 4 for c in embedded_widths):
                raise ValueError(
                    "with pos_embed=True every embedded width (out_channels and the output width "
                    f"{'features' if feature_only else 'features // 2'}) must be divisible by 4, got "
                    f"out_channels={out_channels}, output width={output_width}"
                )
        if frames_chunk_size is not None and frames_chunk_size < 1:
            raise ValueError(f"frames_chunk_size must be a positive int or None, got {frames_chunk_size}")

        self.dim_in = dim_in
        self.patch_size = patch_size
        self.output_dim = output_dim
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.frames_chunk_size = frames_chunk_size
        self.intermediate_layer_idx = intermediate_layer_idx

        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(
            [nn.Conv2d(dim_in, c, kernel_size=1, stride=1, padding=0) for c in out_channels]
        )
        # Levels at 4x, 2x, 1x and 1/2x the patch grid.
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4, padding=0),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2, padding=0),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = DPTScratch(out_channels, features, output_dim, feature_only=feature_only)

    def forward(
        self,
        aggregated_tokens: Sequence[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_chunk_size: Optional[int] = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Predict a dense map and its confidence for every frame (or, ``feature_only``, a feature map).

        Args:
            aggregated_tokens: one ``[B, S, P, dim_in]`` tensor per aggregator layer, with
                ``P = patch_start_idx + (H/patch_size) * (W/patch_size)`` (patches row-major).
            images: ``[B, S, 3, H, W]``; only its shape is used.
            patch_start_idx: number of special tokens before the patch tokens of each frame.
            frames_chunk_size: frames decoded at once, to bound memory; ``None`` uses the value given
                at construction. Chunking does not change the result.

        Returns:
            ``preds [B, S, H', W', output_dim - 1]`` and ``conf [B, S, H', W']`` with
            ``(H', W') = (H, W) / down_ratio``; with ``feature_only`` one ``[B, S, features, H', W']`` map.
        """
        batch, num_frames, grid_h, grid_w = self._check_inputs(aggregated_tokens, images, patch_start_idx)
        chunk = self.frames_chunk_size if frames_chunk_size is None else frames_chunk_size
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"frames_chunk_size must be a positive int or None, got {chunk!r}")
        if chunk is None or chunk >= num_frames:
            chunk = num_frames

        image_h, image_w = images.shape[-2], images.shape[-1]
        chunks = []
        for start in range(0, num_frames, chunk):
            frames = slice(start, min(start + chunk, num_frames))
            out = self._decode_frames(aggregated_tokens, frames, patch_start_idx, grid_h, grid_w, image_h, image_w)
            parts = (out,) if self.feature_only else out
            chunks.append(tuple(part.reshape(batch, -1, *part.shape[1:]) for part in parts))
        merged = tuple(parts[0] if len(chunks) == 1 else torch.cat(parts, dim=1) for parts in zip(*chunks))
        return merged[0] if self.feature_only else merged

    def _decode_frames(
        self,
        aggregated_tokens: Sequence[torch.Tensor],
        frames: slice,
        patch_start_idx: int,
        grid_h: int,
        grid_w: int,
        image_h: int,
        image_w: int,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Decode the frames in ``frames`` of every sample: returns ``[B*s, H', W', *]`` maps
        (``feature_only``: one ``[B*s, features, H', W']`` map)."""
        levels = []
        for level, layer_idx in enumerate(self.intermediate_layer_idx):
            tokens = aggregated_tokens[layer_idx][:, frames, patch_start_idx:]
            tokens = self.norm(tokens.reshape(-1, grid_h * grid_w, tokens.shape[-1]))
            x = tokens.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[-1], grid_h, grid_w)
            x = self.projects[level](x)
            if self.pos_embed:
                x = add_uv_position_embedding(x, image_w, image_h)
            levels.append(self.resize_layers[level](x))

        out = self.scratch(levels)
        out_size = (
            int(grid_h * self.patch_size / self.down_ratio),
            int(grid_w * self.patch_size / self.down_ratio),
        )
        out = interpolate_bilinear(out, out_size, align_corners=True)
        if self.pos_embed:
            out = add_uv_position_embedding(out, image_w, image_h)
        if self.feature_only:
            return out
        out = self.scratch.output_conv2(out)
        return activate_head(out, activation=self.activation, conf_activation=self.conf_activation)

    def _check_inputs(
        self, aggregated_tokens: Sequence[torch.Tensor], images: torch.Tensor, patch_start_idx: int
    ) -> tuple[int, int, int, int]:
        """Validate shapes; returns ``(B, S, grid_h, grid_w)``."""
        if images.dim() != 5:
            raise ValueError(f"images must be [B, S, 3, H, W], got shape {tuple(images.shape)}")
        batch, num_frames, _, image_h, image_w = images.shape
        if image_h % self.patch_size or image_w % self.patch_size:
            raise ValueError(
                f"image size (H, W) = ({image_h}, {image_w}) must be a multiple of "
                f"patch_size={self.patch_size}"
            )
        grid_h, grid_w = image_h // self.patch_size, image_w // self.patch_size
        needed = max(self.intermediate_layer_idx) + 1
        if len(aggregated_tokens) < needed:
            raise ValueError(
                f"aggregated_tokens has {len(aggregated_tokens)} entries, but intermediate_layer_idx="
                f"{self.intermediate_layer_idx} needs at least {needed}"
            )
        if patch_start_idx < 0:
            raise ValueError(f"patch_start_idx must be >= 0, got {patch_start_idx}")
        expected = (batch, num_frames, patch_start_idx + grid_h * grid_w, self.dim_in)
        for layer_idx in self.intermediate_layer_idx:
            shape = tuple(aggregated_tokens[layer_idx].shape)
            if shape != expected:
                raise ValueError(
                    f"aggregated_tokens[{layer_idx}] has shape {shape}, expected [B, S, P, C] = "
                    f"{expected} for images of shape {tuple(images.shape)} (P = patch_start_idx "
                    f"{patch_start_idx} + {grid_h}x{grid_w} patches)"
                )
        return batch, num_frames, grid_h, grid_w
