"""PSFM pre-training on the HF Trainer: per-head loss logging, atomic checkpoints, sensible weight decay."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict

import torch
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

# Parameters that weight decay would only shrink towards zero for no benefit: biases, norms, learned tokens.
NO_DECAY_PATTERNS = ("bias", "norm", "register_tokens", "query_embed", "gamma")


class PSFMTrainer(Trainer):
    """``Trainer`` for ``Spa3RForFieldPrediction``.

    - logs every named loss (``loss/geo_l1``, ...) averaged over the logging interval;
    - writes each checkpoint into a staging folder and renames it into place, so a run killed while
      saving never leaves a half-written ``checkpoint-N`` that a resume would pick up;
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

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        return [
            name
            for name, param in model.named_parameters()
            if param.requires_grad and not any(pattern in name for pattern in NO_DECAY_PATTERNS)
        ]

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial=trial)
        staging = os.path.join(run_dir, "tmp-checkpoint-staging")
        folder = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        # The parent writes everything under `_get_output_dir()`: point it at the staging folder.
        self._get_output_dir = lambda trial=None: staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = os.path.join(run_dir, folder)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, folder), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()
