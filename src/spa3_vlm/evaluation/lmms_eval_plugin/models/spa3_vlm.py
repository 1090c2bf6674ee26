"""lmms-eval model ``spa3_vlm``: a Spa3-VLM (or Qwen2.5-VL) checkpoint answering through the runner's core.

    lmms-eval --model spa3_vlm --model_args pretrained=spa3-vlm-3b,min_pixels=200704,max_pixels=1605632 \
        --tasks vsibench --batch_size 1

Every request is answered by :class:`~spa3_vlm.inference.Spa3VLMGenerator` (same chat, frame sampling,
preprocessing and greedy decoding as ``spa3-vlm eval``), so both give the same text for a question.
Differences from the reference wrapper (spec section 13, items 20 and 27): no module global of lmms-eval is
swapped (the class is registered through lmms-eval's plugin hooks), the task's ``until`` strings are applied
(except ``"\n\n"``, lmms-eval's implicit default, which the reference and lmms-eval's Qwen2.5-VL wrapper ignore),
``system_prompt`` is honoured, sampling requests are refused instead of silently decoded greedily, and
multi-image docs take the images as they are (the reference called an undefined method there).

``model_args``: ``pretrained`` (folder / hub id), ``processor`` (default: ``pretrained``), ``device``
(default: auto), ``dtype`` (auto = bfloat16 on GPU), ``max_num_frames`` (32), ``max_new_tokens`` (default when
the task gives none: 16), ``min_pixels`` / ``max_pixels`` (default: the processor's), ``attn_implementation``,
``system_prompt``, ``generation_config`` (a folder whose generation_config.json replaces the model's). Under
``accelerate launch`` each process uses its own GPU; lmms-eval splits the requests.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model

from ....inference import DEFAULT_MAX_NEW_TOKENS, Spa3VLMGenerator
from ...samples import DEFAULT_NUM_FRAMES, frames_from_visuals
from .. import CLASS_NAME, MODEL_NAME

__all__ = ["Spa3VLM"]

_NONE_STRINGS = ("", "none", "null")


def _optional_int(value: Any, name: str) -> Optional[int]:
    """A model_arg that lmms-eval may hand over as an int, a numeric string, a float or "None"."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS):
        return None
    if isinstance(value, bool):
        raise ValueError(f"model_args {name} must be an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"model_args {name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"model_args {name} must be an integer, got {value!r}")
    return int(number)


def _positive_int(value: Any, name: str) -> int:
    number = _optional_int(value, name)
    if number is None or number < 1:
        raise ValueError(f"model_args {name} must be a positive integer, got {value!r}")
    return number


@register_model(MODEL_NAME)
class Spa3VLM(lmms):
    """lmms-eval wrapper of a Spa3-VLM / Qwen2.5-VL checkpoint; generation only (no log-likelihoods)."""

    is_simple = True  # takes (context, gen_kwargs, doc_to_visual, doc_id, task, split) requests

    def __init__(
        self,
        pretrained: str,
        processor: Optional[str] = None,
        device: Optional[str] = None,
        dtype: str = "auto",
        batch_size: Any = 1,
        max_num_frames: Any = DEFAULT_NUM_FRAMES,
        max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
        min_pixels: Any = None,
        max_pixels: Any = None,
        attn_implementation: Optional[str] = None,
        system_prompt: Optional[str] = None,  # None: the chat template's (the base model's) default
        generation_config: Optional[str] = None,
        max_batch_size: Any = None,  # passed by lmms-eval's CLI; batches here have a fixed size
        **unexpected,
    ) -> None:
        super().__init__()
        if unexpected:
            raise ValueError(
                f"unknown model_args {sorted(unexpected)} for {MODEL_NAME}; expected pretrained, processor, device, "
                "dtype, batch_size, max_num_frames, max_new_tokens, min_pixels, max_pixels, attn_implementation, "
                "system_prompt, generation_config"
            )
        if str(batch_size).startswith("auto"):
            raise ValueError(f"{MODEL_NAME} needs a fixed batch size, got batch_size={batch_size!r}")
        self._batch_size = _positive_int(batch_size, "batch_size")
        self.max_num_frames = _positive_int(max_num_frames, "max_num_frames")
        if isinstance(system_prompt, str) and system_prompt.strip().lower() in _NONE_STRINGS:
            system_prompt = None
        # Newer lmms-eval bases also accept a file path as system prompt; older ones have no such helper.
        resolve_system_prompt = getattr(self, "_resolve_system_prompt", None)
        if system_prompt is not None and resolve_system_prompt is not None:
            system_prompt = resolve_system_prompt(system_prompt)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            device = str(self.accelerator.device)
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
        self.generator = Spa3VLMGenerator.from_pretrained(
            str(pretrained),
            None if processor is None else str(processor),
            device=device or "auto",
            dtype=dtype or "auto",
            attn_implementation=attn_implementation or None,
            generation_config=generation_config or None,
            max_new_tokens=_positive_int(max_new_tokens, "max_new_tokens"),
            system_message=system_prompt,
            min_pixels=_optional_int(min_pixels, "min_pixels"),
            max_pixels=_optional_int(max_pixels, "max_pixels"),
        )

    # ------------------------------------------------------------------ properties lmms-eval reads
    @property
    def model(self):
        return self.generator.model

    @property
    def tokenizer(self):
        return self.generator.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self.generator.device

    # ------------------------------------------------------------------ requests
    def loglikelihood(self, requests):
        raise NotImplementedError(f"{CLASS_NAME} only generates text (generate_until); loglikelihood is not implemented")

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError(f"{CLASS_NAME} only generates text (generate_until); loglikelihood is not implemented")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{CLASS_NAME} answers single-turn requests only (generate_until)")

    def _decoding(self, gen_kwargs: Any) -> tuple[int, list[str]]:
        """Task generation kwargs -> (max_new_tokens, until); only greedy decoding is supported."""
        gen_kwargs = dict(gen_kwargs or {})
        temperature = gen_kwargs.get("temperature") or 0
        if gen_kwargs.get("do_sample") or float(temperature) > 0:
            raise ValueError(
                f"{CLASS_NAME} decodes greedily; the task asks for sampling (do_sample={gen_kwargs.get('do_sample')}, "
                f"temperature={gen_kwargs.get('temperature')})"
            )
        if int(gen_kwargs.get("num_beams") or 1) != 1:
            raise ValueError(f"{CLASS_NAME} decodes greedily with one beam; got num_beams={gen_kwargs['num_beams']}")
        max_new_tokens = gen_kwargs.get("max_new_tokens") or self.generator.max_new_tokens
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, (list, tuple)) or not all(isinstance(stop, str) for stop in until):
            raise ValueError(f"generation kwarg 'until' must be a string or a list of strings, got {until!r}")
        # "\n\n" is the default lmms-eval adds when a task sets no `until` (its few-shot delimiter), not a task
        # choice; like lmms-eval's own Qwen2.5-VL wrapper, and the reference (which ignored `until`), keep the text.
        return _positive_int(max_new_tokens, "max_new_tokens"), [stop for stop in until if stop and stop != "\n\n"]

    def generate_until(self, requests) -> list[str]:
        """Answer ``generate_until`` requests, batched per generation kwargs; results in request order."""
        from tqdm.auto import tqdm

        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            if len(request.args) < 6:
                raise ValueError(
                    f"request #{index} has {len(request.args)} arguments; expected (context, generation_kwargs, "
                    "doc_to_visual, doc_id, task, split) as lmms-eval builds them for simple models"
                )
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        results: list[Optional[str]] = [None] * len(requests)
        with tqdm(total=len(requests), desc="Model Responding", disable=self.rank != 0) as bar:
            for indices in groups.values():
                max_new_tokens, until = self._decoding(requests[indices[0]].args[1])
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    batch = []
                    for index in chunk:
                        context, _, doc_to_visual, doc_id, task, split = requests[index].args[:6]
                        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                        batch.append((frames_from_visuals(visuals, self.max_num_frames), context))
                    answers = self.generator.generate(batch, max_new_tokens=max_new_tokens)
                    for index, answer in zip(chunk, answers):
                        for stop in until:
                            answer = answer.split(stop)[0]
                        results[index] = answer
                        self.cache_hook.add_partial("generate_until", requests[index].args[:2], answer)
                    bar.update(len(chunk))
        return results
