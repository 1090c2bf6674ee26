"""train/compare_spatial_branch.py: both arms start as the same function (shared Qwen weights, identity adapter,
the pre-trained Spa3R loaded), and a minimal run writes the table's JSON in the paper's column order."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from spa3_vlm import Spa3RForFieldPrediction
from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor
from spa3_vlm.training.sft_data import Spa3VLMSFTCollator
from spa3_vlm.vsibench import TASK_ORDER

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train"))
import compare_spatial_branch  # noqa: E402


def test_arms_start_from_the_same_qwen_and_the_pretrained_spa3r(spa3r_folder):
    from PIL import Image

    args = compare_spatial_branch.CompareArguments(spa3r_name_or_path=str(spa3r_folder), random_spa3r_control=True)
    arms = compare_spatial_branch.build_arm_models(args, seed=5)
    plain = arms["qwen2.5-vl (no spatial branch)"]
    spatial = arms["spa3-vlm (pre-trained Spa3R)"]
    control = arms["spa3-vlm (random Spa3R)"]
    for name, value in plain.state_dict().items():
        assert torch.equal(spatial.state_dict()[name], value) and torch.equal(control.state_dict()[name], value), name
    source = Spa3RForFieldPrediction.from_pretrained(spa3r_folder).spa3r.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in spatial.spa3r.state_dict().items())
    assert not torch.equal(control.spa3r.projection.weight, spatial.spa3r.projection.weight)
    # The Spa3-VLM arms start from one adapter: they differ only by their Spa3R.
    adapter = {k: v for k, v in spatial.state_dict().items() if compare_spatial_branch.parameter_group(k) == "adapter"}
    assert adapter and all(torch.equal(control.state_dict()[k], v) for k, v in adapter.items())
    # The VGGT-features arm reads the backbone's tokens through the same adapter (its projector input is wider).
    args.vggt_features_arm = True
    features = compare_spatial_branch.build_arm_models(args, seed=5)["spa3-vlm (VGGT features)"]
    assert features.config.spatial_source == "backbone"
    wider = {k for k, v in features.state_dict().items() if k in adapter and v.shape != adapter[k].shape}
    assert wider == {"geometry_projector.0.weight"}
    assert all(torch.equal(features.state_dict()[k], v) for k, v in adapter.items() if k not in wider)
    # Its own start does not depend on which arms are built before it (a resumed run may add arms).
    args.spa3r_variants, args.random_spa3r_control = f"again={spa3r_folder}", False
    alone = compare_spatial_branch.build_arm_models(args, seed=5)["spa3-vlm (VGGT features)"]
    assert all(torch.equal(v, features.state_dict()[k]) for k, v in alone.state_dict().items())
    args.spa3r_variants, args.random_spa3r_control = None, True
    # The "latents as tokens" arm: the same projector start, no cross-attention adapter, the same Qwen weights.
    args.latent_tokens_arm = True
    tokens = compare_spatial_branch.build_arm_models(args, seed=5)["spa3-vlm (latents as tokens)"]
    own = {k: v for k, v in tokens.state_dict().items() if compare_spatial_branch.parameter_group(k) == "adapter"}
    assert tokens.config.spatial_fusion == "tokens" and set(own) == {k for k in adapter if k.startswith("geometry_projector.")}
    assert all(torch.equal(v, adapter[k]) for k, v in own.items())
    assert all(torch.equal(tokens.state_dict()[k], v) for k, v in plain.state_dict().items())

    processor = Spa3VLMProcessor.from_pretrained(REPO / "hub_configs" / "spa3-vlm-tiny")
    frames = [Image.new("RGB", (70, 56), (40 * k, 90, 200 - 30 * k)) for k in range(3)]
    example = {"id": "x", "images": frames, "messages": [
        {"role": "user", "content": [{"type": "image"}] * 3 + [{"type": "text", "text": "How big is the room?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "12.5"}]},
    ]}  # fmt: skip
    batch = Spa3VLMSFTCollator(processor, spatial_inputs="frames")([example])
    with torch.no_grad():
        reference = plain.eval()(**{k: v for k, v in batch.items() if k != "geometry_pixel_values"}).logits
        assert torch.allclose(spatial.eval()(**batch).logits, reference, atol=1e-5)  # identity adapter at the start


def test_minimal_comparison_writes_the_table(spa3r_folder, tmp_path, capsys):
    result = compare_spatial_branch.main([
        "--spa3r_name_or_path", str(spa3r_folder), "--output_dir", str(tmp_path), "--quick",
        "--spa3r_variants", f"again={spa3r_folder}", "--random_spa3r_control", "false", "--vggt_features_arm",
        "--latent_tokens_arm", "--data_cache_dir", str(tmp_path / "data"),
    ])  # fmt: skip
    written = json.loads((tmp_path / "compare_spatial_branch.json").read_text())
    assert written["task_order"] == list(TASK_ORDER)
    assert written["args"]["max_steps"] == 2 and written["args"]["num_eval_scenes"] == 1  # --quick's settings
    arms = written["runs"]["0"]
    assert set(arms) == {
        "qwen2.5-vl (no spatial branch)", "spa3-vlm (pre-trained Spa3R)", "spa3-vlm (again)", "spa3-vlm (VGGT features)",
        "spa3-vlm (latents as tokens)",
    }  # fmt: skip
    tokens = arms.pop("spa3-vlm (latents as tokens)")
    assert 0 < tokens["trainable_parameters"]["adapter"] < arms["spa3-vlm (pre-trained Spa3R)"]["trainable_parameters"]["adapter"]
    assert len(tokens["predictions"]) == written["num_held_out_questions"]
    vggt_features = arms.pop("spa3-vlm (VGGT features)")
    assert vggt_features["trainable_parameters"]["adapter"] > arms["spa3-vlm (pre-trained Spa3R)"]["trainable_parameters"]["adapter"]
    # The variant arm has the same Spa3R, weights, data and seed as the main arm: the same run, the same numbers.
    again, main_arm = arms.pop("spa3-vlm (again)"), arms["spa3-vlm (pre-trained Spa3R)"]
    assert again["predictions"] == main_arm["predictions"] and again["held_out_answer_loss"] == main_arm["held_out_answer_loss"]
    paired = written["paired_difference_to_plain"]
    assert set(paired) == {
        "spa3-vlm (pre-trained Spa3R)", "spa3-vlm (again)", "spa3-vlm (VGGT features)", "spa3-vlm (latents as tokens)"
    }  # fmt: skip
    assert paired["spa3-vlm (again)"] == paired["spa3-vlm (pre-trained Spa3R)"]
    difference = paired["spa3-vlm (again)"]
    assert difference["difference"] == pytest.approx(main_arm["overall"] - arms["qwen2.5-vl (no spatial branch)"]["overall"])
    assert difference["low"] <= difference["difference"] <= difference["high"] and difference["num_scenes"] == 1
    assert written["overall_over_seeds"]["spa3-vlm (again)"]["std"] == 0.0  # one seed
    own = written["plain_overall_interval"]
    assert own["difference"] == pytest.approx(arms["qwen2.5-vl (no spatial branch)"]["overall"])
    assert own["low"] <= own["difference"] <= own["high"]
    prior, plain = written["train_prior"]["tasks"], arms["qwen2.5-vl (no spatial branch)"]["tasks"]
    assert set(written["headroom"]) == set(prior) & set(plain)
    for task, room in written["headroom"].items():
        assert room == pytest.approx({"train_prior": 1 - prior[task], "plain": 1 - plain[task]})
    assert written["flagged_tasks"] == [t for t, room in written["headroom"].items() if min(room.values()) < 0.2]
    for arm in arms.values():
        assert len(arm["predictions"]) == written["num_held_out_questions"] > 0 and 0.0 <= arm["overall"] <= 1.0
        assert arm["held_out_answer_loss"] > 0
    assert arms["spa3-vlm (pre-trained Spa3R)"]["trainable_parameters"]["adapter"] > 0
    assert arms["qwen2.5-vl (no spatial branch)"]["trainable_parameters"]["adapter"] == 0
    assert result["spa3_minus_qwen"][0]["overall"] == pytest.approx(
        arms["spa3-vlm (pre-trained Spa3R)"]["overall"] - arms["qwen2.5-vl (no spatial branch)"]["overall"]
    )
    markdown = (tmp_path / "compare_spatial_branch.md").read_text().splitlines()
    assert len(markdown) == 2 + 1 + 5 + 1  # header, rule, train prior, the arms, question counts
    tasks = [compare_spatial_branch.SHORT_TASK_NAMES[t] for t in TASK_ORDER if t in written["train_prior"]["tasks"]]
    assert markdown[0] == "| " + " | ".join(["arm", "overall (1 seed)", "vs plain [95%]", *tasks, "answer loss"]) + " |"
    spa3 = next(line for line in markdown if line.startswith("| spa3-vlm (pre-trained Spa3R) |")).split(" | ")
    assert spa3[1] == f"{100 * main_arm['overall']:.1f} ± 0.0"
    assert spa3[2] == f"{100 * difference['difference']:+.1f} [{100 * difference['low']:+.1f}, {100 * difference['high']:+.1f}]"
    printed = capsys.readouterr().out
    assert "spa3-vlm (again): " in printed and "headroom below the ceiling" in printed
    header = [line for line in printed.splitlines() if line.startswith("arm")][0]
    assert header.split()[1:] == ["overall", "count", "abs-dist", "obj-size", "room-size", "rel-dist", "rel-dir", "route", "appear", "ans-loss"]


def test_resume_reuses_finished_arms_with_the_same_settings(spa3r_folder, tmp_path, monkeypatch):
    """--resume: a second run with the same settings trains nothing and prints the same table; changed settings or a
    changed Spa3R train again."""
    base = ["--spa3r_name_or_path", str(spa3r_folder), "--output_dir", str(tmp_path), "--quick",
            "--data_cache_dir", str(tmp_path / "data"), "--resume"]  # fmt: skip
    first = compare_spatial_branch.main(base)
    trained = []
    original = compare_spatial_branch.train_arm
    monkeypatch.setattr(
        compare_spatial_branch, "train_arm", lambda name, *rest: trained.append(name) or original(name, *rest)
    )
    again = compare_spatial_branch.main(base)
    assert trained == []
    for key in ("mean_over_seeds", "paired_difference_to_plain", "overall_over_seeds"):
        assert again[key] == first[key]
    weights = spa3r_folder / "model.safetensors"
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a re-trained Spa3R: its arm again
        compare_spatial_branch.main(base)
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert trained == ["spa3-vlm (pre-trained Spa3R)"]
    compare_spatial_branch.main(base + ["--learning_rate", "0.002"])  # another setting: every arm again
    assert trained[1:] == ["qwen2.5-vl (no spatial branch)", "spa3-vlm (pre-trained Spa3R)"]
    # Another arm joins a finished run: only it trains (the arm set is not part of an arm's settings).
    compare_spatial_branch.main(base + ["--learning_rate", "0.002", "--random_spa3r_control"])
    assert trained[3:] == ["spa3-vlm (random Spa3R)"]
