"""The Spa3R latent cache: content keys, one encoder run per distinct frame set, results equal to the uncached
path (latents, logits, loss and a training run), fingerprints that follow the encoder, clear errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image as ImageFeature, List, Value
from PIL import Image

from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration
from spa3_vlm.data.latent_cache import add_spatial_latents, encoder_digest, frames_key
from spa3_vlm.training.sft_data import Spa3VLMSFTCollator
from spa3_vlm.training.sft_model import configure_trainable
from spa3_vlm.training.sft_trainer import Spa3VLMSFTTrainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "hub_configs" / "spa3-vlm-tiny"


def frame(seed, size=(70, 56)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def messages(num_images, question, answer):
    return [
        {"role": "user", "content": [{"type": "image", "text": None} for _ in range(num_images)]
         + [{"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]  # fmt: skip


FEATURES = Features(
    {
        "id": Value("string"),
        "question_type": Value("string"),
        "images": List(ImageFeature()),
        "messages": List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}),
    }
)


@pytest.fixture(scope="module")
def dataset():
    """Six questions about three 'scenes' (two share frames; one scene has 3 frames, the others 2)."""
    scenes = [[frame(0), frame(1)], [frame(2), frame(3), frame(4)], [frame(5), frame(6)]]
    rows = [
        {"id": f"q{i}", "question_type": "object_counting", "images": scenes[scene],
         "messages": messages(len(scenes[scene]), f"How many chair(s) are in room {i}?", str(i + 1))}
        for i, scene in enumerate([0, 1, 0, 2, 1, 0])
    ]  # fmt: skip
    return Dataset.from_list(rows, features=FEATURES)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(TINY)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero adaptor, so that the latents change the logits
        for param in model.geometry_adaptor[-1].parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def test_frames_key_is_content_and_order():
    a, b = frame(0), frame(1)
    assert frames_key([a, b]) == frames_key([a.copy(), frame(1)])
    assert frames_key([a, b]) != frames_key([b, a]) != frames_key([a])
    changed = np.asarray(b).copy()
    changed[0, 0, 0] ^= 1
    assert frames_key([a, b]) != frames_key([a, Image.fromarray(changed)])
    png = io.BytesIO()
    a.save(png, format="PNG")
    assert frames_key([{"bytes": png.getvalue(), "path": None}]) == frames_key([a])  # datasets' undecoded form
    assert frames_key([np.asarray(a)]) != frames_key([np.asarray(a, dtype=np.float32)])
    with pytest.raises(ValueError, match="frames must be a list of frames, got str"):
        frames_key("frame.png")
    with pytest.raises(ValueError, match="cannot hash a frame of type int"):
        frames_key([3])


def test_one_encoder_run_per_distinct_frame_set(dataset, model, processor, tmp_path):
    calls = []
    hook = model.spa3r.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        cached = add_spatial_latents(dataset, model, processor, batch_size=4, load_from_cache_file=False,
                                     cache_dir=tmp_path)  # fmt: skip
    finally:
        hook.remove()
    rows = cached[:]
    keys = rows["frames_key"]
    assert len(set(keys)) == 3 and keys[0] == keys[2] == keys[5] and keys[1] == keys[4]
    # One record per frame set is encoded, in one batch: scenes 0, 1, 2 -> grouped by frame count (2 and 3) = 2 runs.
    assert len(calls) == 2
    latents = np.stack(rows["spatial_latents"])
    assert latents.dtype == np.float32 and latents.shape == (6, 16, 64) and np.array_equal(latents[0], latents[5])
    for index in (0, 1, 3):  # each equals the encoder on the processor's geometry input for that record
        frames = processor(images=[dataset[index]["images"]], return_tensors="pt")["geometry_pixel_values"]
        expected = model.compute_spatial_latents(frames)[0].numpy()
        np.testing.assert_allclose(latents[index], expected, atol=1e-6, rtol=0)
    # The key is stored; the latents are looked up when a row is read, from one entry per frame set.
    assert cached.column_names == dataset.column_names + ["frames_key"]
    assert list(cached[0]) == dataset.column_names + ["frames_key", "spatial_latents"]
    (store,) = (tmp_path / "spa3r_latents").iterdir()
    assert np.load(store / "latents.npy").shape == (3, 16, 64)
    assert sorted(json.loads((store / "keys.json").read_text())) == sorted(set(keys))


def test_the_store_grows_with_frame_sets_not_records(dataset, model, processor, tmp_path):
    """Four times the records over the same frames: the same store, byte for byte; reused, not recomputed."""
    from datasets import concatenate_datasets

    first = add_spatial_latents(dataset, model, processor, cache_dir=tmp_path / "a")
    larger = concatenate_datasets([dataset] * 4)
    calls = []
    hook = model.spa3r.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        again = add_spatial_latents(larger, model, processor, cache_dir=tmp_path / "a")
        fresh = add_spatial_latents(larger, model, processor, cache_dir=tmp_path / "b")
    finally:
        hook.remove()
    assert len(calls) == 2  # only the fresh store encodes (its 2 frame-count groups)
    (store_a,) = (tmp_path / "a" / "spa3r_latents").iterdir()
    (store_b,) = (tmp_path / "b" / "spa3r_latents").iterdir()
    assert store_a.name == store_b.name
    assert (store_a / "latents.npy").read_bytes() == (store_b / "latents.npy").read_bytes()
    assert len(again) == len(fresh) == 24 and np.array_equal(again[23]["spatial_latents"], first[5]["spatial_latents"])


def test_cached_latents_give_the_uncached_logits_and_loss(dataset, model, processor):
    cached = add_spatial_latents(dataset, model, processor)
    rows = [cached[i] for i in (0, 1, 3)]
    with_frames = Spa3VLMSFTCollator(processor, spatial_inputs="frames")(rows)
    with_latents = Spa3VLMSFTCollator(processor)(rows)
    assert "geometry_pixel_values" in with_frames and "spatial_latents" in with_latents
    with torch.no_grad():
        reference = model(**with_frames)
        out = model(**with_latents)
        shifted = model(**{**with_latents, "spatial_latents": with_latents["spatial_latents"] + 0.1})
    assert (out.logits - reference.logits).abs().max() < 1e-6 and abs(float(out.loss - reference.loss)) < 1e-6
    assert (shifted.logits - reference.logits).abs().max() > 1e-3  # the latents do reach the logits


def test_training_on_cached_latents_matches_training_on_frames(dataset, processor, tmp_path):
    from trl import SFTConfig

    losses = {}
    for mode in ("frames", "latents"):
        torch.manual_seed(0)
        model = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(TINY))
        configure_trainable(model)
        data = add_spatial_latents(dataset, model, processor) if mode == "latents" else dataset
        args = SFTConfig(
            output_dir=str(tmp_path / mode), max_steps=3, per_device_train_batch_size=2, learning_rate=5e-3,
            logging_steps=1, report_to="none", save_strategy="no", dataloader_num_workers=0, bf16=False,
            activation_checkpointing=False, max_length=None, disable_tqdm=True, seed=0,
            dataloader_pin_memory=torch.cuda.is_available(),
        )  # fmt: skip
        trainer = Spa3VLMSFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=processor,
            data_collator=Spa3VLMSFTCollator(processor, spatial_inputs=mode),
        )  # fmt: skip
        trainer.train()
        losses[mode] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert not torch.equal(model.geometry_adaptor[-1].weight, torch.zeros_like(model.geometry_adaptor[-1].weight))
    assert len(losses["frames"]) == 3
    np.testing.assert_allclose(losses["latents"], losses["frames"], atol=1e-6, rtol=0)


def test_fingerprint_follows_encoder_weights_and_preprocessing(dataset, model, processor):
    first = add_spatial_latents(dataset, model, processor)
    again = add_spatial_latents(dataset, model, processor)
    assert first._fingerprint == again._fingerprint
    other = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(TINY))
    assert encoder_digest(other.spa3r) != encoder_digest(model.spa3r)
    assert add_spatial_latents(dataset, other, processor)._fingerprint != first._fingerprint
    from spa3_vlm.training.sft_data import processor_for_image_size

    resized = processor_for_image_size(processor, 56, 84)
    assert add_spatial_latents(dataset, model, resized)._fingerprint != first._fingerprint


def test_errors(dataset, model, processor):
    empty = Dataset.from_list(
        [{"id": "lonely", "question_type": "object_counting", "images": [], "messages": messages(0, "How many?", "2")}],
        features=FEATURES,
    )
    with pytest.raises(ValueError, match=r"record 'lonely': no frames in 'images'; Spa3R latents need at least one frame"):
        add_spatial_latents(empty, model, processor)
    plain = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(TINY, spatial_branch=False))
    with pytest.raises(ValueError, match=r"needs a Spa3-VLM with its Spa3R encoder \(spatial_branch=True\)"):
        add_spatial_latents(dataset, plain, processor)
    with pytest.raises(ValueError, match=r"the dataset has no 'frames' column"):
        add_spatial_latents(dataset, model, processor, images_column="frames")


def test_benchmark_runs_and_writes_its_json(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import bench_latent_cache
    finally:
        sys.path.remove(str(REPO / "bench"))
    threads = torch.get_num_threads()
    try:
        result = bench_latent_cache.main(["--quick", "--output", str(tmp_path / "latent_cache.json")])
    finally:
        torch.set_num_threads(threads)
    written = json.loads((tmp_path / "latent_cache.json").read_text())
    assert written["benchmark"] == "latent_cache" == result["benchmark"]
    assert set(written["ratios"]) == {"uncached_over_cached", "cached_over_plain_qwen", "uncached_over_plain_qwen"}
    for summary in written["step_seconds"].values():
        assert summary["n"] == 1 and summary["median"] > 0
    assert written["cache"]["distinct_frame_sets"] <= written["cache"]["records"]
