"""Peak memory of Spa3R and VGGT forwards: this code against the code of a git revision and the public references.

    python bench/bench_spa3r.py memory [--baseline 03bd959] [--reference-dir DIR] [--vggt-reference-dir DIR] [--quick]

Each case is one call (the encoder on random backbone tokens, the decoder with its heads, the VGGT aggregator as
Spa3R runs it, Spa3R on images, a PSFM training step without the backbone) measured with
:func:`common.peak_memory_bytes`: the most bytes of tensors created by the call and alive at once. Values do not
change the peak, only shapes and code do, so random weights serve.

- **now**: the package as it is checked out.
- **baseline**: ``src/spa3_vlm`` of the git revision ``--baseline`` (default ``03bd959``, the last commit before the
  blocks released the attention output ahead of the MLP), exported with ``git archive`` and measured by this file
  in a child process with the same cases and inputs.
- **reference**, encoder and decoder: with ``--reference-dir`` (a checkout of hustvl/Spa3R, commit ``07e0b60``: the
  folder holding ``spa3r/models/layers``), the reference's own encoder and decoder Transformers (its
  ``Transformer``, ``Block``, ``Attention``, ``PRoPEAttention``, ``Mlp``) at the same sizes, driven the way its
  ``Spa3R.forward`` drives them (:class:`ReferenceSpa3R`).
- **reference**, VGGT aggregator: with ``--vggt-reference-dir`` (a folder holding facebookresearch/vggt's ``vggt``
  package), the reference ``Aggregator`` at the case's shapes (:func:`build_vggt_reference`), called on the same
  images as ours in eval mode under ``torch.no_grad()``. Configs with RMSNorm q/k norms in the global blocks (the
  tiny and mid ones, Spa3R's variant) use Spa3R's ``MaskedAggregator`` (``spa3r/models/masked_vggt.py``, so
  ``--reference-dir`` is needed too): the VGGT ``Aggregator`` whose global blocks are Spa3R's ``Block``, as Spa3R
  builds its backbone; VGGT-1B's LayerNorm variant uses the ``Aggregator`` itself. The reference returns every
  layer's ``[B, S, P, 2C]`` output (it has no way to keep fewer; Spa3R then reads the last); ours keeps the last
  layer's only, what Spa3R reads (``keep_layers``), so the reference column is the reference's call as Spa3R makes
  it. The row's ``now_all_layers_bytes`` is ours keeping every layer too, the same work as the reference. Before
  measuring, each case loads the reference's weights into our model (``conversion.reference.vggt_state_dict``) and
  asserts that both give the same last-layer tokens within 1e-5 (the max difference is printed).

  The folder needs only the aggregator's files, not the whole repository. From facebookresearch/vggt at
  ``44b3afbd`` (the commit hustvl/Spa3R pins as its ``submodules/vggt``): ``vggt/models/aggregator.py`` and
  ``vggt/layers/{attention,block,layer_scale,patch_embed,swiglu_ffn,vision_transformer}.py``; ``vggt/layers/rope.py``
  (same code at the earlier release ``ab9d1d2a``), ``vggt/layers/{mlp,drop_path}.py`` (VGGT's copies of DINOv2's:
  ``dinov2/layers/{mlp,drop_path}.py`` of facebookresearch/dinov2), ``vggt/layers/__init__.py`` (imports ``Mlp``,
  ``PatchEmbed``, ``SwiGLUFFN``, ``SwiGLUFFNFused``, ``NestedTensorBlock``, ``MemEffAttention``), and empty
  ``vggt/__init__.py`` and ``vggt/models/__init__.py``. ``vggt/models/vggt.py`` (which imports the heads) is not
  needed: Spa3R's ``masked_vggt.py`` imports ``Aggregator`` through it, so a stand-in module that re-exports the
  ``Aggregator`` is used when it is absent (and one for ``einops``, which only its view-mask path calls). The
  reference's ``vit_large`` fixes 24 layers; the "1b-shaped" case has 2, so its DINOv2 patch embedding is the
  reference's ``DinoVisionTransformer`` built with ``vit_large``'s arguments and 2 layers, set as the aggregator's
  ``patch_embed`` (the code that runs is the reference's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_BASELINE = "03bd959"
MiB = 2**20

# (case name, workload, size, views, image (H, W)); the quick set is what tests/test_bench_smoke.py runs.
CASES = [
    ("encoder tiny", "encoder", "tiny", 8, (112, 112)),
    ("encoder base", "encoder", "base", 4, (224, 224)),
    ("decoder tiny", "decoder", "tiny", 8, (112, 112)),
    ("decoder base", "decoder", "base", 4, (224, 224)),
    ("aggregator tiny", "aggregator", "tiny", 8, (112, 112)),
    ("aggregator mid", "aggregator", "mid", 4, (224, 224)),
    ("aggregator 1b-shaped", "aggregator", "1b-shaped", 2, (224, 224)),
    ("spa3r on images tiny", "spa3r_images", "tiny", 8, (112, 112)),
    ("train step tiny", "train_step", "tiny", 8, (112, 112)),
    ("train step base", "train_step", "base", 2, (224, 224)),
]
QUICK_CASES = [
    ("encoder tiny", "encoder", "tiny", 2, (28, 28)),
    ("decoder tiny", "decoder", "tiny", 2, (28, 28)),
    ("aggregator tiny", "aggregator", "tiny", 2, (28, 28)),
]
REFERENCE_WORKLOADS = ("encoder", "decoder")
VGGT_REFERENCE_WORKLOADS = ("aggregator",)
PARITY_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------- the cases


def case_workload(workload: str, size: str, views: int, image_size: tuple[int, int], device: torch.device):
    """``(model, callable)`` for one case; the model is returned so that it outlives the measurement."""
    from spa3r_workloads import aggregator_case, build_model, decoder_forward, encoder_forward, random_field_batch, spa3r_config, train_step

    if workload == "aggregator":
        model, images, last = aggregator_case(size, views, image_size, device)

        def run():
            with torch.no_grad():
                return model.aggregator(images, keep_layers=last)

        return model, run
    if workload == "spa3r_images":
        model = build_model(spa3r_config(size, with_backbone=True), device).eval()
        images = torch.rand(1, views, 3, *image_size, generator=torch.Generator().manual_seed(0)).to(device)

        def run():
            with torch.no_grad():
                return model.spa3r(images).latents

        return model, run
    config = spa3r_config(size)
    model = build_model(config, device)
    if workload == "train_step":
        data = random_field_batch(config, views, max(1, views // 2), image_size, device)
        return model, train_step(model, data, device)
    model.eval()
    data = random_field_batch(config, views, views, image_size, device)
    if workload == "encoder":
        return model, encoder_forward(model, data, device)
    latents = torch.randn(1, config.num_queries, config.hidden_size, generator=torch.Generator().manual_seed(1)).to(device)
    return model, decoder_forward(model, data, latents, device)


def measure_cases(cases: list, device: torch.device) -> dict[str, int]:
    """Peak bytes of each case, one model alive at a time."""
    from common import peak_memory_bytes

    peaks = {}
    for name, workload, size, views, image_size in cases:
        model, run = case_workload(workload, size, views, tuple(image_size), device)
        if workload != "train_step":  # a first call would build caches inside the measurement: measure the steady state
            run()
        peaks[name] = peak_memory_bytes(run, device)
        del model, run
    return peaks


# ---------------------------------------------------------------------------------------------- baseline


def measure_revision(revision: str, cases: list, device: torch.device) -> tuple[Optional[dict], str]:
    """Peaks of ``cases`` with ``src/spa3_vlm`` of git ``revision``, in a child process; ``(None, why)`` when the
    revision cannot be exported (no git, not in the history)."""
    with tempfile.TemporaryDirectory(prefix="spa3r-baseline-") as folder:
        try:
            archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", revision, "src/spa3_vlm"],
                                     capture_output=True, check=True, timeout=120)  # fmt: skip
            subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", b"") or b""
            return None, f"git archive {revision} failed: {detail.decode(errors='replace').strip() or error}"
        command = [sys.executable, __file__, "--measure", "--src", str(Path(folder) / "src"), "--device", str(device),
                   "--threads", str(torch.get_num_threads()), "--cases", json.dumps(cases)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHONPATH": ""})
        if result.returncode != 0:
            return None, f"measuring {revision} failed: {result.stderr.strip()[-2000:]}"
        return json.loads(result.stdout.strip().splitlines()[-1]), f"git {revision}"


# ---------------------------------------------------------------------------------------------- reference


def _load_package(name: str, folder: Path):
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_reference(reference_dir: str):
    """The reference's ``spa3r/models/layers`` package and ``camera_utils`` module, imported on their own (its
    ``spa3r`` package imports VGGT and the training stack, which these layers do not need)."""
    root = Path(reference_dir) / "spa3r" / "models"
    if not (root / "layers" / "__init__.py").is_file():
        raise FileNotFoundError(f"{reference_dir} holds no spa3r/models/layers: pass a checkout of hustvl/Spa3R")
    layers = _load_package("spa3r_reference_layers", root / "layers")
    spec = importlib.util.spec_from_file_location("spa3r_reference_camera", root / "utils" / "camera_utils.py")
    camera = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(camera)
    return layers, camera


class ReferenceSpa3R(nn.Module):
    """The reference's encoder and decoder (its own modules) at the sizes of a Spa3R config, run as its
    ``Spa3R.forward`` runs them: ``[queries ; tokens]`` with RoPE positions through the encoder, every view's
    ``[latents ; ray tokens]`` with PRoPE through the decoder, then the heads and the depth probe."""

    def __init__(self, layers, camera, config):
        super().__init__()
        dim, heads = config.hidden_size, config.num_attention_heads
        hidden = int(dim * config.mlp_ratio)
        self.camera, self.patch_size, self.num_queries = camera, config.patch_size, config.num_queries
        self.position_getter = layers.PositionGetter()
        self.projection = nn.Linear(config.backbone_hidden_size, dim)
        self.query_embed = nn.Embedding(config.num_queries, dim)
        self.pose_tokenizer = nn.Linear(3, dim)
        common = dict(num_heads=heads, ffn_ratio=config.mlp_ratio, qk_norm=bool(config.qk_norm), num_register_tokens=config.num_register_tokens)
        self.encoder = layers.Transformer(dim, depth=config.num_encoder_layers, **common)
        self.decoder = layers.Transformer(dim, depth=config.num_decoder_layers, block_fn=partial(layers.Block, attn_layer=layers.PRoPEAttention), rope_freq=0, **common)
        self.heads = nn.ModuleDict({name: layers.Mlp(dim, hidden_features=hidden, out_features=size) for name, size in config.target_heads.items()})
        self.depth_prob = layers.Mlp(dim, hidden_features=hidden, out_features=1) if config.use_depth_probe else None

    def encode(self, context_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, Vc, N, C_backbone]`` -> latents ``[B, Q, C]``."""
        x = self.projection(context_tokens)
        batch, views, tokens, _ = x.shape
        pos = self.position_getter(batch, grid[0], grid[1], device=x.device).reshape(batch, 1, tokens, 2)
        query = self.query_embed.weight[None].expand(batch, -1, -1)
        query_pos = torch.zeros_like(query[..., :2]).to(pos) - 1  # the Transformer adds 1
        encoder_input = torch.cat([query, x.flatten(1, 2)], dim=1)
        encoder_pos = torch.cat([query_pos, pos.expand(-1, views, -1, -1).flatten(1, 2)], dim=1)
        return self.encoder(encoder_input, pos=encoder_pos)[:, : self.num_queries]

    def decode(self, latents: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size: tuple[int, int]) -> dict:
        """Latents ``[B, Q, C]``, cameras ``[B, V, 4, 4]`` / ``[B, V, 3, 3]`` -> head outputs ``[B, V, N, C]``."""
        height, width = image_size
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        batch, views = extrinsics.shape[:2]
        tokens = grid_h * grid_w
        cell_intrinsics = intrinsics.clone()
        cell_intrinsics[..., :2, :] /= self.patch_size
        rays = self.camera.get_camera_rays(cell_intrinsics, (grid_h, grid_w))  # [B, V, 3, h, w]
        pose_cond = self.pose_tokenizer(rays.flatten(-2).transpose(-1, -2).flatten(0, 1))
        pos = self.position_getter(batch, grid_h, grid_w, device=latents.device).reshape(batch, 1, tokens, 2)
        query_pos = torch.zeros(batch, self.num_queries, 2, device=latents.device, dtype=pos.dtype) - 1
        decoder_input = torch.cat([latents.repeat_interleave(views, dim=0), pose_cond], dim=1)
        decoder_pos = torch.cat([query_pos.repeat_interleave(views, dim=0), pos.expand(-1, views, -1, -1).flatten(0, 1)], dim=1)
        spatial_mask = torch.zeros(decoder_input.shape[1] + self.decoder.num_register_tokens, dtype=torch.bool, device=latents.device)
        spatial_mask[-tokens:] = True
        decoded = self.decoder(
            decoder_input, pos=decoder_pos, viewmats=extrinsics.flatten(0, 1).unsqueeze(1), Ks=intrinsics.flatten(0, 1).unsqueeze(1),
            spatial_mask=spatial_mask, patches_x=grid_w, patches_y=grid_h, image_width=width, image_height=height,
        )  # fmt: skip
        decoded = decoded[:, self.num_queries :].reshape(batch, views, tokens, -1)
        field = {name: head(decoded) for name, head in self.heads.items()}
        if self.depth_prob is not None:
            field["depth"] = self.depth_prob(decoded.detach())
        return field


def measure_reference(reference_dir: str, cases: list, device: torch.device) -> dict[str, int]:
    """Peaks of the encoder and decoder cases with the reference's modules (other workloads are not measured)."""
    from common import peak_memory_bytes
    from spa3r_workloads import random_field_batch, spa3r_config

    layers, camera = load_reference(reference_dir)
    peaks = {}
    for name, workload, size, views, image_size in cases:
        if workload not in REFERENCE_WORKLOADS:
            continue
        config = spa3r_config(size)
        torch.manual_seed(0)
        model = ReferenceSpa3R(layers, camera, config).to(device).eval()
        data = random_field_batch(config, views, views, tuple(image_size), device)
        if workload == "encoder":
            def run(model=model, data=data):
                with torch.no_grad():
                    return model.encode(data.context_tokens, data.grid)
        else:
            latents = torch.randn(1, config.num_queries, config.hidden_size, generator=torch.Generator().manual_seed(1)).to(device)

            def run(model=model, data=data, latents=latents):
                with torch.no_grad():
                    return model.decode(latents, data.extrinsics, data.intrinsics, data.image_size)
        run()
        peaks[name] = peak_memory_bytes(run, device)
        del model, run
    return peaks


# ---------------------------------------------------------------------------------------------- VGGT reference


def load_vggt_reference(vggt_reference_dir: str, reference_dir: Optional[str] = None) -> dict:
    """The reference's ``Aggregator`` and ``vision_transformer`` module, imported from ``vggt_reference_dir`` (the
    folder holding the ``vggt`` package), and Spa3R's ``MaskedAggregator`` when ``reference_dir`` (a hustvl/Spa3R
    checkout) is given, else ``None``."""
    folder = Path(vggt_reference_dir).resolve()
    if not (folder / "vggt" / "models" / "aggregator.py").is_file():
        raise FileNotFoundError(f"{vggt_reference_dir} holds no vggt/models/aggregator.py: pass the folder holding the vggt package")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    from vggt.layers import vision_transformer
    from vggt.models import aggregator

    if not Path(aggregator.__file__).resolve().is_relative_to(folder):
        raise ImportError(f"imported {aggregator.__file__}, not the vggt package under {folder}")
    masked = None
    if reference_dir:
        root = Path(reference_dir) / "spa3r" / "models"
        if not (root / "masked_vggt.py").is_file():
            raise FileNotFoundError(f"{reference_dir} holds no spa3r/models/masked_vggt.py: pass a checkout of hustvl/Spa3R")
        # masked_vggt.py imports the Aggregator through vggt/models/vggt.py (which pulls in the heads) and einops (for
        # its view-mask path only): stand-ins for either when absent, removed again once the module is loaded.
        stand_ins = {}
        try:
            import vggt.models.vggt  # noqa: F401
        except ImportError:
            stand_ins["vggt.models.vggt"] = types.ModuleType("vggt.models.vggt")
            stand_ins["vggt.models.vggt"].Aggregator, stand_ins["vggt.models.vggt"].VGGT = aggregator.Aggregator, nn.Module
        try:
            import einops  # noqa: F401
        except ImportError:
            stand_ins["einops"] = types.ModuleType("einops")
            stand_ins["einops"].repeat = None  # only MaskedAggregator._generate_attention_mask calls it (view masks)
        package = types.ModuleType("spa3r_reference_models")  # for masked_vggt.py's `from .layers.block import Block`
        package.__path__ = [str(root)]
        sys.modules["spa3r_reference_models"] = package
        sys.modules.update(stand_ins)
        try:
            spec = importlib.util.spec_from_file_location("spa3r_reference_models.masked_vggt", root / "masked_vggt.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            for key in stand_ins:
                sys.modules.pop(key, None)
        masked = module.MaskedAggregator
    return {"Aggregator": aggregator.Aggregator, "MaskedAggregator": masked, "vision_transformer": vision_transformer}


def build_vggt_reference(modules: dict, config) -> nn.Module:
    """The reference aggregator at the shapes of a ``VGGTConfig``: Spa3R's ``MaskedAggregator`` for RMSNorm q/k norms
    in the global blocks, VGGT's ``Aggregator`` for LayerNorm ones; a conv patch embedding, or the reference's
    DINOv2 (``DinoVisionTransformer`` with ``vit_large``'s arguments and ``config.patch_embed_num_layers`` layers)."""
    if config.global_qk_norm == "rmsnorm":
        if modules["MaskedAggregator"] is None:
            raise ValueError("RMSNorm global q/k norms are Spa3R's MaskedAggregator: pass --reference-dir (hustvl/Spa3R) too")
        cls = modules["MaskedAggregator"]
    else:
        cls = modules["Aggregator"]
    model = cls(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.hidden_size, depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads, mlp_ratio=config.mlp_ratio, num_register_tokens=config.num_register_tokens,
        qkv_bias=config.qkv_bias, proj_bias=config.proj_bias, ffn_bias=config.ffn_bias, patch_embed="conv", qk_norm=True,
        rope_freq=config.rope_theta, init_values=config.layerscale_init,
    )  # fmt: skip
    if config.patch_embed_type != "conv":
        if config.patch_embed_type != "dinov2_vitl14_reg" or (config.hidden_size, config.patch_embed_num_heads) != (1024, 16):
            raise ValueError(f"no reference patch embedding for {config.patch_embed_type} at width {config.hidden_size}")
        vt = modules["vision_transformer"]
        # Aggregator.__build_patch_embed__'s call of vit_large, with the layer count of the config (vit_large fixes 24).
        model.patch_embed = vt.DinoVisionTransformer(
            img_size=config.image_size, patch_size=config.patch_size, embed_dim=1024, depth=config.patch_embed_num_layers,
            num_heads=16, mlp_ratio=4, block_fn=partial(vt.Block, attn_class=vt.MemEffAttention),
            num_register_tokens=config.num_register_tokens, interpolate_antialias=True, interpolate_offset=0.0,
            block_chunks=0, init_values=1.0,
        )  # fmt: skip
        model.patch_embed.mask_token.requires_grad_(False)
    return model


def vggt_parity(reference: nn.Module, model, images: torch.Tensor, last, size: str) -> float:
    """Our aggregator case ``model`` (from ``spa3r_workloads.aggregator_case``) loaded with the reference's weights
    (``vggt_state_dict``): max abs difference of the last layer's tokens on ``images``; raises if above
    :data:`PARITY_TOLERANCE` (a different model would make the memory comparison moot)."""
    from spa3_vlm.conversion.reference import ConversionReport, vggt_state_dict

    state = vggt_state_dict({f"aggregator.{k}": v for k, v in reference.state_dict().items()}, model.config, ConversionReport())
    loaded = model.load_state_dict(state, strict=False)
    missing = [key for key in loaded.missing_keys if key.startswith("aggregator.")]
    if missing or loaded.unexpected_keys:
        raise AssertionError(f"reference weights do not fit our aggregator: missing {missing[:5]}, unexpected {loaded.unexpected_keys[:5]}")
    with torch.no_grad():
        ours = model.aggregator(images, keep_layers=last)[-1]
        theirs = reference(images)[0][-1]
    difference = (ours - theirs).abs().max().item()
    if not difference <= PARITY_TOLERANCE:
        raise AssertionError(f"{size}: our aggregator and the reference's differ by {difference:.3g} (> {PARITY_TOLERANCE})")
    return difference


def measure_vggt_reference(vggt_reference_dir: str, reference_dir: Optional[str], cases: list, device: torch.device) -> tuple[dict, dict]:
    """Peaks of the aggregator cases with the reference's aggregator on our cases' images, and each case's parity
    difference."""
    from common import peak_memory_bytes
    from spa3r_workloads import aggregator_case, vggt_config

    modules = load_vggt_reference(vggt_reference_dir, reference_dir)
    peaks, parity = {}, {}
    for name, workload, size, views, image_size in cases:
        if workload not in VGGT_REFERENCE_WORKLOADS:
            continue
        ours, images, last = aggregator_case(size, views, tuple(image_size), device)
        torch.manual_seed(0)
        model = build_vggt_reference(modules, vggt_config(size)).to(device).eval()
        parity[name] = vggt_parity(model, ours, images, last, size)
        del ours

        def run(model=model, images=images):
            with torch.no_grad():
                return model(images)  # (every layer's [B, S, P, 2C] tokens, patch_start_idx)

        run()
        peaks[name] = peak_memory_bytes(run, device)
        del model, run
    return peaks, parity


def measure_all_layers(cases: list, device: torch.device) -> dict[str, int]:
    """Peaks of our aggregator cases keeping every layer's output (the reference's work)."""
    from common import peak_memory_bytes
    from spa3r_workloads import aggregator_case

    peaks = {}
    for name, workload, size, views, image_size in cases:
        if workload not in VGGT_REFERENCE_WORKLOADS:
            continue
        model, images, _ = aggregator_case(size, views, tuple(image_size), device)

        def run(model=model, images=images):
            with torch.no_grad():
                return model.aggregator(images, keep_layers=None)

        run()
        peaks[name] = peak_memory_bytes(run, device)
        del model, run
    return peaks


# ---------------------------------------------------------------------------------------------- benchmark


def run_memory(args, device: torch.device) -> dict:
    from common import format_table

    cases = QUICK_CASES if args.quick else CASES
    # bench_spa3r.py's parser defines --vggt-reference-dir; a namespace without it means no VGGT reference.
    vggt_reference_dir = getattr(args, "vggt_reference_dir", None)
    now = measure_cases(cases, device)
    baseline, baseline_source = measure_revision(args.baseline, cases, device)
    reference = measure_reference(args.reference_dir, cases, device) if args.reference_dir else None
    parity, all_layers = {}, {}
    if vggt_reference_dir:
        vggt_peaks, parity = measure_vggt_reference(vggt_reference_dir, args.reference_dir, cases, device)
        all_layers = measure_all_layers(cases, device)
        reference = {**(reference or {}), **vggt_peaks}
    rows = []
    for name, workload, size, views, image_size in cases:
        row = {"case": name, "workload": workload, "size": size, "views": views, "image_size": list(image_size), "now_bytes": now[name]}
        for label, peaks in (("baseline", baseline), ("reference", reference)):
            value = None if peaks is None else peaks.get(name)
            row[f"{label}_bytes"] = value
            row[f"now_over_{label}"] = now[name] / value if value else None
        if name in parity:
            row["reference_parity_max_abs_diff"] = parity[name]
            row["now_all_layers_bytes"] = all_layers[name]
            row["now_all_layers_over_reference"] = all_layers[name] / row["reference_bytes"]
        rows.append(row)

    def ratio(value):
        return "-" if value is None else f"{value:.3f}"

    def mib(value):
        return "-" if value is None else f"{value / MiB:.2f}"

    print(f"Peak memory of one call on {device} (tensors created by the call, alive at once); baseline: {baseline_source}; "
          f"reference: {args.reference_dir or 'not given (--reference-dir)'}; "
          f"VGGT reference: {vggt_reference_dir or 'not given (--vggt-reference-dir)'}")  # fmt: skip
    table = format_table(
        ["case", "views", "image", "now MiB", "baseline MiB", "now/baseline", "reference MiB", "now/reference"],
        [[r["case"], r["views"], "x".join(map(str, r["image_size"])), mib(r["now_bytes"]), mib(r["baseline_bytes"]),
          ratio(r["now_over_baseline"]), mib(r["reference_bytes"]), ratio(r["now_over_reference"])] for r in rows],
    )  # fmt: skip
    print(table)
    result = {"benchmark": "spa3r_memory", "baseline": baseline_source, "reference_dir": args.reference_dir,
              "vggt_reference_dir": vggt_reference_dir, "rows": rows, "table": table}  # fmt: skip
    if parity:
        print("VGGT aggregator vs the reference's: ours with the reference's weights gives the same last-layer tokens "
              "(max |diff|); the reference keeps every layer's output, ours the last (Spa3R's use) or, last column, all")  # fmt: skip
        parity_table = format_table(
            ["case", "max |diff|", "now MiB (last)", "now MiB (all layers)", "reference MiB (all layers)", "all layers now/reference"],
            [[r["case"], f"{r['reference_parity_max_abs_diff']:.1e}", mib(r["now_bytes"]), mib(r["now_all_layers_bytes"]),
              mib(r["reference_bytes"]), ratio(r["now_all_layers_over_reference"])] for r in rows if "reference_parity_max_abs_diff" in r],
        )  # fmt: skip
        print(parity_table)
        result["parity_table"] = parity_table
    return result


def _measure_main(argv: list[str]) -> None:
    """Child-process entry: peaks of ``--cases`` with the package under ``--src``, as one JSON line on stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--src", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", required=True)
    args = parser.parse_args(argv)
    sys.path[:0] = [args.src, str(BENCH_DIR)]
    torch.set_num_threads(args.threads)
    import spa3_vlm

    if not Path(spa3_vlm.__file__).resolve().is_relative_to(Path(args.src).resolve()):
        raise SystemExit(f"imported {spa3_vlm.__file__}, not the package under {args.src}")
    print(json.dumps(measure_cases(json.loads(args.cases), torch.device(args.device))))


if __name__ == "__main__":
    _measure_main(sys.argv[1:])
