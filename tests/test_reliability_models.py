"""Reliability, models: configs that make no sense, non-finite tensors and inputs a model cannot use are refused by
name at the public entry points (configs, ``from_pretrained`` kwargs, encoders, decoders, Spa3-VLM)."""

import pytest
import torch
from transformers import AutoConfig

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction, Spa3RModel, VGGTConfig
from spa3_vlm.configuration_spa3_vlm import Spa3VLMConfig, encoder_only_spa3r_config
from spa3_vlm.modeling_spa3_vlm import Spa3VLMForConditionalGeneration
from spa3_vlm.training.psfm import field_model_inputs
from spa3_vlm_testing import make_batch, qwen_values

NAN = float("nan")


@pytest.fixture(scope="module")
def tiny_config():
    return AutoConfig.from_pretrained("hub_configs/spa3r-tiny")


def images(batch=1, views=3, seed=0):
    return torch.rand(batch, views, 3, 56, 84, generator=torch.Generator().manual_seed(seed))


def cameras(batch=1, views=3):
    extrinsics = torch.eye(4).repeat(batch, views, 1, 1)
    extrinsics[:, 1:, 0, 3] = 0.5
    intrinsics = torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(batch, views, 1, 1)
    return {"extrinsics": extrinsics, "intrinsics": intrinsics}


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "config_class, field, value, message",
    [
        (Spa3RConfig, "num_encoder_layers", -1, r"num_encoder_layers must be an int >= 1, got -1"),
        (Spa3RConfig, "num_decoder_layers", 0, r"num_decoder_layers must be an int >= 1, got 0"),
        (Spa3RConfig, "hidden_size", -64, r"hidden_size must be an int >= 1, got -64"),
        (Spa3RConfig, "num_queries", 0, r"num_queries must be an int >= 1, got 0"),
        (Spa3RConfig, "num_attention_heads", 0, r"num_attention_heads must be an int >= 1, got 0"),
        (Spa3RConfig, "num_register_tokens", -1, r"num_register_tokens must be an int >= 0, got -1"),
        (Spa3RConfig, "mlp_ratio", -1.0, r"mlp_ratio must be a finite number > 0, got -1.0"),
        (Spa3RConfig, "mlp_ratio", NAN, r"mlp_ratio must be a finite number > 0, got nan"),
        (Spa3RConfig, "layer_norm_eps", -1.0, r"layer_norm_eps must be a finite number > 0"),
        (Spa3RConfig, "rope_theta", 0.0, r"rope_theta must be a finite number > 0"),
        (Spa3RConfig, "semantic_image_size", 0, r"semantic_image_size must be an int >= 1, got 0"),
        (Spa3RConfig, "patch_size", 0, r"patch_size must be an int >= 1, got 0"),
        (Spa3RConfig, "num_queries", 2.5, r"num_queries must be an int >= 1, got 2.5"),
        (Spa3RConfig, "num_queries", True, r"num_queries must be an int >= 1, got True"),
        (Spa3RConfig, "qk_norm", "yes", r"qk_norm must be True or False, got 'yes'"),
        (Spa3RConfig, "target_heads", {"geo": 2048, "sem": 0}, r"target_heads\['sem'\] must be an int >= 1, got 0"),
        (Spa3RConfig, "mask_ratio", "half", r"mask_ratio must be a finite number, got 'half'"),
        (Spa3RConfig, "vggt_name_or_path", "", r"vggt_name_or_path must be a Hub id or folder \(a non-empty str\) or None"),
        (Spa3RConfig, "semantic_teacher_config", ["dinov3"], r"semantic_teacher_config must be a transformers config dict"),
        (VGGTConfig, "image_size", 0, r"image_size must be an int >= 1, got 0"),
        (VGGTConfig, "image_size", 500, r"image_size \(500\) must be a multiple of patch_size \(14\)"),
        (VGGTConfig, "num_hidden_layers", 0, r"num_hidden_layers must be an int >= 1"),
        (VGGTConfig, "mlp_ratio", 0.0, r"mlp_ratio must be a finite number > 0, got 0.0"),
        (VGGTConfig, "layerscale_init", float("inf"), r"layerscale_init must be a finite number, got inf"),
        (VGGTConfig, "camera_num_iterations", 0, r"camera_num_iterations must be an int >= 1"),
        (VGGTConfig, "dpt_out_channels", [8, 16], r"dpt_out_channels must be 4 ints >= 1, got \[8, 16\]"),
        (VGGTConfig, "use_depth_head", 1, r"use_depth_head must be True or False, got 1"),
    ],
)
def test_configs_refuse_nonsense_fields_by_name(config_class, field, value, message):
    with pytest.raises(ValueError, match=rf"invalid {config_class.__name__}: .*{message}"):
        config_class(**{field: value})


def test_every_bad_field_is_named_in_one_error():
    with pytest.raises(ValueError) as error:
        Spa3RConfig(num_queries=0, mlp_ratio=-1.0, qk_norm=None)
    assert all(name in str(error.value) for name in ("num_queries", "mlp_ratio", "qk_norm"))


@pytest.mark.parametrize("folder", ["spa3r-tiny", "spa3r-tiny-synthrooms", "spa3r-base", "vggt-1b", "vggt-tiny-synthrooms"])
def test_from_pretrained_kwargs_are_validated_like_init(repo_root, folder):
    """transformers sets ``from_pretrained``'s kwargs after ``__init__``; a bad one must still be refused and a good
    one still applied."""
    path = repo_root / "hub_configs" / folder
    with pytest.raises(ValueError, match=r"hidden_size must be an int >= 1, got -5"):
        AutoConfig.from_pretrained(path, hidden_size=-5)
    config = AutoConfig.from_pretrained(path, num_register_tokens=2)
    assert config.num_register_tokens == 2
    config, unused = AutoConfig.from_pretrained(path, return_unused_kwargs=True, not_a_field=1)
    assert unused == {"not_a_field": 1}


def test_spa3_vlm_config_kwargs_are_validated_after_loading(tmp_path, repo_root):
    spa3r = encoder_only_spa3r_config(Spa3RConfig.from_json_file(repo_root / "hub_configs" / "spa3r-tiny" / "config.json"))
    Spa3VLMConfig.from_qwen(qwen_values(), spa3r_config=spa3r).save_pretrained(tmp_path)
    assert Spa3VLMConfig.from_pretrained(tmp_path, adapter_reduction=2).adapter_reduction == 2
    with pytest.raises(ValueError, match=r"adapter_reduction must be a positive int, got 0"):
        Spa3VLMConfig.from_pretrained(tmp_path, adapter_reduction=0)


# ---------------------------------------------------------------------------------------------- non-finite tensors


def test_non_finite_backbone_tokens_and_context_inputs_are_refused(tiny_config):
    model = Spa3RModel(tiny_config).eval()
    tokens = torch.randn(1, 2, 24, tiny_config.backbone_hidden_size)
    assert torch.isfinite(model.encode_tokens(tokens, (4, 6))).all()
    for bad in (NAN, float("inf")):
        broken = tokens.clone()
        broken[0, 1, 3, 5] = bad
        with pytest.raises(ValueError, match=r"context_tokens contains NaN or infinite values"):
            model.encode_tokens(broken, (4, 6))
    with pytest.raises(ValueError, match=r"context_tokens must be a floating-point tensor"):
        model.encode_tokens(tokens.long(), (4, 6))

    config = Spa3RConfig.from_dict({**tiny_config.to_dict(), "context_inputs": {"rgb": 3}})
    with_inputs = Spa3RModel(config).eval()
    rgb = torch.rand(1, 2, 24, 3)
    assert torch.isfinite(with_inputs.encode_tokens(tokens, (4, 6), context_inputs={"rgb": rgb})).all()
    rgb[0, 0, 0, 0] = NAN
    with pytest.raises(ValueError, match=r"context input 'rgb' contains NaN"):
        with_inputs.encode_tokens(tokens, (4, 6), context_inputs={"rgb": rgb})


def test_non_finite_latents_are_refused_before_decoding(tiny_config):
    config = Spa3RConfig.from_dict({**tiny_config.to_dict(), "pose_source": "dataset", "semantic_teacher_config": None})
    model = Spa3RForFieldPrediction(config).eval()
    latents = torch.randn(1, config.num_queries, config.hidden_size)
    with torch.no_grad():
        assert torch.isfinite(model.decode_field(latents, image_size=(56, 84), **cameras())["geo"]).all()
        latents[0, 0, 0] = NAN
        with pytest.raises(ValueError, match=r"latents contains NaN or infinite values"):
            model.decode_field(latents, image_size=(56, 84), **cameras())


@pytest.mark.parametrize(
    "make_target, message",
    [
        (lambda: torch.full((1, 3, 24, 3), NAN), r"field_targets\['rgb'\] contains NaN or infinite values"),
        (lambda: torch.full((1, 3, 24, 3), float("-inf")), r"field_targets\['rgb'\] contains NaN or infinite values"),
        (lambda: torch.zeros(1, 3, 24, 3, dtype=torch.long), r"field_targets\['rgb'\] must be a floating-point tensor"),
        (lambda: [[0.5, 0.5, 0.5]], r"field_targets\['rgb'\] must be a torch.Tensor"),
        (lambda: torch.rand(1, 2, 24, 3), r"field_targets\['rgb'\] must be \[B, V, N, C\] = \[1, 3, 24, C\]"),
        (lambda: torch.rand(1, 3, 20, 3), r"one row per patch of every view\), got \(1, 3, 20, 3\)"),
    ],
)
def test_bad_field_targets_are_refused_by_name(tiny_config, make_target, message):
    config = Spa3RConfig.from_dict(
        {**tiny_config.to_dict(), "pose_source": "dataset", "target_heads": {"geo": 128, "rgb": 3}, "semantic_teacher_config": None}
    )
    model = Spa3RForFieldPrediction(config).train()
    with torch.no_grad():
        good = model(images(), field_targets={"rgb": torch.rand(1, 3, 24, 3)}, **cameras())
        assert torch.isfinite(good.losses["rgb_l1"])
        with pytest.raises(ValueError, match=message):
            model(images(), field_targets={"rgb": make_target()}, **cameras())


# ---------------------------------------------------------------------------------------------- unusable inputs


def test_cameras_are_refused_where_a_model_would_ignore_them(tiny_config):
    encoder = Spa3RModel(tiny_config).eval()
    with torch.no_grad():
        assert torch.isfinite(encoder(images()).latents).all()
        with pytest.raises(ValueError, match=r"this encoder reads no cameras \(encoder_camera_encoding='none'"):
            encoder(images(), **cameras())
        with pytest.raises(ValueError, match=r"pass extrinsics and intrinsics together"):
            encoder(images(), intrinsics=cameras()["intrinsics"])

    backbone_poses = Spa3RConfig.from_dict({**tiny_config.to_dict(), "pose_source": "backbone", "semantic_teacher_config": None})
    model = Spa3RForFieldPrediction(backbone_poses).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"pose_source='backbone' takes every camera from the backbone's camera head"):
            model(images(), **cameras())
        with pytest.raises(ValueError, match=r"pass extrinsics and intrinsics together"):
            model(images(), extrinsics=cameras()["extrinsics"])
        # The training and evaluation code keep the cameras in the batch for the baselines and leave them out here.
        batch = {"pixel_values": images(), **cameras()}
        assert sorted(field_model_inputs(model, batch)) == ["pixel_values"]
        assert torch.isfinite(model(**field_model_inputs(model, batch)).predictions["geo"]).all()

    dataset_poses = Spa3RForFieldPrediction(
        Spa3RConfig.from_dict({**tiny_config.to_dict(), "pose_source": "dataset", "semantic_teacher_config": None})
    )
    assert field_model_inputs(dataset_poses, batch) is batch


# ---------------------------------------------------------------------------------------------- Spa3-VLM


@pytest.fixture(scope="module")
def vlm(repo_root):
    spa3r = encoder_only_spa3r_config(Spa3RConfig.from_json_file(repo_root / "hub_configs" / "spa3r-tiny" / "config.json"))
    torch.manual_seed(0)
    return Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_qwen(qwen_values(), spa3r_config=spa3r)).eval()


def test_spa3_vlm_refuses_non_finite_qwen_pixels_and_latents(vlm):
    batch = make_batch([[(4, 4)]])
    with torch.no_grad():
        assert torch.isfinite(vlm(**batch).logits).all()
        broken = {**batch, "pixel_values": batch["pixel_values"].clone()}
        broken["pixel_values"][3, 7] = NAN
        with pytest.raises(ValueError, match=r"pixel_values contains NaN or infinite values"):
            vlm(**broken)
        spa3r = vlm.config.spa3r_config
        latents = torch.randn(1, spa3r.num_queries, spa3r.hidden_size)
        without_frames = {k: v for k, v in batch.items() if k != "geometry_pixel_values"}
        assert torch.isfinite(vlm(**without_frames, spatial_latents=latents).logits).all()
        latents[0, 1, 2] = float("inf")
        with pytest.raises(ValueError, match=r"spatial_latents contains NaN or infinite values"):
            vlm(**without_frames, spatial_latents=latents)
