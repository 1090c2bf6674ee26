"""Released Spa3-VLM weights and Spa3R Lightning checkpoints -> ``Spa3VLMForConditionalGeneration`` folders.

Source layout (hustvl/Spa3-VLM, saved with transformers 4.50):

- ``visual.*`` (vision tower), ``model.*`` (text decoder), ``lm_head.*`` -> transformers 5's ``model.visual.*``,
  ``model.language_model.*``, ``lm_head.*``;
- ``geometry_encoder.spa3r.*``: the *whole* reference Spa3R (VGGT aggregator and heads, DINOv3 teacher, encoder,
  decoder, field heads, depth probe). Only the encoder path is kept (``spa3r.backbone.aggregator.*``,
  ``spa3r.projection``, ``spa3r.query_embed``, ``spa3r.encoder.*``); the rest is dropped and reported;
- the adapter: ``geometry_projector.*``, ``geom_cross_attention.*`` (its output projection ``proj`` becomes
  ``o_proj``), ``ln.*``, ``geometry_adaptor.*``, ``geometry_gate.*``.

Every source tensor is either used or dropped for a stated reason; an unknown name, a missing target tensor or a
shape mismatch raises ``ValueError`` naming them. Output folders hold ``config.json`` (with ``auto_map``),
safetensors weights and the model code, ready for ``push_to_hub``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, Qwen2_5_VLConfig

from ..configuration_spa3_vlm import Spa3VLMConfig, encoder_only_spa3r_config
from ..configuration_spa3r import Spa3RConfig
from ..configuration_vggt import VGGTConfig
from ..modeling_spa3_vlm import SPA3_VLM_CLASSES, Spa3VLMForConditionalGeneration, Spa3VLMQwen3ForConditionalGeneration
from ..modeling_spa3r import Spa3RModel
from .reference import (
    VGGT_PREFIXES,
    ConversionReport,
    check_state_dict,
    load_reference_checkpoint,
    strict_load,
    vggt_state_dict,
)

logger = logging.getLogger(__name__)

SPA3R_PREFIX = "geometry_encoder.spa3r."
SPA3R_ENCODER_PREFIXES = ("projection.", "query_embed.", "encoder.")
# Parts of a reference Spa3R state dict that inference does not run.
SPA3R_DROPPED = {
    "decoder.": "Spa3R field decoder (pre-training only)",
    "heads.": "Spa3R field heads (pre-training only)",
    "depth_prob.": "Spa3R depth probe (pre-training only)",
    "pose_tokenizer.": "Spa3R camera-ray tokenizer of the decoder (pre-training only)",
    "dino.": "DINOv3 semantic teacher (pre-training only)",
}
# transformers 4.50 Qwen2.5-VL names -> transformers 5 names (first match wins: `visual.` before `model.`).
QWEN_RENAMES = (("visual.", "model.visual."), ("model.", "model.language_model."), ("lm_head.", "lm_head."))
ADAPTER_RENAMES = (
    ("geom_cross_attention.proj.", "geom_cross_attention.o_proj."),
    ("geom_cross_attention.", "geom_cross_attention."),
    ("geometry_projector.", "geometry_projector."),
    ("geometry_adaptor.", "geometry_adaptor."),
    ("geometry_gate.", "geometry_gate."),
    ("ln.", "ln."),
)
# Keys the reference adds to the Qwen config.json (spa3_vlm/train/train_qwen.py and the model class).
REFERENCE_GEOMETRY_KEYS = (
    "use_geometry_encoder",
    "geometry_encoder_type",
    "geometry_encoder_path",
    "geometry_encoder_freeze",
    "spa3r_embed_dim",
    "spa3r_num_queries",
)
_CONFIG_BOOKKEEPING = ("architectures", "model_type", "auto_map", "transformers_version", "_name_or_path", "_commit_hash")


def register_auto_classes() -> None:
    """Auto-class registration (idempotent), so saved folders get an ``auto_map`` and the code files."""
    for model_class in (Spa3VLMForConditionalGeneration, Spa3VLMQwen3ForConditionalGeneration):
        AutoConfig.register(model_class.config_class.model_type, model_class.config_class, exist_ok=True)
        AutoModelForImageTextToText.register(model_class.config_class, model_class, exist_ok=True)
        model_class.config_class.register_for_auto_class()
        model_class.register_for_auto_class("AutoModelForImageTextToText")


# ---------------------------------------------------------------------------------------------- Spa3R encoder


def spa3r_encoder_config_from_reference(
    state_dict: dict[str, torch.Tensor], vggt_config: Optional[VGGTConfig | dict] = None, num_heads: Optional[int] = None
) -> Spa3RConfig:
    """Encoder-only ``Spa3RConfig`` read off a reference Spa3R state dict (reference names, no prefix).

    Sizes, depth, queries and registers come from the tensors; heads from the q-norm size (QK-norm on), else
    ``num_heads`` (reference default 12). ``vggt_config`` defaults to VGGT-1B with Spa3R's RMSNorm global q/k norms
    when the state dict holds VGGT tensors. VGGT heads are disabled (the encoder does not run them).
    """
    if "projection.weight" not in state_dict or "query_embed.weight" not in state_dict:
        raise ValueError("not a Spa3R state dict: 'projection.weight' / 'query_embed.weight' are missing")
    hidden, backbone_hidden = state_dict["projection.weight"].shape
    blocks = {int(key.split(".")[2]) for key in state_dict if key.startswith("encoder.blocks.")}
    if not blocks:
        raise ValueError("not a Spa3R state dict: no 'encoder.blocks.*' tensors")
    q_norm = state_dict.get("encoder.blocks.0.attn.q_norm.weight")
    heads = hidden // q_norm.shape[0] if q_norm is not None else (num_heads or 12)
    has_vggt = any(key.startswith(VGGT_PREFIXES) for key in state_dict)
    if isinstance(vggt_config, dict):
        vggt_config = VGGTConfig(**vggt_config)
    if vggt_config is None and has_vggt:
        vggt_config = VGGTConfig(global_qk_norm="rmsnorm")
    config = Spa3RConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_queries=state_dict["query_embed.weight"].shape[0],
        num_encoder_layers=max(blocks) + 1,
        num_register_tokens=state_dict["encoder.register_tokens"].shape[1],
        mlp_ratio=state_dict["encoder.blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        qk_norm=q_norm is not None,
        backbone_hidden_size=backbone_hidden,
        target_heads={},
        use_depth_probe=False,
        vggt_config=vggt_config,
    )
    return encoder_only_spa3r_config(config)


def spa3r_encoder_state_from_reference(
    state_dict: dict[str, torch.Tensor], config: Spa3RConfig, report: ConversionReport, source_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Reference Spa3R names -> ``Spa3RModel`` names for an encoder-only ``config``; drops are reported.

    ``source_prefix`` is only used to name dropped keys in the report. Raises on names it does not know.
    """
    known = SPA3R_ENCODER_PREFIXES + VGGT_PREFIXES + tuple(SPA3R_DROPPED)
    unknown = sorted(source_prefix + k for k in state_dict if not k.startswith(known))
    if unknown:
        raise ValueError(f"unknown Spa3R tensor name(s) {unknown[:10]} ({len(unknown)} in all)")
    converted = {key: value for key, value in state_dict.items() if key.startswith(SPA3R_ENCODER_PREFIXES)}
    local = ConversionReport()  # names without source_prefix, as vggt_state_dict reports them
    if config.vggt_config is not None:
        for key, value in vggt_state_dict(state_dict, config.vggt_config, local).items():
            converted["backbone." + key] = value
    else:
        local.drop("frozen VGGT (spa3r_config has no vggt_config)", [k for k in state_dict if k.startswith(VGGT_PREFIXES)])
    for prefix, reason in SPA3R_DROPPED.items():
        local.drop(reason, [k for k in state_dict if k.startswith(prefix)])
    for reason, keys in local.dropped.items():
        report.drop(reason, [source_prefix + k for k in keys])
    return converted


def spa3r_encoder_from_reference(
    state_dict: dict[str, torch.Tensor], config: Optional[Spa3RConfig | dict] = None, return_report: bool = False
):
    """A frozen ``Spa3RModel`` (encoder path) from a reference Spa3R state dict (``load_reference_checkpoint``)."""
    config = encoder_only_spa3r_config(config) if config is not None else spa3r_encoder_config_from_reference(state_dict)
    report = ConversionReport()
    converted = spa3r_encoder_state_from_reference(state_dict, config, report)
    model = Spa3RModel(config)
    strict_load(model, converted, "Spa3R encoder conversion")
    model.requires_grad_(False)
    model.eval()
    return (model, report) if return_report else model


# ---------------------------------------------------------------------------------------------- Spa3-VLM


def spa3_vlm_config_from_reference(reference_config: dict, spa3r_config: Optional[Spa3RConfig | dict] = None) -> Spa3VLMConfig:
    """The released ``config.json`` (a 4.50 Qwen2.5-VL config + the reference's geometry keys) -> ``Spa3VLMConfig``.

    ``spa3r_config`` (reduced to the encoder path) describes the Spa3R inside the checkpoint; default: the paper's
    encoder. Its width and query count are checked against ``spa3r_embed_dim`` / ``spa3r_num_queries``.
    """
    values = json.loads(json.dumps(reference_config))  # deep copy of plain JSON
    geometry = {key: values.pop(key) for key in REFERENCE_GEOMETRY_KEYS if key in values}
    for key in _CONFIG_BOOKKEEPING:
        values.pop(key, None)
    encoder_type = geometry.get("geometry_encoder_type")
    # As the reference model class: no `use_geometry_encoder` key means a plain Qwen2.5-VL.
    use_geometry = bool(geometry.get("use_geometry_encoder", False))
    if use_geometry and encoder_type not in (None, "spa3r"):
        raise ValueError(f"only the 'spa3r' geometry encoder is supported, the config says {encoder_type!r}")
    qwen_config = Qwen2_5_VLConfig(**values)
    config = Spa3VLMConfig.from_qwen(
        qwen_config,
        spa3r_config=spa3r_config,
        spatial_branch=use_geometry,
        spa3r_name_or_path=geometry.get("geometry_encoder_path"),
    )
    if use_geometry:
        for key, attribute in (("spa3r_embed_dim", "hidden_size"), ("spa3r_num_queries", "num_queries")):
            if key in geometry and geometry[key] != getattr(config.spa3r_config, attribute):
                raise ValueError(
                    f"the checkpoint's {key}={geometry[key]} differs from spa3r_config.{attribute}="
                    f"{getattr(config.spa3r_config, attribute)}"
                )
    return config


def _rename(key: str, rules) -> Optional[str]:
    for source, target in rules:
        if key.startswith(source):
            return target + key[len(source) :]
    return None


def expected_state_shapes(config: Spa3VLMConfig) -> dict[str, tuple]:
    """Names and shapes of a ``Spa3VLMForConditionalGeneration`` state dict, from a meta-device build (no memory)."""
    with torch.device("meta"):
        model = Spa3VLMForConditionalGeneration(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def spa3_vlm_state_from_reference(
    state_dict: dict[str, torch.Tensor], config: Spa3VLMConfig, report: Optional[ConversionReport] = None
) -> dict[str, torch.Tensor]:
    """Released (4.50) names -> our names, strictly checked against ``config``; ``report`` collects the drops."""
    report = report if report is not None else ConversionReport()
    converted, unknown = {}, []
    spa3r_state = {key[len(SPA3R_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(SPA3R_PREFIX)}
    if spa3r_state:
        if not config.spatial_branch:
            raise ValueError("the checkpoint holds geometry_encoder.spa3r.* tensors but the config has spatial_branch=False")
        encoder = spa3r_encoder_state_from_reference(spa3r_state, config.spa3r_config, report, source_prefix=SPA3R_PREFIX)
        converted.update({"spa3r." + key: value for key, value in encoder.items()})
    for key, value in state_dict.items():
        if key.startswith(SPA3R_PREFIX):
            continue
        new_key = _rename(key, QWEN_RENAMES) or _rename(key, ADAPTER_RENAMES)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(f"unknown tensor name(s) in the Spa3-VLM checkpoint: {sorted(unknown)[:10]} ({len(unknown)} in all)")

    embed_key = "model.language_model.embed_tokens.weight"
    if config.tie_word_embeddings and "lm_head.weight" in converted:
        if embed_key in converted and not torch.equal(converted["lm_head.weight"], converted[embed_key]):
            raise ValueError("tie_word_embeddings is set but lm_head.weight differs from the input embeddings")
        del converted["lm_head.weight"]
        report.drop("lm_head tied to the input embeddings", ["lm_head.weight"])

    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    check_state_dict(converted, expected_state_shapes(config), "Spa3-VLM conversion", optional)
    return converted


def _floating_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    counts = Counter(t.dtype for t in tensors if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def write_model_folder(config: Spa3VLMConfig, state_dict: dict[str, torch.Tensor], out_dir: str | Path, dtype=None):
    """Load ``state_dict`` (our names) into ``Spa3VLMForConditionalGeneration`` and ``save_pretrained`` it.

    Goes through a temporary safetensors file so the model is materialised by ``from_pretrained`` (no random
    init of billions of weights). Returns the loaded model.
    """
    from safetensors.torch import save_file

    register_auto_classes()
    dtype = dtype or _floating_dtype(state_dict.values())
    with tempfile.TemporaryDirectory(prefix="spa3-vlm-convert-") as staging:
        config.save_pretrained(staging)
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(Path(staging) / "model.safetensors"), metadata={"format": "pt"})
        model, info = Spa3VLMForConditionalGeneration.from_pretrained(staging, dtype=dtype, output_loading_info=True)
    leftovers = {k: v for k, v in info.items() if k != "error_msgs" and v} | ({"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
    if leftovers:
        raise ValueError(f"loading the converted weights was not exact: {leftovers}")
    model.save_pretrained(str(out_dir))
    return model


def read_state_dict(paths: Iterable[str | Path]) -> dict[str, torch.Tensor]:
    """Tensors of every given file (``.safetensors`` shards, or a ``.bin/.pt`` state dict), merged; duplicates raise."""
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            part = load_file(str(path))
        else:
            part = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(part, dict):
                raise ValueError(f"{path} does not hold a state dict")
        duplicated = sorted(set(part) & set(merged))
        if duplicated:
            raise ValueError(f"{path} repeats tensors already read from another file: {duplicated[:5]}")
        merged.update(part)
    return merged


def resolve_spa3_vlm_source(paths: list[str | Path], config_path: Optional[str | Path] = None) -> tuple[list[Path], dict]:
    """A checkpoint folder (``config.json`` + ``*.safetensors``) or explicit weight files + ``config_path``."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ValueError(f"no *.safetensors files in {folder}")
        config_path = config_path or folder / "config.json"
    else:
        files = paths
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"weight file not found: {path}")
        if config_path is None:
            raise ValueError("weight files were given without a folder: pass the checkpoint's config.json as well")
    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"config file not found: {config_path}")
    return files, json.loads(config_path.read_text())


def write_conversion_card(
    out_dir: str | Path,
    kind: str,
    source: str | Path,
    model,
    report: Optional[ConversionReport] = None,
    spa3r_config_given: bool = False,
    backbone: Optional[str] = None,
    **card_kwargs,
) -> None:
    """``out_dir/README.md``: :func:`spa3_vlm.cards.conversion_model_card` for a converted ``model``. The frozen VGGT
    backbone is ``backbone``, else the one its config names, else (default config) VGGT-1B. ``card_kwargs``:
    ``source_id``, ``qwen``, ``base_models``, ``command``, the licence."""
    from ..cards import conversion_model_card

    spa3r = getattr(model.config, "spa3r_config", None) if kind in ("spa3_vlm", "qwen_spa3r") else model.config
    has_backbone = spa3r is not None and spa3r.vggt_config is not None
    backbone = backbone or (spa3r.vggt_name_or_path if spa3r is not None else None)
    if has_backbone and backbone is None and not spa3r_config_given:
        backbone = "facebook/VGGT-1B"  # the default config is VGGT-1B's, the backbone the reference Spa3R freezes
    card = conversion_model_card(
        kind, str(source), out_name=Path(out_dir).name, backbone=backbone, has_backbone=has_backbone,
        report=None if report is None else str(report), **card_kwargs,
    )  # fmt: skip
    card.save(str(Path(out_dir) / "README.md"))


def convert_spa3_vlm(
    sources: list[str | Path],
    out_dir: str | Path,
    config_path: Optional[str | Path] = None,
    spa3r_config: Optional[Spa3RConfig | dict] = None,
    dtype: Optional[torch.dtype] = None,
    card: Optional[dict] = None,
) -> tuple[Spa3VLMForConditionalGeneration, ConversionReport]:
    """Released Spa3-VLM checkpoint -> a ``Spa3VLMForConditionalGeneration`` folder in ``out_dir``, with a model card
    (``card``: keyword arguments of :func:`write_conversion_card`)."""
    files, reference_config = resolve_spa3_vlm_source(sources, config_path)
    config = spa3_vlm_config_from_reference(reference_config, spa3r_config)
    state = read_state_dict(files)
    report = ConversionReport()
    converted = spa3_vlm_state_from_reference(state, config, report)
    model = write_model_folder(config, converted, out_dir, dtype=dtype or _floating_dtype(state.values()))
    source = sources[0] if len(sources) == 1 else Path(sources[0]).parent
    write_conversion_card(out_dir, "spa3_vlm", source, model, report, spa3r_config is not None, **(card or {}))
    logger.info("Spa3-VLM conversion: %s", report)
    return model, report


def combine_qwen_and_spa3r(
    qwen_name_or_path: str | Path,
    spa3r_checkpoint: str | Path,
    out_dir: Optional[str | Path] = None,
    spa3r_config: Optional[Spa3RConfig | dict] = None,
    adapter_kwargs: Optional[dict] = None,
    card: Optional[dict] = None,
    **from_pretrained_kwargs,
):
    """A fresh Spa3-VLM (identity adapter) from a Qwen2.5-VL or Qwen3-VL checkpoint and a Spa3R Lightning /
    reference checkpoint. The base follows the Qwen checkpoint's ``model_type``; every Qwen tensor must load
    (only the Spa3R encoder and the adapter are new).

    Args:
        spa3r_checkpoint: ``.ckpt`` (Lightning, ``model.`` prefixes) / ``.pt`` / ``.safetensors`` in reference names.
        spa3r_config: the Spa3R config (reduced to the encoder); default: read off the checkpoint.
        card: with ``out_dir``, keyword arguments of :func:`write_conversion_card` for the folder's model card.
    """
    register_auto_classes()
    qwen_config = AutoConfig.from_pretrained(str(qwen_name_or_path))
    if qwen_config.model_type not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(
            f"{qwen_name_or_path} is a {qwen_config.model_type!r} checkpoint; expected Qwen2.5-VL ('qwen2_5_vl') or "
            "Qwen3-VL ('qwen3_vl')"
        )
    model_class = SPA3_VLM_CLASSES[qwen_config.model_type]
    state = load_reference_checkpoint(spa3r_checkpoint)
    encoder_config = encoder_only_spa3r_config(spa3r_config) if spa3r_config is not None else spa3r_encoder_config_from_reference(state)
    report = ConversionReport()
    encoder_state = spa3r_encoder_state_from_reference(state, encoder_config, report)
    config = model_class.config_class.from_qwen(
        qwen_config, spa3r_config=encoder_config, spa3r_name_or_path=str(spa3r_checkpoint), **(adapter_kwargs or {})
    )
    model, info = model_class.from_pretrained(
        str(qwen_name_or_path), config=config, output_loading_info=True, **from_pretrained_kwargs
    )
    new = ("spa3r.", "geometry_", "geom_cross_attention.", "ln.")
    qwen_missing = sorted(k for k in info["missing_keys"] if not k.startswith(new))
    if qwen_missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise ValueError(
            f"{qwen_name_or_path} does not load whole into {model_class.__name__}: missing {qwen_missing[:8]}, "
            f"unexpected {sorted(info['unexpected_keys'])[:8]}, mismatched {list(info['mismatched_keys'])[:8]}"
        )
    dtype = model.spa3r.projection.weight.dtype
    model.load_spa3r_state_dict({k: v.to(dtype) for k, v in encoder_state.items()})
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
        write_conversion_card(out_dir, "qwen_spa3r", spa3r_checkpoint, model, report, spa3r_config is not None,
                              **{"qwen": str(qwen_name_or_path), **(card or {})})  # fmt: skip
    logger.info("Qwen + Spa3R: %s", report)
    return model, report


def spa3r_constructor_args(config: Spa3RConfig) -> dict:
    """The reference ``Spa3R(...)`` arguments that a ``Spa3RConfig`` describes (for ``spa3r_from_reference``)."""
    return {
        "embed_dim": config.hidden_size,
        "num_heads": config.num_attention_heads,
        "num_queries": config.num_queries,
        "num_encoder_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_register_tokens": config.num_register_tokens,
        "qk_norm": config.qk_norm,
        "mask_ratio": config.mask_ratio,
        "asymmetric_masking": config.masking_mode == "masked_pass",
    }


__all__ = [
    "combine_qwen_and_spa3r",
    "convert_spa3_vlm",
    "expected_state_shapes",
    "read_state_dict",
    "register_auto_classes",
    "resolve_spa3_vlm_source",
    "spa3_vlm_config_from_reference",
    "spa3_vlm_state_from_reference",
    "spa3r_constructor_args",
    "spa3r_encoder_config_from_reference",
    "spa3r_encoder_from_reference",
    "spa3r_encoder_state_from_reference",
    "write_conversion_card",
    "write_model_folder",
]
