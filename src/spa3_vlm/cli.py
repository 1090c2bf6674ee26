"""The ``spa3-vlm`` command (also ``python -m spa3_vlm``).

    spa3-vlm ask VIDEO_OR_FOLDER "How many chairs are in the room?" --model runs/spa3-vlm-tiny-sft
    spa3-vlm ask scene.mp4 "question 1" "question 2" --model Qwen/Qwen3-VL-4B-Instruct --num_frames 16
    spa3-vlm field FOLDER_OF_VIEWS --model runs/spa3r-tiny --yaw 30 --out field.png
    spa3-vlm eval --model runs/spa3-vlm-tiny-sft --dataset synthrooms-qa --output preds.jsonl

``ask`` answers questions about a video file, a folder of frames or image files, through
:class:`~spa3_vlm.inference.Spa3VLMGenerator` (the Spa3R encoder runs once for all questions of the scene).
``field`` predicts the feature field of a camera moved from the first view and writes the picture
(:mod:`spa3_vlm.field_view`). ``eval`` is the VSI-Bench / SynthRooms-QA runner (:mod:`spa3_vlm.evaluation.runner`).
Bad input (a missing file, a model of another kind) exits with status 2 and one line saying what was wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _ask_parser(subparsers) -> None:
    parser = subparsers.add_parser("ask", help="answer questions about a video, a frame folder or images")
    parser.add_argument("scene", nargs="+", help="a video file or a folder of frames; or image files, then the question(s)")
    parser.add_argument("--question", "-q", action="append", default=[], help="a question (repeatable)")
    parser.add_argument("--model", required=True, help="Spa3-VLM (or plain Qwen2.5-VL / Qwen3-VL) folder or hub id")
    parser.add_argument("--processor", help="processor folder or hub id (default: the model's)")
    parser.add_argument("--num_frames", type=int, help="frames sampled from a video or folder (default: the processor's)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--system_message", help="system turn (default: the chat template's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object per question")


def _field_parser(subparsers) -> None:
    parser = subparsers.add_parser("field", help="predict the feature field of a novel camera and save its picture")
    parser.add_argument("views", nargs="+", help="context views: image files, a folder of frames or a video file")
    parser.add_argument("--model", required=True, help="Spa3R field model (Spa3RForFieldPrediction) folder or hub id")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--num_frames", type=int, default=8, help="views sampled from a video or folder")
    parser.add_argument("--yaw", type=float, default=0.0, help="turn right of the first view, degrees")
    parser.add_argument("--pitch", type=float, default=0.0, help="tilt up, degrees")
    parser.add_argument("--forward", type=float, default=0.0, help="move forward (the cameras' units)")
    parser.add_argument("--sideways", type=float, default=0.0, help="move right (the cameras' units)")
    parser.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spa3-vlm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _ask_parser(subparsers)
    _field_parser(subparsers)
    subparsers.add_parser("eval", help="VSI-Bench / SynthRooms-QA evaluation (spa3-vlm eval --help)", add_help=False)
    return parser


def _split_scene_and_questions(args) -> tuple[object, list[str]]:
    """``ask``'s positionals: a video or folder then questions, or image files then questions."""
    items, questions = list(args.scene), list(args.question)
    images = []
    while items and os.path.isfile(items[0]) and not _is_video(items[0]):
        images.append(items.pop(0))
    if images:
        scene = images
    elif items and os.path.exists(items[0]):
        scene = items.pop(0)
    else:
        raise ValueError(f"no scene: {items[0]!r} is not a video file, a folder or an image file" if items else "no scene given")
    questions = items + questions
    if not questions:
        raise ValueError("no question: give it after the scene or with --question")
    return scene, questions


def _is_video(path: str) -> bool:
    from .processing_spa3_vlm import IMAGE_FILE_EXTENSIONS

    return not path.lower().endswith(IMAGE_FILE_EXTENSIONS)


def _ask(args) -> int:
    from .inference import Spa3VLMGenerator

    scene, questions = _split_scene_and_questions(args)
    if args.num_frames is not None and args.num_frames < 1:
        raise ValueError(f"--num_frames must be >= 1, got {args.num_frames}")
    generator = Spa3VLMGenerator.from_pretrained(
        args.model, args.processor, device=args.device, dtype=args.dtype,
        max_new_tokens=args.max_new_tokens, system_message=args.system_message,
    )  # fmt: skip
    if isinstance(scene, list):
        from .processing_spa3r import to_pil_rgb

        scene = [to_pil_rgb(path) for path in scene]
    answers = generator.ask(scene, questions, num_frames=args.num_frames)
    for question, answer in zip(questions, answers):
        print(json.dumps({"question": question, "answer": answer}) if args.json else answer)
    return 0


def _field(args) -> int:
    from .field_view import load_field_model, novel_view_picture, read_views

    model, image_processor = load_field_model(args.model, device=args.device)
    views = read_views(args.views, image_processor, num_frames=args.num_frames)
    picture, note = novel_view_picture(model, views, yaw=args.yaw, pitch=args.pitch, forward=args.forward, sideways=args.sideways)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    picture.save(args.out)
    print(f"wrote {args.out} ({note})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        from .evaluation.runner import main as evaluate

        return evaluate(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _ask(args) if args.command == "ask" else _field(args)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"spa3-vlm {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
