"""How sure a comparison is: the paired difference of two models' scores on the same items (VSI-Bench questions,
relative camera poses), with a bootstrap interval that resamples scenes.

Questions (or camera poses) of one scene share its room and frames, so their scores are correlated; resampling
items would pretend they are independent and give too narrow an interval. Each bootstrap draw takes as many scenes
as there are, with replacement, and scores both models on the items of the drawn scenes (a scene drawn twice counts
twice): :func:`paired_scene_bootstrap` aggregates questions exactly as
:func:`~spa3_vlm.evaluation.scoring.vsibench_scores` does (per question type, then per task, then the mean of the
tasks); :func:`paired_mean_difference` takes the plain mean over items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .scoring import aggregate_question_types

__all__ = ["paired_mean_difference", "paired_scene_bootstrap"]


def _overall(scores: np.ndarray, weights: np.ndarray, types: np.ndarray, type_names: list[str]) -> float:
    """Overall score of per-question ``scores`` counted ``weights`` times (question types present only)."""
    type_scores, type_counts = {}, {}
    for code, name in enumerate(type_names):
        mine = types == code
        total = weights[mine].sum()
        if total > 0:
            type_scores[name] = float((scores[mine] * weights[mine]).sum() / total)
            type_counts[name] = int(total)
    return aggregate_question_types(type_scores, type_counts)[2]


def _check_bootstrap(num_resamples: int, confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not isinstance(num_resamples, int) or num_resamples < 1:
        raise ValueError(f"num_resamples must be a positive int, got {num_resamples!r}")


def _scene_weight_draws(scenes: np.ndarray, num_scenes: int, num_resamples: int, seed: int):
    """Per-item weights ``[N]`` of each bootstrap draw: how often the item's scene (``scenes [N]``, codes in
    ``[0, num_scenes)``) was drawn when drawing ``num_scenes`` scenes with replacement."""
    generator = np.random.default_rng(seed)
    for _ in range(num_resamples):
        picked = np.bincount(generator.integers(0, num_scenes, num_scenes), minlength=num_scenes)
        yield picked[scenes].astype(np.float64)


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def paired_mean_difference(
    values_a: Sequence[float],
    values_b: Sequence[float],
    scenes: Sequence[Any],
    *,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of ``values_a - values_b`` over paired items (e.g. one model's and one baseline's error on each relative
    camera pose), with a percentile interval from resampling the items' ``scenes`` (one id per item).

    Returns ``difference``, ``low`` / ``high`` (the interval), ``num_scenes``, ``num_items``, ``num_resamples``,
    ``confidence``.
    """
    _check_bootstrap(num_resamples, confidence)
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(scenes) != len(a):
        raise ValueError(
            f"values_a, values_b and scenes must be flat and of one length, got {a.shape}, {b.shape} and {len(scenes)}"
        )
    if len(a) == 0:
        raise ValueError("no items to compare")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("values_a and values_b must be finite")
    code_of = {name: code for code, name in enumerate(sorted({str(scene) for scene in scenes}))}
    codes = np.array([code_of[str(scene)] for scene in scenes])
    gaps = a - b
    draws = np.array([(weights @ gaps) / weights.sum() for weights in _scene_weight_draws(codes, len(code_of), num_resamples, seed)])
    low, high = _interval(draws, confidence)
    return {
        "difference": float(gaps.mean()),
        "low": low,
        "high": high,
        "num_scenes": len(code_of),
        "num_items": len(a),
        "num_resamples": num_resamples,
        "confidence": confidence,
    }


def paired_scene_bootstrap(
    records: Sequence[Mapping[str, Any]],
    scores_a: Mapping[Any, float],
    scores_b: Mapping[Any, float],
    *,
    scene_key: str = "scene_name",
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Overall score of model a minus model b on the same questions, with a percentile interval over scenes.

    Args:
        records: one mapping per question with ``id``, ``question_type`` and ``scene_key``.
        scores_a / scores_b: ``{id: score in [0, 1]}`` for every record (``vsibench_scores(...)["per_record"]``, or
            its mean over training seeds).
        num_resamples / confidence / seed: the bootstrap's draws, interval coverage and random seed.

    Returns ``difference`` (on all questions), ``low`` / ``high`` (the interval), ``num_scenes``, ``num_questions``,
    ``num_resamples``, ``confidence``. Scores stay in [0, 1] (multiply by 100 for points).
    """
    if not records:
        raise ValueError("no records to compare")
    _check_bootstrap(num_resamples, confidence)
    ids = [record["id"] for record in records]
    for name, scores in (("scores_a", scores_a), ("scores_b", scores_b)):
        missing = [i for i in ids if i not in scores]
        if missing:
            raise ValueError(f"{name} has no score for {len(missing)} record(s), e.g. {missing[:3]}")
    type_names = sorted({record["question_type"] for record in records})
    types = np.array([type_names.index(record["question_type"]) for record in records])
    scene_names = sorted({str(record[scene_key]) for record in records})
    scenes = np.array([scene_names.index(str(record[scene_key])) for record in records])
    a = np.array([float(scores_a[i]) for i in ids])
    b = np.array([float(scores_b[i]) for i in ids])

    ones = np.ones(len(ids))
    difference = _overall(a, ones, types, type_names) - _overall(b, ones, types, type_names)
    draws = np.array(
        [
            _overall(a, weights, types, type_names) - _overall(b, weights, types, type_names)
            for weights in _scene_weight_draws(scenes, len(scene_names), num_resamples, seed)
        ]
    )
    low, high = _interval(draws, confidence)
    return {
        "difference": float(difference),
        "low": low,
        "high": high,
        "num_scenes": len(scene_names),
        "num_questions": len(ids),
        "num_resamples": num_resamples,
        "confidence": confidence,
    }
