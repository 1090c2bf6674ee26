"""Reliability, evaluation: bad records, unknown parsing modes and question types, bad prompt arguments and
unreadable or conflicting prediction files are refused by name (the VSI-Bench metric, its evaluate module and the
runner); the first-number parser stays linear on adversarial text; a run cut off mid-line resumes."""

import copy
import json
import random
import re
import time

import pytest
from eval_testing import (
    RecordingGenerator,
    fake_records,
    read_jsonl,
    run_main,
    synth_args,
    vsibench_args,
    write_fake_vsibench,
)
from metric_testing import OPTIONS, evaluate_inputs, mc, num

from spa3_vlm.evaluation import (
    build_vsibench_prompt,
    parse_numeric_prediction,
    vsibench_scores,
)
from spa3_vlm.evaluation.predictions import read_predictions
from spa3_vlm.evaluation.samples import load_synthrooms_qa_samples
from spa3_vlm.inference import Spa3VLMGenerator

# ---------------------------------------------------------------------------------------------- metric


def _error_cases():
    good_num = num("n1", "3", "3")
    good_mc = mc("m1", "A", "A")
    cases = {
        "unknown type": ([{**good_num, "question_type": "object_height"}], r"'n1'.*unknown question_type 'object_height'"),
        "missing id": ([{k: v for k, v in good_num.items() if k != "id"}], r"record #0: missing field 'id'"),
        "bool id": ([{**good_num, "id": True}], r"record #0: id must be a string or an int"),
        "missing type": ([{k: v for k, v in good_num.items() if k != "question_type"}], r"'n1'.*missing field 'question_type'"),
        "missing ground truth": ([{k: v for k, v in good_mc.items() if k != "ground_truth"}], r"'m1'.*missing field 'ground_truth'"),
        "missing prediction key": ([{k: v for k, v in good_num.items() if k != "prediction"}], r"'n1'.*missing field 'prediction'"),
        "non-string prediction": ([{**good_num, "prediction": 3}], r"'n1'.*prediction must be a string or None, got int"),
        "duplicate id": ([good_num, {**good_mc, "id": "n1"}], r"'n1' \(#1\): duplicate id"),
        "word ground truth": ([{**good_num, "ground_truth": "three"}], r"'n1'.*ground_truth 'three' is not a finite number"),
        "nan ground truth": ([{**good_num, "ground_truth": "nan"}], r"'n1'.*ground_truth 'nan' is not a finite number"),
        "None ground truth": ([{**good_num, "ground_truth": None}], r"'n1'.*ground_truth None is not a finite number"),
        "numerical with options": ([{**good_num, "options": OPTIONS}], r"'n1'.*takes no options"),
        "mc without options": ([{k: v for k, v in good_mc.items() if k != "options"}], r"'m1'.*needs a non-empty list of options, got None"),
        "mc empty options": ([{**good_mc, "options": []}], r"'m1'.*needs a non-empty list of options, got \[\]"),
        "mc options as text": ([{**good_mc, "options": "A. sofa"}], r"'m1'.*needs a non-empty list of options"),
        "mc unlabeled option": ([{**good_mc, "options": ["sofa", "bed"]}], r"'m1'.*option 'sofa' has no letter label"),
        "mc ground truth not a letter": ([{**good_mc, "ground_truth": "E"}], r"'m1'.*ground_truth 'E' is not one of the option letters \['A', 'B', 'C', 'D'\]"),
        "mc ground truth text": ([{**good_mc, "ground_truth": "sofa"}], r"'m1'.*ground_truth 'sofa' is not one of"),
        "not a mapping": ([good_num, ["n2", "object_counting"]], r"record #1: expected a mapping"),
        "empty": ([], r"records is empty"),
        "a single record, not a list": (good_num, r"records must be a list of mappings, got dict"),
        "None instead of records": (None, r"records must be a list of mappings, got NoneType"),
        "a number instead of records": (3, r"records must be a list of mappings, got int"),
        "mc repeated option letters": (
            [{**good_mc, "options": ["A. sofa", "a. bed", "B. lamp"]}],
            r"'m1'.*options repeat the letter\(s\) \['a'\]",
        ),
    }
    return cases


@pytest.mark.parametrize("case", sorted(_error_cases()))
def test_bad_input_raises_value_error_naming_the_record(case):
    records, message = _error_cases()[case]
    with pytest.raises(ValueError, match=message):
        vsibench_scores(records)


def test_unknown_parsing_mode_is_rejected():
    with pytest.raises(ValueError, match=r"unknown parsing 'regex'; expected one of \['lmms-eval-2024', 'first-number'\]"):
        vsibench_scores([num("n", "3", "3")], parsing="regex")
    with pytest.raises(ValueError, match="unknown parsing"):
        parse_numeric_prediction("3", parsing="lmms-eval")


# The digit rules as one backtracking regex (the parser's previous form): the reference for the linear-time one.
_REFERENCE_NUMBER = re.compile(r"(?:(?<![\w.])[-+])?(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|(?<![\w.])[-+]?\.\d+")


def test_first_number_digit_rules_match_the_reference_regex_on_random_text():
    rng = random.Random(0)
    alphabet = "0123456789,,,..--+ ab"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        if any(c.isalpha() for c in text):
            continue  # words are another rule; digits only here
        found = _REFERENCE_NUMBER.search(text)
        expected = float(found.group(0).replace(",", "")) if found else None
        assert parse_numeric_prediction(text, "first-number") == expected, text


def test_first_number_takes_linear_time_on_long_digit_runs():
    """A 400,000-character run of comma groups that is not in the 1,234 form (its last group has 4 digits) made the
    previous regex retry the group form at every comma: minutes here. A linear parser needs well under a second."""
    text = "1" + ",234" * 100_000 + "5"
    start = time.perf_counter()
    assert parse_numeric_prediction(text, "first-number") == 1.0
    assert parse_numeric_prediction("x " + text[:-1], "first-number") == float("1" + "234" * 100_000)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"question_type": "height"}, r"unknown question_type 'height'"),
        ({"question_type": "route_planning"}, r"'route_planning' is multiple choice and needs a non-empty list"),
        ({"question_type": "route_planning", "options": "A. left"}, r"needs a non-empty list of option strings"),
        ({"question_type": "object_counting", "options": ["A. 1"]}, r"'object_counting' is numerical and takes no options"),
    ],
)
def test_prompt_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_vsibench_prompt("Q?", **kwargs)


def test_evaluate_module_reports_bad_records(loaded_metric):
    records = [num("n1", "3", "3"), num("n1", "4", "4")]
    with pytest.raises(ValueError, match=r"'n1' \(#1\): duplicate id"):
        loaded_metric.compute(**evaluate_inputs(records))


# ---------------------------------------------------------------------------------------------- runner


def test_resume_skips_answered_ids_and_recomputes_a_corrupt_last_line(synth_dir, tmp_path, capsys):
    output = tmp_path / "preds.jsonl"
    first = RecordingGenerator(default="7")
    assert run_main(synth_args(synth_dir, output, "--limit", "2"), generator=first) == 0
    assert len(first.requests) == 2

    second = RecordingGenerator(default="7")
    assert run_main(synth_args(synth_dir, output, "--batch_size", "3"), generator=second) == 0
    assert len(second.requests) == 4 and [len(call) for call in second.calls] == [3, 1]  # only the 4 new ones
    assert "2 of 6 questions already answered" in capsys.readouterr().err
    samples, _ = load_synthrooms_qa_samples(str(synth_dir))
    assert [prompt for _, prompt in second.requests] == [sample.prompt for sample in samples[2:]]
    lines = read_jsonl(output)
    assert [line["id"] for line in lines] == [sample.id for sample in samples]

    # A crash in the middle of writing the last line: cut it in half (no newline at the end).
    text = output.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    output.write_text(text[: last_start + 25])
    third = RecordingGenerator(default="7")
    assert run_main(synth_args(synth_dir, output), generator=third) == 0
    err = capsys.readouterr().err
    assert "dropped 1 unreadable line(s) (line 6: not valid JSON" in err
    assert [prompt for _, prompt in third.requests] == [samples[-1].prompt]  # only the cut question again
    repaired = read_jsonl(output)
    assert [line["id"] for line in repaired] == [line["id"] for line in lines]  # the question came back, once
    assert output.read_text().endswith("\n")

    # Nothing left: a rerun generates nothing.
    fourth = RecordingGenerator()
    assert run_main(synth_args(synth_dir, output), generator=fourth) == 0 and fourth.calls == []


def test_predictions_for_another_dataset_are_refused_before_generating(vsibench_dir, tmp_path, capsys):
    output = tmp_path / "preds.jsonl"
    output.write_text(json.dumps({"id": 0, "prediction": "3"}) + "\n" + json.dumps({"id": 999, "prediction": "A"}) + "\n")
    generator = RecordingGenerator()
    assert run_main(vsibench_args(vsibench_dir, output), generator=generator) == 2
    assert generator.calls == []
    assert "holds 1 prediction(s) whose ids are not in the dataset (e.g. [999])" in capsys.readouterr().err

    output.write_text(json.dumps({"id": 0, "question_type": "room_size_estimation", "prediction": "3"}) + "\n")
    assert run_main(vsibench_args(vsibench_dir, output), generator=generator) == 2
    assert "id 0: 'room_size_estimation' vs 'object_counting'" in capsys.readouterr().err


def test_score_only_refuses_unreadable_lines(vsibench_dir, tmp_path, capsys):
    output = tmp_path / "preds.jsonl"
    output.write_text(json.dumps({"id": 0, "prediction": 3}) + "\n")
    assert run_main(vsibench_args(vsibench_dir, output, "--score_only")) == 2
    assert "line 1: prediction must be a string, got int 3" in capsys.readouterr().err


def test_conflicting_duplicate_answers_are_an_error(tmp_path):
    output = tmp_path / "preds.jsonl"
    output.write_text(json.dumps({"id": 4, "prediction": "A"}) + "\n" + json.dumps({"id": 4, "prediction": "B"}) + "\n")
    with pytest.raises(ValueError, match=r"id 4 appears twice with different answers \(line 2: 'B' vs 'A'\)"):
        read_predictions(output)
    output.write_text(json.dumps({"id": 4, "prediction": "A"}) + "\n" + json.dumps({"id": 4, "prediction": "A"}) + "\n")
    assert read_predictions(output).duplicate_lines == [2]


def test_unknown_question_types_and_malformed_records_are_errors(tmp_path, capsys):
    records = fake_records()
    records[1]["question_type"] = "object_height"
    records[2]["question_type"] = "object_height"
    root = write_fake_vsibench(tmp_path / "bad", records)
    assert run_main(vsibench_args(root, tmp_path / "p.jsonl"), generator=RecordingGenerator()) == 2
    assert "2 record(s) have unknown question types {'object_height': 2}" in capsys.readouterr().err

    records = fake_records()
    records[4]["ground_truth"] = "E"  # not one of the options A-D
    root = write_fake_vsibench(tmp_path / "bad2", records)
    assert run_main(vsibench_args(root, tmp_path / "p2.jsonl"), generator=RecordingGenerator()) == 2
    assert "ground_truth 'E' is not one of the option letters ['A', 'B', 'C', 'D']" in capsys.readouterr().err


def test_generator_rejects_empty_requests(spa3_dir):
    generator = Spa3VLMGenerator.from_pretrained(str(spa3_dir), device="cpu")
    with pytest.raises(ValueError, match="request #0 has no frames"):
        generator.generate([([], "How many chairs?")])
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int, got 0"):
        Spa3VLMGenerator(generator.model, generator.processor, max_new_tokens=0)
    # A processor that appends a latent-token slot, for a model that reads latents through its adapter.
    slotted = copy.copy(generator.processor)
    slotted.spatial_slot_tokens = 64
    with pytest.raises(ValueError, match=r"latent-token slot of 64 tokens .* the model needs 0 \(its spatial_fusion: 'cross_attention'\)"):
        Spa3VLMGenerator(generator.model, slotted)
