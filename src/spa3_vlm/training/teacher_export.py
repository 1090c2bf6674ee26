"""Export a trained teacher as a hub-style folder: config, safetensors, model card and its held-out scores."""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

from transformers import PreTrainedModel

__all__ = ["save_teacher", "training_stages"]

_DESCRIPTIONS = {
    "geometry": (
        "A tiny VGGT (`spa3_vlm.VGGTModel`) trained on SynthRooms, procedural rooms rendered with exact "
        "cameras and depth, with VGGT's objectives: Huber loss on the pose encoding of every camera-head step, "
        "confidence-weighted depth and point-map losses with gradient terms, and a linear read-out of per-patch depth "
        "and points from the last-layer tokens (the tokens Spa3R encodes and predicts). It is the frozen geometry "
        "backbone and `geo` teacher of `hub_configs/spa3r-tiny-synthrooms`."
    ),
    "semantic": (
        "A tiny DINOv3 ViT (`transformers.DINOv3ViTModel`) trained on SynthRooms views to classify every "
        "patch's content (floor, wall, ceiling or one of the furniture categories) from the renderer's exact "
        "instance masks. It is the frozen `sem` teacher of `hub_configs/spa3r-tiny-synthrooms`."
    ),
}
_LOADERS = {
    "geometry": "from spa3_vlm import VGGTModel\n\nteacher = VGGTModel.from_pretrained(\"{folder}\")",
    "semantic": "from transformers import DINOv3ViTModel\n\nteacher = DINOv3ViTModel.from_pretrained(\"{folder}\")",
}
_SCRIPTS = {"geometry": "train/train_geometry_teacher.py", "semantic": "train/train_semantic_teacher.py"}


STAGES_FILE = "training_stages.json"
_CARD_COMMAND = re.compile(r"## How it was made\n\n`([^`]+)` \((\d+) optimizer steps")


def training_stages(folder: str) -> list[dict]:
    """The commands that made a saved teacher, oldest first (``[{"command", "steps"}]``): its ``training_stages.json``,
    or, for a folder written before that file existed, the single command its model card names."""
    path = os.path.join(folder, STAGES_FILE)
    if os.path.isfile(path):
        with open(path) as handle:
            return json.load(handle)
    card = os.path.join(folder, "README.md")
    found = _CARD_COMMAND.search(open(card).read()) if os.path.isfile(card) else None
    if not found:
        raise ValueError(f"{folder} records no training commands ({STAGES_FILE} or a model card that names one)")
    return [{"command": found.group(1), "steps": int(found.group(2))}]


def save_teacher(
    model: PreTrainedModel,
    folder: str,
    kind: str,
    report: str,
    results: dict,
    command: str,
    steps: int,
    earlier_stages: Sequence[dict] = (),
) -> None:
    """Write ``model`` (weights and config, no code: the package or transformers defines the class), a model card
    saying how it was made and what it scores, ``eval.json`` with the scores and ``training_stages.json``.

    Args:
        kind: ``"geometry"`` or ``"semantic"``.
        report: Markdown tables of the held-out scores; results: the same as a dict.
        command: the command line that trained it; steps: optimizer steps taken.
        earlier_stages: for a fine-tune, the stages of the teacher it started from (:func:`training_stages`).
    """
    if kind not in _DESCRIPTIONS:
        raise ValueError(f"kind must be one of {sorted(_DESCRIPTIONS)}, got {kind!r}")
    from huggingface_hub import ModelCard, ModelCardData

    from ..cards import data_component, licence_metadata, licences_section

    saved = [(cls, cls._auto_class) for cls in (type(model), type(model.config))]
    try:
        # Repo folders ship no copies of the model code; the class comes from spa3_vlm or transformers.
        for cls, _ in saved:
            cls._auto_class = None
        model.save_pretrained(folder)
    finally:
        for cls, auto_class in saved:
            cls._auto_class = auto_class
    config_path = os.path.join(folder, "config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    config.pop("auto_map", None)
    with open(config_path, "w") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
        handle.write("\n")
    with open(os.path.join(folder, "eval.json"), "w") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    stages = [*earlier_stages, {"command": command, "steps": steps}]
    with open(os.path.join(folder, STAGES_FILE), "w") as handle:
        json.dump(stages, handle, indent=2)
        handle.write("\n")
    if len(stages) == 1:
        how = [
            f"`{command}` ({steps} optimizer steps from a random initialisation; `{_SCRIPTS[kind]}` renders its training "
            "scenes itself, so the command reproduces these weights from its seed, up to floating-point differences "
            "between machines)."
        ]
    else:
        how = [
            f"In {len(stages)} stages, each starting from the weights of the one before (`--init_from`); "
            f"`{_SCRIPTS[kind]}` renders its training scenes itself, so the commands reproduce these weights from their "
            "seeds, up to floating-point differences between machines:",
            "",
            *[f"{k}. `{stage['command']}` ({stage['steps']} optimizer steps)" for k, stage in enumerate(stages, 1)],
        ]
    parameters = sum(p.numel() for p in model.parameters())
    # Trained from scratch on SynthRooms: nothing third-party is bundled, so the rule gives the package's MIT.
    components = [data_component(f"SynthRooms (rendered by {_SCRIPTS[kind]})")]
    metadata, _ = licence_metadata(components)
    data = ModelCardData(
        library_name="transformers" if kind == "semantic" else "spa3_vlm",
        tags=["spa3-vlm", "synthrooms", f"{kind}-teacher"],
        **metadata,
    )
    text = "\n".join(
        [
            "---",
            data.to_yaml(),
            "---",
            "",
            f"# Tiny {kind} teacher for SynthRooms ({parameters / 1e6:.2f} M parameters)",
            "",
            _DESCRIPTIONS[kind],
            "",
            "```python",
            _LOADERS[kind].format(folder=folder),
            "```",
            "",
            "## How it was made",
            "",
            *how,
            "",
            "## Held-out scores",
            "",
            "Test-split SynthRooms scenes, never seen in training (`eval.json` holds the numbers):",
            "",
            report,
            "",
            *licences_section(components, ships_code=False),
            "",
        ]
    )
    ModelCard(text).save(os.path.join(folder, "README.md"))
