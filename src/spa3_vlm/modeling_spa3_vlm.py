"""Spa3-VLM: a Qwen VLM (Qwen2.5-VL or Qwen3-VL) whose visual tokens read a frozen Spa3R latent spatial field
through a gated adapter.

For every sample ``b`` of a batch, with ``I_b [n_b, D]`` the merged Qwen visual tokens of *all images of that
sample* and ``L_b [Q, C]`` the Spa3R latents of that sample's frames:

    E_b  = geometry_projector(L_b)                                  [Q, D]
    A_b  = geom_cross_attention(query=I_b, key=value=E_b)           [n_b, D]   (per-head LayerNorm QK-norm)
    I'_b = I_b + geometry_adaptor(ln(A_b)) * geometry_gate(ln(A_b))

A sample's tokens only attend to its own latents (the reference flattens the batch, which mixes samples when
the per-device batch is > 1). The adaptor's last Linear starts at zero, also after ``from_pretrained`` fills
missing weights, so a model built on Qwen weights starts as exactly that Qwen model.

Hook: ``forward`` takes Qwen's image features (computed here from ``pixel_values``, or the
``mm_encoder_outputs["image"]`` that ``generate`` precomputes before prefill), adapts them per sample and hands
them to the base's own ``forward`` as ``mm_encoder_outputs``; Qwen's code scatters them into the
``<|image_pad|>`` positions, builds the mRoPE positions and runs the LLM. Decoding steps carry no image
features, so the adapter (and Spa3R) run on the prefill step only.

The paper's "latents as tokens" ablation (``spatial_fusion="tokens"``, Qwen2.5-VL): no cross-attention adapter;
``geometry_projector(L_b)`` *is* a block of ``Q`` LLM tokens, filling a slot image that the processor appends after
the sample's last frame (``Spa3VLMProcessor(spatial_slot_tokens=Q)``: Qwen's own code then places it and gives it
mRoPE positions like any image); the vision tower skips the slot's blank pixels.

Videos: the processor, like the reference pipeline, gives a video as a list of frames (images). The base's own
video input (``pixel_values_videos`` + ``video_grid_thw``, e.g. from Qwen3-VL's processor with its timestamps) is
adapted the same way, from the same sample's ``geometry_pixel_values`` (the video's frames) or cached latents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_spa3_vlm import Spa3VLMConfig, Spa3VLMQwen3Config
from .configuration_spa3r import Spa3RConfig
from .modeling_common import check_finite_tensor, eager_attention_forward
from .modeling_spa3r import Spa3RModel

# Qwen2.5-VL Hub checkpoint names -> transformers 5 module names (as transformers' own Qwen2.5-VL mapping).
QWEN_HUB_KEY_MAPPING = {r"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"}

class GeometryCrossAttention(nn.Module):
    """Multi-head cross-attention with per-head LayerNorm on queries and keys.

    ``queries [S, N, D]`` attend to ``context [S, M, D]`` -> ``[S, N, D]``; row ``s`` of the queries only sees
    row ``s`` of the context. No mask: every context token is valid, and padded query rows are independent
    of the others and dropped by the caller. The kernel is ``config._attn_implementation`` (the model's) through
    transformers' attention interface; without a config, SDPA.
    """

    def __init__(self, hidden_size: int, num_heads: int, eps: float = 1e-5, config: Optional[PreTrainedConfig] = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        # Exactly SDPA's default scale (1 / sqrt(d) in double), so passing it changes no bit of the output.
        self.scaling = 1.0 / math.sqrt(self.head_dim)
        # transformers' sdpa function treats a module without this flag as causal.
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, length, dim = queries.shape
        q = self.q_norm(self._split_heads(self.q_proj(queries)))
        k = self.k_norm(self._split_heads(self.k_proj(context)))
        v = self._split_heads(self.v_proj(context))
        implementation = "sdpa" if self.config is None else self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attended = attention(self, q, k, v, None, scaling=self.scaling, dropout=0.0)[0]  # [S, N, heads, head_dim]
        return self.o_proj(attended.reshape(batch, length, dim))


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if type(value).__module__ == "numpy":  # np.ndarray from a processor called with return_tensors="np"
        return torch.from_numpy(value)
    raise ValueError(f"{what} must be a torch.Tensor (or numpy array), got {type(value).__name__}")


def _sample_frames(entry: Any, index: int) -> Optional[torch.Tensor]:
    """One sample's geometry input -> ``[V, 3, H, W]`` (or ``None``); frames may come as a list of ``[3, H, W]``."""
    if entry is None:
        return None
    if isinstance(entry, (list, tuple)):
        if len(entry) == 0:
            raise ValueError(
                f"geometry_pixel_values[{index}] is an empty image list: give each sample with images at least one "
                "[3, H, W] frame, or None for a sample without images"
            )
        frames = [_as_tensor(frame, f"geometry_pixel_values[{index}][{i}]") for i, frame in enumerate(entry)]
        for i, frame in enumerate(frames):
            if frame.dim() != 3:
                raise ValueError(
                    f"geometry_pixel_values[{index}][{i}] must be a [3, H, W] frame, got shape {tuple(frame.shape)}"
                )
        sizes = sorted({tuple(frame.shape) for frame in frames})
        if len(sizes) > 1:
            raise ValueError(
                f"geometry_pixel_values[{index}] holds frames of different sizes {sizes}: all frames of one sample must "
                "share one [3, H, W] size (resize them with Spa3RImageProcessor / Spa3VLMProcessor)"
            )
        return torch.stack(frames)
    frames = _as_tensor(entry, f"geometry_pixel_values[{index}]")
    if frames.dim() != 4:
        raise ValueError(
            f"geometry_pixel_values[{index}] must be a [V, 3, H, W] tensor (V frames of one sample), got shape "
            f"{tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise ValueError(
            f"geometry_pixel_values[{index}] is an empty image list (shape {tuple(frames.shape)}): give each sample with "
            "images at least one frame, or None for a sample without images"
        )
    return frames


def split_geometry_inputs(geometry_pixel_values: Any, batch_size: int) -> list[Optional[torch.Tensor]]:
    """Normalise geometry inputs to one ``[V, 3, H, W]`` tensor (or ``None``) per sample.

    Accepts a list/tuple with one entry per sample (a ``[V, 3, H, W]`` tensor, a list of ``[3, H, W]`` frames,
    or ``None``) or a ``[B, V, 3, H, W]`` tensor.
    """
    if isinstance(geometry_pixel_values, (list, tuple)):
        entries = list(geometry_pixel_values)
    else:
        stacked = _as_tensor(geometry_pixel_values, "geometry_pixel_values")
        if stacked.dim() != 5:
            raise ValueError(
                "geometry_pixel_values must be a list with one [V, 3, H, W] tensor per sample or a [B, V, 3, H, W] "
                f"tensor, got a tensor of shape {tuple(stacked.shape)}"
            )
        entries = list(stacked.unbind(0))
    if len(entries) != batch_size:
        raise ValueError(
            f"geometry_pixel_values has {len(entries)} entries but the batch has {batch_size} samples: give one "
            "[V, 3, H, W] tensor per sample (None for a sample without images)"
        )
    return [_sample_frames(entry, index) for index, entry in enumerate(entries)]


def assign_images_to_samples(
    tokens_per_image: Sequence[int], tokens_per_sample: Sequence[int], kind: str = "image"
) -> list[int]:
    """Sample index of each image (or video), taken in order, given visual-token counts per item and per sample."""
    total_tokens, total_features = sum(tokens_per_sample), sum(tokens_per_image)
    pad = "<|image_pad|>" if kind == "image" else "<|video_pad|>"
    grid = "image_grid_thw" if kind == "image" else "video_grid_thw"
    if total_tokens != total_features:
        raise ValueError(
            f"the batch has {total_tokens} {kind} placeholder tokens in input_ids but its {len(tokens_per_image)} "
            f"{kind}(s) give {total_features} visual tokens ({list(tokens_per_image)} per {kind}, = t*h*w / "
            f"merge_size**2 of {grid}): pass as many {kind}s as the text has {kind} slots, each expanded to its number "
            f"of {pad} tokens (the processor does this), and do not truncate a sequence inside an {kind}"
        )
    owners, sample, filled = [], 0, 0
    for item, count in enumerate(tokens_per_image):
        while sample < len(tokens_per_sample) and filled == tokens_per_sample[sample]:
            sample, filled = sample + 1, 0
        if sample == len(tokens_per_sample) or filled + count > tokens_per_sample[sample]:
            raise ValueError(
                f"{kind} {item} ({count} visual tokens) does not fit in the {kind} slots of one sample ({kind} tokens "
                f"per sample: {list(tokens_per_sample)}, per {kind}: {list(tokens_per_image)}): each {kind}'s {pad} "
                f"run must lie within one sample, with the {kind}s in the order of the text"
            )
        owners.append(sample)
        filled += count
    return owners


def _with_pooler_output(outputs, features: Sequence[torch.Tensor]):
    """A copy of the vision tower's ``outputs`` with ``pooler_output`` (its per-image merged tokens) replaced."""
    copy = type(outputs)(**dict(outputs.items()))
    copy.pooler_output = tuple(features)
    return copy


class Spa3VLMMixin:
    """The Spa3R encoder and the gated geometry adapter on a Qwen VLM (see the module docstring); the model classes
    below put it on Qwen2.5-VL and Qwen3-VL.

    Extra forward inputs:
        geometry_pixel_values: one ``[V, 3, H, W]`` tensor in [0, 1] per sample (``None`` for a sample without
            images), as produced by ``Spa3VLMProcessor``; or a ``[B, V, 3, H, W]`` tensor.
        spatial_latents: ``[B, num_queries, C_spa3r]`` precomputed Spa3R latents (e.g. from a latent cache, see
            ``compute_spatial_latents``) instead of ``geometry_pixel_values``.
    """

    def __init__(self, config):
        super().__init__(config)
        self.spa3r = None
        if config.spatial_branch:
            hidden = config.adapter_hidden_size
            if config.vision_config.out_hidden_size != hidden:
                raise ValueError(
                    f"vision_config.out_hidden_size ({config.vision_config.out_hidden_size}) must equal the LLM hidden "
                    f"size ({hidden}): the adapter works on merged visual tokens in the LLM's embedding space"
                )
            eps = config.adapter_layer_norm_eps
            self.spa3r = Spa3RModel(config.spa3r_config)
            self.geometry_projector = nn.Sequential(
                nn.Linear(self.spatial_context_size, hidden), nn.GELU(), nn.Linear(hidden, hidden)
            )
            if config.spatial_fusion == "cross_attention":  # with "tokens", the projected latents are LLM tokens
                self.geom_cross_attention = GeometryCrossAttention(hidden, config.adapter_num_heads, eps=eps, config=config)
                self.ln = nn.LayerNorm(hidden, eps=eps)
                bottleneck = hidden // config.adapter_reduction
                self.geometry_adaptor = nn.Sequential(nn.Linear(hidden, bottleneck), nn.GELU(), nn.Linear(bottleneck, hidden))
                self.geometry_gate = nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid())
            # Qwen's __init__ already ran post_init; modules initialised there are flagged and skipped now.
            self.post_init()
            self._freeze_spa3r()

    def _freeze_spa3r(self) -> None:
        if self.spa3r is not None:
            self.spa3r.requires_grad_(False)
            self.spa3r.eval()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # transformers maps Qwen2.5-VL's Hub layout (`visual.*`, `model.layers.*`, also what Qwen2.5-VL saves) by
        # class name, which a subclass does not inherit; name the same renamings here.
        kwargs["key_mapping"] = {**QWEN_HUB_KEY_MAPPING, **(kwargs.get("key_mapping") or {})}
        loaded = super().from_pretrained(*args, **kwargs)
        # Loading materialises fresh parameters (requires_grad=True): freeze the encoder again.
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_spa3r()
        return loaded

    # ------------------------------------------------------------------------------------------ init / modes

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        adaptor = getattr(self, "geometry_adaptor", None)
        if adaptor is not None and module is adaptor[-1]:
            # Zero residual branch: the adapter starts as the identity on the visual tokens. Done here (not in
            # __init__) so that from_pretrained, which initialises missing weights through _init_weights after
            # loading a plain Qwen checkpoint, keeps it; transformers' init functions skip loaded tensors.
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.spa3r is not None:
            self.spa3r.eval()  # frozen: always in inference mode
        return self

    @classmethod
    def from_qwen_pretrained(
        cls,
        qwen_name_or_path: str,
        spa3r_config=None,
        spa3r_name_or_path: Optional[str] = None,
        adapter_kwargs: Optional[dict] = None,
        **kwargs,
    ):
        """A fresh Spa3-VLM on a checkpoint of its base VLM: Qwen weights loaded, adapter initialised (identity).

        Args:
            qwen_name_or_path: a folder or hub id of the base (Qwen2.5-VL for ``Spa3VLMForConditionalGeneration``,
                Qwen3-VL for ``Spa3VLMQwen3ForConditionalGeneration``): its ``config.json`` and weights.
            spa3r_config: the Spa3R encoder config (reduced to the encoder path); default: that of
                ``spa3r_name_or_path`` if given, else the paper's encoder.
            spa3r_name_or_path: a Spa3R folder / hub id (``Spa3RModel`` or ``Spa3RForFieldPrediction`` weights) whose
                encoder weights are loaded strictly into ``model.spa3r``. Without it the encoder stays random.
            adapter_kwargs: ``adapter_num_heads``, ``adapter_reduction``, ``adapter_layer_norm_eps``.
            kwargs: passed to ``from_pretrained`` (``dtype``, ``device_map``, ...).
        """
        if spa3r_config is None and spa3r_name_or_path is not None:
            spa3r_config = Spa3RConfig.from_pretrained(spa3r_name_or_path)
        qwen_config = AutoConfig.from_pretrained(qwen_name_or_path)
        config = cls.config_class.from_qwen(
            qwen_config, spa3r_config=spa3r_config, spa3r_name_or_path=spa3r_name_or_path, **(adapter_kwargs or {})
        )
        model = cls.from_pretrained(qwen_name_or_path, config=config, **kwargs)
        if spa3r_name_or_path is not None:
            encoder, info = Spa3RModel.from_pretrained(
                spa3r_name_or_path, config=config.spa3r_config, output_loading_info=True
            )
            if info["missing_keys"] or info["mismatched_keys"]:
                raise ValueError(
                    f"{spa3r_name_or_path} lacks Spa3R encoder weights: missing {sorted(info['missing_keys'])[:8]}, "
                    f"mismatched {list(info['mismatched_keys'])[:8]}"
                )
            model.load_spa3r_state_dict(encoder.state_dict())
        return model

    def load_spa3r_state_dict(self, state_dict: dict) -> None:
        """Load Spa3R encoder weights (``Spa3RModel`` names) into ``self.spa3r``: every tensor, right shapes."""
        if self.spa3r is None:
            raise ValueError("this model has spatial_branch=False: it has no Spa3R encoder to load weights into")
        expected = self.spa3r.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(expected[k].shape) != tuple(state_dict[k].shape))
        if missing or unexpected or wrong:
            raise ValueError(
                f"Spa3R encoder weights do not match spa3r_config: missing {missing[:8]}, unexpected {unexpected[:8]}, "
                f"wrong shape {wrong[:8]}"
            )
        self.spa3r.load_state_dict(state_dict, strict=True)

    # ------------------------------------------------------------------------------------------ geometry

    @property
    def spatial_context_size(self) -> int:
        """Channels of what the adapter reads: Spa3R's hidden size, or the backbone's for ``spatial_source="backbone"``."""
        spa3r = self.config.spa3r_config
        return spa3r.backbone_hidden_size if self.config.spatial_source == "backbone" else spa3r.hidden_size

    def _spa3r_dtype(self) -> torch.dtype:
        return self.spa3r.projection.weight.dtype

    @torch.no_grad()
    def compute_spatial_latents(self, geometry_pixel_values: Any) -> torch.Tensor:
        """Frozen Spa3R encoder on every sample: ``[B, num_queries, C_spa3r]`` (for a latent cache); with
        ``spatial_source="backbone"`` the backbone's patch tokens of every frame, ``[B, V * N, C_backbone]``.

        ``geometry_pixel_values``: list of ``[V, 3, H, W]`` in [0, 1] (no ``None``) or ``[B, V, 3, H, W]``.
        """
        if self.spa3r is None:
            raise ValueError("this model has spatial_branch=False: it has no Spa3R encoder")
        size = len(geometry_pixel_values)
        frames = split_geometry_inputs(geometry_pixel_values, size)
        missing = [i for i, f in enumerate(frames) if f is None]
        if missing:
            raise ValueError(f"geometry_pixel_values entries {missing} are None: every sample needs frames here")
        return self._encode_frames(frames)

    def _encode_frames(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """Frozen Spa3R on each ``[V, 3, H, W]`` (samples with equal shapes share one batch) -> ``[S, Q, C]``
        (``[S, V * N, C_backbone]`` for ``spatial_source="backbone"``)."""
        if self.spa3r.backbone is None:
            raise ValueError(
                "this model's Spa3R encoder has no VGGT backbone (spa3r_config.vggt_config is None): pass precomputed "
                "spatial_latents instead of geometry_pixel_values"
            )
        device, dtype = self.spa3r.projection.weight.device, self._spa3r_dtype()
        latents: list[Optional[torch.Tensor]] = [None] * len(frames)
        groups: dict[tuple, list[int]] = {}
        for index, sample in enumerate(frames):
            groups.setdefault(tuple(sample.shape), []).append(index)
        with torch.no_grad():
            for indices in groups.values():
                batch = torch.stack([frames[i] for i in indices]).to(device=device, dtype=dtype)
                if self.config.spatial_source == "backbone":  # the frozen VGGT alone: the encoder is not read
                    encoded = self.spa3r.backbone_tokens(batch).last_patch_tokens.flatten(1, 2)
                else:
                    encoded = self.spa3r(pixel_values=batch).latents
                for position, index in enumerate(indices):
                    latents[index] = encoded[position]
        if len({tuple(latent.shape) for latent in latents}) > 1:
            shapes = sorted({tuple(frame.shape) for frame in frames})
            raise ValueError(
                f"spatial_source='backbone' reads every frame's tokens, so the samples of one batch need the same frame "
                f"count and size; got frames {shapes}"
            )
        return torch.stack(latents)

    def _check_spatial_latents(self, spatial_latents: Any, batch_size: int) -> torch.Tensor:
        if self.config.spatial_source == "backbone":
            layout, length = "[B, V * N, C_backbone]", None  # any token count: it follows the frames
        else:
            layout, length = "[B, num_queries, C_spa3r]", self.config.spa3r_config.num_queries
        got = tuple(spatial_latents.shape) if isinstance(spatial_latents, torch.Tensor) else None
        if (
            got is None
            or len(got) != 3
            or got[0] != batch_size
            or got[2] != self.spatial_context_size
            or (length is not None and got[1] != length)
        ):
            expected = [batch_size, length or "V * N", self.spatial_context_size]
            raise ValueError(
                f"spatial_latents must be a {layout} = {expected} tensor (Spa3R latents per sample), "
                f"got {got or type(spatial_latents).__name__}"
            )
        check_finite_tensor("spatial_latents", spatial_latents, layout)
        return spatial_latents

    def adapt_visual_tokens(self, visual_tokens: list[torch.Tensor], latents: torch.Tensor) -> list[torch.Tensor]:
        """The adapter on each sample: ``visual_tokens[s] [n_s, D]`` read ``latents[s] [Q, C_spa3r]`` only.

        Returns the adapted tokens, same shapes. Samples are padded to one batch; padded rows are dropped.
        """
        if len(visual_tokens) != latents.shape[0]:
            raise ValueError(f"{len(visual_tokens)} samples of visual tokens but {latents.shape[0]} latent sets")
        dtype = next(self.geometry_projector.parameters()).dtype  # not [0]: PEFT's modules_to_save wrapper has no indexing
        lengths = [tokens.shape[0] for tokens in visual_tokens]
        queries = nn.utils.rnn.pad_sequence([tokens.to(dtype) for tokens in visual_tokens], batch_first=True)
        context = self.geometry_projector(latents.to(device=queries.device, dtype=dtype))
        normed = self.ln(self.geom_cross_attention(queries, context))
        adapted = queries + self.geometry_adaptor(normed) * self.geometry_gate(normed)
        return [adapted[s, :length].to(visual_tokens[s].dtype) for s, length in enumerate(lengths)]

    def _spatial_slots(self, tokens_per_image: Sequence[int], owners: Sequence[int]) -> dict[int, int]:
        """``spatial_fusion="tokens"``: sample -> index of its spatial slot, the last of its images, which must hold
        ``num_queries`` tokens (the processor appends it: ``Spa3VLMProcessor(spatial_slot_tokens=num_queries)``)."""
        slots = {owner: image for image, owner in enumerate(owners)}  # the last image of each sample wins
        expected = self.config.latent_slot_size
        wrong = {sample: tokens_per_image[image] for sample, image in slots.items() if tokens_per_image[image] != expected}
        if wrong:
            raise ValueError(
                f"spatial_fusion='tokens' fills each sample's last image with its {expected} latent tokens, but the "
                f"last image of sample(s) {sorted(wrong)} has {sorted(set(wrong.values()))} tokens: build the processor "
                f"with spatial_slot_tokens={expected} (it appends that slot after each sample's frames)"
            )
        return slots

    def _placeholder_counts(self, token_id: int, input_ids, inputs_embeds) -> list[int]:
        """Placeholder tokens ``token_id`` (image or video pad) per sample."""
        if input_ids is not None:
            mask = input_ids == token_id
        elif inputs_embeds is not None:
            # As Qwen does without input_ids: placeholders are the rows equal to the placeholder's embedding.
            embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == embedding).all(-1)
        else:
            raise ValueError("visual inputs need input_ids (or inputs_embeds) holding the placeholder tokens")
        return mask.sum(-1).tolist()

    def _latents_for_samples(self, samples: list[int], batch_size: int, geometry_pixel_values, spatial_latents):
        """Spa3R latents ``[len(samples), Q, C]`` of the given samples: cached, or encoded from their frames."""
        if geometry_pixel_values is not None and spatial_latents is not None:
            raise ValueError("pass either geometry_pixel_values or spatial_latents, not both")
        if spatial_latents is not None:
            return self._check_spatial_latents(spatial_latents, batch_size)[samples]
        if geometry_pixel_values is None:
            raise ValueError(
                "Spa3-VLM (spatial_branch=True) got images or videos but neither geometry_pixel_values nor "
                "spatial_latents: pass the processor's geometry_pixel_values (one [V, 3, H, W] tensor in [0, 1] per "
                "sample) or cached spatial_latents [B, num_queries, C]"
            )
        frames = split_geometry_inputs(geometry_pixel_values, batch_size)
        without = [b for b in samples if frames[b] is None]
        if without:
            raise ValueError(
                f"samples {without} have visual tokens but no geometry frames (geometry_pixel_values entry is None)"
            )
        return self._encode_frames([frames[b] for b in samples])

    def _adapt_encoder_outputs(
        self,
        encoder_outputs: dict,
        input_ids=None,
        inputs_embeds=None,
        geometry_pixel_values=None,
        spatial_latents=None,
    ) -> dict:
        """The base's ``mm_encoder_outputs`` (``{"image": ..., "video": ...}``, unadapted) with every visual token
        adapted by its own sample's latents; Spa3R runs once per sample that has images or videos. Anything else the
        encoder returns (Qwen3-VL's deepstack features) passes through unchanged."""
        placeholders = {"image": self.config.image_token_id, "video": self.config.video_token_id}
        present = [m for m in ("image", "video") if encoder_outputs.get(m) is not None]
        owners = {}
        for modality in present:
            features = encoder_outputs[modality].pooler_output
            counts = self._placeholder_counts(placeholders[modality], input_ids, inputs_embeds)
            owners[modality] = assign_images_to_samples([f.shape[0] for f in features], counts, modality)
            batch_size = len(counts)
        if not self.config.spatial_branch or not present:
            return encoder_outputs
        samples = sorted({owner for modality in present for owner in owners[modality]})
        latents = self._latents_for_samples(samples, batch_size, geometry_pixel_values, spatial_latents)
        adapted_outputs = dict(encoder_outputs)
        if self.config.spatial_fusion == "tokens":
            if "video" in present:
                raise ValueError("spatial_fusion='tokens' reads frames given as images (the processor's way), not videos")
            outputs, features = encoder_outputs["image"], list(encoder_outputs["image"].pooler_output)
            slots = self._spatial_slots([f.shape[0] for f in features], owners["image"])
            dtype = next(self.geometry_projector.parameters()).dtype
            projected = self.geometry_projector(latents.to(device=features[0].device, dtype=dtype))
            for sample, image in slots.items():
                features[image] = projected[samples.index(sample)].to(features[image].dtype)
            adapted_outputs["image"] = _with_pooler_output(outputs, features)
            return adapted_outputs
        for modality in present:
            outputs, features = encoder_outputs[modality], list(encoder_outputs[modality].pooler_output)
            # Cross-attention rows are independent, so a sample's image and video tokens may be adapted apart.
            mine = sorted(set(owners[modality]))
            per_sample = [torch.cat([f for f, owner in zip(features, owners[modality]) if owner == b]) for b in mine]
            adapted = torch.cat(self.adapt_visual_tokens(per_sample, latents[[samples.index(b) for b in mine]]))
            adapted_outputs[modality] = _with_pooler_output(outputs, torch.split(adapted, [f.shape[0] for f in features]))
        return adapted_outputs

    # ------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache=None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        pixel_values_videos: Optional[torch.Tensor] = None,
        image_grid_thw: Optional[torch.LongTensor] = None,
        video_grid_thw: Optional[torch.LongTensor] = None,
        mm_token_type_ids: Optional[torch.IntTensor] = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: Optional[dict] = None,
        geometry_pixel_values: Optional[Any] = None,
        spatial_latents: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        """The base VLM's forward with the visual tokens adapted per sample. Inputs only one base has
        (Qwen2.5-VL's ``use_cache`` and ``second_per_grid_ts``) pass through ``kwargs``; the named ones are those
        ``generate`` looks for in the signature."""
        # The text model's inputs that travel in kwargs are not the vision tower's.
        text_only = ("return_dict", "use_cache", "second_per_grid_ts")
        encoder_outputs = self.adapted_encoder_outputs(
            pixel_values, pixel_values_videos, image_grid_thw, video_grid_thw, mm_encoder_outputs,
            input_ids, inputs_embeds, geometry_pixel_values, spatial_latents,
            **{k: v for k, v in kwargs.items() if k not in text_only},
        )  # fmt: skip
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            pixel_values=None,
            pixel_values_videos=None,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            logits_to_keep=logits_to_keep,
            mm_encoder_outputs=encoder_outputs or None,
            **kwargs,
        )

    def adapted_encoder_outputs(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        pixel_values_videos: Optional[torch.Tensor] = None,
        image_grid_thw: Optional[torch.LongTensor] = None,
        video_grid_thw: Optional[torch.LongTensor] = None,
        mm_encoder_outputs: Optional[dict] = None,
        input_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        geometry_pixel_values: Optional[Any] = None,
        spatial_latents: Optional[torch.Tensor] = None,
        **vision_kwargs,
    ) -> dict:
        """The base's ``mm_encoder_outputs`` for the images and videos, adapted per sample.

        ``mm_encoder_outputs``, when given (``generate`` does), holds the base's *unadapted* encoder outputs; they
        are adapted like features computed here from ``pixel_values`` / ``pixel_values_videos``.
        """
        encoder_outputs = dict(mm_encoder_outputs or {})
        inputs = {"image": (pixel_values, image_grid_thw), "video": (pixel_values_videos, video_grid_thw)}
        for modality, (values, grid) in inputs.items():
            if values is None:
                continue
            name, grid_name = ("pixel_values", "image_grid_thw") if modality == "image" else ("pixel_values_videos", "video_grid_thw")
            if encoder_outputs.get(modality) is not None:
                raise ValueError(f"pass either {name} or mm_encoder_outputs[{modality!r}], not both")
            if grid is None:
                raise ValueError(f"{name} needs {grid_name} ([num_{modality}s, 3] = t, h, w patches per {modality})")
            # Qwen's vision tower turns a NaN patch into NaN logits for the whole sequence, without a word.
            check_finite_tensor(name, values, "(Qwen flattened patches, from the processor)")
            encoder = self.model.get_image_features if modality == "image" else self.model.get_video_features
            if modality == "image" and self.config.spatial_branch and self.config.spatial_fusion == "tokens":
                encoder_outputs[modality] = self._encode_images_around_slots(
                    encoder, values, grid, input_ids, inputs_embeds, **vision_kwargs
                )
                continue
            encoder_outputs[modality] = encoder(values, grid, return_dict=True, **vision_kwargs)
        return self._adapt_encoder_outputs(encoder_outputs, input_ids, inputs_embeds, geometry_pixel_values, spatial_latents)

    def _encode_images_around_slots(self, encoder, pixel_values, grid, input_ids, inputs_embeds, **vision_kwargs):
        """The vision tower on every image but the spatial slots (their pixels are blank and their tokens are
        replaced); a slot's features are zeros until ``_adapt_encoder_outputs`` fills them."""
        patches = grid.prod(-1)
        tokens = (patches // self.config.vision_config.spatial_merge_size**2).tolist()
        counts = self._placeholder_counts(self.config.image_token_id, input_ids, inputs_embeds)
        slots = set(self._spatial_slots(tokens, assign_images_to_samples(tokens, counts)).values())
        keep = torch.tensor([image not in slots for image in range(len(tokens))], device=grid.device)
        rows = torch.repeat_interleave(keep, patches).to(pixel_values.device)  # each patch row: its image kept?
        outputs = encoder(pixel_values[rows], grid[keep], return_dict=True, **vision_kwargs)
        encoded = iter(outputs.pooler_output)
        features = []
        for image, count in enumerate(tokens):
            if image in slots:
                features.append(outputs.pooler_output[0].new_zeros(count, outputs.pooler_output[0].shape[-1]))
            else:
                features.append(next(encoded))
        return _with_pooler_output(outputs, features)

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs):
        # Beam search / num_return_sequences repeat every batch tensor; a per-sample list needs the same.
        geometry = model_kwargs.get("geometry_pixel_values")
        if expand_size > 1 and isinstance(geometry, (list, tuple)):
            model_kwargs["geometry_pixel_values"] = [entry for entry in geometry for _ in range(expand_size)]
        return super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )


class Spa3VLMForConditionalGeneration(Spa3VLMMixin, Qwen2_5_VLForConditionalGeneration):
    """Spa3-VLM on Qwen2.5-VL: Qwen2.5-VL + frozen Spa3R encoder + gated geometry cross-attention adapter."""

    config_class = Spa3VLMConfig
    config: Spa3VLMConfig
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "Block"]


class Spa3VLMQwen3ForConditionalGeneration(Spa3VLMMixin, Qwen3VLForConditionalGeneration):
    """Spa3-VLM on Qwen3-VL. The adapter sits where it does on Qwen2.5-VL: on the merged visual tokens, after the
    vision merger and before they are scattered into the text; Qwen3-VL's deepstack features (added to the LLM's
    first layers at the visual positions) pass through unchanged."""

    config_class = Spa3VLMQwen3Config
    config: Spa3VLMQwen3Config
    _no_split_modules = ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock", "Block"]


# Spa3-VLM class by config model_type: its own, or its base VLM's (whose checkpoints it loads with a fresh adapter).
SPA3_VLM_CLASSES = {
    model_type: cls
    for cls in (Spa3VLMForConditionalGeneration, Spa3VLMQwen3ForConditionalGeneration)
    for model_type in (cls.config_class.model_type, *cls.config_class.loads_model_types)
}
# The model_types of Spa3-VLM configs, one per base.
SPA3_VLM_MODEL_TYPES = (Spa3VLMConfig.model_type, Spa3VLMQwen3Config.model_type)


__all__ = [
    "GeometryCrossAttention",
    "SPA3_VLM_CLASSES",
    "SPA3_VLM_MODEL_TYPES",
    "Spa3VLMForConditionalGeneration",
    "Spa3VLMMixin",
    "Spa3VLMQwen3ForConditionalGeneration",
    "assign_images_to_samples",
    "split_geometry_inputs",
]
