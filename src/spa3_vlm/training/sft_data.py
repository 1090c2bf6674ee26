"""SFT records and batches: checking TRL-style records and turning them into Spa3-VLM training batches.

* :func:`validate_sft_example` — one record (``images`` + ``messages``, optionally ``id``, ``question_type``,
  ``options``) checked before tokenising; ``ValueError`` naming the record otherwise.
* :class:`Spa3VLMSFTCollator` — records -> a training batch through ``Spa3VLMProcessor``'s chat template. Labels
  keep only the assistant answers (the template's ``{% generation %}`` blocks: answer, ``<|im_end|>``, newline —
  what the reference supervises). Truncation never cuts image tokens (the processor raises). Passes
  ``geometry_pixel_values``, or cached ``spatial_latents`` (:mod:`spa3_vlm.data.latent_cache`).
* :func:`processor_for_image_size` — a processor whose geometry branch keeps frames at their rendered size.

``SPATIAL_INPUT_MODES`` (how the spatial branch gets its input) is shared with
:func:`spa3_vlm.training.sft_eval.generate_predictions`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch

from ..vsibench import QUESTION_TYPES, normalize_answer, validate_record

__all__ = [
    "IGNORE_INDEX",
    "SPATIAL_INPUT_MODES",
    "Spa3VLMSFTCollator",
    "processor_for_image_size",
    "validate_sft_example",
]

IGNORE_INDEX = -100
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
    the question), via :func:`~spa3_vlm.vsibench.validate_record`.
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
        spatial_slot_tokens=processor.spatial_slot_tokens,
    )

