"""What the two teacher-training scripts share: their data flags, Trainer defaults, scenes and export."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..data.synthrooms import load_synthrooms
from .flags import at_least, training_flag_problems
from .teacher_export import save_teacher, training_stages

__all__ = [
    "TeacherDataArguments",
    "export_teacher_run",
    "teacher_flag_problems",
    "teacher_scenes",
    "teacher_training_defaults",
]


@dataclass
class TeacherDataArguments:
    """Where a teacher is exported and the SynthRooms scenes it learns from and is scored on."""

    export_dir: Optional[str] = field(
        default=None, metadata={"help": "Hub-style teacher folder (default: <output_dir>/teacher)."}
    )
    num_train_scenes: int = field(
        default=2000, metadata={"help": "SynthRooms training scenes (rendered once, cached)."}
    )
    num_eval_scenes: int = field(default=24, metadata={"help": "Held-out (test split) scenes for the report."})
    frames_per_scene: int = field(default=16, metadata={"help": "Frames of each scene's camera walk."})
    image_height: int = field(default=84, metadata={"help": "Image height (a multiple of the patch size)."})
    image_width: int = field(default=112, metadata={"help": "Image width (a multiple of the patch size)."})
    render_processes: int = field(default=2, metadata={"help": "Processes that render the scenes (once, cached)."})
    cpu_threads: int = field(default=2, metadata={"help": "torch threads on CPU (0 = torch's default)."})


def teacher_flag_problems(args: TeacherDataArguments, training) -> list[str]:
    """The shared flag checks of the teacher scripts (``spa3_vlm.training.flags``); each script adds its own."""
    problems = training_flag_problems(training)
    problems += at_least(
        args,
        ["num_train_scenes", "num_eval_scenes", "frames_per_scene", "image_height", "image_width", "render_processes"],
        1,
    )
    return problems + at_least(args, ["cpu_threads"], 0)


def teacher_training_defaults(**overrides) -> dict:
    """``TrainingArguments`` defaults of both teacher scripts, updated with each script's own."""
    return {
        "lr_scheduler_type": "cosine",
        "max_grad_norm": 1.0,
        "logging_steps": 100,
        "save_steps": 1000,
        "save_total_limit": 2,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinning only helps copies to a GPU
        "remove_unused_columns": False,  # the collators read depth maps, masks and cameras
        "seed": 0,
        **overrides,
    }


def teacher_scenes(args: TeacherDataArguments, seed: int, split: str):
    """The rendered SynthRooms split (``"train"`` or ``"test"``) that ``args`` describes."""
    count = args.num_train_scenes if split == "train" else args.num_eval_scenes
    image_size = (args.image_height, args.image_width)
    return load_synthrooms(count, args.frames_per_scene, image_size, seed, split, num_proc=args.render_processes)


def export_teacher_run(
    teacher,
    kind: str,
    report: str,
    results: dict,
    args: TeacherDataArguments,
    training_args,
    argv: list[str],
    steps: int,
) -> str:
    """Print the held-out report and export ``teacher`` (:func:`~.teacher_export.save_teacher`) to ``--export_dir``
    (default ``<output_dir>/teacher``) with the command that made it; returns the folder."""
    print("\n" + report)
    folder = args.export_dir or os.path.join(training_args.output_dir, "teacher")
    command = f"python train/train_{kind}_teacher.py " + " ".join(argv)
    init_from = getattr(args, "init_from", None)
    earlier = training_stages(init_from) if init_from else ()
    save_teacher(
        teacher, folder, kind=kind, report=report, results=results, command=command.strip(), steps=steps,
        earlier_stages=earlier,
    )  # fmt: skip
    print(f"{kind} teacher saved to {folder}")
    return folder
