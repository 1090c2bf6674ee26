"""VGGT DPT head: checkpoint-compatible names/shapes, parity with the vggt_tiny fixture, chunking,
other image sizes, activations, position embedding and input validation."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from spa3_vlm import modeling_dpt
from spa3_vlm.modeling_dpt import (
    DPTHead,
    activate_head,
    add_uv_position_embedding,
    create_uv_grid,
    interpolate_bilinear,
    position_grid_to_embed,
)

PATCH_START_IDX = 5
# head prefix -> (VGGT-1B constructor kwargs, fixture prediction name, fixture confidence name)
HEADS = {
    "depth_head": (dict(output_dim=2, activation="exp"), "depth", "depth_conf"),
    "point_head": (dict(output_dim=4, activation="inv_log"), "world_points", "world_points_conf"),
}


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    folder = fixtures_dir / "vggt_tiny"
    return {
        "config": json.loads((folder / "config.json").read_text()),
        "weights": load_file(str(folder / "model.safetensors")),
        "inputs": load_file(str(folder / "inputs.safetensors")),
        "outputs": load_file(str(folder / "outputs.safetensors")),
    }


def _tiny_head(tiny, prefix: str) -> DPTHead:
    kwargs = {k: v for k, v in tiny["config"][prefix].items() if k != "feature_only"}
    assert tiny["config"][prefix]["feature_only"] is False
    head = DPTHead(**kwargs).eval()
    state = {k[len(prefix) + 1 :]: v for k, v in tiny["weights"].items() if k.startswith(prefix + ".")}
    head.load_state_dict(state, strict=True)
    return head


def _tiny_tokens(tiny):
    num_layers = tiny["config"]["num_aggregator_outputs"]
    return [tiny["outputs"][f"aggregated_tokens.{i}"] for i in range(num_layers)]


# ------------------------------------------------------------------------------------------------
# Checkpoint compatibility
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", sorted(HEADS))
def test_state_dict_matches_vggt_1b(fixtures_dir, prefix):
    keys = json.loads((fixtures_dir / "vggt_1b_keys.json").read_text())["tensors"]
    expected = [
        (t["name"][len(prefix) + 1 :], t["shape"]) for t in keys if t["name"].startswith(prefix + ".")
    ]
    assert len(expected) == 62

    with torch.device("meta"):
        head = DPTHead(dim_in=2048, **HEADS[prefix][0])
    got = [(name, list(t.shape)) for name, t in head.state_dict().items()]

    assert dict(got) == dict(expected)
    assert got == expected  # same order too, so saved files list tensors like the reference
    assert "scratch.refinenet4.resConfUnit1.conv1.weight" not in dict(got)
    assert all(t.dtype == torch.float32 for t in head.state_dict().values())


# ------------------------------------------------------------------------------------------------
# Parity with the reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", sorted(HEADS))
def test_parity_with_vggt_tiny(tiny, prefix):
    head = _tiny_head(tiny, prefix)
    _, pred_name, conf_name = HEADS[prefix]
    tokens = _tiny_tokens(tiny)
    tokens_before = [t.clone() for t in tokens]
    with torch.no_grad():
        preds, conf = head(tokens, tiny["inputs"]["images"], PATCH_START_IDX)

    expected_preds, expected_conf = tiny["outputs"][pred_name], tiny["outputs"][conf_name]
    assert preds.shape == expected_preds.shape and conf.shape == expected_conf.shape
    assert (preds - expected_preds).abs().max().item() <= 1e-5
    assert (conf - expected_conf).abs().max().item() <= 1e-5
    # The reference's in-place ReLUs must not leak into the caller's tensors here.
    assert all(torch.equal(a, b) for a, b in zip(tokens, tokens_before))


def test_parity_in_float64(tiny):
    head = _tiny_head(tiny, "point_head").double()
    tokens = [t.double() for t in _tiny_tokens(tiny)]
    with torch.no_grad():
        preds, conf = head(tokens, tiny["inputs"]["images"].double(), PATCH_START_IDX)
    assert preds.dtype == conf.dtype == torch.float64
    assert (preds - tiny["outputs"]["world_points"].double()).abs().max().item() <= 1e-5
    assert (conf - tiny["outputs"]["world_points_conf"].double()).abs().max().item() <= 1e-5


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_equals_unchunked(tiny, chunk):
    head = _tiny_head(tiny, "depth_head")
    tokens, images = _tiny_tokens(tiny), tiny["inputs"]["images"]
    with torch.no_grad():
        preds_full, conf_full = head(tokens, images, PATCH_START_IDX, frames_chunk_size=images.shape[1])
        preds_chunk, conf_chunk = head(tokens, images, PATCH_START_IDX, frames_chunk_size=chunk)
        head.frames_chunk_size = None
        preds_none, conf_none = head(tokens, images, PATCH_START_IDX)
    torch.testing.assert_close(preds_chunk, preds_full, rtol=0, atol=1e-6)
    torch.testing.assert_close(conf_chunk, conf_full, rtol=0, atol=1e-6)
    assert torch.equal(preds_none, preds_full) and torch.equal(conf_none, conf_full)


# ------------------------------------------------------------------------------------------------
# Other sizes
# ------------------------------------------------------------------------------------------------


def _random_tokens(batch, views, grid_h, grid_w, dim, layers=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, views, PATCH_START_IDX + grid_h * grid_w, dim)
    return [torch.randn(shape, generator=gen) for _ in range(layers)]


@pytest.mark.parametrize("prefix", sorted(HEADS))
def test_other_image_size_and_view_count(tiny, prefix):
    head = _tiny_head(tiny, prefix)
    batch, views, height, width = 2, 2, 42, 84
    tokens = _random_tokens(batch, views, height // 14, width // 14, 128)
    images = torch.rand(batch, views, 3, height, width)
    with torch.no_grad():
        preds, conf = head(tokens, images, PATCH_START_IDX, frames_chunk_size=1)
        # Each sample is decoded on its own: sample 1 alone gives the same maps.
        preds_1, conf_1 = head([t[1:] for t in tokens], images[1:], PATCH_START_IDX)

    out_dim = HEADS[prefix][0]["output_dim"] - 1
    assert preds.shape == (batch, views, height, width, out_dim)
    assert conf.shape == (batch, views, height, width)
    assert torch.isfinite(preds).all() and (conf > 1).all()  # expp1 confidence is > 1
    if prefix == "depth_head":
        assert (preds > 0).all()  # exp activation
    torch.testing.assert_close(preds_1, preds[1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(conf_1, conf[1:], rtol=0, atol=1e-6)


def test_down_ratio_halves_output(tiny):
    kwargs = {k: v for k, v in tiny["config"]["depth_head"].items() if k != "feature_only"}
    kwargs["down_ratio"] = 2
    head = DPTHead(**kwargs).eval()
    with torch.no_grad():
        preds, conf = head(_tiny_tokens(tiny), tiny["inputs"]["images"], PATCH_START_IDX)
    assert preds.shape == (1, 3, 28, 35, 1) and conf.shape == (1, 3, 28, 35)


def test_autocast_bfloat16_runs_and_stays_close(tiny):
    head = _tiny_head(tiny, "point_head")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds, conf = head(_tiny_tokens(tiny), tiny["inputs"]["images"], PATCH_START_IDX)
    assert preds.dtype == torch.bfloat16
    assert (preds.float() - tiny["outputs"]["world_points"]).abs().max().item() < 0.02
    assert (conf.float() - tiny["outputs"]["world_points_conf"]).abs().max().item() < 0.05


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def test_uv_grid_layout_and_extent():
    grid = create_uv_grid(5, 4, aspect_ratio=70 / 56, dtype=torch.float64)
    assert grid.shape == (4, 5, 2)
    diagonal = math.sqrt((70 / 56) ** 2 + 1)
    span_x, span_y = (70 / 56) / diagonal, 1 / diagonal
    assert grid[0, 0].tolist() == pytest.approx([-span_x * 4 / 5, -span_y * 3 / 4], abs=1e-12)
    assert grid[-1, -1].tolist() == pytest.approx([span_x * 4 / 5, span_y * 3 / 4], abs=1e-12)
    assert torch.equal(grid[0, :, 0], grid[3, :, 0])  # u varies along the width only
    assert torch.equal(grid[:, 0, 1], grid[:, 4, 1])  # v varies along the height only


def test_position_embedding_channel_layout():
    grid = create_uv_grid(3, 2, dtype=torch.float64)
    embed = position_grid_to_embed(grid, 8)
    assert embed.shape == (2, 3, 8) and embed.dtype == torch.float64
    u, v = grid[1, 2].tolist()
    freqs = [1.0, 100.0 ** -0.5]
    expected = [math.sin(u * f) for f in freqs] + [math.cos(u * f) for f in freqs]
    expected += [math.sin(v * f) for f in freqs] + [math.cos(v * f) for f in freqs]
    assert embed[1, 2].tolist() == pytest.approx(expected, abs=1e-12)


def test_position_embedding_follows_feature_dtype():
    x = torch.zeros(2, 16, 4, 5)
    ref = add_uv_position_embedding(x, image_width=70, image_height=56)
    low = add_uv_position_embedding(x.to(torch.bfloat16), image_width=70, image_height=56)
    assert ref.dtype == torch.float32 and low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=2e-3)
    assert ref.abs().max().item() <= 0.1 + 1e-7  # ratio 0.1 times sin/cos
    assert torch.equal(ref[0], ref[1])


def test_activations():
    raw = torch.tensor([-1.0, 0.0, 2.0, 0.5]).view(1, 4, 1, 1)
    preds, conf = activate_head(raw, activation="inv_log", conf_activation="expp1")
    assert preds.shape == (1, 1, 1, 3) and conf.shape == (1, 1, 1)
    assert preds.flatten().tolist() == pytest.approx([-(math.e - 1), 0.0, math.e**2 - 1])
    assert conf.item() == pytest.approx(1 + math.exp(0.5))

    preds, conf = activate_head(raw, activation="exp", conf_activation="expp0")
    assert preds.flatten().tolist() == pytest.approx([math.exp(-1), 1.0, math.exp(2)])
    assert conf.item() == pytest.approx(math.exp(0.5))

    preds, _ = activate_head(raw, activation="norm_exp")
    length = math.sqrt(5)
    radius = math.expm1(length) / length
    assert preds.flatten().tolist() == pytest.approx([-radius, 0.0, 2 * radius])

    preds, _ = activate_head(raw, activation="relu", conf_activation="sigmoid")
    assert preds.flatten().tolist() == [0.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="Unknown activation 'softplus'"):
        activate_head(raw, activation="softplus")
    with pytest.raises(ValueError, match="Unknown conf_activation 'exp'"):
        activate_head(raw, conf_activation="exp")


def test_interpolate_chunks_huge_inputs_with_same_result(monkeypatch):
    x = torch.randn(5, 3, 4, 6)
    expected = F.interpolate(x, size=(9, 13), mode="bilinear", align_corners=True)
    calls = []
    real_interpolate = F.interpolate

    def counting_interpolate(inp, *args, **kwargs):
        calls.append(inp.shape[0])
        return real_interpolate(inp, *args, **kwargs)

    monkeypatch.setattr(modeling_dpt.F, "interpolate", counting_interpolate)
    monkeypatch.setattr(modeling_dpt, "INTERPOLATE_MAX_ELEMENTS", 3 * 9 * 13 * 2)  # 2 samples' worth
    out = interpolate_bilinear(x, (9, 13))
    assert calls == [2, 2, 1]  # 5 // 2 + 1 = 3 chunks
    assert torch.equal(out, expected)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(tiny):
    head = _tiny_head(tiny, "depth_head")
    tokens, images = _tiny_tokens(tiny), tiny["inputs"]["images"]

    too_few = r"aggregated_tokens has 4 entries, but intermediate_layer_idx=\[0, 1, 3, 4\] needs at least 5"
    with pytest.raises(ValueError, match=too_few):
        head(tokens[:4], images, PATCH_START_IDX)
    with pytest.raises(ValueError, match=r"\(H, W\) = \(56, 71\) must be a multiple of patch_size=14"):
        head(tokens, torch.zeros(1, 3, 3, 56, 71), PATCH_START_IDX)
    wrong_count = r"aggregated_tokens\[0\] has shape \(1, 3, 25, 128\), expected .* \(1, 3, 29, 128\)"
    with pytest.raises(ValueError, match=wrong_count):
        head(tokens, torch.zeros(1, 3, 3, 56, 84), PATCH_START_IDX)
    with pytest.raises(ValueError, match=r"has shape \(1, 3, 25, 128\), expected .* \(1, 3, 24, 128\)"):
        head(tokens, images, 4)
    with pytest.raises(ValueError, match=r"expected .* \(1, 2, 25, 128\)"):
        head(tokens, images[:, :2], PATCH_START_IDX)
    with pytest.raises(ValueError, match=r"images must be \[B, S, 3, H, W\], got shape \(3, 3, 56, 70\)"):
        head(tokens, images[0], PATCH_START_IDX)
    with pytest.raises(ValueError, match="frames_chunk_size must be a positive int or None, got 0"):
        head(tokens, images, PATCH_START_IDX, frames_chunk_size=0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="Unknown activation 'tanh'"):
        DPTHead(64, activation="tanh")
    with pytest.raises(ValueError, match="Unknown conf_activation 'relu'"):
        DPTHead(64, conf_activation="relu")
    with pytest.raises(ValueError, match="out_channels must have 4 entries"):
        DPTHead(64, out_channels=(16, 32, 64))
    with pytest.raises(ValueError, match="divisible by 4"):
        DPTHead(64, features=32, out_channels=(18, 32, 64, 64))
    with pytest.raises(ValueError, match="output_dim must be >= 2"):
        DPTHead(64, output_dim=1)
