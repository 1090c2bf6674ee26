"""Released Spa3-VLM (transformers 4.50 layout) and Spa3R Lightning checkpoints -> our Spa3-VLM folders.

The "released" checkpoint is built here at tiny size: the Qwen and adapter tensors of a tiny Spa3-VLM renamed
back to the 4.50 names, plus the reference-format Spa3R of tests/fixtures (trained parts, frozen VGGT with its
heads, a DINO stand-in) under ``geometry_encoder.spa3r.``. The fixtures' reference latents check that the Spa3R
part lands in the right place.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction, Spa3RModel
from spa3_vlm.configuration_spa3_vlm import Spa3VLMConfig
from spa3_vlm.conversion import vggt_config_from_reference
from spa3_vlm.conversion.__main__ import main as conversion_main
from spa3_vlm.conversion.vlm import (
    combine_qwen_and_spa3r,
    convert_spa3_vlm,
    spa3_vlm_config_from_reference,
    spa3_vlm_state_from_reference,
    spa3r_encoder_config_from_reference,
    spa3r_encoder_from_reference,
)
from spa3_vlm.modeling_spa3_vlm import Spa3VLMForConditionalGeneration, Spa3VLMQwen3ForConditionalGeneration
from spa3_vlm_testing import EOS, IMAGE, PAD, VEND, VIDEO, VSTART, make_batch, qwen3_values, qwen_inputs, qwen_values

TOLERANCE = 1e-5
SPA3R_REF = "geometry_encoder.spa3r."


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    """Reference-format Spa3R state (as inside Spa3R: RMSNorm global q/k norms, so no bias), configs, fixture I/O."""
    vggt_args = json.loads((fixtures_dir / "vggt_tiny" / "config.json").read_text())
    vggt_args = {k: vggt_args[k] for k in ("vggt", "aggregator", "camera_head", "depth_head", "point_head")}
    vggt = load_file(fixtures_dir / "vggt_tiny" / "model.safetensors")
    vggt = {k: v for k, v in vggt.items() if not (".global_blocks." in k and k.endswith(("q_norm.bias", "k_norm.bias")))}
    dino = {"dino.patch_embed.proj.weight": torch.randn(48, 3, 16, 16), "dino.norm.weight": torch.ones(48)}
    state = {**load_file(fixtures_dir / "spa3r_tiny" / "model.safetensors"), **vggt, **dino}
    vggt_config = vggt_config_from_reference(global_qk_norm="rmsnorm", **vggt_args)
    return dict(
        state=state,
        vggt_config=vggt_config,
        spa3r_config=spa3r_encoder_config_from_reference(state, vggt_config=vggt_config),
        inputs=load_file(fixtures_dir / "spa3r_tiny" / "inputs.safetensors"),
        outputs=load_file(fixtures_dir / "spa3r_tiny" / "outputs.safetensors"),
    )


def reference_config_json(geometry=True):
    """The tiny model's config as transformers 4.50 saved Qwen2.5-VL (flat text fields) + the reference's keys."""
    config = {
        "architectures": ["Spa3_VLMForConditionalGeneration"], "model_type": "qwen2_5_vl", "transformers_version": "4.50.0",
        "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024, "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "eos_token_id": EOS, "pad_token_id": PAD,
        "bos_token_id": None, "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True,
        "image_token_id": IMAGE, "video_token_id": VIDEO, "vision_start_token_id": VSTART, "vision_end_token_id": VEND,
        "vision_config": {"model_type": "qwen2_5_vl", "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                          "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "window_size": 56, "fullatt_block_indexes": [1]},
    }  # fmt: skip
    if geometry:
        config.update(use_geometry_encoder=True, geometry_encoder_type="spa3r", geometry_encoder_path="spa3r.ckpt",
                      spa3r_embed_dim=64, spa3r_num_queries=8)  # fmt: skip
    return config


@pytest.fixture(scope="module")
def released(reference):
    """(source model with the fixture Spa3R loaded, released-layout state dict, config.json dict)."""
    config = Spa3VLMConfig.from_qwen(qwen_values(tie=True), spa3r_config=reference["spa3r_config"])
    torch.manual_seed(0)
    model = Spa3VLMForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.geometry_adaptor[-1].weight.normal_(0, 0.5)  # a trained adapter, not the identity
    model.load_spa3r_state_dict(spa3r_encoder_from_reference(reference["state"], reference["spa3r_config"]).state_dict())
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("spa3r."):
            continue
        if key.startswith("model.visual."):
            key = "visual." + key[len("model.visual.") :]
        elif key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model.") :]
        key = key.replace("geom_cross_attention.o_proj.", "geom_cross_attention.proj.")
        state[key] = value.detach().clone()
    assert "lm_head.weight" in state  # tied: the released file may hold it, equal to the embeddings
    state.update({SPA3R_REF + k: v.clone() for k, v in reference["state"].items()})
    return model, state, reference_config_json()


def write_released(folder, state, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    keys = sorted(state)
    save_file({k: state[k] for k in keys[: len(keys) // 2]}, folder / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[len(keys) // 2 :]}, folder / "model-00002-of-00002.safetensors")
    return folder


def test_reference_config_maps_to_our_config(reference):
    config = spa3_vlm_config_from_reference(reference_config_json(), reference["spa3r_config"])
    ours = Spa3VLMConfig.from_qwen(qwen_values(tie=True), spa3r_config=reference["spa3r_config"])
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "eos_token_id", "pad_token_id"):  # fmt: skip
        assert getattr(config.text_config, name) == getattr(ours.text_config, name), name
    assert config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert config.text_config.rope_parameters["rope_theta"] == 10000.0
    assert config.vision_config.to_dict() == ours.vision_config.to_dict()
    assert config.tie_word_embeddings and config.spatial_branch and config.spa3r_name_or_path == "spa3r.ckpt"
    with pytest.raises(ValueError, match="spa3r_num_queries=9 differs from spa3r_config.num_queries=8"):
        spa3_vlm_config_from_reference(dict(reference_config_json(), spa3r_num_queries=9), reference["spa3r_config"])
    with pytest.raises(ValueError, match="only the 'spa3r' geometry encoder is supported"):
        spa3_vlm_config_from_reference(dict(reference_config_json(), geometry_encoder_type="vggt"), reference["spa3r_config"])
    assert not spa3_vlm_config_from_reference(reference_config_json(geometry=False)).spatial_branch


def test_qwen_3b_config_converts_to_the_hub_config(repo_root):
    # Qwen/Qwen2.5-VL-3B-Instruct's config.json (as on the Hub) + the keys the reference training adds.
    qwen_3b = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
        "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 128000, "max_window_layers": 70,
        "model_type": "qwen2_5_vl", "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
        "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
                          "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                          "tokens_per_second": 2, "temporal_patch_size": 2},
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 151936,
        "use_geometry_encoder": True, "geometry_encoder_type": "spa3r", "spa3r_embed_dim": 768, "spa3r_num_queries": 256,
    }  # fmt: skip
    spa3r_base = Spa3RConfig.from_json_file(repo_root / "hub_configs" / "spa3r-base" / "config.json")
    converted = spa3_vlm_config_from_reference(qwen_3b, spa3r_base).to_dict()
    hub = Spa3VLMConfig.from_json_file(repo_root / "hub_configs" / "spa3-vlm-3b" / "config.json").to_dict()
    for values in (converted, hub):
        for key in ("architectures", "_name_or_path", "transformers_version"):
            values.pop(key, None)
    assert converted == hub


def test_released_checkpoint_converts_exactly(tmp_path, reference, released):
    source_model, state, config_json = released
    source = write_released(tmp_path / "released", state, config_json)
    model, report = convert_spa3_vlm([source], tmp_path / "out", spa3r_config=reference["spa3r_config"])

    # Every kept tensor lands unchanged under its new name.
    ours = model.state_dict()
    assert set(ours) == set(source_model.state_dict())
    for key, value in source_model.state_dict().items():
        assert torch.equal(ours[key], value), key
    # The Spa3R part computes the reference latents (mode='predict' on the context views of the fixture).
    with torch.no_grad():
        latents = model.spa3r(reference["inputs"]["images"][:, [0, 2]]).latents
    assert (latents - reference["outputs"]["latents"]).abs().max() <= TOLERANCE

    dropped = report.dropped
    for prefix, reason in [
        ("decoder.", "Spa3R field decoder (pre-training only)"),
        ("heads.", "Spa3R field heads (pre-training only)"),
        ("depth_prob.", "Spa3R depth probe (pre-training only)"),
        ("pose_tokenizer.", "Spa3R camera-ray tokenizer of the decoder (pre-training only)"),
        ("dino.", "DINOv3 semantic teacher (pre-training only)"),
        ("camera_head.", "camera_head disabled in the config"),
        ("depth_head.", "depth_head disabled in the config"),
        ("point_head.", "point_head disabled in the config"),
    ]:
        assert dropped[reason] == sorted(SPA3R_REF + k for k in reference["state"] if k.startswith(prefix)), reason
    assert dropped["lm_head tied to the input embeddings"] == ["lm_head.weight"]

    out = tmp_path / "out"
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "configuration_spa3_vlm.py", "modeling_spa3_vlm.py", "modeling_spa3r.py"} <= files
    assert any(name.endswith(".safetensors") for name in files)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "spa3_vlm" and "AutoModelForImageTextToText" in saved["auto_map"]
    batch = make_batch([[(4, 4)], [(4, 6), (4, 4)]])
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    with torch.no_grad():
        expected = source_model(**batch).logits
        assert torch.equal(model(**batch).logits, expected)
        assert torch.equal(reloaded(**batch).logits, expected)


def test_conversion_is_strict(reference, released):
    _, state, config_json = released
    config = spa3_vlm_config_from_reference(config_json, reference["spa3r_config"])
    assert spa3_vlm_state_from_reference(state, config)  # the unmodified state converts

    def fails(changed, message):
        with pytest.raises(ValueError, match=message):
            spa3_vlm_state_from_reference(changed, config)

    fails({**state, "projector_extra.weight": torch.zeros(1)}, r"unknown tensor name\(s\) in the Spa3-VLM checkpoint: \['projector_extra.weight'\]")
    fails({**state, SPA3R_REF + "mystery.weight": torch.zeros(1)}, r"unknown Spa3R tensor name\(s\) \['geometry_encoder.spa3r.mystery.weight'\]")
    fails({k: v for k, v in state.items() if k != "geometry_gate.0.bias"}, r"missing 1 key\(s\): \['geometry_gate.0.bias'\]")
    fails({k: v for k, v in state.items() if k != SPA3R_REF + "encoder.norm.weight"}, r"missing 1 key\(s\): \['spa3r.encoder.norm.weight'\]")
    fails({**state, "ln.weight": torch.ones(32)}, r"shape mismatch: ln.weight \(32,\) vs \(64,\)")
    fails({**state, "lm_head.weight": state["lm_head.weight"] + 1}, "lm_head.weight differs from the input embeddings")


def lightning_checkpoint(path, state):
    torch.save({"epoch": 3, "global_step": 120, "state_dict": {"model." + k: v for k, v in state.items()}}, path)
    return path


def test_spa3r_lightning_checkpoint_on_a_qwen_checkpoint(tmp_path, reference):
    torch.manual_seed(1)
    qwen = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values())).eval()
    qwen.save_pretrained(tmp_path / "qwen")
    checkpoint = lightning_checkpoint(tmp_path / "spa3r.ckpt", reference["state"])
    model, report = combine_qwen_and_spa3r(tmp_path / "qwen", checkpoint, tmp_path / "out", spa3r_config=reference["spa3r_config"])
    batch = make_batch([[(4, 4)], [(4, 6)]])
    with torch.no_grad():
        expected = qwen(**qwen_inputs(batch)).logits
        assert torch.equal(model(**batch).logits, expected)  # a fresh adapter is the identity
        latents = model.spa3r(reference["inputs"]["images"][:, [0, 2]]).latents
    assert (latents - reference["outputs"]["latents"]).abs().max() <= TOLERANCE
    assert "DINOv3 semantic teacher (pre-training only)" in report.dropped
    assert not any(p.requires_grad for p in model.spa3r.parameters())
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)

    wrong = Spa3RConfig(**{**reference["spa3r_config"].to_dict(), "num_encoder_layers": 3})
    with pytest.raises(ValueError, match="do not match"):
        combine_qwen_and_spa3r(tmp_path / "qwen", checkpoint, spa3r_config=wrong)


def test_spa3r_lightning_checkpoint_on_a_qwen3_vl_checkpoint(tmp_path, reference):
    """The same conversion on Qwen3-VL: a strict load of every Qwen3-VL tensor (deepstack mergers included), an
    identity adapter, the reference latents, and a folder that reloads through the Auto class."""
    torch.manual_seed(2)
    qwen3 = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**qwen3_values())).eval()
    qwen3.save_pretrained(tmp_path / "qwen3")
    checkpoint = lightning_checkpoint(tmp_path / "spa3r.ckpt", reference["state"])
    model, _ = combine_qwen_and_spa3r(tmp_path / "qwen3", checkpoint, tmp_path / "out", spa3r_config=reference["spa3r_config"])
    assert type(model) is Spa3VLMQwen3ForConditionalGeneration and model.config.model_type == "spa3_vlm_qwen3"
    batch = make_batch([[(4, 4)], [(4, 6)]], patch_size=16)
    with torch.no_grad():
        expected = qwen3(**qwen_inputs(batch)).logits
        assert torch.equal(model(**batch).logits, expected)
        latents = model.spa3r(reference["inputs"]["images"][:, [0, 2]]).latents
        assert (latents - reference["outputs"]["latents"]).abs().max() <= TOLERANCE
        reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
        assert type(reloaded) is Spa3VLMQwen3ForConditionalGeneration
        assert torch.equal(reloaded(**batch).logits, expected)

    # A Qwen3-VL folder that lacks a tensor (here: a deepstack merger) is refused, not filled with random weights.
    weights = tmp_path / "qwen3" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if "deepstack_merger_list.0.linear_fc2" not in k}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"does not load whole into Spa3VLMQwen3ForConditionalGeneration: missing \['model.visual.deepstack_merger_list.0.linear_fc2"):
        combine_qwen_and_spa3r(tmp_path / "qwen3", checkpoint, spa3r_config=reference["spa3r_config"])


def test_command_line(tmp_path, capsys, reference, released):
    source_model, state, config_json = released
    source = write_released(tmp_path / "released", state, config_json)
    spa3r_json = tmp_path / "spa3r_config.json"
    reference["spa3r_config"].to_json_file(spa3r_json)
    batch = make_batch([[(4, 4)], [(4, 4)]])
    images = reference["inputs"]["images"][:, [0, 2]]

    assert conversion_main(["--spa3-vlm", str(source), "--out", str(tmp_path / "vlm"), "--spa3r-config", str(spa3r_json)]) == 0
    with torch.no_grad():
        assert torch.equal(AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm")(**batch).logits, source_model(**batch).logits)
    files = sorted(str(p) for p in source.glob("*.safetensors"))
    assert conversion_main(["--spa3-vlm", *files, "--out", str(tmp_path / "files")]) == 2
    assert "error: weight files were given without a folder: pass the checkpoint's config.json" in capsys.readouterr().err
    assert conversion_main(["--spa3r", str(tmp_path / "nothing.ckpt"), "--out", str(tmp_path / "none")]) == 2
    assert "error: checkpoint not found" in capsys.readouterr().err
    assert conversion_main(["--spa3-vlm", *files, "--config", str(source / "config.json"), "--out", str(tmp_path / "files"),
                            "--spa3r-config", str(spa3r_json), "--dtype", "bfloat16"]) == 0  # fmt: skip
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "files").model.language_model.embed_tokens.weight.dtype == torch.bfloat16

    checkpoint = lightning_checkpoint(tmp_path / "spa3r.ckpt", reference["state"])
    assert conversion_main(["--spa3r", str(checkpoint), "--out", str(tmp_path / "encoder"), "--spa3r-config", str(spa3r_json)]) == 0
    encoder = Spa3RModel.from_pretrained(tmp_path / "encoder")
    with torch.no_grad():
        assert (encoder(images).latents - reference["outputs"]["latents"]).abs().max() <= TOLERANCE

    field_config = tmp_path / "field_config.json"
    Spa3RConfig(hidden_size=64, num_attention_heads=4, num_queries=8, num_encoder_layers=2, num_decoder_layers=2,
                backbone_hidden_size=128, target_heads={"geo": 128, "sem": 48},
                vggt_config=reference["vggt_config"]).to_json_file(field_config)  # fmt: skip
    assert conversion_main(["--spa3r", str(checkpoint), "--out", str(tmp_path / "field"), "--field-model", "--spa3r-config", str(field_config)]) == 0
    field = Spa3RForFieldPrediction.from_pretrained(tmp_path / "field").eval()
    assert field.config.target_heads == {"geo": 128, "sem": 48} and field.spa3r.backbone.camera_head is not None
    with torch.no_grad():
        assert (field.spa3r(images).latents - reference["outputs"]["latents"]).abs().max() <= TOLERANCE

    torch.manual_seed(2)
    Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen_values())).save_pretrained(tmp_path / "qwen")
    args = ["--spa3r", str(checkpoint), "--qwen", str(tmp_path / "qwen"), "--out", str(tmp_path / "init"), "--spa3r-config", str(spa3r_json)]
    assert conversion_main(args) == 0
    initial = AutoModelForImageTextToText.from_pretrained(tmp_path / "init")
    assert isinstance(initial, Spa3VLMForConditionalGeneration) and torch.count_nonzero(initial.geometry_adaptor[-1].weight) == 0
    for out in ("vlm", "files", "encoder", "field", "init"):  # every output has a model card (tests/test_cards.py)
        assert "## Licences" in (tmp_path / out / "README.md").read_text()
    with pytest.raises(SystemExit):
        conversion_main(["--spa3-vlm", str(source), "--qwen", str(tmp_path / "qwen"), "--out", str(tmp_path / "bad")])
