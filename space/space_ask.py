"""The Ask tab: Spa3-VLM's answer to a question about uploaded frames."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
from space_models import VLMBundle


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
