"""Preprocessing of Spa3-VLM: geometry image processor, Spa3VLMProcessor, video frames, tiny tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import Qwen2VLImageProcessorPil

from spa3_vlm.processing_spa3_vlm import (
    SPECIAL_TOKENS,
    Spa3VLMProcessor,
    default_video_loader,
    list_image_files,
    sample_frame_indices,
    special_token_ids,
)
from spa3_vlm.processing_spa3r import Spa3RImageProcessor
from spa3_vlm.video import load_video_frames


TINY_DIR = Path(__file__).resolve().parents[1] / "hub_configs" / "spa3-vlm-tiny"
REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_BLOCK = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def full_size_processor(processor) -> Spa3VLMProcessor:
    """Reference sizes (518-wide geometry frames, 16..576 x 28^2 pixel budget) with the tiny tokenizer."""
    return Spa3VLMProcessor(tokenizer=processor.tokenizer)


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def gray(value: int, size=(64, 48)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, (value, value, value))


def write_video(path: Path, num_frames: int, codec: str = "mpeg4", pix_fmt: str = "yuv420p", size=(32, 24)):
    """Frame i is a constant gray of level 20*i, so a decoded frame identifies its index."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for index in range(num_frames):
            frame = np.full((height, width, 3), 20 * index, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_levels(frames) -> list[int]:
    return [int(round(np.asarray(frame, dtype=np.float64).mean() / 20)) for frame in frames]


def user_turn(*parts):
    return [{"role": "user", "content": list(parts)}]


# ---------------------------------------------------------------------------------------- geometry branch
@pytest.mark.parametrize(
    ("width", "height", "expected_hw"),
    [
        (640, 480, (392, 518)),  # reference example: 518 x 392 (37 x 28 patches)
        (480, 640, (518, 518)),  # portrait: 686 rows, centre-cropped to 518
        (10, 7, (364, 518)),  # tiny input is up-scaled: round(7*51.8/14)*14
        (1000, 1, (14, 518)),  # extreme panorama keeps one patch row
        (518, 392, (392, 518)),
    ],
)
def test_geometry_output_size(width, height, expected_hw):
    values = Spa3RImageProcessor()([random_image(width, height)])["geometry_pixel_values"]
    assert len(values) == 1
    assert values[0].shape == (1, 3, *expected_hw)
    assert values[0].dtype == torch.float32


def test_geometry_portrait_is_bicubic_resize_then_centre_crop():
    image = random_image(480, 640, seed=1)
    values = Spa3RImageProcessor()(image)["geometry_pixel_values"][0][0]
    resized = np.asarray(image.resize((518, 686), PIL.Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    expected = torch.from_numpy(resized[84 : 84 + 518]).permute(2, 0, 1)  # (686 - 518) // 2 = 84
    assert torch.equal(values, expected)


def test_geometry_constant_image_values_are_exact():
    values = Spa3RImageProcessor()(PIL.Image.new("RGB", (640, 480), (10, 200, 37)))["geometry_pixel_values"][0]
    for channel, level in enumerate((10, 200, 37)):
        assert torch.all(values[0, channel] == torch.tensor(level, dtype=torch.float32) / 255.0)
    assert values.min() >= 0 and values.max() <= 1


def test_geometry_alpha_is_composited_on_white():
    processor = Spa3RImageProcessor(target_width=28, max_height=28)
    transparent = processor(PIL.Image.new("RGBA", (40, 30), (255, 0, 0, 0)))["geometry_pixel_values"][0]
    assert torch.all(transparent == 1.0)
    opaque = processor(PIL.Image.new("RGBA", (40, 30), (255, 0, 0, 255)))["geometry_pixel_values"][0]
    assert torch.all(opaque[0, 0] == 1.0) and torch.all(opaque[0, 1:] == 0.0)
    half = processor(PIL.Image.new("RGBA", (40, 30), (0, 0, 0, 128)))["geometry_pixel_values"][0]
    assert torch.allclose(half, torch.full_like(half, (255 - 128) / 255), atol=1.5 / 255)
    gray_alpha = processor(PIL.Image.new("LA", (40, 30), (0, 0)))["geometry_pixel_values"][0]
    assert torch.all(gray_alpha == 1.0)


def test_geometry_accepts_numpy_and_tensor_layouts():
    image = random_image(64, 48, seed=2)
    processor = Spa3RImageProcessor()
    reference = processor(image)["geometry_pixel_values"][0]
    hwc = np.array(image)
    variants = [
        hwc,
        hwc.transpose(2, 0, 1).copy(),
        hwc.astype(np.float32) / 255.0,
        torch.from_numpy(hwc).permute(2, 0, 1),
        torch.from_numpy(hwc).permute(2, 0, 1).float() / 255.0,
    ]
    for variant in variants:
        assert torch.equal(processor(variant)["geometry_pixel_values"][0], reference)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        processor(hwc.astype(np.float32))


def test_geometry_frames_of_one_sample_must_match():
    processor = Spa3RImageProcessor()
    frames = [random_image(640, 480), random_image(480, 640)]
    with pytest.raises(ValueError, match=r"same size.*frame 0 became 518x392.*frame 1 became 518x518.*resize_to_first"):
        processor(frames)
    stretched = Spa3RImageProcessor(resize_to_first=True)(frames)["geometry_pixel_values"][0]
    assert stretched.shape == (2, 3, 392, 518)
    # Different input sizes with the same aspect ratio are fine.
    same = processor([random_image(640, 480), random_image(1280, 960)])["geometry_pixel_values"][0]
    assert same.shape == (2, 3, 392, 518)


def test_geometry_batch_and_tiny_fixture_size():
    processor = Spa3RImageProcessor(target_width=70, max_height=70)
    batch = processor([[gray(0), gray(50)], [gray(100, (480, 640))]])["geometry_pixel_values"]
    # 4:3 input -> 56 x 70, the tiny VGGT fixture's image size.
    assert [tuple(v.shape) for v in batch] == [(2, 3, 56, 70), (1, 3, 70, 70)]
    assert torch.all(batch[0][1] == torch.tensor(50.0) / 255)


def test_geometry_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="multiple of patch_size=14"):
        Spa3RImageProcessor(target_width=500)
    with pytest.raises(ValueError, match="Unknown resample"):
        Spa3RImageProcessor(resample="fancy")
    processor = Spa3RImageProcessor(target_width=70, max_height=56, resample="bilinear", resize_to_first=True)
    processor.save_pretrained(tmp_path)
    loaded = Spa3RImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert (loaded.target_width, loaded.max_height, loaded.resample) == (70, 56, int(PIL.Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------------- processor
def test_processor_counts_match(processor):
    images = [gray(10 * i) for i in range(3)] + [random_image(80, 80)]
    texts = [f"{IMAGE_BLOCK}{IMAGE_BLOCK}{IMAGE_BLOCK}How many chairs?", f"Where is it? {IMAGE_BLOCK}"]
    out = processor(text=texts, images=images, return_tensors="pt", padding=True)
    grid = out["image_grid_thw"]
    merge = processor.image_processor.merge_size ** 2
    assert grid.shape == (4, 3)
    assert out["pixel_values"].shape == (int(grid.prod(-1).sum()), 3 * 2 * 14 * 14)
    image_tokens = out["input_ids"] == processor.image_token_id
    assert int(image_tokens.sum()) == int(grid.prod(-1).sum()) // merge
    assert image_tokens.sum(-1).tolist() == [int(grid[:3].prod(-1).sum()) // merge, int(grid[3].prod()) // merge]
    assert torch.equal(out["mm_token_type_ids"], image_tokens.long())
    geometry = out["geometry_pixel_values"]
    assert [tuple(g.shape) for g in geometry] == [(3, 3, 56, 70), (1, 3, 70, 70)]
    assert [round(float(frame[0, 0, 0]) * 255) for frame in geometry[0]] == [0, 10, 20]


def test_processor_nested_and_flat_images_agree(processor):
    images = [gray(0), gray(60), random_image(64, 48)]
    texts = [f"{IMAGE_BLOCK}{IMAGE_BLOCK}a", f"b{IMAGE_BLOCK}"]
    flat = processor(text=texts, images=images, padding=True, return_tensors="pt")
    nested = processor(text=texts, images=[images[:2], images[2:]], padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        assert torch.equal(flat[key], nested[key])
    assert all(torch.equal(a, b) for a, b in zip(flat["geometry_pixel_values"], nested["geometry_pixel_values"]))


def test_questions_about_the_same_frames_share_one_image_pass(processor, monkeypatch):
    """Samples that show the very same frame objects (a scene's questions) are resized and normalised once; the
    output equals processing copies of the frames sample by sample."""
    scene = [random_image(80, 60, seed=k) for k in range(3)]
    other = [random_image(64, 48, seed=9)]
    texts = [f"{IMAGE_BLOCK * 3}How far?", f"{IMAGE_BLOCK}Which one?", f"{IMAGE_BLOCK * 3}How many chairs are there?"]
    calls = []
    qwen_frame = type(processor)._qwen_frame
    monkeypatch.setattr(type(processor), "_qwen_frame", lambda self, *a: calls.append(1) or qwen_frame(self, *a))
    shared = processor(text=texts, images=[scene, other, scene], padding=True, return_tensors="pt")
    assert len(calls) == 4  # 3 scene frames once, 1 other frame
    copies = processor(text=texts, images=[[f.copy() for f in scene], other, [f.copy() for f in scene]],
                       padding=True, return_tensors="pt")  # fmt: skip
    assert len(calls) == 4 + 7  # distinct objects: every frame processed
    assert set(shared) == set(copies)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(shared[key], copies[key]), key
    assert all(torch.equal(a, b) for a, b in zip(shared["geometry_pixel_values"], copies["geometry_pixel_values"]))


def test_qwen_branch_matches_stock_qwen_processor_on_reference_crop(full_size_processor):
    """640x480 -> geometry 518x392; Qwen gets the same frame top-left-cropped to 504x392 -> 252 tokens."""
    image = random_image(640, 480, seed=3)
    out = full_size_processor(text=f"{IMAGE_BLOCK}q", images=[image], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 28, 36]]
    assert int((out["input_ids"] == full_size_processor.image_token_id).sum()) == 252
    geometry = out["geometry_pixel_values"][0]
    assert torch.equal(geometry, Spa3RImageProcessor()(image)["geometry_pixel_values"][0])
    resized = image.resize((518, 392), PIL.Image.Resampling.BICUBIC).crop((0, 0, 504, 392))
    stock = Qwen2VLImageProcessorPil(min_pixels=16 * 28 * 28, max_pixels=576 * 28 * 28)(resized, return_tensors="pt")
    assert stock["image_grid_thw"].tolist() == [[1, 28, 36]]
    assert torch.allclose(out["pixel_values"], stock["pixel_values"], atol=1e-6)


def test_pixel_budget_resizes_qwen_branch_only(processor):
    image = random_image(640, 480)
    small = Spa3VLMProcessor(tokenizer=processor.tokenizer, max_pixels=28 * 28 * 64)
    out = small(text=f"{IMAGE_BLOCK}q", images=[image], return_tensors="pt")
    grid = out["image_grid_thw"][0]
    assert int(grid[1] * grid[2]) * 14 * 14 <= 28 * 28 * 64
    assert out["geometry_pixel_values"][0].shape == (1, 3, 392, 518)  # geometry branch untouched
    per_call = Spa3VLMProcessor(tokenizer=processor.tokenizer)(
        text=f"{IMAGE_BLOCK}q", images=[image], return_tensors="pt", images_kwargs={"max_pixels": 28 * 28 * 64}
    )
    assert torch.equal(per_call["image_grid_thw"], out["image_grid_thw"])
    assert torch.equal(per_call["pixel_values"], out["pixel_values"])


def test_images_without_text(processor):
    out = processor(images=[[gray(0), gray(40)], [gray(80)]], return_tensors="pt")
    assert "input_ids" not in out
    assert [g.shape[0] for g in out["geometry_pixel_values"]] == [2, 1]
    assert out["image_grid_thw"].shape == (3, 3)


# ---------------------------------------------------------------------------------------- chat template
def test_chat_template_default_system_message_and_assistant_mask(processor):
    messages = user_turn(
        {"type": "image", "image": gray(0)},
        {"type": "image", "image": gray(40)},
        {"type": "text", "text": "How far is the lamp from the sofa?"},
    ) + [{"role": "assistant", "content": [{"type": "text", "text": "2.5 meters"}]}]
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    ids = out["input_ids"][0]
    text = processor.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert processor.tokenizer.decode(ids[out["assistant_masks"][0].bool()]) == "2.5 meters<|im_end|>\n"
    assert [g.shape[0] for g in out["geometry_pixel_values"]] == [2]
    assert int((ids == processor.image_token_id).sum()) == int(out["image_grid_thw"].prod(-1).sum()) // 4

    with_system = [{"role": "system", "content": "Be brief."}] + messages
    prompt = processor.apply_chat_template(with_system)
    assert prompt.count("<|im_start|>system") == 1 and "Be brief." in prompt


def test_chat_template_batch_like_trl_collator(processor):
    conversations = [
        user_turn({"type": "image", "image": gray(0)}, {"type": "text", "text": "Count the chairs."})
        + [{"role": "assistant", "content": [{"type": "text", "text": "3"}]}],
        user_turn({"type": "text", "text": "No image here, which side is the door on?"})
        + [{"role": "assistant", "content": "left"}],
    ]
    out = processor.apply_chat_template(
        conversations,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={
            "padding": True,
            "padding_side": "right",
            "truncation": True,
            "max_length": 1024,
            "add_special_tokens": False,
        },
    )
    masks = out["assistant_masks"]
    answers = [processor.tokenizer.decode(out["input_ids"][i][masks[i].bool()]) for i in range(2)]
    assert answers == ["3<|im_end|>\n", "left<|im_end|>\n"]
    assert out["geometry_pixel_values"][0].shape[0] == 1 and out["geometry_pixel_values"][1] is None


def test_trl_vision_collator_assistant_only_labels(processor):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor, max_length=1024, assistant_only_loss=True)
    examples = [
        {
            "images": [gray(0), gray(90)],
            "messages": user_turn({"type": "image"}, {"type": "image"}, {"type": "text", "text": "How many chairs?"})
            + [{"role": "assistant", "content": [{"type": "text", "text": "2"}]}],
        },
        {
            "images": [gray(30)],
            "messages": user_turn({"type": "image"}, {"type": "text", "text": "Which side is the sofa on?"})
            + [{"role": "assistant", "content": [{"type": "text", "text": "left"}]}],
        },
    ]
    batch = collator(examples)
    supervised = [
        processor.tokenizer.decode(ids[labels != -100]) for ids, labels in zip(batch["input_ids"], batch["labels"])
    ]
    assert supervised == ["2<|im_end|>\n", "left<|im_end|>\n"]
    assert [g.shape[0] for g in batch["geometry_pixel_values"]] == [2, 1]
    image_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    assert image_tokens == int(batch["image_grid_thw"].prod(-1).sum()) // 4


def test_spatial_slot_follows_each_samples_frames(processor, tmp_path):
    """``spatial_slot_tokens``: one blank image block after each sample's last image (none for a text-only sample),
    counted in the grid, the patches and the offsets that place the assistant mask; it survives save / load."""
    slotted = Spa3VLMProcessor.from_pretrained(TINY_DIR, spatial_slot_tokens=24)
    conversations = [
        user_turn({"type": "image", "image": gray(0)}, {"type": "image", "image": gray(60)}, {"type": "text", "text": "How far?"})
        + [{"role": "assistant", "content": [{"type": "text", "text": "2.5"}]}],
        user_turn({"type": "text", "text": "No image here?"}) + [{"role": "assistant", "content": "left"}],
        user_turn({"type": "image", "image": gray(90)}, {"type": "text", "text": "Which side?"})
        + [{"role": "assistant", "content": [{"type": "text", "text": "right"}]}],
    ]
    kwargs = dict(tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True,
                  processor_kwargs={"padding": True, "add_special_tokens": False})  # fmt: skip
    plain, out = (p.apply_chat_template(conversations, **kwargs) for p in (processor, slotted))
    # 24 merged tokens -> the squarest grid 4 x 6 -> 8 x 12 patches, after each sample's frames.
    assert out["image_grid_thw"].tolist() == [*plain["image_grid_thw"][:2].tolist(), [1, 8, 12], plain["image_grid_thw"][2].tolist(), [1, 8, 12]]
    assert out["pixel_values"].shape[0] == plain["pixel_values"].shape[0] + 2 * 96
    decode = slotted.tokenizer.decode
    block = "<|vision_start|>" + "<|image_pad|>" * 24 + "<|vision_end|>"
    for index in range(3):
        text, plain_text = decode(out["input_ids"][index]), decode(plain["input_ids"][index])
        frames_end = plain_text.rfind("<|vision_end|>") + len("<|vision_end|>")
        expected = plain_text if index == 1 else plain_text[:frames_end] + block + plain_text[frames_end:]
        assert text.replace("<|endoftext|>", "") == expected.replace("<|endoftext|>", "")
        answer = decode(out["input_ids"][index][out["assistant_masks"][index].bool()])
        assert answer == decode(plain["input_ids"][index][plain["assistant_masks"][index].bool()])
    slotted.save_pretrained(tmp_path)
    assert Spa3VLMProcessor.from_pretrained(tmp_path).spatial_slot_tokens == 24
    with pytest.raises(ValueError, match=r"spatial_slot_tokens must be an int >= 0; got -1"):
        Spa3VLMProcessor.from_pretrained(TINY_DIR, spatial_slot_tokens=-1)


# ---------------------------------------------------------------------------------------- videos
def test_sample_frame_indices():
    assert sample_frame_indices(5, 8) == [0, 1, 2, 3, 4]
    assert sample_frame_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 99]
    assert sample_frame_indices(10, 1) == [0]
    indices = sample_frame_indices(1000, 32)
    assert len(indices) == 32 and indices == sorted(set(indices)) and indices[-1] == 999
    with pytest.raises(ValueError, match="no frames"):
        sample_frame_indices(0, 8)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        sample_frame_indices(10, 0)


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [("clip.mp4", "mpeg4", "yuv420p"), ("clip.mkv", "ffv1", "yuv444p")],  # mkv stores no frame count
)
def test_load_video_frames_decodes_sampled_frames(tmp_path, name, codec, pix_fmt):
    path = write_video(tmp_path / name, num_frames=10, codec=codec, pix_fmt=pix_fmt)
    frames = load_video_frames(path, 4)
    assert frame_levels(frames) == [0, 3, 6, 9]  # linspace(0, 9, 4) -> 0, 3, 6, 9
    assert all(frame.mode == "RGB" and frame.size == (32, 24) for frame in frames)
    assert frame_levels(load_video_frames(path, 20)) == list(range(10))


def test_default_loader_matches_pyav_loader(tmp_path):
    path = write_video(tmp_path / "clip.mp4", num_frames=10)
    ours, default = load_video_frames(path, 4), default_video_loader(path, 4)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, default))


def test_load_video_frames_from_directory_in_natural_order(tmp_path):
    for index in range(12):
        gray(20 * index, (32, 24)).save(tmp_path / f"frame_{index}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [Path(p).name for p in list_image_files(tmp_path)[:3]] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    assert frame_levels(load_video_frames(tmp_path, 3)) == [0, 5, 11]
    assert frame_levels(default_video_loader(tmp_path, 3)) == [0, 5, 11]


def test_chat_video_becomes_image_placeholders(processor, tmp_path):
    path = write_video(tmp_path / "scene.mp4", num_frames=10, size=(64, 48))
    messages = user_turn({"type": "video", "video": str(path)}, {"type": "text", "text": "How many beds?"})
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"num_frames": 4},
    )
    text = processor.tokenizer.decode(out["input_ids"][0])
    assert "<|video_pad|>" not in text
    assert text.count("<|vision_start|>") == 4 and text.count("<|vision_end|>") == 4
    geometry = out["geometry_pixel_values"][0]
    assert geometry.shape == (4, 3, 56, 70)
    assert [round(float(g.mean()) * 255 / 20) for g in geometry] == [0, 3, 6, 9]
    assert out["image_grid_thw"].shape == (4, 3)

    # Default: the processor's num_video_frames (8); frames given as a list behave like the decoded file.
    decoded = load_video_frames(path, 10)
    listed = processor(text=f"{VIDEO_BLOCK}How many beds?", videos=[decoded], return_tensors="pt")
    from_file = processor(text=f"{VIDEO_BLOCK}How many beds?", videos=str(path), return_tensors="pt")
    assert listed["geometry_pixel_values"][0].shape[0] == 8
    assert torch.equal(listed["input_ids"], from_file["input_ids"])
    assert torch.equal(listed["geometry_pixel_values"][0], from_file["geometry_pixel_values"][0])


def test_video_and_images_keep_placeholder_order(processor):
    frames = [gray(20 * i) for i in range(3)]
    text = f"{IMAGE_BLOCK}then{VIDEO_BLOCK}then{IMAGE_BLOCK}"
    out = processor(text=text, images=[gray(200), gray(220)], videos=[frames], return_tensors="pt")
    levels = [round(float(g.mean()) * 255) for g in out["geometry_pixel_values"][0]]
    assert levels == [200, 0, 20, 40, 220]
    assert out["image_grid_thw"].shape == (5, 3)


# ---------------------------------------------------------------------------------------- save / load, tokenizer
def test_save_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert {"processing_spa3_vlm.py", "processing_spa3r.py", "processor_config.json"} <= set(os.listdir(tmp_path))
    loaded = Spa3VLMProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.chat_template == processor.chat_template
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    text = f"{IMAGE_BLOCK}The lamp is 1.5 meters to the left."
    a = processor(text=text, images=[random_image(50, 40)], return_tensors="pt")
    b = loaded(text=text, images=[random_image(50, 40)], return_tensors="pt")
    for key in ("input_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(a[key], b[key])
    assert torch.equal(a["geometry_pixel_values"][0], b["geometry_pixel_values"][0])


def test_auto_processor_with_remote_code_without_the_package(processor, tmp_path):
    processor.save_pretrained(tmp_path / "saved")
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["spa3_vlm"] = None  # the package must not be needed
        import numpy as np, PIL.Image
        from transformers import AutoProcessor
        proc = AutoProcessor.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
        out = proc(text="{IMAGE_BLOCK}hi", images=[PIL.Image.new("RGB", (64, 48), (9, 99, 199))], return_tensors="pt")
        print(json.dumps({{"cls": type(proc).__name__, "ids": out["input_ids"].tolist(),
                          "geometry": out["geometry_pixel_values"][0].sum().item(),
                          "pixels": out["pixel_values"].sum().item()}}))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    image = PIL.Image.new("RGB", (64, 48), (9, 99, 199))
    local = processor(text=f"{IMAGE_BLOCK}hi", images=[image], return_tensors="pt")
    assert remote["cls"] == "Spa3VLMProcessor"
    assert remote["ids"] == local["input_ids"].tolist()
    assert remote["geometry"] == pytest.approx(local["geometry_pixel_values"][0].sum().item(), rel=1e-6)
    assert remote["pixels"] == pytest.approx(local["pixel_values"].sum().item(), rel=1e-6)


def test_tiny_tokenizer_special_tokens(processor):
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 2000
    ids = special_token_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens(
        [ids["image_token_id"], ids["video_token_id"], ids["vision_start_token_id"], ids["vision_end_token_id"],
         ids["eos_token_id"], ids["pad_token_id"]]
    ) == ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>"]
    for token in SPECIAL_TOKENS:  # atomic, and removed by skip_special_tokens
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    sentence = "These are frames of a video.\nAnswer with the option's letter from the given choices directly."
    encoded = tokenizer(sentence)["input_ids"]
    assert tokenizer.decode(encoded) == sentence
    assert len(encoded) < len(sentence.split()) * 2  # trained merges, not bytes
    chat_ids = tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"]
    assert tokenizer.decode(chat_ids, skip_special_tokens=True) == "user\nhi"


@pytest.mark.parametrize("base, folder", [("qwen2_5_vl", "spa3-vlm-tiny"), ("qwen3_vl", "spa3-vlm-qwen3-tiny")])
def test_committed_tiny_files_are_reproducible(tmp_path, monkeypatch, base, folder):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "train"))
    import build_tiny_tokenizer

    processor = build_tiny_tokenizer.build_processor(
        build_tiny_tokenizer.train_tokenizer(build_tiny_tokenizer.build_corpus()), base
    )
    build_tiny_tokenizer.save_data_only(processor, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):
        assert (tmp_path / name).read_bytes() == (REPO_ROOT / "hub_configs" / folder / name).read_bytes(), name


# ---------------------------------------------------------------------------------------- bad input
def test_error_more_images_than_placeholders(processor):
    with pytest.raises(ValueError, match=r"1 <\|image_pad\|> placeholder\(s\).*but 2 image\(s\) were passed"):
        processor(text=f"{IMAGE_BLOCK}q", images=[gray(0), gray(1)])


def test_error_fewer_images_than_placeholders(processor):
    with pytest.raises(ValueError, match=r"2 <\|image_pad\|> placeholder\(s\).*but 1 image\(s\) were passed"):
        processor(text=f"{IMAGE_BLOCK}{IMAGE_BLOCK}q", images=[gray(0)])
    with pytest.raises(ValueError, match=r"placeholder\(s\).*but no images were passed"):
        processor(text=f"{IMAGE_BLOCK}q")
    with pytest.raises(ValueError, match=r"Sample 1: the text has 1 .* but 2 image\(s\)"):
        processor(text=[f"{IMAGE_BLOCK}a", f"{IMAGE_BLOCK}b"], images=[[gray(0)], [gray(1), gray(2)]])


def test_error_empty_image_list(processor):
    with pytest.raises(ValueError, match="empty list of images.*images=None for text-only input"):
        processor(text="no placeholders here", images=[])
    with pytest.raises(ValueError, match="empty list of images"):
        Spa3RImageProcessor().resize_sample([])


def test_error_frames_of_different_sizes(processor):
    with pytest.raises(ValueError, match=r"Sample 0: Frames of one sample must have the same size"):
        processor(text=f"{IMAGE_BLOCK}{IMAGE_BLOCK}q", images=[gray(0, (64, 48)), gray(0, (48, 64))])


def test_error_video_cannot_be_decoded(processor, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 20)
    for loader in (load_video_frames, default_video_loader):
        with pytest.raises(ValueError, match=r"Cannot decode video file .*broken\.mp4"):
            loader(bad, 4)
    with pytest.raises(ValueError, match=r"broken\.mp4"):
        processor(text=f"{VIDEO_BLOCK}q", videos=str(bad))
    with pytest.raises(FileNotFoundError, match=r"does not exist: .*missing\.mp4"):
        load_video_frames(tmp_path / "missing.mp4", 4)
    with pytest.raises(FileNotFoundError, match=r"missing\.mp4"):
        processor(text=f"{VIDEO_BLOCK}q", videos=str(tmp_path / "missing.mp4"))


def test_error_video_with_zero_frames(processor, tmp_path):
    path = write_video(tmp_path / "clip.mkv", num_frames=3, codec="ffv1", pix_fmt="yuv444p")
    with av.open(str(path)) as container:
        header_end = next(container.demux(container.streams.video[0])).pos
    path.write_bytes(path.read_bytes()[:header_end])  # header only: a valid container without frames
    with pytest.raises(ValueError, match=r"clip\.mkv contains 0 decodable frames"):
        load_video_frames(path, 4)
    empty_dir = tmp_path / "frames"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="contains no image files"):
        load_video_frames(empty_dir, 4)
    with pytest.raises(ValueError, match="empty list of videos"):
        processor(text=f"{VIDEO_BLOCK}q", videos=[])


def test_error_truncation_through_image_tokens(processor):
    text = f"{IMAGE_BLOCK}{IMAGE_BLOCK}" + " the chair is left of the table" * 5
    full = processor(text=text, images=[gray(0), gray(1)])
    length = len(full["input_ids"][0])
    last_vision = max(i for i, t in enumerate(full["input_ids"][0]) if t == processor.vision_end_token_id)
    # Cutting only trailing text is allowed and keeps every image token.
    cut = processor(text=text, images=[gray(0), gray(1)], truncation=True, max_length=last_vision + 3)
    assert len(cut["input_ids"][0]) == last_vision + 3 < length
    assert cut["input_ids"][0].count(processor.image_token_id) == full["input_ids"][0].count(processor.image_token_id)
    message = rf"{length} tokens, more than max_length=5.*cut through its image tokens.*at least {last_vision + 1}"
    with pytest.raises(ValueError, match=message):
        processor(text=text, images=[gray(0), gray(1)], truncation=True, max_length=5)


@pytest.mark.parametrize(
    "vision", [{"patch_size": 14}, {"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}]
)
def test_a_plain_qwen_checkpoint_gives_a_spa3_vlm_processor(tmp_path, processor, vision):
    """A Qwen2.5-VL (patch 14) or Qwen3-VL (patch 16, mean/std 0.5) checkpoint has a tokenizer and an image processor
    but no Spa3-VLM processor config: loading keeps its tokenizer and vision settings, adds the paper's geometry
    preprocessing and budget (16-576 merged tokens per frame), and the result saves and reloads as itself."""
    from spa3_vlm.processing_spa3_vlm import build_qwen_image_processor

    processor.tokenizer.save_pretrained(tmp_path / "qwen")
    build_qwen_image_processor(min_pixels=4 * 28 * 28, max_pixels=8 * 28 * 28, **vision).save_pretrained(tmp_path / "qwen")
    loaded = Spa3VLMProcessor.from_pretrained(tmp_path / "qwen")
    patch = vision["patch_size"]
    assert loaded.image_processor.patch_size == patch and list(loaded.image_processor.image_mean) == list(
        vision.get("image_mean", processor.image_processor.image_mean)
    )
    assert (loaded.image_processor.size["shortest_edge"], loaded.image_processor.size["longest_edge"]) == (
        16 * (2 * patch) ** 2, 576 * (2 * patch) ** 2,
    )  # fmt: skip
    assert loaded.geometry_image_processor.target_width == 518 and loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    out = loaded(text=f"{IMAGE_BLOCK}q", images=[random_image(640, 480, seed=3)], return_tensors="pt")
    assert out["pixel_values"].shape[1] == 3 * 2 * patch**2
    assert int((out["input_ids"] == loaded.image_token_id).sum()) == int(out["image_grid_thw"].prod(-1).sum()) // 4
    assert tuple(out["geometry_pixel_values"][0].shape) == (1, 3, 392, 518)
    loaded.save_pretrained(tmp_path / "spa3")
    again = Spa3VLMProcessor.from_pretrained(tmp_path / "spa3")
    assert again.image_processor.patch_size == patch and again.geometry_image_processor.target_width == 518
