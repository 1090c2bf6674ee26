"""VGGT's point-tracking head: a feature-only DPT and a CoTracker-style iterative tracker.

A re-implementation of ``vggt/heads/track_head.py`` and ``vggt/heads/track_modules/*`` of facebookresearch/vggt
(commit 44b3afbd). Parameter names, shapes and registration order equal the reference's, so the ``track_head.*``
tensors of facebook/VGGT-1B load with ``load_state_dict(strict=True)``; ``updateformer.virual_tracks`` keeps the
reference's spelling for that reason.

Pipeline (``B`` samples, ``S`` views, ``N`` query points in view 0, stride ``s``)::

    aggregator layers --DPT (feature only, no position embedding)--> feature maps [B, S, C, H/s, W/s]
      --LayerNorm over C--> correlation pyramid (levels halve the maps by 2x2 average pooling)
    query features = features of view 0 sampled at the query points (bilinear); track features start as them
    repeat `iterations` times:
        correlations of the track features around the current positions (every level, (2r+1)^2 samples)
        tokens = [flow embedding | corr_mlp(correlations) | track features] + query position embedding + ref token
        update transformer over time (per track) and space (tracks <-> virtual tracks) -> position and feature deltas
        positions += deltas (view 0 stays pinned to the query); track features += updater(deltas)
    visibility, confidence = sigmoid(linear(track features))

Ships to the Hub with ``save_pretrained``: imports only torch, the standard library and sibling modules.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_vggt import VGGTConfig
from .modeling_common import Mlp
from .modeling_dpt import DPTHead

__all__ = [
    "CorrelationPyramid",
    "TrackAttentionBlock",
    "TrackCrossAttentionBlock",
    "TrackUpdateFormer",
    "VGGTTrackHead",
    "VGGTTracker",
    "flow_embedding",
    "grid_position_embedding",
    "sample_bilinear",
]

# The reference divides track offsets by this (VGGT's training resolution) before feeding them to the transformer.
FLOW_SCALE = 518.0


def sample_bilinear(maps: torch.Tensor, coords: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear samples of ``maps [M, C, h, w]`` at pixel positions ``coords [M, *P, 2]`` (x, y).

    Pixel ``(row i, column j)`` is at ``(x, y) = (j, i)`` (``align_corners=True``). Outside the map ``padding_mode``
    applies (``"zeros"`` or ``"border"``). Positions are not differentiated through, as in the reference.

    Returns:
        ``[M, C, *P]``.
    """
    height, width = maps.shape[-2:]
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=coords.device, dtype=coords.dtype)
    grid = (coords.detach() * scale - 1).to(maps.dtype)
    points = coords.shape[1:-1]
    grid = grid.reshape(coords.shape[0], -1, 1, 2)
    sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return sampled.reshape(*sampled.shape[:2], *points)


def flow_embedding(flows: torch.Tensor, dim: int) -> torch.Tensor:
    """CoTracker's sin/cos embedding of 2D offsets: ``[..., 2] -> [..., 2 * dim]`` (float32).

    Per axis (x first, then y), channel ``2k`` is ``sin(v * f_k)`` and ``2k + 1`` is ``cos(v * f_k)`` with
    ``f_k = 2k * 1000 / dim`` for ``k < dim / 2``.
    """
    freqs = torch.arange(0, dim, 2, device=flows.device, dtype=torch.float32) * (1000.0 / dim)
    angles = flows.float()[..., None] * freqs  # [..., 2, dim/2]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-3)


def _sincos(positions: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    angles = positions.to(torch.float64)[..., None] * omega
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def grid_position_embedding(coords: torch.Tensor, dim: int, height: int, width: int) -> torch.Tensor:
    """The reference's 2D sin/cos embedding of a ``height x width`` grid, sampled bilinearly at ``coords``.

    The grid's value at pixel ``(i, j)`` is ``[sin(j w) | cos(j w) | sin(i w) | cos(i w)]`` with
    ``w_k = 10000 ** (-k / (dim / 4))``, ``k < dim / 4`` (computed in float64, stored as float32). The reference
    samples that grid with border padding; as each half depends on one axis only, the bilinear sample is the
    linear interpolation along that axis, computed here without building the grid.

    Args:
        coords: ``[..., 2]`` (x, y) in grid pixels.
    Returns:
        ``[..., dim]`` float32.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=coords.device) / quarter)

    def along(values: torch.Tensor, size: int) -> torch.Tensor:
        values = values.float().clamp(0, size - 1)  # border padding
        low = values.floor()
        high = (low + 1).clamp(max=size - 1)
        weight = (values - low)[..., None]
        return (1 - weight) * _sincos(low, omega) + weight * _sincos(high, omega)

    return torch.cat([along(coords[..., 0], width), along(coords[..., 1], height)], dim=-1)


class CorrelationPyramid:
    """Correlations of track features with multi-scale feature maps, sampled in a window around each track.

    Args:
        fmaps: ``[B, S, C, h, w]``; level ``l`` is ``fmaps`` average-pooled ``l`` times by 2x2 (floor).
        num_levels: pyramid levels; ``h`` and ``w`` must be at least ``2 ** (num_levels - 1)``.
        radius: the window spans ``-radius..radius`` pixels of each level on both axes.
    """

    def __init__(self, fmaps: torch.Tensor, num_levels: int, radius: int):
        height, width = fmaps.shape[-2:]
        smallest = 2 ** (num_levels - 1)
        if height < smallest or width < smallest:
            raise ValueError(
                f"feature maps of {height}x{width} are too small for {num_levels} correlation levels: every level "
                f"halves them, so both sides need at least {smallest} pixels"
            )
        self.radius = radius
        self.levels = [fmaps]
        for _ in range(num_levels - 1):
            previous = self.levels[-1]
            pooled = F.avg_pool2d(previous.flatten(0, 1), kernel_size=2, stride=2)
            self.levels.append(pooled.unflatten(0, previous.shape[:2]))
        steps = torch.arange(-radius, radius + 1, device=fmaps.device, dtype=torch.float32)
        # Window order as in the reference (its corr_mlp weights depend on it): the x offset is the slow index.
        self.offsets = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1)  # [2r+1, 2r+1, (dx, dy)]

    @property
    def num_channels(self) -> int:
        """Correlation values per track and view: ``levels * (2r+1)^2``."""
        return len(self.levels) * (2 * self.radius + 1) ** 2

    def sample(self, targets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Window correlations ``targets · fmap / sqrt(C)`` around ``coords``.

        Args:
            targets: ``[B, S, N, C]`` track features (one per view).
            coords: ``[B, S, N, 2]`` (x, y) in level-0 pixels.
        Returns:
            ``[B, S, N, levels * (2r+1)^2]``: level-major, then x offset, then y offset; zero outside the maps.
        """
        batch, views, points, channels = targets.shape
        windows = []
        for index, fmap in enumerate(self.levels):
            height, width = fmap.shape[-2:]
            corr = torch.matmul(targets, fmap.flatten(3)) / math.sqrt(channels)  # [B, S, N, h*w]
            centres = coords.reshape(-1, 1, 1, 2) / 2**index
            positions = centres + self.offsets.to(centres.dtype)
            sampled = sample_bilinear(corr.reshape(-1, 1, height, width), positions, padding_mode="zeros")
            windows.append(sampled.reshape(batch, views, points, -1))
        return torch.cat(windows, dim=-1)


class TrackAttentionBlock(nn.Module):
    """Self-attention block of the update transformer: ``[M, T, D] -> [M, T, D]``.

    As in the reference, both residuals start from the *normalised* input: ``y = LN1(x); y = y + attn(y);
    out = y + mlp(LN2(y))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TrackCrossAttentionBlock(nn.Module):
    """Cross-attention block: ``x [M, T, D]`` attends to ``context [M, T', D]``; same residual layout as
    :class:`TrackAttentionBlock`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TrackUpdateFormer(nn.Module):
    """The tracker's update transformer (the reference's ``EfficientUpdateFormer`` with space attention).

    Each of ``depth`` rounds runs time attention along every track, then space attention per view: the virtual
    tracks read all query tracks, attend among themselves, and the query tracks read the virtual tracks. Query
    tracks therefore exchange information only through the virtual tracks, and no track has a position in the
    track order: permuting the tracks permutes the output.

    Shapes: ``[B, N, T, input_dim] -> [B, N, T, output_dim]``.
    """

    def __init__(
        self, input_dim: int, hidden_size: int, output_dim: int, num_heads: int, depth: int, num_virtual_tracks: int
    ):
        super().__init__()
        self.num_virtual_tracks = num_virtual_tracks
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        self.time_blocks = nn.ModuleList(TrackAttentionBlock(hidden_size, num_heads) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(TrackAttentionBlock(hidden_size, num_heads) for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            TrackCrossAttentionBlock(hidden_size, num_heads) for _ in range(depth)
        )
        self.space_virtual2point_blocks = nn.ModuleList(
            TrackCrossAttentionBlock(hidden_size, num_heads) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.input_transform(self.input_norm(x))
        initial = tokens
        batch, num_points, num_times, dim = tokens.shape
        virtual = self.virual_tracks.to(tokens.dtype).expand(batch, -1, num_times, -1)
        tokens = torch.cat([tokens, virtual], dim=1)
        num_tracks = tokens.shape[1]
        rounds = zip(
            self.time_blocks, self.space_virtual2point_blocks, self.space_virtual_blocks, self.space_point2virtual_blocks
        )
        for time_block, to_virtual, virtual_block, to_points in rounds:
            tokens = time_block(tokens.reshape(batch * num_tracks, num_times, dim))
            space = tokens.reshape(batch, num_tracks, num_times, dim).transpose(1, 2).reshape(-1, num_tracks, dim)
            points, virtual = space[:, :num_points], space[:, num_points:]
            virtual = virtual_block(to_virtual(virtual, points))
            points = to_points(points, virtual)
            space = torch.cat([points, virtual], dim=1)
            tokens = space.reshape(batch, num_times, num_tracks, dim).transpose(1, 2)
        tokens = tokens[:, :num_points] + initial
        return self.flow_head(self.output_norm(tokens))


class VGGTTracker(nn.Module):
    """Iterative point tracker on per-view feature maps (the reference's ``BaseTrackerPredictor``).

    Args:
        latent_dim: feature-map channels ``C`` (= track feature width); divisible by 4.
        hidden_size / num_heads / depth / num_virtual_tracks: the update transformer.
        corr_levels / corr_radius: the correlation pyramid.
        stride: image pixels per feature-map pixel; query points and tracks are in image pixels.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        hidden_size: int = 384,
        num_heads: int = 8,
        depth: int = 6,
        num_virtual_tracks: int = 64,
        corr_levels: int = 7,
        corr_radius: int = 4,
        stride: int = 2,
    ):
        super().__init__()
        if latent_dim % 4:
            raise ValueError(f"latent_dim must be divisible by 4 (sin/cos embeddings of x and y), got {latent_dim}")
        self.latent_dim = latent_dim
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.stride = stride
        # Token = flow embedding (latent_dim) + raw flow twice (4) + correlation features + track features.
        self.transformer_dim = 3 * latent_dim + 4
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden_size, latent_dim)
        self.updateformer = TrackUpdateFormer(
            self.transformer_dim, hidden_size, latent_dim + 2, num_heads, depth, num_virtual_tracks
        )
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def forward(
        self, query_points: torch.Tensor, fmaps: torch.Tensor, num_iterations: int = 4
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """
        Args:
            query_points: ``[B, N, 2]`` (x, y) image pixels in view 0.
            fmaps: ``[B, S, C, h, w]`` feature maps at ``1 / stride`` of the image resolution.
            num_iterations: refinement steps.
        Returns:
            ``tracks`` (one ``[B, S, N, 2]`` image-pixel tensor per iteration; view 0 is always the query),
            ``visibility [B, S, N]`` and ``confidence [B, S, N]``, both in (0, 1).
        """
        num_views, height, width = fmaps.shape[1], fmaps.shape[-2], fmaps.shape[-1]
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        queries = query_points / float(self.stride)

        query_feats = sample_bilinear(fmaps[:, 0], queries, padding_mode="border").transpose(1, 2)  # [B, N, C]
        track_feats = query_feats[:, None].expand(-1, num_views, -1, -1)
        pyramid = CorrelationPyramid(fmaps, self.corr_levels, self.corr_radius)
        dtype = track_feats.dtype
        position = grid_position_embedding(queries, self.transformer_dim, height, width).to(dtype)[:, None]
        ref_token = torch.cat(
            [self.query_ref_token[:, :1], self.query_ref_token[:, 1:].expand(-1, num_views - 1, -1)], dim=1
        ).to(dtype)[:, :, None]  # [1, S, 1, D]: one token for view 0, another for the other views

        coords = queries[:, None].expand(-1, num_views, -1, -1)
        tracks = []
        for _ in range(num_iterations):
            coords = coords.detach()
            correlations = self.corr_mlp(pyramid.sample(track_feats, coords))
            flows = coords - coords[:, :1]
            scaled = flows / FLOW_SCALE
            flow_feats = torch.cat([flow_embedding(flows, self.latent_dim // 2), scaled, scaled], dim=-1)
            tokens = torch.cat([flow_feats.to(dtype), correlations, track_feats], dim=-1) + position + ref_token
            delta = self.updateformer(tokens.transpose(1, 2)).transpose(1, 2)  # [B, S, N, 2 + C]
            feat_update = self.ffeat_updater(self.ffeat_norm(delta[..., 2:].reshape(-1, self.latent_dim)))
            track_feats = track_feats + feat_update.reshape(track_feats.shape)
            coords = coords + delta[..., :2]
            # View 0 holds the queries themselves; only the other views move.
            coords = torch.cat([queries[:, None], coords[:, 1:]], dim=1)
            tracks.append(coords * self.stride)

        visibility = torch.sigmoid(self.vis_predictor(track_feats)).squeeze(-1)
        confidence = torch.sigmoid(self.conf_predictor(track_feats)).squeeze(-1)
        return tracks, visibility, confidence


class VGGTTrackHead(nn.Module):
    """VGGT's tracking head: DPT feature maps at ``1 / track_stride`` resolution and :class:`VGGTTracker`.

    The feature extractor reads ``config.dpt_intermediate_layers`` with ``config.dpt_out_channels`` (the reference
    builds it with the DPT defaults, which are VGGT-1B's), has ``track_features`` channels and no position embedding.
    """

    def __init__(self, config: VGGTConfig):
        super().__init__()
        self.stride = config.track_stride
        self.num_iterations = config.track_num_iterations
        self.feature_extractor = DPTHead(
            dim_in=config.output_hidden_size,
            patch_size=config.patch_size,
            features=config.track_features,
            out_channels=tuple(config.dpt_out_channels),
            intermediate_layer_idx=tuple(config.dpt_intermediate_layers),
            pos_embed=False,
            feature_only=True,
            down_ratio=config.track_stride,
        )
        self.tracker = VGGTTracker(
            latent_dim=config.track_features,
            hidden_size=config.track_hidden_size,
            num_heads=config.track_num_attention_heads,
            depth=config.track_depth,
            num_virtual_tracks=config.track_num_virtual_tracks,
            corr_levels=config.track_corr_levels,
            corr_radius=config.track_corr_radius,
            stride=config.track_stride,
        )

    def min_image_size(self) -> int:
        """Smallest image side (pixels) whose feature maps still fit every correlation level."""
        return self.stride * 2 ** (self.tracker.corr_levels - 1)

    def forward(
        self,
        aggregated_tokens: list[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        query_points: torch.Tensor,
        num_iterations: Optional[int] = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """
        Args:
            aggregated_tokens: the aggregator's ``[B, S, P, 2C]`` tensors (at least the DPT layers).
            images: ``[B, S, 3, H, W]``; only the shape is used.
            query_points: ``[B, N, 2]`` (x, y) pixels in view 0.
            num_iterations: refinement steps (default ``config.track_num_iterations``).
        Returns:
            ``(tracks, visibility, confidence)`` as :meth:`VGGTTracker.forward`.
        """
        fmaps = self.feature_extractor(aggregated_tokens, images, patch_start_idx)
        iterations = self.num_iterations if num_iterations is None else num_iterations
        return self.tracker(query_points, fmaps, num_iterations=iterations)
