"""Shared tiny-model helpers for the Spa3-VLM tests (tokenizer-free ids, hand-built multimodal batches, the remote-code
load check)."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

# The tiny hub tokenizer uses the same layout: 0 pad, 2 eos, 3/4 vision start/end, 5 image, 6 video.
PAD, BOS, EOS, VSTART, VEND, IMAGE, VIDEO = 0, 1, 2, 3, 4, 5, 6
VOCAB = 300
GEOMETRY_HW = (56, 70)  # a 4x5 patch grid for the tiny Spa3R encoders (patch 14)


def qwen_values(vocab_size=VOCAB, tie=False):
    """A tiny Qwen2.5-VL config (transformers 5 layout) as keyword arguments."""
    return dict(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=tie,
    )  # fmt: skip


def qwen3_values(vocab_size=VOCAB):
    """A tiny Qwen3-VL config (transformers 5 layout) as keyword arguments: deepstack features from both vision
    blocks, interleaved mRoPE, 16-pixel patches."""
    return dict(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
            eos_token_id=EOS, pad_token_id=PAD,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=False,
    )  # fmt: skip


def make_batch(images_per_sample, seed=0, text_lengths=None, frames_per_sample=None, patch_size=14):
    """Left-padded token ids with one ``<|vision_start|><|image_pad|>*n<|vision_end|>`` block per image.

    images_per_sample: per sample, the ``(h, w)`` patch grid of each image (t = 1, merge 2 -> h*w/4 tokens).
    patch_size: the vision tower's patch (Qwen2.5-VL 14, Qwen3-VL 16): sets the flattened patch width.
    frames_per_sample: geometry frames per sample (default: one per image), each ``[3, 56, 70]`` in [0, 1].
    """
    generator = torch.Generator().manual_seed(seed)
    rows, grids = [], []
    for index, images in enumerate(images_per_sample):
        row = [BOS, 10 + index]
        for h, w in images:
            row += [VSTART] + [IMAGE] * (h * w // 4) + [VEND, 20]
            grids.append([1, h, w])
        row += [30 + index, 31] + [40] * ((text_lengths or [0] * len(images_per_sample))[index])
        rows.append(row)
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=(input_ids == IMAGE).int())
    if grids:
        grid = torch.tensor(grids)
        patches = int(grid.prod(-1).sum())
        batch.update(pixel_values=torch.randn(patches, 3 * 2 * patch_size**2, generator=generator), image_grid_thw=grid)
    frames = frames_per_sample or [len(images) for images in images_per_sample]
    batch["geometry_pixel_values"] = [
        torch.rand(v, 3, *GEOMETRY_HW, generator=generator) if images else None
        for v, images in zip(frames, images_per_sample)
    ]
    return batch


def qwen_inputs(batch):
    """The batch without the Spa3-VLM-only inputs, for a plain Qwen2.5-VL model."""
    return {k: v for k, v in batch.items() if k not in ("geometry_pixel_values", "spatial_latents")}


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    from pathlib import Path
    # The package is installed (editable) in this interpreter: hide it, as on a machine that only has the Hub folder.
    sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "spa3_vlm").is_dir()]
    assert importlib.util.find_spec("spa3_vlm") is None
    try:
        import spa3_vlm  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("spa3_vlm is importable")
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText
    folder = Path(sys.argv[1])
    model = AutoModelForImageTextToText.from_pretrained(folder / "model", trust_remote_code=True).eval()
    batch = torch.load(folder / "batch.pt", weights_only=True)
    with torch.no_grad():
        logits = model(**batch).logits
    # The remote class on a plain Qwen checkpoint: the adapter starts as the identity there too.
    fresh = type(model).from_pretrained(folder / "qwen", config=model.config)
    save_file({"logits": logits.contiguous(), "adaptor_last": fresh.geometry_adaptor[-1].weight.contiguous()}, folder / "remote.safetensors")
    print(json.dumps({"module": type(model).__module__, "frozen": not any(p.requires_grad for p in fresh.spa3r.parameters())}))
    """
)


def assert_remote_code_load(folder, expected_logits) -> None:
    """In a process without spa3_vlm (``python -I``, the package hidden), ``folder/model`` loads with
    ``trust_remote_code=True`` and gives ``expected_logits`` on ``folder/batch.pt``; the remote class on the plain base
    checkpoint ``folder/qwen`` starts with a zero adaptor and a frozen encoder."""
    script = folder / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(folder)], cwd=folder, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["module"].startswith("transformers_modules.") and info["frozen"]
    remote = load_file(folder / "remote.safetensors")
    assert torch.equal(remote["logits"], expected_logits)
    assert torch.count_nonzero(remote["adaptor_last"]) == 0


def assert_each_sample_reads_only_its_own_latents(model, batch) -> None:
    """New geometry for sample 1 changes sample 1's logits and leaves the others' exactly as they were."""
    other = [g.clone() if g is not None else None for g in batch["geometry_pixel_values"]]
    other[1] = torch.rand_like(other[1])
    with torch.no_grad():
        logits = model(**batch).logits
        changed = model(**dict(batch, geometry_pixel_values=other)).logits
    valid = batch["attention_mask"].bool()
    for sample in range(len(other)):
        if sample != 1:
            assert torch.allclose(changed[sample][valid[sample]], logits[sample][valid[sample]], atol=1e-6), sample
    assert (changed[1][valid[1]] - logits[1][valid[1]]).abs().max() > 1e-3


def assert_batched_equals_one_sample_at_a_time(model, images_per_sample, batch) -> None:
    """Each sample's logits in the left-padded batch equal those of the sample run alone (its images, its frames)."""
    with torch.no_grad():
        logits = model(**batch).logits
        grids = batch["image_grid_thw"].prod(-1).tolist()
        patch_start = image_index = 0
        for sample, sample_images in enumerate(images_per_sample):
            count = len(sample_images)
            patches = sum(grids[image_index : image_index + count])
            row = batch["attention_mask"][sample].bool()
            alone = model(
                input_ids=batch["input_ids"][sample][row][None],
                attention_mask=torch.ones(1, int(row.sum()), dtype=torch.long),
                mm_token_type_ids=batch["mm_token_type_ids"][sample][row][None],
                pixel_values=batch["pixel_values"][patch_start : patch_start + patches],
                image_grid_thw=batch["image_grid_thw"][image_index : image_index + count],
                geometry_pixel_values=[batch["geometry_pixel_values"][sample]],
            ).logits[0]
            assert (alone - logits[sample][row]).abs().max() < 1e-4, sample
            patch_start += patches
            image_index += count


def greedy_without_cache(model, batch, steps: int) -> torch.Tensor:
    """Greedy decoding that recomputes everything (images and adapter) at every step, without a KV cache."""
    sequence, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        for _ in range(steps):
            step = dict(batch, input_ids=sequence, attention_mask=mask, mm_token_type_ids=(sequence == IMAGE).int() + 2 * (sequence == VIDEO).int())
            logits = model(**step, use_cache=False).logits
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return sequence
