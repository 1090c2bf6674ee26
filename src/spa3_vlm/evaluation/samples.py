"""The questions of an evaluation run: VSI-Bench records (local files or the Hub dataset) and SynthRooms-QA, each as an
:class:`EvalSample` (record, prompt, how to load its frames), plus the frames of an lmms-eval request."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import PIL.Image

from ..processing_spa3_vlm import sample_frame_indices
from ..vsibench import (
    NUMERICAL_TYPES,
    QUESTION_TYPES,
    build_vsibench_prompt,
)
from .scoring import vsibench_scores

__all__ = [
    "DEFAULT_NUM_FRAMES",
    "VSIBENCH_HUB_ID",
    "EvalSample",
    "frames_from_visuals",
    "id_key",
    "load_synthrooms_qa_samples",
    "load_vsibench_records",
    "load_vsibench_samples",
    "missing_videos",
    "scoring_record",
    "validate_records",
]

DEFAULT_NUM_FRAMES = 32
VSIBENCH_HUB_ID = "nyu-visionx/VSI-Bench"
REQUIRED_FIELDS = ("id", "question_type", "question", "ground_truth")


# ---------------------------------------------------------------------------------------------- frames


def frames_from_visuals(visuals: Any, num_frames: int = DEFAULT_NUM_FRAMES) -> list[PIL.Image.Image]:
    """What an lmms-eval doc gives (a video path, images, or a list of them) -> the frames shown to the model.

    A video (file or frame folder) is sampled to ``num_frames`` with the reference rule; images are kept as
    they are, in order. One video per question, as in VSI-Bench; mixing videos with more visuals is refused.
    """
    from ..video import load_video_frames

    items = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    if not items:
        raise ValueError("the request has no visuals; VSI-Bench questions need the scene video (one path)")
    videos = [item for item in items if isinstance(item, (str, os.PathLike))]
    if videos:
        if len(items) != 1:
            raise ValueError(
                f"expected one video path per question, got {len(videos)} path(s) among {len(items)} visuals"
            )
        return load_video_frames(videos[0], num_frames)
    frames = []
    for index, item in enumerate(items):
        if isinstance(item, PIL.Image.Image):
            frames.append(item.convert("RGB"))
        elif isinstance(item, np.ndarray) and item.ndim == 3:
            frames.append(PIL.Image.fromarray(item).convert("RGB"))
        else:
            raise ValueError(
                f"visual #{index} is a {type(item).__name__}; expected a video path, a PIL image or an HxWx3 array"
            )
    return frames


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class EvalSample:
    """One question: its VSI-Bench record, the prompt text, and how to get its frames.

    ``load_frames(num_frames)`` returns the frames shown to the model (sampled with the reference rule).
    ``video`` is the video path for VSI-Bench (``None`` for SynthRooms-QA, whose frames are in the dataset).
    """

    record: Mapping[str, Any]
    prompt: str
    load_frames: Callable[[int], list]
    video: Optional[str] = None

    @property
    def id(self):
        return id_key(self.record["id"])


def id_key(value: Any):
    """Ids are str or int (VSI-Bench uses ints); numpy ints become Python ints so JSON round-trips match."""
    if isinstance(value, bool):
        raise ValueError(f"id must be a string or an int, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"id must be a string or an int, got {value!r}")


def scoring_record(record: Mapping[str, Any], prediction: Optional[str]) -> dict:
    return {
        "id": id_key(record["id"]),
        "question_type": record["question_type"],
        "ground_truth": record["ground_truth"],
        "options": record.get("options"),
        "prediction": prediction,
    }


def validate_records(records: Sequence[Mapping[str, Any]], source: str, fields: Sequence[str] = REQUIRED_FIELDS) -> None:
    """Check a dataset before any generation: fields, known question types, unique ids, well-formed answers."""
    if not records:
        raise ValueError(f"{source}: no records")
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"{source}: record #{index} is a {type(record).__name__}, expected a mapping")
        missing = [name for name in fields if name not in record or record[name] is None]
        if missing:
            raise ValueError(f"{source}: record #{index} (id {record.get('id')!r}) lacks field(s) {missing}")
        try:
            id_key(record["id"])
        except ValueError as error:
            raise ValueError(f"{source}: record #{index}: {error}") from None
    unknown = Counter(record["question_type"] for record in records if record["question_type"] not in QUESTION_TYPES)
    if unknown:
        raise ValueError(
            f"{source}: {sum(unknown.values())} record(s) have unknown question types {dict(unknown)}; expected "
            f"one of {list(QUESTION_TYPES)}"
        )
    counts = Counter(id_key(record["id"]) for record in records)
    duplicates = [record_id for record_id, count in counts.items() if count > 1]
    if duplicates:
        raise ValueError(f"{source}: {len(duplicates)} id(s) occur more than once, e.g. {duplicates[:5]}")
    # Options / ground-truth formats: the metric's own validation on empty predictions.
    try:
        vsibench_scores([scoring_record(record, None) for record in records])
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _prompt(record: Mapping[str, Any]) -> str:
    options = record.get("options")
    if record["question_type"] in NUMERICAL_TYPES:
        options = None  # VSI-Bench stores null/empty options for numerical questions
    return build_vsibench_prompt(record["question"], record["question_type"], options)


def _read_records_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        records = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}: line {number} is not valid JSON ({error})") from None
        return records
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    raise ValueError(f"{path}: unsupported records file type {suffix!r}; expected .parquet, .jsonl or .json")


def _find_records_files(root: Path, split: str) -> list[Path]:
    """Local VSI-Bench record files: ``<split>-*.parquet`` (the Hub layout), else ``*.parquet`` / ``*.jsonl``."""
    for folder in (root, root / "full", root / "data"):
        if not folder.is_dir():
            continue
        for pattern in (f"{split}-*.parquet", f"{split}.parquet", f"{split}*.jsonl"):
            found = sorted(folder.glob(pattern))
            if found:
                return found
    for pattern in ("*.parquet", "*.jsonl"):
        found = sorted(root.glob(pattern))
        if len(found) > 1:
            raise ValueError(
                f"{root} holds several record files {[p.name for p in found]} and none is named {split}-*: pass "
                "--records FILE"
            )
        if found:
            return found
    return []


def load_vsibench_records(
    data_root: Optional[str] = None,
    records_path: Optional[str] = None,
    split: str = "test",
    hub_config: str = "full",
) -> tuple[list[dict], str]:
    """VSI-Bench records and where they came from.

    Order of preference: ``records_path`` (parquet / jsonl / json); record files in ``data_root``
    (``test-00000-of-00001.parquet`` as on the Hub, also under ``full/`` or ``data/``); else
    ``datasets.load_dataset("nyu-visionx/VSI-Bench", hub_config, split=split)`` (needs the Hub).
    """
    if records_path is not None:
        path = Path(records_path)
        if not path.is_file():
            raise FileNotFoundError(f"records file not found: {path}")
        return _read_records_file(path), str(path)
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"--data_root folder not found: {root}")
        files = _find_records_files(root, split)
        if files:
            return [record for path in files for record in _read_records_file(path)], ", ".join(map(str, files))
    try:
        import datasets

        dataset = datasets.load_dataset(VSIBENCH_HUB_ID, hub_config, split=split)
    except Exception as error:  # offline, no access, unknown config: all mean "no records"
        raise ValueError(
            f"no VSI-Bench record file under {data_root!r} and {VSIBENCH_HUB_ID} ({hub_config}/{split}) could not be "
            f"loaded ({type(error).__name__}: {error}); put test-00000-of-00001.parquet in --data_root or pass "
            "--records FILE"
        ) from error
    columns = [c for c in dataset.column_names if c in (*REQUIRED_FIELDS, "options", "dataset", "scene_name")]
    return dataset.select_columns(columns).to_list(), f"{VSIBENCH_HUB_ID}:{hub_config}/{split}"


def _video_loader(path: str) -> Callable[[int], list]:
    def load(num_frames: int) -> list:
        from ..video import load_video_frames

        return load_video_frames(path, num_frames)

    return load


def load_vsibench_samples(
    data_root: Optional[str],
    records_path: Optional[str] = None,
    split: str = "test",
    hub_config: str = "full",
) -> tuple[list[EvalSample], str]:
    """VSI-Bench questions with their videos at ``<data_root>/<dataset>/<scene_name>.mp4``."""
    if data_root is None:
        raise ValueError(
            "--data_root is required for vsibench: the folder holding the videos as <dataset>/<scene_name>.mp4 "
            "(arkitscenes/, scannet/, scannetpp/ unpacked from the dataset's zip files)"
        )
    records, source = load_vsibench_records(data_root, records_path, split, hub_config)
    validate_records(records, source, fields=(*REQUIRED_FIELDS, "dataset", "scene_name"))
    root = Path(data_root)
    samples = []
    for record in records:
        video = str(root / str(record["dataset"]) / f"{record['scene_name']}.mp4")
        samples.append(EvalSample(record=record, prompt=_prompt(record), load_frames=_video_loader(video), video=video))
    return samples, source


def missing_videos(samples: Iterable[EvalSample]) -> list[str]:
    """Video paths of ``samples`` that do not exist (checked once per video)."""
    paths = sorted({sample.video for sample in samples if sample.video is not None})
    return [path for path in paths if not os.path.isfile(path)]


def _dataset_frames(images_column, row: int) -> Callable[[int], list]:
    def load(num_frames: int) -> list:
        images = images_column[row]["images"]
        if not images:
            raise ValueError(f"SynthRooms-QA row {row} has no frames")
        return [images[index].convert("RGB") for index in sample_frame_indices(len(images), num_frames)]

    return load


def load_synthrooms_qa_samples(
    data_root: Optional[str] = None,
    split: str = "test",
    *,
    num_scenes: int = 8,
    frames_per_scene: int = 8,
    image_size: tuple[int, int] = (84, 112),
    seed: int = 0,
    per_scene: Optional[int] = 10,
    cache_dir: Optional[str] = None,
) -> tuple[list[EvalSample], str]:
    """SynthRooms-QA questions, frames from the dataset's ``images`` column.

    ``data_root``: a folder written by ``Dataset.save_to_disk`` (a ``DatasetDict`` is indexed by ``split``);
    without it the split is generated with :func:`~spa3_vlm.data.synthrooms_qa.build_synthrooms_qa` (cached).
    """
    import datasets

    if data_root is not None:
        if not Path(data_root).is_dir():
            raise FileNotFoundError(f"--data_root folder not found: {data_root}")
        dataset = datasets.load_from_disk(data_root)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{data_root} has splits {list(dataset)}, not {split!r}; pass --split")
            dataset = dataset[split]
        source = f"{data_root} ({split})"
    else:
        from ..data.synthrooms_qa import build_synthrooms_qa

        dataset = build_synthrooms_qa(
            num_scenes, frames_per_scene, tuple(image_size), seed, split, per_scene=per_scene, cache_dir=cache_dir
        )
        source = (
            f"SynthRooms-QA {split} (scenes={num_scenes}, frames={frames_per_scene}, image_size={tuple(image_size)}, "
            f"seed={seed}, per_scene={per_scene})"
        )
    if "images" not in dataset.column_names:
        raise ValueError(f"{source}: the dataset has no 'images' column (columns: {dataset.column_names})")
    record_columns = [c for c in dataset.column_names if c in (*REQUIRED_FIELDS, "options", "dataset", "scene_name")]
    records = dataset.select_columns(record_columns).to_list()
    validate_records(records, source)
    images_column = dataset.select_columns(["images"])
    samples = [
        EvalSample(record=record, prompt=_prompt(record), load_frames=_dataset_frames(images_column, row))
        for row, record in enumerate(records)
    ]
    return samples, source
