"""Benchmark scoring for Spa3-VLM: VSI-Bench metrics, prompts and the 🤗 ``evaluate`` metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..vsibench import (
    DEFAULT_PRE_PROMPT,
    DIRECTION_SUBTYPES,
    DIRECTION_TASK,
    MULTIPLE_CHOICE_POST_PROMPT,
    MULTIPLE_CHOICE_TYPES,
    NUMERICAL_POST_PROMPT,
    NUMERICAL_TYPES,
    PARSING_MODES,
    QUESTION_TYPES,
    TASK_ORDER,
    build_vsibench_prompt,
    normalize_answer,
    option_letters,
    parse_numeric_prediction,
)
from .scoring import (
    MRA_THRESHOLDS,
    mean_relative_accuracy,
    multiple_choice_score,
    vsibench_scores,
)

# Folder holding ``vsibench_metric.py``, the form ``evaluate.load`` accepts (and the Hub expects).
VSIBENCH_METRIC_PATH = Path(__file__).resolve().parent / "vsibench_metric"


def load_vsibench_metric(**kwargs: Any):
    """``evaluate.load`` of the packaged VSI-Bench metric (local, no network); kwargs go to ``evaluate.load``."""
    import evaluate  # optional dependency (the "train" extra); imported only when asked for

    return evaluate.load(str(VSIBENCH_METRIC_PATH), **kwargs)


__all__ = [
    "DEFAULT_PRE_PROMPT",
    "DIRECTION_SUBTYPES",
    "DIRECTION_TASK",
    "MRA_THRESHOLDS",
    "MULTIPLE_CHOICE_POST_PROMPT",
    "MULTIPLE_CHOICE_TYPES",
    "NUMERICAL_POST_PROMPT",
    "NUMERICAL_TYPES",
    "PARSING_MODES",
    "QUESTION_TYPES",
    "TASK_ORDER",
    "VSIBENCH_METRIC_PATH",
    "build_vsibench_prompt",
    "load_vsibench_metric",
    "mean_relative_accuracy",
    "multiple_choice_score",
    "normalize_answer",
    "option_letters",
    "parse_numeric_prediction",
    "vsibench_scores",
]
