"""Reference-format weights (hustvl/Spa3R Lightning checkpoints, facebookresearch/vggt) -> our models."""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..configuration_spa3r import Spa3RConfig
from ..configuration_vggt import VGGTConfig
from ..modeling_spa3r import Spa3RForFieldPrediction
from ..modeling_vggt import VGGTModel

logger = logging.getLogger(__name__)

VGGT_PREFIXES = ("aggregator.", "camera_head.", "depth_head.", "point_head.", "track_head.")
# Reference Spa3R module -> our module path inside Spa3RForFieldPrediction.
SPA3R_RENAMES = {
    "projection.": "spa3r.projection.",
    "query_embed.": "spa3r.query_embed.",
    "encoder.": "spa3r.encoder.",
    "pose_tokenizer.": "pose_tokenizer.",
    "decoder.": "decoder.",
    "heads.": "heads.",
    "depth_prob.": "depth_probe.",
}


@dataclass
class ConversionReport:
    """What a conversion did with the source keys."""

    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> source keys not used

    def drop(self, reason: str, keys: list[str]) -> None:
        if keys:
            self.dropped.setdefault(reason, []).extend(sorted(keys))

    def __str__(self) -> str:
        if not self.dropped:
            return "all source tensors were used"
        lines = []
        for reason, keys in self.dropped.items():
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            lines.append(f"dropped {len(keys)} tensor(s) ({reason}): {shown}")
        return "\n".join(lines)


def load_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a (Lightning) ``.ckpt/.pt/.pth`` file.

    Pickled files are read with ``weights_only=True``: no code from the file is executed. A Lightning
    checkpoint's ``state_dict`` is taken and its ``model.`` prefix removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message goes on to suggest weights_only=False, i.e. running the file's code: never pass that on.
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(
            f"could not read checkpoint {path}: refused, it pickles objects other than tensors{what}, which could run "
            "code when loaded. Only weights are read from pickled files; convert it to safetensors where you trust it."
        ) from None
    except Exception as error:  # corrupt or truncated file: say which one
        raise ValueError(f"could not read checkpoint {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    elif isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    if not state:
        raise ValueError(f"{path} holds no tensors")
    if any(key.startswith("model.") for key in state):
        outside = sorted(key for key in state if not key.startswith("model."))
        if outside:
            logger.warning("%s: ignoring %d tensor(s) outside the Lightning module's model. prefix: %s", path,
                           len(outside), ", ".join(outside[:6]) + (", ..." if len(outside) > 6 else ""))
        state = {key[len("model.") :]: value for key, value in state.items() if key.startswith("model.")}
    return state


def vggt_config_from_reference(
    vggt: Optional[dict] = None,
    aggregator: Optional[dict] = None,
    camera_head: Optional[dict] = None,
    depth_head: Optional[dict] = None,
    point_head: Optional[dict] = None,
    track_head: Optional[dict] = None,
    global_qk_norm: str = "layernorm",
    **unused,
) -> VGGTConfig:
    """Map the reference constructors' argument dicts (``VGGT``, ``Aggregator``, ``CameraHead``, ``DPTHead``,
    ``TrackHead``) onto a ``VGGTConfig``. Missing dicts mean the reference defaults (VGGT-1B).

    The tracking head is built when ``vggt["enable_track"]`` is true or, without that key, when a ``track_head`` dict
    is given. (The reference's own default is ``enable_track=True``, but Spa3R never runs the head and its callers
    pass VGGT dicts without the key.)
    """
    vggt = dict(vggt or {})
    agg = {**{k: vggt[k] for k in ("img_size", "patch_size", "embed_dim") if k in vggt}, **(aggregator or {})}
    cam = dict(camera_head or {})
    dpt = dict(depth_head or point_head or {})
    track = dict(track_head or {})
    if agg.get("aa_order", ["frame", "global"]) != ["frame", "global"] or agg.get("aa_block_size", 1) != 1:
        raise ValueError("only aa_order=['frame', 'global'] with aa_block_size=1 (VGGT-1B's layout) is supported")
    if not track.get("predict_conf", True):
        raise ValueError("only a tracking head with predict_conf=True (VGGT-1B's) is supported, got predict_conf=False")
    if track.get("stride", 2) != 2:
        # The reference fixes the feature extractor's down_ratio at 2; our single track_stride sets both.
        raise ValueError(f"only a tracking head with stride=2 (VGGT-1B's) is supported, got stride={track['stride']}")
    embed_dim = agg.get("embed_dim", 1024)
    return VGGTConfig(
        image_size=agg.get("img_size", 518),
        patch_size=agg.get("patch_size", 14),
        hidden_size=embed_dim,
        num_hidden_layers=agg.get("depth", 24),
        num_attention_heads=agg.get("num_heads", 16),
        mlp_ratio=float(agg.get("mlp_ratio", 4.0)),
        num_register_tokens=agg.get("num_register_tokens", 4),
        qkv_bias=agg.get("qkv_bias", True),
        proj_bias=agg.get("proj_bias", True),
        ffn_bias=agg.get("ffn_bias", True),
        patch_embed_type="conv" if agg.get("patch_embed", "dinov2_vitl14_reg") == "conv" else "dinov2_vitl14_reg",
        global_qk_norm=global_qk_norm,
        rope_theta=float(agg.get("rope_freq", 100)),
        layerscale_init=float(agg.get("init_values", 0.01)),
        use_camera_head=vggt.get("enable_camera", True),
        camera_trunk_depth=cam.get("trunk_depth", 4),
        camera_num_heads=cam.get("num_heads", 16),
        use_depth_head=vggt.get("enable_depth", True),
        use_point_head=vggt.get("enable_point", True),
        dpt_features=dpt.get("features", 256),
        dpt_out_channels=list(dpt.get("out_channels", [256, 512, 1024, 1024])),
        dpt_intermediate_layers=list(dpt.get("intermediate_layer_idx", [4, 11, 17, 23])),
        use_track_head=bool(vggt.get("enable_track", track_head is not None)),
        track_features=track.get("features", 128),
        track_num_iterations=track.get("iters", 4),
        track_corr_levels=track.get("corr_levels", 7),
        track_corr_radius=track.get("corr_radius", 4),
        track_hidden_size=track.get("hidden_size", 384),
    )


def check_state_dict(state: dict[str, torch.Tensor], expected_shapes: dict, what: str, optional=frozenset()) -> None:
    """Raise a ``ValueError`` naming missing, unexpected and wrongly shaped tensors (``optional`` may be absent)."""
    missing = sorted(set(expected_shapes) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(expected_shapes))
    wrong_shape = sorted(k for k in set(state) & set(expected_shapes) if tuple(state[k].shape) != tuple(expected_shapes[k]))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {unexpected[:10]}")
    if wrong_shape:
        problems.append(
            "shape mismatch: "
            + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected_shapes[k])}" for k in wrong_shape[:10])
        )
    if problems:
        raise ValueError(f"{what}: the state dict does not match the model config; " + "; ".join(problems))


def strict_load(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state, strict=True)`` after :func:`check_state_dict` named every mismatch."""
    check_state_dict(state, {k: v.shape for k, v in model.state_dict().items()}, what)
    model.load_state_dict(state, strict=True)


def vggt_state_dict(state: dict[str, torch.Tensor], config: VGGTConfig, report: ConversionReport, prefix: str = "") -> dict:
    """Select and adapt VGGT tensors (``prefix`` + reference names) for a ``VGGTModel`` built from ``config``."""
    selected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix) :].startswith(VGGT_PREFIXES)}
    if config.global_qk_norm == "rmsnorm":
        # Spa3R's global blocks use weight-only RMSNorm q/k norms; LayerNorm biases have no counterpart
        # (the reference drops them silently when loading VGGT-1B; we drop them and say so).
        biases = [k for k in selected if ".global_blocks." in k and k.endswith(("q_norm.bias", "k_norm.bias"))]
        for key in biases:
            del selected[key]
        report.drop("q/k LayerNorm biases of the global blocks (RMSNorm variant)", [prefix + k for k in biases])
    heads = (
        ("camera_head.", config.use_camera_head),
        ("depth_head.", config.use_depth_head),
        ("point_head.", config.use_point_head),
        ("track_head.", config.use_track_head),
    )
    for head, enabled in heads:
        if not enabled:
            unused = [k for k in selected if k.startswith(head)]
            for key in unused:
                del selected[key]
            report.drop(f"{head[:-1]} disabled in the config", [prefix + k for k in unused])
    return selected


def vggt_from_reference(
    state_dict: dict[str, torch.Tensor],
    global_qk_norm: Optional[str] = None,
    return_report: bool = False,
    **reference_config,
):
    """Build a ``VGGTModel`` from a reference VGGT state dict and the reference constructor arguments.

    Args:
        state_dict: reference names (``aggregator.*``, ``camera_head.*``, ...).
        global_qk_norm: ``"layernorm"`` (VGGT-1B) or ``"rmsnorm"`` (Spa3R's variant). Default: LayerNorm if the
            global q/k-norm biases are present, otherwise RMSNorm.
        reference_config: the ``vggt``, ``aggregator``, ``camera_head``, ``depth_head``, ``point_head``,
            ``track_head`` dicts (see ``vggt_config_from_reference``). Without ``enable_track`` or a ``track_head``
            dict, the tracking head is built iff ``state_dict`` has ``track_head.*`` tensors (VGGT-1B's sizes);
            with ``enable_track=False`` they are reported as dropped.
    """
    if global_qk_norm is None:
        has_bias = any(k.startswith("aggregator.global_blocks.") and k.endswith("q_norm.bias") for k in state_dict)
        global_qk_norm = "layernorm" if has_bias else "rmsnorm"
    vggt_args = dict(reference_config.get("vggt") or {})
    if "enable_track" not in vggt_args and "track_head" not in reference_config:
        # As the reference (enable_track=True by default) when the weights hold a tracking head: VGGT-1B converts whole.
        vggt_args["enable_track"] = any(k.startswith("track_head.") for k in state_dict)
        reference_config = {**reference_config, "vggt": vggt_args}
    config = vggt_config_from_reference(global_qk_norm=global_qk_norm, **reference_config)
    report = ConversionReport()
    state = vggt_state_dict(state_dict, config, report)
    report.drop("not part of VGGT", [k for k in state_dict if not k.startswith(VGGT_PREFIXES)])
    model = VGGTModel(config)
    strict_load(model, state, "VGGT conversion")
    model.eval()
    logger.info("VGGT conversion: %s", report)
    return (model, report) if return_report else model


def _spa3r_config_from_state(
    state: dict[str, torch.Tensor],
    constructor: dict,
    vggt_config: Optional[VGGTConfig],
    semantic_teacher_config: Optional[dict],
) -> Spa3RConfig:
    known = {
        "embed_dim", "mask_ratio", "asymmetric_masking", "num_queries", "num_encoder_layers",
        "num_decoder_layers", "num_heads", "qk_norm", "num_register_tokens",
    }  # fmt: skip
    unknown = set(constructor) - known
    if unknown:
        raise ValueError(f"unknown Spa3R constructor argument(s) {sorted(unknown)}; expected some of {sorted(known)}")
    if "projection.weight" not in state:
        raise ValueError("not a Spa3R state dict: 'projection.weight' is missing")
    hidden, backbone_hidden = state["projection.weight"].shape
    heads = {}
    for key, value in state.items():
        if key.startswith("heads.") and key.endswith(".fc2.weight"):
            heads[key.split(".")[1]] = value.shape[0]
    mlp_hidden = state["encoder.blocks.0.mlp.fc1.weight"].shape[0] if "encoder.blocks.0.mlp.fc1.weight" in state else 4 * hidden
    embed_dim = constructor.get("embed_dim", hidden)
    if embed_dim != hidden:
        raise ValueError(f"embed_dim={embed_dim} but the state dict's projection outputs {hidden} channels")
    return Spa3RConfig(
        hidden_size=hidden,
        num_attention_heads=constructor.get("num_heads", 12),
        num_queries=state["query_embed.weight"].shape[0],
        num_encoder_layers=constructor.get("num_encoder_layers", 6),
        num_decoder_layers=constructor.get("num_decoder_layers", 6),
        num_register_tokens=constructor.get("num_register_tokens", 4),
        mlp_ratio=mlp_hidden / hidden,
        qk_norm=constructor.get("qk_norm", True),
        backbone_hidden_size=backbone_hidden,
        target_heads=heads,
        use_depth_probe="depth_prob.fc1.weight" in state,
        mask_ratio=constructor.get("mask_ratio", 0.5),
        # The reference class default is the one-pass asymmetric mask; its shipped config uses two passes.
        masking_mode="masked_pass" if constructor.get("asymmetric_masking", True) else "two_pass",
        vggt_config=vggt_config,
        semantic_teacher_config=semantic_teacher_config,
    )


def spa3r_from_reference(
    state_dict: dict[str, torch.Tensor],
    vggt_config: Optional[VGGTConfig | dict] = None,
    semantic_teacher_config: Optional[dict] = None,
    return_report: bool = False,
    **constructor_args,
):
    """Build a ``Spa3RForFieldPrediction`` from a reference Spa3R state dict.

    Args:
        state_dict: reference names without the Lightning ``model.`` prefix (see ``load_reference_checkpoint``):
            the trained parts (``projection``, ``query_embed``, ``pose_tokenizer``, ``encoder``, ``decoder``,
            ``heads``, ``depth_prob``) and optionally the frozen VGGT (``aggregator``, ``camera_head``, ...).
        vggt_config: the backbone's config. Default: VGGT-1B sizes with Spa3R's RMSNorm global q/k norms when the
            state dict holds VGGT tensors, no backbone otherwise.
        constructor_args: the reference ``Spa3R(...)`` arguments (``embed_dim``, ``num_heads``, ``num_queries``,
            ``num_encoder_layers``, ``num_decoder_layers``, ``num_register_tokens``, ``qk_norm``, ``mask_ratio``,
            ``asymmetric_masking``). Feature sizes are read off the tensors.
    Returns:
        the model (in eval mode), and the ``ConversionReport`` with ``return_report=True``.
    """
    report = ConversionReport()
    has_vggt = any(k.startswith(VGGT_PREFIXES) for k in state_dict)
    if isinstance(vggt_config, dict):
        vggt_config = VGGTConfig(**vggt_config)
    if vggt_config is None and has_vggt:
        vggt_config = VGGTConfig(global_qk_norm="rmsnorm")
    config = _spa3r_config_from_state(state_dict, constructor_args, vggt_config, semantic_teacher_config)

    converted = {}
    for key, value in state_dict.items():
        for source, target in SPA3R_RENAMES.items():
            if key.startswith(source):
                converted[target + key[len(source) :]] = value
                break
    if vggt_config is not None:
        if not has_vggt:
            raise ValueError("a vggt_config was given but the state dict holds no VGGT tensors (aggregator.*)")
        for key, value in vggt_state_dict(state_dict, vggt_config, report).items():
            converted["spa3r.backbone." + key] = value
    else:
        report.drop("frozen VGGT (no vggt_config)", [k for k in state_dict if k.startswith(VGGT_PREFIXES)])
    report.drop("DINOv3 teacher from torch.hub (not converted)", [k for k in state_dict if k.startswith("dino.")])
    used_prefixes = tuple(SPA3R_RENAMES) + VGGT_PREFIXES + ("dino.",)
    report.drop("unknown to Spa3R", [k for k in state_dict if not k.startswith(used_prefixes)])

    model = Spa3RForFieldPrediction(config)
    teacher_keys = {k for k in model.state_dict() if k.startswith("semantic_teacher.")}
    if teacher_keys:  # a teacher given by config keeps its own (random or separately loaded) weights
        converted.update({k: v for k, v in model.state_dict().items() if k in teacher_keys})
    strict_load(model, converted, "Spa3R conversion")
    model.eval()
    logger.info("Spa3R conversion: %s", report)
    return (model, report) if return_report else model
