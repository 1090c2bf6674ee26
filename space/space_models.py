"""Which model a Space model box may load, and loading it: the allow-list (offered choices, the operator's
variables, Hub ids), :class:`ModelSpec`, and the loaded-model caches behind :func:`get_vlm` / :func:`get_field_model`.

Importing this module loads no model and touches neither the network nor the disk beyond Python imports.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

SPACE_DIR = Path(__file__).resolve().parent
# The Space folder sits in the package repository; a deployed Space carries copies of hub_configs/ (and runs/).
SEARCH_ROOTS = (Path.cwd(), SPACE_DIR, SPACE_DIR.parent)

TINY_RANDOM = "tiny-random"
VLM_ENV, SPA3R_ENV = "SPA3_VLM_MODEL", "SPA3R_MODEL"
VLM_TINY_CONFIG = "hub_configs/spa3-vlm-tiny"
SPA3R_TINY_CONFIG = "hub_configs/spa3r-tiny-synthrooms"
# Where train/pretrain_psfm.py and train/sft_vlm.py save by default.
DEFAULT_SPA3R_FOLDER = "runs/spa3r-tiny"
DEFAULT_VLM_FOLDER = "runs/spa3-vlm-tiny-sft"
RANDOM_SEED = 0  # random tiny models are built from this seed, so their outputs are reproducible

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Comma-separated folders / Hub ids an operator allows in the model boxes besides the offered ones.
ALLOW_ENV = "SPA3_ALLOWED_MODELS"
HUB_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model")  # what a Hub model is fetched with


# ------------------------------------------------------------------------------------------------ model choice


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: ``kind`` is ``"random"`` (tiny config, random weights), ``"folder"`` or ``"hub"``."""

    kind: str
    source: str

    @property
    def label(self) -> str:
        if self.kind == "random":
            return f"{TINY_RANDOM} ({self.source}, random weights)"
        if self.kind == "hub":
            return f"{self.source} (Hub)"
        return f"{_shown_path(self.source)} (local folder)"


def _shown_path(path: str) -> str:
    """A folder under one of the search roots as the path relative to it (what a user types), else as is."""
    for root in SEARCH_ROOTS:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            continue
    return path


def _find(relative: str) -> Optional[Path]:
    for root in SEARCH_ROOTS:
        candidate = root / relative
        if candidate.exists():
            return candidate
    return None


def _read_json(path: Path) -> Optional[dict]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _adapter_base(folder: Path) -> Optional[str]:
    """The base model a PEFT adapter folder names (train/sft_vlm.py --use_lora saves one), else None."""
    adapter = _read_json(folder / "adapter_config.json") if (folder / "adapter_config.json").is_file() else None
    return (adapter or {}).get("base_model_name_or_path")


def _accepted_model_types(kind: str) -> tuple[str, ...]:
    """A model box's kind -> the config model_types it accepts (Spa3-VLM on either base VLM)."""
    if kind == "spa3_vlm":
        from spa3_vlm.modeling_spa3_vlm import SPA3_VLM_MODEL_TYPES

        return SPA3_VLM_MODEL_TYPES
    return (kind,)


def _is_saved_model(folder: Path, model_type: str) -> bool:
    """A finished ``save_pretrained`` folder (or PEFT adapter on such a base) of ``model_type``, not a run that
    has not saved its model yet."""
    if not (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
        return False
    config = folder / "config.json"
    base = _adapter_base(folder)
    if not config.is_file() and base and Path(base).is_dir():
        config = Path(base) / "config.json"
    return config.is_file() and (_read_json(config) or {}).get("model_type") in _accepted_model_types(model_type)


def local_model_folders(model_type: str) -> list[str]:
    """Saved models of ``model_type`` under ``runs/`` (newest first), as paths relative to their root."""
    found: dict[str, float] = {}
    for root in SEARCH_ROOTS:
        runs = root / "runs"
        if not runs.is_dir():
            continue
        for folder in runs.iterdir():
            if folder.is_dir() and _is_saved_model(folder, model_type):
                found.setdefault(f"runs/{folder.name}", folder.stat().st_mtime)
    return sorted(found, key=lambda name: -found[name])


def default_model_choice(env_var: str, preferred_folder: str, model_type: str) -> str:
    """The env var if set, else the preferred trained folder, else any trained folder, else the random tiny model."""
    from_env = os.environ.get(env_var, "").strip()
    if from_env:
        return from_env
    folders = local_model_folders(model_type)
    if preferred_folder in folders:
        return preferred_folder
    return folders[0] if folders else TINY_RANDOM


def operator_models() -> list[str]:
    """The folders and Hub ids the operator allows on top of the offered ones (:data:`ALLOW_ENV`, comma-separated)."""
    entries = (entry.strip() for entry in os.environ.get(ALLOW_ENV, "").split(","))
    return list(dict.fromkeys(entry for entry in entries if entry))


def hub_reachable() -> bool:
    """Whether a typed Hub id may be fetched: not when the Hub is switched off (``HF_HUB_OFFLINE``, or
    ``TRANSFORMERS_OFFLINE``, which huggingface_hub reads once, at its import)."""
    import huggingface_hub

    return not huggingface_hub.is_offline_mode()


def _is_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and all(part not in (".", "..") for part in text.split("/"))


def _folder_of(entry: str) -> Optional[Path]:
    """The folder an allow-list entry names (absolute, ``~``, or relative to a search root), if it exists. Only ever
    called on allow-list entries: what a user types is never looked up on the disk."""
    path = Path(entry).expanduser()
    candidates = [path] if path.is_absolute() else [root / path for root in SEARCH_ROOTS]
    return next((candidate for candidate in candidates if candidate.is_dir()), None)


def model_choices(env_var: str, preferred_folder: str, model_type: str) -> list[str]:
    """What the model box offers: the default, the random tiny model, the saved models under ``runs/``, and the
    operator's extra models (:data:`ALLOW_ENV`) that fit this box (a folder of ``model_type``, or a Hub id)."""
    choices = [default_model_choice(env_var, preferred_folder, model_type), TINY_RANDOM]
    choices += local_model_folders(model_type)
    for entry in operator_models():
        folder = _folder_of(entry)
        if (folder is not None and _is_saved_model(folder, model_type)) or (folder is None and _is_hub_id(entry)):
            choices.append(entry)
    return list(dict.fromkeys(choices))


def _typed_key(text: str) -> str:
    text = text.strip()
    return text.rstrip("/") or text


def allowed_models(env_var: str, preferred_folder: str, model_type: str) -> dict[str, str]:
    """The allow-list of a model box: the offered choices, the operator's env var and every :data:`ALLOW_ENV`
    entry, each under its text and, for a folder, its path on the server. Maps what may be typed to the entry."""
    entries = model_choices(env_var, preferred_folder, model_type)
    entries += [os.environ.get(env_var, "").strip(), *operator_models()]
    allowed: dict[str, str] = {}
    for entry in filter(None, entries):
        allowed.setdefault(_typed_key(entry), entry)
        folder = None if entry == TINY_RANDOM else _folder_of(entry)
        if folder is not None:
            allowed.setdefault(str(folder), entry)
    return allowed


def refusal_message(offered: Sequence[str], online: bool) -> str:
    """The one answer to any model that is not allowed, whether or not such a path exists on the server."""
    message = f"This model is not offered here. Choose one of: {', '.join(offered)}"
    if online:
        return message + "; or type a Hub id (owner/name)."
    return message + ". Hub ids (owner/name) cannot be used: the Hub is offline on this server (HF_HUB_OFFLINE)."


def resolve_model(choice: Optional[str], env_var: str, preferred_folder: str, model_type: str) -> ModelSpec:
    """Textbox / dropdown value -> :class:`ModelSpec`, from the allow-list only (:func:`allowed_models`), else a Hub
    id when the Hub is reachable. Anything else is refused with :func:`refusal_message`, which names no path of
    the server and reads the same whether or not the typed path exists (it is never looked up)."""
    typed = (choice or "").strip() or default_model_choice(env_var, preferred_folder, model_type)
    if typed == TINY_RANDOM or typed.startswith(TINY_RANDOM + " "):
        return ModelSpec("random", "")
    entry = allowed_models(env_var, preferred_folder, model_type).get(_typed_key(typed))
    if entry is None:
        if _is_hub_id(typed) and hub_reachable():
            return ModelSpec("hub", typed)
        raise ValueError(refusal_message(model_choices(env_var, preferred_folder, model_type), hub_reachable()))
    folder = _folder_of(entry)
    if folder is not None:
        if not (folder / "config.json").is_file() and not _adapter_base(folder):
            raise ValueError(
                f"Model folder {typed!r} has no config.json (nor a PEFT adapter_config.json): give a folder "
                "written by save_pretrained."
            )
        return ModelSpec("folder", str(folder))
    if _is_hub_id(entry):
        return ModelSpec("hub", entry)
    raise ValueError(
        f"Model {typed!r} is allowed by the Space's settings ({env_var} / {ALLOW_ENV}) but there is no such folder "
        "and it is not a Hub id (owner/name)."
    )


# ------------------------------------------------------------------------------------------------ loading


def _hub_snapshot(repo_id: str, model_type: str) -> str:
    """A Hub model's files in the Hub cache (downloaded unless cached). The loaders get this folder, never the bare
    id: ``from_pretrained("runs/x")`` would load a server folder named like the id. Only the config is fetched for
    a model of another type."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config = _read_json(Path(hf_hub_download(repo_id, "config.json")))
    except EntryNotFoundError:
        config = None  # a PEFT adapter has adapter_config.json instead
    found = (config or {}).get("model_type", model_type)
    if found not in _accepted_model_types(model_type):
        raise ValueError(f"{repo_id} (Hub) holds a {found!r} model, not a {model_type!r} one.")
    return snapshot_download(repo_id, allow_patterns=list(HUB_FILES))


class _ModelCache:
    """Loaded models by spec, loaded once (under a lock: two events may ask for the same model together)."""

    def __init__(self, loader: Callable, capacity: int = 2):
        self._loader, self._capacity = loader, capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec):
        with self._lock:
            if spec not in self._items:
                self._items[spec] = self._loader(spec)
                while len(self._items) > self._capacity:
                    self._items.popitem(last=False)
            self._items.move_to_end(spec)
            return self._items[spec]

    def loaded(self) -> list[ModelSpec]:
        return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tiny_config_folder(relative: str) -> Path:
    folder = _find(relative)
    if folder is None:
        raise ValueError(
            f"The tiny model config {relative}/ is missing (copy it from the spa3-vlm repository next to the Space) "
            "and no trained model was given."
        )
    return folder


@dataclass
class VLMBundle:
    spec: ModelSpec
    model: object
    processor: object
    random_weights: bool


@dataclass
class FieldBundle:
    spec: ModelSpec
    model: object  # Spa3RForFieldPrediction
    image_processor: object  # Spa3RImageProcessor for uploads
    random_weights: bool

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of SynthRooms renders for this model: its backbone width, 4:3, whole patches."""
        patch, width = self.model.config.patch_size, self.image_processor.target_width
        return max(1, round(width * 0.75 / patch)) * patch, width

    @property
    def head(self) -> str:
        """The field shown (:func:`spa3_vlm.field_view.field_head`)."""
        from spa3_vlm.field_view import field_head

        try:
            return field_head(self.model.config)
        except ValueError as err:
            raise ValueError(f"{self.spec.label}: {err}.") from err


def _load_vlm(spec: ModelSpec) -> VLMBundle:
    from transformers import AutoModelForImageTextToText

    from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration, Spa3VLMProcessor
    from spa3_vlm.modeling_spa3_vlm import Spa3VLMMixin

    target = device()
    if spec.kind == "random":
        folder = _tiny_config_folder(VLM_TINY_CONFIG)
        processor = Spa3VLMProcessor.from_pretrained(folder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(folder))
        return VLMBundle(ModelSpec("random", VLM_TINY_CONFIG), model.to(target).eval(), processor, True)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    base = _adapter_base(Path(spec.source)) if spec.kind == "folder" else None
    try:
        source = _hub_snapshot(spec.source, "spa3_vlm") if spec.kind == "hub" else spec.source
        if base and not (Path(source) / "config.json").is_file():
            try:
                from peft import PeftModel
            except ImportError as err:
                raise ValueError(f"{spec.label} is a LoRA adapter: loading it needs `pip install peft`.") from err
            base_model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
            with warnings.catch_warnings():
                # PEFT reads `is_gradient_checkpointing`, which transformers 5 deprecates: nothing a user can act on.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                model = PeftModel.from_pretrained(base_model, source).merge_and_unload()
        else:
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        processor = Spa3VLMProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"Could not load a Spa3-VLM from {spec.label}: {err}") from err
    if not isinstance(model, Spa3VLMMixin):
        raise ValueError(
            f"{spec.label} holds a {type(model).__name__}, not a Spa3-VLM (model_type 'spa3_vlm' or 'spa3_vlm_qwen3')."
        )
    return VLMBundle(spec, model.to(target).eval(), processor, False)


def _load_field_model(spec: ModelSpec) -> FieldBundle:
    from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction, Spa3RImageProcessor
    from spa3_vlm.field_view import load_field_model

    target = device()
    if spec.kind == "random":
        folder = _tiny_config_folder(SPA3R_TINY_CONFIG)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = Spa3RForFieldPrediction(Spa3RConfig.from_pretrained(folder))
        config = model.config
        if config.vggt_config is None:
            raise ValueError(f"{SPA3R_TINY_CONFIG} has no VGGT backbone (vggt_config is None): it cannot encode images.")
        width = int(config.vggt_config.image_size)
        processor = Spa3RImageProcessor(target_width=width, max_height=width, patch_size=config.patch_size)
        return FieldBundle(ModelSpec("random", SPA3R_TINY_CONFIG), model.to(target).eval(), processor, True)
    try:
        source = _hub_snapshot(spec.source, "spa3r") if spec.kind == "hub" else spec.source
        # The package's loader: refuses encoder-only checkpoints and models without a backbone, saying why.
        model, processor = load_field_model(source, device=target)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"Could not load a Spa3R field model from {spec.label}: {err}") from err
    return FieldBundle(spec, model, processor, False)


VLM_CACHE = _ModelCache(_load_vlm)
FIELD_CACHE = _ModelCache(_load_field_model)


def get_vlm(choice: Optional[str]) -> VLMBundle:
    return VLM_CACHE.get(resolve_model(choice, VLM_ENV, DEFAULT_VLM_FOLDER, "spa3_vlm"))


def get_field_model(choice: Optional[str]) -> FieldBundle:
    return FIELD_CACHE.get(resolve_model(choice, SPA3R_ENV, DEFAULT_SPA3R_FOLDER, "spa3r"))
