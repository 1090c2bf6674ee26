"""VSI-Bench evaluation runner: generate answers with Spa3-VLM or plain Qwen2.5-VL, resume, score, report.

Protocol (the reference's lmms-eval run, see ``docs/evaluation.md``):

* frames: up to ``num_frames`` (32) per question, all frames if the video has fewer, else
  ``linspace(0, n - 1, 32)`` cast to int (:func:`sample_frame_indices`);
* chat: system message "You are a helpful assistant.", one user turn ``[image x T, text]`` whose text is
  :func:`~spa3_vlm.vsibench.build_vsibench_prompt` (lmms-eval's VSI-Bench prompt);
* generation: greedy (``do_sample=False``, one beam), at most 16 new tokens, on top of the checkpoint's own
  ``generation_config`` (so e.g. a ``repetition_penalty`` saved with the model applies, as it did in the
  reference); the answer is the decoded new tokens with special tokens skipped, no post-processing;
* batches are left-padded; every answer is appended to the predictions JSONL and flushed as soon as it
  exists, so a rerun of the same command skips the ids already answered;
* scoring: :func:`~spa3_vlm.evaluation.scoring.vsibench_scores` on the predictions (whitespace-stripped, as
  lmms-eval hands them to the task) joined with the dataset by id; the table follows the paper's column order
  (``TASK_ORDER``).

Both model kinds go through the same :class:`Spa3VLMProcessor` (its Qwen half for plain Qwen2.5-VL: the
geometry tensors are dropped), so a Spa3-VLM and its Qwen2.5-VL baseline see identical pixels. The model class
comes from the checkpoint's ``config.json`` ``model_type`` (``spa3_vlm``, ``spa3_vlm_qwen3``, ``qwen2_5_vl`` or
``qwen3_vl``).

The questions come from :mod:`~spa3_vlm.evaluation.samples`, the predictions file is
:mod:`~spa3_vlm.evaluation.predictions`, the metric :mod:`~spa3_vlm.evaluation.scoring`. Answers come from
:class:`~spa3_vlm.inference.Spa3VLMGenerator`, the package's one generation path (also the
lmms-eval plugin's, SFT evaluation's, the Space's and ``spa3-vlm ask``'s), so every path produces the same text
for the same frames and prompt.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..inference import DEFAULT_MAX_NEW_TOKENS, DTYPES, Spa3VLMGenerator
from ..vsibench import (
    NUMERICAL_TYPES,
    PARSING_MODES,
    TASK_ORDER,
    normalize_answer,
    option_letters,
    parse_numeric_prediction,
)
from .predictions import (
    check_against_dataset,
    describe_lines,
    read_predictions,
    rewrite_predictions,
)
from .samples import (
    DEFAULT_NUM_FRAMES,
    VSIBENCH_HUB_ID,
    EvalSample,
    id_key,
    load_synthrooms_qa_samples,
    load_vsibench_samples,
    missing_videos,
    scoring_record,
)
from .scoring import vsibench_scores

__all__ = [
    "DATASETS",
    "LMMS_EVAL_MAX_PIXELS",
    "LMMS_EVAL_MIN_PIXELS",
    "RunReport",
    "build_parser",
    "format_table",
    "main",
    "run_generation",
    "scene_groups",
    "score_predictions",
]

# lmms-eval's Qwen2.5-VL wrapper defaults, in effect in the reference evaluation (spec section 11).
LMMS_EVAL_MIN_PIXELS = 256 * 28 * 28
LMMS_EVAL_MAX_PIXELS = 1605632
DATASETS = ("vsibench", "synthrooms-qa")


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- generation


@dataclass
class RunReport:
    """What a generation run did."""

    total: int
    already_done: int
    generated: int
    invalid_lines: list
    duplicate_lines: list


def scene_groups(samples: Sequence[EvalSample], num_frames: int) -> list[tuple[list, list[EvalSample]]]:
    """``samples`` grouped by the frames they show: ``[(frames, samples of that frame set), ...]``.

    Groups are ordered by their first sample, samples within a group keep their order. A VSI-Bench question's frames
    are fixed by its video (and ``num_frames``, the same for the whole run), so each video is decoded once, for its
    first question; samples without a video (SynthRooms-QA rows) are loaded and grouped by their pixels
    (:func:`~spa3_vlm.data.latent_cache.frames_key`).
    """
    from ..data.latent_cache import frames_key

    groups: dict[Any, tuple[list, list[EvalSample]]] = {}
    for sample in samples:
        if sample.video is not None:
            key = ("video", sample.video)
            if key not in groups:
                groups[key] = (sample.load_frames(num_frames), [])
        else:
            frames = sample.load_frames(num_frames)
            key = ("frames", frames_key(frames))
            groups.setdefault(key, (frames, []))
        groups[key][1].append(sample)
    return list(groups.values())


def _scene_latents(generator, frames: list, store=None):
    """The frame set's Spa3R latents ``[1, Q, C]``, once for all its questions: read from ``store`` (a
    :class:`~spa3_vlm.data.latent_cache.SceneLatentStore`) when it has them, else computed (and stored). ``None`` for
    generators without them (plain Qwen, stand-ins)."""
    encode = getattr(generator, "encode_scene", None)
    if not callable(encode):
        return None
    if store is None:
        return encode(frames)
    from ..data.latent_cache import frames_key

    key = frames_key(frames)
    latents = store.get(key)
    if latents is None:
        latents = encode(frames)
        if latents is not None:
            store.put(key, latents)
    return latents


def _in_sample_order(output_path: Path, samples: Sequence[EvalSample]) -> None:
    """Rewrite the predictions file in the samples' order (other ids after them, as they were) unless it already is:
    the finished file reads the same whatever the grouping and batching that wrote it."""
    written = read_predictions(output_path)
    position = {sample.id: index for index, sample in enumerate(samples)}
    keys = list(written.predictions)
    ordered = sorted(keys, key=lambda key: (key not in position, position.get(key, 0)))
    if ordered != keys or written.needs_rewrite:
        rewrite_predictions(output_path, [written.predictions[key] for key in ordered])


def run_generation(
    generator,
    samples: Sequence[EvalSample],
    output_path: str | os.PathLike,
    *,
    num_frames: int = DEFAULT_NUM_FRAMES,
    batch_size: int = 1,
    known_ids: Optional[Iterable] = None,
    progress: bool = True,
    log: Callable[[str], None] = _log_stderr,
    group_by_scene: bool = True,
    latent_store=None,
) -> RunReport:
    """Answer every sample not yet in ``output_path``, appending one JSON line per answer (flushed to disk).

    Broken lines of an existing file are reported, dropped (the file is rewritten atomically) and their
    questions answered again. Ids in the file that are not in ``known_ids`` (default: the samples' ids) raise
    ``ValueError`` before anything is generated. ``generator.generate(batch)`` takes ``(frames, prompt)`` pairs.

    ``group_by_scene`` (the default) answers the questions of one frame set together (:func:`scene_groups`): its
    frames are loaded once, its Spa3R latents computed once (``generator.encode_scene``, passed to ``generate`` as
    ``spatial_latents``; the same latents the model would compute from the frames) and its questions batched
    ``batch_size`` at a time. The file then fills in scene order and is put back in the samples' order at the end;
    an interrupted run resumes by id either way. ``False``: one question after another, frames loaded per question.
    ``latent_store`` (a :class:`~spa3_vlm.data.latent_cache.SceneLatentStore`, grouped runs only) keeps each frame
    set's latents across runs: a rerun or a resumed run reads them instead of running Spa3R again.
    """
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    output_path = Path(output_path)
    question_types: dict[Any, Optional[str]] = {id_key(key): None for key in (known_ids or ())}
    question_types.update({sample.id: sample.record["question_type"] for sample in samples})
    existing = read_predictions(output_path)
    check_against_dataset(existing.predictions, question_types, output_path)
    if existing.invalid_lines:
        log(
            f"warning: {output_path}: dropped {len(existing.invalid_lines)} unreadable line(s) "
            f"({describe_lines(existing.invalid_lines)}); their questions are answered again"
        )
    if existing.duplicate_lines:
        duplicates = existing.duplicate_lines
        log(f"warning: {output_path}: dropped {len(duplicates)} duplicate line(s) {duplicates[:10]}")
    if existing.needs_rewrite:
        rewrite_predictions(output_path, existing.predictions.values())

    pending = [sample for sample in samples if sample.id not in existing.predictions]
    already_done = len(samples) - len(pending)
    if already_done:
        log(f"resuming {output_path}: {already_done} of {len(samples)} questions already answered, {len(pending)} to go")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    generated = 0

    def batches():
        """``(frames per sample, samples, spatial latents or None)`` in the order they are answered."""
        if not group_by_scene:
            for start in range(0, len(pending), batch_size):
                batch = pending[start : start + batch_size]
                yield [sample.load_frames(num_frames) for sample in batch], batch, None
            return
        for frames, members in scene_groups(pending, num_frames):
            latents = _scene_latents(generator, frames, latent_store)
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                expanded = None if latents is None else latents.expand(len(batch), *latents.shape[1:])
                yield [frames] * len(batch), batch, expanded

    with open(output_path, "a", encoding="utf-8") as handle, tqdm(
        total=len(pending), desc="answering", unit="question", disable=not progress
    ) as bar:
        for frames, batch, latents in batches():
            requests = [(f, sample.prompt) for f, sample in zip(frames, batch)]
            answers = generator.generate(requests) if latents is None else generator.generate(requests, spatial_latents=latents)
            if len(answers) != len(batch):
                raise RuntimeError(f"the generator returned {len(answers)} answers for {len(batch)} questions")
            for sample, sample_frames, answer in zip(batch, frames, answers):
                line = {
                    "id": sample.id,
                    "question_type": sample.record["question_type"],
                    "ground_truth": sample.record["ground_truth"],
                    "prediction": answer,
                    "num_frames": len(sample_frames),
                }
                if sample.record.get("scene_name") is not None:
                    line["scene_name"] = sample.record["scene_name"]
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # an answer on disk survives a crash of the next batch
            generated += len(batch)
            bar.update(len(batch))
    if output_path.exists():
        _in_sample_order(output_path, samples)
    return RunReport(
        total=len(samples),
        already_done=already_done,
        generated=generated,
        invalid_lines=existing.invalid_lines,
        duplicate_lines=existing.duplicate_lines,
    )


# ---------------------------------------------------------------------------------------------- scoring


def _answer_kind_errors(record: Mapping[str, Any], prediction: str, parsing: str) -> Optional[str]:
    """``"no_number"`` / ``"not_an_option"`` when an answer has the wrong kind for its question, else ``None``."""
    if record["question_type"] in NUMERICAL_TYPES:
        return "no_number" if parse_numeric_prediction(prediction, parsing) is None else None
    letters = {letter.lower() for letter in option_letters(record["options"])}
    return None if normalize_answer(prediction).lower() in letters else "not_an_option"


def score_predictions(
    samples: Sequence[EvalSample],
    predictions: Mapping[Any, Mapping[str, Any]],
    *,
    parsing: str = "lmms-eval-2024",
    allow_missing: bool = False,
    source: str = "predictions",
) -> dict[str, Any]:
    """VSI-Bench scores of ``predictions`` (by id) on ``samples``.

    Answers are stripped of surrounding whitespace first, as lmms-eval does before the VSI-Bench metric.
    Missing answers raise ``ValueError`` unless ``allow_missing`` (then they score 0 and are counted).
    Answers of the wrong kind (a numerical answer without a number, a choice that is not an option letter) score
    0 as in the reference, and are counted in ``answer_kind_errors``.
    """
    if parsing not in PARSING_MODES:
        raise ValueError(f"unknown parsing {parsing!r}; expected one of {list(PARSING_MODES)}")
    ids = [sample.id for sample in samples]
    missing = [key for key in ids if key not in predictions]
    if missing and not allow_missing:
        raise ValueError(
            f"{len(missing)} of {len(ids)} questions have no prediction in {source} (e.g. {missing[:5]}): rerun the "
            "same command to finish (it resumes), or pass --allow_missing to score them as wrong"
        )
    selected = set(ids)
    unscored = [key for key in predictions if key not in selected]
    records, kind_errors = [], Counter()
    for sample in samples:
        line = predictions.get(sample.id)
        # lmms-eval strips generate_until outputs before the task scores them (ConfigurableTask.process_results);
        # the file keeps the raw text.
        prediction = None if line is None else line["prediction"].strip()
        records.append(scoring_record(sample.record, prediction))
        if prediction is not None:
            kind = _answer_kind_errors(sample.record, prediction, parsing)
            if kind is not None:
                kind_errors[kind] += 1
    scores = vsibench_scores(records, parsing=parsing)
    scores.pop("per_record")
    scores["num_unscored_predictions"] = len(unscored)
    scores["answer_kind_errors"] = {"no_number": kind_errors["no_number"], "not_an_option": kind_errors["not_an_option"]}
    return scores


TASK_LABELS = {
    "object_counting": "Obj.Count",
    "object_abs_distance": "Abs.Dist",
    "object_size_estimation": "Obj.Size",
    "room_size_estimation": "Room Size",
    "object_rel_distance": "Rel.Dist",
    "object_rel_direction": "Rel.Dir",
    "route_planning": "Route Plan",
    "obj_appearance_order": "Appr.Order",
}


def format_table(metrics: Mapping[str, Any]) -> str:
    """The per-task scores (x100) in the paper's column order (``TASK_ORDER``), then the question counts."""
    names = ["Avg."] + [TASK_LABELS[task] for task in TASK_ORDER]
    scores = [metrics["overall"]] + [metrics["tasks"].get(task) for task in TASK_ORDER]
    counts = [metrics["num_records"]] + [metrics["task_counts"].get(task, 0) for task in TASK_ORDER]
    widths = [max(len(name), 6) for name in names]
    cells = [f"{100 * score:.1f}" if score is not None else "-" for score in scores]
    lines = [
        "| " + " | ".join(name.rjust(w) for name, w in zip(names, widths)) + " |",
        "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|",
        "| " + " | ".join(cell.rjust(w) for cell, w in zip(cells, widths)) + " |",
        "| " + " | ".join(f"n={count}".rjust(w) for count, w in zip(counts, widths)) + " |",
    ]
    notes = []
    if metrics.get("missing_tasks"):
        notes.append(f"tasks without questions (not in Avg.): {', '.join(metrics['missing_tasks'])}")
    if metrics.get("num_missing_predictions"):
        notes.append(f"questions without a prediction (scored 0): {metrics['num_missing_predictions']}")
    kinds = metrics.get("answer_kind_errors") or {}
    if any(kinds.values()):
        notes.append(
            f"answers of the wrong kind (scored 0): {kinds.get('no_number', 0)} numerical without a number, "
            f"{kinds.get('not_an_option', 0)} multiple-choice not an option letter"
        )
    if metrics.get("num_unscored_predictions"):
        notes.append(f"predictions outside the selected questions (not scored): {metrics['num_unscored_predictions']}")
    return "\n".join(lines + notes)


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spa3-vlm eval",
        description="Evaluate Spa3-VLM or Qwen2.5-VL on VSI-Bench or SynthRooms-QA (resumable), then score.",
    )
    parser.add_argument(
        "--model", help="model folder or hub id (model_type spa3_vlm, spa3_vlm_qwen3, qwen2_5_vl or qwen3_vl)"
    )
    parser.add_argument("--processor", help="processor folder or hub id (default: --model)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument(
        "--data_root",
        help="vsibench: folder with <dataset>/<scene_name>.mp4 videos (and test-*.parquet); "
        "synthrooms-qa: a Dataset.save_to_disk folder (default: generate the split)",
    )
    parser.add_argument("--records", help="vsibench: records file (.parquet/.jsonl/.json) instead of --data_root's")
    parser.add_argument("--split", default="test")
    parser.add_argument("--hub_config", default="full", help=f"vsibench: {VSIBENCH_HUB_ID} config (Hub loading)")
    parser.add_argument("--output", required=True, help="predictions JSONL (appended to; a rerun resumes)")
    parser.add_argument("--metrics_output", help="metrics JSON (default: <output stem>.metrics.json)")
    parser.add_argument("--batch_size", type=int, default=1, help="questions per generate call (within one scene)")
    parser.add_argument(
        "--no_scene_grouping",
        action="store_true",
        help="answer questions one batch after another in dataset order, loading frames and running Spa3R per question "
        "(default: per scene, frames and Spa3R once per video; the same answers)",
    )
    parser.add_argument(
        "--latent_cache_dir",
        help="keep each scene's Spa3R latents here (one file per frame set and encoder): a rerun or resumed run reads "
        "them instead of running Spa3R again (with scene grouping)",
    )
    parser.add_argument("--num_frames", type=int, default=DEFAULT_NUM_FRAMES)
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--min_pixels", type=int, help="Qwen-branch pixel budget per frame (default: the processor's)")
    parser.add_argument("--max_pixels", type=int, help="(reference protocol: --min_pixels 200704 --max_pixels 1605632)")
    parser.add_argument(
        "--system_message", default=None, help="system turn (default: the chat template's, i.e. the base model's)"
    )
    parser.add_argument(
        "--generation_config", help="folder / hub id whose generation_config.json replaces the model's (greedy kept)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", *sorted(DTYPES)], help="auto: bfloat16 on GPU, float32 on CPU"
    )
    parser.add_argument("--attn_implementation", help="e.g. sdpa, flash_attention_2")
    parser.add_argument("--parsing", default="lmms-eval-2024", choices=PARSING_MODES, help="numerical answer parsing")
    parser.add_argument("--limit", type=int, help="only the first N questions (smoke runs)")
    parser.add_argument("--score_only", action="store_true", help="score an existing --output without a model")
    parser.add_argument("--allow_missing", action="store_true", help="score questions without a prediction as wrong")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    synth = parser.add_argument_group("synthrooms-qa (generated when --data_root is not given)")
    synth.add_argument("--synthrooms_scenes", type=int, default=8)
    synth.add_argument("--synthrooms_frames", type=int, default=8)
    synth.add_argument("--synthrooms_image_size", type=int, nargs=2, default=(84, 112), metavar=("H", "W"))
    synth.add_argument("--synthrooms_seed", type=int, default=0)
    synth.add_argument("--synthrooms_per_scene", type=int, default=10)
    return parser


def _metrics_path(args) -> Path:
    if args.metrics_output:
        return Path(args.metrics_output)
    output = Path(args.output)
    return output.with_name(output.stem + ".metrics.json")


def _load_samples(args) -> tuple[list[EvalSample], str]:
    if args.dataset == "vsibench":
        return load_vsibench_samples(args.data_root, args.records, args.split, args.hub_config)
    return load_synthrooms_qa_samples(
        args.data_root,
        args.split,
        num_scenes=args.synthrooms_scenes,
        frames_per_scene=args.synthrooms_frames,
        image_size=tuple(args.synthrooms_image_size),
        seed=args.synthrooms_seed,
        per_scene=args.synthrooms_per_scene,
    )


def _evaluate(args, generator, log: Callable[[str], None]) -> dict[str, Any]:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive int, got {args.limit}")
    if not args.score_only and generator is None and not args.model:
        raise ValueError("--model is required (or --score_only to score an existing --output)")
    samples, source = _load_samples(args)
    selected = samples[: args.limit] if args.limit else samples
    log(f"{args.dataset}: {len(selected)} of {len(samples)} questions from {source}")
    output = Path(args.output)
    settings: dict[str, Any] = {
        "num_frames": args.num_frames,
        "batch_size": args.batch_size,
        "group_by_scene": not args.no_scene_grouping,
    }
    if not args.score_only:
        absent = missing_videos(selected)
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} video(s) are missing under {args.data_root} (expected <dataset>/<scene_name>.mp4), "
                f"e.g. {absent[:3]}"
            )
        if generator is None:
            generator = Spa3VLMGenerator.from_pretrained(
                args.model,
                args.processor,
                device=args.device,
                dtype=args.dtype,
                attn_implementation=args.attn_implementation,
                generation_config=args.generation_config,
                max_new_tokens=args.max_new_tokens,
                system_message=args.system_message or None,
                min_pixels=args.min_pixels,
                max_pixels=args.max_pixels,
            )
        latent_store = None
        if args.latent_cache_dir:
            if args.no_scene_grouping:
                raise ValueError("--latent_cache_dir stores latents per scene: drop --no_scene_grouping to use it")
            if getattr(generator, "takes_geometry", False):
                from ..data.latent_cache import SceneLatentStore

                latent_store = SceneLatentStore(args.latent_cache_dir, generator.model, generator.processor)
        report = run_generation(
            generator,
            selected,
            output,
            num_frames=args.num_frames,
            batch_size=args.batch_size,
            known_ids=[sample.id for sample in samples],
            progress=not args.no_progress,
            log=log,
            group_by_scene=not args.no_scene_grouping,
            latent_store=latent_store,
        )
        log(f"answered {report.generated} question(s), {report.already_done} already in {output}")
        if latent_store is not None:
            log(
                f"Spa3R latents: {latent_store.hits} scene(s) read from {latent_store.directory}, "
                f"{latent_store.misses} computed and stored"
            )
        if hasattr(generator, "settings"):
            settings.update(generator.settings())
    elif not output.is_file():
        raise FileNotFoundError(f"--score_only: predictions file not found: {output}")

    written = read_predictions(output)
    if written.invalid_lines:
        raise ValueError(
            f"{output} has {len(written.invalid_lines)} unreadable line(s) ({describe_lines(written.invalid_lines)}); "
            "rerun without --score_only to answer those questions again"
        )
    check_against_dataset(written.predictions, {sample.id: sample.record["question_type"] for sample in samples}, output)
    metrics = score_predictions(
        selected, written.predictions, parsing=args.parsing, allow_missing=args.allow_missing, source=str(output)
    )
    metrics["dataset"] = args.dataset
    metrics["data_source"] = source
    metrics["predictions_file"] = str(output)
    metrics["settings"] = settings
    return metrics


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def main(argv: Optional[Sequence[str]] = None, generator=None) -> int:
    """Command line entry point; ``generator`` replaces model loading (tests, notebooks). Returns the exit code.

    Bad input (files, records, predictions) prints ``error: ...`` and returns 2.
    """
    args = build_parser().parse_args(argv)
    try:
        metrics = _evaluate(args, generator, _log_stderr)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    metrics_path = _metrics_path(args)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(_json_safe(metrics), indent=2) + "\n", encoding="utf-8")
    print(f"metrics: {metrics_path}")
    return 0
