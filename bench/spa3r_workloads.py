"""Models, random inputs and timed workloads shared by the Spa3R benchmarks (``bench_spa3r.py`` and its
``spa3r_*.py`` parts): the configs by size, random backbone tokens / cameras / targets, and the callables that are
timed or measured (encoder / decoder forward, training steps, the teacher step)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from common import autocast

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction, VGGTConfig
from spa3_vlm.modeling_geometry import quaternion_to_matrix
from spa3_vlm.modeling_spa3r import sample_view_mask

HUB_CONFIGS = Path(__file__).resolve().parents[1] / "hub_configs"
SIZES = ("tiny", "mid", "base")


# ---------------------------------------------------------------------------------------------- configs


def mid_vggt_config() -> VGGTConfig:
    """A VGGT between the tiny test model and VGGT-1B: width 384, 6 layers, conv patch embedding."""
    return VGGTConfig(
        image_size=224,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        patch_embed_type="conv",
        global_qk_norm="rmsnorm",
        use_point_head=False,
        camera_trunk_depth=1,
        camera_num_heads=6,
        dpt_features=64,
        dpt_out_channels=[48, 96, 192, 384],
        dpt_intermediate_layers=[1, 3, 4, 5],
    )


def spa3r_config(size: str, with_backbone: bool = False) -> Spa3RConfig:
    """``tiny`` / ``base``: the hub configs; ``mid``: width 384, 4+4 layers, 128 queries, on the mid VGGT.

    Without ``with_backbone`` there is no VGGT and no semantic teacher (the heads stay): backbone tokens,
    cameras and targets are then passed in, which is what the trainable part costs.
    """
    if size == "mid":
        config = Spa3RConfig(
            hidden_size=384,
            num_attention_heads=6,
            num_queries=128,
            num_encoder_layers=4,
            num_decoder_layers=4,
            backbone_hidden_size=768,
            target_heads={"geo": 768},
            vggt_config=mid_vggt_config().to_dict(),
        )
    elif size in ("tiny", "base"):
        config = Spa3RConfig.from_pretrained(HUB_CONFIGS / f"spa3r-{size}")
    else:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if with_backbone:
        return config
    values = config.to_dict()
    values["vggt_config"] = None
    values["semantic_teacher_config"] = None
    return Spa3RConfig.from_dict(values)


def build_model(config: Spa3RConfig, device: torch.device, seed: int = 0) -> Spa3RForFieldPrediction:
    torch.manual_seed(seed)
    return Spa3RForFieldPrediction(config).to(device).train()


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class FieldBatch:
    """Random PSFM inputs without a backbone: context tokens, cameras and per-head targets."""

    context_tokens: torch.Tensor  # [B, Vc, N, C_backbone]
    extrinsics: torch.Tensor  # [B, V, 4, 4]
    intrinsics: torch.Tensor  # [B, V, 3, 3]
    targets: dict  # name -> [B, V, N, C]
    image_size: tuple[int, int]
    grid: tuple[int, int]


def random_cameras(batch: int, views: int, image_size: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera ``[B, V, 4, 4]`` (view 0 = identity, others rotated and moved) and pixel intrinsics."""
    height, width = image_size
    extrinsics = torch.eye(4).repeat(batch, views, 1, 1)
    quaternion = torch.randn(batch, views - 1, 4, generator=generator) * 0.2
    quaternion[..., 3] = 1.0
    extrinsics[:, 1:, :3, :3] = quaternion_to_matrix(quaternion)
    extrinsics[:, 1:, :3, 3] = torch.randn(batch, views - 1, 3, generator=generator) * 0.5
    intrinsics = torch.tensor([[float(width), 0.0, width / 2], [0.0, float(width), height / 2], [0.0, 0.0, 1.0]])
    return extrinsics, intrinsics.repeat(batch, views, 1, 1)


def random_field_batch(config: Spa3RConfig, views: int, context_views: int, image_size: tuple[int, int], device: torch.device, batch: int = 1, seed: int = 0) -> FieldBatch:
    patch = config.patch_size
    if image_size[0] % patch or image_size[1] % patch:
        raise ValueError(f"image size {image_size} must be a multiple of the patch size {patch}")
    grid = (image_size[0] // patch, image_size[1] // patch)
    patches = grid[0] * grid[1]
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, context_views, patches, config.backbone_hidden_size, generator=generator)
    extrinsics, intrinsics = random_cameras(batch, views, image_size, generator)
    targets = {name: torch.randn(batch, views, patches, size, generator=generator) for name, size in config.target_heads.items()}
    if config.use_depth_probe:
        targets["depth"] = 1 + 4 * torch.rand(batch, views, patches, 1, generator=generator)
    to = lambda t: t.to(device)  # noqa: E731
    return FieldBatch(to(tokens), to(extrinsics), to(intrinsics), {k: to(v) for k, v in targets.items()}, image_size, grid)


def encode(model: Spa3RForFieldPrediction, data: FieldBatch) -> torch.Tensor:
    """``encode_tokens`` on the batch; with an encoder PRoPE the first ``Vc`` cameras stand for the context views."""
    if getattr(model.config, "encoder_camera_encoding", "none") != "prope":
        return model.spa3r.encode_tokens(data.context_tokens, data.grid)
    views = data.context_tokens.shape[1]
    return model.spa3r.encode_tokens(
        data.context_tokens, data.grid, data.extrinsics[:, :views], data.intrinsics[:, :views], data.image_size
    )


def context_count(config: Spa3RConfig, views: int) -> int:
    """Context views of a PSFM sample, as ``sample_view_mask`` draws them."""
    return max(1, int(views * (1 - config.mask_ratio)))


# ---------------------------------------------------------------------------------------------- workloads


def encoder_forward(model: Spa3RForFieldPrediction, data: FieldBatch, device: torch.device):
    """``encode_tokens`` in inference mode (what Spa3-VLM runs)."""

    def run():
        with torch.no_grad(), autocast(device):
            return encode(model, data)

    return run


def decoder_forward(model: Spa3RForFieldPrediction, data: FieldBatch, latents: torch.Tensor, device: torch.device):
    """``decode_field`` (decoder + heads + probe) in inference mode for every camera of ``data``."""

    def run():
        with torch.no_grad(), autocast(device):
            return model.decode_field(latents, data.extrinsics, data.intrinsics, data.image_size)

    return run


def encoder_train(model: Spa3RForFieldPrediction, data: FieldBatch, device: torch.device):
    """Encoder forward + backward of a scalar loss (memory of a trainable encoder)."""

    def run():
        model.zero_grad(set_to_none=True)
        with autocast(device):
            loss = encode(model, data).float().square().mean()
        loss.backward()

    return run


def train_step(model: Spa3RForFieldPrediction, data: FieldBatch, device: torch.device):
    """PSFM step without the backbone: encode the context tokens, decode every view, losses, backward.

    No optimiser update (elementwise, negligible FLOPs).
    """

    def run():
        model.zero_grad(set_to_none=True)
        with autocast(device):
            latents = encode(model, data)
            field = model.decode_field(latents, data.extrinsics, data.intrinsics, data.image_size)
            losses = model.field_losses(field, data.targets, model.heads.keys())
            loss = torch.stack(list(losses.values())).sum()
        loss.backward()

    return run


def full_train_step(model: Spa3RForFieldPrediction, pixel_values: torch.Tensor, view_mask: torch.Tensor, device: torch.device):
    """``model(pixel_values, view_mask).loss.backward()``: frozen backbone and teachers included."""

    def run():
        model.zero_grad(set_to_none=True)
        with autocast(device):
            loss = model(pixel_values, view_mask=view_mask).loss
        loss.backward()

    return run


def teacher_step(model: Spa3RForFieldPrediction, pixel_values: torch.Tensor, view_mask: torch.Tensor, mode: str, device: torch.device, use_autocast: bool = True):
    """``teacher_targets`` with ``masking_mode = mode`` (the config is read at call time)."""

    def run():
        model.config.masking_mode = mode
        with torch.no_grad(), (autocast(device) if use_autocast else contextlib.nullcontext()):
            return model.teacher_targets(pixel_values, view_mask)

    return run


def random_images(batch: int, views: int, image_size: tuple[int, int], device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, views, 3, *image_size, generator=generator).to(device)


def random_view_mask(config: Spa3RConfig, batch: int, views: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return sample_view_mask(batch, views, config.mask_ratio, generator=generator).to(device)


def vggt_config(size: str):
    """The aggregator of ``size``: the tiny backbone, the mid one, or VGGT-1B's layer shape (width 1024, 16 heads,
    DINOv2 patch embedding) with 2 + 2 aggregator and 2 patch-embedding layers: a forward's peak is set by one
    block's working set, not by the depth (only the last layer's output is kept, as Spa3R asks)."""
    from spa3_vlm import VGGTConfig

    if size == "mid":
        return mid_vggt_config()
    if size == "1b-shaped":
        values = VGGTConfig.from_pretrained(HUB_CONFIGS / "vggt-1b").to_dict()
        values.update(num_hidden_layers=2, patch_embed_num_layers=2, use_camera_head=False, use_depth_head=False,
                      use_point_head=False, use_track_head=False, dpt_intermediate_layers=[0, 1, 1, 1])  # fmt: skip
        return VGGTConfig.from_dict(values)
    return spa3r_config(size, with_backbone=True).vggt_config

def aggregator_case(size: str, views: int, image_size: tuple[int, int], device: torch.device):
    """``(VGGTModel of size, images [1, V, 3, H, W], {last layer})``: the aggregator workload of the memory and
    compile benchmarks (only the last layer's output is kept, as Spa3R asks)."""
    from spa3_vlm import VGGTModel

    torch.manual_seed(0)
    config = vggt_config(size)
    model = VGGTModel(config).to(device).eval()
    images = torch.rand(1, views, 3, *image_size, generator=torch.Generator().manual_seed(0)).to(device)
    return model, images, {config.num_hidden_layers - 1}
