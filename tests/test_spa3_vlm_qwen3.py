"""Spa3-VLM on Qwen3-VL: the same adapter and guarantees as on Qwen2.5-VL, with Qwen3-VL's deepstack features and
interleaved mRoPE untouched (tiny random Qwen3-VL, offline)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from spa3_vlm_testing import (
    PAD,
    assert_batched_equals_one_sample_at_a_time,
    assert_each_sample_reads_only_its_own_latents,
    assert_remote_code_load,
    greedy_without_cache,
    make_batch,
    qwen3_values,
    qwen_inputs,
    qwen_values,
)
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from spa3_vlm import (
    Spa3RConfig,
    Spa3VLMConfig,
    Spa3VLMQwen3Config,
    Spa3VLMQwen3ForConditionalGeneration,
)
from spa3_vlm.configuration_spa3_vlm import encoder_only_spa3r_config
from spa3_vlm.processing_spa3_vlm import SPA3_VLM_CHAT_TEMPLATE, SPA3_VLM_QWEN3_CHAT_TEMPLATE

PATCH = 16


def batch_of(images, **kwargs):
    return make_batch(images, patch_size=PATCH, **kwargs)


@pytest.fixture(scope="module")
def spa3r_config(repo_root):
    return encoder_only_spa3r_config(Spa3RConfig.from_json_file(repo_root / "hub_configs" / "spa3r-tiny" / "config.json"))


@pytest.fixture(scope="module")
def qwen3():
    torch.manual_seed(0)
    return Qwen3VLForConditionalGeneration(Qwen3VLConfig(**qwen3_values())).eval()


@pytest.fixture(scope="module")
def model(qwen3, spa3r_config):
    """A Spa3-VLM on the tiny Qwen3-VL's weights, with a random (non-zero) adaptor so the adapter shows."""
    torch.manual_seed(1)
    spa3 = Spa3VLMQwen3ForConditionalGeneration(Spa3VLMQwen3Config.from_qwen(qwen3.config, spa3r_config=spa3r_config))
    missing, unexpected = spa3.load_state_dict(qwen3.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("spa3r.", "geometry_", "geom_cross_attention.", "ln.")) for k in missing)
    with torch.no_grad():
        spa3.geometry_adaptor[-1].weight.normal_(0, 0.5)
        spa3.geometry_adaptor[-1].bias.normal_(0, 0.5)
    return spa3.eval()


def test_config_names_its_base_and_checks_it(qwen3, spa3r_config):
    config = Spa3VLMQwen3Config.from_qwen(qwen3.config, spa3r_config=spa3r_config)
    assert config.model_type == "spa3_vlm_qwen3" and config.text_config.model_type == "qwen3_vl_text"
    assert config.vision_config.deepstack_visual_indexes == [0, 1] and config.adapter_num_heads == 4
    assert type(AutoConfig.for_model("spa3_vlm_qwen3")) is Spa3VLMQwen3Config
    with pytest.raises(ValueError, match=r"Spa3VLMConfig builds on a 'qwen2_5_vl' config, got a 'qwen3_vl' one \(use Spa3VLMQwen3Config"):
        Spa3VLMConfig.from_qwen(qwen3.config, spa3r_config=spa3r_config)
    with pytest.raises(ValueError, match=r"spatial_fusion='tokens' is implemented for Qwen2.5-VL only \(Spa3VLMQwen3Config"):
        Spa3VLMQwen3Config.from_qwen(qwen3.config, spa3r_config=spa3r_config, spatial_fusion="tokens")
    from transformers import Qwen2_5_VLConfig

    with pytest.raises(ValueError, match=r"Spa3VLMQwen3Config builds on a 'qwen3_vl' config, got a 'qwen2_5_vl' one"):
        Spa3VLMQwen3Config.from_qwen(Qwen2_5_VLConfig(**qwen_values()), spa3r_config=spa3r_config)


def test_hub_configs_build_the_tiny_and_describe_the_4b(repo_root):
    tiny = AutoConfig.from_pretrained(repo_root / "hub_configs" / "spa3-vlm-qwen3-tiny")
    assert type(tiny) is Spa3VLMQwen3Config
    assert type(AutoModelForImageTextToText.from_config(tiny)) is Spa3VLMQwen3ForConditionalGeneration
    big = AutoConfig.from_pretrained(repo_root / "hub_configs" / "spa3-vlm-qwen3-4b")
    assert type(big) is Spa3VLMQwen3Config
    assert (big.text_config.hidden_size, big.text_config.num_hidden_layers, big.vision_config.out_hidden_size) == (2560, 36, 2560)
    assert big.vision_config.deepstack_visual_indexes == [5, 11, 17] and big.vision_config.patch_size == 16
    assert big.spa3r_config.hidden_size == 768 and big.spa3r_config.num_queries == 256  # the paper's encoder
    assert big.adapter_num_heads == 32  # the LLM's heads: head_dim 80


def test_the_processors_speak_their_bases_chat_format(repo_root):
    """Qwen3-VL's chat format has no default system turn, Qwen2.5-VL's adds "You are a helpful assistant."; both mark
    the assistant's reply for assistant-only loss, and each tiny hub config ships its base's."""
    from spa3_vlm import Spa3VLMProcessor

    qwen3 = Spa3VLMProcessor.from_pretrained(repo_root / "hub_configs" / "spa3-vlm-qwen3-tiny")
    qwen25 = Spa3VLMProcessor.from_pretrained(repo_root / "hub_configs" / "spa3-vlm-tiny")
    assert (qwen3.chat_template, qwen25.chat_template) == (SPA3_VLM_QWEN3_CHAT_TEMPLATE, SPA3_VLM_CHAT_TEMPLATE)
    chat = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many chairs?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "3"}]},
    ]
    user = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many chairs?<|im_end|>\n"
    reply = "<|im_start|>assistant\n3<|im_end|>\n"
    assert qwen3.apply_chat_template(chat) == user + reply
    assert qwen25.apply_chat_template(chat) == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + user + reply
    system = [{"role": "system", "content": "Be brief."}]
    assert qwen3.apply_chat_template(system + chat[:1], add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n" + user + "<|im_start|>assistant\n"
    )
    out = qwen3.apply_chat_template(
        [{"role": "user", "content": "Which side?"}, {"role": "assistant", "content": "left"}],
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )  # fmt: skip
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    assert qwen3.tokenizer.decode([t for t, m in zip(ids, mask) if m]) == "left<|im_end|>\n"


def test_a_fresh_model_is_exactly_qwen3_vl_deepstack_included(qwen3, spa3r_config):
    """With the zero-initialised adaptor the logits equal Qwen3-VL's bit for bit; Qwen3-VL adds deepstack features
    at the visual positions of the first LLM layers, so dropping or reordering them would show here."""
    torch.manual_seed(2)
    spa3 = Spa3VLMQwen3ForConditionalGeneration(Spa3VLMQwen3Config.from_qwen(qwen3.config, spa3r_config=spa3r_config)).eval()
    spa3.load_state_dict(qwen3.state_dict(), strict=False)
    batch = batch_of([[(4, 4), (4, 6)], [(6, 4)]], text_lengths=[0, 3])
    with torch.no_grad():
        expected = qwen3(**qwen_inputs(batch)).logits
        assert torch.equal(spa3(**batch).logits, expected)
        # The deepstack path matters for these logits: zeroing its mergers changes them.
        saved = [m.linear_fc2.weight.clone() for m in qwen3.model.visual.deepstack_merger_list]
        for merger in qwen3.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.zero_()
        assert not torch.allclose(qwen3(**qwen_inputs(batch)).logits, expected, atol=1e-4)
        for merger, weight in zip(qwen3.model.visual.deepstack_merger_list, saved):
            merger.linear_fc2.weight.copy_(weight)


def test_from_qwen_pretrained_on_a_saved_qwen3_vl_is_exact(tmp_path, qwen3, spa3r_config):
    qwen3.save_pretrained(tmp_path / "qwen3")
    batch = batch_of([[(4, 4)], [(4, 6), (4, 4)]])
    with torch.no_grad():
        expected = qwen3(**qwen_inputs(batch)).logits
    fresh = Spa3VLMQwen3ForConditionalGeneration.from_qwen_pretrained(str(tmp_path / "qwen3"), spa3r_config=spa3r_config)
    assert torch.count_nonzero(fresh.geometry_adaptor[-1].weight) == 0 and fresh.geometry_gate[0].weight.std() > 0.01
    with torch.no_grad():
        assert torch.equal(fresh.eval()(**batch).logits, expected)
    fresh.train()
    assert not fresh.spa3r.training and not any(p.requires_grad for p in fresh.spa3r.parameters())


def test_each_sample_reads_only_its_own_latents_and_batching_changes_nothing(model):
    images = [[(4, 4), (4, 6)], [(6, 4)], [(4, 4)]]
    batch = batch_of(images, text_lengths=[0, 4, 2])
    assert_each_sample_reads_only_its_own_latents(model, batch)
    assert_batched_equals_one_sample_at_a_time(model, images, batch)


def test_generate_adapts_on_prefill_and_matches_greedy_recomputation(model):
    batch = batch_of([[(4, 4)], [(4, 6), (4, 4)]], text_lengths=[4, 0], frames_per_sample=[2, 2])
    calls = []
    handle = model.spa3r.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    handle.remove()
    assert len(calls) == 1
    assert torch.equal(generated, greedy_without_cache(model, batch, 4))


def test_spatial_latents_replace_the_encoder(model):
    batch = batch_of([[(4, 4)], [(4, 6)]])
    with torch.no_grad():
        latents = model.compute_spatial_latents(batch["geometry_pixel_values"])
        expected = model(**batch).logits
        cached = {k: v for k, v in batch.items() if k != "geometry_pixel_values"}
        assert torch.equal(model(**cached, spatial_latents=latents).logits, expected)


def qwen3_video_batch():
    """Qwen3-VL's own video layout: each temporal group (2 frames) is one vision block after a timestamp in the text
    (here the token ids 20 and 30 stand for ``<0.5 seconds>`` and ``<1.5 seconds>``)."""
    from spa3_vlm_testing import BOS, VEND, VIDEO, VSTART

    ids = torch.tensor([[BOS, 10, 20, VSTART] + [VIDEO] * 4 + [VEND, 30, VSTART] + [VIDEO] * 4 + [VEND, 40, 41]])
    return dict(
        input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == VIDEO).int() * 2,
        pixel_values_videos=torch.randn(32, 3 * 2 * PATCH**2, generator=torch.Generator().manual_seed(0)),
        video_grid_thw=torch.tensor([[2, 4, 4]]),
    )  # fmt: skip


def test_qwen3_video_input_with_timestamps_is_adapted_and_exact_when_the_adapter_is_zero(qwen3, model, spa3r_config):
    """Qwen3-VL's native video input (timestamps, temporal mRoPE positions, deepstack features at the video
    positions) passes through Qwen3-VL's own code: a fresh Spa3-VLM equals Qwen3-VL on it, and a trained adapter
    changes the video tokens and what follows them, reading the sample's geometry frames."""
    batch, geometry = qwen3_video_batch(), [torch.rand(4, 3, 56, 70, generator=torch.Generator().manual_seed(3))]
    torch.manual_seed(2)
    fresh = Spa3VLMQwen3ForConditionalGeneration(Spa3VLMQwen3Config.from_qwen(qwen3.config, spa3r_config=spa3r_config))
    fresh.load_state_dict(qwen3.state_dict(), strict=False)
    with torch.no_grad():
        expected = qwen3(**batch).logits
        assert torch.equal(fresh.eval()(**batch, geometry_pixel_values=geometry).logits, expected)
        adapted = model(**batch, geometry_pixel_values=geometry).logits
        assert torch.equal(adapted[:, :4], expected[:, :4])
        assert not torch.allclose(adapted[:, 4:], expected[:, 4:], atol=1e-3)
        generated = model.generate(**batch, geometry_pixel_values=geometry, max_new_tokens=3, do_sample=False, pad_token_id=PAD)
    assert torch.equal(generated[:, -3:], greedy_without_cache(model, {**batch, "geometry_pixel_values": geometry}, 3)[:, -3:])
    with pytest.raises(ValueError, match="neither geometry_pixel_values nor spatial_latents"):
        model(**batch)


def test_save_pretrained_and_remote_code_load_in_a_clean_process(tmp_path, model, qwen3):
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["model_type"] == "spa3_vlm_qwen3"
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_spa3_vlm.Spa3VLMQwen3Config",
        "AutoModelForImageTextToText": "modeling_spa3_vlm.Spa3VLMQwen3ForConditionalGeneration",
    }
    assert any(k.startswith("model.visual.deepstack_merger_list.") for k in load_file(tmp_path / "model" / "model.safetensors"))
    qwen3.save_pretrained(tmp_path / "qwen")
    batch = batch_of([[(4, 4)], [(4, 6)]])
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**batch).logits
        in_process = AutoModelForImageTextToText.from_pretrained(tmp_path / "model").eval()
        assert type(in_process) is Spa3VLMQwen3ForConditionalGeneration
        assert torch.equal(in_process(**batch).logits, expected)

    assert_remote_code_load(tmp_path, expected)


# ---------------------------------------------------------------------------------------------- training and use


def test_sft_with_lora_and_cached_latents_trains_saves_and_answers(tmp_path, spa3r_folder, repo_root):
    """`train/sft_vlm.py --config_name hub_configs/spa3-vlm-qwen3-tiny` tunes the Qwen3-VL Spa3-VLM with TRL (LoRA on
    the LLM, merged, latents cached), saves a folder that reloads through the Auto class, and the evaluation runner
    answers with it."""
    from script_testing import import_train_script

    from spa3_vlm import Spa3VLMProcessor
    from spa3_vlm.inference import Spa3VLMGenerator, model_class_for

    sft_vlm = import_train_script("sft_vlm")
    out = tmp_path / "qwen3-sft"
    run = sft_vlm.main([
        "--config_name", str(repo_root / "hub_configs" / "spa3-vlm-qwen3-tiny"), "--output_dir", str(out),
        "--spa3r_name_or_path", str(spa3r_folder), "--use_lora", "--merge_lora", "--lora_r", "4",
        "--num_train_scenes", "2", "--frames_per_scene", "4", "--questions_per_scene", "4", "--num_eval_scenes", "1",
        "--eval_max_new_tokens", "2", "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--disable_tqdm", "true", "--data_cache_dir", str(tmp_path / "data"),
    ])  # fmt: skip
    assert run["trainer"].state.global_step == 2
    assert type(run["model"]) is Spa3VLMQwen3ForConditionalGeneration
    loaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(loaded) is Spa3VLMQwen3ForConditionalGeneration and model_class_for(loaded.config) is type(loaded)
    # LoRA merged into plain weights (no PEFT layers left); the adapter was trained away from the identity.
    assert not any("lora_" in name for name in loaded.state_dict())
    assert torch.count_nonzero(loaded.geometry_adaptor[-1].weight) > 0
    processor = Spa3VLMProcessor.from_pretrained(out)
    assert processor.image_processor.patch_size == PATCH
    generator = Spa3VLMGenerator(loaded, processor, max_new_tokens=2)
    from PIL import Image

    frames = [Image.new("RGB", (112, 84), (40 * k, 90, 160)) for k in range(2)]
    answers = generator.generate([(frames, "How many chairs are in the room?")])
    assert len(answers) == 1 and isinstance(answers[0], str)

    # The saved folder answers the same in a process without the package (remote code for model and processor).
    script = tmp_path / "answer_remote.py"
    script.write_text(REMOTE_ANSWER)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-I", str(script), str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules.") and remote["processor"].startswith("transformers_modules.")
    assert remote["answer_ids"] == generator.model.generate(
        **{k: v for k, v in generator._inputs([(frames, "How many chairs are in the room?")]).items()},
        max_new_tokens=2, do_sample=False,
    )[0, -2:].tolist()


# Run with `python -I` (no spa3_vlm on the path): load the SFT output with remote code and answer greedily.
REMOTE_ANSWER = """
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
frames = [Image.new("RGB", (112, 84), (40 * k, 90, 160)) for k in range(2)]
chat = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "How many chairs are in the room?"}]}]
prompt = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
inputs = processor(text=[prompt], images=frames, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
with torch.no_grad():
    output = model.generate(**dict(inputs), max_new_tokens=2, do_sample=False)
print(json.dumps({"module": type(model).__module__, "processor": type(processor).__module__,
                  "answer_ids": output[0, -2:].tolist()}))
"""


def test_the_plain_qwen3_ablation_keeps_video_input_unchanged(qwen3, spa3r_config):
    """``spatial_branch=False`` is exactly Qwen3-VL, videos included (the timestamps and temporal positions of its
    video tokens come from Qwen3-VL's own code)."""
    config = Spa3VLMQwen3Config.from_qwen(qwen3.config, spatial_branch=False)
    plain = Spa3VLMQwen3ForConditionalGeneration(config).eval()
    plain.load_state_dict(qwen3.state_dict(), strict=True)
    assert plain.spa3r is None and not hasattr(plain, "geometry_adaptor")
    from spa3_vlm_testing import BOS, VEND, VIDEO, VSTART

    # Qwen3-VL gives each temporal group its own vision block (a timestamp goes before it in the text): two groups
    # of 4x4 patches -> two blocks of 4 merged tokens.
    grid = torch.tensor([[2, 4, 4]])
    ids = torch.tensor([[BOS, 10, VSTART] + [VIDEO] * 4 + [VEND, 20, VSTART] + [VIDEO] * 4 + [VEND, 30, 31]])
    batch = dict(
        input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == VIDEO).int() * 2,
        pixel_values_videos=torch.randn(32, 3 * 2 * PATCH**2, generator=torch.Generator().manual_seed(0)),
        video_grid_thw=grid,
    )  # fmt: skip
    with torch.no_grad():
        assert torch.equal(plain(**batch).logits, qwen3(**batch).logits)


def test_sft_starts_from_a_plain_qwen3_vl_checkpoint(tmp_path, spa3r_folder, repo_root):
    """`--model_name_or_path <Qwen3-VL folder>`: the Qwen3-VL weights load whole, Spa3R and a fresh identity adapter
    are added, and the processor comes from the checkpoint's own tokenizer and image processor."""
    from script_testing import import_train_script

    from spa3_vlm import Spa3VLMProcessor
    from spa3_vlm.processing_spa3_vlm import build_qwen_image_processor
    from spa3_vlm.training.sft_model import load_spa3_vlm

    torch.manual_seed(4)
    qwen3 = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**qwen3_values(vocab_size=2000))).eval()
    folder = tmp_path / "Qwen3-VL-tiny"
    qwen3.save_pretrained(folder)
    Spa3VLMProcessor.from_pretrained(repo_root / "hub_configs" / "spa3-vlm-qwen3-tiny").tokenizer.save_pretrained(folder)
    build_qwen_image_processor(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)

    model, notes = load_spa3_vlm(model_name_or_path=str(folder), spa3r_name_or_path=str(spa3r_folder))
    assert type(model) is Spa3VLMQwen3ForConditionalGeneration and notes["base_model"] == str(folder)
    batch = batch_of([[(4, 4)]])
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, qwen3(**qwen_inputs(batch)).logits)

    run = import_train_script("sft_vlm").main([
        "--model_name_or_path", str(folder), "--spa3r_name_or_path", str(spa3r_folder), "--output_dir", str(tmp_path / "out"),
        "--num_train_scenes", "2", "--frames_per_scene", "4", "--questions_per_scene", "4", "--num_eval_scenes", "0",
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
        "--data_cache_dir", str(tmp_path / "data"),
    ])  # fmt: skip
    assert run["trainer"].state.global_step == 1 and type(run["model"]) is Spa3VLMQwen3ForConditionalGeneration
    saved = Spa3VLMProcessor.from_pretrained(tmp_path / "out")
    assert saved.image_processor.patch_size == PATCH
    # The processor took Qwen3-VL's chat format from the checkpoint's model_type: no default system turn.
    assert saved.chat_template == SPA3_VLM_QWEN3_CHAT_TEMPLATE
