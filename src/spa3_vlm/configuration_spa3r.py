"""Configuration of Spa3R: latent spatial-field encoder, camera-conditioned decoder and field heads."""

from __future__ import annotations

from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_common import ValidatesKwargsMixin, field_problems, raise_problems
from .configuration_vggt import VGGTConfig

MASKING_MODES = ("two_pass", "masked_pass")
ENCODER_CAMERA_ENCODINGS = ("none", "prope")
RAY_ENCODINGS = ("camera", "plucker")
DECODER_CAMERA_ATTENTIONS = ("prope", "none")
HEAD_ACTIVATIONS = ("identity", "exp", "sigmoid")
POSE_SOURCES = ("backbone", "dataset")


class Spa3RConfig(ValidatesKwargsMixin, PreTrainedConfig):
    r"""
    Spa3R (Predictive Spatial Field Modeling). Defaults are the paper's model.

    Args:
        hidden_size / num_attention_heads: width and heads of the encoder and decoder Transformers.
        num_queries: learnable query tokens; the latent field is ``[num_queries, hidden_size]``.
        num_encoder_layers / num_decoder_layers: depth of each Transformer.
        num_register_tokens: register tokens prepended inside each Transformer.
        mlp_ratio: MLP hidden size / width, for the Transformers and the heads.
        qk_norm: per-head RMSNorm on queries and keys.
        rope_theta: base frequency of the encoder's 2D RoPE (the decoder uses PRoPE instead).
        prope_freq_base: base frequency of the RoPE part of PRoPE.
        layer_norm_eps: epsilon of the Transformers' LayerNorms.
        patch_size: backbone patch size (image sizes must be multiples of it).
        backbone_hidden_size: channels of the backbone tokens that are encoded (and predicted by ``geo``).
        target_heads: name -> output channels of the field heads. ``geo`` is supervised with the backbone's
            last-layer patch tokens, ``sem`` with the semantic teacher's patch features; any other name with
            ``field_targets[name]`` given to the forward pass (e.g. per-patch RGB / depth of a renderer).
        context_inputs: optional name -> channels of per-patch fields of the *context* views that the encoder reads
            next to the backbone tokens (an extension, off in the paper's model). SynthRooms configs use the
            renderer's ``metric_depth`` and ``rgb``: a randomly initialised tiny VGGT gives tokens that carry
            neither, while the field evaluation's baselines copy exactly these context fields, so model and
            baselines then see the same context. Each input has a bias-free linear projection added to the
            projected backbone tokens; an input not passed adds nothing (the Spa3-VLM encoder runs without them).
        context_input_dropout: training-time probability, per sample, of withholding all ``context_inputs`` so that
            the encoder also works from backbone tokens alone.
        head_activations: optional head name -> output activation, ``"identity"`` (default, the paper's),
            ``"exp"`` (positive values such as metric depth, predicted in log space) or ``"sigmoid"`` (values in
            [0, 1] such as colours).
        loss_weights: optional loss name -> weight (``"<head>_l1"``, ``"<head>_cos"``, ``"depth_probe"``); unnamed
            losses weigh 1, as in the paper.
        smooth_l1_beta: optional head name (or ``"depth_probe"``) -> beta of its smooth-L1 loss (default 1, the
            paper's; 0 is plain L1).
            Renderer targets with small errors (colours in [0, 1]) learn faster with a small beta: past the
            quadratic zone, their gradient no longer shrinks with the error.
        use_depth_probe: a depth probe on detached decoder features: a read-out of the field that never shapes it.
        depth_probe_target: what the probe learns: ``"backbone"`` (the backbone's predicted depth, the paper's) or the
            name of a per-patch ``field_targets`` entry passed to the forward pass (e.g. a renderer's
            ``"metric_depth"``, to measure how much true depth the field holds).
        mask_ratio: fraction of views held out as target-only views during pre-training (view 0 is always context).
        masking_mode: ``"two_pass"`` (backbone over the context views, then over all views; the paper's
            setting) or ``"masked_pass"`` (one backbone pass with the asymmetric view mask).
        pose_source: ``"backbone"`` (cameras from the VGGT camera head) or ``"dataset"`` (cameras passed in).
        encoder_camera_encoding: ``"none"`` (the paper: the encoder learns view geometry from the backbone's
            features alone) or ``"prope"`` (an extension: context tokens carry their cameras through PRoPE, as the
            decoder's ray tokens do, instead of 2D RoPE; for backbones whose features are not pose-aware, such as
            a randomly initialised VGGT).
        ray_encoding: what the decoder's ray tokens encode: ``"camera"`` (the paper: camera-frame ray directions;
            the pose reaches attention through PRoPE) or ``"plucker"`` (an extension: world-frame Plücker
            coordinates, so every ray token also says where in the scene its ray runs; with
            ``encoder_camera_encoding="prope"`` the context tokens get the Plücker code of their rays too).
        decoder_camera_attention: how the target camera reaches the decoder's attention: ``"prope"`` (the paper:
            projective RoPE on queries, keys, values and outputs) or ``"none"`` (plain attention; with
            ``ray_encoding="plucker"`` this is the paper's "Plücker rays instead of PRoPE" ablation).
        vggt_config: the geometry backbone; ``None`` builds no backbone (features are then passed in).
        semantic_teacher_config: a transformers vision-backbone config (e.g. DINOv3 ViT) for the ``sem``
            targets, or ``None``. The teacher is frozen and only used by ``Spa3RForFieldPrediction``.
        semantic_image_size: square input size of the semantic teacher.
        vggt_name_or_path / semantic_teacher_name_or_path: where training scripts load the frozen teachers'
            pretrained weights from (hub id or folder); the model itself never downloads anything.
    """

    model_type = "spa3r"
    sub_configs_defaults = {"vggt_config": SubConfigSpec(VGGTConfig, optional=True)}

    hidden_size: int = 768
    num_attention_heads: int = 12
    num_queries: int = 256
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_register_tokens: int = 4
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    rope_theta: float = 100.0
    prope_freq_base: float = 100.0
    layer_norm_eps: float = 1e-6
    patch_size: int = 14
    backbone_hidden_size: int = 2048
    target_heads: dict[str, int] | None = None
    context_inputs: dict[str, int] | None = None
    context_input_dropout: float = 0.0
    head_activations: dict[str, str] | None = None
    loss_weights: dict[str, float] | None = None
    smooth_l1_beta: dict[str, float] | None = None
    use_depth_probe: bool = True
    depth_probe_target: str = "backbone"
    mask_ratio: float = 0.5
    masking_mode: str = "two_pass"
    pose_source: str = "backbone"
    encoder_camera_encoding: str = "none"
    ray_encoding: str = "camera"
    decoder_camera_attention: str = "prope"
    initializer_range: float = 0.02
    vggt_config: dict | PreTrainedConfig | None = None
    semantic_teacher_config: dict | None = None
    semantic_image_size: int = 224
    vggt_name_or_path: str | None = None
    semantic_teacher_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        if self.target_heads is None:
            self.target_heads = {"geo": 2048, "sem": 1024}
        problems = field_problems(
            self,
            ints_at_least={
                "hidden_size": 1, "num_attention_heads": 1, "num_queries": 1, "num_encoder_layers": 1,
                "num_decoder_layers": 1, "num_register_tokens": 0, "patch_size": 1, "backbone_hidden_size": 1,
                "semantic_image_size": 1,
            },
            positive_numbers=("mlp_ratio", "rope_theta", "prope_freq_base", "layer_norm_eps", "initializer_range"),
            finite_numbers=("mask_ratio", "context_input_dropout"),
            bools=("qk_norm", "use_depth_probe"),
        )  # fmt: skip
        for name in ("vggt_name_or_path", "semantic_teacher_name_or_path"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                problems.append(f"{name} must be a Hub id or folder (a non-empty str) or None, got {value!r}")
        if self.semantic_teacher_config is not None and not isinstance(self.semantic_teacher_config, dict):
            problems.append(
                f"semantic_teacher_config must be a transformers config dict (with model_type) or None, got "
                f"{type(self.semantic_teacher_config).__name__}"
            )
        if not isinstance(self.target_heads, dict):
            problems.append(f"target_heads must map head names to channel counts, got {self.target_heads!r}")
        else:
            problems += [
                f"target_heads[{name!r}] must be an int >= 1, got {channels!r}"
                for name, channels in self.target_heads.items()
                if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1
            ]
        raise_problems("Spa3RConfig", problems)
        for name, value in {**(self.loss_weights or {}), **(self.smooth_l1_beta or {})}.items():
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"loss_weights and smooth_l1_beta need non-negative numbers, got {name!r}: {value!r}")
        for name, channels in (self.context_inputs or {}).items():
            if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
                raise ValueError(f"context_inputs maps names to channel counts >= 1, got {name!r}: {channels!r}")
        if not 0.0 <= self.context_input_dropout < 1.0:
            raise ValueError(f"context_input_dropout must be in [0, 1), got {self.context_input_dropout}")
        loss_names = {f"{head}_{kind}" for head in self.target_heads for kind in ("l1", "cos")} | {"depth_probe"}
        unknown = sorted(set(self.loss_weights or {}) - loss_names)
        if unknown:
            raise ValueError(f"loss_weights names unknown loss(es) {unknown}; losses: {sorted(loss_names)}")
        unknown = sorted(set(self.head_activations or {}) - set(self.target_heads))
        if unknown:
            raise ValueError(f"head_activations names unknown head(s) {unknown}; heads: {sorted(self.target_heads)}")
        for name, activation in (self.head_activations or {}).items():
            if activation not in HEAD_ACTIVATIONS:
                raise ValueError(f"head_activations[{name!r}] must be one of {HEAD_ACTIVATIONS}, got {activation!r}")
        unknown = sorted(set(self.smooth_l1_beta or {}) - set(self.target_heads) - {"depth_probe"})
        if unknown:
            raise ValueError(
                f"smooth_l1_beta names unknown head(s) {unknown}; heads: {sorted(self.target_heads)} and 'depth_probe'"
            )
        if not isinstance(self.depth_probe_target, str) or not self.depth_probe_target:
            raise ValueError(f"depth_probe_target must be 'backbone' or a field target name, got {self.depth_probe_target!r}")
        if self.depth_probe_target in self.target_heads:
            raise ValueError(
                f"depth_probe_target {self.depth_probe_target!r} is also a head: a probe reads the field, a head shapes it"
            )
        if self.masking_mode not in MASKING_MODES:
            raise ValueError(f"masking_mode must be one of {MASKING_MODES}, got {self.masking_mode!r}")
        if self.pose_source not in POSE_SOURCES:
            raise ValueError(f"pose_source must be one of {POSE_SOURCES}, got {self.pose_source!r}")
        if self.encoder_camera_encoding not in ENCODER_CAMERA_ENCODINGS:
            raise ValueError(
                f"encoder_camera_encoding must be one of {ENCODER_CAMERA_ENCODINGS}, got {self.encoder_camera_encoding!r}"
            )
        if self.ray_encoding not in RAY_ENCODINGS:
            raise ValueError(f"ray_encoding must be one of {RAY_ENCODINGS}, got {self.ray_encoding!r}")
        if self.decoder_camera_attention not in DECODER_CAMERA_ATTENTIONS:
            raise ValueError(
                f"decoder_camera_attention must be one of {DECODER_CAMERA_ATTENTIONS}, got {self.decoder_camera_attention!r}"
            )
        if self.decoder_camera_attention == "none" and self.ray_encoding != "plucker":
            raise ValueError(
                "decoder_camera_attention='none' leaves the decoder only its ray tokens to know the target camera: "
                "use ray_encoding='plucker' (world-frame rays), camera-frame rays carry no pose"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 8:
            raise ValueError(
                f"hidden_size / num_attention_heads must be an integer divisible by 8 (PRoPE), got "
                f"{self.hidden_size} / {self.num_attention_heads}"
            )
        super().__post_init__(**kwargs)
        if self.vggt_config is not None:
            if self.vggt_config.output_hidden_size != self.backbone_hidden_size:
                raise ValueError(
                    f"backbone_hidden_size {self.backbone_hidden_size} does not match the VGGT config's token size "
                    f"2 * {self.vggt_config.hidden_size}"
                )
            if self.vggt_config.patch_size != self.patch_size:
                raise ValueError(f"patch_size {self.patch_size} differs from the VGGT config's {self.vggt_config.patch_size}")
        if "geo" in self.target_heads and self.target_heads["geo"] != self.backbone_hidden_size:
            raise ValueError(
                f"the 'geo' head predicts backbone tokens of size {self.backbone_hidden_size}, got {self.target_heads['geo']}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ray_code_size(self) -> int:
        """Channels of one ray's code: 6 (Plücker) or 3 (camera-frame direction)."""
        return 6 if self.ray_encoding == "plucker" else 3


__all__ = ["Spa3RConfig"]
