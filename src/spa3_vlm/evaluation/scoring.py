"""VSI-Bench scoring, matching lmms-eval's ``tasks/vsibench/utils.py`` (the commit pinned upstream).

Scoring, per record:

* multiple choice: 1.0 if the normalised prediction equals the ground-truth option letter (case-insensitive),
  else 0.0;
* numerical: mean relative accuracy (MRA) over the 10 thresholds θ ∈ {0.50, 0.55, …, 0.95}:
  ``mean_θ 1[|p − g| / |g| ≤ 1 − θ]``; a prediction that does not parse scores 0.

Aggregation: mean per question type; the three ``object_rel_direction_*`` sub-types are merged into
``object_rel_direction`` by an unweighted mean of their accuracies; ``overall`` is the unweighted mean of the
8 task scores. Everything is on the 0–1 scale (papers report ×100).

Where we differ from the reference, on purpose (it would crash or be meaningless there):

* ground truth 0: the reference divides by zero. Here the relative error is 0 when ``p == g`` and infinite
  otherwise, so MRA is 1.0 iff the prediction is exactly 0, else 0.0;
* negative ground truth: the reference's ``|p − g| / g`` is negative (every threshold passes); here ``|g|``;
* missing ``object_rel_direction_*`` sub-types: the reference raises ``KeyError``; here the direction task
  is the mean of the sub-types present, and the absent ones are reported (``missing_question_types``);
* whole tasks absent (a subset run): ``overall`` is the mean of the tasks present (as the reference), and
  they are reported in ``missing_tasks`` — a complete VSI-Bench run has none;
* a ``None`` prediction (the model produced nothing) scores 0 and is counted in ``num_missing_predictions``;
* malformed records raise ``ValueError`` instead of scoring silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..vsibench import (
    DIRECTION_SUBTYPES,
    DIRECTION_TASK,
    NUMERICAL_TYPES,
    QUESTION_TYPES,
    TASK_ORDER,
    check_parsing,
    float_or_none,
    normalize_answer,
    option_letters,
    parse_numeric_prediction,
)

__all__ = [
    "MRA_THRESHOLDS",
    "aggregate_question_types",
    "mean_relative_accuracy",
    "multiple_choice_score",
    "vsibench_scores",
]

# Built with the reference's own expression: int((0.95 - 0.5) / 0.05 + 2) is int(10.999…) = 10 points.
# Kept as the exact float64 values of np.linspace so boundary cases round as in the reference
# (e.g. 1 - 0.8 is 0.19999999999999996 < 0.2, so g=10, p=12 fails θ=0.8).
MRA_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2)))


def mean_relative_accuracy(prediction: float | None, ground_truth: float) -> float:
    """MRA of one numerical answer: fraction of the 10 thresholds θ with ``|p − g| / |g| ≤ 1 − θ``.

    ``prediction=None`` scores 0. For ``ground_truth == 0`` (undefined in the reference) the relative error
    is 0 if ``prediction == 0`` and infinite otherwise, giving 1.0 or 0.0.
    """
    if prediction is None:
        return 0.0
    if ground_truth == 0:
        relative_error = 0.0 if prediction == 0 else math.inf
    else:
        # Same float64 operations as the reference (abs(p - g) / g) whenever g > 0.
        relative_error = abs(prediction - ground_truth) / abs(ground_truth)
    passed = sum(1 for threshold in MRA_THRESHOLDS if relative_error <= 1 - threshold)
    return passed / len(MRA_THRESHOLDS)


def multiple_choice_score(prediction: str | None, ground_truth: str) -> float:
    """1.0 if ``normalize_answer(prediction)`` equals the ground-truth letter ignoring case, else 0.0."""
    if prediction is None:
        return 0.0
    return 1.0 if normalize_answer(prediction).lower() == ground_truth.lower() else 0.0


def _numeric_ground_truth(value: Any, where: str) -> float:
    number = None
    if isinstance(value, str):
        number = float_or_none(value)
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"{where}: numerical ground_truth {value!r} is not a finite number")
    return number


def _score_record(record: Any, index: int, parsing: str) -> tuple[Any, str, float, bool]:
    """Validate one record and score it: (id, question_type, score, prediction_missing)."""
    if not isinstance(record, Mapping):
        raise ValueError(f"record #{index}: expected a mapping with id/question_type/ground_truth/prediction, "
                         f"got {type(record).__name__}")
    record_id = record.get("id")
    if record_id is None:
        raise ValueError(f"record #{index}: missing field 'id'")
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int, np.integer)):
        raise ValueError(f"record #{index}: id must be a string or an int, got {record_id!r}")
    where = f"record {record_id!r} (#{index})"
    for field in ("question_type", "ground_truth", "prediction"):
        if field not in record:
            raise ValueError(f"{where}: missing field {field!r}")
    question_type = record["question_type"]
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"{where}: unknown question_type {question_type!r}; expected one of {list(QUESTION_TYPES)}")
    prediction = record["prediction"]
    if prediction is not None and not isinstance(prediction, str):
        raise ValueError(f"{where}: prediction must be a string or None, got {type(prediction).__name__}")
    ground_truth = record["ground_truth"]
    options = record.get("options")

    if question_type in NUMERICAL_TYPES:
        target = _numeric_ground_truth(ground_truth, where)
        if options:
            raise ValueError(f"{where}: numerical question_type {question_type!r} takes no options, got {options!r}")
        score = mean_relative_accuracy(parse_numeric_prediction(prediction, parsing), target)
    else:
        if isinstance(options, str) or not isinstance(options, Sequence) or len(options) == 0:
            raise ValueError(f"{where}: multiple-choice question_type {question_type!r} needs a non-empty list "
                             f"of options, got {options!r}")
        try:
            letters = option_letters(options)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if not isinstance(ground_truth, str) or ground_truth.lower() not in {letter.lower() for letter in letters}:
            raise ValueError(f"{where}: ground_truth {ground_truth!r} is not one of the option letters {letters}")
        score = multiple_choice_score(prediction, ground_truth)
    return record_id, question_type, score, prediction is None


def _mean(values: list[float]) -> float:
    # np.mean sums pairwise, as pandas' Series.mean in the reference aggregation does.
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def aggregate_question_types(
    type_scores: Mapping[str, float], type_counts: Mapping[str, int]
) -> tuple[dict[str, float], dict[str, int], float]:
    """Mean score per raw question type -> ``(task scores, task counts, overall)`` as lmms-eval aggregates them:
    the relative-direction task is the unweighted mean of its sub-types, overall the mean of the tasks present."""
    directions = [qt for qt in DIRECTION_SUBTYPES if qt in type_scores]
    task_scores: dict[str, float] = {}
    task_counts: dict[str, int] = {}
    for task in TASK_ORDER:
        if task == DIRECTION_TASK:
            if directions:
                # Unweighted over sub-types, in easy/medium/hard order like the reference's sum(...) / 3.
                task_scores[task] = sum(type_scores[qt] for qt in directions) / float(len(directions))
                task_counts[task] = sum(type_counts[qt] for qt in directions)
        elif task in type_scores:
            task_scores[task] = type_scores[task]
            task_counts[task] = type_counts[task]
    if not task_scores:
        raise ValueError("no question type to aggregate")
    # The reference sums its output dict: types sorted by name (pandas groupby), the direction task last.
    summation_order = sorted(t for t in task_scores if t != DIRECTION_TASK)
    summation_order += [DIRECTION_TASK] if DIRECTION_TASK in task_scores else []
    overall = sum(task_scores[t] for t in summation_order) / len(summation_order)
    return task_scores, task_counts, overall


def vsibench_scores(records: Iterable[Mapping[str, Any]], parsing: str = "lmms-eval-2024") -> dict[str, Any]:
    """Score VSI-Bench answers and aggregate them as lmms-eval does.

    Args:
        records: one mapping per question with ``id`` (str or int, unique), ``question_type`` (one of
            ``QUESTION_TYPES``), ``ground_truth`` (a number or numeric string; for multiple choice the option
            letter), ``prediction`` (the raw model text, or ``None`` when the model gave nothing) and, for
            multiple choice, ``options`` (e.g. ``["A. sofa", "B. bed"]``).
        parsing: how numerical answers are read, see ``parse_numeric_prediction``; multiple choice is scored
            the same way in both modes.

    Returns:
        ``overall`` (mean of the task scores present), ``tasks`` ({task: score} in ``TASK_ORDER``),
        ``task_counts``, ``question_type_scores`` / ``question_type_counts`` (the ten raw types),
        ``per_record`` ({id: score}), ``num_records``, ``num_missing_predictions``, ``missing_prediction_ids``,
        ``missing_question_types``, ``missing_tasks``, ``parsing``. All scores are in [0, 1].

    Raises:
        ValueError: no records, an unknown parsing mode, or a malformed record (the message names its id).
    """
    check_parsing(parsing)
    if records is None or isinstance(records, (Mapping, str, bytes)) or not isinstance(records, Iterable):
        raise ValueError(f"records must be a list of mappings, got {type(records).__name__}")
    per_record: dict[Any, float] = {}
    by_type: dict[str, list[float]] = {}
    missing_prediction_ids = []
    for index, record in enumerate(records):
        record_id, question_type, score, prediction_missing = _score_record(record, index, parsing)
        if record_id in per_record:
            raise ValueError(f"record {record_id!r} (#{index}): duplicate id")
        per_record[record_id] = score
        by_type.setdefault(question_type, []).append(score)
        if prediction_missing:
            missing_prediction_ids.append(record_id)
    if not per_record:
        raise ValueError("records is empty; expected at least one VSI-Bench record")

    type_scores = {qt: _mean(by_type[qt]) for qt in QUESTION_TYPES if qt in by_type}
    type_counts = {qt: len(by_type[qt]) for qt in QUESTION_TYPES if qt in by_type}
    task_scores, task_counts, overall = aggregate_question_types(type_scores, type_counts)

    return {
        "overall": overall,
        "tasks": task_scores,
        "task_counts": task_counts,
        "question_type_scores": type_scores,
        "question_type_counts": type_counts,
        "per_record": per_record,
        "num_records": len(per_record),
        "num_missing_predictions": len(missing_prediction_ids),
        "missing_prediction_ids": missing_prediction_ids,
        "missing_question_types": [qt for qt in QUESTION_TYPES if qt not in type_scores],
        "missing_tasks": [t for t in TASK_ORDER if t not in task_scores],
        "parsing": parsing,
    }
