"""Training Spa3-VLM on TRL's ``SFTTrainer``: :class:`Spa3VLMSFTTrainer` and the fused-LM-head routing it needs.

:class:`Spa3VLMSFTTrainer` is ``SFTTrainer`` + the optimizer param groups of
:func:`~spa3_vlm.training.sft_model.optimizer_param_groups` (``create_optimizer``), the record columns the
collator (:class:`~spa3_vlm.training.sft_data.Spa3VLMSFTCollator`) needs kept, our model card
(:func:`spa3_vlm.cards.sft_model_card`), and the spatial adapter on TRL's fused-LM-head path (below).

Why the trainer touches the forward: TRL 1.16 computes the SFT loss with a *fused LM head*: it replaces
``model.forward`` so that ``model(..., fused_lm_head=True)`` runs ``model.base_model`` (the inner
``Qwen2_5_VLModel``) directly and projects only the supervised positions. That skips
``Spa3VLMForConditionalGeneration.forward``, where Spa3R and the adapter act: training would silently ignore the
spatial branch (the adapter gets no gradient). :func:`route_fused_forward_through_adapter` wraps TRL's forward so
that a fused call first computes Qwen's image features, adapts them with the model's own adapter and hands them
to the backbone as ``mm_encoder_outputs`` — the same values the model's own forward would use.
"""

from __future__ import annotations

import functools
import inspect
import os
import types
import warnings
from collections.abc import Mapping
from typing import Optional

import torch
from transformers import Trainer
from trl import SFTTrainer

from ..cards import VLM_FAMILIES, sft_model_card
from .sft_data import IGNORE_INDEX
from .sft_model import TRAINABLE_GROUPS, optimizer_param_groups

__all__ = [
    "Spa3VLMSFTTrainer",
    "check_fused_lm_head_contract",
    "route_fused_forward_through_adapter",
]

# --------------------------------------------------------------------------------------------------
# TRL's fused LM head and the adapter
# --------------------------------------------------------------------------------------------------


def _adapted_backbone_inputs(model, kwargs: dict) -> dict:
    """Inputs for ``model.base_model`` with the visual tokens already adapted (``mm_encoder_outputs``)."""
    geometry = kwargs.pop("geometry_pixel_values", None)
    latents = kwargs.pop("spatial_latents", None)
    if not getattr(model.config, "spatial_branch", False):
        return kwargs  # plain base VLM: nothing to adapt
    kwargs["mm_encoder_outputs"] = model.adapted_encoder_outputs(
        pixel_values=kwargs.pop("pixel_values", None),
        pixel_values_videos=kwargs.pop("pixel_values_videos", None),
        image_grid_thw=kwargs.get("image_grid_thw"),
        video_grid_thw=kwargs.get("video_grid_thw"),
        mm_encoder_outputs=kwargs.get("mm_encoder_outputs"),
        input_ids=kwargs.get("input_ids"),
        inputs_embeds=kwargs.get("inputs_embeds"),
        geometry_pixel_values=geometry,
        spatial_latents=latents,
    ) or None
    return kwargs


def check_fused_lm_head_contract(model) -> None:
    """Raise ``RuntimeError`` if the TRL / transformers internals that the adapter routing relies on have changed.

    The routing assumes that TRL replaced ``model.forward`` by a function taking ``fused_lm_head`` (TRL's
    ``add_fused_lm_head``), and that the Qwen backbone (``model.base_model``) takes precomputed visual features as
    ``mm_encoder_outputs``. If either changes, fused training would silently skip the adapter.
    """
    import transformers
    import trl

    patched = inspect.signature(model.forward, follow_wrapped=False).parameters
    if "fused_lm_head" not in patched:
        raise RuntimeError(
            f"TRL {trl.__version__} no longer patches model.forward with a `fused_lm_head` keyword "
            "(trl.trainer.utils.add_fused_lm_head), so the Spa3-VLM adapter cannot be routed into its fused loss: "
            "update route_fused_forward_through_adapter in spa3_vlm/training/sft_trainer.py, or train with "
            "Spa3VLMSFTTrainer(fused_lm_head=False) meanwhile."
        )
    if "mm_encoder_outputs" not in inspect.signature(model.base_model.forward).parameters:
        raise RuntimeError(
            f"transformers {transformers.__version__}: {type(model.base_model).__name__}.forward no longer takes "
            "`mm_encoder_outputs`, through which the adapted visual tokens reach TRL's fused loss: update "
            "route_fused_forward_through_adapter in spa3_vlm/training/sft_trainer.py, or train with "
            "Spa3VLMSFTTrainer(fused_lm_head=False) meanwhile."
        )


def route_fused_forward_through_adapter(model) -> None:
    """Make TRL's ``fused_lm_head=True`` forward of a Spa3-VLM use Spa3R and the adapter (module docstring).

    ``model`` is the Spa3-VLM that TRL patched (the PEFT base model under LoRA). Calls without
    ``fused_lm_head`` (generation, evaluation with logits) go to the original forward unchanged. Idempotent.
    Checks the internals it relies on first (:func:`check_fused_lm_head_contract`).
    """
    fused_forward = model.forward
    if getattr(fused_forward, "_routes_spatial_adapter", False):
        return
    check_fused_lm_head_contract(model)

    @functools.wraps(type(model).forward)  # keep the signature: generate() checks model kwargs against it
    def forward(self, *args, fused_lm_head: bool = False, **kwargs):
        if fused_lm_head:
            kwargs = _adapted_backbone_inputs(self, dict(kwargs))
        return fused_forward(*args, fused_lm_head=fused_lm_head, **kwargs)

    forward._routes_spatial_adapter = True
    model.forward = types.MethodType(forward, model)


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


def _unwrap_peft(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class Spa3VLMSFTTrainer(SFTTrainer):
    """``SFTTrainer`` for Spa3-VLM.

    Extra arguments:
        learning_rates: ``{group: lr}`` for the trainable groups (``adapter``, ``llm``, ``merger``, ``vision``); a
            group left out uses ``args.learning_rate``. Implemented as optimizer param groups in
            ``create_optimizer``, so every optimizer ``args.optim`` names and every LR scheduler work (the scheduler
            scales each group's own lr).
        model_card: keyword arguments for :func:`~spa3_vlm.cards.sft_model_card`; ``create_model_card`` (also what
            ``push_to_hub`` calls) writes that card to ``output_dir/README.md``.
        fused_lm_head: ``True`` (TRL's default) computes the loss with TRL's chunked LM head; ``False`` uses the
            model's own forward and loss (full logits). Same loss; on CPU with a tiny model the chunked kernel's
            tiling costs more than the model, so the CPU experiments turn it off.

    Sets ``remove_unused_columns=False``: the collator validates records with ``id``, ``question_type`` and
    ``options`` and reads cached ``spatial_latents``, none of which is a model input. Routes TRL's fused-LM-head forward through
    the adapter (:func:`route_fused_forward_through_adapter`).
    """

    def __init__(
        self,
        *args,
        learning_rates: Optional[Mapping[str, float]] = None,
        model_card: Optional[dict] = None,
        fused_lm_head: bool = True,
        **kwargs,
    ):
        self.fused_lm_head = bool(fused_lm_head)
        self.group_learning_rates = dict(learning_rates or {})
        unknown = set(self.group_learning_rates) - set(TRAINABLE_GROUPS)
        if unknown:
            raise ValueError(f"learning_rates has unknown groups {sorted(unknown)}; expected some of {TRAINABLE_GROUPS}")
        self.model_card_kwargs = dict(model_card or {})
        with warnings.catch_warnings():
            # PEFT's get_peft_model reads transformers' deprecated `is_gradient_checkpointing`: nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            super().__init__(*args, **kwargs)
        # The collator validates records with columns that are no model inputs (`id`, `question_type`, `options`) and
        # reads cached `spatial_latents`; it takes what it needs, so the Trainer must not drop columns for it.
        self.args.remove_unused_columns = False
        if self.fused_lm_head:
            route_fused_forward_through_adapter(_unwrap_peft(self.model))
        model_type = getattr(getattr(_unwrap_peft(self.model), "config", None), "model_type", None)
        if model_type in VLM_FAMILIES:  # the card names the base family (Qwen2.5-VL or Qwen3-VL)
            self.model_card_kwargs.setdefault("vlm_family", VLM_FAMILIES[model_type])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.fused_lm_head:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        inputs = {**inputs, "use_cache": False}
        loss, outputs = Trainer.compute_loss(
            self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        with torch.no_grad():  # the accuracy TRL logs, from the full logits
            labels = inputs["labels"][:, 1:].to(outputs.logits.device)
            mask = labels != IGNORE_INDEX
            correct = ((outputs.logits[:, :-1].argmax(-1) == labels) & mask).sum()
            correct = self.accelerator.gather_for_metrics(correct).sum()
            total = self.accelerator.gather_for_metrics(mask.sum()).sum()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["mean_token_accuracy"].append((correct / total).item() if total > 0 else 0.0)
        return (loss, outputs) if return_outputs else loss

    def group_lrs(self) -> dict[str, float]:
        """Learning rate per trainable group (``args.learning_rate`` where none was given)."""
        return {group: self.group_learning_rates.get(group, self.args.learning_rate) for group in TRAINABLE_GROUPS}

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups = optimizer_param_groups(
            opt_model, self.group_lrs(), self.args.weight_decay, self.get_decay_parameter_names(opt_model)
        )
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        # The per-group lr wins over the default "lr"; optimizers that build their own groups are not supported.
        if "params" in optimizer_kwargs or "model" in optimizer_kwargs or "optimizer_dict" in optimizer_kwargs:
            raise ValueError(
                f"optim={self.args.optim!r} builds its own parameter groups; per-group learning rates need a standard "
                "optimizer (e.g. adamw_torch)"
            )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_model_card(
        self, model_name: Optional[str] = None, dataset_name: Optional[str] = None, tags=None, **kwargs
    ):
        if not self.is_world_process_zero():
            return
        card_kwargs = dict(self.model_card_kwargs)
        card_kwargs.setdefault("model_name", model_name or self.args.hub_model_id or "spa3-vlm-sft")
        if dataset_name is not None:
            card_kwargs.setdefault("datasets", [dataset_name])
        if tags:
            card_kwargs["tags"] = [*card_kwargs.get("tags", []), *([tags] if isinstance(tags, str) else tags)]
        if kwargs.get("license") is not None:  # push_to_hub(license=...) overrides the licence worked out
            card_kwargs["license"] = kwargs["license"]
        card_kwargs.setdefault("training", self.training_summary())
        os.makedirs(self.args.output_dir, exist_ok=True)
        sft_model_card(**card_kwargs).save(os.path.join(self.args.output_dir, "README.md"))

    def training_summary(self) -> dict:
        """Hyperparameters for the model card."""
        args = self.args
        lrs = self.group_lrs()
        if self.optimizer is not None:  # only the groups that train
            trained = {group["name"].split("/")[0] for group in self.optimizer.param_groups if "name" in group}
            lrs = {group: lr for group, lr in lrs.items() if group in trained}
        return {
            "trainer": "TRL SFTTrainer (spa3_vlm Spa3VLMSFTTrainer)",
            "learning rates": ", ".join(f"{group} {lr:g}" for group, lr in lrs.items()),
            "per-device batch x accumulation": f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps}",
            "steps": self.state.global_step,
            "scheduler / warm-up steps": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} / "
            f"{args.warmup_steps}",
            "weight decay": args.weight_decay,
            "seed": args.seed,
        }

