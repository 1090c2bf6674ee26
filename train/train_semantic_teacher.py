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

from spa3_vlm.data.synthrooms import load_synthrooms
from spa3_vlm.training.psfm import PSFMTrainer, last_complete_checkpoint
from spa3_vlm.training.semantic_teacher import (
    DINOv3ForPatchClassification,
    SemanticViews,
    collate_semantic_views,
    evaluate_semantic_teacher,
    format_semantic_report,
)
from spa3_vlm.training.teacher_export import save_teacher

logger = logging.getLogger("train_semantic_teacher")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class TeacherArguments:
    config_name: str = field(
        default=os.path.join(REPO, "hub_configs", "dinov3-tiny-synthrooms"),
        metadata={"help": "DINOv3 ViT config (folder or config.json) of the teacher to train from scratch."},
    )
    export_dir: str = field(default=None, metadata={"help": "Hub-style teacher folder (default: <output_dir>/teacher)."})
    num_train_scenes: int = field(default=2000, metadata={"help": "SynthRooms training scenes (rendered once, cached)."})
    num_eval_scenes: int = field(default=24, metadata={"help": "Held-out (test split) scenes for the report."})
    frames_per_scene: int = field(default=16, metadata={"help": "Frames of each scene's camera walk."})
    image_height: int = field(default=84, metadata={"help": "Image height."})
    image_width: int = field(default=112, metadata={"help": "Image width."})
    probe_train_views: int = field(default=1024, metadata={"help": "Training views the linear probes are fit on."})
    render_processes: int = field(default=2, metadata={"help": "Processes that render the scenes (once, cached)."})
    cpu_threads: int = field(default=2, metadata={"help": "torch threads on CPU (0 = torch's default)."})


def main(argv=None) -> dict:
    parser = HfArgumentParser((TeacherArguments, TrainingArguments))
    parser.set_defaults(
        output_dir="runs/dinov3-tiny-synthrooms",
        max_steps=6000,
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        weight_decay=0.05,
        warmup_steps=100,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=100,
        save_steps=1000,
        save_total_limit=2,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps copies to a GPU
        remove_unused_columns=False,
        seed=0,
    )
    argv = sys.argv[1:] if argv is None else argv
    args, training_args = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(args.cpu_threads)
    set_seed(training_args.seed)

    config = AutoConfig.from_pretrained(args.config_name)
    model = DINOv3ForPatchClassification(config)
    logger.info("semantic teacher: %.2fM parameters", sum(p.numel() for p in model.model.parameters()) / 1e6)
    image_size = (args.image_height, args.image_width)
    scenes = load_synthrooms(
        args.num_train_scenes, args.frames_per_scene, image_size, training_args.seed, "train", num_proc=args.render_processes
    )
    train_views = SemanticViews(scenes, flip=True, seed=training_args.seed)
    trainer = PSFMTrainer(model=model, args=training_args, train_dataset=train_views, data_collator=collate_semantic_views)
    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir):
        resume = last_complete_checkpoint(training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume)

    results = {}
    if trainer.is_world_process_zero():
        held_out = load_synthrooms(
            args.num_eval_scenes, args.frames_per_scene, image_size, training_args.seed, "test", num_proc=args.render_processes
        )
        probe_views = SemanticViews(scenes)  # no flips for the probes
        results = evaluate_semantic_teacher(model.model, probe_views, SemanticViews(held_out), args.probe_train_views)
        report = format_semantic_report(results)
        print("\n" + report)
        export_dir = args.export_dir or os.path.join(training_args.output_dir, "teacher")
        command = "python train/train_semantic_teacher.py " + " ".join(argv)
        save_teacher(model.model, export_dir, kind="semantic", report=report, results=results, command=command.strip(),
                     steps=trainer.state.global_step)
        print(f"semantic teacher saved to {export_dir}")
    return results


if __name__ == "__main__":
    main()
