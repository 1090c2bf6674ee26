"""The VSI-Bench evaluation runner: end to end on tiny models, resume, frame sampling, scoring joins, bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from eval_testing import (
    FAKE_SCENES,
    RecordingGenerator,
    fake_records,
    frame_index,
    read_jsonl,
    run_main,
    save_tiny_qwen,
    synth_args,
    vsibench_args,
    write_fake_vsibench,
)
from transformers import Qwen2_5_VLForConditionalGeneration

from spa3_vlm.evaluation.runner import format_table
from spa3_vlm.evaluation.samples import load_synthrooms_qa_samples
from spa3_vlm.processing_spa3_vlm import sample_frame_indices
from spa3_vlm.evaluation.scoring import vsibench_scores
from spa3_vlm.inference import (
    Spa3VLMGenerator,
    load_model,
    model_class_for,
    resolve_device,
)
from spa3_vlm.modeling_spa3_vlm import Spa3VLMForConditionalGeneration
from spa3_vlm.vsibench import build_vsibench_prompt

# The VSI-Bench paper's column order, written out (not imported) so a wrong TASK_ORDER fails too.
PAPER_COLUMNS = ["Avg.", "Obj.Count", "Abs.Dist", "Obj.Size", "Room Size", "Rel.Dist", "Rel.Dir", "Route Plan", "Appr.Order"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_tiny_qwen(tmp_path_factory.mktemp("spa3-vlm-lookalike") / "model")


def expected_overall(records, predictions):
    """Overall score recomputed from the written predictions (stripped, as lmms-eval does) joined by id."""
    joined = [{**record, "prediction": predictions[record["id"]].strip()} for record in records]
    return vsibench_scores(joined)["overall"]


# ---------------------------------------------------------------------------------------------- end to end


def test_synthrooms_qa_end_to_end_with_tiny_spa3_vlm(spa3_dir, synth_dir, tmp_path, capsys):
    output = tmp_path / "predictions.jsonl"
    assert run_main(["--model", spa3_dir, *synth_args(synth_dir, output, "--batch_size", "2")]) == 0
    printed = capsys.readouterr().out

    samples, _ = load_synthrooms_qa_samples(str(synth_dir))
    lines = read_jsonl(output)
    assert [line["id"] for line in lines] == [sample.id for sample in samples]  # every question once, in order
    assert all(line["num_frames"] == 4 for line in lines)  # SynthRooms scenes have 4 frames (< 32): all kept

    metrics = json.loads((tmp_path / "predictions.metrics.json").read_text())
    records = [dict(sample.record) for sample in samples]
    assert metrics["num_records"] == len(samples) == 6
    assert metrics["overall"] == pytest.approx(expected_overall(records, {l["id"]: l["prediction"] for l in lines}))
    assert metrics["settings"]["model_class"] == "Spa3VLMForConditionalGeneration"
    assert metrics["settings"]["dtype"] == "float32" and metrics["settings"]["device"] == "cpu"
    assert metrics["settings"]["generation_config"]["do_sample"] is False
    assert [cell.strip() for cell in printed.splitlines()[0].split("|")[1:-1]] == PAPER_COLUMNS

    # The runner's answer for a question is the model's greedy answer to the reference prompt and frames.
    generator = Spa3VLMGenerator.from_pretrained(str(spa3_dir), device="cpu")
    first = samples[0]
    prompt = build_vsibench_prompt(first.record["question"], first.record["question_type"], first.record["options"])
    assert first.prompt == prompt
    assert generator.generate([(first.load_frames(32), prompt)]) == [lines[0]["prediction"]]
    # Random weights still give a real answer (not an empty or constant string) for the comparison to mean something.
    assert len({line["prediction"] for line in lines}) > 1


def test_batched_left_padded_generation_matches_one_by_one(spa3_dir, vsibench_dir, tmp_path):
    # 32 frames and 10 frames: different prompt lengths, so batch 2 needs left padding to give the same answers.
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    common = ["--model", spa3_dir, "--limit", "4"]
    assert run_main([*common, *vsibench_args(vsibench_dir, one, "--batch_size", "1")]) == 0
    assert run_main([*common, *vsibench_args(vsibench_dir, two, "--batch_size", "2")]) == 0
    first, second = read_jsonl(one), read_jsonl(two)
    assert [l["num_frames"] for l in first] == [32, 10, 32, 10]
    assert [l["prediction"] for l in first] == [l["prediction"] for l in second]


def test_scene_grouping_gives_the_same_answers_with_one_decode_and_encoder_run_per_video(spa3_dir, vsibench_dir, tmp_path, monkeypatch):
    import spa3_vlm.video

    decoded = []
    load = spa3_vlm.video.load_video_frames
    monkeypatch.setattr(spa3_vlm.video, "load_video_frames", lambda path, n: decoded.append(path) or load(path, n))
    generator = Spa3VLMGenerator.from_pretrained(str(spa3_dir), device="cpu")
    encoded = []
    generator.model.spa3r.register_forward_hook(lambda module, args, output: encoded.append(output.latents.shape[0]))
    grouped, single = tmp_path / "grouped.jsonl", tmp_path / "single.jsonl"
    common = ["--limit", "6", "--batch_size", "2"]
    # The questions alternate between the two videos (ids 0, 2, 4: 100 frames; 1, 3, 5: 10 frames). A first run
    # stops after 3 of them; the second resumes with the other 3.
    assert run_main([*vsibench_args(vsibench_dir, grouped, "--limit", "3", "--batch_size", "2")], generator=generator) == 0
    assert run_main([*vsibench_args(vsibench_dir, grouped, *common)], generator=generator) == 0
    assert len(decoded) == 4 and encoded == [1, 1, 1, 1]  # per run, each video decoded once and Spa3R once per video
    decoded.clear(), encoded.clear()
    assert run_main([*vsibench_args(vsibench_dir, single, *common, "--no_scene_grouping")], generator=generator) == 0
    assert len(decoded) == 6 and encoded == [1] * 6  # per question
    # The same answers, and the finished file in dataset order either way.
    assert read_jsonl(grouped) == read_jsonl(single) and [line["id"] for line in read_jsonl(grouped)] == list(range(6))


def test_latent_cache_dir_keeps_scene_latents_across_runs(spa3_dir, vsibench_dir, tmp_path, capsys):
    generator = Spa3VLMGenerator.from_pretrained(str(spa3_dir), device="cpu")
    encoded = []
    generator.model.spa3r.register_forward_hook(lambda module, args, output: encoded.append(output.latents.shape[0]))
    cache = tmp_path / "latents"
    common = ["--limit", "6", "--batch_size", "2", "--latent_cache_dir", cache]
    first, second, plain = tmp_path / "first.jsonl", tmp_path / "second.jsonl", tmp_path / "plain.jsonl"
    assert run_main(vsibench_args(vsibench_dir, first, *common), generator=generator) == 0
    assert encoded == [1, 1]  # two videos, each encoded once and stored
    (store,) = (cache / "spa3r_scene_latents").iterdir()
    assert len(list(store.glob("*.safetensors"))) == 2 and not list(store.glob(".*"))  # no staging files left
    assert "0 scene(s) read" in capsys.readouterr().err
    # A new run (a fresh predictions file) reads both scenes and never runs Spa3R; answers equal a run without cache.
    assert run_main(vsibench_args(vsibench_dir, second, *common), generator=generator) == 0
    assert encoded == [1, 1] and "2 scene(s) read" in capsys.readouterr().err
    assert run_main(vsibench_args(vsibench_dir, plain, "--limit", "6", "--batch_size", "2"), generator=generator) == 0
    assert read_jsonl(first) == read_jsonl(second) == read_jsonl(plain)

    # Other encoder weights: another store, nothing stale is read.
    weight = next(generator.model.spa3r.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.5)
    encoded.clear()
    assert run_main(vsibench_args(vsibench_dir, tmp_path / "changed.jsonl", *common), generator=generator) == 0
    assert encoded == [1, 1] and len(list((cache / "spa3r_scene_latents").iterdir())) == 2

    # A damaged entry is named, not silently used or recomputed.
    entry = next(store.glob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:40])
    with torch.no_grad():
        weight.copy_(saved)
    assert run_main(vsibench_args(vsibench_dir, tmp_path / "broken.jsonl", *common), generator=generator) == 2
    assert f"unreadable latent cache entry {entry}" in capsys.readouterr().err
    assert run_main(vsibench_args(vsibench_dir, tmp_path / "x.jsonl", *common, "--no_scene_grouping"), generator=generator) == 2
    assert "drop --no_scene_grouping" in capsys.readouterr().err


def test_plain_qwen_checkpoint_is_loaded_by_model_type(qwen_dir, spa3_dir, vsibench_dir, tmp_path):
    output = tmp_path / "qwen.jsonl"
    assert run_main(["--model", qwen_dir, *vsibench_args(vsibench_dir, output, "--limit", "2", "--batch_size", "2")]) == 0
    metrics = json.loads((tmp_path / "qwen.metrics.json").read_text())
    assert metrics["settings"]["model_class"] == "Qwen2_5_VLForConditionalGeneration"
    assert len(read_jsonl(output)) == 2

    device = resolve_device("cpu")
    qwen = load_model(str(qwen_dir), device=device, dtype=torch.float32)
    spa3 = load_model(str(spa3_dir), device=device, dtype=torch.float32)
    # Folder names say the opposite of what the configs say.
    assert "spa3-vlm" in str(qwen_dir) and type(qwen) is Qwen2_5_VLForConditionalGeneration
    assert "qwen" in str(spa3_dir) and type(spa3) is Spa3VLMForConditionalGeneration
    with pytest.raises(ValueError, match=r"model_type 'llava'; expected one of \['spa3_vlm', 'spa3_vlm_qwen3', 'qwen2_5_vl', 'qwen3_vl'\]"):
        model_class_for(SimpleNamespace(model_type="llava"))
    from transformers import Qwen3VLForConditionalGeneration

    from spa3_vlm import Spa3VLMQwen3ForConditionalGeneration

    assert model_class_for(SimpleNamespace(model_type="spa3_vlm_qwen3")) is Spa3VLMQwen3ForConditionalGeneration
    assert model_class_for(SimpleNamespace(model_type="qwen3_vl")) is Qwen3VLForConditionalGeneration


# ---------------------------------------------------------------------------------------------- frames


def test_frame_indices_follow_the_reference_rule():
    # linspace(0, n-1, 32) cast to int == floor(k (n-1) / 31): exact integer arithmetic, independent of numpy.
    assert sample_frame_indices(100, 32) == [k * 99 // 31 for k in range(32)]
    assert sample_frame_indices(100, 32)[:4] == [0, 3, 6, 9] and sample_frame_indices(100, 32)[-1] == 99
    assert sample_frame_indices(10, 32) == list(range(10))
    assert sample_frame_indices(32, 32) == list(range(32))


def test_videos_are_decoded_at_the_reference_frame_indices(vsibench_dir, tmp_path):
    generator = RecordingGenerator()
    assert run_main(vsibench_args(vsibench_dir, tmp_path / "p.jsonl", "--limit", "2"), generator=generator) == 0
    (long_frames, _), (short_frames, _) = generator.requests
    assert [frame_index(frame) for frame in long_frames] == [k * 99 // 31 for k in range(32)]  # 32 of 100
    assert [frame_index(frame) for frame in short_frames] == list(range(10))  # 10 frames: all of them


# ---------------------------------------------------------------------------------------------- scoring


def graded_answers():
    """Answers per fake question and the scores they must get (reference metric, computed by hand)."""
    answers = {
        "Question 0:": "3",  # counting, exact: 1
        "Question 1:": "2.14 meters",  # |2.14-2|/2 = 0.07 passes theta <= 0.90: 9/10
        "Question 2:": "banana",  # size: no number: 0 (wrong kind)
        "Question 3:": "25.2",  # |25.2-20|/20 = 0.26 passes theta <= 0.70: 5/10
        "Question 4:": " B.\n",  # rel distance: stripped as lmms-eval does, then "B": 1
        "Question 5:": "A",  # direction easy: 1
        "Question 6:": "b",  # direction medium, truth C: 0 (an option, so not a wrong kind)
        "Question 7:": "d",  # direction hard, truth D, case-insensitive: 1
        "Question 8:": "Z",  # route: not an option: 0 (wrong kind)
        "Question 9:": "C. table",  # appearance order: "C": 1
    }
    tasks = [1.0, 0.9, 0.0, 0.5, 1.0, 2 / 3, 0.0, 1.0]  # TASK_ORDER
    return answers, tasks


@pytest.mark.parametrize("source", ["parquet", "jsonl"])
def test_fake_vsibench_folder_scores_joined_by_id(vsibench_dir, tmp_path, capsys, source):
    answers, task_scores = graded_answers()
    extra = ["--records", vsibench_dir / "records.jsonl"] if source == "jsonl" else []
    output = tmp_path / "preds.jsonl"
    assert run_main(vsibench_args(vsibench_dir, output, *extra), generator=RecordingGenerator(answers)) == 0
    metrics = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert metrics["overall"] == pytest.approx(sum(task_scores) / 8)
    assert list(metrics["tasks"].values()) == pytest.approx(task_scores)
    assert metrics["answer_kind_errors"] == {"no_number": 1, "not_an_option": 1}
    table = capsys.readouterr().out.splitlines()
    values = [cell.strip() for cell in table[2].split("|")[1:-1]]
    assert values == ["63.3", "100.0", "90.0", "0.0", "50.0", "100.0", "66.7", "0.0", "100.0"]  # 5.0667 / 8 = 63.3
    assert "1 numerical without a number, 1 multiple-choice not an option letter" in table[-2]


def test_table_follows_the_paper_column_order():
    tasks = {"object_counting": 0.01, "object_abs_distance": 0.02, "object_size_estimation": 0.03,
             "room_size_estimation": 0.04, "object_rel_distance": 0.05, "object_rel_direction": 0.06,
             "route_planning": 0.07, "obj_appearance_order": 0.08}  # fmt: skip
    metrics = {"overall": 0.5, "tasks": dict(reversed(list(tasks.items()))), "task_counts": {}, "num_records": 8}
    header, _, values, _ = format_table(metrics).splitlines()[:4]
    assert [cell.strip() for cell in header.split("|")[1:-1]] == PAPER_COLUMNS
    expected = ["50.0", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0", "7.0", "8.0"]
    assert [cell.strip() for cell in values.split("|")[1:-1]] == expected


# ---------------------------------------------------------------------------------------------- resume


def test_broken_lines_in_the_middle_are_reported_and_recomputed(vsibench_dir, tmp_path, capsys):
    output = tmp_path / "preds.jsonl"
    good = [{"id": 0, "question_type": "object_counting", "prediction": "3"}]
    broken = [
        '{"id": 1, "question_type": "object_abs_distance", "prediction": 2.0}',  # answer of the wrong kind
        "this is not json",
        '{"prediction": "A"}',  # no id
    ]
    output.write_text("\n".join([json.dumps(good[0]), *broken]) + "\n")
    generator = RecordingGenerator(default="A")
    assert run_main(vsibench_args(vsibench_dir, output), generator=generator) == 0
    err = capsys.readouterr().err
    assert "dropped 3 unreadable line(s) (line 2: prediction must be a string, got float 2.0; line 3: not valid JSON" in err
    assert "line 4: no 'id'" in err
    assert len(generator.requests) == 9  # all but id 0
    assert sorted(line["id"] for line in read_jsonl(output)) == list(range(10))


# ---------------------------------------------------------------------------------------------- bad input


def test_score_only_reports_missing_ids_and_scores_them_as_wrong_when_allowed(vsibench_dir, tmp_path, capsys):
    answers, task_scores = graded_answers()
    output = tmp_path / "preds.jsonl"
    lines = [{"id": r["id"], "prediction": answers[f"Question {r['id']}:"]} for r in fake_records() if r["id"] != 0]
    output.write_text("".join(json.dumps(line) + "\n" for line in lines))

    assert run_main(vsibench_args(vsibench_dir, output, "--score_only")) == 2
    assert "1 of 10 questions have no prediction" in capsys.readouterr().err
    assert run_main(vsibench_args(vsibench_dir, output, "--score_only", "--allow_missing")) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert metrics["num_missing_predictions"] == 1 and metrics["missing_prediction_ids"] == [0]
    task_scores[0] = 0.0  # the unanswered counting question scores 0
    assert metrics["overall"] == pytest.approx(sum(task_scores) / 8)
    assert "questions without a prediction (scored 0): 1" in out


def test_missing_videos_and_model_are_reported_before_loading_anything(vsibench_dir, tmp_path, capsys):
    root = write_fake_vsibench(tmp_path / "vsi")
    dataset, scene, _ = FAKE_SCENES["short"]
    (root / dataset / f"{scene}.mp4").unlink()
    assert run_main(["--model", tmp_path / "nowhere", *vsibench_args(root, tmp_path / "p.jsonl")]) == 2
    assert f"1 video(s) are missing under {root}" in capsys.readouterr().err

    assert run_main(vsibench_args(vsibench_dir, tmp_path / "p.jsonl")) == 2
    assert "--model is required" in capsys.readouterr().err
    assert run_main(["--model", tmp_path / "nowhere", "--dataset", "vsibench", "--output", tmp_path / "p.jsonl"]) == 2
    assert "--data_root is required for vsibench" in capsys.readouterr().err


def test_generation_config_of_another_folder_is_merged_but_decoding_stays_greedy(spa3_dir, synth_dir, tmp_path, capsys):
    from transformers import GenerationConfig

    released = tmp_path / "released"
    sampling = GenerationConfig(
        do_sample=True, temperature=0.1, top_k=1, top_p=0.001, repetition_penalty=1.3, eos_token_id=2
    )
    sampling.save_pretrained(released)
    output = tmp_path / "p.jsonl"
    argv = ["--model", spa3_dir, "--generation_config", released, *synth_args(synth_dir, output, "--limit", "1")]
    assert run_main(argv) == 0
    used = json.loads((tmp_path / "p.metrics.json").read_text())["settings"]["generation_config"]
    assert used["repetition_penalty"] == 1.3 and used["do_sample"] is False and used["max_new_tokens"] == 16
    assert "temperature" not in used and "top_k" not in used

    assert run_main(["--model", spa3_dir, "--generation_config", tmp_path / "none", *synth_args(synth_dir, output)]) == 2
    assert "no generation_config.json in" in capsys.readouterr().err
