"""Pretrained weights for Spa3R's frozen teachers (VGGT-1B, a DINOv3 ViT), loaded strictly and explicitly."""

from __future__ import annotations

import logging
import os

from ..conversion.reference import ConversionReport, _strict_load, _vggt_state, load_reference_checkpoint

logger = logging.getLogger(__name__)


def vggt_weights_path(name_or_path: str) -> str:
    """A local VGGT weight file: a file, a folder holding ``model.safetensors``/``model.pt``, or a hub id."""
    if os.path.isfile(name_or_path):
        return name_or_path
    if os.path.isdir(name_or_path):
        for name in ("model.safetensors", "model.pt"):
            if os.path.isfile(os.path.join(name_or_path, name)):
                return os.path.join(name_or_path, name)
        raise FileNotFoundError(f"{name_or_path} holds neither model.safetensors nor model.pt")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(name_or_path, "model.safetensors")


def load_pretrained_teachers(model) -> ConversionReport:
    """Load the backbone and semantic-teacher weights named by ``model.config`` (``vggt_name_or_path``,
    ``semantic_teacher_name_or_path``) into a ``Spa3RForFieldPrediction``. Either may be ``None`` (kept as is)."""
    config = model.config
    report = ConversionReport()
    if config.vggt_name_or_path:
        state = load_reference_checkpoint(vggt_weights_path(config.vggt_name_or_path))
        selected = _vggt_state(state, config.vggt_config, report)
        _strict_load(model.spa3r.backbone, selected, f"VGGT weights from {config.vggt_name_or_path}")
        logger.info("loaded VGGT weights from %s (%s)", config.vggt_name_or_path, report)
    if config.semantic_teacher_name_or_path:
        from transformers import AutoModel

        teacher = AutoModel.from_pretrained(config.semantic_teacher_name_or_path)
        _strict_load(model.semantic_teacher, teacher.state_dict(), f"semantic teacher {config.semantic_teacher_name_or_path}")
        logger.info("loaded the semantic teacher from %s", config.semantic_teacher_name_or_path)
    model.freeze_teachers()
    return report
