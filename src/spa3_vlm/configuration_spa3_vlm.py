"""Configuration of Spa3-VLM: a Qwen VLM + the frozen Spa3R encoder + a gated cross-attention adapter.

``Spa3VLMConfig`` *is* a Qwen2.5-VL config (a subclass of ``Qwen2_5_VLConfig``: same ``text_config`` /
``vision_config`` / token ids) with three additions: ``spa3r_config``, the adapter settings and
``spatial_branch``; ``Spa3VLMQwen3Config`` adds the same to a Qwen3-VL config. Keeping the Qwen fields flat
means a plain Qwen ``config.json`` loads into them unchanged and a Qwen checkpoint's weights load by their own
names; only the Spa3R encoder and the adapter are new (see ``from_qwen``). The base is the config class:
``model_type`` ``"spa3_vlm"`` (Qwen2.5-VL) or ``"spa3_vlm_qwen3"`` (Qwen3-VL).
"""

from __future__ import annotations

import copy

from transformers import PreTrainedConfig, Qwen2_5_VLConfig, Qwen3VLConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_common import ValidatesKwargsMixin
from .configuration_spa3r import Spa3RConfig

# Spa3R fields that only pre-training uses (semantic teacher, losses, head outputs); cleared for the VLM.
_SPA3R_TRAINING_ONLY = (
    "semantic_teacher_config", "semantic_teacher_name_or_path", "loss_weights", "smooth_l1_beta", "head_activations",
)


def default_spa3r_encoder_config() -> dict:
    """The paper's Spa3R encoder path (768-d, 256 queries, 6 layers) on VGGT-1B with Spa3R's RMSNorm global
    q/k norms; no VGGT camera / depth / point heads, no decoder heads, no semantic teacher."""
    return {
        "vggt_config": {
            "global_qk_norm": "rmsnorm",
            "use_camera_head": False,
            "use_depth_head": False,
            "use_point_head": False,
        },
        "target_heads": {},
        "use_depth_probe": False,
        "semantic_teacher_config": None,
        "vggt_name_or_path": "facebook/VGGT-1B",
    }


def encoder_only_spa3r_config(config: Spa3RConfig | dict) -> Spa3RConfig:
    """A copy of a Spa3R config reduced to what the VLM runs: the VGGT aggregator (no camera / depth / point
    heads), the projection, the queries and the encoder. Decoder / head / teacher fields are cleared."""
    if isinstance(config, dict):
        config = Spa3RConfig(**config)
    if not isinstance(config, Spa3RConfig):
        raise ValueError(f"expected a Spa3RConfig or a dict, got {type(config).__name__}")
    values = copy.deepcopy(config.to_dict())
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "dtype"):
        values.pop(key, None)
    values["target_heads"] = {}
    values["use_depth_probe"] = False
    values["depth_probe_target"] = "backbone"
    for key in _SPA3R_TRAINING_ONLY:
        values[key] = None
    if values.get("vggt_config") is not None:
        vggt = dict(values["vggt_config"])
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "dtype"):
            vggt.pop(key, None)
        # The camera head stays only where the encoder itself reads cameras (encoder_camera_encoding="prope").
        keep_cameras = values.get("encoder_camera_encoding") == "prope"
        vggt.update(use_camera_head=keep_cameras, use_depth_head=False, use_point_head=False, use_track_head=False)
        values["vggt_config"] = vggt
    return Spa3RConfig(**values)


# What the adapter reads: Spa3R's latent field (the paper's), or the frozen backbone's patch tokens of every frame
# (the paper's "VGGT features" ablation).
SPATIAL_SOURCES = ("spa3r", "backbone")
# How the visual tokens meet it: the gated cross-attention adapter (the paper's), or the projected latents appended
# to the sequence as tokens (the paper's "latents as tokens" ablation).
SPATIAL_FUSIONS = ("cross_attention", "tokens")


class Spa3VLMConfigMixin(ValidatesKwargsMixin):
    """The Spa3-VLM additions to a base VLM config, shared by every base. Their fields are declared in each config
    class: declared here, plain fields still work but ``spa3r_config`` is not turned into a ``Spa3RConfig``
    (transformers builds sub-configs from the config class's own annotations)."""

    def __post_init__(self, **kwargs):
        if not isinstance(self.spatial_branch, bool):
            raise ValueError(f"spatial_branch must be True or False, got {self.spatial_branch!r}")
        if self.spatial_source not in SPATIAL_SOURCES:
            raise ValueError(f"spatial_source must be one of {SPATIAL_SOURCES}, got {self.spatial_source!r}")
        if self.spatial_fusion not in SPATIAL_FUSIONS:
            raise ValueError(f"spatial_fusion must be one of {SPATIAL_FUSIONS}, got {self.spatial_fusion!r}")
        if self.spatial_fusion == "tokens" and self.spatial_source != "spa3r":
            raise ValueError(
                "spatial_fusion='tokens' appends a fixed number of latent tokens (Spa3R's queries); it needs "
                f"spatial_source='spa3r', got {self.spatial_source!r}"
            )
        if self.spatial_fusion == "tokens" and not self.token_fusion_supported:
            raise ValueError(
                f"spatial_fusion='tokens' is implemented for Qwen2.5-VL only ({type(self).__name__}: Qwen3-VL's "
                "deepstack features would also need the latent tokens)"
            )
        if self.spatial_branch and self.spa3r_config is None:
            self.spa3r_config = default_spa3r_encoder_config()
        for name in ("adapter_reduction", "adapter_num_heads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.adapter_layer_norm_eps, (int, float)) or not self.adapter_layer_norm_eps > 0:
            raise ValueError(f"adapter_layer_norm_eps must be a positive float, got {self.adapter_layer_norm_eps!r}")
        super().__post_init__(**kwargs)
        hidden = self.text_config.hidden_size
        if self.adapter_num_heads is None:
            self.adapter_num_heads = self.text_config.num_attention_heads
        if hidden % self.adapter_num_heads:
            raise ValueError(
                f"adapter_num_heads={self.adapter_num_heads} must divide the LLM hidden size {hidden}"
            )
        if hidden % self.adapter_reduction:
            raise ValueError(f"adapter_reduction={self.adapter_reduction} must divide the LLM hidden size {hidden}")

    @property
    def latent_slot_size(self) -> int:
        """Tokens of the latent slot the processor must append after each sample's frames: Spa3R's ``num_queries``
        for ``spatial_fusion="tokens"``, else 0 (``Spa3VLMProcessor(spatial_slot_tokens=...)``)."""
        return self.spa3r_config.num_queries if self.spatial_branch and self.spatial_fusion == "tokens" else 0

    @property
    def adapter_hidden_size(self) -> int:
        """``D``: the LLM hidden size, in which visual tokens are adapted."""
        return self.text_config.hidden_size

    @classmethod
    def from_qwen(
        cls,
        qwen_config: PreTrainedConfig | dict,
        spa3r_config: Spa3RConfig | dict | None = None,
        encoder_only: bool = True,
        **adapter_kwargs,
    ):
        """Build from the base VLM's config (object or ``config.json`` dict) plus a Spa3R config.

        Args:
            qwen_config: a config of this class's base (``loads_model_types``: Qwen2.5-VL for ``Spa3VLMConfig``,
                Qwen3-VL for ``Spa3VLMQwen3Config``).
            encoder_only: reduce ``spa3r_config`` to the encoder path (``encoder_only_spa3r_config``), so a
                pre-training config (with decoder heads, teacher, VGGT heads) can be passed as is.
            adapter_kwargs: ``spatial_branch``, ``adapter_num_heads``, ``adapter_reduction``,
                ``adapter_layer_norm_eps``, ``spa3r_name_or_path``.
        """
        if isinstance(qwen_config, PreTrainedConfig):
            values = qwen_config.to_dict()
        elif isinstance(qwen_config, dict):
            values = copy.deepcopy(qwen_config)
        else:
            raise ValueError(f"qwen_config must be a {cls.loads_model_types[0]} config or a dict, got {type(qwen_config).__name__}")
        found = values.get("model_type")
        if found not in (None, cls.model_type, *cls.loads_model_types):
            raise ValueError(
                f"{cls.__name__} builds on a {cls.loads_model_types[0]!r} config, got a {found!r} one"
                + (" (use Spa3VLMQwen3Config for Qwen3-VL)" if found == "qwen3_vl" else "")
                + (" (use Spa3VLMConfig for Qwen2.5-VL)" if found == "qwen2_5_vl" else "")
            )
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            values.pop(key, None)
        if spa3r_config is not None and encoder_only:
            spa3r_config = encoder_only_spa3r_config(spa3r_config)
        if spa3r_config is not None:
            values["spa3r_config"] = spa3r_config
        values.update(adapter_kwargs)
        return cls(**values)


_ADDITIONS_DOC = r"""
    Args:
        spa3r_config: the frozen Spa3R encoder (a ``Spa3RConfig`` or its dict). Only the encoder path is built
            (VGGT aggregator -> projection -> queries + encoder -> latents ``[num_queries, hidden]``). ``None``
            with ``spatial_branch=True`` means the paper's encoder (``default_spa3r_encoder_config``). A config
            without ``vggt_config`` builds no backbone: the model then needs precomputed ``spatial_latents``.
        spatial_branch: ``False`` builds neither Spa3R nor the adapter: the model is exactly the base VLM (the
            ablation), and geometry inputs are accepted and ignored so the same data pipeline feeds both.
        adapter_num_heads: heads of the geometry cross-attention; ``None`` = the LLM's attention heads (as the
            reference: 16 for the Qwen2.5-VL 3B model, head_dim 128).
        adapter_reduction: bottleneck factor of the gated adaptor (``D -> D / r -> D``).
        adapter_layer_norm_eps: epsilon of the adapter's LayerNorms (per-head q/k norms and ``ln``);
            the reference uses torch's default 1e-5.
        spa3r_name_or_path: where the Spa3R encoder weights came from (hub id or folder); informational, used
            by ``from_qwen_pretrained``. Nothing is downloaded by the model.
        spatial_source: what the adapter's visual tokens attend to: ``"spa3r"`` (the latent field
            ``[num_queries, hidden]``, the paper's model) or ``"backbone"`` (the frozen VGGT's patch tokens of every
            frame, ``[V * N, backbone_hidden_size]``: the paper's "VGGT features" ablation; samples of one batch
            then need the same frame count and size).
        spatial_fusion: how the visual tokens meet it: ``"cross_attention"`` (the gated adapter, the paper's model) or
            ``"tokens"`` (the paper's "latents as tokens" ablation, Qwen2.5-VL only: ``geometry_projector`` maps the
            latents into the LLM's embedding space and they fill a slot of ``num_queries`` tokens that the processor
            appends after each sample's last image, ``Spa3VLMProcessor(spatial_slot_tokens=num_queries)``).
"""


class Spa3VLMConfig(Spa3VLMConfigMixin, Qwen2_5_VLConfig):
    model_type = "spa3_vlm"
    loads_model_types = ("qwen2_5_vl",)  # a plain Qwen2.5-VL config.json loads unchanged (module doc)
    sub_configs_defaults = {
        **Qwen2_5_VLConfig.sub_configs_defaults,
        "spa3r_config": SubConfigSpec(Spa3RConfig, optional=True),
    }

    spa3r_config: dict | PreTrainedConfig | None = None
    spatial_branch: bool = True
    adapter_num_heads: int | None = None
    adapter_reduction: int = 4
    adapter_layer_norm_eps: float = 1e-5
    spa3r_name_or_path: str | None = None
    spatial_source: str = "spa3r"
    spatial_fusion: str = "cross_attention"
    token_fusion_supported = True


class Spa3VLMQwen3Config(Spa3VLMConfigMixin, Qwen3VLConfig):
    model_type = "spa3_vlm_qwen3"
    loads_model_types = ("qwen3_vl",)  # a plain Qwen3-VL config.json loads unchanged
    sub_configs_defaults = {
        **Qwen3VLConfig.sub_configs_defaults,
        "spa3r_config": SubConfigSpec(Spa3RConfig, optional=True),
    }

    spa3r_config: dict | PreTrainedConfig | None = None
    spatial_branch: bool = True
    adapter_num_heads: int | None = None
    adapter_reduction: int = 4
    adapter_layer_norm_eps: float = 1e-5
    spa3r_name_or_path: str | None = None
    spatial_source: str = "spa3r"
    spatial_fusion: str = "cross_attention"
    token_fusion_supported = False


Spa3VLMConfig.__doc__ = (
    "Spa3-VLM on Qwen2.5-VL. All Qwen2.5-VL fields (``text_config``, ``vision_config``, ``image_token_id``, ...) keep "
    "their meaning; the additions are:\n" + _ADDITIONS_DOC
)
Spa3VLMQwen3Config.__doc__ = (
    "Spa3-VLM on Qwen3-VL (its deepstack visual features and video timestamps unchanged). All Qwen3-VL fields keep "
    "their meaning; the additions are:\n" + _ADDITIONS_DOC
)


__all__ = [
    "Spa3VLMConfig",
    "Spa3VLMConfigMixin",
    "Spa3VLMQwen3Config",
    "default_spa3r_encoder_config",
    "encoder_only_spa3r_config",
]
