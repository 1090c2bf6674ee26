"""The Spa3-VLM to tune and which of its parameters train: loading, trainable groups, optimizer groups, LoRA.

* :func:`load_spa3_vlm` — a random model from a config, a Qwen2.5-VL / Qwen3-VL or Spa3-VLM checkpoint, plus a
  pretrained Spa3R (:func:`load_spa3r_encoder`, :func:`spa3r_config_differences`).
* :func:`parameter_group` / :func:`configure_trainable` / :func:`optimizer_param_groups` — the reference's
  trainable set (LLM + adapter; vision tower, merger and Spa3R frozen), each group with its own learning rate, no
  weight decay on biases and norms (the reference decays RMSNorm weights).
* :func:`lora_config` — PEFT LoRA on the LLM, the adapter in ``modules_to_save``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from torch import nn

from ..configuration_spa3_vlm import encoder_only_spa3r_config

__all__ = [
    "ADAPTER_MODULES",
    "DEFAULT_LORA_TARGETS",
    "PARAMETER_GROUPS",
    "TRAINABLE_GROUPS",
    "configure_trainable",
    "load_spa3_vlm",
    "load_spa3r_encoder",
    "lora_config",
    "optimizer_param_groups",
    "parameter_group",
    "spa3r_config_differences",
]

# Top-level modules of Spa3VLMForConditionalGeneration that form the adapter (new, trained in SFT).
ADAPTER_MODULES = ("geometry_projector", "geom_cross_attention", "ln", "geometry_adaptor", "geometry_gate")
# Every parameter belongs to exactly one of these (see parameter_group).
PARAMETER_GROUPS = ("adapter", "llm", "merger", "vision", "spa3r")
TRAINABLE_GROUPS = PARAMETER_GROUPS[:4]  # Spa3R is always frozen
# The LLM's projections; the adapter's own q/k/v/o_proj (geom_cross_attention) do not match.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def load_spa3r_encoder(model, spa3r_name_or_path: str) -> None:
    """Load a pretrained Spa3R (``Spa3RModel`` or ``Spa3RForFieldPrediction`` folder / hub id) into ``model.spa3r``.

    Strict: every encoder tensor must be present with the shape ``model.config.spa3r_config`` gives.
    """
    from ..modeling_spa3r import Spa3RModel

    encoder, info = Spa3RModel.from_pretrained(
        spa3r_name_or_path, config=model.config.spa3r_config, output_loading_info=True
    )
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(
            f"{spa3r_name_or_path} does not hold the Spa3R encoder of this model's spa3r_config: missing "
            f"{sorted(info['missing_keys'])[:8]}, mismatched {list(info['mismatched_keys'])[:8]}"
        )
    model.load_spa3r_state_dict(encoder.state_dict())


def spa3r_config_differences(first, second) -> dict[str, tuple]:
    """Fields (dotted, nested configs included) whose values differ between two Spa3R configs."""

    def flat(values: Mapping, prefix: str = "") -> dict:
        out = {}
        for key, value in values.items():
            if key in ("transformers_version", "architectures", "auto_map", "dtype", "model_type", "use_cache"):
                continue
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a = flat(first.to_dict() if hasattr(first, "to_dict") else first)
    b = flat(second.to_dict() if hasattr(second, "to_dict") else second)
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


def load_spa3_vlm(
    config_name: Optional[str] = None,
    model_name_or_path: Optional[str] = None,
    spa3r_name_or_path: Optional[str] = None,
    spatial_branch: bool = True,
    **from_pretrained_kwargs,
):
    """The model to tune. Returns ``(model, notes)`` (``notes``: what was loaded from where, for logs/cards).

    * ``model_name_or_path`` a Spa3-VLM checkpoint: loaded (``spatial_branch=False`` drops Spa3R and adapter);
    * ``model_name_or_path`` a Qwen2.5-VL or Qwen3-VL checkpoint: Qwen weights + Spa3R + a fresh identity adapter
      (``from_qwen_pretrained``), or the plain base in the Spa3-VLM class with ``spatial_branch=False``;
    * otherwise a randomly initialised model from ``config_name`` (a folder/hub id with a Spa3-VLM config.json,
      e.g. ``hub_configs/spa3-vlm-tiny`` or ``hub_configs/spa3-vlm-qwen3-tiny``).

    The base VLM follows the checkpoint or config (``SPA3_VLM_CLASSES``).
    ``spa3r_name_or_path``: pretrained Spa3R weights for the encoder. The model's ``spa3r_config`` becomes that
    checkpoint's encoder path (:func:`encoder_only_spa3r_config`), so weights and architecture always agree;
    differences from the config's original ``spa3r_config`` are reported in ``notes["spa3r_config_changes"]``.
    """
    from transformers import AutoConfig

    from ..configuration_spa3r import Spa3RConfig
    from ..modeling_spa3_vlm import SPA3_VLM_CLASSES

    if not isinstance(spatial_branch, bool):
        raise ValueError(f"spatial_branch must be True or False, got {spatial_branch!r}")
    if config_name is None and model_name_or_path is None:
        raise ValueError("give config_name (a random model from a config) or model_name_or_path (a checkpoint)")
    spa3r_name_or_path = spa3r_name_or_path if spatial_branch else None
    spa3r_config = None
    if spa3r_name_or_path is not None:
        spa3r_config = encoder_only_spa3r_config(Spa3RConfig.from_pretrained(spa3r_name_or_path))
    notes: dict[str, Any] = {"spatial_branch": spatial_branch, "spa3r_name_or_path": spa3r_name_or_path}

    def with_encoder(config):
        if spa3r_config is not None:
            if config.spa3r_config is not None:
                notes["spa3r_config_changes"] = spa3r_config_differences(config.spa3r_config, spa3r_config)
            config.spa3r_config = spa3r_config
            config.spa3r_name_or_path = spa3r_name_or_path
        return config

    def model_class(source: str):
        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type not in SPA3_VLM_CLASSES:
            raise ValueError(
                f"{source} is a {model_type!r} checkpoint; expected a Spa3-VLM ('spa3_vlm', 'spa3_vlm_qwen3') or a "
                "Qwen2.5-VL / Qwen3-VL ('qwen2_5_vl', 'qwen3_vl') one"
            )
        return SPA3_VLM_CLASSES[model_type], model_type

    if model_name_or_path is not None:
        notes["base_model"] = model_name_or_path
        cls, model_type = model_class(model_name_or_path)
        config_class = cls.config_class
        if model_type == config_class.model_type:
            config = with_encoder(config_class.from_pretrained(model_name_or_path, spatial_branch=spatial_branch))
        else:
            # As from_qwen_pretrained, with the encoder config already reduced by encoder_only_spa3r_config.
            config = config_class.from_qwen(
                AutoConfig.from_pretrained(model_name_or_path),
                spa3r_config=spa3r_config,
                encoder_only=False,
                spatial_branch=spatial_branch,
                spa3r_name_or_path=spa3r_name_or_path,
            )
        model = cls.from_pretrained(model_name_or_path, config=config, **from_pretrained_kwargs)
    else:
        notes["base_model"] = None
        notes["config_name"] = config_name
        cls, model_type = model_class(config_name)
        if model_type != cls.config_class.model_type:
            raise ValueError(f"config_name {config_name} is a plain {model_type!r} config: give a Spa3-VLM config")
        config = with_encoder(cls.config_class.from_pretrained(config_name, spatial_branch=spatial_branch))
        model = cls(config)
    if spa3r_name_or_path is not None:
        load_spa3r_encoder(model, spa3r_name_or_path)
    return model, notes


# --------------------------------------------------------------------------------------------------
# Trainable groups and optimizer
# --------------------------------------------------------------------------------------------------


def parameter_group(name: str) -> str:
    """The group of a parameter name of a Spa3-VLM (plain, PEFT-wrapped or DDP-wrapped).

    ``adapter`` (the ``ADAPTER_MODULES``), ``llm`` (``model.language_model.*`` and ``lm_head``, LoRA weights
    included), ``merger`` (``model.visual.merger``), ``vision`` (the rest of ``model.visual``), ``spa3r``.
    """
    parts = name.split(".")
    while parts and parts[0] in ("module", "_orig_mod"):
        parts = parts[1:]
    if parts[:2] == ["base_model", "model"]:  # PeftModel -> LoraModel -> the model
        parts = parts[2:]
    if not parts:
        raise ValueError(f"empty parameter name {name!r}")
    head = parts[0]
    if head in ADAPTER_MODULES:
        return "adapter"
    if head == "spa3r":
        return "spa3r"
    if head == "lm_head":
        return "llm"
    if head == "model" and len(parts) > 1:
        if parts[1] == "language_model":
            return "llm"
        if parts[1] == "visual":
            return "merger" if len(parts) > 2 and parts[2] == "merger" else "vision"
    raise ValueError(
        f"parameter {name!r} belongs to no known Spa3-VLM group {PARAMETER_GROUPS} (expected adapter modules "
        f"{ADAPTER_MODULES}, spa3r, lm_head, model.language_model or model.visual)"
    )


def configure_trainable(
    model: nn.Module,
    tune_llm: bool = True,
    tune_adapter: bool = True,
    tune_merger: bool = False,
    tune_vision: bool = False,
) -> dict[str, int]:
    """Set ``requires_grad`` per group (the reference: LLM + adapter trained; vision, merger, Spa3R frozen).

    Spa3R is always frozen. Returns the number of trainable parameters per group.
    """
    wanted = {"adapter": tune_adapter, "llm": tune_llm, "merger": tune_merger, "vision": tune_vision, "spa3r": False}
    counts = dict.fromkeys(PARAMETER_GROUPS, 0)
    for name, param in model.named_parameters():
        group = parameter_group(name)
        param.requires_grad_(wanted[group])
        if wanted[group]:
            counts[group] += param.numel()
    return counts


def optimizer_param_groups(
    model: nn.Module, learning_rates: Mapping[str, float], weight_decay: float, decay_parameter_names: Sequence[str]
) -> list[dict]:
    """Torch param groups: one per (group, decay / no decay) with its own ``lr``; only trainable parameters.

    Every param group dict carries ``name`` (e.g. ``"adapter"``, ``"llm/no_decay"``) so that schedulers, logs and
    tests can find it. ``decay_parameter_names``: names that get weight decay (the rest — biases, norms — none).
    Raises if a trainable parameter's group has no learning rate, or Spa3R has a trainable parameter.
    """
    decay = set(decay_parameter_names)
    buckets: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = parameter_group(name)
        if group == "spa3r":
            raise ValueError(f"Spa3R must stay frozen, but {name} requires grad")
        if learning_rates.get(group) is None:
            raise ValueError(f"trainable parameter {name} is in group {group!r}, which has no learning rate")
        buckets.setdefault((group, name in decay), []).append(param)
    if not buckets:
        raise ValueError("the model has no trainable parameter")
    groups = []
    for group in PARAMETER_GROUPS:
        for decayed in (True, False):
            params = buckets.get((group, decayed))
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": float(learning_rates[group]),
                        "weight_decay": weight_decay if decayed else 0.0,
                        "name": group if decayed else f"{group}/no_decay",
                    }
                )
    return groups


def lora_config(
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: str = DEFAULT_LORA_TARGETS,
    adapter: bool = True,
):
    """PEFT LoRA on the LLM's projections; the spatial adapter fully trained and saved (``modules_to_save``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=list(ADAPTER_MODULES) if adapter else None,
        task_type="CAUSAL_LM",
    )

