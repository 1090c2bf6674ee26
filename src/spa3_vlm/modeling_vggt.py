"""VGGT geometry backbone: aggregator, camera head, DPT heads and tracking head, weight-compatible with
facebook/VGGT-1B.

``VGGTModel`` reads ``pixel_values [B, S, 3, H, W]`` in [0, 1] (ImageNet normalisation happens inside)
and returns one aggregated token tensor ``[B, S, P, 2C]`` per layer, where each frame holds
``P = 1 camera + R register + N patch`` tokens; the camera head turns the last layer into pose
encodings and cameras, the DPT heads into dense depth / point maps, and the optional tracking head
(``config.use_track_head``) follows query points of view 0 through every view.

A *view mask* (``True`` = target-only view) runs Spa3R's masked pass: context views attend only to
context views in the global blocks, target views attend to all. It is computed without an attention
mask: views are reordered context-first and each global block runs two attention calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_vggt import VGGTConfig
from .modeling_common import (
    Block,
    LayerScale,
    Mlp,
    RefuseMostlyMissingWeights,
    RotaryEmbedding2D,
    patch_grid_positions,
)
from .modeling_dpt import DPTHead
from .modeling_geometry import pose_encoding_to_cameras
from .modeling_vggt_track import TrackUpdateFormer, VGGTTracker, VGGTTrackHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> ImageNet mean/std normalised."""
    # Plain tensors rather than buffers: buffers would need re-initialising after meta-device loading.
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.compiler.disable  # reads values back to the host: torch.compile runs it as it is
def check_pixel_values(pixel_values: torch.Tensor, patch_size: int, name: str = "pixel_values") -> None:
    """Raise a ``ValueError`` that says what is wrong with a ``[B, S, 3, H, W]`` image batch in [0, 1]."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, S, 3, H, W], got {type(pixel_values).__name__}")
    if pixel_values.dim() != 5:
        raise ValueError(f"{name} must have shape [B, S, 3, H, W] (5 dims), got {tuple(pixel_values.shape)}")
    batch, views, channels, height, width = pixel_values.shape
    if batch == 0 or views == 0:
        raise ValueError(f"{name} needs at least one sample and one view, got shape {tuple(pixel_values.shape)}")
    if channels != 3:
        raise ValueError(f"{name} must have 3 (RGB) channels in dim 2, got {channels} (shape {tuple(pixel_values.shape)})")
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(
            f"{name} height and width must be positive multiples of the patch size {patch_size}, got {height}x{width}; "
            "resize with Spa3RImageProcessor (width 518, height rounded to a multiple of 14)"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {pixel_values.dtype}")
    if not torch.isfinite(pixel_values).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    low, high = pixel_values.min().item(), pixel_values.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"{name} must hold RGB values in [0, 1] (not 0-255 and not mean/std normalised), got range [{low:.3g}, {high:.3g}]"
        )


@torch.compiler.disable  # reads values back to the host: torch.compile runs it as it is
def context_first_order(view_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-sample view permutation that puts context views first, keeping their order.

    Args:
        view_mask: ``[B, S]`` bool, ``True`` = target-only view.
    Returns:
        ``(order [B, S], num_context_views)``.
    """
    num_context = (~view_mask).sum(dim=1)
    if (num_context != num_context[0]).any():
        raise ValueError(f"every sample needs the same number of context views, got {num_context.tolist()}")
    if view_mask[:, 0].any():
        raise ValueError("view 0 is the reference frame and must be a context view (view_mask[:, 0] must be False)")
    # A stable sort on the mask keeps context views, then target views, in their original order.
    order = torch.sort(view_mask.to(torch.uint8), dim=1, stable=True).indices
    return order, int(num_context[0])


def gather_views(tensor: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Reorder dim 1 of ``tensor [B, S, ...]`` by ``order [B, S']``."""
    index = order.reshape(order.shape + (1,) * (tensor.dim() - 2)).expand(*order.shape, *tensor.shape[2:])
    return torch.gather(tensor, 1, index)


class ConvPatchEmbed(nn.Module):
    """Strided convolution patch embedding: ``[B, 3, H, W] -> [B, N, C]`` (row-major patches)."""

    def __init__(self, patch_size: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(3, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class DinoV2PatchEmbed(nn.Module):
    """DINOv2 ViT with register tokens used as VGGT-1B's patch embedder.

    Returns the final-norm patch tokens ``[B, N, C]`` ("x_norm_patchtokens"). The learned position grid
    (``image_size // patch_size`` squared) is resized bicubically (with antialiasing) to other grids.
    """

    def __init__(self, config: VGGTConfig):
        super().__init__()
        dim = config.hidden_size
        self.patch_size = config.patch_size
        self.grid = config.image_size // config.patch_size
        self.num_register_tokens = config.num_register_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused at inference; part of the checkpoint
        self.patch_embed = ConvPatchEmbed(config.patch_size, dim)
        self.blocks = nn.ModuleList(
            Block(dim, config.patch_embed_num_heads, config.mlp_ratio, norm_eps=1e-6, init_values=1.0, config=config)
            for _ in range(config.patch_embed_num_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """``[1, 1 + grid_h*grid_w, C]`` class + patch position embeddings for a patch grid."""
        if grid_h == self.grid and grid_w == self.grid:
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(self.pos_embed.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)
        x = x + self.position_embedding(height // self.patch_size, width // self.patch_size)
        x = torch.cat([x[:, :1], self.register_tokens.expand(batch, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]


def _special_tokens(token: torch.Tensor, batch: int, views: int) -> torch.Tensor:
    """``[1, 2, k, C]`` learned tokens -> ``[B*S, k, C]``: index 0 for view 0, index 1 for the others."""
    # Picked by index rather than expanded to `views - 1` copies: under torch.compile a symbolic view count then
    # stays symbolic even when it starts at 2 (an expand to size 1 would fix it to that constant).
    choice = (torch.arange(views, device=token.device) > 0).long()
    return token[0, choice].expand(batch, -1, -1, -1).flatten(0, 1)


class VGGTAggregator(nn.Module):
    """Alternating frame / global attention over ``[camera, registers, patches]`` tokens of every view."""

    def __init__(self, config: VGGTConfig):
        super().__init__()
        dim = config.hidden_size
        self.config = config
        if config.patch_embed_type == "conv":
            self.patch_embed = ConvPatchEmbed(config.patch_size, dim)
        else:
            self.patch_embed = DinoV2PatchEmbed(config)
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, config.num_register_tokens, dim))

        def block(qk_norm: str) -> Block:
            return Block(
                dim,
                config.num_attention_heads,
                config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                proj_bias=config.proj_bias,
                ffn_bias=config.ffn_bias,
                qk_norm=qk_norm,
                qk_norm_eps=1e-5 if qk_norm == "layernorm" else None,
                init_values=config.layerscale_init,
                config=config,
            )

        self.frame_blocks = nn.ModuleList(block("layernorm") for _ in range(config.num_hidden_layers))
        self.global_blocks = nn.ModuleList(block(config.global_qk_norm) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        pixel_values: torch.Tensor,
        num_context_views: Optional[int] = None,
        keep_layers: Optional[set[int]] = None,
    ) -> list[Optional[torch.Tensor]]:
        """
        Args:
            pixel_values: ``[B, S, 3, H, W]`` in [0, 1].
            num_context_views: if set, the first that many views form the context: their global attention
                sees only context views, the remaining views see all.
            keep_layers: layer indices whose outputs are returned (``None`` = all); others are ``None``,
                which saves memory when only the last layer is needed.
        Returns:
            One ``[B, S, P, 2C]`` tensor (or ``None``) per layer.
        """
        batch, views, _, height, width = pixel_values.shape
        patch = self.config.patch_size
        grid_h, grid_w = height // patch, width // patch
        images = imagenet_normalize(pixel_values.flatten(0, 1))
        patches = self.patch_embed(images.to(self.camera_token.dtype))
        tokens = torch.cat(
            [
                _special_tokens(self.camera_token, batch, views),
                _special_tokens(self.register_token, batch, views),
                patches,
            ],
            dim=1,
        )
        per_view = tokens.shape[1]
        num_special = self.config.num_register_tokens + 1
        positions = torch.cat(
            [
                torch.zeros(num_special, 2, dtype=torch.long, device=tokens.device),
                patch_grid_positions(grid_h, grid_w, device=tokens.device, offset=1),
            ]
        )
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        frame_rope = RotaryEmbedding2D(positions, head_dim, self.config.rope_theta, dtype=tokens.dtype)
        global_rope = RotaryEmbedding2D(positions.repeat(views, 1), head_dim, self.config.rope_theta, dtype=tokens.dtype)
        num_context_tokens = None if num_context_views is None else num_context_views * per_view

        outputs: list[Optional[torch.Tensor]] = []
        for index, (frame_block, global_block) in enumerate(zip(self.frame_blocks, self.global_blocks)):
            tokens = frame_block(tokens.reshape(batch * views, per_view, -1), rope=frame_rope)
            frame_out = tokens.reshape(batch, views, per_view, -1)
            tokens = global_block(
                tokens.reshape(batch, views * per_view, -1), rope=global_rope, num_context_tokens=num_context_tokens
            )
            global_out = tokens.reshape(batch, views, per_view, -1)
            keep = keep_layers is None or index in keep_layers
            outputs.append(torch.cat([frame_out, global_out], dim=-1) if keep else None)
        return outputs


class VGGTCameraHead(nn.Module):
    """Iteratively refined pose encodings from the camera tokens of the last aggregator layer."""

    def __init__(self, config: VGGTConfig):
        super().__init__()
        dim = config.output_hidden_size
        self.num_iterations = config.camera_num_iterations
        self.trunk = nn.Sequential(
            *(
                Block(dim, config.camera_num_heads, config.mlp_ratio, init_values=config.layerscale_init, config=config)
                for _ in range(config.camera_trunk_depth)
            )
        )
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, 9))
        self.embed_pose = nn.Linear(9, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, 9)

    def forward(self, last_tokens: torch.Tensor) -> list[torch.Tensor]:
        """``last_tokens [B, S, P, 2C]`` -> one activated pose encoding ``[B, S, 9]`` per iteration."""
        camera_tokens = self.token_norm(last_tokens[:, :, 0])
        raw = None  # running, pre-activation estimate
        encodings = []
        for _ in range(self.num_iterations):
            condition = self.empty_pose_tokens.expand(*camera_tokens.shape[:2], -1) if raw is None else raw.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(condition)).chunk(3, dim=-1)
            modulated = gate * (self.adaln_norm(camera_tokens) * (1 + scale) + shift) + camera_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(modulated)))
            raw = delta if raw is None else raw + delta
            # Translation and quaternion stay linear; field-of-view angles must be non-negative.
            encodings.append(torch.cat([raw[..., :7], F.relu(raw[..., 7:])], dim=-1))
        return encodings


@dataclass
class VGGTOutput(ModelOutput):
    """
    Args:
        aggregated_tokens: one ``[B, S, P, 2C]`` tensor per aggregator layer (``None`` for dropped layers).
        patch_start_idx: index of the first patch token within ``P``.
        pose_enc: ``[B, S, 9]`` final pose encoding; ``pose_enc_list`` holds every refinement step.
        extrinsics: ``[B, S, 3, 4]`` world-to-camera (OpenCV), world = view 0's camera.
        intrinsics: ``[B, S, 3, 3]`` in pixels.
        depth / depth_conf: ``[B, S, H, W, 1]`` / ``[B, S, H, W]``.
        world_points / world_points_conf: ``[B, S, H, W, 3]`` / ``[B, S, H, W]``.
        tracks: ``[B, S, N, 2]`` pixel (x, y) positions of the query points in every view (last refinement step;
            view 0 holds the queries); ``track_list`` holds every step.
        track_visibility / track_confidence: ``[B, S, N]`` probabilities that the point is visible in the view and
            that its track is accurate.
    """

    aggregated_tokens: Optional[tuple] = None
    patch_start_idx: Optional[int] = None
    pose_enc: Optional[torch.Tensor] = None
    pose_enc_list: Optional[tuple] = None
    extrinsics: Optional[torch.Tensor] = None
    intrinsics: Optional[torch.Tensor] = None
    depth: Optional[torch.Tensor] = None
    depth_conf: Optional[torch.Tensor] = None
    world_points: Optional[torch.Tensor] = None
    world_points_conf: Optional[torch.Tensor] = None
    tracks: Optional[torch.Tensor] = None
    track_list: Optional[tuple] = None
    track_visibility: Optional[torch.Tensor] = None
    track_confidence: Optional[torch.Tensor] = None

    @property
    def last_patch_tokens(self) -> torch.Tensor:
        """``[B, S, N, 2C]`` patch tokens of the last layer (the features Spa3R encodes and predicts)."""
        return self.aggregated_tokens[-1][:, :, self.patch_start_idx :]


class VGGTPreTrainedModel(RefuseMostlyMissingWeights, PreTrainedModel):
    config_class = VGGTConfig
    base_model_prefix = "vggt"
    main_input_name = "pixel_values"
    _no_split_modules = ["Block"]
    # As Spa3R's: "eager" and "sdpa" through transformers' attention interface (tested), flash attention on the
    # standard path (untested here), no flex attention. The tracking head keeps torch's nn.MultiheadAttention.
    _supports_sdpa = True
    _supports_flash_attn = True
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, LayerScale):
            init.constant_(module.gamma, module.init_values)
        elif isinstance(module, VGGTAggregator):
            init.normal_(module.camera_token, std=1e-6)
            init.normal_(module.register_token, std=1e-6)
        elif isinstance(module, DinoV2PatchEmbed):
            init.trunc_normal_(module.pos_embed, std=std)
            init.normal_(module.cls_token, std=1e-6)
            init.normal_(module.register_tokens, std=1e-6)
            init.zeros_(module.mask_token)
        elif isinstance(module, VGGTCameraHead):
            init.zeros_(module.empty_pose_tokens)
            # A zero-initialised head predicts FoV 0 (infinite focal length) for every view. Start the
            # accumulated FoV near 1 rad instead so that a randomly initialised backbone gives usable cameras.
            fov_bias = module.pose_branch.fc2.bias
            with torch.no_grad():
                fov_bias[7:9] = 1.0 / module.num_iterations
        elif isinstance(module, VGGTTracker):
            init.normal_(module.query_ref_token, std=1.0)  # the reference's torch.randn
        elif isinstance(module, TrackUpdateFormer):
            init.normal_(module.virual_tracks, std=1.0)


class VGGTModel(VGGTPreTrainedModel):
    """The VGGT backbone with its camera, depth and point heads and, with ``config.use_track_head``, the tracking
    head (VGGT-1B has it; Spa3R never runs it)."""

    def __init__(self, config: VGGTConfig):
        super().__init__(config)
        self.aggregator = VGGTAggregator(config)
        self.camera_head = VGGTCameraHead(config) if config.use_camera_head else None
        dpt = dict(
            dim_in=config.output_hidden_size,
            patch_size=config.patch_size,
            features=config.dpt_features,
            out_channels=tuple(config.dpt_out_channels),
            intermediate_layer_idx=tuple(config.dpt_intermediate_layers),
        )
        # Built in the release's order so state dicts list tensors the same way.
        self.point_head = DPTHead(output_dim=4, activation="inv_log", **dpt) if config.use_point_head else None
        self.depth_head = DPTHead(output_dim=2, activation="exp", **dpt) if config.use_depth_head else None
        self.track_head = VGGTTrackHead(config) if config.use_track_head else None
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        view_mask: Optional[torch.Tensor] = None,
        compute_cameras: bool = True,
        compute_depth: bool = True,
        compute_points: bool = False,
        output_all_layers: bool = True,
        query_points: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> VGGTOutput:
        """
        Args:
            pixel_values: ``[B, S, 3, H, W]`` RGB in [0, 1]; H and W multiples of the patch size.
            view_mask: optional ``[B, S]`` bool, ``True`` = target-only view (masked pass, see module doc).
                View 0 must be a context view and every sample needs the same number of context views.
            compute_cameras / compute_depth / compute_points: run the heads (when built).
            output_all_layers: keep every layer's tokens; ``False`` keeps only those the heads need.
            query_points: ``[B, N, 2]`` pixel (x, y) positions in view 0, with ``0 <= x <= W - 1`` and
                ``0 <= y <= H - 1``: runs the tracking head (needs ``config.use_track_head``) and fills ``tracks``,
                ``track_list``, ``track_visibility`` and ``track_confidence``.
        """
        check_pixel_values(pixel_values, self.config.patch_size)
        height, width = pixel_values.shape[-2:]
        if query_points is not None:
            self._check_query_points(query_points, pixel_values)
        run_depth = compute_depth and self.depth_head is not None
        run_points = compute_points and self.point_head is not None
        keep = None
        if not output_all_layers:
            keep = {self.config.num_hidden_layers - 1}
            if run_depth or run_points or query_points is not None:
                keep |= set(self.config.dpt_intermediate_layers)

        order = None
        num_context = None
        images = pixel_values
        if view_mask is not None:
            if view_mask.shape != pixel_values.shape[:2]:
                raise ValueError(f"view_mask must have shape [B, S] = {tuple(pixel_values.shape[:2])}, got {tuple(view_mask.shape)}")
            order, num_context = context_first_order(view_mask.to(torch.bool))
            images = gather_views(pixel_values, order)

        tokens = self.aggregator(images, num_context_views=num_context, keep_layers=keep)
        if order is not None:
            inverse = torch.argsort(order, dim=1)
            tokens = [None if t is None else gather_views(t, inverse) for t in tokens]

        output = VGGTOutput(aggregated_tokens=tuple(tokens), patch_start_idx=self.config.patch_start_idx)
        if compute_cameras and self.camera_head is not None:
            pose_list = self.camera_head(tokens[-1])
            output.pose_enc_list = tuple(pose_list)
            output.pose_enc = pose_list[-1]
            output.extrinsics, output.intrinsics = pose_encoding_to_cameras(output.pose_enc, (height, width))
        if run_depth:
            output.depth, output.depth_conf = self.depth_head(tokens, pixel_values, self.config.patch_start_idx)
        if run_points:
            output.world_points, output.world_points_conf = self.point_head(tokens, pixel_values, self.config.patch_start_idx)
        if query_points is not None:
            # Positions stay in at least float32 even for a half-precision model: bf16 cannot hold pixel offsets.
            positions = query_points.to(torch.promote_types(query_points.dtype, torch.float32))
            tracks, visibility, confidence = self.track_head(tokens, pixel_values, self.config.patch_start_idx, positions)
            output.track_list = tuple(tracks)
            output.tracks = tracks[-1]
            output.track_visibility, output.track_confidence = visibility, confidence
        return output

    def _check_query_points(self, query_points: torch.Tensor, pixel_values: torch.Tensor) -> None:
        """Raise a ``ValueError`` that says what is wrong with ``query_points`` for this model and these images."""
        if self.track_head is None:
            raise ValueError(
                "query_points were given but this model has no tracking head; build it with "
                "VGGTConfig(use_track_head=True) (as facebook/VGGT-1B, hub_configs/vggt-1b)"
            )
        batch, _, _, height, width = pixel_values.shape
        expected = f"[B, N, 2] = [{batch}, N >= 1, 2] pixel (x, y) positions in view 0"
        if not isinstance(query_points, torch.Tensor) or not query_points.is_floating_point():
            got = query_points.dtype if isinstance(query_points, torch.Tensor) else type(query_points).__name__
            raise ValueError(f"query_points must be a floating-point tensor {expected}, got {got}")
        shape = tuple(query_points.shape)
        if len(shape) != 3 or shape[0] != batch or shape[1] == 0 or shape[2] != 2:
            raise ValueError(f"query_points must have shape {expected}, got {shape}")
        if not torch.isfinite(query_points).all():
            raise ValueError("query_points contains NaN or infinite values")
        x, y = query_points[..., 0], query_points[..., 1]
        if x.min() < 0 or x.max() > width - 1 or y.min() < 0 or y.max() > height - 1:
            raise ValueError(
                f"query_points must lie inside the {height}x{width} image: x in [0, {width - 1}], "
                f"y in [0, {height - 1}] (pixel coordinates); got x in [{x.min().item():.4g}, {x.max().item():.4g}], "
                f"y in [{y.min().item():.4g}, {y.max().item():.4g}]"
            )
        smallest = self.track_head.min_image_size()
        if min(height, width) < smallest:
            raise ValueError(
                f"images of {height}x{width} are too small for the tracking head: its {self.config.track_corr_levels} "
                f"correlation levels at stride {self.config.track_stride} need at least {smallest} pixels per side"
            )


__all__ = ["VGGTModel", "VGGTPreTrainedModel", "VGGTOutput", "check_pixel_values"]
