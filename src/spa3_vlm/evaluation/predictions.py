"""The predictions file of an evaluation run: one JSON line per answered question, read back to resume (checked
against the dataset) and rewritten atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .samples import id_key

__all__ = ["PredictionFile", "check_against_dataset", "describe_lines", "read_predictions", "rewrite_predictions"]


# ---------------------------------------------------------------------------------------------- predictions file


@dataclass
class PredictionFile:
    """A predictions JSONL as read back: valid lines by id, and what was wrong with the others.

    ``invalid_lines``: ``(line number, reason)`` of lines that are not a JSON object with a string or int ``id``
    and a string ``prediction`` (e.g. a partial write from a crash). ``duplicate_lines``: later lines repeating
    an id with the same prediction. ``needs_rewrite``: the file should be rewritten without those lines
    (also when it does not end with a newline, so the next append starts on a fresh line).
    """

    path: Path
    predictions: dict = field(default_factory=dict)
    invalid_lines: list = field(default_factory=list)
    duplicate_lines: list = field(default_factory=list)
    needs_rewrite: bool = False


def _check_prediction_line(data: Any) -> Optional[str]:
    """Why a parsed line is not a usable prediction, or ``None``."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    if "id" not in data:
        return "no 'id'"
    try:
        id_key(data["id"])
    except ValueError as error:
        return str(error)
    if "prediction" not in data:
        return "no 'prediction'"
    if not isinstance(data["prediction"], str):
        return f"prediction must be a string, got {type(data['prediction']).__name__} {data['prediction']!r}"
    if "question_type" in data and not isinstance(data["question_type"], str):
        return f"question_type must be a string, got {data['question_type']!r}"
    return None


def read_predictions(path: str | os.PathLike) -> PredictionFile:
    """Read a predictions JSONL, tolerating broken lines (reported in the result, never silently used).

    Raises ``ValueError`` when two lines give the same id different predictions (which one is right?).
    """
    path = Path(path)
    result = PredictionFile(path=path)
    if not path.exists():
        return result
    raw = path.read_bytes()
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            result.invalid_lines.append((number, f"not valid JSON ({type(error).__name__})"))
            continue
        reason = _check_prediction_line(data)
        if reason is not None:
            result.invalid_lines.append((number, reason))
            continue
        key = id_key(data["id"])
        previous = result.predictions.get(key)
        if previous is not None:
            if previous["prediction"] != data["prediction"] or previous.get("question_type") != data.get("question_type"):
                raise ValueError(
                    f"{path}: id {key!r} appears twice with different answers (line {number}: {data['prediction']!r} vs "
                    f"{previous['prediction']!r}); remove one of them"
                )
            result.duplicate_lines.append(number)
            continue
        result.predictions[key] = data
    result.needs_rewrite = bool(result.invalid_lines or result.duplicate_lines or (raw and not raw.endswith(b"\n")))
    return result


def rewrite_predictions(path: Path, lines: Iterable[Mapping[str, Any]]) -> None:
    """Atomically replace ``path`` by ``lines`` (temporary file + rename: a crash leaves one of the two)."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def check_against_dataset(
    predictions: Mapping[Any, Mapping], question_types: Mapping[Any, Optional[str]], path: Path
) -> None:
    """Refuse a predictions file made for another dataset: unknown ids, or ids whose question type differs.

    ``question_types``: id -> question type for every id of the dataset (``None``: not checked).
    """
    unknown = [key for key in predictions if key not in question_types]
    if unknown:
        raise ValueError(
            f"{path} holds {len(unknown)} prediction(s) whose ids are not in the dataset (e.g. {unknown[:5]}): it was "
            "written for another dataset or split; use another --output or remove those lines"
        )
    mismatched = [
        key
        for key, line in predictions.items()
        if question_types[key] is not None and "question_type" in line and line["question_type"] != question_types[key]
    ]
    if mismatched:
        key = mismatched[0]
        raise ValueError(
            f"{path}: {len(mismatched)} prediction(s) have a question_type that differs from the dataset's (e.g. id "
            f"{key!r}: {predictions[key]['question_type']!r} vs {question_types[key]!r}); the file belongs to another "
            "version of the dataset"
        )


def describe_lines(lines: Sequence[tuple[int, str]], limit: int = 5) -> str:
    shown = "; ".join(f"line {number}: {reason}" for number, reason in lines[:limit])
    return shown + (f"; ... ({len(lines) - limit} more)" if len(lines) > limit else "")
