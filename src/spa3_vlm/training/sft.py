"""Spatial instruction tuning of Spa3-VLM on TRL's ``SFTTrainer``.

Pieces (used by ``train/sft_vlm.py`` and ``train/compare_spatial_branch.py``):

* :class:`Spa3VLMSFTCollator` — TRL-style records (``images`` + ``messages``) -> a training batch through
  ``Spa3VLMProcessor``'s chat template. Labels keep only the assistant answers (the template's
  ``{% generation %}`` blocks: answer, ``<|im_end|>``, newline — what the reference supervises). Truncation
  never cuts image tokens (the processor raises). Passes ``geometry_pixel_values``, or cached
  ``spatial_latents`` (:mod:`spa3_vlm.data.latent_cache`). Bad records raise ``ValueError`` naming the record.
* :func:`configure_trainable` / :func:`optimizer_param_groups` — the reference's trainable set (LLM + adapter;
  vision tower, merger and Spa3R frozen), each group with its own learning rate, no weight decay on biases and
  norms (the reference decays RMSNorm weights).
* :class:`Spa3VLMSFTTrainer` — ``SFTTrainer`` + those param groups (``create_optimizer``), the record columns the
  collator needs kept, our model card, and the spatial adapter on TRL's fused-LM-head path (see below).
* :func:`load_spa3_vlm` (random model from a config, a Qwen2.5-VL or Spa3-VLM checkpoint, plus a pretrained
  Spa3R), :func:`lora_config` (PEFT LoRA on the LLM, adapter in ``modules_to_save``), :func:`build_model_card`,
  :func:`generate_predictions` / :func:`evaluate_vsibench` (greedy answers scored by ``vsibench_scores``).

Why the trainer touches the forward: TRL 1.16 computes the SFT loss with a *fused LM head*: it replaces
``model.forward`` so that ``model(..., fused_lm_head=True)`` runs ``model.base_model`` (the inner
``Qwen2_5_VLModel``) directly and projects only the supervised positions. That skips
``Spa3VLMForConditionalGeneration.forward``, where Spa3R and the adapter act: training would silently ignore the
spatial branch (the adapter gets no gradient). :func:`route_fused_forward_through_adapter` wraps TRL's forward so
that a fused call first computes Qwen's image features, adapts them with the model's own adapter and hands them
to the backbone as ``mm_encoder_outputs`` — the same values the model's own forward would use.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from transformers import Trainer
from trl import SFTTrainer

from ..cards import VLM_FAMILIES, sft_model_card
from ..configuration_spa3_vlm import encoder_only_spa3r_config
from ..evaluation.scoring import vsibench_scores
from ..vsibench import QUESTION_TYPES, normalize_answer, validate_record

__all__ = [
    "ADAPTER_MODULES",
    "IGNORE_INDEX",
    "PARAMETER_GROUPS",
    "Spa3VLMSFTCollator",
    "Spa3VLMSFTTrainer",
    "build_model_card",
    "check_fused_lm_head_contract",
    "configure_trainable",
    "evaluate_vsibench",
    "generate_predictions",
    "load_spa3_vlm",
    "load_spa3r_encoder",
    "lora_config",
    "optimizer_param_groups",
    "parameter_group",
    "processor_for_image_size",
    "route_fused_forward_through_adapter",
    "spa3r_config_differences",
    "validate_sft_example",
]

IGNORE_INDEX = -100
# Top-level modules of Spa3VLMForConditionalGeneration that form the adapter (new, trained in SFT).
ADAPTER_MODULES = ("geometry_projector", "geom_cross_attention", "ln", "geometry_adaptor", "geometry_gate")
# Every parameter belongs to exactly one of these (see parameter_group).
PARAMETER_GROUPS = ("adapter", "llm", "merger", "vision", "spa3r")
TRAINABLE_GROUPS = PARAMETER_GROUPS[:4]  # Spa3R is always frozen
# The LLM's projections; the adapter's own q/k/v/o_proj (geom_cross_attention) do not match.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SPATIAL_INPUT_MODES = ("auto", "frames", "latents", "none")
_OPTION_LINE = re.compile(r"^\s*\(?[A-Z][.):]\s*\S.*$", re.MULTILINE)
_PROCESSOR_SAMPLE = re.compile(r"^Sample (\d+)")
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def _record_name(example: Any, index: int) -> str:
    record_id = example.get("id") if isinstance(example, Mapping) else None
    return f"record {record_id!r}" if record_id not in (None, "") else f"record #{index} of the batch"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(
            part.get("text") or "" for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def _image_slots(messages: Sequence[Mapping]) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), (list, tuple))
        for part in message["content"]
        if isinstance(part, Mapping) and part.get("type") == "image"
    )


def validate_sft_example(example: Any, index: int = 0) -> None:
    """Check one TRL record before tokenising it; ``ValueError`` naming the record (its ``id``) otherwise.

    Checked: ``messages`` is a list of ``{role, content}`` turns with at least one non-empty assistant turn;
    ``images`` holds exactly one frame per ``{"type": "image"}`` slot and none is missing (``None``); for a
    VSI-Bench ``question_type``, the last answer, read as the metric reads predictions (``normalize_answer``),
    parses for that type (a number, or one of the options' letters — from ``options`` or the "A. ..." lines of
    the question), via :func:`~spa3_vlm.data.synthrooms_qa.validate_record`.
    """
    where = _record_name(example, index)
    if not isinstance(example, Mapping):
        raise ValueError(f"{where}: expected a mapping with 'messages' and 'images', got {type(example).__name__}")
    messages = example.get("messages")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns, got {messages!r}")
    for number, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ValueError(f"{where}: turn {number} must be a mapping with a 'role', got {message!r}")
    roles = [message["role"] for message in messages]
    answers = [_text_of(message.get("content")) for message in messages if message["role"] == "assistant"]
    if not answers:
        raise ValueError(f"{where}: the conversation has no assistant turn to learn from (roles: {roles})")
    if not answers[-1].strip():
        raise ValueError(f"{where}: the last assistant turn is empty; nothing to learn from")

    slots = _image_slots(messages)
    images = example.get("images")
    if images is None and "image" in example:
        images = [example["image"]]
    images = [] if images is None else list(images)
    missing = [k for k, image in enumerate(images) if image is None]
    if missing:
        raise ValueError(f"{where}: frame(s) {missing} of {len(images)} are missing (None)")
    if len(images) != slots:
        raise ValueError(
            f"{where}: the messages have {slots} image slot(s) but {len(images)} frame(s) were given; every "
            "{'type': 'image'} entry needs its frame in 'images' (missing or extra frames)"
        )

    question_type = example.get("question_type")
    if question_type in QUESTION_TYPES:
        question = "\n".join(_text_of(m.get("content")) for m in messages if m["role"] == "user")
        options = example.get("options") or _OPTION_LINE.findall(question) or None
        record_id = example.get("id") if example.get("id") not in (None, "") else f"#{index}"
        view = {
            "id": record_id,
            "question_type": question_type,
            "question": question or "?",
            "options": options,
            "ground_truth": normalize_answer(answers[-1]),
        }
        try:
            validate_record(view)
        except ValueError as error:
            reason = str(error).removeprefix(f"record {record_id!r}: ")
            raise ValueError(
                f"{where}: answer {answers[-1]!r} does not parse for question_type {question_type!r}: {reason}"
            ) from None


def _with_images(messages: Sequence[Mapping], images: Sequence) -> list[dict]:
    """A copy of ``messages`` whose image slots carry the frames, in order (the processor's chat format)."""
    frames = iter(images)
    filled = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    parts.append({"type": "image", "image": next(frames)})
                elif part.get("type") == "text":
                    parts.append({"type": "text", "text": part.get("text") or ""})
                else:
                    parts.append(dict(part))
            content = parts
        filled.append({"role": message["role"], "content": content})
    return filled


# --------------------------------------------------------------------------------------------------
# Collator
# --------------------------------------------------------------------------------------------------


class Spa3VLMSFTCollator:
    """TRL records -> Spa3-VLM training batch with answer-only labels.

    Args:
        processor: a ``Spa3VLMProcessor`` (its chat template must mark assistant turns with ``{% generation %}``).
        max_length: truncate longer sequences (right side) to this many tokens; ``None`` = no truncation. Cutting
            through image tokens raises (the processor's check), as does cutting off a record's whole answer.
        pad_to_multiple_of: pad the sequence length to a multiple of this.
        spatial_inputs: ``"frames"`` passes ``geometry_pixel_values`` (one ``[V, 3, H, W]`` per sample, Spa3R runs
            in the step); ``"latents"`` stacks each record's cached ``spatial_latents`` ``[Q, C]`` into
            ``[B, Q, C]``; ``"none"`` passes neither (plain Qwen2.5-VL, ``spatial_branch=False``); ``"auto"``
            uses latents when the records carry them, else frames.

    Returns (per batch): ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``labels`` ``[B, L]``
    (``-100`` except the assistant answers), ``pixel_values`` ``[N_patches, 1176]``, ``image_grid_thw``
    ``[N_frames, 3]`` and ``geometry_pixel_values`` or ``spatial_latents``.
    """

    def __init__(
        self,
        processor,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        spatial_inputs: str = "auto",
        latents_column: str = "spatial_latents",
    ):
        if spatial_inputs not in SPATIAL_INPUT_MODES:
            raise ValueError(f"spatial_inputs must be one of {SPATIAL_INPUT_MODES}, got {spatial_inputs!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        template = getattr(processor, "chat_template", None) or ""
        if not _GENERATION_BLOCK.search(template):
            raise ValueError(
                "the processor's chat template has no {% generation %} block around assistant turns, so answers "
                "cannot be told apart from prompts; use Spa3VLMProcessor's default template"
            )
        self.processor = processor
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.spatial_inputs = spatial_inputs
        self.latents_column = latents_column

    def _mode(self, examples: Sequence[Mapping]) -> str:
        if self.spatial_inputs != "auto":
            return self.spatial_inputs
        has = [example.get(self.latents_column) is not None for example in examples]
        if all(has):
            return "latents"
        if any(has):
            without = [_record_name(e, i) for i, e in enumerate(examples) if e.get(self.latents_column) is None]
            raise ValueError(f"{', '.join(without)}: no cached {self.latents_column} while other records have them")
        return "frames"

    def _latents(self, examples: Sequence[Mapping]) -> torch.Tensor:
        stacked = []
        for index, example in enumerate(examples):
            value = example.get(self.latents_column)
            if value is None:
                raise ValueError(
                    f"{_record_name(example, index)}: no {self.latents_column} (spatial_inputs='latents' needs the "
                    "latent cache, see spa3_vlm.data.latent_cache.add_spatial_latents)"
                )
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float32))
            if tensor.dim() != 2:
                raise ValueError(
                    f"{_record_name(example, index)}: {self.latents_column} must be [num_queries, C], got shape "
                    f"{tuple(tensor.shape)}"
                )
            stacked.append(tensor)
        shapes = sorted({tuple(t.shape) for t in stacked})
        if len(shapes) > 1:
            raise ValueError(f"cached {self.latents_column} of one batch have different shapes {shapes}")
        return torch.stack(stacked)

    def __call__(self, examples: Sequence[Mapping]) -> dict[str, Any]:
        if not examples:
            raise ValueError("the collator got an empty batch")
        for index, example in enumerate(examples):
            validate_sft_example(example, index)
        mode = self._mode(examples)
        conversations = []
        for example in examples:
            images = example.get("images")
            if images is None and "image" in example:
                images = [example["image"]]
            conversations.append(_with_images(example["messages"], images or []))
        processor_kwargs = {
            "padding": True,
            "padding_side": "right",
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "truncation": self.max_length is not None,
            "max_length": self.max_length,
            "add_special_tokens": False,  # the template already writes every special token
        }
        try:
            batch = self.processor.apply_chat_template(
                conversations,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                return_assistant_tokens_mask=True,
                processor_kwargs=processor_kwargs,
            )
        except ValueError as error:
            match = _PROCESSOR_SAMPLE.match(str(error))
            if match and int(match.group(1)) < len(examples):
                name = _record_name(examples[int(match.group(1))], int(match.group(1)))
                raise ValueError(f"{name}: {error}") from error
            raise
        batch = dict(batch)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        labels[batch.pop("assistant_masks") == 0] = IGNORE_INDEX
        for index, count in enumerate((labels != IGNORE_INDEX).sum(-1).tolist()):
            if count == 0:
                raise ValueError(
                    f"{_record_name(examples[index], index)}: no answer token left to learn from after max_length="
                    f"{self.max_length} truncation ({int(batch['attention_mask'][index].sum())} tokens kept); raise "
                    "max_length or shorten the prompt"
                )
        batch["labels"] = labels
        geometry = batch.pop("geometry_pixel_values", None)
        if mode == "frames" and geometry is not None:
            batch["geometry_pixel_values"] = geometry
        elif mode == "latents":
            batch["spatial_latents"] = self._latents(examples)
        return batch


def processor_for_image_size(processor, height: int, width: int):
    """A copy of ``processor`` whose geometry branch keeps ``height x width`` frames at their size.

    Spa3R then sees the frames as it saw them in pre-training (SynthRooms renders at the size PSFM trains on),
    and the Qwen branch gets the same pixels, its pixel budget widened to hold them. ``height``/``width`` must
    be multiples of the patch size (14).
    """
    from ..processing_spa3_vlm import Spa3VLMProcessor
    from ..processing_spa3r import Spa3RImageProcessor

    geometry = processor.geometry_image_processor
    patch = geometry.patch_size
    if height % patch or width % patch or height <= 0 or width <= 0:
        raise ValueError(f"frame size {height}x{width} must be positive multiples of the patch size {patch}")
    settings = {k: v for k, v in geometry.to_dict().items() if k in ("patch_size", "resample", "resize_to_first")}
    new_geometry = Spa3RImageProcessor(target_width=width, max_height=height, **settings)
    size = dict(processor.image_processor.size)
    return Spa3VLMProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        geometry_image_processor=new_geometry,
        chat_template=processor.chat_template,
        num_video_frames=processor.num_video_frames,
        crop_to_merge_multiple=processor.crop_to_merge_multiple,
        min_pixels=min(size["shortest_edge"], height * width),
        max_pixels=max(size["longest_edge"], height * width),
    )


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


# --------------------------------------------------------------------------------------------------
# TRL's fused LM head and the adapter
# --------------------------------------------------------------------------------------------------


def _adapted_backbone_inputs(model, kwargs: dict) -> dict:
    """Inputs for ``model.base_model`` with the visual tokens already adapted (``mm_encoder_outputs``)."""
    geometry = kwargs.pop("geometry_pixel_values", None)
    latents = kwargs.pop("spatial_latents", None)
    if not getattr(model.config, "spatial_branch", False):
        return kwargs  # plain base VLM: nothing to adapt
    kwargs["mm_encoder_outputs"] = model.adapted_encoder_outputs(
        pixel_values=kwargs.pop("pixel_values", None),
        pixel_values_videos=kwargs.pop("pixel_values_videos", None),
        image_grid_thw=kwargs.get("image_grid_thw"),
        video_grid_thw=kwargs.get("video_grid_thw"),
        mm_encoder_outputs=kwargs.get("mm_encoder_outputs"),
        input_ids=kwargs.get("input_ids"),
        inputs_embeds=kwargs.get("inputs_embeds"),
        geometry_pixel_values=geometry,
        spatial_latents=latents,
    ) or None
    return kwargs


def check_fused_lm_head_contract(model) -> None:
    """Raise ``RuntimeError`` if the TRL / transformers internals that the adapter routing relies on have changed.

    The routing assumes that TRL replaced ``model.forward`` by a function taking ``fused_lm_head`` (TRL's
    ``add_fused_lm_head``), and that the Qwen backbone (``model.base_model``) takes precomputed visual features as
    ``mm_encoder_outputs``. If either changes, fused training would silently skip the adapter.
    """
    import transformers
    import trl

    patched = inspect.signature(model.forward, follow_wrapped=False).parameters
    if "fused_lm_head" not in patched:
        raise RuntimeError(
            f"TRL {trl.__version__} no longer patches model.forward with a `fused_lm_head` keyword "
            "(trl.trainer.utils.add_fused_lm_head), so the Spa3-VLM adapter cannot be routed into its fused loss: "
            "update route_fused_forward_through_adapter in spa3_vlm/training/sft.py, or train with "
            "Spa3VLMSFTTrainer(fused_lm_head=False) meanwhile."
        )
    if "mm_encoder_outputs" not in inspect.signature(model.base_model.forward).parameters:
        raise RuntimeError(
            f"transformers {transformers.__version__}: {type(model.base_model).__name__}.forward no longer takes "
            "`mm_encoder_outputs`, through which the adapted visual tokens reach TRL's fused loss: update "
            "route_fused_forward_through_adapter in spa3_vlm/training/sft.py, or train with "
            "Spa3VLMSFTTrainer(fused_lm_head=False) meanwhile."
        )


def route_fused_forward_through_adapter(model) -> None:
    """Make TRL's ``fused_lm_head=True`` forward of a Spa3-VLM use Spa3R and the adapter (module docstring).

    ``model`` is the Spa3-VLM that TRL patched (the PEFT base model under LoRA). Calls without
    ``fused_lm_head`` (generation, evaluation with logits) go to the original forward unchanged. Idempotent.
    Checks the internals it relies on first (:func:`check_fused_lm_head_contract`).
    """
    fused_forward = model.forward
    if getattr(fused_forward, "_routes_spatial_adapter", False):
        return
    check_fused_lm_head_contract(model)

    @functools.wraps(type(model).forward)  # keep the signature: generate() checks model kwargs against it
    def forward(self, *args, fused_lm_head: bool = False, **kwargs):
        if fused_lm_head:
            kwargs = _adapted_backbone_inputs(self, dict(kwargs))
        return fused_forward(*args, fused_lm_head=fused_lm_head, **kwargs)

    forward._routes_spatial_adapter = True
    model.forward = types.MethodType(forward, model)


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


def _unwrap_peft(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class Spa3VLMSFTTrainer(SFTTrainer):
    """``SFTTrainer`` for Spa3-VLM.

    Extra arguments:
        learning_rates: ``{group: lr}`` for the trainable groups (``adapter``, ``llm``, ``merger``, ``vision``); a
            group left out uses ``args.learning_rate``. Implemented as optimizer param groups in
            ``create_optimizer``, so every optimizer ``args.optim`` names and every LR scheduler work (the scheduler
            scales each group's own lr).
        model_card: keyword arguments for :func:`build_model_card`; ``create_model_card`` (also what
            ``push_to_hub`` calls) writes that card to ``output_dir/README.md``.
        fused_lm_head: ``True`` (TRL's default) computes the loss with TRL's chunked LM head; ``False`` uses the
            model's own forward and loss (full logits). Same loss; on CPU with a tiny model the chunked kernel's
            tiling costs more than the model, so the CPU experiments turn it off.

    Sets ``remove_unused_columns=False``: the collator validates records with ``id``, ``question_type`` and
    ``options`` and reads cached ``spatial_latents``, none of which is a model input. Routes TRL's fused-LM-head forward through
    the adapter (:func:`route_fused_forward_through_adapter`).
    """

    def __init__(
        self,
        *args,
        learning_rates: Optional[Mapping[str, float]] = None,
        model_card: Optional[dict] = None,
        fused_lm_head: bool = True,
        **kwargs,
    ):
        self.fused_lm_head = bool(fused_lm_head)
        self.group_learning_rates = dict(learning_rates or {})
        unknown = set(self.group_learning_rates) - set(TRAINABLE_GROUPS)
        if unknown:
            raise ValueError(f"learning_rates has unknown groups {sorted(unknown)}; expected some of {TRAINABLE_GROUPS}")
        self.model_card_kwargs = dict(model_card or {})
        with warnings.catch_warnings():
            # PEFT's get_peft_model reads transformers' deprecated `is_gradient_checkpointing`: nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            super().__init__(*args, **kwargs)
        # The collator validates records with columns that are no model inputs (`id`, `question_type`, `options`) and
        # reads cached `spatial_latents`; it takes what it needs, so the Trainer must not drop columns for it.
        self.args.remove_unused_columns = False
        if self.fused_lm_head:
            route_fused_forward_through_adapter(_unwrap_peft(self.model))
        model_type = getattr(getattr(_unwrap_peft(self.model), "config", None), "model_type", None)
        if model_type in VLM_FAMILIES:  # the card names the base family (Qwen2.5-VL or Qwen3-VL)
            self.model_card_kwargs.setdefault("vlm_family", VLM_FAMILIES[model_type])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.fused_lm_head:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        inputs = {**inputs, "use_cache": False}
        loss, outputs = Trainer.compute_loss(
            self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        with torch.no_grad():  # the accuracy TRL logs, from the full logits
            labels = inputs["labels"][:, 1:].to(outputs.logits.device)
            mask = labels != IGNORE_INDEX
            correct = ((outputs.logits[:, :-1].argmax(-1) == labels) & mask).sum()
            correct = self.accelerator.gather_for_metrics(correct).sum()
            total = self.accelerator.gather_for_metrics(mask.sum()).sum()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["mean_token_accuracy"].append((correct / total).item() if total > 0 else 0.0)
        return (loss, outputs) if return_outputs else loss

    def group_lrs(self) -> dict[str, float]:
        """Learning rate per trainable group (``args.learning_rate`` where none was given)."""
        return {group: self.group_learning_rates.get(group, self.args.learning_rate) for group in TRAINABLE_GROUPS}

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups = optimizer_param_groups(
            opt_model, self.group_lrs(), self.args.weight_decay, self.get_decay_parameter_names(opt_model)
        )
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        # The per-group lr wins over the default "lr"; optimizers that build their own groups are not supported.
        if "params" in optimizer_kwargs or "model" in optimizer_kwargs or "optimizer_dict" in optimizer_kwargs:
            raise ValueError(
                f"optim={self.args.optim!r} builds its own parameter groups; per-group learning rates need a standard "
                "optimizer (e.g. adamw_torch)"
            )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_model_card(
        self, model_name: Optional[str] = None, dataset_name: Optional[str] = None, tags=None, **kwargs
    ):
        if not self.is_world_process_zero():
            return
        card_kwargs = dict(self.model_card_kwargs)
        card_kwargs.setdefault("model_name", model_name or self.args.hub_model_id or "spa3-vlm-sft")
        if dataset_name is not None:
            card_kwargs.setdefault("datasets", [dataset_name])
        if tags:
            card_kwargs["tags"] = [*card_kwargs.get("tags", []), *([tags] if isinstance(tags, str) else tags)]
        if kwargs.get("license") is not None:  # push_to_hub(license=...) overrides the licence worked out
            card_kwargs["license"] = kwargs["license"]
        card_kwargs.setdefault("training", self.training_summary())
        os.makedirs(self.args.output_dir, exist_ok=True)
        build_model_card(**card_kwargs).save(os.path.join(self.args.output_dir, "README.md"))

    def training_summary(self) -> dict:
        """Hyperparameters for the model card."""
        args = self.args
        lrs = self.group_lrs()
        if self.optimizer is not None:  # only the groups that train
            trained = {group["name"].split("/")[0] for group in self.optimizer.param_groups if "name" in group}
            lrs = {group: lr for group, lr in lrs.items() if group in trained}
        return {
            "trainer": "TRL SFTTrainer (spa3_vlm Spa3VLMSFTTrainer)",
            "learning rates": ", ".join(f"{group} {lr:g}" for group, lr in lrs.items()),
            "per-device batch x accumulation": f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps}",
            "steps": self.state.global_step,
            "scheduler / warm-up steps": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} / "
            f"{args.warmup_steps}",
            "weight decay": args.weight_decay,
            "seed": args.seed,
        }


# --------------------------------------------------------------------------------------------------
# Evaluation: greedy answers scored like VSI-Bench
# --------------------------------------------------------------------------------------------------


def _prompt_messages(messages: Sequence[Mapping]) -> list[dict]:
    """The conversation up to (without) its last assistant turn."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [dict(m) for m in messages[:last]]


@torch.no_grad()
def generate_predictions(
    model,
    processor,
    records,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    spatial_inputs: str = "auto",
    latents_column: str = "spatial_latents",
    progress: bool = True,
) -> list[str]:
    """Greedy answers for TRL records (prompt = the messages before the last assistant turn), in order, through
    :class:`~spa3_vlm.inference.Spa3VLMGenerator`.

    ``spatial_inputs`` as in :class:`Spa3VLMSFTCollator` (``"latents"``: the records' cached Spa3R latents in
    ``latents_column``). Left padding, ``max_new_tokens`` new tokens, special tokens dropped, whitespace stripped.
    ``progress`` shows a bar over the batches.
    """
    from tqdm.auto import tqdm

    from ..inference import Spa3VLMGenerator

    if spatial_inputs not in SPATIAL_INPUT_MODES:
        raise ValueError(f"spatial_inputs must be one of {SPATIAL_INPUT_MODES}, got {spatial_inputs!r}")
    generator = Spa3VLMGenerator(model.eval(), processor, max_new_tokens=max_new_tokens)
    predictions: list[str] = []
    rows = list(records) if not hasattr(records, "select") else records
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="answering", unit="batch", disable=not progress or len(starts) < 2):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        for offset, example in enumerate(chunk):
            validate_sft_example(example, start + offset)
        requests = [(list(example.get("images") or []), _prompt_messages(example["messages"])) for example in chunk]
        mode = spatial_inputs
        if mode == "auto":
            mode = "latents" if all(e.get(latents_column) is not None for e in chunk) else "frames"
        latents = None
        if mode == "latents" and generator.takes_geometry:
            latents = torch.stack([torch.as_tensor(np.asarray(e[latents_column], dtype=np.float32)) for e in chunk])
        answers = generator.generate(requests, spatial_latents=latents)
        predictions += [text.strip() for text in answers]
    return predictions


def evaluate_vsibench(model, processor, dataset, **generate_kwargs) -> dict:
    """Greedy answers for a SynthRooms-QA / VSI-Bench-style dataset scored by ``vsibench_scores``.

    Returns the scores dict plus ``predictions`` (``{id: text}``).
    """
    predictions = generate_predictions(model, processor, dataset, **generate_kwargs)
    columns = ("id", "question_type", "ground_truth", "options")
    table = dataset.select_columns([c for c in columns if c in dataset.column_names]).to_list()
    records = [{**row, "prediction": prediction} for row, prediction in zip(table, predictions)]
    scores = vsibench_scores(records)
    scores["predictions"] = {row["id"]: row["prediction"] for row in records}
    return scores


# --------------------------------------------------------------------------------------------------
# Model card: built in spa3_vlm.cards, with every other card and the licence rule
# --------------------------------------------------------------------------------------------------

build_model_card = sft_model_card


