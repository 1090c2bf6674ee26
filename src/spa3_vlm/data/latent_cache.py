"""A cache of Spa3R latents next to the SFT records.

Spa3R is frozen during instruction tuning, so its output for a sample depends only on the sample's frames:
compute it once instead of in every training step. :func:`add_spatial_latents` runs one ``datasets.map`` that
adds two columns to a TRL dataset (``images`` + ``messages``):

* ``frames_key``: a SHA-256 of the frames' decoded content (mode, size and pixels of every frame, in order);
* ``spatial_latents``: the frozen encoder's latents ``[num_queries, C]`` (float32) for those frames, exactly
  what ``Spa3VLMForConditionalGeneration`` computes from the processor's ``geometry_pixel_values``.

Records with identical frame sets (SynthRooms-QA asks ~10 questions per scene video) share one encoder run:
latents are memoised by ``frames_key`` across the whole map. ``Spa3VLMSFTCollator`` then feeds
``spatial_latents`` instead of frames (``spatial_inputs="auto"``), and the model skips Spa3R.

Storage: the latents are stored per record, ``num_queries * C * 4`` bytes each (tiny encoder 16 x 64: 4 KB; the
paper's 256 x 768: 768 KB, so VSI-590K's ~590K records would need ~450 GB even though its videos are far fewer).
The encoder runs once per distinct frame set either way; for corpora that size a table keyed by ``frames_key``
would be the next step, or compute the latents in the step (``--cache_latents false`` in ``train/sft_vlm.py``).

The map's fingerprint covers the input dataset's fingerprint, a digest of the encoder's weights and the
geometry preprocessing, so ``datasets`` reuses a cached result only for the same frames, encoder and
preprocessing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["LATENT_CACHE_VERSION", "add_spatial_latents", "encoder_digest", "frames_key"]

# Part of the map fingerprint: bump whenever the stored latents would change for the same inputs.
LATENT_CACHE_VERSION = 1


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


def _base_model(model):
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(model, "spa3r", None) is None or not hasattr(model, "compute_spatial_latents"):
        raise ValueError(
            f"add_spatial_latents needs a Spa3-VLM with its Spa3R encoder (spatial_branch=True), got "
            f"{type(model).__name__}"
        )
    return model


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
):
    """``dataset`` with ``frames_key`` and ``spatial_latents`` ``[Q, C]`` columns (module docstring).

    Args:
        dataset: a ``datasets.Dataset`` with an ``images`` column (one list of frames per record).
        model: a ``Spa3VLMForConditionalGeneration`` (or its PEFT wrapper) with ``spatial_branch=True``; its
            frozen ``spa3r`` encoder runs on the model's device and dtype.
        processor: the ``Spa3VLMProcessor`` used for training; its ``geometry_image_processor`` prepares frames
            exactly as in an uncached step.
        batch_size: records per map batch; new frame sets of one batch are encoded together.

    Raises ``ValueError`` naming the record for a record without frames.
    """
    import datasets

    base = _base_model(model)
    if images_column not in dataset.column_names:
        raise ValueError(f"the dataset has no {images_column!r} column (columns: {dataset.column_names})")
    geometry = processor.geometry_image_processor
    spa3r_config = base.config.spa3r_config
    shape = (spa3r_config.num_queries, spa3r_config.hidden_size)
    fingerprint_source = json.dumps(
        [
            LATENT_CACHE_VERSION,
            getattr(dataset, "_fingerprint", None),
            encoder_digest(base.spa3r),
            {k: v for k, v in geometry.to_dict().items() if k != "auto_map"},
            images_column,
            latents_column,
            key_column,
        ],
        sort_keys=True,
        default=str,
    )
    fingerprint = "spa3r-latents-" + hashlib.sha256(fingerprint_source.encode()).hexdigest()[:32]
    features = dataset.features.copy()
    features[key_column] = datasets.Value("string")
    features[latents_column] = datasets.Array2D(shape=shape, dtype="float32")
    memo: dict[str, np.ndarray] = {}
    ids = dataset["id"] if "id" in dataset.column_names else None

    def encode(batch: dict, indices: list[int]) -> dict:
        keys, todo = [], {}
        for index, frames in zip(indices, batch[images_column]):
            if not frames:
                name = f"record {ids[index]!r}" if ids is not None else f"record #{index}"
                raise ValueError(f"{name}: no frames in {images_column!r}; Spa3R latents need at least one frame")
            key = frames_key(frames)
            keys.append(key)
            if key not in memo and key not in todo:
                todo[key] = geometry.to_tensor(geometry.resize_sample(list(frames)))
        if todo:
            latents = base.compute_spatial_latents(list(todo.values()))
            for key, value in zip(todo, latents.float().cpu().numpy()):
                memo[key] = value
        return {key_column: keys, latents_column: [memo[key] for key in keys]}

    return dataset.map(
        encode,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        features=features,
        new_fingerprint=fingerprint,
        load_from_cache_file=load_from_cache_file,
        desc=desc,
    )
