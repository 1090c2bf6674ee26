"""Example scenes of both tabs: held-out SynthRooms rooms, rendered on first use and kept. Ask gets an 8-frame walk
with VSI-Bench-style questions, See the context views of a walk with their ground truth (cameras, the scene).
"""

from __future__ import annotations

import threading

import PIL.Image
import torch
from space_see import ViewSet

NUM_EXAMPLE_SCENES = 4
ASK_EXAMPLE_SIZE = (168, 224)  # twice the tiny SynthRooms size: readable thumbnails, the processor resizes anyway
# Context frames of a See-tab scene: 6 views 3 frames apart on a 24-frame walk, as the PSFM evaluation samples them
# (6 views, steps of 1-3 frames, on held-out "test" scenes of train/pretrain_psfm.py's defaults).
SEE_WALK_FRAMES = 24
SEE_CONTEXT_FRAMES = (0, 3, 6, 9, 12, 15)


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
