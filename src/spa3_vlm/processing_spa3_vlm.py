"""`Spa3VLMProcessor`: one call prepares both visual branches of Spa3-VLM and the text.

Pipeline per frame (identical for training, evaluation and inference):

- geometry branch: :class:`Spa3RImageProcessor` (518-wide bicubic resize, height rounded to 14-px patches,
  centre crop to <= 518 rows) -> ``geometry_pixel_values``: a list with one float32 ``[V, 3, H, W]`` tensor in
  [0, 1] per sample (``None`` for a sample without images). A list, not a padded tensor: the Spa3R encoder runs
  per sample and samples may differ in V, H and W.
- Qwen branch: the *same resized frame*, cropped from the top-left to multiples of
  ``patch_size * merge_size`` (28) as the reference does (518 -> 504 columns; ``crop_to_merge_multiple``),
  then, only if outside the ``[min_pixels, max_pixels]`` budget, resized with Qwen's ``smart_resize`` rule
  (bicubic, done here in PIL so every backend sees the same pixels), then the Qwen2-VL image processor
  (CLIP normalisation, 14-px patches, temporal duplication, 2x2 merge) with resizing and rescaling off.
  Default budget = the reference training values (16*28*28 .. 576*28*28), used for evaluation too.

Videos (``{"type": "video"}`` chat entries or ``videos=``) are decoded into ``num_video_frames`` uniformly
sampled frames (``linspace(0, n-1, k)`` cast to int; all frames if fewer) and handled as images: the single
``<|vision_start|><|video_pad|><|vision_end|>`` placeholder becomes one image block per frame, as the reference
does. A video is a file path, a directory of image files, a 4-D array/tensor or a list of frames.

Shipped to the Hub with the model: imports only numpy, PIL, torch, transformers and the standard library.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import Qwen2VLImageProcessorPil
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin
from transformers.utils import is_torchvision_available

from .processing_spa3r import Spa3RImageProcessor, restoring_auto_map, to_pil_rgb


__all__ = [
    "DEFAULT_SYSTEM_MESSAGE",
    "CHAT_TEMPLATES",
    "SPA3_VLM_CHAT_TEMPLATE",
    "SPA3_VLM_QWEN3_CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "Spa3VLMProcessor",
    "build_qwen_image_processor",
    "default_video_loader",
    "list_image_files",
    "sample_frame_indices",
    "special_token_ids",
]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
IMAGE_FILE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Reference training budget (data args min_pixels / max_pixels); evaluation uses the same.
DEFAULT_MIN_PIXELS = 16 * 28 * 28
DEFAULT_MAX_PIXELS = 576 * 28 * 28
DEFAULT_NUM_VIDEO_FRAMES = 8



def _chat_template(default_system_message: str | None) -> str:
    """The Qwen chat format (``<|im_start|>role\ncontent<|im_end|>\n``) with ``{% generation %}`` around each
    assistant reply, so that ``return_assistant_tokens_mask=True`` (TRL's assistant_only_loss) marks the answer,
    ``<|im_end|>`` and the newline: the tokens the reference supervises. A conversation without a system turn gets
    ``default_system_message`` (Qwen2.5-VL's template) or none (Qwen3-VL's)."""
    default_system = (
        "{%- if loop.first and message['role'] != 'system' -%}"
        "{{- '<|im_start|>system\\n" + default_system_message + "<|im_end|>\\n' -}}"
        "{%- endif -%}"
        if default_system_message
        else ""
    )
    return (
        "{%- for message in messages -%}"
        + default_system
        + "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['role'] == 'assistant' -%}"
        "{%- generation -%}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endgeneration -%}"
        "{%- else -%}"
        "{%- if message['content'] is string -%}{{- message['content'] -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
        "{%- elif part['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
        "{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


SPA3_VLM_CHAT_TEMPLATE = _chat_template(DEFAULT_SYSTEM_MESSAGE)  # Qwen2.5-VL's format
SPA3_VLM_QWEN3_CHAT_TEMPLATE = _chat_template(None)  # Qwen3-VL's format: no system turn unless one is given
# The chat template for each base's model_type (a Spa3-VLM config's, or the plain base checkpoint's).
CHAT_TEMPLATES = {
    "qwen2_5_vl": SPA3_VLM_CHAT_TEMPLATE,
    "spa3_vlm": SPA3_VLM_CHAT_TEMPLATE,
    "qwen3_vl": SPA3_VLM_QWEN3_CHAT_TEMPLATE,
    "spa3_vlm_qwen3": SPA3_VLM_QWEN3_CHAT_TEMPLATE,
}


def sample_frame_indices(num_frames_total: int, num_samples: int) -> list[int]:
    """Uniform frame indices: ``linspace(0, n-1, k)`` cast to int (as the reference); all frames if n <= k."""
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}.")
    if not isinstance(num_frames_total, int) or isinstance(num_frames_total, bool) or num_frames_total < 1:
        raise ValueError(f"The video has no frames to sample from (num_frames_total={num_frames_total!r}).")
    if num_frames_total <= num_samples:
        return list(range(num_frames_total))
    return np.linspace(0, num_frames_total - 1, num_samples).astype(int).tolist()


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_image_files(directory: str | os.PathLike) -> list[str]:
    """Image files of a frame directory in natural order (``frame_2`` before ``frame_10``)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Frame directory not found: {directory}")
    names = [
        name
        for name in os.listdir(directory)
        if name.lower().endswith(IMAGE_FILE_EXTENSIONS)
        and not name.startswith(".")
        and os.path.isfile(os.path.join(directory, name))
    ]
    if not names:
        raise ValueError(
            f"Frame directory {directory} contains no image files (looked for {', '.join(IMAGE_FILE_EXTENSIONS)})."
        )
    return [os.path.join(directory, name) for name in sorted(names, key=_natural_key)]


def default_video_loader(video: str | os.PathLike, num_frames: int) -> list[PIL.Image.Image]:
    """Decode ``num_frames`` uniformly sampled RGB frames from a video file or a directory of images.

    Files are decoded with PyAV through ``transformers.video_utils.load_video``. The ``spa3_vlm`` package's
    ``spa3_vlm.video.load_video_frames`` returns the same frames and also handles containers that do not
    store a frame count; pass it as ``video_loader`` when available.
    """
    path = os.fspath(video)
    if os.path.isdir(path):
        files = list_image_files(path)
        return [to_pil_rgb(files[index]) for index in sample_frame_indices(len(files), num_frames)]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Video file not found: {path}")
    from transformers.video_utils import load_video

    def indices_fn(metadata, **kwargs):
        return np.asarray(sample_frame_indices(int(metadata.total_num_frames or 0), num_frames))

    try:
        frames, _ = load_video(path, backend="pyav", sample_indices_fn=indices_fn)
    except ImportError:
        raise
    except ValueError as err:
        if "no frames" in str(err):
            raise ValueError(
                f"Cannot sample frames from {path}: its container does not report a frame count. Use "
                "spa3_vlm.video.load_video_frames (processor.video_loader) or pass decoded frames."
            ) from err
        raise ValueError(f"Cannot decode video file {path}: {err}") from err
    except Exception as err:  # PyAV raises its own error types; this module may not import av.
        raise ValueError(f"Cannot decode video file {path}: {type(err).__name__}: {err}") from err
    return [PIL.Image.fromarray(frame) for frame in frames]


def special_token_ids(tokenizer) -> dict[str, int]:
    """Token ids the Spa3-VLM model config needs, read from a Qwen-style tokenizer."""
    names = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    ids = {}
    for key, token in names.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {token} token; a Qwen2-VL style tokenizer is required.")
        ids[key] = token_id
    ids["eos_token_id"] = tokenizer.eos_token_id
    ids["pad_token_id"] = tokenizer.pad_token_id
    return ids


def _qwen_image_processor_class():
    if is_torchvision_available():
        from transformers import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor
    return Qwen2VLImageProcessorPil


def build_qwen_image_processor(
    min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS, **kwargs
) -> BaseImageProcessor:
    """Qwen2-VL image processor (torchvision backend if installed, PIL otherwise) with a pixel budget."""
    return _qwen_image_processor_class()(min_pixels=min_pixels, max_pixels=max_pixels, **kwargs)


def _describe(obj: Any) -> str:
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)}"
    return type(obj).__name__


def _is_image(obj: Any) -> bool:
    if isinstance(obj, (PIL.Image.Image, str, os.PathLike)):
        return True
    return isinstance(obj, (np.ndarray, torch.Tensor)) and obj.ndim in (2, 3)


def _is_frame_stack(obj: Any) -> bool:
    return isinstance(obj, (np.ndarray, torch.Tensor)) and obj.ndim == 4


def _is_video(obj: Any) -> bool:
    """A path (file or frame directory), a 4-D array/tensor, or a non-empty list of decoded frames."""
    if isinstance(obj, (str, os.PathLike)) or _is_frame_stack(obj):
        return True
    return (
        isinstance(obj, (list, tuple))
        and len(obj) > 0
        and all(_is_image(frame) and not isinstance(frame, (str, os.PathLike)) for frame in obj)
    )


def _checkpoint_model_type(path, hub: dict) -> str | None:
    """The ``model_type`` in a checkpoint's ``config.json``, or ``None`` without one."""
    import json

    from transformers.utils import cached_file

    config_file = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False, **hub)
    if config_file is None:
        return None
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle).get("model_type")


class Spa3VLMProcessor(ProcessorMixin):
    """Qwen2.5-VL / Qwen3-VL processor + Spa3R geometry preprocessing, image-only (no torchvision needed).

    Args:
        image_processor: Qwen2-VL image processor (its ``size`` holds the min/max pixel budget).
        tokenizer: Qwen2-style tokenizer with ``<|image_pad|>``, ``<|video_pad|>``, ``<|vision_start|>``,
            ``<|vision_end|>``.
        geometry_image_processor: :class:`Spa3RImageProcessor`.
        chat_template: defaults to :data:`SPA3_VLM_CHAT_TEMPLATE` (Qwen2.5-VL's format);
            :data:`SPA3_VLM_QWEN3_CHAT_TEMPLATE` is Qwen3-VL's (no default system turn). ``from_pretrained`` of a
            plain Qwen checkpoint picks the one for its base (:data:`CHAT_TEMPLATES`).
        num_video_frames: frames sampled per video when the call gives no ``num_frames`` (8 = training;
            pass ``num_frames=32`` for VSI-Bench evaluation).
        crop_to_merge_multiple: crop the Qwen-branch frame from the top-left to multiples of 28 (reference).
        video_loader: ``(path, num_frames) -> list[PIL.Image]`` for video paths; not saved. Default:
            :func:`default_video_loader`.
        min_pixels / max_pixels: if given, set the Qwen image processor's pixel budget.
        spatial_slot_tokens: for a Spa3-VLM that reads its latents as tokens (``spatial_fusion="tokens"``): after
            each sample's last image, one more image block of this many merged tokens (a blank image whose grid
            factors the count) that the model fills with the projected latents; 0 (default) adds none.

    Call: ``processor(text=..., images=..., videos=..., return_tensors="pt")``. ``images`` is a flat list in
    placeholder order (split over the texts by their ``<|image_pad|>`` counts) or one list per text.
    Returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``pixel_values`` ``[N_patches, 1176]``,
    ``image_grid_thw`` ``[N_frames, 3]`` and ``geometry_pixel_values`` (list of ``[V,3,H,W]``, one per text).
    """

    return_mm_token_type_ids = True
    skip_tensor_conversion = ["video_metadata", "text_replacement_offsets", "geometry_pixel_values"]

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        geometry_image_processor=None,
        chat_template=None,
        num_video_frames: int = DEFAULT_NUM_VIDEO_FRAMES,
        crop_to_merge_multiple: bool = True,
        video_loader: Callable[[str, int], list] | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        spatial_slot_tokens: int = 0,
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("Spa3VLMProcessor needs a tokenizer (a Qwen2-style tokenizer with vision tokens).")
        if image_processor is None:
            image_processor = build_qwen_image_processor()
        if geometry_image_processor is None:
            geometry_image_processor = Spa3RImageProcessor()
        if chat_template is None:
            chat_template = SPA3_VLM_CHAT_TEMPLATE
        if not isinstance(num_video_frames, int) or isinstance(num_video_frames, bool) or num_video_frames < 1:
            raise ValueError(f"num_video_frames must be a positive int; got {num_video_frames!r}.")
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.vision_start_token = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
        self.vision_end_token = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
        ids = special_token_ids(tokenizer)
        self.image_token_id = ids["image_token_id"]
        self.video_token_id = ids["video_token_id"]
        self.vision_start_token_id = ids["vision_start_token_id"]
        self.vision_end_token_id = ids["vision_end_token_id"]
        if not isinstance(spatial_slot_tokens, int) or isinstance(spatial_slot_tokens, bool) or spatial_slot_tokens < 0:
            raise ValueError(f"spatial_slot_tokens must be an int >= 0; got {spatial_slot_tokens!r}.")
        self.spatial_slot_tokens = spatial_slot_tokens
        self.num_video_frames = num_video_frames
        self.crop_to_merge_multiple = bool(crop_to_merge_multiple)
        self.video_loader = video_loader
        super().__init__(image_processor, tokenizer, geometry_image_processor, chat_template=chat_template, **kwargs)
        if min_pixels is not None or max_pixels is not None:
            self.set_pixel_budget(min_pixels=min_pixels, max_pixels=max_pixels)

    # ------------------------------------------------------------------ config / loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """A saved Spa3-VLM processor; or, from a plain Qwen2.5-VL / Qwen3-VL checkpoint (no Spa3-VLM
        ``processor_config.json``), that checkpoint's tokenizer and vision settings (patch size, image mean/std)
        with the paper's geometry preprocessing and per-frame budget of 16 to 576 merged tokens, so that
        ``--model_name_or_path Qwen/...`` needs no separate processor."""
        import json

        from transformers.utils import cached_file

        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
        config_file = cached_file(
            pretrained_model_name_or_path, "processor_config.json", _raise_exceptions_for_missing_entries=False, **hub
        )
        if config_file is not None:
            with open(config_file, encoding="utf-8") as handle:
                if "geometry_image_processor" in json.load(handle):
                    return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls._from_qwen_checkpoint(pretrained_model_name_or_path, hub, kwargs)

    @classmethod
    def _from_qwen_checkpoint(cls, path, hub: dict, kwargs: dict) -> "Spa3VLMProcessor":
        from transformers import AutoTokenizer
        from transformers.image_processing_base import ImageProcessingMixin

        tokenizer = AutoTokenizer.from_pretrained(path, **hub)
        settings, _ = ImageProcessingMixin.get_image_processor_dict(path, **hub)
        vision = {k: settings[k] for k in ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std") if k in settings}
        merged = (vision.get("patch_size", 14) * vision.get("merge_size", 2)) ** 2  # pixels of one merged token
        image_processor = build_qwen_image_processor(min_pixels=16 * merged, max_pixels=576 * merged, **vision)
        own = ("num_video_frames", "crop_to_merge_multiple", "video_loader", "min_pixels", "max_pixels", "chat_template")
        options = {k: kwargs[k] for k in own if k in kwargs}
        if options.get("chat_template") is None:
            # Our template for the checkpoint's base (its own templates have no {% generation %} markers).
            options["chat_template"] = CHAT_TEMPLATES.get(_checkpoint_model_type(path, hub), SPA3_VLM_CHAT_TEMPLATE)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **options)

    def set_pixel_budget(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Set the Qwen branch's per-frame pixel budget (stored in the image processor's ``size``)."""
        size = dict(self.image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = int(min_pixels)
        if max_pixels is not None:
            size["longest_edge"] = int(max_pixels)
        if size["shortest_edge"] > size["longest_edge"]:
            raise ValueError(f"min_pixels={size['shortest_edge']} exceeds max_pixels={size['longest_edge']}.")
        # Rebuilding keeps the processor's internal size representation consistent.
        config = self.image_processor.to_dict()
        config.pop("image_processor_type", None)
        config["size"] = size
        self.image_processor = type(self.image_processor)(**config)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # A callable is not serialisable; min/max pixels live in the image processor's size.
        for key in ("video_loader", "min_pixels", "max_pixels"):
            output.pop(key, None)
        # `save_pretrained` tags every sub-processor with the processor's own auto_map entry, which belongs at the top
        # only; the geometry processor keeps its AutoImageProcessor entry, so it loads with remote code too.
        for key in ("image_processor", "geometry_image_processor"):
            sub = output.get(key)
            if isinstance(sub, dict) and isinstance(sub.get("auto_map"), dict):
                auto_map = {name: ref for name, ref in sub["auto_map"].items() if name != "AutoProcessor"}
                if auto_map:
                    sub["auto_map"] = auto_map
                else:
                    del sub["auto_map"]
        return output

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save as ProcessorMixin does (plus code files and auto_map), leaving ``self`` and its parts unchanged."""
        with restoring_auto_map(self, self.image_processor, self.geometry_image_processor):
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = list(self.tokenizer.model_input_names) + list(self.image_processor.model_input_names)
        return names + ["mm_token_type_ids", "geometry_pixel_values"]

    # ------------------------------------------------------------------ videos
    def load_video(self, video: Any, num_frames: int) -> list:
        """A video (path, frame directory, 4-D array/tensor, list of frames) -> sampled list of frames."""
        if isinstance(video, (str, os.PathLike)):
            loader = self.video_loader or default_video_loader
            frames = list(loader(video, num_frames))
            if not frames:
                raise ValueError(f"The video loader returned no frames for {os.fspath(video)}.")
            return frames
        frames = list(video)
        if not frames:
            raise ValueError("Got a video with 0 frames; pass a non-empty list of frames or a video path.")
        return [frames[index] for index in sample_frame_indices(len(frames), num_frames)]

    # ------------------------------------------------------------------ input layout
    @staticmethod
    def _distribute(items, counts: list[int], kind: str, token: str) -> list[list]:
        """Flat or per-sample images/videos -> one list per text, checked against the placeholder counts."""
        is_unit = _is_image if kind == "image" else _is_video
        if items is None:
            if sum(counts):
                raise ValueError(
                    f"The text has {sum(counts)} {token} placeholder(s) (per sample: {counts}) but no {kind}s were "
                    f"passed; pass one {kind} per placeholder."
                )
            return [[] for _ in counts]
        if kind == "image" and _is_frame_stack(items):
            items = list(items)
        elif is_unit(items):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"Expected {kind}s as a list; got {_describe(items)}.")
        if len(items) == 0:
            raise ValueError(
                f"Got an empty list of {kind}s. Pass {kind}s=None for text-only input, or one {kind} per "
                f"{token} placeholder."
            )
        if all(is_unit(item) for item in items):
            if len(items) != sum(counts):
                raise ValueError(
                    f"The text has {sum(counts)} {token} placeholder(s) (per sample: {counts}) but {len(items)} "
                    f"{kind}(s) were passed; pass exactly one {kind} per placeholder."
                )
            bounds = np.cumsum([0, *counts]).tolist()
            return [list(items[bounds[i] : bounds[i + 1]]) for i in range(len(counts))]
        per_sample = []
        for item in items:
            if kind == "image" and _is_frame_stack(item):
                per_sample.append(list(item))
            elif isinstance(item, (list, tuple)) and all(is_unit(unit) for unit in item):
                per_sample.append(list(item))
            else:
                raise TypeError(
                    f"Could not read the {kind}s: expected a flat list of {kind}s or one list of {kind}s per "
                    f"text; found an entry {_describe(item)}."
                )
        if len(per_sample) != len(counts):
            raise ValueError(
                f"Got {kind} lists for {len(per_sample)} samples but {len(counts)} text(s); pass one list of "
                f"{kind}s per text."
            )
        for index, (sample, count) in enumerate(zip(per_sample, counts)):
            if len(sample) != count:
                raise ValueError(
                    f"Sample {index}: the text has {count} {token} placeholder(s) but {len(sample)} {kind}(s) were "
                    f"passed; pass exactly one {kind} per placeholder."
                )
        return per_sample

    def _placeholder_pattern(self) -> re.Pattern:
        start, end = re.escape(self.vision_start_token), re.escape(self.vision_end_token)
        video, image = re.escape(self.video_token), re.escape(self.image_token)
        return re.compile(f"(?P<video>(?:{start})?{video}(?:{end})?)|(?P<image>{image})")

    # ------------------------------------------------------------------ Qwen branch
    def _qwen_frame(self, frame: PIL.Image.Image, min_pixels: int, max_pixels: int) -> np.ndarray:
        """Geometry-resized frame -> float32 ``[3, h, w]`` in [0, 1] at a size Qwen accepts unchanged."""
        factor = self.image_processor.patch_size * self.image_processor.merge_size
        width, height = frame.size
        if self.crop_to_merge_multiple:
            crop_w = width // factor * factor if width >= factor else width
            crop_h = height // factor * factor if height >= factor else height
            if (crop_w, crop_h) != (width, height):
                frame = frame.crop((0, 0, crop_w, crop_h))
                width, height = crop_w, crop_h
        new_height, new_width = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        if (new_width, new_height) != (width, height):
            frame = frame.resize((new_width, new_height), resample=PIL.Image.Resampling.BICUBIC)
        return (np.asarray(frame, dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def _spatial_slot_frame(self) -> np.ndarray:
        """The blank ``[3, h, w]`` image whose merged-token grid holds ``spatial_slot_tokens`` tokens (as square as
        the count's divisors allow); its pixels are never read, the model replaces its tokens."""
        count = self.spatial_slot_tokens
        rows = max(d for d in range(1, math.isqrt(count) + 1) if count % d == 0)
        factor = self.image_processor.patch_size * self.image_processor.merge_size
        return np.zeros((3, rows * factor, count // rows * factor), dtype=np.float32)

    # ------------------------------------------------------------------ call
    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        if audio is not None:
            raise ValueError("Spa3VLMProcessor does not take audio.")
        if images is None and text is None and videos is None:
            raise ValueError("Spa3VLMProcessor needs text, images or videos; got none.")
        merged = self._merge_kwargs(ProcessingKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs = merged["text_kwargs"]
        images_kwargs = merged["images_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None) or images_kwargs.pop("return_tensors", None)
        images_kwargs.pop("return_tensors", None)
        return_mm_token_type_ids = text_kwargs.pop("return_mm_token_type_ids", merged["return_mm_token_type_ids"])
        return_replacement_offsets = text_kwargs.pop(
            "return_text_replacement_offsets", merged["return_text_replacement_offsets"]
        )
        num_frames = merged["videos_kwargs"].get("num_frames") or self.num_video_frames

        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not texts or not all(isinstance(sample, str) for sample in texts):
                raise ValueError(f"`text` must be a string or a non-empty list of strings; got {_describe(text)}.")
            pattern = self._placeholder_pattern()
            kinds = [[match.lastgroup for match in pattern.finditer(sample)] for sample in texts]
            image_counts = [sample_kinds.count("image") for sample_kinds in kinds]
            video_counts = [sample_kinds.count("video") for sample_kinds in kinds]
            images_per_sample = self._distribute(images, image_counts, "image", self.image_token)
            videos_per_sample = self._distribute(videos, video_counts, "video", self.video_token)
        else:
            texts, kinds = None, None
            images_per_sample = self._distribute_without_text(images, "image")
            videos_per_sample = self._distribute_without_text(videos, "video")
            if images_per_sample and videos_per_sample and len(images_per_sample) != len(videos_per_sample):
                raise ValueError("Without text, pass images and videos for the same number of samples.")
            num_samples = max(len(images_per_sample), len(videos_per_sample))
            images_per_sample = images_per_sample or [[] for _ in range(num_samples)]
            videos_per_sample = videos_per_sample or [[] for _ in range(num_samples)]
            kinds = [["image"] * len(i) + ["video"] * len(v) for i, v in zip(images_per_sample, videos_per_sample)]

        # Frames of each sample in placeholder order; a video contributes its sampled frames.
        frames_per_unit: list[list[list]] = []  # sample -> placeholder -> frames
        for index, sample_kinds in enumerate(kinds):
            image_iter, video_iter = iter(images_per_sample[index]), iter(videos_per_sample[index])
            units = []
            for kind in sample_kinds:
                if kind == "image":
                    units.append([next(image_iter)])
                else:
                    units.append(self.load_video(next(video_iter), num_frames))
            frames_per_unit.append(units)

        size = images_kwargs.pop("size", None) or self.image_processor.size
        min_pixels = images_kwargs.pop("min_pixels", None)
        max_pixels = images_kwargs.pop("max_pixels", None)
        min_pixels = size["shortest_edge"] if min_pixels is None else min_pixels
        max_pixels = size["longest_edge"] if max_pixels is None else max_pixels
        for key in ("do_resize", "do_rescale", "input_data_format", "resample"):
            images_kwargs.pop(key, None)

        geometry_pixel_values, qwen_frames, tokens_per_unit = [], [], []
        image_sources: list[int] = []  # per image of the batch, in order: its entry in qwen_frames
        slot_source = None  # every sample's slot is the same blank image
        # Samples showing the very same frame objects (several questions about one scene) share one pass: the
        # frames are resized and normalised once per call, and their outputs repeated.
        processed: dict[tuple, tuple] = {}
        patch, merge_length = self.image_processor.patch_size, self.image_processor.merge_size**2
        for index, units in enumerate(frames_per_unit):
            frames = [frame for unit in units for frame in unit]
            if not frames:
                geometry_pixel_values.append(None)
                tokens_per_unit.append([])
                continue
            key = tuple(tuple(map(id, unit)) for unit in units)
            if key not in processed:
                try:
                    resized = self.geometry_image_processor.resize_sample(frames)
                except ValueError as err:
                    raise ValueError(f"Sample {index}: {err}") from err
                frame_iter, sample_tokens, sources = iter(resized), [], []
                for unit in units:
                    unit_tokens = []
                    for _ in unit:
                        array = self._qwen_frame(next(frame_iter), min_pixels, max_pixels)
                        sources.append(len(qwen_frames))
                        qwen_frames.append(array)
                        unit_tokens.append((array.shape[1] // patch) * (array.shape[2] // patch) // merge_length)
                    sample_tokens.append(unit_tokens)
                processed[key] = (self.geometry_image_processor.to_tensor(resized), sample_tokens, sources)
            geometry, sample_tokens, sources = processed[key]
            geometry_pixel_values.append(geometry)
            tokens_per_unit.append(sample_tokens)
            image_sources += sources
            if self.spatial_slot_tokens:
                if slot_source is None:
                    slot_source = len(qwen_frames)
                    qwen_frames.append(self._spatial_slot_frame())
                image_sources.append(slot_source)

        data: dict[str, Any] = {}
        if qwen_frames:
            vision = self.image_processor(
                qwen_frames,
                do_resize=False,
                do_rescale=False,
                input_data_format="channels_first",
                return_tensors=None,
                **images_kwargs,
            )
            pixel_values, grids = np.asarray(vision["pixel_values"]), np.asarray(vision["image_grid_thw"])
            if len(image_sources) != len(qwen_frames):  # repeat the shared frames' patches in batch order
                bounds = np.cumsum([0, *grids.prod(-1).tolist()])
                pixel_values = np.concatenate([pixel_values[bounds[i] : bounds[i + 1]] for i in image_sources])
                grids = grids[image_sources]
            data["pixel_values"] = pixel_values
            data["image_grid_thw"] = grids
            expected = []  # each sample's frames, then its slot (a sample without frames has neither)
            slot = [self.spatial_slot_tokens] if self.spatial_slot_tokens else []
            for sample in tokens_per_unit:
                expected += [n for unit in sample for n in unit] + (slot if sample else [])
            produced = (data["image_grid_thw"].prod(-1) // merge_length).tolist()
            if produced != expected:  # a guard against a future image processor resizing behind our back
                raise RuntimeError(f"Image token counts {produced} differ from the planned {expected}.")

        if texts is not None:
            expanded, offsets = self._expand_placeholders(texts, tokens_per_unit)
            self._check_truncation(expanded, text_kwargs)
            text_inputs = self.tokenizer(expanded, **text_kwargs)
            data.update(text_inputs)
            if return_mm_token_type_ids:
                data["mm_token_type_ids"] = self.create_mm_token_type_ids(text_inputs["input_ids"])
            if return_replacement_offsets:
                data["text_replacement_offsets"] = offsets

        if any(value is not None for value in geometry_pixel_values):
            if return_tensors == "np":
                geometry_pixel_values = [None if v is None else v.numpy() for v in geometry_pixel_values]
            data["geometry_pixel_values"] = geometry_pixel_values
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=self.skip_tensor_conversion)

    @staticmethod
    def _distribute_without_text(items, kind: str) -> list[list]:
        if items is None:
            return []
        is_unit = _is_image if kind == "image" else _is_video
        if is_unit(items):
            return [[items]]
        if isinstance(items, (list, tuple)) and items and all(is_unit(item) for item in items):
            return [list(items)]
        if isinstance(items, (list, tuple)) and items and all(isinstance(item, (list, tuple)) for item in items):
            return [list(item) for item in items]
        raise ValueError(f"Got an empty or unreadable {kind} input ({_describe(items)}); pass {kind}s=None or {kind}s.")

    def _expand_placeholders(self, texts: list[str], tokens_per_unit: list[list[list[int]]]):
        """Replace each image placeholder by its image tokens and each video block by one block per frame; a sample's
        spatial slot block (``spatial_slot_tokens``) follows its last visual block, inside that block's replacement (so
        the offsets that place assistant masks count it)."""
        pattern = self._placeholder_pattern()
        slot = self.spatial_slot_tokens
        expanded, all_offsets = [], []
        for text, units in zip(texts, tokens_per_unit):
            pieces, offsets, last, shift = [], [], 0, 0
            for index, (match, unit_tokens) in enumerate(zip(pattern.finditer(text), units)):
                start, end = match.span()
                if match.lastgroup == "image":
                    replacement = self.image_token * unit_tokens[0]
                else:
                    replacement = "".join(
                        self.vision_start_token + self.image_token * count + self.vision_end_token
                        for count in unit_tokens
                    )
                if slot and index == len(units) - 1:
                    # After the block's closing token: an image placeholder sits inside its own start/end pair.
                    if text.startswith(self.vision_end_token, end):
                        replacement += self.vision_end_token
                        end += len(self.vision_end_token)
                    replacement += self.vision_start_token + self.image_token * slot + self.vision_end_token
                pieces.append(text[last:start])
                pieces.append(replacement)
                offsets.append(
                    {
                        "type": match.lastgroup,
                        "span": (start, end),
                        "new_span": (start + shift, start + shift + len(replacement)),
                        "text": text[start:end],
                        "replacement": replacement,
                    }
                )
                shift += len(replacement) - (end - start)
                last = end
            pieces.append(text[last:])
            expanded.append("".join(pieces))
            all_offsets.append(offsets)
        return expanded, all_offsets

    def _check_truncation(self, texts: list[str], text_kwargs: dict) -> None:
        """Raise instead of letting truncation cut through image tokens (the model would then fail)."""
        truncation, max_length = text_kwargs.get("truncation"), text_kwargs.get("max_length")
        if not truncation or truncation == "do_not_truncate" or max_length is None:
            return
        add_special_tokens = text_kwargs.get("add_special_tokens", True)
        encoded = self.tokenizer(texts, add_special_tokens=add_special_tokens, truncation=False, padding=False)
        side = getattr(self.tokenizer, "truncation_side", "right")
        vision_ids = {self.image_token_id, self.vision_start_token_id, self.vision_end_token_id}
        for index, ids in enumerate(encoded["input_ids"]):
            if len(ids) <= max_length:
                continue
            removed = ids[max_length:] if side == "right" else ids[: len(ids) - max_length]
            if any(token in vision_ids for token in removed):
                positions = [pos for pos, token in enumerate(ids) if token in vision_ids]
                needed = positions[-1] + 1 if side == "right" else len(ids) - positions[0]
                raise ValueError(
                    f"Sample {index} has {len(ids)} tokens, more than max_length={max_length}, and truncating it "
                    f"would cut through its image tokens ({len(positions)} vision tokens). Raise max_length to at "
                    f"least {needed} (or {len(ids)} to keep the whole text), use fewer frames or a smaller "
                    "max_pixels, or shorten the text."
                )


# Saved processors carry `auto_map` and copies of this file and processing_spa3r.py, so
# `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` works without the spa3_vlm package.
Spa3VLMProcessor.register_for_auto_class("AutoProcessor")
