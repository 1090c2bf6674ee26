"""Load VSI-590K-format annotations (LLaVA-style conversations over local videos or frames) for TRL; frames are
decoded when a row is read, not stored.

An annotation file is a JSON list (``.json``) or one JSON object per line (``.jsonl``) of records::

    {"id": "...",                                   # optional; defaults to "<file name>#<line/index>"
     "conversations": [{"from": "human", "value": "<video>\\nThese are frames of a video.\\n..."},
                       {"from": "gpt", "value": "B"}],
     "video": "scannet/scene0000_00.mp4",           # a video file or a directory of frames, or
     "images": ["a.jpg", "b.jpg"],                  # a list of image files ("image": one file or a list)
     "question_type": "object_rel_distance",        # optional
     "options": ["A. ...", ...]}                     # optional

Media paths are relative to ``media_root`` (absolute paths are used as they are). As in the reference
(``LazySupervisedDataset``): the single ``<video>`` placeholder of the human turns becomes N ``image``
entries, N = the sampled frames (uniform ``linspace`` indices over a video file or a naturally sorted frame directory,
as ``spa3_vlm.video.load_video_frames(path, N)``), with N by the reference's rule ``clamp(round(duration / 2 s), 4, 8)``
unless ``num_frames`` fixes it (:class:`FrameRule`); an image list under one ``<video>`` placeholder is subsampled the
same way, and ``<image>`` placeholders take one image each. ``"<image>\\n"`` counts as ``"<image>"``. A record with
media but no placeholder gets its images at the start of its first human turn (TRL's convention). Roles: human ->
user, gpt -> assistant, system -> system.

Rows (:func:`vsi590k_features`) name their frames and hold no pixels, a few hundred bytes each: ``id``,
``question_type`` (``None`` if absent), ``media`` (the path as written in the record), the frame-set columns of
:mod:`spa3_vlm.data.lazy_frames` (``media_kind``, ``media_path``, ``frame_files``, ``frame_indices`` and
``frames_key``, shared by the records of one video and frame set) and ``messages`` in TRL's vision chat format
(``image`` entries stored with ``"text": None``). Reading a row adds ``images`` (PIL frames, the same as an eager
decode) through :class:`~spa3_vlm.data.lazy_frames.DecodeFrames`, so a DataLoader's workers decode in parallel
(``--dataloader_num_workers``), and with ``frame_cache_dir`` each video is decoded once per frame set. A trainer must
keep the frame-set columns (``remove_unused_columns=False``; ``Spa3VLMSFTTrainer`` sets it).

Building the rows opens each distinct video once (frame count and rate) and reads no pixels except the image lists'
(checked once per file). Checks, before any row is written (each error names the record): media that do not exist
(``FileNotFoundError`` with the path), a video that cannot be read, a conversation without an assistant (gpt) turn,
placeholders that do not match the media, and, for a record whose ``question_type`` is one of VSI-Bench's ten, an
answer that does not parse for it: the last gpt answer, read as the VSI-Bench metric reads a prediction
(:func:`~spa3_vlm.vsibench.normalize_answer`), must be a number (numerical types) or one of the option
letters (multiple choice; options from the record's ``options`` or the "A. ..." lines of the question), checked by
:func:`~spa3_vlm.data.synthrooms_qa.validate_record`. Other question types are not checked. Errors found while
decoding (a damaged video, a file changed or removed since) also name the record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..vsibench import QUESTION_TYPES, normalize_answer, validate_record
from .lazy_frames import DecodeFrames, frame_set_key, source_signature

__all__ = ["VSI590K_FORMAT_VERSION", "FrameRule", "load_vsi590k", "read_vsi590k_annotations", "vsi590k_features"]

# Part of the cache fingerprint of load_vsi590k: bump whenever the produced rows change.
VSI590K_FORMAT_VERSION = 2

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_PLACEHOLDER = re.compile(r"(<image>|<video>)\n?")
_OPTION_LINE = re.compile(r"^\s*\(?[A-Z][.):]\s*\S.*$", re.MULTILINE)


def read_vsi590k_annotations(annotation_path: str | os.PathLike) -> list[dict]:
    """Records of a ``.json`` (a list) or ``.jsonl`` (one object per line) annotation file; each record gets
    an ``id`` if it has none (``"<file name>#<index>"``)."""
    path = os.fspath(annotation_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VSI-590K annotation file not found: {path}")
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith(".jsonl"):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: invalid JSON ({error.msg})") from None
    elif path.endswith(".json"):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    else:
        raise ValueError(f"annotation file must end in .json or .jsonl, got {path}")
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record #{index} must be a JSON object, got {type(record).__name__}")
        if record.get("id") in (None, ""):
            record = {**record, "id": f"{name}#{index}"}
        out.append(record)
    return out


class _Media:
    """What the records' media are, read once per file however many records name it."""

    def __init__(self):
        self._videos: dict[str, Any] = {}
        self._directories: dict[str, list[str]] = {}
        self._signatures: dict[str, tuple] = {}
        self._checked_images: set[str] = set()

    def video(self, path: str):
        from ..video import probe_video

        if path not in self._videos:
            self._videos[path] = probe_video(path)
        return self._videos[path]

    def directory(self, path: str) -> list[str]:
        from ..processing_spa3_vlm import list_image_files

        if path not in self._directories:
            self._directories[path] = list_image_files(path)
        return self._directories[path]

    def signature(self, path: str) -> tuple:
        if path not in self._signatures:
            self._signatures[path] = source_signature(path)
        return self._signatures[path]

    def check_image(self, path: str) -> None:
        import PIL.Image

        if path not in self._checked_images:
            with PIL.Image.open(path) as image:
                image.verify()
            self._checked_images.add(path)


@dataclass
class _Plan:
    """A validated record: its frame set and where the images go."""

    record_id: str
    question_type: Optional[str]
    media: Optional[str]
    kind: str  # lazy_frames.MEDIA_KINDS
    media_path: Optional[str] = None  # the video file
    frame_files: list[str] = field(default_factory=list)  # sampled files of a frame directory or image list
    frame_indices: list[int] = field(default_factory=list)
    frames_key: Optional[str] = None
    turns: list[tuple[str, list]] = field(default_factory=list)  # role, content with ("slot", k) markers


def _resolve(media_root: str, path: Any, where: str) -> str:
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: media paths must be non-empty strings, got {path!r}")
    return path if os.path.isabs(path) else os.path.join(media_root, path)


def _split_placeholders(text: str) -> list:
    """Text pieces and placeholder names of one human turn (a newline right after a placeholder is dropped)."""
    pieces, position = [], 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > position:
            pieces.append(text[position : match.start()])
        pieces.append(match.group(1))
        position = match.end()
    if position < len(text):
        pieces.append(text[position:])
    return pieces


def _check_conversation(record: dict, where: str) -> tuple[list, list, Optional[str]]:
    """(role, text) turns, the human texts and the question type of a record whose conversation and answer are valid."""
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise ValueError(
            f"{where}: 'conversations' must be a non-empty list of {{from, value}} turns, got {conversations!r}"
        )
    turns = []
    for number, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            raise ValueError(
                f"{where}: turn {number} must be {{'from': one of {sorted(_ROLES)}, 'value': str}}, got {turn!r}"
            )
        turns.append((_ROLES[turn["from"]], turn["value"]))
    answers = [value for role, value in turns if role == "assistant"]
    if not answers:
        raise ValueError(f"{where}: the conversation has no assistant ('gpt') turn to learn from")
    user_texts = [value for role, value in turns if role == "user"]
    if not user_texts:
        raise ValueError(f"{where}: the conversation has no human turn")

    question_type = record.get("question_type")
    if question_type is not None and not isinstance(question_type, str):
        raise ValueError(f"{where}: question_type must be a string, got {question_type!r}")
    if question_type in QUESTION_TYPES:
        options = record.get("options")
        if not options:
            options = _OPTION_LINE.findall(user_texts[0]) or None
        view = {"id": str(record["id"]), "question_type": question_type, "question": user_texts[0],
                "options": options, "ground_truth": normalize_answer(answers[-1])}  # fmt: skip
        try:
            validate_record(view)
        except ValueError as error:
            raise ValueError(
                f"{where}: answer {answers[-1]!r} does not fit question_type {question_type!r}: {error}"
            ) from None
    return turns, user_texts, question_type


def _plan_video(plan: _Plan, path: str, where: str, frames: "FrameRule", media: _Media) -> None:
    """A video file or frame directory: the sampled indices (and files) and the frame set's key."""
    from ..processing_spa3_vlm import sample_frame_indices

    if os.path.isdir(path):
        try:
            files = media.directory(path)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        indices = sample_frame_indices(len(files), frames.count(float(len(files))))  # a directory counts as 1 fps
        plan.kind, plan.frame_files, plan.frame_indices = "frame_dir", [files[i] for i in indices], indices
        plan.frames_key = frame_set_key("frame_dir", [media.signature(f) for f in plan.frame_files], indices)
        return
    try:
        probe = media.video(path)
        if probe.num_frames < 1:
            raise ValueError("it contains 0 decodable frames")
        if frames.num_frames is None and probe.fps is None:
            raise ValueError("it has no frame rate to compute its duration from")
    except (ValueError, OSError) as error:
        raise ValueError(f"{where}: cannot read {path}: {error}") from None
    duration = probe.num_frames / probe.fps if probe.fps else 0.0
    indices = sample_frame_indices(probe.num_frames, frames.count(duration))
    plan.kind, plan.media_path, plan.frame_indices = "video", path, indices
    plan.frames_key = frame_set_key("video", [media.signature(path)], indices)


def _plan_record(record: dict, index: int, media_root: str, frames: "FrameRule", media: _Media) -> _Plan:
    from ..processing_spa3_vlm import sample_frame_indices

    record_id = str(record["id"])
    where = f"record {record_id!r} (#{index})"
    turns, user_texts, question_type = _check_conversation(record, where)

    has_video, has_images = record.get("video") is not None, record.get("images", record.get("image")) is not None
    if has_video and has_images:
        raise ValueError(f"{where}: has both 'video' and 'images'; expected one of them")
    placeholders = [p for value in user_texts for p in _PLACEHOLDER.findall(value)]
    num_video, num_image = placeholders.count("<video>"), placeholders.count("<image>")
    plan = _Plan(record_id, question_type, None, "none")
    if has_video:
        plan.media = record["video"]
        path = _resolve(media_root, plan.media, where)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{where}: video file or frame directory not found: {path}")
        if num_image or num_video > 1:
            raise ValueError(
                f"{where}: a 'video' record takes one <video> placeholder, "
                f"got {num_video} <video> and {num_image} <image>"
            )
        _plan_video(plan, path, where, frames, media)
        expand = True
    elif has_images:
        listed = record.get("images", record.get("image"))
        listed = [listed] if isinstance(listed, str) else listed
        if not isinstance(listed, list) or not listed:
            raise ValueError(f"{where}: 'images' must be a path or a non-empty list of paths, got {listed!r}")
        paths = [_resolve(media_root, p, where) for p in listed]
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{where}: image file not found: {path}")
        if num_video == 1 and num_image == 0:
            indices, expand = sample_frame_indices(len(paths), frames.image_list_cap), True
        elif num_video == 0 and num_image in (0, len(paths)):
            indices, expand = list(range(len(paths))), num_image == 0
        else:
            raise ValueError(
                f"{where}: {len(paths)} image(s) but {num_image} <image> and {num_video} <video> placeholder(s); "
                "expected one <image> per image, a single <video>, or none"
            )
        plan.kind, plan.frame_files, plan.frame_indices = "images", [paths[i] for i in indices], indices
        for path in plan.frame_files:
            try:
                media.check_image(path)
            except (OSError, SyntaxError) as error:  # PIL reports some broken files as SyntaxError
                raise ValueError(f"{where}: cannot read image {path}: {error}") from None
        plan.frames_key = frame_set_key("images", [media.signature(p) for p in plan.frame_files], indices)
        original = record.get("images", record.get("image"))
        plan.media = original if isinstance(original, str) else json.dumps(original)
    else:
        if placeholders:
            raise ValueError(f"{where}: has {placeholders[0]} placeholders but no 'video' or 'images'")
        expand = False

    # Content skeleton: ("slot", k) is image k, ("video",) all frames; filled with one image entry per frame.
    next_image, placed = 0, False
    for role, value in turns:
        if role != "user":
            plan.turns.append((role, [{"type": "text", "text": value}]))
            continue
        content = []
        if plan.kind != "none" and not placed and not placeholders:
            content.append(("video",) if expand else ("all",))
            placed = True
        for piece in _split_placeholders(value):
            if piece == "<video>":
                content.append(("video",))
            elif piece == "<image>":
                content.append(("slot", next_image))
                next_image += 1
            else:
                content.append({"type": "text", "text": piece})
        plan.turns.append((role, content))
    return plan


def _messages(plan: _Plan) -> list[dict]:
    frames = len(plan.frame_indices)
    messages = []
    for role, content in plan.turns:
        filled = []
        for entry in content:
            if isinstance(entry, dict):
                filled.append(entry)
            elif entry[0] in ("video", "all"):
                filled += [{"type": "image", "text": None} for _ in range(frames)]
            else:
                filled.append({"type": "image", "text": None})
        messages.append({"role": role, "content": filled})
    return messages


def _rows(plans: list[_Plan]):
    for plan in plans:
        yield {
            "id": plan.record_id,
            "question_type": plan.question_type,
            "media": plan.media,
            "media_kind": plan.kind,
            "media_path": plan.media_path,
            "frame_files": plan.frame_files,
            "frame_indices": plan.frame_indices,
            "frames_key": plan.frames_key,
            "messages": _messages(plan),
        }


def vsi590k_features():
    """The stored ``datasets.Features`` of :func:`load_vsi590k` (reading a row adds ``images``)."""
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "question_type": Value("string"),
            "media": Value("string"),
            "media_kind": Value("string"),
            "media_path": Value("string"),
            "frame_files": List(Value("string")),
            "frame_indices": List(Value("int64")),
            "frames_key": Value("string"),
            "messages": List(
                {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
            ),
        }
    )


@dataclass(frozen=True)
class FrameRule:
    """How many frames a record's video gives: ``num_frames`` fixed, or (``None``) the reference's rule
    ``clamp(round(duration / seconds_per_frame), min_frames, max_frames)`` (a frame directory counts as 1 fps).
    An image list under one ``<video>`` placeholder is subsampled to at most ``num_frames`` / ``max_frames``."""

    num_frames: Optional[int] = None
    min_frames: int = 4
    max_frames: int = 8
    seconds_per_frame: float = 2.0

    def __post_init__(self):
        for name in ("min_frames", "max_frames") + (("num_frames",) if self.num_frames is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_frames < self.min_frames:
            raise ValueError(f"max_frames ({self.max_frames}) must be >= min_frames ({self.min_frames})")
        if isinstance(self.seconds_per_frame, bool) or not self.seconds_per_frame > 0:
            raise ValueError(f"seconds_per_frame must be > 0, got {self.seconds_per_frame!r}")

    @property
    def image_list_cap(self) -> int:
        return self.num_frames if self.num_frames is not None else self.max_frames

    def count(self, duration_seconds: float) -> int:
        """Frames to sample from a video lasting ``duration_seconds``."""
        from ..video import reference_frame_count

        if self.num_frames is not None:
            return self.num_frames
        return reference_frame_count(duration_seconds, self.seconds_per_frame, self.min_frames, self.max_frames)


def load_vsi590k(
    annotation_path: str | os.PathLike,
    media_root: str | os.PathLike,
    num_frames: Optional[int] = None,
    *,
    min_frames: int = 4,
    max_frames: int = 8,
    seconds_per_frame: float = 2.0,
    cache_dir: Optional[str] = None,
    frame_cache_dir: Optional[str | os.PathLike] = None,
):
    """VSI-590K-format annotations as a ``datasets.Dataset`` of TRL ``messages`` whose ``images`` are decoded when a
    row is read (module doc).

    Args:
        annotation_path: a ``.json`` list or ``.jsonl`` file of records.
        media_root: directory the records' ``video`` / ``images`` paths are relative to.
        num_frames: frames sampled per video (uniformly); ``None`` (default) follows the reference:
            ``clamp(round(duration / seconds_per_frame), min_frames, max_frames)`` = ``clamp(round(duration / 2 s),
            4, 8)``, a frame directory counting as 1 fps. Also the cap (else ``max_frames``) for an image list under
            ``<video>``.
        cache_dir: where ``datasets`` writes the Arrow table of the rows (default under ``HF_HOME``). The cache key
            covers the annotation file's content, the media files' sizes and modification times and the frame rule.
        frame_cache_dir: keep each video's decoded frames there, once per video and frame set
            (:class:`~spa3_vlm.data.lazy_frames.FrameCache`); ``None`` decodes the video whenever a row is read.

    Raises:
        FileNotFoundError: the annotation file or a record's media is missing (names the record and path).
        ValueError: malformed annotations, a conversation without an assistant turn, placeholders that do not
            match the media, an answer that does not parse for its question type, or unreadable media.
    """
    import datasets

    frames = FrameRule(num_frames, min_frames, max_frames, seconds_per_frame)
    media_root = os.path.abspath(os.fspath(media_root))
    if not os.path.isdir(media_root):
        raise FileNotFoundError(f"media_root is not a directory: {media_root}")
    records = read_vsi590k_annotations(annotation_path)
    if not records:
        raise ValueError(f"{os.fspath(annotation_path)} holds no records")
    media = _Media()
    plans = [_plan_record(record, index, media_root, frames, media) for index, record in enumerate(records)]

    digest = hashlib.sha256()
    with open(annotation_path, "rb") as handle:
        digest.update(handle.read())
    rule = [frames.num_frames, frames.min_frames, frames.max_frames, frames.seconds_per_frame]
    # The frame-set keys hold every media file's size and modification time.
    digest.update(json.dumps([VSI590K_FORMAT_VERSION, media_root, rule, [p.frames_key for p in plans]]).encode())
    rows = datasets.Dataset.from_generator(
        _rows,
        features=vsi590k_features(),
        gen_kwargs={"plans": plans},
        cache_dir=cache_dir,
        fingerprint=f"vsi590k-{digest.hexdigest()[:32]}",
    )
    return rows.with_transform(DecodeFrames(frame_cache_dir))
