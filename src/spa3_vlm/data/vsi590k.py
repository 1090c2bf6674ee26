"""Load VSI-590K-format annotations (LLaVA-style conversations over local videos or frames) for TRL.

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
entries, N = the sampled frames (``spa3_vlm.video.load_video_frames(path, N)``: uniform
``linspace`` indices over a video file or a naturally sorted frame directory), with N by the reference's rule
``clamp(round(duration / 2 s), 4, 8)`` unless ``num_frames`` fixes it (:class:`FrameRule`); an image list under one
``<video>`` placeholder is subsampled the same way, and ``<image>`` placeholders take one image each.
``"<image>\\n"`` counts as ``"<image>"``. A record with media but no placeholder gets its images at the
start of its first human turn (TRL's convention). Roles: human -> user, gpt -> assistant, system -> system.

Each row of the returned ``datasets.Dataset``: ``id``, ``question_type`` (``None`` if absent), ``media``
(the path as written in the record), ``images`` (``List(Image())``: decoded video frames stored as PNG,
image files stored with their original bytes) and ``messages`` in TRL's vision chat format (``image``
entries stored with ``"text": None``).

Checks, before anything is decoded (each error names the record): media that do not exist
(``FileNotFoundError`` with the path), a conversation without an assistant (gpt) turn, placeholders that
do not match the media, and, for a record whose ``question_type`` is one of VSI-Bench's ten, an answer that
does not parse for it: the last gpt answer, read as the VSI-Bench metric reads a prediction
(:func:`~spa3_vlm.evaluation.vsibench.normalize_answer`), must be a number (numerical types) or one of the
option letters (multiple choice; options from the record's ``options`` or the "A. ..." lines of the
question), checked by :func:`~spa3_vlm.data.synthrooms_qa.validate_record`. Other question types are not
checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..evaluation.vsibench import QUESTION_TYPES, normalize_answer
from .synthrooms_qa import validate_record

__all__ = ["VSI590K_FORMAT_VERSION", "load_vsi590k", "read_vsi590k_annotations", "vsi590k_features"]

# Part of the cache fingerprint of load_vsi590k: bump whenever the produced rows change.
VSI590K_FORMAT_VERSION = 1

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


@dataclass
class _Plan:
    """A validated record: what to decode and where the images go."""

    record_id: str
    question_type: Optional[str]
    media: Optional[str]
    kind: str  # "video" (file or frame directory), "images" or "none"
    paths: list[str]
    expand_video: bool  # one <video> placeholder (or none) stands for all the frames
    turns: list[tuple[str, list]] = field(default_factory=list)  # role, content with ("slot", k) markers
    signature: list = field(default_factory=list)  # (path, size, mtime) of every media file, for the cache
    num_frames: int = 0  # frames to sample from a video (file or directory)


def _resolve(media_root: str, path: Any, where: str) -> str:
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: media paths must be non-empty strings, got {path!r}")
    return path if os.path.isabs(path) else os.path.join(media_root, path)


def _stat(path: str) -> tuple:
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


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


def _plan_record(record: dict, index: int, media_root: str, frames: "FrameRule") -> _Plan:
    from ..processing_spa3_vlm import list_image_files, sample_frame_indices

    record_id = str(record["id"])
    where = f"record {record_id!r} (#{index})"
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
        view = {"id": record_id, "question_type": question_type, "question": user_texts[0], "options": options,
                "ground_truth": normalize_answer(answers[-1])}
        try:
            validate_record(view)
        except ValueError as error:
            raise ValueError(
                f"{where}: answer {answers[-1]!r} does not fit question_type {question_type!r}: {error}"
            ) from None

    has_video, has_images = record.get("video") is not None, record.get("images", record.get("image")) is not None
    if has_video and has_images:
        raise ValueError(f"{where}: has both 'video' and 'images'; expected one of them")
    placeholders = [p for value in user_texts for p in _PLACEHOLDER.findall(value)]
    num_video, num_image = placeholders.count("<video>"), placeholders.count("<image>")
    signature, num_frames = [], 0
    if has_video:
        media = record["video"]
        path = _resolve(media_root, media, where)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{where}: video file or frame directory not found: {path}")
        if os.path.isdir(path):
            try:
                files = list_image_files(path)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            signature = [_stat(f) for f in files]
        else:
            signature = [_stat(path)]
        if num_image or num_video > 1:
            raise ValueError(
                f"{where}: a 'video' record takes one <video> placeholder, "
                f"got {num_video} <video> and {num_image} <image>"
            )
        kind, paths, expand = "video", [path], True
        try:
            num_frames = frames.for_video(path)
        except (ValueError, OSError) as error:
            raise ValueError(f"{where}: cannot read {path}: {error}") from None
    elif has_images:
        media = record.get("images", record.get("image"))
        listed = [media] if isinstance(media, str) else media
        if not isinstance(listed, list) or not listed:
            raise ValueError(f"{where}: 'images' must be a path or a non-empty list of paths, got {media!r}")
        paths = [_resolve(media_root, p, where) for p in listed]
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{where}: image file not found: {path}")
        if num_video == 1 and num_image == 0:
            paths, expand = [paths[i] for i in sample_frame_indices(len(paths), frames.image_list_cap)], True
        elif num_video == 0 and num_image in (0, len(paths)):
            expand = num_image == 0
        else:
            raise ValueError(
                f"{where}: {len(paths)} image(s) but {num_image} <image> and {num_video} <video> placeholder(s); "
                "expected one <image> per image, a single <video>, or none"
            )
        signature = [_stat(p) for p in paths]
        kind = "images"
        media = json.dumps(listed) if not isinstance(media, str) else media
    else:
        if placeholders:
            raise ValueError(f"{where}: has {placeholders[0]} placeholders but no 'video' or 'images'")
        kind, paths, expand, media = "none", [], False, None

    # Content skeleton: ("slot", k) is image k, ("video",) all frames; filled once the media are decoded.
    content_turns, next_image, placed = [], 0, False
    for role, value in turns:
        if role != "user":
            content_turns.append((role, [{"type": "text", "text": value}]))
            continue
        content = []
        if kind != "none" and not placed and not placeholders:
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
        content_turns.append((role, content))
    return _Plan(record_id, question_type, media, kind, paths, expand, content_turns, signature, num_frames)


def _fill(plan: _Plan, images: list) -> list[dict]:
    messages = []
    for role, content in plan.turns:
        filled = []
        for entry in content:
            if isinstance(entry, dict):
                filled.append(entry)
            elif entry[0] in ("video", "all"):
                filled += [{"type": "image", "text": None} for _ in images]
            else:
                filled.append({"type": "image", "text": None})
        messages.append({"role": role, "content": filled})
    return messages


def _rows(plans: list[_Plan]):
    import PIL.Image

    from ..video import load_video_frames

    for plan in plans:
        where = f"record {plan.record_id!r}"
        if plan.kind == "video":
            try:
                images = load_video_frames(plan.paths[0], plan.num_frames)
            except (ValueError, OSError) as error:
                raise ValueError(f"{where}: cannot read frames of {plan.paths[0]}: {error}") from error
        else:
            images = []
            for path in plan.paths:
                try:
                    with PIL.Image.open(path) as image:
                        image.verify()
                    with open(path, "rb") as handle:
                        images.append({"bytes": handle.read(), "path": None})
                except (OSError, SyntaxError) as error:  # PIL reports some broken files as SyntaxError
                    raise ValueError(f"{where}: cannot read image {path}: {error}") from error
        yield {
            "id": plan.record_id,
            "question_type": plan.question_type,
            "media": plan.media,
            "images": images,
            "messages": _fill(plan, images),
        }


def vsi590k_features():
    """The ``datasets.Features`` of :func:`load_vsi590k`."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "question_type": Value("string"),
            "media": Value("string"),
            "images": List(Image()),
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

    def for_video(self, path: str) -> int:
        from ..video import reference_frame_count, video_duration_seconds

        if self.num_frames is not None:
            return self.num_frames
        duration = video_duration_seconds(path)
        return reference_frame_count(duration, self.seconds_per_frame, self.min_frames, self.max_frames)


def load_vsi590k(
    annotation_path: str | os.PathLike,
    media_root: str | os.PathLike,
    num_frames: Optional[int] = None,
    *,
    min_frames: int = 4,
    max_frames: int = 8,
    seconds_per_frame: float = 2.0,
    cache_dir: Optional[str] = None,
):
    """VSI-590K-format annotations as a ``datasets.Dataset`` of TRL ``messages`` + ``images`` (module doc).

    Args:
        annotation_path: a ``.json`` list or ``.jsonl`` file of records.
        media_root: directory the records' ``video`` / ``images`` paths are relative to.
        num_frames: frames sampled per video (uniformly); ``None`` (default) follows the reference:
            ``clamp(round(duration / seconds_per_frame), min_frames, max_frames)`` = ``clamp(round(duration / 2 s),
            4, 8)``, a frame directory counting as 1 fps. Also the cap (else ``max_frames``) for an image list under
            ``<video>``.
        cache_dir: where ``datasets`` writes the Arrow cache (default under ``HF_HOME``). The cache key covers
            the annotation file's content, the media files' sizes and modification times and the frame rule.

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
    plans = [_plan_record(record, index, media_root, frames) for index, record in enumerate(records)]

    digest = hashlib.sha256()
    with open(annotation_path, "rb") as handle:
        digest.update(handle.read())
    rule = [frames.num_frames, frames.min_frames, frames.max_frames, frames.seconds_per_frame]
    digest.update(json.dumps([VSI590K_FORMAT_VERSION, media_root, rule, [p.signature for p in plans]]).encode())
    try:
        return datasets.Dataset.from_generator(
            _rows,
            features=vsi590k_features(),
            gen_kwargs={"plans": plans},
            cache_dir=cache_dir,
            fingerprint=f"vsi590k-{digest.hexdigest()[:32]}",
        )
    except datasets.exceptions.DatasetGenerationError as error:
        # Surface our own message (it names the record) instead of datasets' generic wrapper.
        if isinstance(error.__cause__, (ValueError, OSError)):
            raise error.__cause__ from None
        raise
