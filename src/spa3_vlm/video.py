"""Video -> frames for Spa3-VLM (PyAV). Not shipped to the Hub.

``load_video_frames(path, num_frames)`` returns ``num_frames`` uniformly sampled RGB frames
(:func:`sample_frame_indices`: ``linspace(0, n-1, k)`` cast to int, all frames if fewer) from a video file or
a directory of image files (natural sort order, e.g. ``frame_2`` before ``frame_10``). Frames are decoded
sequentially and only the sampled ones are converted to RGB; decoding stops after the last sampled frame.
Use it as the processor's loader: ``Spa3VLMProcessor(..., video_loader=load_video_frames)``.

For data sets that decode on access (:mod:`spa3_vlm.data.lazy_frames`) the two halves are separate:
:func:`probe_video` (frame count and rate, one open) picks the indices when the rows are built, and
:func:`decode_frames_at` decodes them later, with the same fallback as :func:`load_video_frames` for a container that
over-counts its frames, so both give the same frames.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import av
import PIL.Image

from .processing_spa3_vlm import list_image_files, sample_frame_indices
from .processing_spa3r import to_pil_rgb


__all__ = [
    "VideoProbe",
    "count_video_frames",
    "decode_frames_at",
    "list_image_files",
    "load_video_frames",
    "probe_video",
    "reference_frame_count",
    "sample_frame_indices",
    "video_duration_seconds",
]


def _open(path: str):
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"Cannot decode video file {path}: {err}") from err
    if not container.streams.video:
        container.close()
        raise ValueError(f"Cannot decode video file {path}: it has no video stream.")
    return container


def count_video_frames(path: str | os.PathLike, trust_container: bool = True) -> int:
    """Number of frames: the container's stored count when present (and trusted), else counted by decoding."""
    path = os.fspath(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        if trust_container and stream.frames and stream.frames > 0:
            return int(stream.frames)
        try:
            return sum(1 for _ in container.decode(stream))
        except av.error.FFmpegError as err:
            raise ValueError(f"Cannot decode video file {path}: {err}") from err


def _decode_indices(path: str, indices: list[int]) -> list[PIL.Image.Image]:
    """Decode the frames at sorted ``indices`` (fewer if the video ends early)."""
    wanted, frames, position = set(indices), [], -1
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for position, frame in enumerate(container.decode(stream)):
                if position in wanted:
                    frames.append(frame.to_image().convert("RGB"))
                if position >= indices[-1]:
                    break
        except av.error.FFmpegError as err:
            raise ValueError(f"Cannot decode video file {path} (frame {position + 1}): {err}") from err
    return frames


class VideoProbe(NamedTuple):
    """What :func:`probe_video` reads: the frame count (the container's, else counted by decoding) and the average
    frame rate (``None`` where the file has none; a frame directory counts as 1 fps)."""

    num_frames: int
    fps: Optional[float]


def probe_video(path: str | os.PathLike) -> VideoProbe:
    """Frame count and rate of a video file (one open where the container stores its count) or a frame directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return VideoProbe(len(list_image_files(path)), 1.0)
    with _open(path) as container:
        stream = container.streams.video[0]
        rate, stored = stream.average_rate or stream.guessed_rate, stream.frames
    fps = float(rate) if rate and float(rate) > 0 else None
    # The container's frame count where it has one; counted by decoding otherwise.
    frames = stored if stored and stored > 0 else count_video_frames(path, trust_container=False)
    return VideoProbe(int(frames), fps)


def video_duration_seconds(path: str | os.PathLike) -> float:
    """A video file's frame count over its average frame rate; a frame directory counts as 1 fps (the reference's
    convention for frame folders)."""
    probe = probe_video(path)
    if probe.fps is None:
        raise ValueError(f"Video file {os.fspath(path)} has no frame rate to compute its duration from.")
    return probe.num_frames / probe.fps


def reference_frame_count(
    duration_seconds: float, seconds_per_frame: float = 2.0, min_frames: int = 4, max_frames: int = 8
) -> int:
    """Frames the reference's SFT samples from a video: ``clamp(round(duration / 2 s), 4, 8)`` with its settings
    (``base_interval`` 2, ``video_min_frames`` 4, ``video_max_frames`` 8; Python's rounding, halves to even)."""
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames} and {max_frames}")
    if not seconds_per_frame > 0:
        raise ValueError(f"seconds_per_frame must be > 0, got {seconds_per_frame}")
    return min(max(round(duration_seconds / seconds_per_frame), min_frames), max_frames)


def decode_frames_at(path: str | os.PathLike, indices: list[int]) -> list[PIL.Image.Image]:
    """RGB frames of a video file at sorted ``indices`` (from :func:`sample_frame_indices` over its frame count).

    If the file ends before the last index (a container that over-counts its frames, e.g. a truncated file), its
    frames are counted by decoding and ``len(indices)`` are sampled again uniformly, as :func:`load_video_frames`
    does; then fewer frames come back where the video has fewer.
    """
    path = os.fspath(path)
    if not indices:
        raise ValueError(f"no frame indices to decode from {path}")
    frames = _decode_indices(path, list(indices))
    if len(frames) == len(indices):
        return frames
    total = count_video_frames(path, trust_container=False)
    if total == 0:
        raise ValueError(f"Video file {path} contains 0 decodable frames.")
    resampled = sample_frame_indices(total, len(indices))
    frames = _decode_indices(path, resampled)
    if len(frames) != len(resampled):
        raise ValueError(f"Video file {path}: decoded {len(frames)} of the {len(resampled)} sampled frames.")
    return frames


def load_video_frames(path: str | os.PathLike, num_frames: int) -> list[PIL.Image.Image]:
    """``num_frames`` uniformly sampled RGB PIL frames of a video file or a directory of image files."""
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int; got {num_frames!r}.")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Video path does not exist: {path}")
    if os.path.isdir(path):
        files = list_image_files(path)
        return [to_pil_rgb(files[index]) for index in sample_frame_indices(len(files), num_frames)]
    total = count_video_frames(path)
    if total == 0:
        raise ValueError(f"Video file {path} contains 0 decodable frames.")
    return decode_frames_at(path, sample_frame_indices(total, num_frames))
