"""Frames decoded on access: rows that name their frames instead of holding them, the ``datasets`` transform that
decodes them in ``__getitem__`` (so in the DataLoader workers), and an optional disk cache of each video's frames.

A row names one frame set (the columns of :func:`spa3_vlm.data.vsi590k.vsi590k_features`):

* ``media_kind``: ``"video"`` (a video file), ``"frame_dir"`` (a directory of frames), ``"images"`` (a list of image
  files) or ``"none"`` (no frames);
* ``media_path``: the video file (``None`` for the other kinds);
* ``frame_files``: the files of the sampled frames of a frame directory or image list (empty for a video file);
* ``frame_indices``: the sampled indices (into the video's frames, the directory's sorted files or the image list);
* ``frames_key``: :func:`frame_set_key` of the sources (path, size, modification time) and the indices. Records of
  the same video with the same frames share it: it keys the frame cache here and the Spa3R latent cache
  (:mod:`spa3_vlm.data.latent_cache`).

:class:`DecodeFrames` adds ``images`` (PIL frames, as an eager decode gives them: a video's frames at its indices as
RGB through :func:`spa3_vlm.video.decode_frames_at`, a frame directory's files as RGB, an image list's files as
``datasets.Image`` decodes them, mode kept). Records of one batch with the same key share one decode. Before decoding it
recomputes the key from the files as they are now: a file that changed since the rows were built is refused, since
its indices (and any cached frames or latents) describe the old file. Errors name the record.

:class:`FrameCache` keeps a video's decoded frames on disk, ``<directory>/<frames_key>/<k>.png`` (lossless, so the
pixels are those of a fresh decode), written once into a temporary folder that is renamed into place, so workers
racing on one video never read a partial entry. Its size grows with the distinct (video, frame set) pairs, not with
the records. Frame directories and image lists are already one file per frame and are not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Optional

import PIL.Image

from ..processing_spa3r import to_pil_rgb
from ..video import decode_frames_at

__all__ = [
    "FRAME_SET_COLUMNS",
    "LAZY_FRAMES_VERSION",
    "MEDIA_KINDS",
    "DecodeFrames",
    "FrameCache",
    "frame_set_key",
    "source_signature",
]

# Part of every frames_key: bump whenever the frames decoded for the same files and indices would change.
LAZY_FRAMES_VERSION = 1
MEDIA_KINDS = ("video", "frame_dir", "images", "none")
# The columns DecodeFrames reads; a trainer that drops columns the model does not take must keep these.
FRAME_SET_COLUMNS = ("media_kind", "media_path", "frame_files", "frame_indices", "frames_key")


def source_signature(path: str) -> tuple[str, int, int]:
    """``(path, size, mtime_ns)`` of a media file: what a frame set's key records about it."""
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def frame_set_key(kind: str, sources: Sequence[tuple[str, int, int]], indices: Sequence[int]) -> str:
    """SHA-256 hex digest naming one frame set: the media kind, each source's :func:`source_signature` and the
    sampled indices. Equal keys mean equal frames as long as the files are unchanged (a change alters size or mtime)."""
    if kind not in MEDIA_KINDS:
        raise ValueError(f"media kind must be one of {MEDIA_KINDS}, got {kind!r}")
    payload = [LAZY_FRAMES_VERSION, kind, [list(source) for source in sources], [int(i) for i in indices]]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


class FrameCache:
    """Decoded frames per frame set on disk (module docstring); ``get`` / ``put`` by ``frames_key``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)

    def _entry(self, key: str) -> str:
        if not key or os.sep in key or key.startswith("."):
            raise ValueError(f"not a frame set key: {key!r}")
        return os.path.join(self.directory, key)

    def get(self, key: str) -> Optional[list[PIL.Image.Image]]:
        """The cached frames of ``key`` in order, or ``None`` if it has no entry yet."""
        entry = self._entry(key)
        try:
            names = sorted(os.listdir(entry))  # zero-padded names: lexical order is frame order
        except FileNotFoundError:
            return None
        frames = []
        for name in names:
            with PIL.Image.open(os.path.join(entry, name)) as image:
                image.load()
                frames.append(image.copy())
        return frames

    def put(self, key: str, frames: Sequence[PIL.Image.Image]) -> None:
        """Store ``frames`` under ``key`` unless it already has an entry (another worker may have written it)."""
        entry = self._entry(key)
        if os.path.isdir(entry):
            return
        staging = tempfile.mkdtemp(prefix=f".{key}.", dir=self.directory)
        try:
            for index, frame in enumerate(frames):
                # compress_level 1: on a noisy 640x480 frame, 1.4x faster to write than PIL's default 6, 9% larger.
                frame.save(os.path.join(staging, f"{index:05d}.png"), compress_level=1)
            try:
                os.rename(staging, entry)
            except OSError:
                if not os.path.isdir(entry):  # not a lost race: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _record_name(record_id) -> str:
    return f"record {record_id!r}" if record_id not in (None, "") else "a record"


class DecodeFrames:
    """``Dataset.with_transform`` step: adds ``images_column`` (a list of PIL frames per row) from the frame-set
    columns (module docstring). ``frame_cache_dir``: keep each video's frames in a :class:`FrameCache` there."""

    def __init__(self, frame_cache_dir: Optional[str | os.PathLike] = None, images_column: str = "images"):
        self.frame_cache_dir = None if frame_cache_dir is None else os.path.abspath(os.fspath(frame_cache_dir))
        self.images_column = images_column
        self._cache = None  # opened on first use in each process

    def __getstate__(self) -> dict:
        # Pickled for DataLoader workers and hashed for the dataset's fingerprint: settings only.
        return {"frame_cache_dir": self.frame_cache_dir, "images_column": self.images_column, "_cache": None}

    def __call__(self, batch: dict) -> dict:
        missing = [column for column in FRAME_SET_COLUMNS if column not in batch]
        if missing:
            raise ValueError(
                f"the rows lack the frame-set column(s) {missing} that their frames are decoded from (got "
                f"{sorted(batch)}); keep every column: remove_unused_columns=False for a Trainer (Spa3VLMSFTTrainer "
                "sets it), and no select_columns / remove_columns of them"
            )
        if self.frame_cache_dir is not None and self._cache is None:
            self._cache = FrameCache(self.frame_cache_dir)
        count = len(batch["frames_key"])
        ids = batch.get("id") or [None] * count
        decoded: dict[str, list] = {}  # records of this batch with the same frame set share one decode
        images = []
        for row in range(count):
            key = batch["frames_key"][row]
            if batch["media_kind"][row] == "none":
                images.append([])
                continue
            if key not in decoded:
                decoded[key] = self._frames(
                    _record_name(ids[row]), batch["media_kind"][row], batch["media_path"][row],
                    list(batch["frame_files"][row]), list(batch["frame_indices"][row]), key,
                )  # fmt: skip
            images.append(list(decoded[key]))
        return {**batch, self.images_column: images}

    def _frames(self, where: str, kind: str, path, files: list, indices: list, key: str) -> list:
        from datasets import Image

        if kind not in MEDIA_KINDS:
            raise ValueError(f"{where}: media_kind must be one of {MEDIA_KINDS}, got {kind!r}")
        sources = [path] if kind == "video" else files
        try:
            current = frame_set_key(kind, [source_signature(source) for source in sources], indices)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{where}: media file not found: {error.filename}") from None
        if current != key:
            shown = sources[0] if len(sources) == 1 else f"{len(sources)} files under {os.path.dirname(sources[0])}"
            raise ValueError(
                f"{where}: {shown} changed (size or modification time) since the dataset was built; its frame indices "
                "and any cached frames or latents describe the old file(s): load the annotations again"
            )
        if kind == "video":
            frames = self._cache.get(key) if self._cache is not None else None
            if frames is None:
                try:
                    frames = decode_frames_at(path, indices)
                except (ValueError, OSError) as error:
                    raise ValueError(f"{where}: cannot read frames of {path}: {error}") from error
                if len(frames) != len(indices):
                    raise ValueError(
                        f"{where}: {path} has only {len(frames)} decodable frames, fewer than the {len(indices)} "
                        "sampled from its container's frame count when the dataset was built (a truncated file?)"
                    )
                if self._cache is not None:
                    self._cache.put(key, frames)
            return frames
        frames = []
        for file in files:
            try:
                # A frame directory is a video (RGB, as load_video_frames); listed images keep their own mode, as
                # datasets' Image feature decodes them.
                if kind == "frame_dir":
                    frames.append(to_pil_rgb(file))
                else:
                    frames.append(Image().decode_example({"path": file, "bytes": None}))
            except (ValueError, OSError, SyntaxError) as error:  # PIL reports some broken files as SyntaxError
                raise ValueError(f"{where}: cannot read image {file}: {error}") from error
        return frames
