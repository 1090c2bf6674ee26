"""Helpers for the spatial instruction tuning tests: random frames and SFT records (two-turn conversations)."""

import numpy as np
from PIL import Image


def frame(seed, size=(70, 56)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def record(record_id="r0", answer="3", question_type="object_counting", num_images=2, options=None, seed=0, question=None):
    question = question or "How many chair(s) are in this room?"
    return {
        "id": record_id,
        "question_type": question_type,
        "options": options,
        "images": [frame(seed + k) for k in range(num_images)],
        "messages": [
            {"role": "user", "content": [{"type": "image", "text": None} for _ in range(num_images)]
             + [{"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
    }  # fmt: skip
