"""Configuration of the VGGT geometry backbone (aggregator, camera head, DPT heads, tracking head)."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .configuration_common import ValidatesKwargsMixin, field_problems, raise_problems

_QK_NORMS = ("layernorm", "rmsnorm")
_PATCH_EMBEDS = ("dinov2_vitl14_reg", "conv")


class VGGTConfig(ValidatesKwargsMixin, PreTrainedConfig):
    r"""
    VGGT ("Visual Geometry Grounded Transformer"). Defaults describe facebook/VGGT-1B.

    Args:
        image_size: training resolution; sets the DINOv2 position-embedding grid (``image_size // patch_size``).
        patch_size: pixels per patch side. Input height and width must be multiples of it.
        hidden_size: aggregator width ``C``; aggregated tokens have ``2C`` channels (frame ‖ global).
        num_hidden_layers: number of (frame block, global block) pairs.
        patch_embed_type: ``"dinov2_vitl14_reg"`` (a DINOv2 ViT with registers, as VGGT-1B) or ``"conv"``
            (one strided convolution, for tiny test models).
        patch_embed_num_layers / patch_embed_num_heads: size of the DINOv2 patch embedder.
        global_qk_norm: q/k normalisation of the *global* attention blocks: ``"layernorm"`` is VGGT-1B;
            ``"rmsnorm"`` (weight only) is the variant Spa3R was trained on (its reference rebuilds the global
            blocks and drops the q/k-norm biases when loading VGGT-1B).
        rope_theta: base frequency of the aggregator's 2D RoPE.
        layerscale_init: initial LayerScale value of the aggregator and camera-head blocks.
        use_camera_head / use_depth_head / use_point_head: which heads to build.
        camera_trunk_depth / camera_num_heads / camera_num_iterations: camera head size and refinement steps.
        dpt_features / dpt_out_channels / dpt_intermediate_layers: DPT (depth / point) head sizes and the
            aggregator layers they read. The tracking head's feature extractor reads the same layers with the same
            ``dpt_out_channels`` (the reference builds all three DPTs with these defaults).
        use_track_head: build VGGT's point-tracking head (``track_head.*``, 65.9 M parameters in VGGT-1B).
            facebook/VGGT-1B has it; Spa3R never runs it, so the default is off and existing Spa3R configs
            (whose ``vggt_config`` omits this key) keep building no tracking head.
        track_features: width of the tracking feature maps and of the tracker's latent track features
            (divisible by 4 for the sin/cos embeddings).
        track_stride: the tracking feature maps have ``1 / track_stride`` of the image resolution.
        track_num_iterations: refinement iterations of the tracker.
        track_corr_levels / track_corr_radius: correlation pyramid levels (each halves the resolution) and the
            sampling radius; every level contributes ``(2 * radius + 1) ** 2`` correlations.
        track_hidden_size / track_num_attention_heads / track_depth: the tracker's update transformer (``depth``
            time-attention blocks, each followed by a space-attention round through the virtual tracks).
        track_num_virtual_tracks: learned virtual tracks that carry information between the query points.
    """

    model_type = "spa3_vggt"

    image_size: int = 518
    patch_size: int = 14
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    patch_embed_type: str = "dinov2_vitl14_reg"
    patch_embed_num_layers: int = 24
    patch_embed_num_heads: int = 16
    global_qk_norm: str = "layernorm"
    rope_theta: float = 100.0
    layerscale_init: float = 0.01
    use_camera_head: bool = True
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_num_iterations: int = 4
    use_depth_head: bool = True
    use_point_head: bool = True
    dpt_features: int = 256
    dpt_out_channels: list[int] | None = None
    dpt_intermediate_layers: list[int] | None = None
    use_track_head: bool = False
    track_features: int = 128
    track_stride: int = 2
    track_num_iterations: int = 4
    track_corr_levels: int = 7
    track_corr_radius: int = 4
    track_hidden_size: int = 384
    track_num_attention_heads: int = 8
    track_depth: int = 6
    track_num_virtual_tracks: int = 64
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.dpt_out_channels is None:
            self.dpt_out_channels = [256, 512, 1024, 1024]
        if self.dpt_intermediate_layers is None:
            self.dpt_intermediate_layers = [4, 11, 17, 23]
        self._check_sizes()
        if self.global_qk_norm not in _QK_NORMS:
            raise ValueError(f"global_qk_norm must be one of {_QK_NORMS}, got {self.global_qk_norm!r}")
        if self.patch_embed_type not in _PATCH_EMBEDS:
            raise ValueError(f"patch_embed_type must be one of {_PATCH_EMBEDS}, got {self.patch_embed_type!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_attention_heads {self.num_attention_heads}"
            )
        self._check_track_sizes()
        uses_dpt = self.use_depth_head or self.use_point_head or self.use_track_head
        if uses_dpt and max(self.dpt_intermediate_layers) >= self.num_hidden_layers:
            raise ValueError(
                f"dpt_intermediate_layers {self.dpt_intermediate_layers} must index the {self.num_hidden_layers} "
                "aggregator layers"
            )
        super().__post_init__(**kwargs)

    def _check_sizes(self) -> None:
        problems = field_problems(
            self,
            ints_at_least={
                "image_size": 1, "patch_size": 1, "hidden_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1,
                "num_register_tokens": 0, "patch_embed_num_layers": 1, "patch_embed_num_heads": 1,
                "camera_trunk_depth": 1, "camera_num_heads": 1, "camera_num_iterations": 1, "dpt_features": 1,
            },
            positive_numbers=("mlp_ratio", "rope_theta", "initializer_range"),
            finite_numbers=("layerscale_init",),
            bools=(
                "qkv_bias", "proj_bias", "ffn_bias", "use_camera_head", "use_depth_head", "use_point_head",
                "use_track_head",
            ),
        )  # fmt: skip
        if not problems and self.image_size < self.patch_size:
            problems.append(f"image_size ({self.image_size}) must be at least patch_size ({self.patch_size})")
        if not problems and self.patch_embed_type == "dinov2_vitl14_reg" and self.image_size % self.patch_size:
            problems.append(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size}): it sets the "
                "DINOv2 position-embedding grid"
            )
        for name, length, low in (("dpt_out_channels", 4, 1), ("dpt_intermediate_layers", 4, 0)):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != length or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value
            ):
                problems.append(f"{name} must be {length} ints >= {low}, got {value!r}")
        raise_problems("VGGTConfig", problems)

    def _check_track_sizes(self) -> None:
        minimum = {"track_corr_radius": 0}
        for name in (
            "track_features", "track_stride", "track_num_iterations", "track_corr_levels", "track_corr_radius",
            "track_hidden_size", "track_num_attention_heads", "track_depth", "track_num_virtual_tracks",
        ):  # fmt: skip
            value = getattr(self, name)
            low = minimum.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.track_features % 4:
            raise ValueError(
                f"track_features must be divisible by 4 (sin/cos embeddings of x and y), got {self.track_features}"
            )
        if self.track_hidden_size % self.track_num_attention_heads:
            raise ValueError(
                f"track_hidden_size {self.track_hidden_size} must be divisible by track_num_attention_heads "
                f"{self.track_num_attention_heads}"
            )

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token in each frame: 1 camera token + the register tokens."""
        return 1 + self.num_register_tokens

    @property
    def output_hidden_size(self) -> int:
        """Channels of an aggregated token (frame-block output ‖ global-block output)."""
        return 2 * self.hidden_size


__all__ = ["VGGTConfig"]
