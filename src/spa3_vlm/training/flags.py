"""Flag checks the training scripts run before any work, so a user mistake costs one line, not a traceback.

Each check returns messages that name the flag, the value given and what is allowed; a script joins them into
``parser.error(...)`` (exit status 2).
"""

from __future__ import annotations

import math
from typing import Iterable

__all__ = ["at_least", "training_flag_problems"]


def at_least(args, names: Iterable[str], minimum: int) -> list[str]:
    """``--name must be >= minimum`` for every field of ``args`` in ``names`` that is smaller."""
    return [
        f"--{name} must be >= {minimum}, got {getattr(args, name)}" for name in names if getattr(args, name) < minimum
    ]


def training_flag_problems(training) -> list[str]:
    """Checks of ``TrainingArguments`` fields that the Trainer accepts but that make no sense: a non-positive step
    count (-5 trained for the default epochs, 0 for one step), a learning rate <= 0, a NaN or negative clipping norm
    (NaN silently turned clipping off), a negative warm-up."""
    problems = []
    if not (training.max_steps > 0 or (training.max_steps == -1 and training.num_train_epochs > 0)):
        problems.append(
            f"--max_steps must be a positive number of steps, or -1 to train --num_train_epochs, got {training.max_steps}"
        )
    if not (math.isfinite(training.learning_rate) and training.learning_rate > 0):
        problems.append(f"--learning_rate must be a positive number, got {training.learning_rate}")
    if not (math.isfinite(training.max_grad_norm) and training.max_grad_norm >= 0):
        problems.append(
            f"--max_grad_norm must be a finite number >= 0 (0 turns clipping off), got {training.max_grad_norm}"
        )
    if training.warmup_steps < 0:
        problems.append(f"--warmup_steps must be >= 0, got {training.warmup_steps}")
    problems += at_least(training, ["per_device_train_batch_size", "gradient_accumulation_steps"], 1)
    return problems
