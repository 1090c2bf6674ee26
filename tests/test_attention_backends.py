"""Attention kernels the transformers way: ``attn_implementation`` ("eager" or "sdpa") reaches every attention layer
(VGGT, the Spa3R encoder and decoder, the Spa3-VLM adapter) through transformers' attention interface, and both
kernels give the same outputs."""

import json

import pytest
import torch
from spa3_vlm_testing import make_batch, qwen3_values, qwen_values
from transformers import PreTrainedModel

from spa3_vlm import (
    Spa3RConfig,
    Spa3RForFieldPrediction,
    Spa3RModel,
    Spa3VLMConfig,
    Spa3VLMForConditionalGeneration,
    Spa3VLMQwen3Config,
    Spa3VLMQwen3ForConditionalGeneration,
    VGGTConfig,
    VGGTModel,
)
from spa3_vlm.configuration_spa3_vlm import encoder_only_spa3r_config
from spa3_vlm.modeling_common import Attention
from spa3_vlm.modeling_spa3_vlm import GeometryCrossAttention

IMPLEMENTATIONS = ("eager", "sdpa")
# fp32: the two kernels differ only in summation order.
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def images(batch=2, views=4, height=56, width=84, seed=0):
    return torch.rand(batch, views, 3, height, width, generator=torch.Generator().manual_seed(seed))


def attention_choices(model) -> set:
    """The kernel every attention layer and every (sub)model config of ``model`` is set to use."""
    chosen = {m.config._attn_implementation for m in model.modules() if isinstance(m, (Attention, GeometryCrossAttention))}
    chosen |= {m.config._attn_implementation for m in model.modules() if isinstance(m, PreTrainedModel)}
    return chosen


def assert_close(actual, expected, what):
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), what
        for name in expected:
            assert_close(actual[name], expected[name], f"{what}[{name!r}]")
    elif isinstance(expected, (tuple, list)):
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{what}[{index}]")
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, **TOLERANCE, msg=lambda message: f"{what}: {message}")


def field_outputs(model):
    """Spa3R field model on a masked batch: masked VGGT pass, RoPE encoder, PRoPE decoder with pruned last rows."""
    with torch.no_grad():
        out = model(pixel_values=images(views=4), view_mask=torch.tensor([[False, True, False, True]] * 2))
    return {"loss": out.loss, "latents": out.latents, "predictions": out.predictions, "targets": out.targets}


# ---------------------------------------------------------------------------------------------- Spa3R


@pytest.fixture(scope="module")
def spa3r_dir(tmp_path_factory, repo_root):
    """A random field model of the tiny config (VGGT backbone and DINOv3 teacher included), saved."""
    folder = tmp_path_factory.mktemp("spa3r-attention")
    torch.manual_seed(0)
    Spa3RForFieldPrediction(Spa3RConfig.from_pretrained(repo_root / "hub_configs" / "spa3r-tiny")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def field_models(spa3r_dir):
    return {i: Spa3RForFieldPrediction.from_pretrained(spa3r_dir, attn_implementation=i).eval() for i in IMPLEMENTATIONS}


def test_spa3r_field_model_eager_equals_sdpa(field_models):
    for implementation, model in field_models.items():
        assert model.config._attn_implementation == implementation
        # Backbone, semantic teacher, encoder and decoder blocks all follow the choice.
        assert attention_choices(model) == {implementation}
        assert model.spa3r.backbone.config._attn_implementation == implementation
        assert model.semantic_teacher.config._attn_implementation == implementation
    eager, sdpa = (field_outputs(field_models[i]) for i in IMPLEMENTATIONS)
    assert_close(eager, sdpa, "field model")


def test_spa3r_encoder_eager_equals_sdpa(spa3r_dir):
    """The encoder class Spa3-VLM builds, loaded from the field model's folder."""
    latents = {}
    for implementation in IMPLEMENTATIONS:
        encoder = Spa3RModel.from_pretrained(spa3r_dir, attn_implementation=implementation).eval()
        assert attention_choices(encoder) == {implementation}
        with torch.no_grad():
            latents[implementation] = encoder(pixel_values=images(views=3)).latents
    assert_close(latents["eager"], latents["sdpa"], "latents")


def test_set_attn_implementation_switches_every_layer_and_back_exactly(spa3r_dir, field_models):
    model = Spa3RForFieldPrediction.from_pretrained(spa3r_dir).eval()
    assert attention_choices(model) == {"sdpa"}  # transformers' default
    before = field_outputs(model)
    model.set_attn_implementation("eager")
    assert attention_choices(model) == {"eager"}
    assert_close(field_outputs(model), field_outputs(field_models["eager"]), "switched to eager")
    model.set_attn_implementation("sdpa")
    assert attention_choices(model) == {"sdpa"}
    after = field_outputs(model)
    assert torch.equal(after["latents"], before["latents"]) and torch.equal(after["loss"], before["loss"])


def test_the_choice_is_given_at_load_time_and_not_saved(field_models, tmp_path):
    """transformers keeps the kernel out of config.json: a saved model loads with the default (SDPA) unless
    ``attn_implementation`` is given again, which then reaches every layer."""
    field_models["eager"].save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not any("attn_implementation" in key for key in saved)
    assert attention_choices(Spa3RForFieldPrediction.from_pretrained(tmp_path)) == {"sdpa"}
    reloaded = Spa3RForFieldPrediction.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert attention_choices(reloaded) == {"eager"}
    expected = field_outputs(field_models["eager"])
    assert torch.equal(field_outputs(reloaded)["latents"], expected["latents"])


@pytest.mark.parametrize(
    "implementation, message",
    [
        ("flex_attention", "does not support an attention implementation through torch's flex_attention"),
        ("bogus", 'Specified `attn_implementation="bogus"` is not supported'),
    ],
)
def test_unsupported_implementations_raise_transformers_errors(spa3r_dir, implementation, message):
    with pytest.raises(ValueError, match=message):
        Spa3RModel.from_pretrained(spa3r_dir, attn_implementation=implementation)
    model = Spa3RModel.from_pretrained(spa3r_dir)
    with pytest.raises(ValueError, match=message):
        model.set_attn_implementation(implementation)
    assert attention_choices(model) == {"sdpa"}  # unchanged


# ---------------------------------------------------------------------------------------------- VGGT


@pytest.fixture(scope="module")
def dinov2_vggt_dir(tmp_path_factory):
    """A random tiny VGGT whose patch embedder is the DINOv2 ViT (its blocks attend too), saved."""
    config = VGGTConfig(
        image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        patch_embed_type="dinov2_vitl14_reg", patch_embed_num_layers=2, patch_embed_num_heads=2,
        camera_trunk_depth=1, camera_num_heads=2, dpt_features=8, dpt_out_channels=[4, 8, 8, 8],
        dpt_intermediate_layers=[0, 1, 1, 1], use_point_head=True,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("vggt-dinov2")
    torch.manual_seed(0)
    VGGTModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("source", ["vggt-tiny-synthrooms", "dinov2"])
def test_vggt_eager_equals_sdpa(source, repo_root, dinov2_vggt_dir):
    """The shipped tiny geometry teacher (trained weights) and a DINOv2-embedder VGGT, full and masked pass."""
    folder = repo_root / "hub_configs" / "vggt-tiny-synthrooms" if source != "dinov2" else dinov2_vggt_dir
    outputs = {}
    for implementation in IMPLEMENTATIONS:
        model = VGGTModel.from_pretrained(folder, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation and attention_choices(model) == {implementation}
        results = []
        for view_mask in (None, torch.tensor([[False, True, False]] * 2)):
            with torch.no_grad():
                out = model(images(views=3), view_mask=view_mask, compute_points=True)
            results.append([out.aggregated_tokens, out.pose_enc, out.depth, out.world_points])
        outputs[implementation] = results
    assert_close(outputs["eager"], outputs["sdpa"], f"VGGT ({source})")


# ---------------------------------------------------------------------------------------------- Spa3-VLM


VLM_CLASSES = {
    "qwen2.5-vl": (Spa3VLMForConditionalGeneration, Spa3VLMConfig, qwen_values, 14),
    "qwen3-vl": (Spa3VLMQwen3ForConditionalGeneration, Spa3VLMQwen3Config, qwen3_values, 16),
}


@pytest.fixture(scope="module", params=sorted(VLM_CLASSES))
def vlm(request, tmp_path_factory, repo_root):
    """A tiny random Spa3-VLM with a non-zero adaptor (else the adapter would not show), saved; its class and patch."""
    model_class, config_class, values, patch = VLM_CLASSES[request.param]
    spa3r_config = encoder_only_spa3r_config(Spa3RConfig.from_pretrained(repo_root / "hub_configs" / "spa3r-tiny"))
    torch.manual_seed(0)
    model = model_class(config_class.from_qwen(values(), spa3r_config=spa3r_config)).eval()
    with torch.no_grad():
        model.geometry_adaptor[-1].weight.normal_(0, 0.5)
        model.geometry_adaptor[-1].bias.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp(f"spa3-vlm-{request.param}")
    model.save_pretrained(folder)
    return model_class, folder, patch


def test_spa3_vlm_eager_equals_sdpa(vlm):
    model_class, folder, patch = vlm
    batch = make_batch([[(4, 4)], [(4, 4), (2, 4)]], patch_size=patch, text_lengths=[3, 0])
    valid = batch["attention_mask"].bool()
    generator = torch.Generator().manual_seed(1)
    queries, context = torch.randn(2, 7, 64, generator=generator), torch.randn(2, 5, 64, generator=generator)
    adapter, logits = {}, {}
    for implementation in IMPLEMENTATIONS:
        model = model_class.from_pretrained(folder, attn_implementation=implementation).eval()
        config = model.config
        assert config._attn_implementation == implementation
        # The adapter, the Spa3R encoder, its VGGT backbone and Qwen's own towers.
        subconfigs = [config.spa3r_config, config.spa3r_config.vggt_config, config.text_config, config.vision_config]
        assert {c._attn_implementation for c in subconfigs} == {implementation}
        assert attention_choices(model) == {implementation}
        with torch.no_grad():
            adapter[implementation] = model.geom_cross_attention(queries, context)
            logits[implementation] = model(**batch).logits[valid]
    assert_close(adapter["eager"], adapter["sdpa"], "adapter")
    assert_close(logits["eager"], logits["sdpa"], "logits")


def test_spa3_vlm_set_attn_implementation_reaches_the_adapter_and_spa3r(vlm):
    model_class, folder, _ = vlm
    model = model_class.from_pretrained(folder).eval()
    assert attention_choices(model) == {"sdpa"}
    model.set_attn_implementation("eager")
    assert attention_choices(model) == {"eager"}
    assert model.spa3r.backbone.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="does not support an attention implementation through torch's flex_attention"):
        model_class.from_pretrained(folder, attn_implementation="flex_attention")


def test_a_standalone_block_uses_sdpa():
    """A block built without a model config (tests, scripts) keeps the models' default kernel."""
    import torch.nn.functional as F

    attention = Attention(32, 2)
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(0))
    q, k, v = attention.qkv(x).reshape(2, 6, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
    expected = attention.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 6, 32))
    assert torch.equal(attention(x), expected)
