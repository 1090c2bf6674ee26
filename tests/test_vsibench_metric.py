"""VSI-Bench metric: hand-computed scores, lmms-eval parity, aggregation, prompts, the evaluate module."""

import math
import random

import numpy as np
import pytest
from metric_testing import evaluate_inputs, mc, num

from spa3_vlm.evaluation import (
    MRA_THRESHOLDS,
    MULTIPLE_CHOICE_TYPES,
    NUMERICAL_TYPES,
    QUESTION_TYPES,
    TASK_ORDER,
    build_vsibench_prompt,
    load_vsibench_metric,
    mean_relative_accuracy,
    normalize_answer,
    parse_numeric_prediction,
    vsibench_scores,
)


def one_score(record, parsing="lmms-eval-2024"):
    return vsibench_scores([record], parsing=parsing)["per_record"][record["id"]]


# ---------------------------------------------------------------------------------------------- constants


def test_thresholds_are_the_reference_linspace_of_ten_points():
    assert len(MRA_THRESHOLDS) == 10
    # The reference builds them with int((0.95 - 0.5) / 0.05 + 2), which is 10 (not 11) in float64.
    assert int((0.95 - 0.5) / 0.05 + 2) == 10
    assert list(MRA_THRESHOLDS) == np.linspace(0.5, 0.95, 10).tolist()
    assert MRA_THRESHOLDS[0] == 0.5 and MRA_THRESHOLDS[-1] == 0.95


def test_question_type_constants_and_paper_task_order():
    assert set(NUMERICAL_TYPES) == {
        "object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation"
    }
    assert set(MULTIPLE_CHOICE_TYPES) == {
        "object_rel_distance", "object_rel_direction_easy", "object_rel_direction_medium",
        "object_rel_direction_hard", "route_planning", "obj_appearance_order",
    }
    assert set(QUESTION_TYPES) == set(NUMERICAL_TYPES) | set(MULTIPLE_CHOICE_TYPES) and len(QUESTION_TYPES) == 10
    assert TASK_ORDER == (
        "object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation",
        "object_rel_distance", "object_rel_direction", "route_planning", "obj_appearance_order",
    )


# ------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("B.", "B"),
        ("A. sofa", "A"),
        ("3.5 meters", "3.5"),
        ("(A)", "(A)"),
        ("Answer: A", "Answer:"),
        ("A\nexplanation", "A\nexplanation"),  # split on " " only, not on newlines
        ("B...", "B"),
        (" A", ""),  # a leading space makes the first piece empty
        ("A.\n", "A."),  # rstrip('.') runs before strip(): the dot survives behind the newline
        ("", ""),
    ],
)
def test_normalize_answer_matches_lmms_eval_fuzzy_matching(raw, normalised):
    assert normalize_answer(raw) == normalised


# --------------------------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("A", 1.0),
        ("a", 1.0),  # case-insensitive
        ("A. sofa", 1.0),
        ("A.", 1.0),
        ("(A)", 0.0),
        ("A)", 0.0),
        ("Answer: A", 0.0),
        ("A\nbecause it is closest", 0.0),
        (" A", 0.0),
        ("", 0.0),
        ("B", 0.0),
        ("sofa", 0.0),
    ],
)
def test_multiple_choice_exact_letter_match(prediction, expected):
    assert one_score(mc("q", "A", prediction)) == expected


def test_multiple_choice_lowercase_ground_truth_and_parsing_mode_do_not_matter():
    assert one_score(mc("q", "c", "C. table")) == 1.0
    assert one_score(mc("q", "C", "C. table"), parsing="first-number") == 1.0
    assert one_score(mc("q", "C", "(C)"), parsing="first-number") == 0.0


# ------------------------------------------------------------------------------------------------- MRA


@pytest.mark.parametrize(
    "ground_truth, prediction, expected",
    [
        (10, 10, 1.0),
        # 0.5 / 10 is the double 0.05; 1 - 0.95 is 0.050000000000000044, so even θ = 0.95 passes: 10/10.
        (10, 10.5, 1.0),
        (10, 9.5, 1.0),
        # 0.1 > 1 - 0.95 but 0.1 <= 1 - 0.9 = 0.10000000000000009: 9/10.
        (10, 11, 0.9),
        (10, 9, 0.9),
        # 0.15 <= 0.15000000000000002 (1 - 0.85): 8/10.
        (10, 11.5, 0.8),
        # 2 / 10 is 0.2 but 1 - 0.8 is 0.19999999999999996, so θ = 0.8 fails: 6/10, not the naive 7/10.
        (10, 12, 0.6),
        (4, 5, 0.6),  # 0.25 == 1 - 0.75 exactly: passes θ = 0.5 … 0.75
        # 0.3 <= 0.30000000000000004 (1 - 0.7): 5/10.
        (10, 13, 0.5),
        # 0.35 == 1 - 0.65 bit for bit: 4/10.
        (10, 13.5, 0.4),
        # 0.4 == 1 - 0.6 bit for bit: 3/10.
        (10, 14, 0.3),
        # 0.45 rounds above 1 - 0.55 = 0.44999999999999996: only θ = 0.5 passes, 1/10 (naive 2/10).
        (10, 14.5, 0.1),
        (10, 15, 0.1),  # 0.5 <= 0.5
        (10, 5, 0.1),
        (10, 15.01, 0.0),
        (10, 16, 0.0),
        (3, 4, 0.4),  # 1/3 = 0.333…: passes 0.5, 0.55, 0.6, 0.65 (1 - 0.65 = 0.35)
    ],
)
def test_mra_hand_computed_boundaries(ground_truth, prediction, expected):
    assert mean_relative_accuracy(float(prediction), float(ground_truth)) == expected
    record = num("q", str(ground_truth), str(prediction))
    assert one_score(record) == expected


def test_mra_equals_the_reference_formula_on_random_pairs():
    rng = np.random.default_rng(0)
    thresholds = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
    ground_truths = np.round(rng.uniform(0.1, 20, 400), 1)
    predictions = np.round(ground_truths * rng.uniform(0.3, 1.7, 400), 2)
    for g, p in zip(ground_truths.tolist(), predictions.tolist()):
        reference = float((abs(p - g) / g <= 1 - thresholds).mean())
        assert mean_relative_accuracy(p, g) == reference, (g, p)


@pytest.mark.parametrize(
    "prediction, expected",
    [("0", 1.0), ("0.0", 1.0), ("-0", 1.0), ("0 objects", 1.0), ("0.1", 0.0), ("1", 0.0), ("none", 0.0)],
)
def test_zero_ground_truth_scores_one_only_for_an_exact_zero(prediction, expected):
    assert one_score(num("q", "0", prediction, "object_counting")) == expected


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("-10.5", 1.0),  # |−10.5 − (−10)| / |−10| = 0.05
        ("-11", 0.9),
        ("-12", 0.6),  # same float boundary as g = 10, p = 12
        ("11", 0.0),  # relative error 2.1; the reference's signed division would give 1.0
        ("-10", 1.0),
    ],
)
def test_negative_ground_truth_uses_absolute_value(prediction, expected):
    assert one_score(num("q", "-10", prediction)) == expected


@pytest.mark.parametrize(
    "prediction, pinned, first_number",
    [
        ("3.5", 1.0, 1.0),
        ("3.5 meters", 1.0, 1.0),
        ("3.5.", 1.0, 1.0),
        ("3.5m", 0.0, 1.0),
        ("about 3.5 meters", 0.0, 1.0),
        ("It is 3.5", 0.0, 1.0),
        (" 3.5", 0.0, 1.0),
        ("3.5\nmeters", 0.0, 1.0),  # float() ignores surrounding whitespace only
        # first-number reads 3 (no decimal commas): |3 - 3.5| / 3.5 = 0.142… passes θ = 0.50 … 0.85: 8/10.
        ("3,5", 0.0, 0.8),
        ("", 0.0, 0.0),
        ("unknown", 0.0, 0.0),
        ("nan", 0.0, 0.0),
        ("inf", 0.0, 0.0),
    ],
)
def test_numerical_answer_parsing_in_both_modes(prediction, pinned, first_number):
    record = num("q", "3.5", prediction)
    assert one_score(record) == pinned
    assert one_score(record, parsing="first-number") == first_number


def test_number_words_count_only_in_first_number_mode():
    record = num("q", "3", "three", "object_counting")
    assert one_score(record) == 0.0
    assert one_score(record, parsing="first-number") == 1.0
    # 21 vs 20: 0.05 -> 10/10; "twenty-one" is one number, not 20 then 1.
    assert one_score(num("q", "20", "Twenty-one chairs", "object_counting"), parsing="first-number") == 1.0


@pytest.mark.parametrize(
    "text, value",
    [
        ("three", 3.0),
        ("There are three chairs.", 3.0),
        ("Three", 3.0),
        ("twenty-one", 21.0),
        ("ninety nine", 99.0),
        ("two hundred and five", 205.0),
        ("one thousand two hundred", 1200.0),
        ("five hundred and a half", 500.0),
        ("one two", 1.0),  # not a single number phrase: the first number is "one"
        ("zero", 0.0),
        ("1,200 cm", 1200.0),
        ("-3.5 m", -3.5),
        ("(-2)", -2.0),
        ("room-3", 3.0),  # a hyphen after a word is not a minus sign
        (".5", 0.5),
        ("about 3.5 meters", 3.5),
        ("3 or three", 3.0),
        ("two or 3", 2.0),
        ("someone", None),  # "one" only as a whole word
        ("no idea", None),
        ("", None),
    ],
)
def test_first_number_parsing(text, value):
    assert parse_numeric_prediction(text, "first-number") == value


@pytest.mark.parametrize(
    "text, value",
    [("3.5 meters", 3.5), ("3.5m", None), ("1_000", 1000.0), ("\n3\n", 3.0), (" 3", None), ("three", None)],
)
def test_pinned_parsing_is_python_float_of_the_normalised_answer(text, value):
    assert parse_numeric_prediction(text) == value


def test_pinned_parsing_of_nan_gives_nan_which_scores_zero():
    parsed = parse_numeric_prediction("nan")
    assert math.isnan(parsed)
    assert mean_relative_accuracy(parsed, 3.0) == 0.0


def test_numeric_ground_truth_may_be_a_number_or_numeric_text():
    assert one_score(num("q", 2.5, "2.5")) == 1.0
    assert one_score(num("q", 4, "4", "object_counting")) == 1.0
    assert one_score(num("q", " 12.0 ", "12", "room_size_estimation")) == 1.0


# -------------------------------------------------------------------------------------------- aggregation


def _full_benchmark_records():
    """Records with hand-chosen per-type scores; returns (records, expected type scores)."""
    records, expected = [], {}

    def add(question_type, results):
        for i, (ground_truth, prediction) in enumerate(results):
            if question_type in NUMERICAL_TYPES:
                records.append(num(f"{question_type}-{i}", ground_truth, prediction, question_type))
            else:
                records.append(mc(f"{question_type}-{i}", ground_truth, prediction, question_type))

    add("object_counting", [("4", "4"), ("4", "5")])  # 1.0, 0.6
    expected["object_counting"] = 0.8
    add("object_abs_distance", [("10", "11"), ("10", "12"), ("10", "far")])  # 0.9, 0.6, 0
    expected["object_abs_distance"] = 0.5
    add("object_size_estimation", [("10", "14.5 cm")])
    expected["object_size_estimation"] = 0.1
    add("room_size_estimation", [("20", "21"), ("20", None)])  # 1.0, missing
    expected["room_size_estimation"] = 0.5
    add("object_rel_distance", [("A", "A"), ("B", "C"), ("C", "c."), ("D", "D")])
    expected["object_rel_distance"] = 0.75
    add("object_rel_direction_easy", [("A", "A")])
    expected["object_rel_direction_easy"] = 1.0
    add("object_rel_direction_medium", [("A", "A"), ("B", "A"), ("C", "A")])
    expected["object_rel_direction_medium"] = 1 / 3
    add("object_rel_direction_hard", [("A", "B"), ("B", "A")])
    expected["object_rel_direction_hard"] = 0.0
    add("route_planning", [("B", "B. turn right"), ("A", "(A)")])
    expected["route_planning"] = 0.5
    add("obj_appearance_order", [("D", "D"), ("A", None), ("B", "B"), ("C", "C"), ("A", "A")])
    expected["obj_appearance_order"] = 0.8
    return records, expected


def test_full_aggregation_by_hand():
    records, type_expected = _full_benchmark_records()
    result = vsibench_scores(records)

    assert result["question_type_scores"] == pytest.approx(type_expected, abs=1e-12)
    assert list(result["question_type_scores"]) == list(QUESTION_TYPES)
    assert result["question_type_counts"]["object_rel_direction_medium"] == 3
    # Unweighted over sub-types: (1 + 1/3 + 0) / 3 = 4/9; weighting by questions would give 2/6.
    direction = 4 / 9
    assert result["tasks"]["object_rel_direction"] == pytest.approx(direction, abs=1e-12)
    assert result["task_counts"]["object_rel_direction"] == 6
    assert list(result["tasks"]) == list(TASK_ORDER)
    task_expected = [0.8, 0.5, 0.1, 0.5, 0.75, direction, 0.5, 0.8]
    assert [result["tasks"][t] for t in TASK_ORDER] == pytest.approx(task_expected, abs=1e-12)
    assert result["overall"] == pytest.approx(sum(task_expected) / 8, abs=1e-12)
    assert result["num_records"] == len(records) == 25
    assert result["num_missing_predictions"] == 2
    assert result["missing_prediction_ids"] == ["room_size_estimation-1", "obj_appearance_order-1"]
    assert result["missing_question_types"] == [] and result["missing_tasks"] == []
    assert result["per_record"]["object_abs_distance-1"] == 0.6
    assert result["parsing"] == "lmms-eval-2024"


def test_missing_direction_subtypes_average_the_present_ones_and_are_reported():
    records = [
        mc("e1", "A", "A", "object_rel_direction_easy"),
        mc("h1", "A", "B", "object_rel_direction_hard"),
        mc("h2", "A", "A", "object_rel_direction_hard"),
        num("c1", "4", "5", "object_counting"),
    ]
    result = vsibench_scores(records)
    assert result["tasks"]["object_rel_direction"] == pytest.approx((1.0 + 0.5) / 2)
    assert "object_rel_direction_medium" in result["missing_question_types"]
    assert "object_rel_direction_easy" not in result["missing_question_types"]
    assert result["missing_tasks"] == [t for t in TASK_ORDER if t not in ("object_counting", "object_rel_direction")]
    assert list(result["tasks"]) == ["object_counting", "object_rel_direction"]
    assert result["overall"] == pytest.approx((0.6 + 0.75) / 2)


def test_a_single_task_subset_has_that_task_as_overall():
    result = vsibench_scores([num("a", "10", "11", "object_counting"), num("b", "10", "12", "object_counting")])
    assert result["overall"] == pytest.approx(0.75)
    assert "object_rel_direction" in result["missing_tasks"]


def test_missing_predictions_count_as_wrong_and_are_reported():
    result = vsibench_scores([num("n", "3", None), mc("m", "A", None), mc("ok", "A", "A")])
    assert result["per_record"] == {"n": 0.0, "m": 0.0, "ok": 1.0}
    assert result["num_missing_predictions"] == 2
    assert result["missing_prediction_ids"] == ["n", "m"]


def test_integer_ids_are_kept_as_keys():
    result = vsibench_scores([num(7, "3", "3"), num(8, "3", "6")])
    assert result["per_record"] == {7: 1.0, 8: 0.0}


def _random_records(count, seed):
    """Records covering every question type with realistic and messy answers."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        question_type = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        if question_type in NUMERICAL_TYPES:
            ground_truth = rng.choice([str(rng.randint(1, 12)), f"{rng.uniform(0.2, 9.9):.1f}", f"{rng.uniform(5, 90):.2f}"])
            guess = float(ground_truth) * rng.uniform(0.2, 1.9)
            prediction = rng.choice(
                [f"{guess:.1f}", f"{guess:.2f} meters", f"{round(guess)}", "about 3", "three", "", f"{guess:.1f}."]
            )
            records.append(num(f"r{i}", ground_truth, prediction, question_type))
        else:
            ground_truth = rng.choice("ABCD")
            letter = rng.choice("ABCD")
            prediction = rng.choice([letter, letter.lower(), f"{letter}.", f"{letter}. thing", f"({letter})", " " + letter, ""])
            records.append(mc(f"r{i}", ground_truth, prediction, question_type))
    return records


def _spec_reference_scores(records):
    """Spec §12 written out independently (pandas group-by as upstream) to cross-check the implementation."""
    pd = pytest.importorskip("pandas")
    thresholds = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
    rows = []
    for record in records:
        first_piece = record["prediction"].split(" ")[0].rstrip(".").strip()
        if record["question_type"] in MULTIPLE_CHOICE_TYPES:
            score = 1.0 if first_piece.lower() == record["ground_truth"].lower() else 0.0
        else:
            try:
                value = float(first_piece)
            except ValueError:
                value = None
            target = float(record["ground_truth"])
            score = 0.0 if value is None else (abs(value - target) / target <= 1 - thresholds).mean()
        rows.append({"question_type": record["question_type"], "score": score})
    frame = pd.DataFrame(rows)
    output = {}
    for question_type, indexes in frame.groupby("question_type").groups.items():
        output[question_type] = frame.iloc[indexes]["score"].mean()
    output["object_rel_direction"] = (
        output.pop("object_rel_direction_easy")
        + output.pop("object_rel_direction_medium")
        + output.pop("object_rel_direction_hard")
    ) / 3.0
    output["overall"] = sum(output.values()) / len(output)
    return output


def test_parity_with_the_spec_reference_on_random_records():
    records = _random_records(400, seed=3)
    reference = _spec_reference_scores(records)
    result = vsibench_scores(records)
    for task in TASK_ORDER:
        assert result["tasks"][task] == reference[task], task
    assert result["overall"] == reference["overall"]
    # A test that cannot fail is useless: the answers must actually spread the scores.
    assert 0.05 < result["overall"] < 0.95 and len(set(result["per_record"].values())) > 5


# ---------------------------------------------------------------------------------------------- prompts


def test_numerical_prompt_is_the_lmms_eval_text():
    prompt = build_vsibench_prompt("How many chairs are in this room?", "object_counting")
    assert prompt == (
        "These are frames of a video.\nHow many chairs are in this room?\n"
        "Please answer the question using a single word or phrase."
    )


def test_multiple_choice_prompt_is_the_lmms_eval_text():
    prompt = build_vsibench_prompt("Which is closest to the bed?", "object_rel_distance", options=["A. sofa", "B. lamp"])
    assert prompt == (
        "These are frames of a video.\nWhich is closest to the bed?\nOptions:\nA. sofa\nB. lamp\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_prompt_pre_prompt_override_and_lmms_eval_fallback_for_empty():
    custom = build_vsibench_prompt("Q?", "room_size_estimation", pre_prompt="Frames:")
    assert custom.startswith("Frames:\nQ?\n")
    assert build_vsibench_prompt("Q?", "room_size_estimation", pre_prompt="") == build_vsibench_prompt(
        "Q?", "room_size_estimation"
    )


# ------------------------------------------------------------------------------------- evaluate module


@pytest.mark.parametrize("parsing", ["lmms-eval-2024", "first-number"])
def test_evaluate_load_gives_the_same_numbers_as_the_function(loaded_metric, parsing):
    records, _ = _full_benchmark_records()
    records = [records[-4]] + records  # a None prediction in the first row, which evaluate type-checks
    records[0] = {**records[0], "id": "first", "prediction": None}
    records += [num("words", "3", "three", "object_counting")]
    expected = vsibench_scores(records, parsing=parsing)
    assert loaded_metric.compute(**evaluate_inputs(records), parsing=parsing) == expected
    assert expected["per_record"]["words"] == (1.0 if parsing == "first-number" else 0.0)


def test_evaluate_module_accumulates_batches_and_integer_ids(loaded_metric):
    records = [{**r, "id": i} for i, r in enumerate(_random_records(60, seed=5))]
    inputs = evaluate_inputs(records)
    for start in (0, 25):
        end = 25 if start == 0 else None
        loaded_metric.add_batch(**{k: v[start:end] for k, v in inputs.items()})
    assert loaded_metric.compute() == vsibench_scores(records)


def test_load_vsibench_metric_helper_loads_the_packaged_script():
    pytest.importorskip("evaluate")
    metric = load_vsibench_metric()
    assert type(metric).__name__ == "VsibenchMetric"
    result = metric.compute(
        predictions=["3", "B."], references=["3", "B"], ids=["q1", "q2"],
        question_types=["object_counting", "route_planning"], options=[[], ["A. left", "B. right"]],
    )
    assert result["overall"] == 1.0 and result["num_records"] == 2
