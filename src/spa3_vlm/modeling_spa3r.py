"""Spa3R: compress multi-view backbone tokens into a latent spatial field, and render it for any camera.

- ``Spa3RModel`` (the encoder path, what Spa3-VLM uses): frozen VGGT -> last-layer patch tokens of the
  context views -> linear projection -> ``[queries ; tokens]`` through a Transformer with 2D RoPE ->
  latents ``[B, num_queries, hidden]``.
- ``Spa3RForFieldPrediction`` (PSFM pre-training): adds a decoder that, for each view, reads
  ``[latents ; camera-ray tokens]`` with PRoPE attention conditioned on that view's camera (or plain attention on
  world-frame Plücker ray tokens, ``decoder_camera_attention="none"``: the paper's ablation), field heads
  (``geo`` = VGGT features, ``sem`` = semantic-teacher features, any extra named target) and a depth probe
  on detached features, and returns the losses so the HF Trainer can train it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_spa3r import Spa3RConfig
from .modeling_common import (
    Block,
    Mlp,
    RefuseMostlyMissingWeights,
    RotaryEmbedding2D,
    check_finite_tensor,
    check_finite_tensors,
    patch_grid_positions,
)
from .modeling_geometry import ProjectiveRoPE, camera_rays, contiguous_slice_bounds, plucker_rays, to_homogeneous
from .modeling_vggt import VGGTModel, check_pixel_values, context_first_order, gather_views, imagenet_normalize


# Output activations a head may use (config.head_activations): positive depths, colours in [0, 1].
HEAD_ACTIVATIONS = {"identity": lambda x: x, "exp": torch.exp, "sigmoid": torch.sigmoid}


class Spa3RTransformer(nn.Module):
    """Pre-norm Transformer with register tokens: ``[B, T, C] -> [B, T, C]``.

    Registers are prepended internally and dropped from the output. Positional information comes from
    a ``RotaryEmbedding2D`` covering ``[registers ; tokens]`` (encoder) or a ``ProjectiveRoPE`` acting on
    the trailing spatial tokens (decoder).
    """

    def __init__(self, config: Spa3RConfig, num_layers: int):
        super().__init__()
        dim = config.hidden_size
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_attention_heads,
                config.mlp_ratio,
                qk_norm="rmsnorm" if config.qk_norm else None,
                norm_eps=config.layer_norm_eps,
                config=config,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(
        self, tokens: torch.Tensor, output_rows: Optional[slice] = None, prefix: Optional[torch.Tensor] = None, **attention_kwargs
    ) -> torch.Tensor:
        """``[prefix ; tokens]`` -> ``[B, T, C]``, or only the rows ``output_rows`` (a contiguous slice of the ``T``
        tokens) of it: the last block then computes attention, output projection and MLP for those rows only (the
        same values at less cost; every row still gives keys and values).

        ``tokens [B, T - P, C]`` follow the optional ``prefix [B, P, C]`` (queries, latents): passed apart, so that no
        concatenated copy of the two stays alive through every layer as an argument of this call.
        """
        num_registers = self.register_tokens.shape[1]
        registers = self.register_tokens.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        head = [registers] if prefix is None else [registers, prefix.to(tokens.dtype)]
        x = torch.cat([*head, tokens], dim=1)
        start, stop = contiguous_slice_bounds(output_rows or slice(None), x.shape[1] - num_registers)
        last_rows = slice(num_registers + start, num_registers + stop)
        for index, block in enumerate(self.blocks):
            x = block(x, query_rows=last_rows if index == len(self.blocks) - 1 else None, **attention_kwargs)
        if not self.blocks:
            x = x[:, last_rows]
        return self.norm(x)


def ray_codes(
    config: Spa3RConfig, extrinsics: torch.Tensor, intrinsics: torch.Tensor, patch_grid: tuple[int, int], image_size: tuple[int, int]
) -> torch.Tensor:
    """Per-patch ray codes ``[B, V, h*w, config.ray_code_size]`` (``config.ray_encoding``) for cameras
    ``[B, V, 3|4, 4]`` / ``[B, V, 3, 3]`` in pixels of an ``image_size`` image."""
    cell_intrinsics = intrinsics.float().clone()  # pixels -> patch-grid cells
    cell_intrinsics[..., 0, :] /= image_size[1] / patch_grid[1]
    cell_intrinsics[..., 1, :] /= image_size[0] / patch_grid[0]
    if config.ray_encoding == "plucker":
        rays = plucker_rays(extrinsics.float(), cell_intrinsics, patch_grid)  # [B, V, 6, h, w]
    else:
        rays = camera_rays(cell_intrinsics, patch_grid)  # [B, V, 3, h, w]
    return rays.flatten(-2).transpose(-1, -2)


@dataclass
class Spa3RModelOutput(ModelOutput):
    """
    Args:
        latents: ``[B, num_queries, hidden]`` latent spatial field.
        context_tokens: ``[B, Vc, N, C_backbone]`` backbone patch tokens that were encoded.
    """

    latents: Optional[torch.Tensor] = None
    context_tokens: Optional[torch.Tensor] = None


@dataclass
class Spa3RFieldOutput(ModelOutput):
    """
    Args:
        loss: sum of all losses (the depth probe's gradient only reaches the probe).
        losses: name -> scalar: ``{head}_l1`` (smooth-L1), ``{head}_cos`` (1 - cosine) per head, ``depth_probe``.
        latents: ``[B, num_queries, hidden]``.
        hidden_states: ``[B, V, N, hidden]`` decoder output per view.
        predictions / targets: name -> ``[B, V, N, C]`` field per head (and ``depth`` for the probe).
        view_mask: ``[B, V]`` bool, ``True`` = target-only view.
    """

    loss: Optional[torch.Tensor] = None
    losses: Optional[dict] = None
    latents: Optional[torch.Tensor] = None
    hidden_states: Optional[torch.Tensor] = None
    predictions: Optional[dict] = None
    targets: Optional[dict] = None
    view_mask: Optional[torch.Tensor] = None


def frozen_autocast(device: torch.device):
    """bf16 autocast for the frozen teachers on GPUs (their features are targets, not trained); fp32 elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _freeze(module: Optional[nn.Module]) -> None:
    if module is not None:
        module.requires_grad_(False)
        module.eval()


class Spa3RPreTrainedModel(RefuseMostlyMissingWeights, PreTrainedModel):
    config_class = Spa3RConfig
    base_model_prefix = "spa3r"
    main_input_name = "pixel_values"
    _no_split_modules = ["Block"]
    # Attention goes through transformers' attention interface (modeling_common.Attention): "eager" and "sdpa" are
    # tested; flash attention takes the standard path (q/k/v [B, heads, N, d], no mask, not causal, module.config)
    # but is untested here (no GPU with flash-attn). No flex attention: it is untested.
    _supports_sdpa = True
    _supports_flash_attn = True
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.trunc_normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, Spa3RTransformer):
            init.normal_(module.register_tokens, std=1e-6)

    def freeze_teachers(self) -> None:
        """Freeze the backbone and teachers (no gradients, eval mode). Loading replaces parameters, so
        ``from_pretrained`` calls this again."""
        for module in self.modules():
            if isinstance(module, VGGTModel) or module is getattr(self, "semantic_teacher", None):
                _freeze(module)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        if isinstance(model, Spa3RPreTrainedModel):  # not a (model, info) tuple
            model.freeze_teachers()
        elif isinstance(model, tuple):
            model[0].freeze_teachers()
        return model


def encoder_positions(num_prefix_tokens: int, patch_grid: tuple[int, int], num_views: int, device=None) -> torch.Tensor:
    """``[num_prefix + V*h*w, 2]`` RoPE positions of the encoder sequence ``[registers ; queries ; patches]``.

    Registers and queries sit at (0, 0), the identity rotation; patches at (row+1, col+1) on the same grid for
    every context view (views are told apart only by their backbone features).
    """
    return torch.cat(
        [
            torch.zeros(num_prefix_tokens, 2, dtype=torch.long, device=device),
            patch_grid_positions(*patch_grid, device=device, offset=1).repeat(num_views, 1),
        ]
    )


class Spa3RModel(Spa3RPreTrainedModel):
    """Frozen VGGT + query-based encoder: multi-view images -> latent spatial field."""

    # A field-prediction checkpoint also holds the decoder, heads and teachers, and its backbone may keep heads (depth
    # for the probe's baselines) that an encoder-only config drops; the encoder ignores them.
    _keys_to_ignore_on_load_unexpected = [
        r"^(decoder|heads|depth_probe|pose_tokenizer|semantic_teacher)\.",
        r"(^|\.)backbone\.(camera|depth|point|track)_head\.",
    ]

    def __init__(self, config: Spa3RConfig):
        super().__init__(config)
        self.backbone = VGGTModel(config.vggt_config) if config.vggt_config is not None else None
        self.projection = nn.Linear(config.backbone_hidden_size, config.hidden_size)
        # Plücker codes of the context rays, where the encoder knows the context cameras.
        self.ray_embedding = None
        if config.encoder_camera_encoding == "prope" and config.ray_encoding == "plucker":
            self.ray_embedding = nn.Linear(config.ray_code_size, config.hidden_size)
        self.context_input_projections = None
        if config.context_inputs:
            self.context_input_projections = nn.ModuleDict(
                # Bias-free, so that a withheld (zeroed) input adds exactly what an absent one adds: nothing. (A zero
                # initialisation, which would start from the paper's encoder, learned clearly slower on SynthRooms.)
                {name: nn.Linear(channels, config.hidden_size, bias=False) for name, channels in config.context_inputs.items()}
            )
        self.query_embed = nn.Embedding(config.num_queries, config.hidden_size)
        self.encoder = Spa3RTransformer(config, config.num_encoder_layers)
        self.post_init()
        self.freeze_teachers()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: always in inference mode
        return self

    def encode_tokens(
        self,
        context_tokens: torch.Tensor,
        patch_grid: tuple[int, int],
        extrinsics: Optional[torch.Tensor] = None,
        intrinsics: Optional[torch.Tensor] = None,
        image_size: Optional[tuple[int, int]] = None,
        context_inputs: Optional[dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Encode backbone tokens of the context views into the latent field.

        Args:
            context_tokens: ``[B, Vc, N, C_backbone]``, patches row-major on a ``patch_grid = (h, w)`` grid.
            extrinsics / intrinsics: the context views' cameras (``[B, Vc, 3|4, 4]`` world-to-camera,
                ``[B, Vc, 3, 3]`` pixels of an ``image_size`` image, default ``patch_grid * patch_size``); used only
                with ``encoder_camera_encoding="prope"``, where they are required.
            context_inputs: optional ``name -> [B, Vc, N, channels]`` per-patch fields of the context views, for
                the names in ``config.context_inputs`` (absent names add nothing).
        Returns:
            ``[B, num_queries, hidden]``.
        """
        check_finite_tensors(
            {"context_tokens": context_tokens, **{f"context input {k!r}": v for k, v in (context_inputs or {}).items()}},
            "[B, Vc, N, C]",
        )
        prope = self.config.encoder_camera_encoding == "prope"
        if prope and extrinsics is not None and intrinsics is not None and context_tokens.dim() == 4:
            check_cameras(extrinsics, intrinsics, *context_tokens.shape[:2])
        return self._encode_tokens(context_tokens, patch_grid, extrinsics, intrinsics, image_size, context_inputs)

    def _encode_tokens(
        self,
        context_tokens: torch.Tensor,
        patch_grid: tuple[int, int],
        extrinsics: Optional[torch.Tensor],
        intrinsics: Optional[torch.Tensor],
        image_size: Optional[tuple[int, int]],
        context_inputs: Optional[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """:meth:`encode_tokens` for inputs whose values are already checked (shapes are checked here): no host
        synchronisation on the training path, where the tokens come from the frozen backbone."""
        if context_tokens.dim() != 4:
            raise ValueError(f"context_tokens must be [B, Vc, N, C_backbone], got shape {tuple(context_tokens.shape)}")
        batch, views, num_patches, channels = context_tokens.shape
        grid_h, grid_w = patch_grid
        if views == 0 or batch == 0:
            raise ValueError(f"context_tokens needs at least one sample and one context view, got {tuple(context_tokens.shape)}")
        if channels != self.config.backbone_hidden_size:
            raise ValueError(f"context_tokens have {channels} channels, expected backbone_hidden_size={self.config.backbone_hidden_size}")
        if num_patches != grid_h * grid_w:
            raise ValueError(f"context_tokens have {num_patches} tokens per view, but patch_grid {patch_grid} has {grid_h * grid_w}")
        num_queries = self.config.num_queries
        tokens = self.projection(context_tokens.to(self.projection.weight.dtype))
        if context_inputs and self.context_input_projections is None:
            raise ValueError(f"context_inputs {sorted(context_inputs)} were given, but config.context_inputs configures none")
        if self.context_input_projections is not None:
            tokens = tokens + self._embed_context_inputs(context_inputs, context_tokens.shape[:3], tokens.dtype)
        tokens = tokens.flatten(1, 2)
        queries = self.query_embed.weight.expand(batch, -1, -1)
        if self.config.encoder_camera_encoding == "prope":
            if extrinsics is None or intrinsics is None:
                raise ValueError(
                    "encoder_camera_encoding='prope' needs the context views' extrinsics and intrinsics "
                    "(Spa3RModel.forward takes them from the backbone's camera head when not given)"
                )
            patch = self.config.patch_size
            size = image_size or (grid_h * patch, grid_w * patch)
            if self.ray_embedding is not None:
                rays = ray_codes(self.config, extrinsics, intrinsics, patch_grid, size).flatten(1, 2)
                tokens = tokens + self.ray_embedding(rays.to(tokens.dtype))
            camera = ProjectiveRoPE(extrinsics, intrinsics, size, patch_grid, self.config.head_dim, self.config.prope_freq_base)
            encoded = self.encoder(tokens, output_rows=slice(0, num_queries), prefix=queries, camera_transform=camera)
        else:
            positions = encoder_positions(self.config.num_register_tokens + num_queries, patch_grid, views, tokens.device)
            rope = RotaryEmbedding2D(positions, self.config.head_dim, self.config.rope_theta, dtype=tokens.dtype)
            encoded = self.encoder(tokens, output_rows=slice(0, num_queries), prefix=queries, rope=rope)
        return encoded

    def _embed_context_inputs(
        self, context_inputs: Optional[dict[str, torch.Tensor]], shape: torch.Size, dtype: torch.dtype
    ) -> torch.Tensor | float:
        """Sum of the projected extra context inputs (``config.context_inputs``); an absent input adds nothing."""
        context_inputs = context_inputs or {}
        unknown = sorted(set(context_inputs) - set(self.context_input_projections))
        if unknown:
            raise ValueError(f"context_inputs {unknown} are not configured; config.context_inputs: {self.config.context_inputs}")
        total = 0.0
        for name, values in context_inputs.items():
            channels = self.config.context_inputs[name]
            if values.shape != (*shape, channels):
                raise ValueError(f"context input {name!r} must be [B, Vc, N, {channels}] = {(*shape, channels)}, got {tuple(values.shape)}")
            total = total + self.context_input_projections[name](values.to(dtype))
        return total

    def _check_images(self, pixel_values: torch.Tensor) -> None:
        check_pixel_values(pixel_values, self.config.patch_size)
        if self.backbone is None:
            raise ValueError("this Spa3R config has no vggt_config: pass backbone tokens to encode_tokens() instead")

    def backbone_tokens(self, pixel_values: torch.Tensor, compute_cameras: bool = False):
        """The frozen VGGT on ``pixel_values [B, V, 3, H, W]`` in [0, 1]: its output, whose ``last_patch_tokens``
        ``[B, V, N, C_backbone]`` are what the encoder reads (cameras too with ``compute_cameras``)."""
        self._check_images(pixel_values)
        return self._run_backbone(pixel_values, compute_cameras)

    def _run_backbone(self, pixel_values: torch.Tensor, compute_cameras: bool):
        with torch.no_grad(), frozen_autocast(pixel_values.device):
            return self.backbone(pixel_values, compute_cameras=compute_cameras, compute_depth=False, output_all_layers=False)

    def forward(
        self,
        pixel_values: torch.Tensor,
        extrinsics: Optional[torch.Tensor] = None,
        intrinsics: Optional[torch.Tensor] = None,
        context_inputs: Optional[dict[str, torch.Tensor]] = None,
        **kwargs,
    ) -> Spa3RModelOutput:
        """``pixel_values [B, V, 3, H, W]`` in [0, 1] (all views are context) -> latents.

        With ``encoder_camera_encoding="prope"``, cameras (``[B, V, 3|4, 4]``, ``[B, V, 3, 3]`` pixels) may be
        given; otherwise the backbone's camera head predicts them. ``context_inputs`` (``name -> [B, V, N, c]``)
        as in :meth:`encode_tokens`.
        """
        self._check_images(pixel_values)
        if (extrinsics is None) != (intrinsics is None):
            raise ValueError("pass extrinsics and intrinsics together (one camera per view), or neither")
        if extrinsics is not None and self.config.encoder_camera_encoding != "prope":
            raise ValueError(
                "this encoder reads no cameras (encoder_camera_encoding='none', the paper's: it infers view geometry "
                "from the backbone's tokens); drop extrinsics/intrinsics, or use a config with "
                "encoder_camera_encoding='prope'"
            )
        height, width = pixel_values.shape[-2:]
        need_cameras = self.config.encoder_camera_encoding == "prope" and extrinsics is None
        if need_cameras and self.backbone.camera_head is None:
            raise ValueError("encoder_camera_encoding='prope' needs cameras: pass extrinsics/intrinsics or enable the camera head")
        out = self._run_backbone(pixel_values, need_cameras)  # checked above
        if need_cameras:
            extrinsics, intrinsics = out.extrinsics.float(), out.intrinsics.float()
        tokens = out.last_patch_tokens
        patch = self.config.patch_size
        latents = self.encode_tokens(
            tokens, (height // patch, width // patch), extrinsics, intrinsics, (height, width), context_inputs=context_inputs
        )
        return Spa3RModelOutput(latents=latents, context_tokens=tokens)


# Rigid-rotation tolerance (|R Rᵀ - I|, |det R - 1|): loose enough for float32 poses read from files.
_ROTATION_TOLERANCE = 1e-3
# Larger translations overflow float32 in the ray and PRoPE maths (1e30 gave NaN fields); no scene is that large.
_MAX_TRANSLATION = 1e6


@torch.compiler.disable  # reads values back to the host: torch.compile runs it as it is
def check_cameras(extrinsics: torch.Tensor, intrinsics: torch.Tensor, batch: int, views: int) -> None:
    """Raise a ``ValueError`` unless extrinsics are ``[B, V, 3|4, 4]`` rigid world-to-camera transforms and intrinsics
    ``[B, V, 3, 3]`` pinhole matrices (positive focal lengths, last row ``0 0 1``), all finite, one per view.

    The value checks are computed on the cameras' device and read back with a single host synchronisation.
    """
    for name, value in (("extrinsics", extrinsics), ("intrinsics", intrinsics)):
        if value.dim() == 4 and value.shape[0] == batch and value.shape[1] != views:
            raise ValueError(f"{name} cover {value.shape[1]} views, expected {views}: one camera per view")
    if extrinsics.dim() != 4 or extrinsics.shape[:2] != (batch, views) or extrinsics.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"extrinsics must be [B={batch}, V={views}, 3 or 4, 4] world-to-camera, got {tuple(extrinsics.shape)}")
    if intrinsics.dim() != 4 or intrinsics.shape[:2] != (batch, views) or intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [B={batch}, V={views}, 3, 3] in pixels, got {tuple(intrinsics.shape)}")
    extrinsics, intrinsics = extrinsics.float(), intrinsics.float()
    rotation = extrinsics[..., :3, :3]
    # R Rᵀ by broadcasting, not a matmul: validation should not show up in FLOP counts of the model.
    gram = (rotation[..., :, None, :] * rotation[..., None, :, :]).sum(-1)
    rigidity = torch.maximum(
        (gram - torch.eye(3, device=gram.device)).abs().amax(), (torch.linalg.det(rotation) - 1).abs().amax()
    )
    pinhole_row = intrinsics.new_tensor([0.0, 0.0, 1.0])
    rigid_row = extrinsics.new_tensor([0.0, 0.0, 0.0, 1.0])
    translation = extrinsics[..., :3, 3].abs().amax()
    finite_ok = torch.isfinite(extrinsics).all() & torch.isfinite(intrinsics).all()
    finite, positive_focal, pinhole, rigid, homogeneous, bounded = torch.stack(
        [
            finite_ok,
            (intrinsics[..., 0, 0] > 0).all() & (intrinsics[..., 1, 1] > 0).all(),
            (intrinsics[..., 2, :] - pinhole_row).abs().amax() <= 1e-6,
            rigidity <= _ROTATION_TOLERANCE,
            (extrinsics[..., 3, :] - rigid_row).abs().amax() <= 1e-6 if extrinsics.shape[-2] == 4 else finite_ok,
            translation <= _MAX_TRANSLATION,
        ]
    ).tolist()
    if not finite:
        raise ValueError(
            "camera extrinsics / intrinsics contain NaN or infinite values (a camera head predicting a zero field of "
            "view gives an infinite focal length: load pretrained backbone weights or use pose_source='dataset')"
        )
    if not positive_focal:
        raise ValueError(
            "intrinsics need finite, positive focal lengths fx, fy (a camera head predicting a zero field of view gives an "
            "infinite focal length: load pretrained backbone weights or use pose_source='dataset')"
        )
    if not pinhole:
        raise ValueError(
            f"intrinsics must end with the row 0 0 1 (pinhole, pixels), got e.g. {intrinsics[..., 2, :].reshape(-1, 3)[0].tolist()}"
        )
    if not rigid:
        raise ValueError(
            f"extrinsics must be rigid: their 3x3 rotation part must be orthonormal with determinant +1 (off by "
            f"{rigidity.item():.3g}); scale belongs in the translation, not the rotation"
        )
    if not homogeneous:
        raise ValueError("4x4 extrinsics must end with the row 0 0 0 1")
    if not bounded:
        raise ValueError(
            f"extrinsics translations must stay below {_MAX_TRANSLATION:g} in absolute value (got {translation.item():.3g}); "
            "rescale the scene"
        )


def sample_view_mask(
    batch: int, views: int, mask_ratio: float, device=None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Random ``[B, V]`` view split (``True`` = target-only): ``floor(V (1 - r))`` context views, view 0 always among them."""
    if views < 1:
        raise ValueError(f"need at least one view, got {views}")
    num_context = max(1, int(views * (1 - mask_ratio)))
    scores = torch.rand(batch, views - 1, generator=generator, device=generator.device if generator else device)
    chosen = scores.argsort(dim=1)[:, : num_context - 1] + 1
    mask = torch.ones(batch, views, dtype=torch.bool, device=chosen.device)
    mask[:, 0] = False
    mask.scatter_(1, chosen, False)
    return mask.to(device) if device is not None else mask


def semantic_teacher_inputs(pixel_values: torch.Tensor, image_size: int) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> the semantic teacher's input: ``[N, 3, S, S]`` (bilinear), ImageNet-normalised."""
    images = F.interpolate(pixel_values.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)
    return imagenet_normalize(images)


class Spa3RForFieldPrediction(Spa3RPreTrainedModel):
    """Spa3R with the camera-conditioned field decoder, heads and PSFM losses."""

    # PSFM training checkpoints may leave the frozen teachers out (``PSFMTrainer(checkpoint_teachers=False)``).
    _omitted_in_training_checkpoints = ("spa3r.backbone.", "semantic_teacher.")

    def __init__(self, config: Spa3RConfig):
        super().__init__(config)
        dim = config.hidden_size
        self.spa3r = Spa3RModel(config)
        self.pose_tokenizer = nn.Linear(config.ray_code_size, dim)
        self.decoder = Spa3RTransformer(config, config.num_decoder_layers)
        hidden = int(dim * config.mlp_ratio)
        self.heads = nn.ModuleDict({name: Mlp(dim, hidden, size) for name, size in config.target_heads.items()})
        self.depth_probe = Mlp(dim, hidden, 1) if config.use_depth_probe else None
        self.semantic_teacher = None
        if config.semantic_teacher_config is not None:
            from transformers import AutoConfig

            teacher_config = dict(config.semantic_teacher_config)
            # The teacher runs the attention kernel chosen for this model, as set_attn_implementation would set it.
            self.semantic_teacher = AutoModel.from_config(
                AutoConfig.for_model(**teacher_config), attn_implementation=config._attn_implementation
            )
        self.post_init()
        self.freeze_teachers()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.semantic_teacher is not None:
            self.semantic_teacher.eval()
        self.spa3r.train(mode)
        return self

    def save_pretrained(self, save_directory, **kwargs):
        # Let `AutoModel.from_pretrained(folder, trust_remote_code=True)` find the encoder class too.
        if self._auto_class is not None:
            module = Spa3RModel.__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": f"{module}.Spa3RModel"}
        return super().save_pretrained(save_directory, **kwargs)

    # ---------------------------------------------------------------------------------------------- decoding

    def decode_field(
        self,
        latents: torch.Tensor,
        extrinsics: torch.Tensor,
        intrinsics: torch.Tensor,
        image_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Render the latent field for each camera.

        Args:
            latents: ``[B, num_queries, hidden]``.
            extrinsics: ``[B, V, 3|4, 4]`` world-to-camera (world = the reference view's camera).
            intrinsics: ``[B, V, 3, 3]`` in pixels of an ``image_size = (H, W)`` image.
        Returns:
            ``hidden_states [B, V, N, hidden]``, one ``[B, V, N, C]`` entry per head and, with the probe,
            ``depth [B, V, N, 1]``; ``N = (H / patch) * (W / patch)``.
        """
        if latents.dim() != 3 or latents.shape[1:] != (self.config.num_queries, self.config.hidden_size):
            raise ValueError(
                f"latents must be [B, {self.config.num_queries}, {self.config.hidden_size}], got {tuple(latents.shape)}"
            )
        check_finite_tensor("latents", latents, "[B, num_queries, hidden]")
        batch, views = extrinsics.shape[:2]
        if latents.shape[0] != batch:
            raise ValueError(f"latents have batch size {latents.shape[0]} but the cameras have {batch}")
        check_cameras(extrinsics, intrinsics, batch, views)
        return self._decode_field(latents, extrinsics, intrinsics, image_size)

    def _decode_field(
        self, latents: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """:meth:`decode_field` for latents and cameras whose values are already checked (``forward``: no host
        synchronisation for values it computed or checked itself)."""
        batch, views = extrinsics.shape[:2]
        height, width = image_size
        patch = self.config.patch_size
        if height % patch or width % patch or height <= 0 or width <= 0:
            raise ValueError(f"image_size {tuple(image_size)} must be positive multiples of the patch size {patch}")
        grid = (height // patch, width // patch)
        num_patches = grid[0] * grid[1]

        rays = ray_codes(self.config, extrinsics, intrinsics, grid, image_size).flatten(0, 1)  # [B*V, N, code]
        ray_tokens = self.pose_tokenizer(rays.to(self.pose_tokenizer.weight.dtype))
        # Each view's sequence reads its sample's latents: [B*V, Q, C] (a view, no copy, for one sample).
        view_latents = latents[:, None].expand(-1, views, -1, -1).reshape(batch * views, *latents.shape[1:]).to(ray_tokens.dtype)
        prope = None
        if self.config.decoder_camera_attention == "prope":
            prope = ProjectiveRoPE(
                to_homogeneous(extrinsics).reshape(batch * views, 1, 4, 4),
                intrinsics.reshape(batch * views, 1, 3, 3),
                image_size=(height, width),
                patch_grid=grid,
                head_dim=self.config.head_dim,
                freq_base=self.config.prope_freq_base,
            )
        decoded = self.decoder(
            ray_tokens, output_rows=slice(self.config.num_queries, None), prefix=view_latents, camera_transform=prope
        )
        hidden = decoded.reshape(batch, views, num_patches, -1)
        field = {"hidden_states": hidden}
        for name, head in self.heads.items():
            field[name] = HEAD_ACTIVATIONS[(self.config.head_activations or {}).get(name, "identity")](head(hidden))
        if self.depth_probe is not None:
            # A probe: it reads the features but must not shape them.
            field["depth"] = self.depth_probe(hidden.detach())
        return field

    # ---------------------------------------------------------------------------------------------- teachers

    @torch.no_grad()
    def semantic_features(self, pixel_values: torch.Tensor, patch_grid: tuple[int, int]) -> torch.Tensor:
        """Semantic-teacher patch features resized to the backbone patch grid: ``[B, V, N, C_sem]``."""
        batch, views = pixel_values.shape[:2]
        size = self.config.semantic_image_size
        images = semantic_teacher_inputs(pixel_values.flatten(0, 1), size)
        teacher_dtype = next(self.semantic_teacher.parameters()).dtype
        hidden = self.semantic_teacher(pixel_values=images.to(teacher_dtype)).last_hidden_state
        teacher_grid = size // self.semantic_teacher.config.patch_size
        patches = hidden[:, hidden.shape[1] - teacher_grid * teacher_grid :]  # drop class / register tokens
        patches = patches.transpose(1, 2).reshape(batch * views, -1, teacher_grid, teacher_grid)
        patches = F.interpolate(patches.float(), size=patch_grid, mode="bilinear", align_corners=False)
        return patches.flatten(2).transpose(1, 2).reshape(batch, views, patch_grid[0] * patch_grid[1], -1)

    @torch.no_grad()
    def teacher_targets(self, pixel_values: torch.Tensor, view_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the frozen teachers once: context tokens, field targets and cameras.

        Returns a dict with ``context_tokens [B, Vc, N, Cb]``, ``geo``/``sem``/``depth`` targets
        ``[B, V, N, C]`` (as configured) and, with ``pose_source="backbone"``, ``extrinsics``/``intrinsics``.
        Runs in bf16 on GPUs.
        """
        with frozen_autocast(pixel_values.device):
            targets = self._teacher_targets(pixel_values, view_mask)
        # Cameras feed closed-form inverses and ray directions: keep them in fp32.
        for name in ("extrinsics", "intrinsics"):
            if name in targets:
                targets[name] = targets[name].float()
        return targets

    def _teacher_targets(self, pixel_values: torch.Tensor, view_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        backbone = self.spa3r.backbone
        if backbone is None:
            raise ValueError("Spa3RForFieldPrediction needs a vggt_config to compute its teacher targets")
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        grid = (height // patch, width // patch)
        order, num_context = context_first_order(view_mask)
        need_cameras = self.config.pose_source == "backbone"
        need_depth = self.depth_probe is not None and self.config.depth_probe_target == "backbone"
        heads = dict(compute_cameras=need_cameras, compute_depth=need_depth, output_all_layers=False)
        if self.config.masking_mode == "masked_pass":
            full = backbone(pixel_values, view_mask=view_mask, **heads)
            context_tokens = gather_views(full.last_patch_tokens, order[:, :num_context])
        else:
            full = backbone(pixel_values, **heads)
            if num_context == pixel_values.shape[1]:
                context_tokens = full.last_patch_tokens
            else:
                context_images = gather_views(pixel_values, order[:, :num_context])
                context = backbone(context_images, compute_cameras=False, compute_depth=False, output_all_layers=False)
                context_tokens = context.last_patch_tokens
        targets = {"context_tokens": context_tokens}
        if "geo" in self.heads:
            targets["geo"] = full.last_patch_tokens
        if "sem" in self.heads and self.semantic_teacher is not None:
            targets["sem"] = self.semantic_features(pixel_values, grid)
        if need_depth:
            depth = full.depth[..., 0].flatten(0, 1)[:, None]  # [B*V, 1, H, W]
            depth = F.interpolate(depth.float(), size=grid, mode="nearest")
            targets["depth"] = depth.flatten(1).reshape(*pixel_values.shape[:2], -1, 1)
        if need_cameras:
            targets["extrinsics"] = full.extrinsics
            targets["intrinsics"] = full.intrinsics
        return targets

    # ---------------------------------------------------------------------------------------------- losses

    def field_losses(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], head_names) -> dict[str, torch.Tensor]:
        """Unweighted losses: smooth-L1 (β from ``config.smooth_l1_beta``, default 1) + mean (1 - cosine) per
        head (cosine only for heads wider than 1); smooth-L1 for the depth probe."""
        betas = self.config.smooth_l1_beta or {}
        losses = {}
        for name in head_names:
            if name not in targets:
                continue
            prediction, target = predictions[name].float(), targets[name].float()
            losses[f"{name}_l1"] = F.smooth_l1_loss(prediction, target, beta=float(betas.get(name, 1.0)))
            if prediction.shape[-1] > 1:  # the cosine of 1-d vectors only compares signs
                losses[f"{name}_cos"] = (1 - F.cosine_similarity(prediction, target, dim=-1, eps=1e-8)).mean()
        if "depth" in predictions and "depth" in targets:
            beta = float(betas.get("depth_probe", 1.0))
            losses["depth_probe"] = F.smooth_l1_loss(predictions["depth"].float(), targets["depth"].float(), beta=beta)
        return losses

    def _context_inputs(self, targets: dict[str, torch.Tensor], context_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The configured context inputs: the targets of the context views ``context_index [B, Vc]``, in that order."""
        missing = sorted(set(self.config.context_inputs) - set(targets))
        if missing:
            raise ValueError(
                f"config.context_inputs needs {missing} for the context views: pass them in field_targets "
                f"(SynthRooms: PSFMCollator(field_targets=...))"
            )
        inputs = {name: gather_views(targets[name], context_index) for name in self.config.context_inputs}
        if self.training and self.config.context_input_dropout > 0:
            batch = context_index.shape[0]
            keep = torch.rand(batch, device=context_index.device) >= self.config.context_input_dropout
            inputs = {name: value * keep.view(batch, 1, 1, 1).to(value.dtype) for name, value in inputs.items()}
        return inputs

    def total_loss(self, losses: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """The training loss: ``config.loss_weights`` (default 1 each) times each entry of ``losses``, summed."""
        if not losses:
            return None
        weights = self.config.loss_weights or {}
        return torch.stack([value * float(weights.get(name, 1.0)) for name, value in losses.items()]).sum()

    def forward(
        self,
        pixel_values: torch.Tensor,
        view_mask: Optional[torch.Tensor] = None,
        extrinsics: Optional[torch.Tensor] = None,
        intrinsics: Optional[torch.Tensor] = None,
        field_targets: Optional[dict[str, torch.Tensor]] = None,
        use_context_inputs: bool = True,
        **kwargs,
    ) -> Spa3RFieldOutput:
        """One PSFM step.

        Args:
            pixel_values: ``[B, V, 3, H, W]`` in [0, 1], ``V >= 1``.
            view_mask: ``[B, V]`` bool, ``True`` = target-only view. Default: a random split with
                ``config.mask_ratio`` in training mode, all views as context in eval mode.
            extrinsics / intrinsics: dataset cameras (``[B, V, 3|4, 4]`` world-to-camera relative to view 0,
                ``[B, V, 3, 3]`` pixels); required with ``pose_source="dataset"``.
            field_targets: extra per-patch targets ``name -> [B, V, N, C]`` for heads other than geo/sem, and the
                ``config.context_inputs`` (read from the context views only).
            use_context_inputs: ``False`` encodes from backbone tokens alone even where ``config.context_inputs``
                is set (what the encoder sees in Spa3-VLM).
        """
        check_pixel_values(pixel_values, self.config.patch_size)
        batch, views, _, height, width = pixel_values.shape
        if view_mask is None:
            if self.training:
                view_mask = sample_view_mask(batch, views, self.config.mask_ratio, device=pixel_values.device)
            else:
                view_mask = torch.zeros(batch, views, dtype=torch.bool, device=pixel_values.device)
        elif view_mask.shape != (batch, views):
            raise ValueError(f"view_mask must have shape [B, V] = {(batch, views)}, got {tuple(view_mask.shape)}")
        view_mask = view_mask.to(device=pixel_values.device, dtype=torch.bool)

        if (extrinsics is None) != (intrinsics is None):
            raise ValueError("pass extrinsics and intrinsics together (one camera per view), or neither")
        if extrinsics is not None and self.config.pose_source == "backbone":
            raise ValueError(
                "pose_source='backbone' takes every camera from the backbone's camera head, so the extrinsics/intrinsics "
                "given here would be ignored: drop them (the PSFM trainer and field evaluation do), or use "
                "pose_source='dataset'"
            )
        check_finite_tensors({f"field_targets[{k!r}]": v for k, v in (field_targets or {}).items()}, "[B, V, N, C]")
        for name, value in (field_targets or {}).items():
            grid = (height // self.config.patch_size) * (width // self.config.patch_size)
            if value.dim() != 4 or value.shape[:3] != (batch, views, grid):
                raise ValueError(
                    f"field_targets[{name!r}] must be [B, V, N, C] = [{batch}, {views}, {grid}, C] (one row per patch of "
                    f"every view), got {tuple(value.shape)}"
                )
        targets = self.teacher_targets(pixel_values, view_mask)
        if self.config.pose_source == "dataset":
            if extrinsics is None or intrinsics is None:
                raise ValueError('pose_source="dataset" needs extrinsics and intrinsics in the batch')
            targets["extrinsics"], targets["intrinsics"] = extrinsics, intrinsics
        # One check of the cameras, given or predicted by the backbone, for the encoder and the decoder.
        check_cameras(targets["extrinsics"], targets["intrinsics"], batch, views)
        probe_target = self.config.depth_probe_target if self.depth_probe is not None else None
        for name, value in (field_targets or {}).items():
            if name not in self.heads and name not in (self.config.context_inputs or {}) and name != probe_target:
                raise ValueError(
                    f"field target {name!r} has no head and is no context input or depth-probe target; configured heads: "
                    f"{sorted(self.heads)}, context inputs: {sorted(self.config.context_inputs or {})}"
                )
            targets[name] = value
        if probe_target not in (None, "backbone"):
            if probe_target in targets:
                targets["depth"] = targets[probe_target]
            elif self.training:  # in eval mode the probe still predicts; it only has nothing to be scored against
                raise ValueError(f"the depth probe learns field_targets[{probe_target!r}] (config.depth_probe_target): pass it")

        patch = self.config.patch_size
        order, num_context = context_first_order(view_mask)
        context_index = order[:, :num_context]  # the context views, in the order of the context tokens
        context_extrinsics = context_intrinsics = None
        if self.config.encoder_camera_encoding == "prope":
            context_extrinsics = gather_views(targets["extrinsics"], context_index)
            context_intrinsics = gather_views(targets["intrinsics"], context_index)
        context_inputs = None
        if self.config.context_inputs and use_context_inputs:
            context_inputs = self._context_inputs(targets, context_index)
        latents = self.spa3r._encode_tokens(
            targets["context_tokens"],
            (height // patch, width // patch),
            context_extrinsics,
            context_intrinsics,
            (height, width),
            context_inputs=context_inputs,
        )
        field = self._decode_field(latents, targets["extrinsics"], targets["intrinsics"], (height, width))
        losses = self.field_losses(field, targets, self.heads.keys())
        loss = self.total_loss(losses)
        predictions = {name: value for name, value in field.items() if name != "hidden_states"}
        field_targets_out = {name: targets[name] for name in predictions if name in targets}
        return Spa3RFieldOutput(
            loss=loss,
            losses=losses,
            latents=latents,
            hidden_states=field["hidden_states"],
            predictions=predictions,
            targets=field_targets_out,
            view_mask=view_mask,
        )


__all__ = ["Spa3RModel", "Spa3RForFieldPrediction", "Spa3RPreTrainedModel", "Spa3RModelOutput", "Spa3RFieldOutput"]
