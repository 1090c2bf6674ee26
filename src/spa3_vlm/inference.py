"""Answer questions about a scene: the one generation path of the package.

:class:`Spa3VLMGenerator` turns ``(frames, question)`` requests into greedy answers of a Spa3-VLM (either base) or
a plain Qwen2.5-VL / Qwen3-VL. The evaluation runner, the lmms-eval plugin, SFT evaluation
(:func:`~spa3_vlm.training.sft_eval.generate_predictions`), the Space and the ``spa3-vlm ask`` command all answer
through it, so the same frames and question get the same text everywhere.

Every request becomes one chat (an optional system turn, then one user turn ``[image x T, text]``, or a chat
given whole), goes through :class:`~spa3_vlm.processing_spa3_vlm.Spa3VLMProcessor` (left-padded batch) and
``model.generate`` with greedy decoding on top of the checkpoint's own ``generation_config``.
:meth:`Spa3VLMGenerator.ask` answers several questions about one scene and runs the Spa3R encoder once for them.

    generator = Spa3VLMGenerator.from_pretrained("runs/spa3-vlm-tiny-sft")
    generator.ask("scene.mp4", ["How many chairs are in the room?", "What is the room's size in m^2?"])
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import PIL.Image
import torch

from .modeling_spa3_vlm import SPA3_VLM_CLASSES, SPA3_VLM_MODEL_TYPES
from .processing_spa3_vlm import Spa3VLMProcessor

__all__ = [
    "DTYPES",
    "GeneratedAnswer",
    "MODEL_TYPES",
    "Spa3VLMGenerator",
    "load_model",
    "load_processor",
    "load_scene_frames",
    "model_class_for",
    "resolve_device",
    "resolve_dtype",
]

# Spa3-VLM on each base, and the plain bases (answering without geometry inputs).
MODEL_TYPES = (*SPA3_VLM_MODEL_TYPES, "qwen2_5_vl", "qwen3_vl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_NEW_TOKENS = 16

# A request's prompt: a question (one user turn after the frames) or a whole chat without the answer.
Prompt = Union[str, Sequence[Mapping[str, Any]]]


# ---------------------------------------------------------------------------------------------- loading


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is parsed by ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:1', ...") from error


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on GPU, float32 on CPU; else one of ``DTYPES``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def model_class_for(config) -> type:
    """The model class for a checkpoint config, chosen by its ``model_type`` (never by the path's name)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    model_type = getattr(config, "model_type", None)
    classes = {
        **{name: SPA3_VLM_CLASSES[name] for name in SPA3_VLM_MODEL_TYPES},
        "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": Qwen3VLForConditionalGeneration,
    }
    if model_type not in classes:
        raise ValueError(
            f"cannot answer with a checkpoint of model_type {model_type!r}; expected one of {list(MODEL_TYPES)} "
            "(Spa3-VLM, Qwen2.5-VL or Qwen3-VL)"
        )
    return classes[model_type]


def load_model(model_name_or_path: str, *, device: torch.device, dtype: torch.dtype, attn_implementation=None):
    """A Spa3-VLM, Qwen2.5-VL or Qwen3-VL checkpoint on ``device`` in ``dtype``, in eval mode."""
    from transformers import AutoConfig

    import spa3_vlm  # noqa: F401  (registers the Spa3-VLM model types with AutoConfig)

    config = AutoConfig.from_pretrained(model_name_or_path)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device.type == "cuda":
        kwargs["device_map"] = str(device)  # load straight onto the GPU, no CPU copy of a 3B model
    model = model_class_for(config).from_pretrained(model_name_or_path, **kwargs)
    return model.to(device).eval()


def load_processor(processor_name_or_path: str) -> Spa3VLMProcessor:
    """``Spa3VLMProcessor`` from a Spa3-VLM folder or a plain Qwen folder (tokenizer + preprocessor config)."""
    try:
        return Spa3VLMProcessor.from_pretrained(processor_name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot load a processor from {processor_name_or_path!r} ({type(error).__name__}: {error}); pass "
            "--processor with a folder or hub id holding the tokenizer and image processor config, e.g. the "
            "Qwen2.5-VL-3B-Instruct checkpoint the model was trained from"
        ) from error


def load_scene_frames(scene: Any, num_frames: int) -> list[PIL.Image.Image]:
    """A video file, a folder of frames or a list of images -> at most ``num_frames`` RGB frames.

    Videos and folders are sampled uniformly (:func:`~spa3_vlm.processing_spa3_vlm.sample_frame_indices`); a list
    of images is sampled the same way when it is longer than ``num_frames``.
    """
    from .processing_spa3_vlm import sample_frame_indices
    from .processing_spa3r import to_pil_rgb

    if isinstance(scene, (str, os.PathLike)):
        from .video import load_video_frames

        return load_video_frames(scene, num_frames)
    if isinstance(scene, PIL.Image.Image):
        scene = [scene]
    frames = list(scene)
    if not frames:
        raise ValueError("the scene has no frames: pass a video file, a folder of frames or a list of images")
    return [to_pil_rgb(frames[index]) for index in sample_frame_indices(len(frames), num_frames)]


# ---------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GeneratedAnswer:
    """One answer and what the model read: prompt tokens, visual tokens, frames."""

    text: str
    prompt_tokens: int
    visual_tokens: int
    frames: int


class Spa3VLMGenerator:
    """Greedy answers of a Spa3-VLM (either base) or a plain Qwen2.5-VL / Qwen3-VL to questions about frames.

    Args:
        model: the model, in eval mode.
        processor: a ``Spa3VLMProcessor`` (its token ids must be the model's); batches are left-padded.
        max_new_tokens: answer length limit (VSI-Bench: 16).
        system_message: the chat's system turn; ``None``: the chat template's default (Qwen2.5-VL's "You are a
            helpful assistant.", none for Qwen3-VL).
        min_pixels / max_pixels: per-frame pixel budget of the Qwen branch; ``None`` keeps the processor's.
    """

    def __init__(
        self,
        model,
        processor: Spa3VLMProcessor,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        system_message: Optional[str] = None,
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
    ):
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        model_type = getattr(model.config, "model_type", None)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model has model_type {model_type!r}; expected one of {list(MODEL_TYPES)}")
        if processor.image_token_id != model.config.image_token_id:
            raise ValueError(
                f"the processor's image token id ({processor.image_token_id}) differs from the model's "
                f"({model.config.image_token_id}): processor and model come from different checkpoints"
            )
        slots = getattr(model.config, "latent_slot_size", 0)  # a plain Qwen config has none
        given = getattr(processor, "spatial_slot_tokens", 0)
        if given != slots:
            raise ValueError(
                f"the processor appends a latent-token slot of {given} tokens after each sample's frames but the model "
                f"needs {slots} (its spatial_fusion: {getattr(model.config, 'spatial_fusion', None)!r}): use the "
                f"processor saved with the model, or set processor.spatial_slot_tokens = {slots}"
            )
        self.model = model
        self.processor = processor
        self.takes_geometry = model_type in SPA3_VLM_MODEL_TYPES and getattr(model.config, "spatial_branch", True)
        self.max_new_tokens = max_new_tokens
        self.system_message = system_message
        if min_pixels is not None or max_pixels is not None:
            processor.set_pixel_budget(min_pixels=min_pixels, max_pixels=max_pixels)
        self.generation_config = self._greedy_config(model, max_new_tokens, processor.tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        processor_name_or_path: Optional[str] = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        attn_implementation: Optional[str] = None,
        generation_config: Optional[str] = None,
        **kwargs,
    ) -> "Spa3VLMGenerator":
        """Load model (class from ``model_type``) and processor (default: the model folder) and wrap them.

        ``generation_config``: a folder / hub id whose ``generation_config.json`` replaces the model's (e.g. the
        released checkpoint's, when the model folder is a conversion that did not carry it over).
        """
        from transformers import GenerationConfig

        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        processor = load_processor(processor_name_or_path or model_name_or_path)
        model = load_model(model_name_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation)
        if generation_config is not None:
            try:
                model.generation_config = GenerationConfig.from_pretrained(generation_config)
            except OSError as error:
                raise ValueError(f"no generation_config.json in {generation_config!r}: {error}") from error
        return cls(model, processor, **kwargs)

    @staticmethod
    def _greedy_config(model, max_new_tokens: int, tokenizer):
        config = copy.deepcopy(model.generation_config)
        config.do_sample = False
        config.num_beams = 1
        config.max_new_tokens = max_new_tokens
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id
        if config.eos_token_id is None:  # a model built from a config has no generation settings of its own
            config.eos_token_id = tokenizer.eos_token_id
        # Sampling knobs mean nothing for greedy decoding; cleared so transformers does not warn about them.
        config.temperature = config.top_p = config.top_k = None
        return config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def settings(self) -> dict[str, Any]:
        """What produced the answers (for a metrics file)."""
        size = self.processor.image_processor.size
        return {
            "model_class": type(self.model).__name__,
            "model_type": self.model.config.model_type,
            "name_or_path": getattr(self.model.config, "_name_or_path", None),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "device": str(self.device),
            "max_new_tokens": self.max_new_tokens,
            "system_message": self.system_message,
            "min_pixels": int(size["shortest_edge"]),
            "max_pixels": int(size["longest_edge"]),
            "generation_config": {
                key: value
                for key, value in self.generation_config.to_diff_dict().items()
                if key not in ("transformers_version",)
            },
        }

    def messages(self, num_frames: int, prompt: Prompt) -> list[dict]:
        """The chat of one request: a question becomes [system turn] + one user turn with ``num_frames`` image slots
        and the question; a chat (list of messages, no answer) is used as given."""
        if not isinstance(prompt, str):
            return [dict(message) for message in prompt]
        content = [{"type": "image"} for _ in range(num_frames)] + [{"type": "text", "text": prompt}]
        conversation = [{"role": "user", "content": content}]
        if self.system_message:
            conversation.insert(0, {"role": "system", "content": self.system_message})
        return conversation

    def _inputs(self, requests: Sequence[tuple[Sequence[Any], Prompt]]) -> dict:
        texts, images = [], []
        for index, request in enumerate(requests):
            if not (isinstance(request, (tuple, list)) and len(request) == 2):
                raise ValueError(f"request #{index} must be a (frames, prompt) pair, got {type(request).__name__}")
            frames, prompt = request
            if not isinstance(prompt, (str, list, tuple)):
                raise ValueError(f"request #{index}: the prompt must be a string or a chat, got {type(prompt).__name__}")
            frames = list(frames)
            if not frames and isinstance(prompt, str):
                raise ValueError(f"request #{index} has no frames; each question needs at least one frame")
            conversation = self.messages(len(frames), prompt)
            texts.append(self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False))
            images.append(frames)
        inputs = self.processor(
            text=texts,
            images=images if any(images) else None,
            padding=True,
            padding_side="left",
            add_special_tokens=False,
            return_tensors="pt",
        )
        return dict(inputs)

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[tuple[Sequence[Any], Prompt]],
        max_new_tokens: Optional[int] = None,
        spatial_latents: Optional[torch.Tensor] = None,
        return_details: bool = False,
    ) -> list[str] | list[GeneratedAnswer]:
        """Answer a batch: ``requests[i] = (frames, prompt)``; one decoded answer per request.

        ``spatial_latents [B, Q, C]``: the requests' Spa3R latents (a latent cache, or :meth:`encode_scene`), used
        instead of running the encoder on the frames. ``return_details``: :class:`GeneratedAnswer` objects.
        """
        if len(requests) == 0:
            return []
        inputs = self._inputs(requests)
        geometry = inputs.pop("geometry_pixel_values", None)
        if self.takes_geometry:
            if spatial_latents is not None:
                if spatial_latents.shape[0] != len(requests):
                    raise ValueError(f"{len(requests)} requests but spatial_latents for {spatial_latents.shape[0]}")
                inputs["spatial_latents"] = spatial_latents
            elif geometry is not None:
                inputs["geometry_pixel_values"] = geometry
        device = self.device
        inputs = {
            key: ([None if v is None else v.to(device) for v in value] if isinstance(value, list) else value.to(device))
            for key, value in inputs.items()
        }
        generation_config = self.generation_config
        if max_new_tokens is not None and max_new_tokens != generation_config.max_new_tokens:
            generation_config = copy.deepcopy(generation_config)
            generation_config.max_new_tokens = max_new_tokens
        output = self.model.generate(**inputs, generation_config=generation_config)
        prompt_length = inputs["input_ids"].shape[1]
        texts = self.processor.tokenizer.batch_decode(
            output[:, prompt_length:], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        if not return_details:
            return texts
        mask = inputs["attention_mask"].bool()
        visual = (inputs["input_ids"] == self.processor.image_token_id) & mask
        return [
            GeneratedAnswer(text, int(mask[i].sum()), int(visual[i].sum()), len(list(requests[i][0])))
            for i, text in enumerate(texts)
        ]

    @torch.inference_mode()
    def encode_scene(self, frames: Sequence[Any]) -> Optional[torch.Tensor]:
        """Spa3R latents ``[1, Q, C]`` of one scene's frames, or ``None`` for a model without the spatial branch."""
        if not self.takes_geometry:
            return None
        geometry = self.processor.geometry_image_processor(list(frames))["geometry_pixel_values"]
        return self.model.compute_spatial_latents([g.to(self.device) for g in geometry])

    def ask(
        self,
        scene: Any,
        questions: str | Sequence[str],
        num_frames: Optional[int] = None,
        max_new_tokens: Optional[int] = None,
    ) -> str | list[str]:
        """Answer ``questions`` about one ``scene`` (a video file, a folder of frames or a list of images).

        The scene's frames are loaded once (``num_frames``, default the processor's ``num_video_frames``) and its
        Spa3R latents computed once for all questions, which are answered in one batch. Returns one answer for
        one question (a string), else a list in the questions' order.
        """
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
            raise ValueError(f"questions must be a non-empty string or list of non-empty strings, got {questions!r}")
        frames = load_scene_frames(scene, num_frames or self.processor.num_video_frames)
        latents = self.encode_scene(frames)
        if latents is not None:
            latents = latents.expand(len(questions), *latents.shape[1:])
        answers = self.generate([(frames, q) for q in questions], max_new_tokens, spatial_latents=latents)
        return [a.strip() for a in answers][0] if single else [a.strip() for a in answers]
