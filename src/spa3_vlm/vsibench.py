"""VSI-Bench's schema, in one place for data, training and evaluation: question types and tasks, the evaluation
prompt (lmms-eval's ``vsibench_doc_to_text``), how an answer is read (:func:`normalize_answer`,
:func:`parse_numeric_prediction`), option letters, and :func:`validate_record`, which checks that a record's
answer parses for its question type. Scoring lives in :mod:`spa3_vlm.evaluation.scoring`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PRE_PROMPT",
    "DIRECTION_SUBTYPES",
    "DIRECTION_TASK",
    "MULTIPLE_CHOICE_POST_PROMPT",
    "MULTIPLE_CHOICE_TYPES",
    "NUMERICAL_POST_PROMPT",
    "NUMERICAL_TYPES",
    "PARSING_MODES",
    "QUESTION_TYPES",
    "TASK_ORDER",
    "build_vsibench_prompt",
    "check_parsing",
    "float_or_none",
    "normalize_answer",
    "option_letters",
    "parse_numeric_prediction",
    "validate_record",
    "vsibench_messages",
]

NUMERICAL_TYPES: tuple[str, ...] = (
    "object_counting",
    "object_abs_distance",
    "object_size_estimation",
    "room_size_estimation",
)
MULTIPLE_CHOICE_TYPES: tuple[str, ...] = (
    "object_rel_distance",
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
    "route_planning",
    "obj_appearance_order",
)
QUESTION_TYPES: tuple[str, ...] = NUMERICAL_TYPES + MULTIPLE_CHOICE_TYPES
DIRECTION_TASK = "object_rel_direction"
DIRECTION_SUBTYPES: tuple[str, ...] = (
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
)
# Column order of the VSI-Bench paper's main table.
TASK_ORDER: tuple[str, ...] = (
    "object_counting",
    "object_abs_distance",
    "object_size_estimation",
    "room_size_estimation",
    "object_rel_distance",
    DIRECTION_TASK,
    "route_planning",
    "obj_appearance_order",
)

PARSING_MODES: tuple[str, ...] = ("lmms-eval-2024", "first-number")

DEFAULT_PRE_PROMPT = "These are frames of a video."
NUMERICAL_POST_PROMPT = "Please answer the question using a single word or phrase."
MULTIPLE_CHOICE_POST_PROMPT = "Answer with the option's letter from the given choices directly."

# An option reads "A. sofa"; "(A) sofa", "A) sofa" and "A: sofa" are accepted too.
_OPTION_LABEL = re.compile(r"\s*\(?([A-Za-z])[.):]")

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9,
}
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}
_WORD_VALUES = {**_UNITS, **_TEENS, **_TENS}
_SCALES = ("hundred", "thousand")
# A sign counts only when it does not follow a word character ("room-3" is 3, "(-3" is -3).
# Thousands separators only in the strict 1,234 form; "3,5" is 3 (no decimal commas).
# A number token is a whole run of digits and commas (plus decimals), split up in Python by _number_value: a regex
# that tried the 1,234 form at every start backtracked quadratically on long runs such as "1,234,234,...,2345".
_TOKEN = re.compile(
    r"(?P<number>(?:(?<![\w.])[-+])?\d[\d,]*(?:\.\d+)?|(?<![\w.])[-+]?\.\d+)"
    r"|(?P<word>[A-Za-z]+)"
)
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+")
_WORD_GAP = re.compile(r"[\s-]+")


def normalize_answer(prediction: str) -> str:
    """lmms-eval's ``fuzzy_matching``: first piece of a split on " " only, trailing '.' removed, then stripped.

    "B." -> "B", "A. sofa" -> "A", "3.5 meters" -> "3.5", "(A)" -> "(A)", "A\\nmore" -> "A\\nmore".
    """
    return prediction.split(" ")[0].rstrip(".").strip()


def float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _word_kind(word: str) -> str | None:
    if word in _UNITS:
        return "unit"
    if word in _TEENS:
        return "teen"
    if word in _TENS:
        return "tens"
    if word in _SCALES:
        return word
    if word == "and":
        return "and"
    return None


# Which word may follow which in a number phrase ("two hundred and forty-one"); anything else ends it.
_NEXT_KIND = {
    "unit": {"hundred", "thousand"},
    "teen": {"hundred", "thousand"},
    "tens": {"unit", "thousand"},
    "hundred": {"unit", "teen", "tens", "thousand", "and"},
    "thousand": {"unit", "teen", "tens", "and"},
    "and": {"unit", "teen", "tens"},
}


def _words_value(words: list[str]) -> float:
    total, current = 0, 0
    for word in words:
        if word == "thousand":
            total += current * 1000
            current = 0
        elif word == "hundred":
            current *= 100
        elif word != "and":
            current += _WORD_VALUES[word]
    return float(total + current)


def _number_value(token: str) -> float:
    """Value of a number token: "1,234.5" -> 1234.5; a run that is not in the strict 1,234 form counts up to its first
    comma ("3,5" -> 3, "1,2345" -> 1), and decimals only when they follow the digits it keeps."""
    sign, body = ("", token) if token[0] not in "+-" else (token[0], token[1:])
    integer, dot, decimals = body.partition(".")
    if "," in integer:
        if not _GROUPED.fullmatch(integer):
            return float(sign + integer.split(",", 1)[0])
        integer = integer.replace(",", "")
    return float(sign + integer + dot + decimals)


def _first_number(text: str) -> float | None:
    """The first number in ``text``: digits ("-3.5", "1,200") or English words ("three", "twenty-one",
    "two hundred and five"); ``None`` when there is none."""
    tokens = list(_TOKEN.finditer(text))
    for index, token in enumerate(tokens):
        if token.group("number") is not None:
            return _number_value(token.group("number"))
        word = token.group("word").lower()
        kind = _word_kind(word)
        if kind not in ("unit", "teen", "tens"):
            continue
        if word == "zero":  # never part of a longer phrase ("zero hundred")
            return 0.0
        words = [word]
        previous, end = token, index + 1
        while end < len(tokens):
            following = tokens[end]
            gap = text[previous.end() : following.start()]
            next_word = (following.group("word") or "").lower()
            next_kind = _word_kind(next_word)
            if next_kind is None or next_word == "zero" or not _WORD_GAP.fullmatch(gap):
                break
            if next_kind not in _NEXT_KIND[kind]:
                break
            words.append(next_word)
            kind, previous, end = next_kind, following, end + 1
        if words[-1] == "and":  # "five hundred and a half": the "and" belongs to the sentence
            words.pop()
        return _words_value(words)
    return None


def parse_numeric_prediction(prediction: str | None, parsing: str = "lmms-eval-2024") -> float | None:
    """The number a model's answer gives, or ``None`` if it gives none.

    ``"lmms-eval-2024"`` (pinned reference): ``float(normalize_answer(prediction))`` — so "3.5 meters" is 3.5
    but "about 3.5" and "three" are ``None``. Python's ``float`` also takes "1_000", "nan" and "inf"
    (which then score 0). ``"first-number"`` (newer lmms-eval's idea, our implementation of it): the first
    number anywhere in the text, digits (optional sign, decimals, 1,234-style separators) or English number
    words up to the thousands ("three", "twenty-one", "two hundred and five").
    """
    check_parsing(parsing)
    if prediction is None:
        return None
    if parsing == "lmms-eval-2024":
        return float_or_none(normalize_answer(prediction))
    return _first_number(prediction)


def option_letters(options: Sequence[str]) -> list[str]:
    """The label letter of each option ("A. sofa" -> "A"); ``ValueError`` if an option has none."""
    letters = []
    for option in options:
        match = _OPTION_LABEL.match(option) if isinstance(option, str) else None
        if match is None:
            raise ValueError(f"option {option!r} has no letter label; expected options like 'A. sofa'")
        letters.append(match.group(1))
    counts = Counter(letter.lower() for letter in letters)
    repeated = sorted(letter for letter, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"options repeat the letter(s) {repeated}: {list(options)!r}; each option needs its own letter")
    return letters


def build_vsibench_prompt(
    question: str,
    question_type: str,
    options: Sequence[str] | None = None,
    pre_prompt: str | None = DEFAULT_PRE_PROMPT,
    numerical_post_prompt: str | None = NUMERICAL_POST_PROMPT,
    multiple_choice_post_prompt: str | None = MULTIPLE_CHOICE_POST_PROMPT,
) -> str:
    """The user text lmms-eval's ``vsibench_doc_to_text`` builds for one question.

    Numerical: ``pre + "\\n" + question + "\\n" + post``. Multiple choice: ``pre``, ``question``,
    ``"Options:\\n" + "\\n".join(options)`` and ``post`` joined by "\\n". As in lmms-eval, an empty or ``None``
    pre/post prompt falls back to the default text.
    """
    if not isinstance(question, str):
        raise ValueError(f"question must be a string, got {type(question).__name__}")
    pre = pre_prompt or DEFAULT_PRE_PROMPT
    if question_type in NUMERICAL_TYPES:
        if options:
            raise ValueError(
                f"question_type {question_type!r} is numerical and takes no options, got {list(options)!r}"
            )
        return pre + "\n" + question + "\n" + (numerical_post_prompt or NUMERICAL_POST_PROMPT)
    if question_type in MULTIPLE_CHOICE_TYPES:
        if isinstance(options, str) or not options or not all(isinstance(o, str) for o in options):
            raise ValueError(
                f"question_type {question_type!r} is multiple choice and needs a non-empty list of option "
                f"strings, got {options!r}"
            )
        options_block = "Options:\n" + "\n".join(options)
        return "\n".join([pre, question, options_block, multiple_choice_post_prompt or MULTIPLE_CHOICE_POST_PROMPT])
    raise ValueError(f"unknown question_type {question_type!r}; expected one of {list(QUESTION_TYPES)}")


def check_parsing(parsing: str) -> None:
    if parsing not in PARSING_MODES:
        raise ValueError(f"unknown parsing {parsing!r}; expected one of {list(PARSING_MODES)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_record(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check that a VSI-Bench record's answer parses for its question type; returns the record.

    Numerical types: ``options`` empty or ``None``; ``ground_truth`` a string holding a finite number >= 0
    (an integer for ``object_counting``). Multiple choice: ``options`` a list of >= 2 distinct strings
    labelled "A. ...", "B. ...", ... with distinct letters, and ``ground_truth`` exactly one of those
    letters. Raises ``ValueError`` naming the record's ``id``.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"a VSI-Bench record must be a mapping, got {type(record).__name__}")
    record_id = record.get("id")
    if record_id is None or record_id == "" or not (isinstance(record_id, str) or _is_int(record_id)):
        raise ValueError(f"a VSI-Bench record needs a non-empty str or int 'id', got {record_id!r}")
    where = f"record {record_id!r}"
    question_type = record.get("question_type")
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"{where}: unknown question_type {question_type!r}; expected one of {list(QUESTION_TYPES)}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: question must be a non-empty string, got {question!r}")
    ground_truth = record.get("ground_truth")
    if not isinstance(ground_truth, str):
        raise ValueError(f"{where}: ground_truth must be a string, got {ground_truth!r}")
    options = record.get("options")
    if question_type in NUMERICAL_TYPES:
        if options:
            raise ValueError(f"{where}: numerical question_type {question_type!r} takes no options, got {options!r}")
        try:
            value = float(ground_truth)
        except ValueError:
            raise ValueError(
                f"{where}: ground_truth {ground_truth!r} is not a number ({question_type} is numerical)"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: ground_truth {ground_truth!r} must be a finite number >= 0")
        if question_type == "object_counting" and not value.is_integer():
            raise ValueError(f"{where}: ground_truth {ground_truth!r} of object_counting must be an integer")
        return record
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence) or len(options) < 2:
        raise ValueError(
            f"{where}: multiple-choice question_type {question_type!r} needs a list of >= 2 options, got {options!r}"
        )
    if not all(isinstance(option, str) for option in options):
        raise ValueError(f"{where}: options must be strings, got {options!r}")
    try:
        letters = option_letters(options)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    texts = [option[option.index(letter) + 1 :].lstrip(".):").strip() for option, letter in zip(options, letters)]
    if len(set(texts)) != len(texts):
        raise ValueError(f"{where}: options {list(options)!r} repeat an answer")
    if ground_truth not in letters:
        raise ValueError(f"{where}: ground_truth {ground_truth!r} is not one of the option letters {letters}")
    return record


def vsibench_messages(record: Mapping[str, Any], num_images: int) -> list[dict]:
    """TRL vision chat messages for a VSI-Bench record: ``num_images`` image slots then the evaluation
    prompt (:func:`build_vsibench_prompt`) as the user turn, the ground truth as the assistant turn."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be an int >= 0, got {num_images!r}")
    text = build_vsibench_prompt(record["question"], record["question_type"], record.get("options"))
    return [
        # One dict per image (not [d] * n): consumers fill the slots in place.
        {"role": "user", "content": [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]},
        {"role": "assistant", "content": [{"type": "text", "text": record["ground_truth"]}]},
    ]
