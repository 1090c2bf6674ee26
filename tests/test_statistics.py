"""Paired scene-bootstrap intervals for VSI-Bench score differences and per-item errors (camera poses)."""

from __future__ import annotations

import numpy as np
import pytest

from spa3_vlm.evaluation.scoring import vsibench_scores
from spa3_vlm.evaluation.statistics import paired_mean_difference, paired_scene_bootstrap

TYPES = ["object_counting", "room_size_estimation", "object_rel_direction_easy", "object_rel_direction_hard"]


def make_records(num_scenes: int, per_scene: int) -> list[dict]:
    return [
        {"id": f"s{s}-q{q}", "question_type": TYPES[q % len(TYPES)], "scene_name": f"scene{s}"}
        for s in range(num_scenes)
        for q in range(per_scene)
    ]


def overall(records, scores) -> float:
    """vsibench_scores' overall for given per-question scores (numerical answers scored by exact MRA hits)."""
    rows = []
    for record in records:
        if record["question_type"].startswith("object_rel_direction"):
            row = {"ground_truth": "A", "options": ["A. x", "B. y"], "prediction": "A" if scores[record["id"]] else "B"}
        else:
            row = {"ground_truth": "10", "prediction": "10" if scores[record["id"]] else "1000"}
        rows.append({**record, **row})
    return vsibench_scores(rows)["overall"]


def test_difference_is_the_overall_difference_and_a_constant_shift_has_no_spread():
    records = make_records(6, 8)
    rng = np.random.default_rng(0)
    a = {r["id"]: float(rng.integers(0, 2)) for r in records}
    b = {r["id"]: float(rng.integers(0, 2)) for r in records}
    result = paired_scene_bootstrap(records, a, b, num_resamples=200)
    assert result["difference"] == pytest.approx(overall(records, a) - overall(records, b))
    assert result["low"] <= result["difference"] <= result["high"] and result["low"] < result["high"]
    assert (result["num_scenes"], result["num_questions"]) == (6, 48)
    # Every draw of a model that is 0.25 better on every question differs by exactly 0.25.
    shifted = {key: value * 0.5 + 0.25 for key, value in b.items()}
    halved = {key: value * 0.5 for key, value in b.items()}
    same = paired_scene_bootstrap(records, shifted, halved, num_resamples=50)
    assert [same["difference"], same["low"], same["high"]] == pytest.approx([0.25] * 3, abs=1e-12)


def test_scenes_not_questions_are_resampled():
    # Model a is better on whole scenes and worse on others: questions of a scene move together, so an interval
    # over scenes must be wider than one that treats every question as its own scene.
    records = make_records(10, 12)
    a = {r["id"]: 1.0 if int(r["scene_name"][5:]) % 2 else 0.0 for r in records}
    b = {r["id"]: 0.5 for r in records}
    by_scene = paired_scene_bootstrap(records, a, b, num_resamples=500, seed=1)
    by_question = paired_scene_bootstrap(records, a, b, scene_key="id", num_resamples=500, seed=1)
    assert by_scene["difference"] == by_question["difference"]
    assert by_scene["high"] - by_scene["low"] > 2 * (by_question["high"] - by_question["low"])
    # Reproducible from its seed.
    assert paired_scene_bootstrap(records, a, b, num_resamples=500, seed=1) == by_scene


def test_bad_input_is_named():
    records = make_records(2, 4)
    scores = {r["id"]: 1.0 for r in records}
    with pytest.raises(ValueError, match=r"scores_b has no score for 1 record\(s\), e.g. \['s1-q3'\]"):
        paired_scene_bootstrap(records, scores, {k: v for k, v in scores.items() if k != "s1-q3"})
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_scene_bootstrap(records, scores, scores, confidence=95)
    with pytest.raises(ValueError, match="no records"):
        paired_scene_bootstrap([], scores, scores)


def test_paired_mean_difference_resamples_scenes():
    # Two scenes of 50 poses: the model is 1 degree better on every pose of one and 1 worse on the other. Scenes are
    # the unit: the draws are AA, AB, BA or BB, so the interval spans [-1, +1]; resampling poses would shrink it to ~0.
    scenes = ["a"] * 50 + ["b"] * 50
    baseline = np.linspace(10.0, 40.0, 100)
    model = baseline + np.where(np.array(scenes) == "a", -1.0, 1.0)
    result = paired_mean_difference(model, baseline, scenes, num_resamples=400)
    assert result["difference"] == pytest.approx(0.0, abs=1e-12)
    assert (result["low"], result["high"]) == pytest.approx((-1.0, 1.0))
    assert (result["num_scenes"], result["num_items"]) == (2, 100)
    per_pose = paired_mean_difference(model, baseline, list(range(100)), num_resamples=400)
    assert per_pose["high"] - per_pose["low"] < 0.5
    # A model better by exactly 2 on every pose has no spread, and the draws follow the seed.
    shifted = paired_mean_difference(baseline - 2.0, baseline, scenes, num_resamples=50)
    assert [shifted["difference"], shifted["low"], shifted["high"]] == pytest.approx([-2.0] * 3)
    assert paired_mean_difference(model, baseline, scenes, seed=3) == paired_mean_difference(model, baseline, scenes, seed=3)


def test_paired_mean_difference_names_bad_input():
    with pytest.raises(ValueError, match=r"of one length, got \(3,\), \(3,\) and 2"):
        paired_mean_difference([1, 2, 3], [1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="must be finite"):
        paired_mean_difference([1.0, float("nan")], [1.0, 2.0], ["a", "b"])
    with pytest.raises(ValueError, match="no items"):
        paired_mean_difference([], [], [])
    with pytest.raises(ValueError, match="num_resamples must be a positive int"):
        paired_mean_difference([1.0], [2.0], ["a"], num_resamples=0)
