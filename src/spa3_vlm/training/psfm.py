"""PSFM and teacher pre-training on the HF Trainer: per-loss logging, atomic checkpoints, sensible weight decay."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import defaultdict
from typing import Optional

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_STATE_FILE = "trainer_state.json"  # the Trainer writes it after the weights, optimizer, scheduler and RNG state

# Parameters that weight decay would only shrink towards zero for no benefit: biases, norms, learned tokens.
NO_DECAY_PATTERNS = ("bias", "norm", "register_token", "camera_token", "pose_tokens", "query_embed", "gamma")


def is_complete_checkpoint(folder: str) -> bool:
    """Whether the Trainer finished writing ``folder``: its last file, ``trainer_state.json``, reads back."""
    try:
        with open(os.path.join(folder, _STATE_FILE)) as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str, remove_incomplete: bool = True) -> Optional[str]:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (``None`` if there is none).

    Newer checkpoints that a crash cut short are deleted with a warning (``remove_incomplete``), so that neither a
    later resume nor checkpoint rotation mistakes them for the newest state.
    """
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        if is_complete_checkpoint(folder):
            return folder
        logger.warning("%s was interrupted while being saved (no readable %s)%s", folder, _STATE_FILE,
                       "; removing it" if remove_incomplete else "")
        if remove_incomplete:
            shutil.rmtree(folder)
    return None


class PSFMTrainer(Trainer):
    """``Trainer`` for ``Spa3RForFieldPrediction``.

    - logs every named loss (``loss/geo_l1``, ...) averaged over the logging interval;
    - resumes only from complete checkpoints: ``train(resume_from_checkpoint=True)`` takes the newest checkpoint
      whose ``trainer_state.json`` (written last) reads back, and removes newer ones that a kill cut short;
    - excludes biases, norms, register tokens and query embeddings from weight decay;
    - with ``muon=True``, trains the Transformer blocks' weight matrices with Muon and the rest with AdamW
      (:class:`~spa3_vlm.training.optim.MuonWithAdamW`; AdamW takes ``--adam_beta1/2``, ``--adam_epsilon``).
    """

    def __init__(self, *args, muon: bool = False, muon_momentum: float = 0.95, **kwargs):
        self.muon = muon
        self.muon_momentum = muon_momentum
        super().__init__(*args, **kwargs)
        self._loss_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self._loss_counts = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            for name, value in outputs.losses.items():
                self._loss_sums[name] = self._loss_sums[name] + value.detach().float().cpu()
            self._loss_counts += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time=None) -> None:
        if "loss" in logs and self._loss_counts:
            for name, total in self._loss_sums.items():
                logs[f"loss/{name}"] = round(float(total) / self._loss_counts, 6)
            self._loss_sums.clear()
            self._loss_counts = 0
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        if not self.muon:
            return super().create_optimizer(model)
        if self.optimizer is None:
            from .optim import MuonWithAdamW, muon_param_groups

            model = model if model is not None else self.model
            groups = muon_param_groups(model, self.args.weight_decay, self.get_decay_parameter_names(model))
            self.optimizer = MuonWithAdamW(
                groups,
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
                momentum=self.muon_momentum,
            )
        return self.optimizer

    def train(self, resume_from_checkpoint=None, **kwargs):
        """``Trainer.train`` that resumes only from complete checkpoints (class doc)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, remove_incomplete=self.args.should_save)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}")
        elif isinstance(resume_from_checkpoint, str) and not is_complete_checkpoint(resume_from_checkpoint):
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete checkpoint (no readable {_STATE_FILE}): it was interrupted "
                "while being saved, or is no checkpoint. Resume from an earlier one, or with resume_from_checkpoint=True."
            )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        return [
            name
            for name, param in model.named_parameters()
            if param.requires_grad and not any(pattern in name for pattern in NO_DECAY_PATTERNS)
        ]
