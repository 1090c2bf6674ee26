"""Train the tiny VGGT geometry teacher on SynthRooms with VGGT's objectives, on the HF Trainer.

    python train/train_geometry_teacher.py --output_dir runs/vggt-tiny-synthrooms

Renders (and caches) the training scenes, trains ``VGGTForGeometryTraining`` (camera, depth and point-map losses
against the renderer's exact ground truth, plus a token read-out; see ``spa3_vlm.training.geometry_teacher``),
scores the teacher on held-out scenes against a median-depth and an identity-pose baseline, and exports a
hub-style folder (``<output_dir>/teacher``: config, safetensors, model card, ``eval.json``) that
``VGGTModel.from_pretrained`` loads. ``hub_configs/vggt-tiny-synthrooms`` is this script's output with the
defaults. Every ``TrainingArguments`` flag works; an interrupted run resumes from its last checkpoint.

    python train/train_geometry_teacher.py --evaluate_only --init_from hub_configs/vggt-tiny-synthrooms --num_eval_scenes 160

scores a saved teacher on more held-out scenes without training.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import AutoConfig, HfArgumentParser, TrainingArguments, set_seed

from spa3_vlm.data.psfm import PSFMCollator, PSFMDataset
from spa3_vlm.training.geometry_teacher import (
    VGGTForGeometryTraining,
    format_geometry_report,
    score_geometry_teacher,
    training_walks,
)
from spa3_vlm.training.flags import at_least
from spa3_vlm.training.psfm import PSFMTrainer, train_resuming
from spa3_vlm.training.teacher_runs import (
    TeacherDataArguments,
    export_teacher_run,
    teacher_flag_problems,
    teacher_scenes,
    teacher_training_defaults,
)

logger = logging.getLogger("train_geometry_teacher")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class TeacherArguments(TeacherDataArguments):
    config_name: str = field(
        default=os.path.join(REPO, "hub_configs", "vggt-tiny-synthrooms"),
        metadata={"help": "VGGT config (folder or config.json) of the teacher to train from scratch."},
    )
    min_views: int = field(default=2, metadata={"help": "Fewest views per sample."})
    max_views: int = field(default=6, metadata={"help": "Most views per sample."})
    min_interval: int = field(default=1, metadata={"help": "Smallest frame step between sampled views."})
    max_interval: int = field(default=4, metadata={"help": "Largest frame step between sampled views."})
    camera_loss_weight: float = field(default=5.0, metadata={"help": "Weight of the camera loss (VGGT: 5)."})
    camera_loss_type: str = field(default="huber", metadata={"help": "huber (the VGGT paper's) or l1."})
    camera_part_weights: str = field(
        default="1,1,1", metadata={"help": "Weights of the camera loss's translation, rotation and fov parts (VGGT: 1,1,1)."}
    )
    translation_direction_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of a 1 - cos term between predicted and true translations (0: VGGT's loss alone)."},
    )
    depth_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the depth-map loss."})
    point_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the point-map loss."})
    readout_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the token read-out loss (0: off)."})
    muon: bool = field(default=True, metadata={"help": "Muon for the aggregator blocks' matrices, AdamW for the rest."})
    init_from: Optional[str] = field(
        default=None, metadata={"help": "Start from this VGGTModel folder (a fine-tune) instead of a random init."}
    )
    evaluate_only: bool = field(
        default=False,
        metadata={
            "help": "Score the teacher at --init_from on --num_eval_scenes held-out scenes (test split of --seed) and "
            "print the report; trains nothing, renders no training scene and writes nothing."
        },
    )
    trainable: str = field(
        default="all",
        metadata={
            "help": "all, or camera_head: train only the camera head on the frozen aggregator, so the tokens (the "
            "PSFM geo targets) and the depth and point heads stay exactly as --init_from has them."
        },
    )


def main(argv=None) -> dict:
    parser = HfArgumentParser((TeacherArguments, TrainingArguments))
    parser.set_defaults(
        **teacher_training_defaults(
            output_dir="runs/vggt-tiny-synthrooms",
            max_steps=6000,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            weight_decay=1e-4,
            warmup_steps=200,
        )
    )
    argv = sys.argv[1:] if argv is None else argv
    args, training_args = parser.parse_args_into_dataclasses(argv)
    problems = teacher_flag_problems(args, training_args) + at_least(args, ["min_views", "min_interval"], 1)
    for name in ("views", "interval"):
        low, high = getattr(args, f"min_{name}"), getattr(args, f"max_{name}")
        if high < low:
            problems.append(f"--max_{name} ({high}) must be >= --min_{name} ({low})")
    if args.trainable not in ("all", "camera_head"):
        problems.append(f"--trainable must be all or camera_head, got {args.trainable!r}")
    if args.evaluate_only and not args.init_from:
        problems.append("--evaluate_only scores a trained teacher: pass --init_from")
    if args.trainable == "camera_head" and not args.init_from:
        problems.append("--trainable camera_head fine-tunes a trained teacher: pass --init_from")
    try:
        part_weights = tuple(float(w) for w in args.camera_part_weights.split(","))
    except ValueError:
        part_weights = ()
    if len(part_weights) != 3 or not all(w >= 0 for w in part_weights):
        problems.append(f"--camera_part_weights must be three weights >= 0 like 1,1,1, got {args.camera_part_weights!r}")
    if args.camera_loss_type not in ("huber", "l1"):
        problems.append(f"--camera_loss_type must be huber or l1, got {args.camera_loss_type!r}")
    weights = ("camera_loss_weight", "translation_direction_weight", "depth_loss_weight", "point_loss_weight", "readout_loss_weight")
    problems += [f"--{name} must be >= 0, got {getattr(args, name)}" for name in weights if not getattr(args, name) >= 0]
    if problems:
        parser.error("; ".join(problems))  # one line and exit status 2: a user mistake, not a crash
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(args.cpu_threads)
    set_seed(training_args.seed)
    if args.evaluate_only:
        from spa3_vlm import VGGTModel

        walks = training_walks(512, args.frames_per_scene, training_args.seed)  # the direction prior's cameras
        results = score_geometry_teacher(VGGTModel.from_pretrained(args.init_from), walks, teacher_scenes(args, training_args.seed, "test"))
        print("\n" + format_geometry_report(results))
        return results

    config = AutoConfig.from_pretrained(args.config_name)
    model = VGGTForGeometryTraining(
        config,
        loss_weights={
            "camera": args.camera_loss_weight,
            "depth": args.depth_loss_weight,
            "points": args.point_loss_weight,
            "readout": args.readout_loss_weight,
        },
        camera_loss_type=args.camera_loss_type,
        camera_part_weights=part_weights,
        translation_direction_weight=args.translation_direction_weight,
    )
    if args.init_from:
        from spa3_vlm import VGGTModel

        start = VGGTModel.from_pretrained(args.init_from)
        model.vggt.load_state_dict(start.state_dict(), strict=True)
        logger.info("fine-tuning from %s", args.init_from)
    if args.trainable == "camera_head":
        for name, module in model.vggt.named_children():
            if name != "camera_head":
                module.requires_grad_(False)
    logger.info("VGGT teacher: %.2fM parameters", sum(p.numel() for p in model.vggt.parameters()) / 1e6)
    scenes = teacher_scenes(args, training_args.seed, "train")
    views, interval = (args.min_views, args.max_views), (args.min_interval, args.max_interval)
    dataset = PSFMDataset(scenes, views, interval, samples_per_scene=1, seed=training_args.seed, cache_scenes=True)
    collator = PSFMCollator(config.patch_size, mask_ratio=0.0, seed=training_args.seed, depth_maps=True)
    trainer = PSFMTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator, muon=args.muon)
    train_resuming(trainer)

    results = {}
    if trainer.is_world_process_zero():
        held_out = teacher_scenes(args, training_args.seed, "test")
        results = score_geometry_teacher(model.vggt, scenes, held_out)
        report = format_geometry_report(results)
        export_teacher_run(model.vggt, "geometry", report, results, args, training_args, argv, trainer.state.global_step)
    return results


if __name__ == "__main__":
    main()
