"""Muon for the hidden weight matrices, AdamW for everything else, behind one ``torch.optim.Optimizer``.

Muon (``torch.optim.Muon``) orthogonalises the momentum of 2-D weights; it is meant for a Transformer's
hidden matrices, not for embeddings, input projections or output heads, which keep AdamW. The HF Trainer,
its LR scheduler, accelerate and checkpoint resume all expect a single optimizer object: this class is that
object and delegates each step to the two torch optimizers, which share its parameter groups (so the
scheduler's learning rates reach both) and each keep their own state.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn


def is_muon_parameter(name: str, parameter: torch.Tensor) -> bool:
    """A 2-D weight inside a Transformer block (attention and MLP matrices): what Muon is meant for.

    Blocks live in module lists named ``blocks`` (Spa3R) or ``*_blocks`` (VGGT's ``frame_blocks`` and ``global_blocks``).
    """
    return parameter.ndim == 2 and re.search(r"(^|\.)(\w+_)?blocks\.", name) is not None


def muon_param_groups(model: nn.Module, weight_decay: float, decay_names: Iterable[str]) -> list[dict]:
    """Trainable parameters split by optimizer (``use_muon``) and by whether they decay."""
    decay_names = set(decay_names)
    groups: dict[tuple[bool, float], list[torch.Tensor]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = (is_muon_parameter(name, parameter), weight_decay if name in decay_names else 0.0)
        groups.setdefault(key, []).append(parameter)
    return [{"params": params, "weight_decay": decay, "use_muon": use_muon} for (use_muon, decay), params in groups.items()]


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over groups tagged ``use_muon``: ``torch.optim.Muon`` (learning rate matched to AdamW's
    update size, ``adjust_lr_fn="match_rms_adamw"``) for those, ``torch.optim.AdamW`` for the others.

    Args:
        params: parameter groups with a ``use_muon`` flag (see :func:`muon_param_groups`).
        lr / weight_decay / betas / eps: AdamW's settings; Muon uses the same ``lr`` and ``weight_decay``.
        momentum / nesterov / ns_steps: Muon's settings.
    """

    def __init__(
        self,
        params: Iterable[dict],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
    ):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, use_muon=False))
        for group in self.param_groups:
            if group["use_muon"]:
                bad = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
                if bad:
                    raise ValueError(f"Muon groups take 2-D weight matrices only, got shapes {bad}")
        self._muon_groups = [group for group in self.param_groups if group["use_muon"]]
        self._adamw_groups = [group for group in self.param_groups if not group["use_muon"]]
        self._muon = self._adamw = None
        if self._muon_groups:
            self._muon = torch.optim.Muon(
                [{"params": g["params"]} for g in self._muon_groups],
                lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                adjust_lr_fn="match_rms_adamw",
            )
        if self._adamw_groups:
            self._adamw = torch.optim.AdamW([{"params": g["params"]} for g in self._adamw_groups], lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
        self._share_groups(overwrite=False)

    def _share_groups(self, overwrite: bool) -> None:
        """Make the inner optimizers read this optimizer's group dicts, so a scheduler's lr reaches them. Their
        own per-group settings (betas, momentum, ...) are copied in: without ``overwrite`` (construction) they
        do not replace lr or weight_decay; with it (after loading a state) every saved setting wins."""
        for inner, groups in ((self._muon, self._muon_groups), (self._adamw, self._adamw_groups)):
            if inner is None:
                continue
            for own, shared in zip(inner.param_groups, groups):
                for key, value in own.items():
                    if key != "params" and (overwrite or key not in shared):
                        shared[key] = value
            inner.param_groups = groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in (self._muon, self._adamw):
            if inner is not None:
                inner.step()
        return loss

    def state_dict(self) -> dict:
        return {
            "muon": self._muon.state_dict() if self._muon is not None else None,
            "adamw": self._adamw.state_dict() if self._adamw is not None else None,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(f"not a MuonWithAdamW state dict: keys {sorted(state_dict)}, expected ['adamw', 'muon']")
        for name, inner in (("muon", self._muon), ("adamw", self._adamw)):
            saved = state_dict[name]
            if (saved is None) != (inner is None):
                raise ValueError(f"the saved optimizer state {'has no' if saved is None else 'has a'} {name} part, this optimizer does not match")
            if inner is not None:
                inner.load_state_dict(saved)
        self._share_groups(overwrite=True)  # loading gave the inner optimizers new group dicts

    @property
    def state(self):  # the inner optimizers' per-parameter state, for code that inspects optimizer.state
        merged = {}
        for inner in (self._muon, self._adamw):
            if inner is not None:
                merged.update(inner.state)
        return merged

    @state.setter
    def state(self, value) -> None:  # torch.optim.Optimizer.__init__ assigns an empty state
        pass
