"""Helpers for the PSFM pre-training tests: fake scene rows and a tiny resumable Trainer run."""

import os

import numpy as np
import torch
from transformers import AutoConfig, TrainingArguments

from spa3_vlm import Spa3RForFieldPrediction
from spa3_vlm.data.psfm import PSFMCollator, PSFMDataset
from spa3_vlm.training.psfm import PSFMTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "hub_configs", "spa3r-tiny-synthrooms")


def fake_scenes(num_scenes=3, frames=8, size=(28, 42), seed=0):
    """Scene rows with random images, metric depth and cameras walking along x."""
    rng = np.random.default_rng(seed)
    scenes = []
    for s in range(num_scenes):
        extrinsics = []
        for f in range(frames):
            e = np.eye(4, dtype=np.float32)
            e[0, 3] = -0.1 * f  # camera centre at x = 0.1 f
            extrinsics.append(e)
        k = np.array([[30.0, 0, size[1] / 2], [0, 30.0, size[0] / 2], [0, 0, 1]], dtype=np.float32)
        scenes.append(
            {
                "scene_id": f"fake-{s}",
                "images": [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(frames)],
                "extrinsics": extrinsics,
                "intrinsics": [k] * frames,
                "depths": [rng.uniform(1, 5, size).astype(np.float32) for _ in range(frames)],
            }
        )
    return scenes


def psfm_trainer(output_dir, max_steps, callbacks=(), muon=False):
    """A PSFMTrainer on the tiny SynthRooms config (no semantic teacher), three fake scenes, saving every 2 steps."""
    torch.manual_seed(0)
    base = AutoConfig.from_pretrained(TINY)
    without_sem = {  # a valid config (it is saved with the checkpoints): no semantic teacher, no sem losses
        "semantic_teacher_config": None, "semantic_teacher_name_or_path": None, "target_heads": {"geo": 128, "rgb": 3, "metric_depth": 1},
        "loss_weights": {k: v for k, v in (base.loss_weights or {}).items() if not k.startswith("sem")},
        "smooth_l1_beta": {k: v for k, v in (base.smooth_l1_beta or {}).items() if k not in ("sem", "depth_probe")},
        "use_depth_probe": False, "depth_probe_target": "backbone",  # its target, metric_depth, is a head here
    }  # fmt: skip
    config = type(base).from_dict({**base.to_dict(), **without_sem})
    model = Spa3RForFieldPrediction(config)
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=2, learning_rate=1e-3,
        save_steps=2, logging_steps=1, report_to="none", remove_unused_columns=False, seed=0, use_cpu=True,
        lr_scheduler_type="cosine", warmup_steps=1,
    )  # fmt: skip
    dataset = PSFMDataset(fake_scenes(3), num_views=(2, 4), interval=(1, 2), samples_per_scene=2, seed=0)
    collator = PSFMCollator(field_targets=("rgb", "metric_depth"), seed=0)
    return PSFMTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=list(callbacks), muon=muon)
