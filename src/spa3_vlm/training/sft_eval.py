"""Evaluating a tuned Spa3-VLM: greedy answers to SFT records, scored like VSI-Bench.

:func:`generate_predictions` answers through :class:`~spa3_vlm.inference.Spa3VLMGenerator` (the package's one
generation path); :func:`evaluate_vsibench` scores those answers with
:func:`~spa3_vlm.evaluation.scoring.vsibench_scores`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..evaluation.scoring import vsibench_scores
from .sft_data import SPATIAL_INPUT_MODES, validate_sft_example

__all__ = ["evaluate_vsibench", "generate_predictions"]


def _prompt_messages(messages: Sequence[Mapping]) -> list[dict]:
    """The conversation up to (without) its last assistant turn."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [dict(m) for m in messages[:last]]


@torch.no_grad()
def generate_predictions(
    model,
    processor,
    records,
    batch_size: int = 8,
    max_new_tokens: int = 16,
    spatial_inputs: str = "auto",
    latents_column: str = "spatial_latents",
    progress: bool = True,
) -> list[str]:
    """Greedy answers for TRL records (prompt = the messages before the last assistant turn), in order, through
    :class:`~spa3_vlm.inference.Spa3VLMGenerator`.

    ``spatial_inputs`` as in :class:`~spa3_vlm.training.sft_data.Spa3VLMSFTCollator` (``"latents"``: the records'
    cached Spa3R latents in ``latents_column``). Left padding, ``max_new_tokens`` new tokens, special tokens dropped,
    whitespace stripped. ``progress`` shows a bar over the batches.
    """
    from tqdm.auto import tqdm

    from ..inference import Spa3VLMGenerator

    if spatial_inputs not in SPATIAL_INPUT_MODES:
        raise ValueError(f"spatial_inputs must be one of {SPATIAL_INPUT_MODES}, got {spatial_inputs!r}")
    generator = Spa3VLMGenerator(model.eval(), processor, max_new_tokens=max_new_tokens)
    predictions: list[str] = []
    rows = list(records) if not hasattr(records, "select") else records
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="answering", unit="batch", disable=not progress or len(starts) < 2):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        for offset, example in enumerate(chunk):
            validate_sft_example(example, start + offset)
        requests = [(list(example.get("images") or []), _prompt_messages(example["messages"])) for example in chunk]
        mode = spatial_inputs
        if mode == "auto":
            mode = "latents" if all(e.get(latents_column) is not None for e in chunk) else "frames"
        latents = None
        if mode == "latents" and generator.takes_geometry:
            latents = torch.stack([torch.as_tensor(np.asarray(e[latents_column], dtype=np.float32)) for e in chunk])
        answers = generator.generate(requests, spatial_latents=latents)
        predictions += [text.strip() for text in answers]
    return predictions


def evaluate_vsibench(model, processor, dataset, **generate_kwargs) -> dict:
    """Greedy answers for a SynthRooms-QA / VSI-Bench-style dataset scored by ``vsibench_scores``.

    Returns the scores dict plus ``predictions`` (``{id: text}``).
    """
    predictions = generate_predictions(model, processor, dataset, **generate_kwargs)
    columns = ("id", "question_type", "ground_truth", "options")
    table = dataset.select_columns([c for c in columns if c in dataset.column_names]).to_list()
    records = [{**row, "prediction": prediction} for row, prediction in zip(table, predictions)]
    scores = vsibench_scores(records)
    scores["predictions"] = {row["id"]: row["prediction"] for row in records}
    return scores

