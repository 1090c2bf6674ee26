"""Everything the Space does besides drawing the UI: model choice and loading, upload checks, Spa3-VLM answers,
SynthRooms example scenes and the virtual camera of the "See" tab. No gradio here: problems a user can fix raise
``ValueError`` with a message meant for the UI (``app.py`` shows it with ``gr.Error``).

Importing this module loads no model and touches neither the network nor the disk beyond Python imports.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import PIL.Image
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

MAX_FILE_MB = float(os.environ.get("SPA3_SPACE_MAX_FILE_MB", "50"))
MAX_FRAMES = 32  # VSI-Bench evaluation samples 32 frames per video
MAX_SEE_VIEWS = 12  # the paper pre-trains Spa3R on 4-12 views
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Comma-separated folders / Hub ids an operator allows in the model boxes besides the offered ones.
ALLOW_ENV = "SPA3_ALLOWED_MODELS"
HUB_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model")  # what a Hub model is fetched with

NUM_EXAMPLE_SCENES = 4
ASK_EXAMPLE_SIZE = (168, 224)  # twice the tiny SynthRooms size: readable thumbnails, the processor resizes anyway
# Context frames of a See-tab scene: 6 views 3 frames apart on a 24-frame walk, as the PSFM evaluation samples them
# (6 views, steps of 1-3 frames, on held-out "test" scenes of train/pretrain_psfm.py's defaults).
SEE_WALK_FRAMES = 24
SEE_CONTEXT_FRAMES = (0, 3, 6, 9, 12, 15)
DISPLAY_WIDTH = 448


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


def _load_vlm(spec: ModelSpec) -> VLMBundle:
    from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration, Spa3VLMProcessor
    from spa3_vlm.modeling_spa3_vlm import Spa3VLMMixin
    from transformers import AutoModelForImageTextToText

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


def _load_field_model(spec: ModelSpec) -> "FieldBundle":
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


def get_field_model(choice: Optional[str]) -> "FieldBundle":
    return FIELD_CACHE.get(resolve_model(choice, SPA3R_ENV, DEFAULT_SPA3R_FOLDER, "spa3r"))


# ------------------------------------------------------------------------------------------------ uploads


def _name(path: str) -> str:
    return os.path.basename(str(path))


def check_upload_sizes(paths: Sequence[str]) -> None:
    for path in paths:
        size_mb = os.path.getsize(path) / 1e6
        if size_mb > MAX_FILE_MB:
            raise ValueError(f"{_name(path)} is {size_mb:.3g} MB; the limit is {MAX_FILE_MB:g} MB per file.")


def read_image(path: str) -> PIL.Image.Image:
    """An uploaded image file -> RGB PIL image, or a ``ValueError`` naming the file."""
    try:
        with PIL.Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{_name(path)} is {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS // 1_000_000} "
                    "megapixels per image."
                )
            image.load()  # decode now: a truncated file fails here, not inside the model
            return image.convert("RGB")
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read image {_name(path)}: it is not a valid image file ({err}).") from err


def classify(path: str) -> str:
    extension = os.path.splitext(str(path))[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return "image"
    if extension in VIDEO_EXTENSIONS:
        return "video"
    raise ValueError(
        f"{_name(path)} is not an image or a video. Images: {', '.join(IMAGE_EXTENSIONS)}; "
        f"videos: {', '.join(VIDEO_EXTENSIONS)}."
    )


def read_uploads(
    paths: Optional[Sequence[str]], num_video_frames: int, max_images: int = MAX_FRAMES
) -> tuple[list[PIL.Image.Image], str]:
    """Uploaded files -> (RGB frames, ``"images"`` or ``"video"``).

    Several images are used in upload order; one video gives ``num_video_frames`` evenly spaced frames
    (``linspace(0, n-1, k)`` cast to int, all frames if the video is shorter), as in evaluation.
    """
    paths = [str(p) for p in (paths or [])]
    if not paths:
        raise ValueError("No frames: upload images or one video (or load an example scene) first.")
    check_upload_sizes(paths)
    kinds = [classify(p) for p in paths]
    if "video" in kinds:
        if len(paths) > 1:
            raise ValueError(
                f"Got {len(paths)} files including a video: upload several images or one video, not both."
            )
        if not 1 <= int(num_video_frames) <= MAX_FRAMES:
            raise ValueError(f"Frames per video must be between 1 and {MAX_FRAMES}, got {num_video_frames}.")
        from spa3_vlm.video import load_video_frames

        try:
            frames = load_video_frames(paths[0], int(num_video_frames))
        except ValueError as err:
            raise ValueError(f"Cannot use video {_name(paths[0])}: {err}") from err
        if not frames:
            raise ValueError(f"Video {_name(paths[0])} has 0 frames.")
        return frames, "video"
    if len(paths) > max_images:
        raise ValueError(f"Got {len(paths)} images; at most {max_images} frames per question.")
    return [read_image(p) for p in paths], "images"


def files_digest(paths: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for path in paths:
        with open(path, "rb") as handle:
            digest.update(hashlib.sha1(handle.read()).digest())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ Ask


@dataclass
class Answer:
    text: str
    frames_seen: int  # frames given to the model (one image block each)
    visual_tokens: int
    prompt_tokens: int


def answer_question(
    bundle: VLMBundle, frames: Sequence[PIL.Image.Image], kind: str, question: str, max_new_tokens: int = 32
) -> Answer:
    """Greedy Spa3-VLM answer about ``frames`` through the package's generation path (``Spa3VLMGenerator``).

    ``kind`` ("images" or "video") only changes the wording of the notes: the processor gives a video's frames to
    the model as the same image blocks as a list of images.
    """
    from spa3_vlm.inference import Spa3VLMGenerator

    question = (question or "").strip()
    if not question:
        raise ValueError("Type a question first.")
    if not frames:
        raise ValueError("No frames to look at.")
    if not 1 <= int(max_new_tokens) <= 1024:
        raise ValueError(f"max_new_tokens must be between 1 and 1024, got {max_new_tokens}.")
    generator = Spa3VLMGenerator(bundle.model, bundle.processor, max_new_tokens=int(max_new_tokens))
    (answer,) = generator.generate([(list(frames), question)], return_details=True)
    return Answer(answer.text.strip(), answer.frames, answer.visual_tokens, answer.prompt_tokens)


# ------------------------------------------------------------------------------------------------ SynthRooms


def example_scene_seed(index: int) -> int:
    """Held-out scenes: the "test" split of train/pretrain_psfm.py's defaults (never seen in pre-training)."""
    from spa3_vlm.data.synthrooms import scene_seed

    if not 0 <= int(index) < NUM_EXAMPLE_SCENES:
        raise ValueError(f"Example scene must be 0-{NUM_EXAMPLE_SCENES - 1}, got {index}.")
    return scene_seed(0, "test", int(index))


_EXAMPLE_LOCK = threading.Lock()
_ASK_EXAMPLES: dict = {}


def ask_example(index: int) -> tuple[list[PIL.Image.Image], list[dict]]:
    """Frames (8-frame walk, as SynthRooms-QA) and VSI-Bench-style questions of example scene ``index``."""
    from spa3_vlm.data.synthrooms import SynthRoomsConfig, generate_scene, render_scene_frames, scene_to_row
    from spa3_vlm.data.synthrooms_qa import synthrooms_qa_records

    with _EXAMPLE_LOCK:
        if index not in _ASK_EXAMPLES:
            scene = generate_scene(example_scene_seed(index), SynthRoomsConfig())
            rendered = render_scene_frames(scene, ASK_EXAMPLE_SIZE)
            row = scene_to_row(scene, rendered, f"test-{index:05d}", "test")
            _ASK_EXAMPLES[index] = (row["images"], synthrooms_qa_records([row], seed=0, per_scene=None))
        return _ASK_EXAMPLES[index]


def pick_question(records: list[dict], question_type: str) -> dict:
    """The first record of ``question_type`` (any type for ``"any"``), else the first record."""
    if not records:
        raise ValueError("This example scene has no questions.")
    for record in records:
        if question_type in ("any", record["question_type"]):
            return record
    return records[0]


def example_prompt(record: dict) -> str:
    from spa3_vlm.vsibench import build_vsibench_prompt

    return build_vsibench_prompt(record["question"], record["question_type"], record.get("options"))


# ------------------------------------------------------------------------------------------------ See


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


@dataclass
class ViewSet:
    """Context views for the See tab.

    ``images [V, 3, H, W]`` in [0, 1]. For SynthRooms scenes also ``scene`` (ground truth), ``world_extrinsics``
    ``[V, 4, 4]`` (world->camera, metres) and ``intrinsics [V, 3, 3]``; uploads get their cameras from the backbone.
    """

    key: str
    label: str
    images: torch.Tensor
    scene: object = None
    world_extrinsics: Optional[np.ndarray] = None
    intrinsics: Optional[np.ndarray] = None

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])


_SEE_SCENES: dict = {}


def synthrooms_views(index: int, image_size: tuple[int, int]) -> ViewSet:
    """Context views of held-out example scene ``index`` rendered at ``image_size``, with their ground truth."""
    from spa3_vlm.data.synthrooms import SynthRoomsConfig, generate_scene, render

    key = (int(index), tuple(image_size))
    with _EXAMPLE_LOCK:
        if key not in _SEE_SCENES:
            config = SynthRoomsConfig(frames_per_scene=SEE_WALK_FRAMES, image_size=tuple(image_size))
            scene = generate_scene(example_scene_seed(index), config)
            frames = list(SEE_CONTEXT_FRAMES)
            extrinsics, intrinsics = scene.extrinsics[frames], scene.intrinsics[frames]
            rgb = render(scene, extrinsics, intrinsics, tuple(image_size))["rgb"]
            images = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
            _SEE_SCENES[key] = ViewSet(
                f"synthrooms-{index}-{image_size}", f"SynthRooms test scene {index}", images, scene, extrinsics, intrinsics
            )
        return _SEE_SCENES[key]


def uploaded_views(paths: Optional[Sequence[str]], bundle: FieldBundle) -> ViewSet:
    """Uploaded images -> context views at the model's input size (no cameras: the backbone predicts them)."""
    paths = [str(p) for p in (paths or [])]
    if not paths:
        raise ValueError("No views: upload 1-12 images of one scene, or pick a SynthRooms scene.")
    check_upload_sizes(paths)
    if any(classify(p) == "video" for p in paths):
        raise ValueError("The See tab takes images (views of one scene), not a video: upload 1-12 images.")
    if len(paths) > MAX_SEE_VIEWS:
        raise ValueError(f"Got {len(paths)} images; the field model takes at most {MAX_SEE_VIEWS} context views.")
    images = [read_image(p) for p in paths]
    try:
        resized = bundle.image_processor.resize_sample(images)
    except ValueError as err:
        raise ValueError(f"Cannot use these views together: {err}") from err
    pixels = bundle.image_processor.to_tensor(resized)
    return ViewSet(f"upload-{files_digest(paths)}-{tuple(pixels.shape)}", f"{len(paths)} uploaded images", pixels)


def relative_motion(yaw_deg: float, pitch_deg: float, forward: float, sideways: float) -> np.ndarray:
    """The virtual camera's motion from a context view (:func:`spa3_vlm.field_view.relative_motion`)."""
    from spa3_vlm.field_view import relative_motion as motion

    return motion(yaw_deg, pitch_deg, forward, sideways)


_ENCODED: OrderedDict = OrderedDict()
_ENCODE_LOCK = threading.Lock()


def encode_views(bundle: FieldBundle, views: ViewSet):
    """Encode ``views`` once per (model, view set); later camera moves only run the decoder."""
    key = (bundle.spec, views.key)
    with _ENCODE_LOCK:
        if key not in _ENCODED:
            _ENCODED[key] = _encode(bundle, views)
            while len(_ENCODED) > 8:
                _ENCODED.popitem(last=False)
        _ENCODED.move_to_end(key)
        return _ENCODED[key]


def _encode(bundle: FieldBundle, views: ViewSet):
    from spa3_vlm.field_view import encode_views as encode

    if views.scene is not None:
        encoded = encode(bundle.model, views.images, views.world_extrinsics, views.intrinsics)
        encoded.pose_note = "ground-truth cameras of the scene (metric, relative to view 0)"
        return encoded
    if bundle.model.spa3r.backbone.camera_head is None:
        raise ValueError(
            f"{bundle.spec.label} has no camera head to estimate the poses of uploaded images: pick a SynthRooms scene."
        )
    try:
        encoded = encode(bundle.model, views.images)
    except ValueError as err:
        raise ValueError("The backbone's camera head gave no usable poses for these images; try other views.") from err
    encoded.pose_note = "poses predicted by the VGGT camera head (up to scale, relative to view 0)"
    if bundle.random_weights:
        encoded.pose_note += "; with random weights these poses are arbitrary"
    return encoded


def _upscale(image: torch.Tensor, mode: str) -> PIL.Image.Image:
    from spa3_vlm.visualization import upscale

    return upscale(image, DISPLAY_WIDTH, mode)


def field_image(features: torch.Tensor, basis: torch.Tensor, grid: tuple[int, int]) -> PIL.Image.Image:
    """PCA colours of ``features [N, C]`` in the top-3 components of ``basis [M, C]`` as a patch image."""
    from spa3_vlm.visualization import patch_picture

    return patch_picture(features, basis, grid, DISPLAY_WIDTH)


@dataclass
class SeeResult:
    field: PIL.Image.Image
    nearest: PIL.Image.Image
    nearest_index: int
    true_view: Optional[PIL.Image.Image]
    teacher_field: Optional[PIL.Image.Image]
    extrinsics: np.ndarray  # [4, 4] the virtual camera, relative to view 0
    intrinsics: np.ndarray  # [3, 3]
    true_rgb: Optional[np.ndarray]  # [H, W, 3] float in [0, 1], the exact render
    notes: list


@torch.no_grad()
def see(
    bundle: FieldBundle,
    views: ViewSet,
    view_index: int,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    forward: float = 0.0,
    sideways: float = 0.0,
) -> SeeResult:
    """Predict the field for a virtual camera placed relative to context view ``view_index``.

    The virtual camera has the chosen view's intrinsics. Colours: PCA of the teacher (backbone) features of the
    context views when the head is ``geo`` (the features it learns to predict), else of the predicted field at
    the context cameras; the same basis colours the teacher features of the true rendering.
    """
    if isinstance(view_index, bool) or int(view_index) != view_index or not 0 <= int(view_index) < views.num_views:
        raise ValueError(f"Context view must be 0-{views.num_views - 1} ({views.label}), got {view_index}.")
    index = int(view_index)
    from spa3_vlm.field_view import decode_at, field_basis, nearest_view, run_backbone

    encoded = encode_views(bundle, views)
    model = bundle.model
    target = next(model.parameters()).device
    motion = relative_motion(yaw_deg, pitch_deg, forward, sideways)
    virtual = motion @ encoded.extrinsics[index]
    intrinsics = encoded.intrinsics[index]
    height, width = views.images.shape[-2:]
    patch = model.config.patch_size
    grid = (height // patch, width // patch)
    field = decode_at(model, encoded, virtual[None], intrinsics[None])
    head = bundle.head
    predicted = field[head]  # [V + 1, N, C]
    basis, basis_note = field_basis(encoded, field, head)
    notes = [
        f"Field head `{head}` ({predicted.shape[-1]} channels), coloured by the top 3 principal components of {basis_note}.",
        f"Cameras: {encoded.pose_note}.",
    ]
    nearest_index, distance = nearest_view(encoded.extrinsics, virtual)
    true_view = teacher = true_rgb = None
    if views.scene is not None:
        world = motion @ views.world_extrinsics[index]
        from spa3_vlm.data.synthrooms import render

        world_centre = -world[:3, :3].T @ world[:3, 3]
        room = np.asarray(views.scene.room_size, dtype=np.float64)
        if (world_centre <= 0).any() or (world_centre >= room).any():
            notes.append(
                "No true rendering: the virtual camera stands outside the room (at "
                f"({world_centre[0]:.2f}, {world_centre[1]:.2f}, {world_centre[2]:.2f}) m; the room spans "
                f"{room[0]:.2f} x {room[1]:.2f} x {room[2]:.2f} m)."
            )
        else:
            true_rgb = render(views.scene, world, views.intrinsics[index], (height, width))["rgb"]
        if true_rgb is not None:
            true_image = torch.from_numpy(true_rgb).permute(2, 0, 1)
            true_view = _upscale(true_image, "bilinear")
            if head == "geo":
                # The teacher sees the context views with the new one, as in pre-training's full pass.
                both = torch.cat([views.images, true_image[None]])[None].to(target)
                tokens = run_backbone(model, both, compute_cameras=False).last_patch_tokens
                teacher = field_image(tokens[0, -1], basis, grid)
    centre = np.round(-virtual[:3, :3].T @ virtual[:3, 3], 2) + 0.0  # + 0.0: no "-0.00"
    notes.append(
        f"Virtual camera centre in view 0's frame: ({centre[0]:+.2f}, {centre[1]:+.2f}, {centre[2]:+.2f}); nearest "
        f"input view: #{nearest_index} (distance {distance:.2f})."
    )
    return SeeResult(
        field=field_image(predicted[-1], basis, grid),
        nearest=_upscale(views.images[nearest_index], "bilinear"),
        nearest_index=nearest_index,
        true_view=true_view,
        teacher_field=teacher,
        extrinsics=virtual,
        intrinsics=intrinsics,
        true_rgb=true_rgb,
        notes=notes,
    )


def view_thumbnails(views: ViewSet) -> list[tuple[PIL.Image.Image, str]]:
    return [(_upscale(image, "bilinear"), f"view {i}") for i, image in enumerate(views.images)]
