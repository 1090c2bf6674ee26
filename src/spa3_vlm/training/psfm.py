"""PSFM and teacher pre-training on the HF Trainer: per-loss logging, atomic checkpoints, sensible weight decay."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from collections import defaultdict
from typing import Optional

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_STATE_FILE = "trainer_state.json"  # the Trainer writes it after the weights, optimizer, scheduler and RNG state

# Parameters that weight decay would only shrink towards zero for no benefit: biases, norms, learned tokens.
NO_DECAY_PATTERNS = ("bias", "norm", "register_token", "camera_token", "pose_tokens", "query_embed", "gamma")


# What a resumable checkpoint needs besides trainer_state.json: weights in one of these forms (the first matching
# name), and the optimizer and scheduler states (DeepSpeed keeps both in its own global_step* folder instead).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")
_RESUME_FILES = ("optimizer.pt", "scheduler.pt")


def _damage(path: str) -> Optional[str]:
    """Why the file at ``path`` cannot be read back, or ``None``. Cheap: headers and zip directories only."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        return f"{name} is missing"
    try:
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "pt"):  # parses the header and checks that the data fills the file
                pass
        elif name.endswith((".pt", ".pth", ".bin")):
            with zipfile.ZipFile(path):  # torch.save files are zip archives; a cut-short one has no directory
                pass
        elif name.endswith(".json"):
            with open(path) as handle:
                json.load(handle)
    except Exception as error:  # noqa: BLE001 - every reader error means the same: damaged
        return f"{name} is damaged ({type(error).__name__}: {error})"
    return None


def checkpoint_problem(folder: str) -> Optional[str]:
    """Why ``folder`` cannot be resumed from, or ``None`` if it can.

    ``"interrupted while being saved"`` when ``trainer_state.json`` (the Trainer's last file) is missing; otherwise
    the first missing file the resume needs (weights, ``optimizer.pt``, ``scheduler.pt``) or damaged file.
    """
    if _damage(os.path.join(folder, _STATE_FILE)) is not None:  # missing, or cut short while being written
        return f"interrupted while being saved (no readable {_STATE_FILE})"
    names = set(os.listdir(folder))
    weights = [name for name in _WEIGHT_FILES if name in names]
    if not weights:
        return f"no model weights (expected one of {', '.join(_WEIGHT_FILES)})"
    deepspeed = any(name.startswith("global_step") for name in names)
    for name in () if deepspeed else _RESUME_FILES:
        if name not in names:
            return f"{name} is missing: resuming without it would not continue the same run"
    for name in sorted(names):
        if name in weights or name.endswith((".pt", ".pth", ".safetensors")):
            problem = _damage(os.path.join(folder, name))
            if problem:
                return problem
    return None


def last_complete_checkpoint(output_dir: str, remove_incomplete: bool = True) -> Optional[str]:
    """The newest checkpoint ``checkpoint-N`` in ``output_dir`` that can be resumed from (``None`` if there is none).

    Newer checkpoints that a crash cut short while saving are deleted with a warning (``remove_incomplete``), so
    that neither a later resume nor checkpoint rotation mistakes them for the newest state. A newer checkpoint that
    was saved completely but has since lost or damaged a file is never deleted: it raises ``ValueError`` naming the
    file and the newest good checkpoint, so the user decides.
    """
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    folders = [os.path.join(output_dir, name) for _, name in reversed(steps)]
    for index, folder in enumerate(folders):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if problem.startswith("interrupted"):
            logger.warning("%s was %s%s", folder, problem, "; removing it" if remove_incomplete else "")
            if remove_incomplete:
                shutil.rmtree(folder)
            continue
        good = next((older for older in folders[index + 1 :] if checkpoint_problem(older) is None), None)
        way_out = f"resume from {good} explicitly, or delete {folder}" if good else f"delete {folder} to start over"
        raise ValueError(f"cannot resume from {folder}: {problem}. The newest good checkpoint is {good}; {way_out}.")
    return None


def train_resuming(trainer: Trainer):
    """``trainer.train()`` from ``args.resume_from_checkpoint`` or else from the newest good checkpoint in the output
    folder (:func:`last_complete_checkpoint`), so that re-running an interrupted command continues it."""
    resume = trainer.args.resume_from_checkpoint
    if resume is None and os.path.isdir(trainer.args.output_dir):
        resume = last_complete_checkpoint(trainer.args.output_dir)
    return trainer.train(resume_from_checkpoint=resume)


# The frozen teachers inside Spa3RForFieldPrediction: state-dict prefix -> the config field naming their source.
TEACHER_SOURCES = {"spa3r.backbone.": "vggt_name_or_path", "semantic_teacher.": "semantic_teacher_name_or_path"}


def frozen_teacher_keys(model) -> set[str]:
    """State-dict keys of the frozen teachers whose source the config names (Spa3R's VGGT backbone, the semantic
    teacher): what a checkpoint can leave out, as a resumed run loads them from there again
    (``PSFMTrainer(checkpoint_teachers=False)``)."""
    config = getattr(model, "config", None)
    prefixes = tuple(prefix for prefix, field in TEACHER_SOURCES.items() if getattr(config, field, None))
    return {key for key in model.state_dict() if prefixes and key.startswith(prefixes)}


def load_training_checkpoint(folder: str, root: Optional[str] = None):
    """A ``Spa3RForFieldPrediction`` from a training checkpoint, also one without the frozen teachers
    (``PSFMTrainer(checkpoint_teachers=False)``): the trained parts from ``folder``, the teachers from the sources its
    config names (relative folders also under ``root``, e.g. the repository for ``hub_configs/...``)."""
    from ..modeling_spa3r import Spa3RForFieldPrediction
    from .teachers import load_pretrained_teachers

    model, info = Spa3RForFieldPrediction.from_pretrained(folder, allow_omitted_teachers=True, output_loading_info=True)
    teachers = frozen_teacher_keys(model)
    missing = set(info["missing_keys"])
    if missing - teachers:
        raise ValueError(f"{folder} lacks trained tensors: {sorted(missing - teachers)[:8]}")
    if missing:
        load_pretrained_teachers(model, root=root)
    return model


def _dataset_view_range(dataset) -> tuple[int, int]:
    """The view-count range of a ``PSFMDataset`` (or of a ``ConcatDataset`` of them, which must agree)."""
    parts = getattr(dataset, "datasets", [dataset])
    ranges = {tuple(part.num_views) for part in parts if hasattr(part, "num_views")}
    if len(ranges) != 1:
        raise ValueError(f"images_per_batch needs PSFMDataset(s) with one num_views range, got {sorted(ranges)}")
    return ranges.pop()


def field_model_inputs(model, batch: dict) -> dict:
    """The entries of a PSFM batch that ``model`` reads. Batches carry the dataset cameras for every model (the field
    evaluation's nearest-view baseline needs them); a model that takes its cameras from the backbone
    (``pose_source="backbone"``) refuses them, so they are left out for it."""
    if getattr(getattr(model, "config", None), "pose_source", "dataset") == "backbone":
        return {name: value for name, value in batch.items() if name not in ("extrinsics", "intrinsics")}
    return batch


class PSFMTrainer(Trainer):
    """``Trainer`` for ``Spa3RForFieldPrediction``.

    - logs every named loss (``loss/geo_l1``, ...) averaged over the logging interval;
    - resumes only from checkpoints it can read back whole (:func:`checkpoint_problem`):
      ``train(resume_from_checkpoint=True)`` takes the newest, removes newer ones that a kill cut short while saving,
      and refuses (naming the file) a newer one that lost or damaged a file after it was saved;
    - with ``checkpoint_teachers=False``, writes checkpoints without the frozen teachers (VGGT-1B and DINOv3 are
      ~1.5 B parameters the run never changes; the model that built the trainer loaded them from their sources and
      a resume builds it the same way), while ``save_model`` still writes the whole, self-contained model; resuming
      checks that only teacher tensors are missing;
    - excludes biases, norms, register tokens and query embeddings from weight decay;
    - with ``muon=True``, trains the Transformer blocks' weight matrices with Muon and the rest with AdamW
      (:class:`~spa3_vlm.training.optim.MuonWithAdamW`; AdamW takes ``--adam_beta1/2``, ``--adam_epsilon``);
    - ``create_model_card`` (also what ``push_to_hub`` calls) writes :func:`spa3_vlm.cards.psfm_model_card` to
      ``output_dir/README.md``, with ``model_card`` as its keyword arguments (teachers, data, results, licence).
    """

    def __init__(
        self,
        *args,
        muon: bool = False,
        muon_momentum: float = 0.95,
        checkpoint_teachers: bool = True,
        images_per_batch: Optional[int] = None,
        model_card: Optional[dict] = None,
        **kwargs,
    ):
        self.muon = muon
        self.muon_momentum = muon_momentum
        self.checkpoint_teachers = checkpoint_teachers
        self.images_per_batch = images_per_batch
        self.model_card_kwargs = dict(model_card or {})
        self._saving_checkpoint = False
        super().__init__(*args, **kwargs)
        self._loss_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self._loss_counts = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**field_model_inputs(self.model, inputs))
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

    def get_train_dataloader(self):
        """With ``images_per_batch``, batches come from :class:`~spa3_vlm.data.psfm.ViewBudgetBatchSampler` (one view
        count per batch, as many samples as the image budget allows; ``per_device_train_batch_size`` is not used);
        otherwise the Trainer's own loader."""
        if self.images_per_batch is None:
            return super().get_train_dataloader()
        from functools import partial

        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        from ..data.psfm import ViewBudgetBatchSampler

        dataset = self.train_dataset
        num_views = _dataset_view_range(dataset)
        sampler = ViewBudgetBatchSampler(len(dataset), num_views, self.images_per_batch, seed=self.args.seed)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            worker_init_fn=partial(seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index),
        )
        return self.accelerator.prepare(loader)

    # ---------------------------------------------------------------------------------------- checkpoints

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        # The Trainer's own checkpoint saves pass _internal_call=True; a user's save_model writes the whole model.
        self._saving_checkpoint = _internal_call
        try:
            super().save_model(output_dir, _internal_call=_internal_call)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        if not self._saving_checkpoint:
            return super()._save(output_dir, state_dict=state_dict)
        # Checkpoints keep the model's own tensor names (save_original_format=False): the Trainer resumes with a plain
        # load_state_dict, which does not undo transformers' renaming to a Hub layout (DINOv3 renames its layers), so
        # a renamed checkpoint silently resumed nothing (it only logged missing and unexpected keys).
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if state_dict is None:
            state_dict = model.state_dict()
            if not self.checkpoint_teachers:
                teachers = frozen_teacher_keys(model)
                state_dict = {k: v for k, v in state_dict.items() if k not in teachers}
        model.save_pretrained(output_dir, state_dict=state_dict, save_original_format=False)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _issue_warnings_after_load(self, load_result) -> None:
        """Resuming: a checkpoint without the frozen teachers is expected (they were loaded from their sources when
        the model was built); any other missing or unexpected tensor is an error, not a log line."""
        teachers = frozen_teacher_keys(self.model)
        missing = sorted(set(load_result.missing_keys) - teachers)
        if missing or load_result.unexpected_keys:
            raise ValueError(
                f"the checkpoint does not fit this model: missing {missing[:8]}, unexpected "
                f"{sorted(load_result.unexpected_keys)[:8]}"
            )
        if load_result.missing_keys:
            logger.info("resumed without the frozen teachers' %d tensors (kept from their sources)", len(load_result.missing_keys))

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

    def create_model_card(self, model_name: Optional[str] = None, license: Optional[str] = None, tags=None, **kwargs):
        if not self.is_world_process_zero():
            return
        from ..cards import psfm_model_card

        card_kwargs = dict(self.model_card_kwargs)
        card_kwargs.setdefault(
            "model_name", model_name or self.args.hub_model_id or os.path.basename(os.path.normpath(self.args.output_dir))
        )
        if license is not None:
            card_kwargs["license"] = license
        if tags:
            card_kwargs["tags"] = [*card_kwargs.get("tags", []), *([tags] if isinstance(tags, str) else tags)]
        card_kwargs.setdefault("training", self.training_summary())
        os.makedirs(self.args.output_dir, exist_ok=True)
        config = self.accelerator.unwrap_model(self.model).config
        psfm_model_card(config, **card_kwargs).save(os.path.join(self.args.output_dir, "README.md"))

    def training_summary(self) -> dict:
        """Hyperparameters for the model card."""
        args = self.args
        optimizer = f"Muon (momentum {self.muon_momentum}) + AdamW" if self.muon else str(getattr(args.optim, "value", args.optim))
        batch = (
            f"{self.images_per_batch} images per device" if self.images_per_batch is not None
            else f"{args.per_device_train_batch_size} samples per device"
        )  # fmt: skip
        return {
            "trainer": "transformers Trainer (spa3_vlm PSFMTrainer)",
            "optimizer": optimizer,
            "learning rate": f"{args.learning_rate:g}",
            "batch x accumulation x processes": f"{batch} x {args.gradient_accumulation_steps} x {args.world_size}",
            "steps": self.state.global_step,
            "scheduler / warm-up steps": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} / "
            f"{args.warmup_steps}",
            "weight decay": args.weight_decay,
            "seed": args.seed,
        }

    def train(self, resume_from_checkpoint=None, **kwargs):
        """``Trainer.train`` that resumes only from complete checkpoints (class doc)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, remove_incomplete=self.args.should_save)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}")
        elif isinstance(resume_from_checkpoint, str):
            problem = checkpoint_problem(resume_from_checkpoint) if os.path.isdir(resume_from_checkpoint) else "no such folder"
            if problem:
                raise ValueError(
                    f"{resume_from_checkpoint} is not a checkpoint to resume from: {problem}. Resume from an earlier "
                    "one, or with resume_from_checkpoint=True (the newest good one)."
                )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        return [
            name
            for name, param in model.named_parameters()
            if param.requires_grad and not any(pattern in name for pattern in NO_DECAY_PATTERNS)
        ]
