"""Spa3-VLM: Qwen2.5-VL + frozen Spa3R encoder + per-sample gated cross-attention adapter."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from spa3_vlm_testing import (
    BOS,
    GEOMETRY_HW,
    IMAGE,
    PAD,
    VEND,
    VIDEO,
    VSTART,
    assert_batched_equals_one_sample_at_a_time,
    assert_each_sample_reads_only_its_own_latents,
    assert_remote_code_load,
    greedy_without_cache,
    make_batch,
    qwen_inputs,
    qwen_values,
)
from transformers import (
    AutoModelForImageTextToText,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction
from spa3_vlm.configuration_spa3_vlm import Spa3VLMConfig, encoder_only_spa3r_config
from spa3_vlm.modeling_spa3_vlm import (
    Spa3VLMForConditionalGeneration,
    assign_images_to_samples,
)


@pytest.fixture(scope="module")
def spa3r_config(repo_root):
    return encoder_only_spa3r_config(Spa3RConfig.from_json_file(repo_root / "hub_configs" / "spa3r-tiny" / "config.json"))


@pytest.fixture(scope="module")
def config(spa3r_config):
    return Spa3VLMConfig.from_qwen(qwen_values(), spa3r_config=spa3r_config)


def build_model(config, seed=0, random_adaptor=False):
    torch.manual_seed(seed)
    model = Spa3VLMForConditionalGeneration(config).eval()
    if random_adaptor:  # the zero-initialised last layer would hide the adapter
        with torch.no_grad():
            model.geometry_adaptor[-1].weight.normal_(0, 0.5)
            model.geometry_adaptor[-1].bias.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def model(config):
    return build_model(config, random_adaptor=True)


def copy_qwen_weights(source, target):
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected
    assert all(key.startswith(("spa3r.", "geometry_", "geom_cross_attention.", "ln.")) for key in missing)


# ---------------------------------------------------------------------------------------------- config


def test_config_composes_qwen_spa3r_and_adapter(config, spa3r_config):
    assert config.model_type == "spa3_vlm" and isinstance(config, Qwen2_5_VLConfig)
    assert config.adapter_num_heads == 4  # defaults to the LLM's heads, as the reference
    assert config.adapter_hidden_size == 64 and config.adapter_reduction == 4
    assert config.spa3r_config.to_dict() == spa3r_config.to_dict()
    vggt = config.spa3r_config.vggt_config
    assert not (vggt.use_camera_head or vggt.use_depth_head or vggt.use_point_head)
    assert config.spa3r_config.semantic_teacher_config is None and config.spa3r_config.target_heads == {}
    reloaded = Spa3VLMConfig.from_dict(config.to_dict())
    assert reloaded.to_dict() == config.to_dict()
    assert isinstance(reloaded.spa3r_config, Spa3RConfig)
    # The paper's encoder when none is given; nothing at all for the plain-Qwen ablation.
    assert Spa3VLMConfig(**qwen_values()).spa3r_config.num_queries == 256
    assert Spa3VLMConfig(**qwen_values(), spatial_branch=False).spa3r_config is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(adapter_num_heads=5), "adapter_num_heads=5 must divide the LLM hidden size 64"),
        (dict(adapter_reduction=3), "adapter_reduction=3 must divide the LLM hidden size 64"),
        (dict(adapter_reduction=0), "adapter_reduction must be a positive int, got 0"),
        (dict(spatial_branch="yes"), "spatial_branch must be True or False, got 'yes'"),
        (dict(adapter_layer_norm_eps=0.0), "adapter_layer_norm_eps must be a positive float"),
    ],
)
def test_config_rejects_bad_adapter_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        Spa3VLMConfig(**qwen_values(), **overrides)


def test_hub_configs(repo_root):
    big = Spa3VLMConfig.from_json_file(repo_root / "hub_configs" / "spa3-vlm-3b" / "config.json")
    text, vision = big.text_config, big.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (2048, 36, 16, 2)
    assert (text.intermediate_size, text.vocab_size, text.rope_parameters["rope_theta"]) == (11008, 151936, 1e6)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24] and big.tie_word_embeddings
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.intermediate_size) == (32, 1280, 2048, 3420)
    assert vision.fullatt_block_indexes == [7, 15, 23, 31]
    ids = (big.image_token_id, big.video_token_id, big.vision_start_token_id, big.vision_end_token_id)
    assert ids == (151655, 151656, 151652, 151653)
    assert big.adapter_num_heads == 16
    spa3r = big.spa3r_config
    assert (spa3r.hidden_size, spa3r.num_queries, spa3r.num_encoder_layers, spa3r.backbone_hidden_size) == (768, 256, 6, 2048)
    assert spa3r.vggt_config.global_qk_norm == "rmsnorm" and spa3r.vggt_config.num_hidden_layers == 24
    assert not (spa3r.vggt_config.use_camera_head or spa3r.vggt_config.use_depth_head or spa3r.vggt_config.use_point_head)

    with torch.device("meta"):
        model = Spa3VLMForConditionalGeneration(big)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    adapter = sum(count(getattr(model, n)) for n in ("geometry_projector", "geom_cross_attention", "ln", "geometry_adaptor", "geometry_gate"))
    d, c, head_dim = 2048, 768, 128
    expected = (c * d + d + d * d + d) + 4 * (d * d + d) + 2 * 2 * head_dim + 2 * d + (d * d // 4 + d // 4 + d // 4 * d + d) + (d * d + d)
    assert adapter == expected and abs(adapter - 28.9e6) < 0.1e6  # the spec's "adapter parameters ~ 28.9 M for D = 2048"
    # Encoder path only: VGGT aggregator + projection + queries + encoder, no heads.
    assert model.spa3r.backbone.camera_head is None and model.spa3r.backbone.depth_head is None
    assert not hasattr(model.spa3r, "decoder")

    tiny = Spa3VLMConfig.from_json_file(repo_root / "hub_configs" / "spa3-vlm-tiny" / "config.json")
    tokenizer = json.loads((repo_root / "hub_configs" / "spa3-vlm-tiny" / "tokenizer.json").read_text())
    special = {token["content"]: token["id"] for token in tokenizer["added_tokens"]}
    assert tiny.image_token_id == special["<|image_pad|>"] and tiny.video_token_id == special["<|video_pad|>"]
    assert tiny.vision_start_token_id == special["<|vision_start|>"] and tiny.vision_end_token_id == special["<|vision_end|>"]
    assert tiny.text_config.eos_token_id == special["<|im_end|>"] and tiny.text_config.pad_token_id == special["<|endoftext|>"]
    assert tiny.text_config.vocab_size == len(tokenizer["model"]["vocab"])
    assert (tiny.text_config.hidden_size, tiny.text_config.num_hidden_layers, tiny.vision_config.depth) == (64, 2, 2)
    assert tiny.vision_config.hidden_size == 32
    base = Spa3RConfig.from_json_file(repo_root / "hub_configs" / "spa3r-tiny" / "config.json")
    assert tiny.spa3r_config.to_dict() == encoder_only_spa3r_config(base).to_dict()


# ---------------------------------------------------------------------------------------------- identity at init


def test_fresh_model_is_exactly_qwen_and_adapter_is_wired(config):
    torch.manual_seed(1)
    qwen = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values())).eval()
    model = build_model(config, seed=2)
    adaptor_last = model.geometry_adaptor[-1]
    assert torch.count_nonzero(adaptor_last.weight) == 0 and torch.count_nonzero(adaptor_last.bias) == 0
    assert model.geometry_adaptor[0].weight.std() > 0.01 and model.geom_cross_attention.q_proj.weight.std() > 0.01
    copy_qwen_weights(qwen, model)
    batch = make_batch([[(4, 4), (4, 6)], [(6, 4)]], text_lengths=[0, 3])
    with torch.no_grad():
        expected = qwen(**qwen_inputs(batch)).logits
        got = model(**batch).logits
        assert torch.equal(got, expected)
        adaptor_last.bias.fill_(0.1)  # a non-zero residual must change the image positions (and what follows them)
        changed = model(**batch).logits
        adaptor_last.bias.zero_()
    assert not torch.allclose(changed, expected, atol=1e-3)


def test_from_plain_qwen_checkpoint_is_exact(tmp_path, config, spa3r_config):
    torch.manual_seed(3)
    qwen = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values())).eval()
    qwen.save_pretrained(tmp_path / "qwen")
    batch = make_batch([[(4, 4)], [(4, 6), (4, 4)]])
    with torch.no_grad():
        expected = qwen(**qwen_inputs(batch)).logits

    model, info = Spa3VLMForConditionalGeneration.from_pretrained(
        tmp_path / "qwen", config=Spa3VLMConfig.from_qwen(qwen.config, spa3r_config=spa3r_config), output_loading_info=True
    )
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert info["missing_keys"] and all(k.startswith(("spa3r.", "geometry_", "geom_cross_attention.", "ln.")) for k in info["missing_keys"])
    # Missing weights were initialised after loading: the residual branch's last layer is zero, the rest is not.
    assert torch.count_nonzero(model.geometry_adaptor[-1].weight) == 0
    assert model.geometry_gate[0].weight.std() > 0.01
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, expected)

    fresh = Spa3VLMForConditionalGeneration.from_qwen_pretrained(str(tmp_path / "qwen"), spa3r_config=spa3r_config)
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, expected)
    # Frozen encoder: no gradients, inference mode even after .train(); adapter and LLM train.
    fresh.train()
    assert not fresh.spa3r.training and fresh.geometry_adaptor.training and fresh.model.training
    assert not any(p.requires_grad for p in fresh.spa3r.parameters())
    assert all(p.requires_grad for p in fresh.geom_cross_attention.parameters())


def test_from_qwen_pretrained_loads_a_spa3r_folder(tmp_path, repo_root):
    Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values())).save_pretrained(tmp_path / "qwen")
    pretraining = Spa3RConfig.from_json_file(repo_root / "hub_configs" / "spa3r-tiny" / "config.json")
    pretraining.semantic_teacher_config = None
    torch.manual_seed(7)
    field_model = Spa3RForFieldPrediction(pretraining)  # encoder + decoder + heads, VGGT camera/depth heads
    field_model.save_pretrained(tmp_path / "spa3r")
    model = Spa3VLMForConditionalGeneration.from_qwen_pretrained(str(tmp_path / "qwen"), spa3r_name_or_path=str(tmp_path / "spa3r"))
    expected = field_model.spa3r.state_dict()
    loaded = model.spa3r.state_dict()
    assert set(loaded) < set(expected)  # the VGGT heads are not part of the VLM's encoder
    assert all(torch.equal(value, expected[key]) for key, value in loaded.items())
    assert model.config.spa3r_name_or_path == str(tmp_path / "spa3r")
    assert not model.config.spa3r_config.vggt_config.use_camera_head
    with pytest.raises(ValueError, match="Spa3R encoder weights do not match spa3r_config"):
        model.load_spa3r_state_dict({k: v for k, v in loaded.items() if k != "query_embed.weight"})


def test_gradients_reach_adapter_and_llm_not_spa3r(config):
    model = build_model(config, random_adaptor=True).train()
    batch = make_batch([[(4, 4)], [(4, 4)]])
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == IMAGE, -100)
    out = model(**batch, labels=labels)
    out.loss.backward()
    assert all(p.grad is None for p in model.spa3r.parameters())
    for module in (model.geometry_projector, model.geom_cross_attention, model.geometry_gate, model.model.language_model):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    assert model.geometry_adaptor[-1].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- adapter math


def test_adapter_matches_the_spec_formula(model):
    torch.manual_seed(4)
    tokens = [torch.randn(7, 64), torch.randn(3, 64)]
    latents = torch.randn(2, model.config.spa3r_config.num_queries, model.config.spa3r_config.hidden_size)
    with torch.no_grad():
        got = model.adapt_visual_tokens(tokens, latents)
        attention = model.geom_cross_attention
        heads, head_dim = 4, 16
        for sample in range(2):
            image, context = tokens[sample], model.geometry_projector(latents[sample])
            q = attention.q_proj(image).view(-1, heads, head_dim)
            k = attention.k_proj(context).view(-1, heads, head_dim)
            v = attention.v_proj(context).view(-1, heads, head_dim)
            q = F.layer_norm(q, (head_dim,), attention.q_norm.weight, attention.q_norm.bias, 1e-5)
            k = F.layer_norm(k, (head_dim,), attention.k_norm.weight, attention.k_norm.bias, 1e-5)
            weights = torch.softmax(torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(head_dim), dim=-1)
            attended = attention.o_proj(torch.einsum("hnm,mhd->nhd", weights, v).reshape(-1, 64))
            z = F.layer_norm(attended, (64,), model.ln.weight, model.ln.bias, 1e-5)
            expected = image + model.geometry_adaptor(z) * torch.sigmoid(model.geometry_gate[0](z))
            assert got[sample].shape == image.shape
            assert (got[sample] - expected).abs().max() < 1e-5


def test_each_sample_reads_only_its_own_latents(model):
    assert_each_sample_reads_only_its_own_latents(model, make_batch([[(4, 4), (4, 6)], [(6, 4)], [(4, 4)]], text_lengths=[0, 4, 2]))


def test_batched_equals_one_sample_at_a_time(model):
    images = [[(4, 4), (4, 6)], [(6, 4)], [(4, 4)]]
    assert_batched_equals_one_sample_at_a_time(model, images, make_batch(images, text_lengths=[0, 4, 2]))


def test_text_only_samples_and_frames_in_lists(model):
    batch = make_batch([[(4, 4)], []], text_lengths=[0, 5])
    frames = list(batch["geometry_pixel_values"][0].unbind(0))  # a list of [3, H, W] frames is accepted too
    assert batch["geometry_pixel_values"][1] is None
    with torch.no_grad():
        expected = model(**batch).logits
        got = model(**dict(batch, geometry_pixel_values=[frames, None])).logits
    assert torch.equal(got, expected)


def test_geometry_as_stacked_tensor_or_numpy(model):
    batch = make_batch([[(4, 4)], [(4, 6)]], frames_per_sample=[2, 2])
    geometry = batch["geometry_pixel_values"]
    with torch.no_grad():
        expected = model(**batch).logits
        stacked = model(**dict(batch, geometry_pixel_values=torch.stack(geometry))).logits  # [B, V, 3, H, W]
        from_numpy = model(**dict(batch, geometry_pixel_values=[g.numpy() for g in geometry])).logits
    assert torch.equal(stacked, expected) and torch.equal(from_numpy, expected)


def test_spatial_latents_replace_the_encoder(model):
    batch = make_batch([[(4, 4)], [(4, 6)]], frames_per_sample=[2, 3])
    geometry = batch.pop("geometry_pixel_values")
    with torch.no_grad():
        latents = model.compute_spatial_latents(geometry)
        assert latents.shape == (2, 16, 64)
        assert torch.allclose(latents[1], model.spa3r(geometry[1][None]).latents[0], atol=1e-6)
        from_images = model(**batch, geometry_pixel_values=geometry).logits
        from_cache = model(**batch, spatial_latents=latents).logits
    assert torch.equal(from_cache, from_images)
    calls = []
    handle = model.spa3r.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(**batch, spatial_latents=latents)
    handle.remove()
    assert not calls  # the frozen encoder does not run when latents are given


def test_backbone_features_through_the_adapter(config, tmp_path):
    """The paper's "VGGT features" ablation: the adapter reads the frozen backbone's tokens of every frame."""
    backbone_config = Spa3VLMConfig.from_dict({**config.to_dict(), "spatial_source": "backbone"})
    model = build_model(backbone_config, seed=3, random_adaptor=True)
    width = backbone_config.spa3r_config.backbone_hidden_size
    assert model.geometry_projector[0].in_features == width != config.spa3r_config.hidden_size
    batch = make_batch([[(4, 4)], [(4, 6)]], frames_per_sample=[2, 2])
    geometry = batch.pop("geometry_pixel_values")
    encoder_calls = []
    handle = model.spa3r.encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    with torch.no_grad():
        tokens = model.compute_spatial_latents(geometry)
    handle.remove()
    assert not encoder_calls  # only the frozen VGGT runs: Spa3R's encoder is not read
    with torch.no_grad():
        per_frame = model.spa3r(geometry[1][None]).context_tokens[0]  # [V, N, C_backbone]
        assert tokens.shape == (2, per_frame.shape[0] * per_frame.shape[1], width)
        assert torch.allclose(tokens[1], per_frame.flatten(0, 1), atol=1e-6)
        from_images = model(**batch, geometry_pixel_values=geometry).logits
        assert torch.equal(model(**batch, spatial_latents=tokens).logits, from_images)
        # A fresh adapter is still the identity: the logits of the same model with a zeroed adaptor equal Qwen's.
        plain = build_model(Spa3VLMConfig.from_dict({**config.to_dict(), "spatial_branch": False}), seed=3)
        fresh = build_model(backbone_config, seed=3)
        copy_qwen_weights(plain, fresh)
        assert torch.equal(fresh(**batch, geometry_pixel_values=geometry).logits, plain(**qwen_inputs(batch)).logits)
    with pytest.raises(ValueError, match=r"must be a \[B, V \* N, C_backbone\] = \[2, 'V \* N', 128\] tensor"):
        model(**batch, spatial_latents=tokens[..., :64])
    with pytest.raises(ValueError, match="need the same frame count and size"):
        model.compute_spatial_latents([geometry[0], geometry[1][:1]])
    with pytest.raises(ValueError, match=r"spatial_source must be one of \('spa3r', 'backbone'\), got 'vggt'"):
        Spa3VLMConfig.from_dict({**config.to_dict(), "spatial_source": "vggt"})
    model.save_pretrained(tmp_path)
    reloaded = Spa3VLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.spatial_source == "backbone"
    with torch.no_grad():
        assert torch.equal(reloaded(**batch, spatial_latents=tokens).logits, from_images)


def test_latents_appended_as_tokens(config, tmp_path):
    """The paper's "latents as tokens" ablation: each sample's last image is a slot that its projected latents fill;
    the vision tower never reads the slot's pixels, there is no adapter, and generation agrees with forward."""
    tokens_config = Spa3VLMConfig.from_dict({**config.to_dict(), "spatial_fusion": "tokens"})
    model = build_model(tokens_config, seed=4)
    assert not hasattr(model, "geom_cross_attention") and not hasattr(model, "geometry_adaptor")
    # The slot its processor must append: num_queries tokens; none for the cross-attention adapter. Not saved.
    assert tokens_config.latent_slot_size == 16 and config.latent_slot_size == 0
    assert "latent_slot_size" not in tokens_config.to_dict()
    slot = (8, 8)  # 16 merged tokens = the tiny encoder's num_queries
    batch = make_batch([[(4, 4), slot], [(4, 6), (6, 4), slot], []], text_lengths=[0, 2, 5], frames_per_sample=[2, 3, 0])
    geometry = batch.pop("geometry_pixel_values")
    seen_patches, embeds = [], []
    hooks = [
        model.model.visual.register_forward_hook(lambda module, args, out: seen_patches.append(args[0].shape[0])),
        model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: embeds.append(kwargs["inputs_embeds"]) and None, with_kwargs=True
        ),
    ]
    with torch.no_grad():
        latents = model.compute_spatial_latents([g for g in geometry if g is not None])
        logits = model(**batch, geometry_pixel_values=geometry).logits
    for hook in hooks:
        hook.remove()
    assert seen_patches == [16 + 24 + 24]  # every frame's patches, none of the two slots' 64 each
    with torch.no_grad():
        projected = model.geometry_projector(latents)
    slot_rows = (batch["input_ids"] == IMAGE).nonzero()
    for sample, last in ((0, 16), (1, 16)):
        rows = slot_rows[slot_rows[:, 0] == sample][-last:, 1]  # the sample's last 16 image tokens: its slot
        assert torch.allclose(embeds[0][sample, rows], projected[sample], atol=1e-6)
    with torch.no_grad():
        # The slot's pixels are never read; cached latents give the same logits as frames.
        blank = dict(batch, pixel_values=batch["pixel_values"].clone())
        blank["pixel_values"][-64:] = 7.0
        assert torch.equal(model(**blank, geometry_pixel_values=geometry).logits, logits)
        cached = torch.zeros(3, *latents.shape[1:])
        cached[:2] = latents
        assert torch.equal(model(**batch, spatial_latents=cached).logits, logits)
        # Other latents change the answer: the tokens carry them.
        assert not torch.allclose(model(**batch, spatial_latents=cached + 1).logits[:2], logits[:2])
        # generate (which encodes every image itself, slots included) fills the slots the same way.
        generated = model.generate(**batch, geometry_pixel_values=geometry, max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    assert torch.equal(generated, greedy_without_cache(model, dict(batch, geometry_pixel_values=geometry), 4))
    no_slot = make_batch([[(4, 4)], [(4, 6)]])
    with pytest.raises(ValueError, match=r"last image of sample\(s\) \[0, 1\] has \[4, 6\] tokens: build the processor with spatial_slot_tokens=16"):
        model(**no_slot)
    with pytest.raises(ValueError, match="spatial_fusion='tokens' .* needs spatial_source='spa3r', got 'backbone'"):
        Spa3VLMConfig.from_dict({**config.to_dict(), "spatial_fusion": "tokens", "spatial_source": "backbone"})
    with pytest.raises(ValueError, match=r"spatial_fusion must be one of \('cross_attention', 'tokens'\), got 'concat'"):
        Spa3VLMConfig.from_dict({**config.to_dict(), "spatial_fusion": "concat"})
    model.save_pretrained(tmp_path)
    reloaded = Spa3VLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.spatial_fusion == "tokens"
    with torch.no_grad():
        assert torch.equal(reloaded(**batch, geometry_pixel_values=geometry).logits, logits)


# ---------------------------------------------------------------------------------------------- generation


def test_generate_uses_kv_cache_and_adapts_only_on_prefill(model):
    batch = make_batch([[(4, 4)], [(4, 6), (4, 4)]], text_lengths=[4, 0], frames_per_sample=[2, 2])
    calls = []
    handle = model.spa3r.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=PAD)
    handle.remove()
    assert len(calls) == 1  # one encoder run (both samples share a geometry shape) on the prefill step
    assert generated.shape == (2, batch["input_ids"].shape[1] + 5)
    assert torch.equal(generated, greedy_without_cache(model, batch, 5))
    with torch.no_grad():
        beams = model.generate(**batch, max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=PAD)
    assert beams.shape == (2, batch["input_ids"].shape[1] + 3)


# ---------------------------------------------------------------------------------------------- video / ablation


def test_plain_qwen_ablation_and_video_policy(config):
    torch.manual_seed(5)
    qwen = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values())).eval()
    plain_config = Spa3VLMConfig.from_qwen(qwen_values(), spatial_branch=False)
    plain = Spa3VLMForConditionalGeneration(plain_config).eval()
    assert plain.spa3r is None and not hasattr(plain, "geometry_adaptor")
    plain.load_state_dict(qwen.state_dict(), strict=True)
    video = dict(
        input_ids=torch.tensor([[BOS, VSTART] + [VIDEO] * 8 + [VEND, 11]]),
        pixel_values_videos=torch.randn(2 * 16, 3 * 2 * 14 * 14),
        video_grid_thw=torch.tensor([[2, 4, 4]]),
    )
    video["mm_token_type_ids"] = (video["input_ids"] == VIDEO).int() * 2
    batch = make_batch([[(4, 4)]])
    with torch.no_grad():
        assert torch.equal(plain(**video).logits, qwen(**video).logits)
        # Geometry inputs are accepted and ignored, so one data pipeline feeds both variants.
        assert torch.equal(plain(**batch).logits, qwen(**qwen_inputs(batch)).logits)



def test_video_tokens_are_adapted_from_the_samples_frames(config):
    """The base's own video input (``pixel_values_videos``) goes through the adapter like images: a fresh model is
    exactly Qwen2.5-VL on it, a trained adapter changes exactly the video tokens, and without geometry it is an
    error rather than silently unadapted."""
    torch.manual_seed(5)
    qwen = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values())).eval()
    ids = torch.tensor([[BOS, 10, VSTART] + [VIDEO] * 8 + [VEND, 11]])
    video = dict(
        input_ids=ids, mm_token_type_ids=(ids == VIDEO).int() * 2,
        pixel_values_videos=torch.randn(2 * 16, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1)),
        video_grid_thw=torch.tensor([[2, 4, 4]]),
    )  # fmt: skip
    geometry = [torch.rand(2, 3, *GEOMETRY_HW, generator=torch.Generator().manual_seed(2))]
    fresh, trained = build_model(config), build_model(config, random_adaptor=True)
    copy_qwen_weights(qwen, fresh)
    copy_qwen_weights(qwen, trained)
    with torch.no_grad():
        expected = qwen(**video).logits
        assert torch.equal(fresh(**video, geometry_pixel_values=geometry).logits, expected)
        adapted = trained(**video, geometry_pixel_values=geometry).logits
        # Causal attention: the tokens before the video are untouched, the video and what follows change.
        assert torch.equal(adapted[:, :3], expected[:, :3])
        assert not torch.allclose(adapted[:, 3:], expected[:, 3:], atol=1e-3)
        latents = trained.compute_spatial_latents(geometry)
        assert torch.equal(trained(**video, spatial_latents=latents).logits, adapted)
        outputs = trained.adapted_encoder_outputs(**video, geometry_pixel_values=geometry)
        base = qwen.model.get_video_features(video["pixel_values_videos"], video["video_grid_thw"]).pooler_output
        assert torch.equal(outputs["video"].pooler_output[0], trained.adapt_visual_tokens([base[0]], latents)[0])
    with pytest.raises(ValueError, match="neither geometry_pixel_values nor spatial_latents"):
        trained(**video)
    with pytest.raises(ValueError, match=r"9 video placeholder tokens .* give 8 visual tokens"):
        trained(**{**video, "input_ids": torch.cat([ids, torch.tensor([[VIDEO]])], 1)}, geometry_pixel_values=geometry)


# ---------------------------------------------------------------------------------------------- bad input


def test_assign_images_to_samples():
    assert assign_images_to_samples([4, 6, 4], [10, 0, 4]) == [0, 0, 2]
    with pytest.raises(ValueError, match="does not fit in the image slots of one sample"):
        assign_images_to_samples([4, 6], [5, 5])


def _drop_one_image_token(batch):
    ids = batch["input_ids"].clone()
    first = int((ids[0] == IMAGE).nonzero()[0, 0])
    ids[0, first] = 40
    return dict(batch, input_ids=ids, mm_token_type_ids=(ids == IMAGE).int())


@pytest.mark.parametrize(
    "change, message",
    [
        (_drop_one_image_token, r"the batch has 7 image placeholder tokens in input_ids but its 2 image\(s\) give 8 visual tokens"),
        (lambda b: dict(b, image_grid_thw=torch.cat([b["image_grid_thw"], b["image_grid_thw"][:1]]),
                        pixel_values=torch.cat([b["pixel_values"], b["pixel_values"][:16]])),
         r"the batch has 8 image placeholder tokens in input_ids but its 3 image\(s\) give 12 visual tokens"),
        (lambda b: dict(b, geometry_pixel_values=b["geometry_pixel_values"][:1]), "geometry_pixel_values has 1 entries but the batch has 2 samples"),
        (lambda b: dict(b, geometry_pixel_values=[[torch.rand(3, 56, 70), torch.rand(3, 42, 70)], b["geometry_pixel_values"][1]]),
         r"geometry_pixel_values\[0\] holds frames of different sizes"),
        (lambda b: dict(b, geometry_pixel_values=[[], b["geometry_pixel_values"][1]]), r"geometry_pixel_values\[0\] is an empty image list"),
        (lambda b: dict(b, geometry_pixel_values=[torch.rand(0, 3, 56, 70), b["geometry_pixel_values"][1]]), r"geometry_pixel_values\[0\] is an empty image list"),
        (lambda b: dict(b, geometry_pixel_values=[None, b["geometry_pixel_values"][1]]), r"samples \[0\] have visual tokens but no geometry frames"),
        (lambda b: dict(b, geometry_pixel_values=[torch.rand(3, 56, 70), b["geometry_pixel_values"][1]]), r"must be a \[V, 3, H, W\] tensor"),
        (lambda b: dict(b, geometry_pixel_values=None), "neither geometry_pixel_values nor spatial_latents"),
        (lambda b: dict(b, geometry_pixel_values=None, spatial_latents=torch.zeros(2, 16, 32)), r"spatial_latents must be a \[B, num_queries, C_spa3r\] = \[2, 16, 64\]"),
        (lambda b: dict(b, geometry_pixel_values=None, spatial_latents=torch.zeros(3, 16, 64)), r"spatial_latents must be a \[B, num_queries, C_spa3r\]"),
        (lambda b: dict(b, spatial_latents=torch.zeros(2, 16, 64)), "not both"),
        (lambda b: dict(b, geometry_pixel_values=[g * 255 for g in b["geometry_pixel_values"]]), r"must hold RGB values in \[0, 1\]"),
        (lambda b: dict(b, image_grid_thw=None), "pixel_values needs image_grid_thw"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, change, message):
    batch = make_batch([[(4, 4)], [(4, 4)]])
    with pytest.raises(ValueError, match=message):
        with torch.no_grad():
            model(**change(batch))


# ---------------------------------------------------------------------------------------------- hub round trip

def test_save_pretrained_and_remote_code_load_in_a_clean_process(tmp_path, model):
    model.save_pretrained(tmp_path / "model")
    files = set(os.listdir(tmp_path / "model"))
    assert {"config.json", "model.safetensors", "configuration_spa3_vlm.py", "modeling_spa3_vlm.py", "modeling_spa3r.py"} <= files
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_spa3_vlm.Spa3VLMConfig",
        "AutoModelForImageTextToText": "modeling_spa3_vlm.Spa3VLMForConditionalGeneration",
    }
    assert any(k.startswith("spa3r.backbone.aggregator.") for k in load_file(tmp_path / "model" / "model.safetensors"))
    Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values())).save_pretrained(tmp_path / "qwen")

    batch = make_batch([[(4, 4)], [(4, 6)]])
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**batch).logits
        in_process = AutoModelForImageTextToText.from_pretrained(tmp_path / "model").eval()
        assert type(in_process) is Spa3VLMForConditionalGeneration
        assert torch.equal(in_process(**batch).logits, expected)

    assert_remote_code_load(tmp_path, expected)


# ---------------------------------------------------------------------------------------------- with the processor


def test_tiny_hub_model_with_the_processor(repo_root):
    from PIL import Image

    from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor

    folder = repo_root / "hub_configs" / "spa3-vlm-tiny"
    processor = Spa3VLMProcessor.from_pretrained(folder)
    torch.manual_seed(6)
    model = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_json_file(folder / "config.json")).eval()
    generator = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(60, 80, 3, generator=generator) * 255).byte().numpy()) for _ in range(3)]
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "how far?"}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "which is closer, the chair?"}]}],
    ]
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=[images[:2], images[2:]], return_tensors="pt", padding=True)
    assert [g.shape[0] for g in inputs["geometry_pixel_values"]] == [2, 1]
    with torch.no_grad():
        out = model(**inputs)
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(out.logits).all()
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_encoder_only_config_keeps_the_camera_head_a_prope_encoder_needs():
    from transformers import AutoConfig

    from spa3_vlm.configuration_spa3_vlm import encoder_only_spa3r_config

    plain = encoder_only_spa3r_config(AutoConfig.from_pretrained("hub_configs/spa3r-tiny"))
    prope = encoder_only_spa3r_config(AutoConfig.from_pretrained("hub_configs/spa3r-tiny-synthrooms"))
    assert not plain.vggt_config.use_camera_head and not plain.vggt_config.use_depth_head
    assert prope.vggt_config.use_camera_head and not prope.vggt_config.use_depth_head
    # Training-only settings that name decoder heads are dropped with the heads; the tracking head goes too.
    trained = AutoConfig.from_pretrained("hub_configs/spa3r-tiny-synthrooms")
    trained.loss_weights, trained.smooth_l1_beta = {"rgb_l1": 2.0}, {"metric_depth": 0.1}
    trained.head_activations = {"metric_depth": "exp"}
    trained.context_inputs = {"metric_depth": 1, "rgb": 3}  # the encoder reads them: they stay
    trained.vggt_config.use_track_head = True
    encoder = encoder_only_spa3r_config(trained)
    assert encoder.target_heads == {} and encoder.loss_weights is None and encoder.smooth_l1_beta is None
    assert encoder.head_activations is None and encoder.context_inputs == {"metric_depth": 1, "rgb": 3}
    assert not encoder.use_depth_probe and encoder.depth_probe_target == "backbone"
    assert encoder.semantic_teacher_config is None and encoder.semantic_teacher_name_or_path is None
    assert not encoder.vggt_config.use_track_head


def test_encoder_loads_a_field_prediction_checkpoint_whose_backbone_keeps_a_depth_head(tmp_path):
    """The tiny config's backbone keeps its depth head (the probe's baselines need it); the encoder-only config drops
    it. Loading must neither report those tensors as unexpected nor lose any encoder tensor."""
    from transformers import AutoConfig

    from spa3_vlm import Spa3RForFieldPrediction, Spa3RModel

    config = AutoConfig.from_pretrained("hub_configs/spa3r-tiny-synthrooms", vggt_name_or_path=None, semantic_teacher_name_or_path=None)
    assert config.vggt_config.use_depth_head
    torch.manual_seed(0)
    Spa3RForFieldPrediction(config).save_pretrained(tmp_path)
    field = Spa3RForFieldPrediction.from_pretrained(tmp_path)
    assert field.spa3r.backbone.depth_head is not None
    encoder, info = Spa3RModel.from_pretrained(tmp_path, config=encoder_only_spa3r_config(config), output_loading_info=True)
    assert encoder.backbone.depth_head is None
    assert not info["unexpected_keys"] and not info["missing_keys"] and not info["mismatched_keys"]
    expected = field.spa3r.state_dict()
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, expected[name]), name
