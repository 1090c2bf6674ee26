"""Uploaded files of both tabs: size and pixel limits, telling images from videos, reading images and sampling a
video's frames. A file that cannot be used raises a ``ValueError`` naming it, worded for the UI.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Optional

import PIL.Image

MAX_FILE_MB = float(os.environ.get("SPA3_SPACE_MAX_FILE_MB", "50"))
MAX_FRAMES = 32  # VSI-Bench evaluation samples 32 frames per video
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg")


def _name(path: str) -> str:
    return os.path.basename(str(path))


def check_upload_sizes(paths: Sequence[str]) -> None:
    for path in paths:
        size_mb = os.path.getsize(path) / 1e6
        if size_mb > MAX_FILE_MB:
            raise ValueError(f"{_name(path)} is {size_mb:.3g} MB; the limit is {MAX_FILE_MB:g} MB per file.")


def read_image(path: str) -> PIL.Image.Image:
    """An uploaded image file -> RGB PIL image, or a ``ValueError`` naming the file."""
    try:
        with PIL.Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{_name(path)} is {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS // 1_000_000} "
                    "megapixels per image."
                )
            image.load()  # decode now: a truncated file fails here, not inside the model
            return image.convert("RGB")
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read image {_name(path)}: it is not a valid image file ({err}).") from err


def classify(path: str) -> str:
    extension = os.path.splitext(str(path))[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return "image"
    if extension in VIDEO_EXTENSIONS:
        return "video"
    raise ValueError(
        f"{_name(path)} is not an image or a video. Images: {', '.join(IMAGE_EXTENSIONS)}; "
        f"videos: {', '.join(VIDEO_EXTENSIONS)}."
    )


def read_uploads(
    paths: Optional[Sequence[str]], num_video_frames: int, max_images: int = MAX_FRAMES
) -> tuple[list[PIL.Image.Image], str]:
    """Uploaded files -> (RGB frames, ``"images"`` or ``"video"``).

    Several images are used in upload order; one video gives ``num_video_frames`` evenly spaced frames
    (``linspace(0, n-1, k)`` cast to int, all frames if the video is shorter), as in evaluation.
    """
    paths = [str(p) for p in (paths or [])]
    if not paths:
        raise ValueError("No frames: upload images or one video (or load an example scene) first.")
    check_upload_sizes(paths)
    kinds = [classify(p) for p in paths]
    if "video" in kinds:
        if len(paths) > 1:
            raise ValueError(
                f"Got {len(paths)} files including a video: upload several images or one video, not both."
            )
        if not 1 <= int(num_video_frames) <= MAX_FRAMES:
            raise ValueError(f"Frames per video must be between 1 and {MAX_FRAMES}, got {num_video_frames}.")
        from spa3_vlm.video import load_video_frames

        try:
            frames = load_video_frames(paths[0], int(num_video_frames))
        except ValueError as err:
            raise ValueError(f"Cannot use video {_name(paths[0])}: {err}") from err
        if not frames:
            raise ValueError(f"Video {_name(paths[0])} has 0 frames.")
        return frames, "video"
    if len(paths) > max_images:
        raise ValueError(f"Got {len(paths)} images; at most {max_images} frames per question.")
    return [read_image(p) for p in paths], "images"


def files_digest(paths: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for path in paths:
        with open(path, "rb") as handle:
            digest.update(hashlib.sha1(handle.read()).digest())
    return digest.hexdigest()[:16]
