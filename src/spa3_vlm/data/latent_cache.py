"""A cache of Spa3R latents for SFT, one entry per distinct frame set.

Spa3R is frozen during instruction tuning, so its output for a sample depends only on the sample's frames: compute
it once per frame set instead of in every training step. :func:`add_spatial_latents` returns the TRL dataset
(``images`` + ``messages``) with

* ``frames_key`` (a stored column) naming each record's frame set: kept where the rows already have it (the lazy
  VSI-590K rows: the video's path, size and modification time plus the frame indices, see
  :mod:`spa3_vlm.data.lazy_frames`), else :func:`frames_key`, a SHA-256 of the frames' decoded content, added by one
  ``datasets.map``;
* ``spatial_latents`` ``[num_queries, C]`` (float32), looked up by ``frames_key`` when a row is read
  (:class:`LatentLookup`, a row step: :mod:`spa3_vlm.data.row_transforms`): exactly what
  ``Spa3VLMForConditionalGeneration`` computes from the processor's ``geometry_pixel_values``.

``Spa3VLMSFTCollator`` then feeds ``spatial_latents`` instead of frames (``spatial_inputs="auto"``) and the model
skips Spa3R; the frames are still read for Qwen's vision tower.

Storage: ``<cache_dir>/spa3r_latents/<fingerprint>/latents.npy`` ``[K, Q, C]`` float32 (memory-mapped when read) and
``keys.json`` (the K distinct keys in row order), ``K * Q * C * 4`` bytes. It grows with the distinct frame sets,
not the records: VSI-590K's ~590K questions over some thousands of videos need one entry per video (about 768 KB each
at the paper's 256 x 768), where a latent per record would need ~450 GB. The encoder runs once per distinct frame set,
reading one record of each (``num_workers`` DataLoader workers decode them).

The fingerprint covers the distinct keys, a digest of the encoder's weights and the geometry preprocessing: a
store is reused only for the same frame sets, encoder and preprocessing, whichever dataset asks.

Evaluation meets its scenes one at a time and may stop at any point, so :class:`SceneLatentStore` keeps one file per
frame set instead (``<cache_dir>/spa3r_scene_latents/<fingerprint>/<frames_key>.safetensors``, each written
atomically, the fingerprint without the keys): a rerun or a resumed run reads a scene's latents instead of running
the encoder again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

from .row_transforms import add_row_transform, raw_column, row_columns

__all__ = [
    "LATENT_CACHE_VERSION",
    "LatentLookup",
    "SceneLatentStore",
    "add_spatial_latents",
    "encoder_digest",
    "frames_key",
]

# Part of the store fingerprint: bump whenever the stored latents would change for the same inputs.
LATENT_CACHE_VERSION = 2


def _frame_bytes(frame: Any) -> tuple[bytes, bytes]:
    """(header, content) of one frame for hashing; decoded pixels, whatever the container."""
    import PIL.Image

    if isinstance(frame, dict) and ("bytes" in frame or "path" in frame):  # datasets Image(decode=False)
        import io

        data = frame.get("bytes")
        if data is None:
            with open(frame["path"], "rb") as handle:
                data = handle.read()
        frame = PIL.Image.open(io.BytesIO(data))
    if isinstance(frame, PIL.Image.Image):
        frame = frame.convert("RGB") if frame.mode not in ("RGB", "RGBA", "L") else frame
        return f"pil:{frame.mode}:{frame.size}".encode(), frame.tobytes()
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    if isinstance(frame, np.ndarray):
        array = np.ascontiguousarray(frame)
        return f"array:{array.dtype.str}:{array.shape}".encode(), array.tobytes()
    raise ValueError(f"cannot hash a frame of type {type(frame).__name__}; expected a PIL image, array or tensor")


def frames_key(frames: Sequence[Any]) -> str:
    """SHA-256 hex digest of a sample's frames (order matters): equal keys <=> equal pixels and sizes."""
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise ValueError(f"frames must be a list of frames, got {type(frames).__name__}")
    digest = hashlib.sha256(f"frames:{len(frames)}".encode())
    for frame in frames:
        header, content = _frame_bytes(frame)
        digest.update(len(header).to_bytes(8, "little") + header)
        digest.update(len(content).to_bytes(8, "little") + content)
    return digest.hexdigest()


def encoder_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, values): identifies the encoder's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _store_settings(base, geometry) -> list:
    """What the stored latents depend on besides the frames: format version, encoder weights, what the adapter
    reads (``spatial_source``), preprocessing."""
    return [
        LATENT_CACHE_VERSION,
        encoder_digest(base.spa3r),
        base.config.spatial_source,
        {k: v for k, v in geometry.to_dict().items() if k != "auto_map"},
    ]


def _base_model(model):
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(model, "spa3r", None) is None or not hasattr(model, "compute_spatial_latents"):
        raise ValueError(
            f"add_spatial_latents needs a Spa3-VLM with its Spa3R encoder (spatial_branch=True), got "
            f"{type(model).__name__}"
        )
    return model


def _record_name(ids: Optional[list], index: int) -> str:
    return f"record {ids[index]!r}" if ids is not None else f"record #{index}"


class LatentLookup:
    """Row step: adds ``latents_column`` (``[Q, C]`` float32 per row) from the store at ``directory`` by each row's
    ``key_column``. Pickles (DataLoader workers) and hashes (the dataset's fingerprint) as its settings; the store is
    opened, memory-mapped, on first use in each process."""

    def __init__(self, directory: str, key_column: str = "frames_key", latents_column: str = "spatial_latents"):
        self.directory = directory
        self.key_column = key_column
        self.latents_column = latents_column
        self._latents, self._rows = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_latents": None, "_rows": None}

    def _open(self) -> None:
        with open(os.path.join(self.directory, "keys.json")) as handle:
            self._rows = {key: row for row, key in enumerate(json.load(handle))}
        self._latents = np.load(os.path.join(self.directory, "latents.npy"), mmap_mode="r")

    def __call__(self, batch: dict) -> dict:
        if self.key_column not in batch:
            raise ValueError(
                f"the rows lack the {self.key_column!r} column their cached Spa3R latents are looked up by (got "
                f"{sorted(batch)}); keep every column: remove_unused_columns=False for a Trainer"
            )
        if self._latents is None:
            self._open()
        latents = []
        for index, key in enumerate(batch[self.key_column]):
            row = self._rows.get(key)
            if row is None:
                name = f"record {batch['id'][index]!r}" if "id" in batch else f"row {index} of the batch"
                raise ValueError(
                    f"{name}: {self.key_column} {key!r} has no entry in the latent store {self.directory}; run "
                    "add_spatial_latents on the dataset the rows come from"
                )
            latents.append(np.array(self._latents[row]))  # a copy: the collator's tensors must not pin the mapping
        return {**batch, self.latents_column: latents}


class _GeometryInputs:
    """DataLoader collate function: rows -> (their keys, the processor's geometry tensors ``[V, 3, H, W]``)."""

    def __init__(self, geometry, images_column: str, key_column: str):
        self.geometry, self.images_column, self.key_column = geometry, images_column, key_column

    def __call__(self, rows: list[dict]) -> tuple[list[str], list[torch.Tensor]]:
        keys, tensors = [], []
        for row in rows:
            frames = list(row[self.images_column])
            if not frames:
                name = f"record {row['id']!r}" if row.get("id") is not None else f"the record of {row[self.key_column]}"
                raise ValueError(f"{name}: no frames in {self.images_column!r}; Spa3R latents need at least one frame")
            keys.append(row[self.key_column])
            tensors.append(self.geometry.to_tensor(self.geometry.resize_sample(frames)))
        return keys, tensors


def _with_content_keys(dataset, images_column, key_column, fingerprint, batch_size, load_from_cache_file, desc):
    """``dataset`` plus a ``key_column`` of :func:`frames_key` (one ``datasets.map`` over the decoded frames)."""
    ids = raw_column(dataset, "id") if "id" in dataset.column_names else None

    def keys(batch: dict, indices: list[int]) -> dict:
        out = []
        for index, frames in zip(indices, batch[images_column], strict=True):
            if not frames:
                raise ValueError(
                    f"{_record_name(ids, index)}: no frames in {images_column!r}; Spa3R latents need at least one frame"
                )
            out.append(frames_key(frames))
        return {key_column: out}

    return dataset.map(
        keys,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        new_fingerprint=fingerprint,
        load_from_cache_file=load_from_cache_file,
        desc=None if desc is None else f"{desc}: frame keys",
    )


def _write_store(directory, dataset, first_rows, base, geometry, images_column, key_column, batch_size,
                 num_workers, desc) -> None:  # fmt: skip
    """Encode one record per distinct frame set and write the store, atomically (a folder renamed into place)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    try:
        # Written row by row into a memory-mapped file (the store may be larger than memory), shaped by the first
        # batch: [Q, C] latents, or [V * N, C] backbone tokens for spatial_source="backbone".
        latents = None
        loader = DataLoader(
            dataset.select(first_rows), batch_size=batch_size, num_workers=num_workers,
            collate_fn=_GeometryInputs(geometry, images_column, key_column),
        )  # fmt: skip
        keys: list[str] = []
        for batch_keys, tensors in tqdm(loader, desc=desc, disable=desc is None, unit="batch"):
            encoded = base.compute_spatial_latents(tensors).float().cpu().numpy()
            if latents is None:
                latents = np.lib.format.open_memmap(
                    os.path.join(staging, "latents.npy"), mode="w+", dtype=np.float32,
                    shape=(len(first_rows), *encoded.shape[1:]),
                )  # fmt: skip
            elif encoded.shape[1:] != latents.shape[1:]:
                raise ValueError(
                    f"frame sets give spatial inputs of shape {encoded.shape[1:]} and {latents.shape[1:]}: with "
                    "spatial_source='backbone' every record needs the same frame count and size"
                )
            latents[len(keys) : len(keys) + len(batch_keys)] = encoded
            keys += batch_keys
        latents.flush()
        del latents
        with open(os.path.join(staging, "keys.json"), "w") as handle:
            json.dump(keys, handle)
        if os.path.isdir(directory):  # recomputing (load_from_cache_file=False)
            shutil.rmtree(directory)
        os.rename(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def add_spatial_latents(
    dataset,
    model,
    processor,
    batch_size: int = 8,
    images_column: str = "images",
    latents_column: str = "spatial_latents",
    key_column: str = "frames_key",
    load_from_cache_file: bool = True,
    desc: Optional[str] = "Spa3R latents",
    cache_dir: Optional[str | os.PathLike] = None,
    num_workers: int = 0,
):
    """``dataset`` with a stored ``frames_key`` column and ``spatial_latents`` ``[Q, C]`` added when a row is read
    (module docstring).

    Args:
        dataset: a ``datasets.Dataset`` whose rows have an ``images`` column (one list of frames per record), stored
            or added by its transform (e.g. :func:`~spa3_vlm.data.vsi590k.load_vsi590k`'s lazy rows).
        model: a ``Spa3VLMForConditionalGeneration`` (or its PEFT wrapper) with ``spatial_branch=True``; its
            frozen ``spa3r`` encoder runs on the model's device and dtype.
        processor: the ``Spa3VLMProcessor`` used for training; its ``geometry_image_processor`` prepares frames
            exactly as in an uncached step.
        batch_size: distinct frame sets encoded together (and records per map batch for content keys).
        load_from_cache_file: reuse a store (and the content keys' map) computed before for the same inputs.
        cache_dir: the store's parent folder (default: ``datasets``' cache, ``HF_DATASETS_CACHE``).
        num_workers: DataLoader workers that read (decode) the frame sets to encode.

    Raises ``ValueError`` naming the record for a record without frames.
    """
    import datasets

    base = _base_model(model)
    if len(dataset) == 0:
        raise ValueError("the dataset has no records to compute Spa3R latents for")
    if key_column not in dataset.column_names:
        columns = row_columns(dataset)
        if images_column not in columns:
            raise ValueError(f"the dataset has no {images_column!r} column (columns: {columns})")
    geometry = processor.geometry_image_processor
    settings = _store_settings(base, geometry)
    if key_column not in dataset.column_names:
        source = json.dumps([getattr(dataset, "_fingerprint", None), images_column, key_column], default=str)
        fingerprint = "frames-key-" + hashlib.sha256(source.encode()).hexdigest()[:32]
        dataset = _with_content_keys(
            dataset, images_column, key_column, fingerprint, batch_size, load_from_cache_file, desc
        )

    keys = raw_column(dataset, key_column)
    without = next((index for index, key in enumerate(keys) if key is None), None)  # a lazy row without media
    if without is not None:
        ids = raw_column(dataset, "id") if "id" in dataset.column_names else None
        raise ValueError(
            f"{_record_name(ids, without)}: no frames in {images_column!r}; Spa3R latents need at least one frame"
        )
    first_rows: dict[str, int] = {}
    for index, key in enumerate(keys):
        first_rows.setdefault(key, index)
    distinct = hashlib.sha256(json.dumps(sorted(first_rows)).encode()).hexdigest()
    store = hashlib.sha256(json.dumps([*settings, distinct], sort_keys=True, default=str).encode()).hexdigest()[:32]
    root = os.fspath(cache_dir) if cache_dir is not None else datasets.config.HF_DATASETS_CACHE
    directory = os.path.join(os.path.abspath(root), "spa3r_latents", store)
    if not (load_from_cache_file and os.path.isfile(os.path.join(directory, "keys.json"))):
        _write_store(directory, dataset, list(first_rows.values()), base, geometry, images_column, key_column,
                     batch_size, num_workers, desc)  # fmt: skip
    return add_row_transform(dataset, LatentLookup(directory, key_column, latents_column))


class SceneLatentStore:
    """Spa3R latents ``[1, Q, C]`` of single frame sets on disk, one file per :func:`frames_key`, added as scenes are
    encoded (module docstring). ``get`` / ``put``; ``hits`` and ``misses`` count the lookups.

    Args:
        cache_dir: the store's parent folder.
        model: the Spa3-VLM (or its PEFT wrapper) whose frozen ``spa3r`` encoder computes the latents.
        processor: its ``Spa3VLMProcessor`` (the geometry preprocessing is part of the fingerprint).
    """

    def __init__(self, cache_dir: str | os.PathLike, model, processor):
        settings = _store_settings(_base_model(model), processor.geometry_image_processor)
        fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]
        self.directory = os.path.join(os.path.abspath(os.fspath(cache_dir)), "spa3r_scene_latents", fingerprint)
        os.makedirs(self.directory, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, key: str) -> str:
        if not (isinstance(key, str) and key and all(c in "0123456789abcdef" for c in key)):
            raise ValueError(f"not a frames_key (a hex digest): {key!r}")
        return os.path.join(self.directory, f"{key}.safetensors")

    def get(self, key: str) -> Optional[torch.Tensor]:
        """The stored latents of ``key`` (float32, CPU), or ``None`` when it has no entry yet."""
        from safetensors.torch import load_file

        path = self._path(key)
        if not os.path.isfile(path):
            self.misses += 1
            return None
        try:
            latents = load_file(path)["latents"]
        except Exception as error:  # safetensors raises several types for a truncated or foreign file
            raise ValueError(f"unreadable latent cache entry {path} ({error}); delete it to recompute it") from error
        self.hits += 1
        return latents

    def put(self, key: str, latents: torch.Tensor) -> None:
        """Store ``latents`` ``[1, Q, C]`` under ``key``, atomically (a reader never sees half a file)."""
        from safetensors.torch import save_file

        path = self._path(key)
        if latents.ndim != 3 or latents.shape[0] != 1:
            raise ValueError(f"scene latents must be [1, Q, C], got {tuple(latents.shape)}")
        handle, staging = tempfile.mkstemp(prefix=f".{key}.", dir=self.directory)
        os.close(handle)
        try:
            save_file({"latents": latents.detach().float().cpu().contiguous()}, staging)
            os.replace(staging, path)
        finally:
            if os.path.exists(staging):
                os.remove(staging)
