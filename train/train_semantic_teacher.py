"""Train the tiny DINOv3 semantic teacher on SynthRooms views, on the HF Trainer.

    python train/train_semantic_teacher.py --output_dir runs/dinov3-tiny-synthrooms

Renders (and caches) the training scenes, trains ``DINOv3ForPatchClassification`` (each last-layer patch token
classifies its patch's content with soft cross-entropy against the renderer's exact labels; see
``spa3_vlm.training.semantic_teacher`` for why), fits linear probes on the features and on raw patch colours and
scores them on held-out scenes, and exports a hub-style folder (``<output_dir>/teacher``: config, safetensors, model
card, ``eval.json``) that ``DINOv3ViTModel.from_pretrained`` loads. ``hub_configs/dinov3-tiny-synthrooms`` is this
script's output with the defaults. Every ``TrainingArguments`` flag works; an interrupted run resumes.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, HfArgumentParser, TrainingArguments, set_seed

from spa3_vlm.training.flags import at_least
from spa3_vlm.training.psfm import PSFMTrainer, train_resuming
from spa3_vlm.training.semantic_teacher import (
    DINOv3ForPatchClassification,
    SemanticViews,
    collate_semantic_views,
    evaluate_semantic_teacher,
    format_semantic_report,
)
from spa3_vlm.training.teacher_runs import (
    TeacherDataArguments,
    export_teacher_run,
    teacher_flag_problems,
    teacher_scenes,
    teacher_training_defaults,
)

logger = logging.getLogger("train_semantic_teacher")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class TeacherArguments(TeacherDataArguments):
    config_name: str = field(
        default=os.path.join(REPO, "hub_configs", "dinov3-tiny-synthrooms"),
        metadata={"help": "DINOv3 ViT config (folder or config.json) of the teacher to train from scratch."},
    )
    probe_train_views: int = field(default=1024, metadata={"help": "Training views the linear probes are fit on."})


def main(argv=None) -> dict:
    parser = HfArgumentParser((TeacherArguments, TrainingArguments))
    parser.set_defaults(
        **teacher_training_defaults(
            output_dir="runs/dinov3-tiny-synthrooms",
            max_steps=6000,
            per_device_train_batch_size=32,
            learning_rate=1e-3,
            weight_decay=0.05,
            warmup_steps=100,
        )
    )
    argv = sys.argv[1:] if argv is None else argv
    args, training_args = parser.parse_args_into_dataclasses(argv)
    problems = teacher_flag_problems(args, training_args) + at_least(args, ["probe_train_views"], 1)
    if problems:
        parser.error("; ".join(problems))  # one line and exit status 2: a user mistake, not a crash
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(args.cpu_threads)
    set_seed(training_args.seed)

    config = AutoConfig.from_pretrained(args.config_name)
    model = DINOv3ForPatchClassification(config)
    logger.info("semantic teacher: %.2fM parameters", sum(p.numel() for p in model.model.parameters()) / 1e6)
    scenes = teacher_scenes(args, training_args.seed, "train")
    train_views = SemanticViews(scenes, flip=True, seed=training_args.seed)
    trainer = PSFMTrainer(model=model, args=training_args, train_dataset=train_views, data_collator=collate_semantic_views)
    train_resuming(trainer)

    results = {}
    if trainer.is_world_process_zero():
        held_out = teacher_scenes(args, training_args.seed, "test")
        probe_views = SemanticViews(scenes)  # no flips for the probes
        results = evaluate_semantic_teacher(model.model, probe_views, SemanticViews(held_out), args.probe_train_views)
        report = format_semantic_report(results)
        export_teacher_run(model.model, "semantic", report, results, args, training_args, argv, trainer.state.global_step)
    return results


if __name__ == "__main__":
    main()
