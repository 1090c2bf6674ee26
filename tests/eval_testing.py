"""Helpers for the evaluation-runner and lmms-eval plugin tests: tiny checkpoints, a fake VSI-Bench folder, runner
command lines."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_DIR = REPO_ROOT / "hub_configs" / "spa3-vlm-tiny"

OPTIONS = ["A. sofa", "B. chair", "C. table", "D. bed"]
# One question per VSI-Bench question type: (question_type, options, ground truth, scene).
FAKE_QUESTIONS = [
    ("object_counting", None, "3", "long"),
    ("object_abs_distance", None, "2.0", "short"),
    ("object_size_estimation", None, "80", "long"),
    ("room_size_estimation", None, "20", "short"),
    ("object_rel_distance", OPTIONS, "B", "long"),
    ("object_rel_direction_easy", OPTIONS[:2], "A", "short"),
    ("object_rel_direction_medium", OPTIONS[:3], "C", "long"),
    ("object_rel_direction_hard", OPTIONS, "D", "short"),
    ("route_planning", OPTIONS, "A", "long"),
    ("obj_appearance_order", OPTIONS, "C", "short"),
]
# scene -> (dataset folder, scene name, number of frames)
FAKE_SCENES = {"long": ("scannet", "scene0001_00", 100), "short": ("arkitscenes", "41069025", 10)}


def _randomise_head(model) -> None:
    """Random weights that give varied answers: untied head with unit-variance rows (a tied tiny head just
    repeats the last input token), and a non-zero adapter output so the geometry branch changes the answer."""
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
        adaptor = getattr(model, "geometry_adaptor", None)
        if adaptor is not None:
            adaptor[-1].weight.normal_(0.0, 0.5)


def save_tiny_spa3_vlm(folder: Path, seed: int = 0) -> Path:
    """A random tiny Spa3-VLM (hub_configs/spa3-vlm-tiny) with its processor, saved to ``folder``."""
    from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration, Spa3VLMProcessor

    config = Spa3VLMConfig.from_json_file(TINY_DIR / "config.json")
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = Spa3VLMForConditionalGeneration(config).eval()
    _randomise_head(model)
    model.save_pretrained(folder)
    Spa3VLMProcessor.from_pretrained(TINY_DIR).save_pretrained(folder)
    return folder


def save_tiny_qwen(folder: Path, seed: int = 0) -> Path:
    """A random tiny plain Qwen2.5-VL (model_type qwen2_5_vl) with the tiny processor, saved to ``folder``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from spa3_vlm import Spa3VLMProcessor
    from spa3_vlm_testing import qwen_values

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values(vocab_size=2000))).eval()
    _randomise_head(model)
    model.save_pretrained(folder)
    Spa3VLMProcessor.from_pretrained(TINY_DIR).save_pretrained(folder)
    return folder


def frame_color(index: int) -> tuple[int, int, int]:
    """Frame ``index`` (< 100) of a fake video is this flat colour: red = ones digit, green = tens digit."""
    return 20 + 20 * (index % 10), 20 + 20 * (index // 10), 128


def frame_index(frame) -> int:
    """Inverse of :func:`frame_color` for a decoded frame (codec error stays well below the 20-level step)."""
    pixels = np.asarray(frame, dtype=np.float64)
    return round((pixels[..., 0].mean() - 20) / 20) + 10 * round((pixels[..., 1].mean() - 20) / 20)


def write_index_video(path: Path, num_frames: int, size=(32, 24)) -> Path:
    """An mp4 whose frame i has colour ``frame_color(i)``, so decoded frames tell which index they are."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            frame = np.empty((height, width, 3), dtype=np.uint8)
            frame[...] = frame_color(index)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def fake_records() -> list[dict]:
    """VSI-Bench records (int ids, Hub field names) over the two fake scenes."""
    records = []
    for index, (question_type, options, answer, scene) in enumerate(FAKE_QUESTIONS):
        dataset, scene_name, _ = FAKE_SCENES[scene]
        records.append(
            {
                "id": index,
                "dataset": dataset,
                "scene_name": scene_name,
                "question_type": question_type,
                "question": f"Question {index}: {question_type.replace('_', ' ')}?",
                "options": options,
                "ground_truth": answer,
            }
        )
    return records


def write_fake_vsibench(root: Path, records: list[dict] | None = None) -> Path:
    """``root`` in the nyu-visionx/VSI-Bench layout: ``test-00000-of-00001.parquet``, a jsonl copy of the
    records (``records.jsonl``) and ``<dataset>/<scene_name>.mp4`` videos (100 and 10 frames)."""
    records = fake_records() if records is None else records
    root.mkdir(parents=True, exist_ok=True)
    for dataset, scene_name, num_frames in FAKE_SCENES.values():
        write_index_video(root / dataset / f"{scene_name}.mp4", num_frames)
    pq.write_table(pa.Table.from_pylist(records), root / "test-00000-of-00001.parquet")
    with open(root / "records.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return root


class RecordingGenerator:
    """Stands in for ``Spa3VLMGenerator``: records every batch and answers from ``answers`` (question text ->
    answer, matched inside the prompt) or with a fixed string."""

    def __init__(self, answers: dict[str, str] | None = None, default: str = "A"):
        self.answers = answers or {}
        self.default = default
        self.calls: list[list[tuple[list, str]]] = []

    @property
    def requests(self) -> list[tuple[list, str]]:
        return [request for call in self.calls for request in call]

    def generate(self, batch):
        self.calls.append([(list(frames), prompt) for frames, prompt in batch])
        out = []
        for _, prompt in batch:
            found = [answer for question, answer in self.answers.items() if question in prompt]
            out.append(found[0] if found else self.default)
        return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def run_main(argv, generator=None):
    """The runner's ``main`` on ``argv`` (paths allowed), with ``generator`` standing in for the model if given."""
    from spa3_vlm.evaluation.runner import main

    return main([str(a) for a in argv], generator=generator)


def synth_args(synth_dir, output, *extra):
    return ["--dataset", "synthrooms-qa", "--data_root", synth_dir, "--output", output, "--no_progress", *extra]


def vsibench_args(vsibench_dir, output, *extra):
    return ["--dataset", "vsibench", "--data_root", vsibench_dir, "--output", output, "--no_progress", *extra]
