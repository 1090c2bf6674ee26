"""Geometry-branch preprocessing for Spa3R / VGGT: the single source of truth.

Every image that reaches the frozen VGGT backbone (Spa3R pre-training, Spa3-VLM training, evaluation and
inference) goes through :class:`Spa3RImageProcessor`:

1. to RGB; an alpha channel is composited on a white background;
2. resized (bicubic by default) to width ``target_width`` (518) and height
   ``round(h * target_width / w / patch_size) * patch_size`` (at least one patch);
3. centre-cropped in height to at most ``max_height`` (518);
4. returned as float32 ``[V, 3, H, W]`` in [0, 1] per sample. No mean/std normalisation: VGGT normalises inside.

This reproduces VGGT's ``load_and_preprocess_images(mode="crop")`` used by the Spa3-VLM reference
(e.g. 640x480 -> 518x392). All frames of one sample must come out the same size, because the backbone attends
across views; frames of different aspect ratios raise unless ``resize_to_first=True``.

Shipped to the Hub with the model: imports only numpy, PIL, torch, transformers and the standard library.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


__all__ = ["Spa3RImageProcessor", "restoring_auto_map", "to_pil_rgb"]

# PIL.Image.Resampling values are plain ints, which keeps the saved config JSON-serialisable.
_RESAMPLE_NAMES = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "box": PIL.Image.Resampling.BOX,
    "hamming": PIL.Image.Resampling.HAMMING,
}


def _describe(image: Any) -> str:
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__name__} of shape {tuple(image.shape)} and dtype {image.dtype}"
    return type(image).__name__


def _array_to_pil(array: np.ndarray, channels_first: bool, original: Any) -> PIL.Image.Image:
    """[H,W], [H,W,C] or [C,H,W] uint8 / float-in-[0,1] array -> PIL image (C in 1, 3, 4)."""
    if array.ndim == 3 and channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            f"Expected an image with 1, 3 or 4 channels ([H,W], [H,W,C] or [C,H,W]); got {_describe(original)}."
        )
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0.0 or np.nanmax(array) > 1.0 or np.isnan(array).any()):
            raise ValueError(
                f"Float images must hold values in [0, 1]; got {_describe(original)} with range "
                f"[{np.nanmin(array):.4g}, {np.nanmax(array):.4g}]. Pass uint8 pixels or divide by 255."
            )
        pixels = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    else:
        raise ValueError(f"Unsupported image dtype {array.dtype}; expected uint8 or float in [0, 1].")
    mode = "L" if pixels.ndim == 2 else ("RGB" if pixels.shape[-1] == 3 else "RGBA")
    return PIL.Image.fromarray(np.ascontiguousarray(pixels)).convert(mode)


def to_pil_rgb(image: Any) -> PIL.Image.Image:
    """Any supported image -> RGB PIL image, alpha composited on white (as VGGT's loader does).

    Accepts a PIL image, a path, a numpy array (``[H,W]``, ``[H,W,C]``, or ``[C,H,W]`` when the last axis
    is not a channel axis) or a torch tensor (``[C,H,W]``, or ``[H,W,C]`` when the first axis is not a
    channel axis); uint8 in [0, 255] or float in [0, 1].
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path}")
        try:
            with PIL.Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (OSError, PIL.UnidentifiedImageError) as err:
            raise ValueError(f"Cannot decode image file {path}: {err}") from err
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        channels_first = array.ndim == 3 and array.shape[0] in (1, 3, 4)
        image = _array_to_pil(array, channels_first, image)
    elif isinstance(image, np.ndarray):
        channels_first = image.ndim == 3 and image.shape[-1] not in (1, 3, 4) and image.shape[0] in (1, 3, 4)
        image = _array_to_pil(image, channels_first, image)
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(
            f"Unsupported image type {_describe(image)}; expected a PIL image, a file path, a numpy array or a "
            "torch tensor."
        )
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


@contextlib.contextmanager
def restoring_auto_map(*owners: Any) -> Iterator[None]:
    """``save_pretrained`` writes an ``auto_map`` attribute into every object it saves; put the old state back."""
    saved = [(owner, "auto_map" in vars(owner), getattr(owner, "auto_map", None)) for owner in owners]
    try:
        yield
    finally:
        for owner, had, value in saved:
            if had:
                owner.auto_map = value
            elif "auto_map" in vars(owner):
                del owner.auto_map


def _is_frame(obj: Any) -> bool:
    if isinstance(obj, (PIL.Image.Image, str, os.PathLike)):
        return True
    return isinstance(obj, (np.ndarray, torch.Tensor)) and obj.ndim in (2, 3)


def _split_frames(obj: Any) -> list:
    """One sample -> list of frames: a frame, a list of frames, or a 4-D ``[V,...]`` array/tensor."""
    if _is_frame(obj):
        return [obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)) and obj.ndim == 4:
        return list(obj)
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        frames = list(obj)
        for frame in frames:
            if not _is_frame(frame):
                raise TypeError(f"Expected an image (PIL, path, array or tensor); got {_describe(frame)}.")
        return frames
    raise TypeError(f"Expected an image or a list of images; got {_describe(obj)}.")


RESIZE_MODES = ("round", "crop")


class Spa3RImageProcessor(BaseImageProcessor):
    """Resize/crop images for the VGGT/Spa3R geometry branch; outputs ``[V,3,H,W]`` float32 in [0, 1].

    Args:
        target_width: output width in pixels (a multiple of ``patch_size``); 518 for VGGT-1B.
        max_height: taller outputs are centre-cropped to this height (a multiple of ``patch_size``).
        patch_size: the backbone's patch size; the output height is rounded to a multiple of it.
        resample: PIL resampling filter (int or name); bicubic as in the reference.
        resize_to_first: if True, frames of a sample whose output size differs from the first frame's are
            resized (aspect ratio not kept) to that size; if False (default) such a sample raises.
        resize_mode: ``"round"`` (the reference's VLM pipeline, VGGT's loader: height rounded to whole patches,
            ``resample``, rows centre-cropped to ``max_height``; 640x480 -> 518x392) or ``"crop"`` (the reference's
            PSFM pre-training transform: height ``int(target_width * h / w)``, bilinear with antialiasing, then both
            sides centre-cropped down to whole patches as torchvision's ``CenterCrop``; 640x480 -> 518x388 -> 518x378;
            ``resample`` is not used).
    """

    model_input_names = ["geometry_pixel_values"]

    def __init__(
        self,
        target_width: int = 518,
        max_height: int = 518,
        patch_size: int = 14,
        resample: int | str = PIL.Image.Resampling.BICUBIC,
        resize_to_first: bool = False,
        resize_mode: str = "round",
        **kwargs,
    ):
        # Where a saved file's code lives is not a setting: `save_pretrained` writes `auto_map` again when it applies.
        kwargs.pop("auto_map", None)
        super().__init__(**kwargs)
        if isinstance(resample, str):
            if resample.lower() not in _RESAMPLE_NAMES:
                raise ValueError(f"Unknown resample {resample!r}; expected one of {sorted(_RESAMPLE_NAMES)}.")
            resample = _RESAMPLE_NAMES[resample.lower()]
        for name, value in (("target_width", target_width), ("max_height", max_height), ("patch_size", patch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        for name, value in (("target_width", target_width), ("max_height", max_height)):
            if value % patch_size:
                raise ValueError(f"{name}={value} must be a multiple of patch_size={patch_size}.")
        self.target_width = target_width
        self.max_height = max_height
        self.patch_size = patch_size
        self.resample = int(resample)
        self.resize_to_first = bool(resize_to_first)
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}; got {resize_mode!r}.")
        self.resize_mode = resize_mode

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a ``width x height`` image after resizing, before cropping."""
        if self.resize_mode == "crop":
            return self.target_width, max(int(self.target_width * height / width), self.patch_size)
        resized_height = round(height * (self.target_width / width) / self.patch_size) * self.patch_size
        # The reference would produce an empty image for extreme panoramas; keep at least one patch row.
        return self.target_width, max(resized_height, self.patch_size)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of the output inside the resized ``width x height`` input."""
        new_width, new_height = self.output_size(width, height)
        if self.resize_mode == "crop":
            out_width = new_width // self.patch_size * self.patch_size
            out_height = min(new_height // self.patch_size * self.patch_size, self.max_height)
            # torchvision's CenterCrop offsets: int(round(...)), Python's round-half-to-even included.
            left, top = int(round((new_width - out_width) / 2.0)), int(round((new_height - out_height) / 2.0))
            return left, top, left + out_width, top + out_height
        top = (new_height - self.max_height) // 2 if new_height > self.max_height else 0
        return 0, top, new_width, top + min(new_height, self.max_height)

    def resize_frame(self, image: Any) -> PIL.Image.Image:
        """One image -> RGB PIL image of width ``target_width`` and height <= ``max_height`` (uint8)."""
        image = to_pil_rgb(image)
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"Image has an empty size {width}x{height}.")
        new_size = self.output_size(width, height)
        if self.resize_mode == "crop":
            # PIL's bilinear filter widens with the downscale factor: the antialiased bilinear resize of
            # torchvision / torch.nn.functional.interpolate(antialias=True), which ports it.
            image = image.resize(new_size, resample=PIL.Image.Resampling.BILINEAR, reducing_gap=None)
        else:
            image = image.resize(new_size, resample=self.resample)
        box = self.crop_box(width, height)
        return image if box == (0, 0, *new_size) else image.crop(box)

    def resize_sample(self, frames: Any) -> list[PIL.Image.Image]:
        """The frames of one sample -> same-size resized PIL images (see ``resize_to_first``)."""
        frames = _split_frames(frames)
        if not frames:
            raise ValueError("Got an empty list of images for one sample; pass at least one image.")
        resized = [self.resize_frame(frame) for frame in frames]
        first_size = resized[0].size
        for index, frame in enumerate(resized):
            if frame.size == first_size:
                continue
            if not self.resize_to_first:
                raise ValueError(
                    f"Frames of one sample must have the same size after geometry preprocessing: frame 0 became "
                    f"{first_size[0]}x{first_size[1]} (WxH) but frame {index} became {frame.size[0]}x"
                    f"{frame.size[1]}. Give all frames of a sample the same aspect ratio, or set "
                    "resize_to_first=True to stretch them to frame 0's size."
                )
            resized[index] = frame.resize(first_size, resample=self.resample)
        return resized

    @staticmethod
    def to_tensor(frames: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Same-size RGB PIL images -> float32 ``[V,3,H,W]`` in [0, 1]."""
        stacked = np.stack([np.asarray(frame, dtype=np.uint8) for frame in frames])
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).float().div(255.0).contiguous()

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Images -> ``{"geometry_pixel_values": [tensor [V,3,H,W] per sample]}``.

        ``images``: one image (one sample, V=1), a list of images (one sample), or a list of lists (a batch).
        ``return_tensors="np"`` gives numpy arrays instead of torch tensors.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments for {type(self).__name__}: {sorted(kwargs)}.")
        if images is None or (isinstance(images, (list, tuple)) and len(images) == 0):
            raise ValueError("No images given; pass one image, a list of images, or a list of lists of images.")
        nested = isinstance(images, (list, tuple)) and all(
            isinstance(sample, (list, tuple)) or (isinstance(sample, (np.ndarray, torch.Tensor)) and sample.ndim == 4)
            for sample in images
        )
        samples = list(images) if nested else [images]
        values = [self.to_tensor(self.resize_sample(sample)) for sample in samples]
        if return_tensors == "np":
            values = [value.numpy() for value in values]
        elif return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None; got {return_tensors!r}.")
        return BatchFeature({"geometry_pixel_values": values})

    def __call__(self, images: Any, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save as ``ImageProcessingMixin`` does (plus the code file and ``auto_map``), leaving ``self`` unchanged."""
        with restoring_auto_map(self):
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # The base class stores these when it validates kwargs (and `_auto_class` is set on instances that must
        # save without code); they are not settings of this processor.
        for key in ("_valid_kwargs_names", "_valid_processor_keys", "_auto_class"):
            output.pop(key, None)
        return output


# Saved processors carry an `auto_map` entry and a copy of this file, so `AutoImageProcessor.from_pretrained(folder,
# trust_remote_code=True)` (and the Spa3-VLM processor that contains this one) work without the spa3_vlm package.
Spa3RImageProcessor.register_for_auto_class("AutoImageProcessor")
