"""Pretrained weights for Spa3R's frozen teachers (VGGT-1B, a DINOv3 ViT), loaded strictly and explicitly."""

from __future__ import annotations

import logging
import os
from typing import Optional

from ..conversion.reference import ConversionReport, load_reference_checkpoint, strict_load, vggt_state_dict

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


def resolve_teacher_path(name_or_path: str, root: Optional[str] = None) -> str:
    """``name_or_path`` as given if it exists here (or is a hub id), else ``root/name_or_path`` when that exists:
    configs name the teachers shipped in this repository relative to its root (``hub_configs/...``)."""
    if root is not None and not os.path.exists(name_or_path) and os.path.exists(os.path.join(root, name_or_path)):
        return os.path.join(root, name_or_path)
    return name_or_path


# Fields that choose which heads a VGGT builds: a teacher may carry heads (e.g. a point head) that Spa3R drops.
_VGGT_HEAD_FIELDS = frozenset({"use_camera_head", "use_depth_head", "use_point_head", "use_track_head"})
_NOT_ARCHITECTURE = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache", "auto_map"}


def check_teacher_config(folder: str, expected, what: str, ignore: frozenset = frozenset()) -> None:
    """Raise ``ValueError`` if the config saved with a teacher disagrees with ``expected`` (the copy the Spa3R config
    holds, a ``PreTrainedConfig``), field by field after defaults are filled in.

    Weights load strictly, but settings without parameters (an image size, a position embedding) would otherwise
    slip through and silently change the teacher's features. A folder without ``config.json`` is not checked.
    """
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return
    from transformers import AutoConfig

    saved, wanted = AutoConfig.from_pretrained(folder).to_dict(), expected.to_dict()
    skip = _NOT_ARCHITECTURE | set(ignore)
    keys = sorted((set(saved) | set(wanted)) - skip)
    different = {k: (saved.get(k), wanted.get(k)) for k in keys if saved.get(k) != wanted.get(k)}
    if different:
        details = ", ".join(f"{k}: teacher {a!r} vs config {b!r}" for k, (a, b) in different.items())
        raise ValueError(f"{what} at {folder} was made with other settings than this Spa3R config names: {details}")


def load_pretrained_teachers(model, root: Optional[str] = None) -> ConversionReport:
    """Load the backbone and semantic-teacher weights named by ``model.config`` (``vggt_name_or_path``,
    ``semantic_teacher_name_or_path``) into a ``Spa3RForFieldPrediction``. Either may be ``None`` (kept as is).
    Relative folders are looked up under ``root`` too (:func:`resolve_teacher_path`); the config is not changed."""
    config = model.config
    report = ConversionReport()
    if config.vggt_name_or_path:
        path = resolve_teacher_path(config.vggt_name_or_path, root)
        if os.path.isdir(path):
            check_teacher_config(path, config.vggt_config, "the VGGT teacher", ignore=_VGGT_HEAD_FIELDS)
        state = load_reference_checkpoint(vggt_weights_path(path))
        selected = vggt_state_dict(state, config.vggt_config, report)
        strict_load(model.spa3r.backbone, selected, f"VGGT weights from {config.vggt_name_or_path}")
        logger.info("loaded VGGT weights from %s (%s)", path, report)
    if config.semantic_teacher_name_or_path:
        from transformers import AutoConfig, AutoModel

        if config.semantic_teacher_config is None:
            raise ValueError(
                f"semantic_teacher_name_or_path is {config.semantic_teacher_name_or_path!r} but semantic_teacher_config "
                "is None: the model has no semantic teacher to load it into (set both, or neither)"
            )

        path = resolve_teacher_path(config.semantic_teacher_name_or_path, root)
        if os.path.isdir(path):
            expected = AutoConfig.for_model(**config.semantic_teacher_config)
            check_teacher_config(path, expected, "the semantic teacher")
        teacher = AutoModel.from_pretrained(path)
        strict_load(model.semantic_teacher, teacher.state_dict(), f"semantic teacher {config.semantic_teacher_name_or_path}")
        logger.info("loaded the semantic teacher from %s", path)
    model.freeze_teachers()
    return report
