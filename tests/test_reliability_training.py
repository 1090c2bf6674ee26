"""Reliability, training: bad flags of the train/ scripts (PSFM pre-training, SFT, teachers, the comparison) are
refused in one line before any work, bad scene rows and SFT records raise naming the scene or the record, and a run
killed while saving or a damaged checkpoint resumes from the last complete checkpoint or is refused by name."""

import os

import numpy as np
import pytest
import torch
from psfm_testing import fake_scenes, psfm_trainer
from script_testing import assert_refused_in_one_line, import_train_script
from sft_testing import record
from transformers import TrainerCallback

from spa3_vlm.data.psfm import PSFMDataset, sample_strided_frames
from spa3_vlm.training.sft_data import IGNORE_INDEX, Spa3VLMSFTCollator

sft_vlm = import_train_script("sft_vlm")
compare_spatial_branch = import_train_script("compare_spatial_branch")


# ---------------------------------------------------------------------------------------------- scene rows and records


def test_frame_sampling_bounds_order_and_errors():
    interval = (2, 6)
    for seed in range(200):
        rng = np.random.default_rng(seed)
        frames = sample_strided_frames(40, 7, interval, rng)
        steps = np.diff(frames)
        assert frames[0] >= 0 and frames[-1] < 40 and (steps >= 2).all() and (steps <= 6).all()
    assert interval == (2, 6)  # never mutated (the reference shrinks its list in place)
    short = sample_strided_frames(7, 5, (2, 6), np.random.default_rng(0))  # too short for steps of 2
    assert short == sorted(set(short)) and len(short) == 5
    with pytest.raises(ValueError, match="scene kitchen has 3 frames, fewer than the 4 views requested"):
        sample_strided_frames(3, 4, (1, 1), np.random.default_rng(0), scene="kitchen")


def test_dataset_errors_name_the_scene():
    with pytest.raises(ValueError, match="holds no scenes"):
        PSFMDataset([])
    scenes = fake_scenes(1)
    scenes[0]["images"][3] = np.zeros((14, 14, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="scene fake-0 mixes image sizes"):
        PSFMDataset(scenes, num_views=(8, 8))[0]
    scenes = fake_scenes(1)
    scenes[0]["extrinsics"][2] = np.full((4, 4), np.nan, dtype=np.float32)
    for read in (lambda dataset: dataset[0], lambda dataset: dataset.relative_extrinsics(0)):
        with pytest.raises(ValueError, match="scene fake-0 has NaN or infinite camera poses"):
            read(PSFMDataset(scenes, num_views=(8, 8)))
    with pytest.raises(ValueError, match="fewer than the 9 views requested"):
        PSFMDataset(fake_scenes(1), num_views=(9, 9))[0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(images=r["images"][:1]),
         r"record 'bad': the messages have 2 image slot\(s\) but 1 frame\(s\) were given"),
        (lambda r: r.update(images=[r["images"][0], None]), r"record 'bad': frame\(s\) \[1\] of 2 are missing \(None\)"),
        (lambda r: r.pop("images"), r"record 'bad': the messages have 2 image slot\(s\) but 0 frame\(s\)"),
        (lambda r: r.update(messages=r["messages"][:1]),
         r"record 'bad': the conversation has no assistant turn to learn from \(roles: \['user'\]\)"),
        (lambda r: r["messages"][1].update(content=[{"type": "text", "text": " "}]), r"record 'bad': the last assistant turn is empty"),
        (lambda r: r["messages"][1].update(content=[{"type": "text", "text": "about three"}]),
         r"record 'bad': answer 'about three' does not parse for question_type 'object_counting': .*not a number"),
        (lambda r: r["messages"][1].update(content=[{"type": "text", "text": "2.5"}]),
         r"record 'bad': answer '2.5' does not parse .*must be an integer"),
        (lambda r: r.update(question_type="object_rel_distance", options=["A. sofa", "B. bed"]),
         r"record 'bad': answer '3' does not parse for question_type 'object_rel_distance': .*not one of the option letters"),
    ],
)  # fmt: skip
def test_bad_records_raise_naming_the_record(processor, change, message):
    bad = record("bad")
    change(bad)
    collator = Spa3VLMSFTCollator(processor)
    with pytest.raises(ValueError, match=message):
        collator([record("good"), bad])


def test_truncation_errors_name_the_record(processor):
    with pytest.raises(ValueError, match=r"record 'long': Sample 1 has \d+ tokens, more than max_length=30, and truncating it would cut through its image tokens"):
        Spa3VLMSFTCollator(processor, max_length=30)([record("short", num_images=0), record("long", num_images=3)])
    full = Spa3VLMSFTCollator(processor)([record("x", answer="12345678")])
    prompt_length = full["input_ids"].shape[1] - int((full["labels"] != IGNORE_INDEX).sum())
    kept = Spa3VLMSFTCollator(processor, max_length=prompt_length + 1)([record("x", answer="12345678")])
    assert int((kept["labels"] != IGNORE_INDEX).sum()) == 1  # truncated answers keep what is left
    with pytest.raises(ValueError, match=rf"record 'x': no answer token left to learn from after max_length={prompt_length} truncation"):
        Spa3VLMSFTCollator(processor, max_length=prompt_length)([record("x", answer="12345678")])


# ---------------------------------------------------------------------------------------------- checkpoints


class KillWhileSaving(TrainerCallback):
    """Simulates a crash in the middle of writing checkpoint ``step``: its weights are cut short and the Trainer
    never gets to write its ``trainer_state.json``."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            folder = os.path.join(args.output_dir, f"checkpoint-{self.step}")
            os.remove(os.path.join(folder, "trainer_state.json"))
            with open(os.path.join(folder, "model.safetensors"), "r+b") as handle:
                handle.truncate(100)
            raise RuntimeError("killed while saving")


def test_a_run_killed_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path):
    reference = psfm_trainer(tmp_path / "straight", 6)
    reference.train()
    crashed = psfm_trainer(tmp_path / "resumed", 6, [KillWhileSaving(4)])
    with pytest.raises(RuntimeError, match="killed while saving"):
        crashed.train()
    assert sorted(os.listdir(tmp_path / "resumed")) == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(ValueError, match="checkpoint-4 is not a checkpoint to resume from: interrupted while being saved"):
        psfm_trainer(tmp_path / "resumed", 6).train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    resumed = psfm_trainer(tmp_path / "resumed", 6)
    resumed.train(resume_from_checkpoint=True)  # takes checkpoint-2 and removes the cut-short checkpoint-4
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.state.global_step == 6
    with pytest.raises(ValueError, match="No complete checkpoint to resume from"):
        psfm_trainer(tmp_path / "empty", 2).train(resume_from_checkpoint=True)


@pytest.mark.parametrize(
    "damage, named",
    [
        ("remove optimizer.pt", "optimizer.pt is missing"),
        ("remove scheduler.pt", "scheduler.pt is missing"),
        ("remove model.safetensors", "no model weights"),
        ("truncate model.safetensors", "model.safetensors is damaged"),
        ("truncate optimizer.pt", "optimizer.pt is damaged"),
        ("truncate rng_state.pth", "rng_state.pth is damaged"),
    ],
)
def test_resume_refuses_a_damaged_checkpoint_by_name_and_keeps_it(tmp_path, damage, named):
    """A checkpoint saved whole that later lost or damaged a file is refused, naming the file and the newest good
    checkpoint, and is not deleted (the user decides); the good one still resumes to the uninterrupted weights."""
    output = tmp_path / "run"
    psfm_trainer(output, 4).train()
    assert {"checkpoint-2", "checkpoint-4"} <= set(os.listdir(output))
    action, name = damage.split()
    path = output / "checkpoint-4" / name
    if action == "remove":
        path.unlink()
    else:
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    from spa3_vlm.training.psfm import checkpoint_problem, last_complete_checkpoint

    assert named in checkpoint_problem(str(output / "checkpoint-4"))
    assert checkpoint_problem(str(output / "checkpoint-2")) is None
    expected = f"cannot resume from .*checkpoint-4: {named}.*newest good checkpoint is .*checkpoint-2"
    with pytest.raises(ValueError, match=expected):
        last_complete_checkpoint(str(output))
    with pytest.raises(ValueError, match=expected):
        psfm_trainer(output, 4).train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=f"checkpoint-4 is not a checkpoint to resume from: {named}"):
        psfm_trainer(output, 4).train(resume_from_checkpoint=str(output / "checkpoint-4"))
    assert (output / "checkpoint-4").is_dir()  # kept
    resumed = psfm_trainer(output, 4)
    resumed.train(resume_from_checkpoint=str(output / "checkpoint-2"))
    reference = psfm_trainer(tmp_path / "straight", 4)
    reference.train()
    for (key, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key


# ---------------------------------------------------------------------------------------------- command lines


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_steps", "-5"], "--max_steps must be a positive number of steps, or -1 to train --num_train_epochs, got -5"),
        (["--max_steps", "0"], "--max_steps must be a positive number of steps"),
        (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number >= 0 (0 turns clipping off), got nan"),
        (["--muon_momentum", "2.0"], "--muon_momentum must be in [0, 1), got 2.0"),
        (["--learning_rate", "-1"], "--learning_rate must be a positive number, got -1.0"),
        (["--dataset", "imagenet"], "--dataset must be synthrooms, scannet, scannetpp or a comma-separated mix of the real ones (each once), got 'imagenet'"),
        (["--dataset", "scannet"], "--dataset scannet needs --data_root, an existing folder per source (comma-separated, same order); got None"),
        (["--min_views", "5", "--max_views", "4"], "--max_views (4) must be >= --min_views (5)"),
        (["--num_train_scenes", "0"], "--num_train_scenes must be >= 1, got 0"),
        (["--config_overrides", "[1]"], "--config_overrides must be a JSON object of config fields, got '[1]'"),
        (["--config_overrides", "{not json"], "Expecting property name"),
        (["--config_overrides", '{"hidden_size": 60}'], "hidden_size"),
    ],
)
def test_main_job_refuses_bad_flags_in_one_line_before_any_work(tmp_path, capsys, flags, message):
    pretrain_psfm = import_train_script("pretrain_psfm")
    argv = ["--output_dir", str(tmp_path / "run"), *flags]
    assert_refused_in_one_line(pretrain_psfm.main, argv, message, capsys, tmp_path / "run")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_steps", "-5"], "--max_steps must be a positive number of steps, or -1 to train --num_train_epochs"),
        (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number >= 0 (0 turns clipping off), got nan"),
        (["--learning_rate", "0"], "--learning_rate must be a positive number, got 0.0"),
        (["--adapter_lr=-0.001"], "--adapter_lr must be a positive number, got -0.001"),
        (["--merge_lora", "true"], "--merge_lora needs --use_lora"),
        (["--use_lora", "true", "--tune_llm", "false"], "--use_lora trains LoRA weights in the LLM"),
        (["--lora_dropout", "1.5"], "--lora_dropout must be in [0, 1), got 1.5"),
        (["--lora_r", "0"], "--lora_r must be >= 1, got 0"),
        (["--dataset", "vsi590k"], "--dataset vsi590k needs --annotation_path, an existing path; got None"),
        (["--dataset", "no/such/folder"], "--dataset must be synthrooms_qa, vsi590k or a save_to_disk folder"),
        (["--num_train_scenes", "0"], "--num_train_scenes must be >= 1, got 0"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1, got 0"),
        (["--num_frames", "0"], "--num_frames must be >= 1, got 0"),
        (["--video_min_frames", "5", "--video_max_frames", "4"], "--video_max_frames (4) must be >= --video_min_frames (5)"),
    ],
)
def test_sft_refuses_bad_flags_in_one_line_before_any_work(tmp_path, capsys, flags, message):
    argv = ["--output_dir", str(tmp_path / "run"), *flags]
    assert_refused_in_one_line(sft_vlm.main, argv, message, capsys, tmp_path / "run")


@pytest.mark.parametrize(
    "kind, flags, message",
    [
        ("geometry", ["--max_steps", "0"], "--max_steps must be a positive number of steps"),
        ("geometry", ["--min_views", "4", "--max_views", "3"], "--max_views (3) must be >= --min_views (4)"),
        ("geometry", ["--camera_loss_type", "l2"], "--camera_loss_type must be huber or l1, got 'l2'"),
        ("geometry", ["--camera_loss_weight=-1"], "--camera_loss_weight must be >= 0, got -1.0"),
        ("geometry", ["--num_eval_scenes", "0"], "--num_eval_scenes must be >= 1, got 0"),
        ("semantic", ["--probe_train_views", "0"], "--probe_train_views must be >= 1, got 0"),
        ("semantic", ["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number >= 0"),
    ],
)
def test_teacher_scripts_refuse_bad_flags_in_one_line_before_any_work(tmp_path, capsys, kind, flags, message):
    script = import_train_script(f"train_{kind}_teacher")
    argv = ["--output_dir", str(tmp_path / "run"), *flags]
    assert_refused_in_one_line(script.main, argv, message, capsys, tmp_path / "run")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--spa3r_name_or_path", "no/such/run"], "no pre-trained Spa3R at 'no/such/run' (no config.json). Train one first"),
        (["--max_steps", "0"], "--max_steps must be >= 1, got 0"),
        (["--learning_rate", "nan"], "--learning_rate must be a positive number, got nan"),
        (["--seeds", "0,one"], "--seeds must be a comma-separated list of at least one int, got '0,one'"),
        (["--seeds", ","], "--seeds must be a comma-separated list of at least one int"),
        (["--spa3r_variants", "plucker=no/such/run"], "--spa3r_variants plucker: no pre-trained Spa3R at 'no/such/run'"),
        (["--spa3r_variants", "plucker"], "--spa3r_variants entries must be name=folder, got 'plucker'"),
        (["--bootstrap_resamples", "0"], "--bootstrap_resamples must be >= 1, got 0"),
    ],
)
def test_comparison_refuses_bad_flags_in_one_line_before_any_work(spa3r_folder, tmp_path, capsys, flags, message):
    argv = ["--spa3r_name_or_path", str(spa3r_folder), "--output_dir", str(tmp_path / "run"), *flags]
    assert_refused_in_one_line(compare_spatial_branch.main, argv, message, capsys, tmp_path / "run")
