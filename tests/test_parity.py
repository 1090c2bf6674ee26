"""Numerical parity with the reference implementations (tests/fixtures, see its README)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from spa3_vlm.conversion import spa3r_from_reference, vggt_from_reference
from spa3_vlm.modeling_geometry import camera_rays
from spa3_vlm.modeling_spa3r import encoder_positions

# The fixtures' contract is 1e-5 absolute for unit-scale tensors. Values in pixels (focal lengths of ~150) carry
# float32 rounding of ~1e-5 themselves, so the bound also grows by one part per million of the expected magnitude.
TOLERANCE = 1e-5
RELATIVE_TOLERANCE = 1e-6


def assert_matches(actual, expected, name=""):
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=TOLERANCE, rtol=RELATIVE_TOLERANCE, msg=lambda m: f"{name}: {m}"
    )


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def vggt_fixture(fixtures_dir):
    folder = fixtures_dir / "vggt_tiny"
    config = json.loads((folder / "config.json").read_text())
    reference_args = {k: config[k] for k in ("vggt", "aggregator", "camera_head", "depth_head", "point_head")}
    return (
        reference_args,
        load_file(folder / "model.safetensors"),
        load_file(folder / "inputs.safetensors"),
        load_file(folder / "outputs.safetensors"),
    )


@pytest.fixture(scope="module")
def spa3r_fixture(fixtures_dir):
    folder = fixtures_dir / "spa3r_tiny"
    config = json.loads((folder / "config.json").read_text())
    return (
        config,
        load_file(folder / "model.safetensors"),
        load_file(folder / "inputs.safetensors"),
        load_file(folder / "outputs.safetensors"),
    )


def test_vggt_matches_reference(vggt_fixture):
    args, weights, inputs, reference = vggt_fixture
    model = vggt_from_reference(weights, **args)
    assert model.config.global_qk_norm == "layernorm"  # biases present -> VGGT-1B's LayerNorm
    with torch.no_grad():
        out = model(inputs["images"], compute_points=True)
    assert len(out.aggregated_tokens) == 5 and out.patch_start_idx == 5
    for i in range(5):
        assert_matches(out.aggregated_tokens[i], reference[f"aggregated_tokens.{i}"], f"aggregated_tokens.{i}")
    assert_matches(torch.stack(out.pose_enc_list), reference["pose_enc_iters"], "pose_enc_iters")
    for name in ("pose_enc", "extrinsics", "intrinsics", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert_matches(getattr(out, name), reference[name], name)


def test_spa3r_trained_parts_match_reference(spa3r_fixture):
    config, weights, inputs, reference = spa3r_fixture
    model, report = spa3r_from_reference(weights, return_report=True, **config["spa3r_constructor"])
    assert not report.dropped
    assert model.config.masking_mode == "two_pass" and model.config.target_heads == {"geo": 128, "sem": 48}
    grid = (4, 5)
    with torch.no_grad():
        projected = model.spa3r.projection(inputs["f_ctx"])
        latents = model.spa3r.encode_tokens(inputs["f_ctx"], grid)
        field = model.decode_field(latents, reference["extrinsics"], reference["intrinsics"], (56, 70))
        rays = camera_rays(reference["intrinsics_patch"], grid)
        pose_tokens = model.pose_tokenizer(rays.flatten(-2).transpose(-1, -2).flatten(0, 1))
    assert_matches(projected, reference["projected_ctx"])
    # Our positions include the 4 registers and are already shifted by +1 (the reference shifts inside).
    expected_positions = torch.cat([torch.zeros(4, 2, dtype=torch.long), reference["encoder_pos"][0] + 1])
    assert torch.equal(encoder_positions(4 + 8, grid, 2), expected_positions)
    assert_matches(latents, reference["latents"])
    assert_matches(rays, reference["camera_rays"])
    assert_matches(pose_tokens, reference["pose_tokens"])
    assert_matches(field["hidden_states"], reference["decoder_out"])
    assert_matches(field["geo"], reference["pred_geo"])
    assert_matches(field["sem"], reference["pred_sem"])
    assert_matches(field["depth"], reference["pred_depth_prob"])

    targets = {"geo": inputs["target_geo"], "sem": inputs["target_sem"], "depth": inputs["target_depth"]}
    losses = model.field_losses(field, targets, ["geo", "sem"])
    names = {"geo_l1": "geo/l1", "geo_cos": "geo/cos", "sem_l1": "sem/l1", "sem_cos": "sem/cos", "depth_probe": "depth_prob"}
    assert set(losses) == set(names)
    for ours, theirs in names.items():
        assert abs(losses[ours].item() - reference[f"loss.{theirs}"].item()) <= TOLERANCE, ours


def test_spa3r_end_to_end_from_images(spa3r_fixture, vggt_fixture):
    """Images -> Spa3R's VGGT variant (RMSNorm global q/k norms) -> teacher tensors, latents and losses."""
    config, weights, inputs, reference = spa3r_fixture
    vggt_args, vggt_weights, _, _ = vggt_fixture
    state = dict(weights)
    state.update(vggt_weights)
    vggt_config = vggt_from_reference(vggt_weights, global_qk_norm="rmsnorm", **vggt_args).config
    model, report = spa3r_from_reference(state, vggt_config=vggt_config, return_report=True, **config["spa3r_constructor"])
    assert sorted(report.dropped["q/k LayerNorm biases of the global blocks (RMSNorm variant)"]) == sorted(
        config["frozen_vggt"]["dropped_keys"]
    )
    images = inputs["images"]
    with torch.no_grad():
        targets = model.teacher_targets(images, inputs["view_mask"])
        assert_matches(targets["context_tokens"], inputs["f_ctx"])
        assert_matches(targets["geo"], inputs["target_geo"])
        assert_matches(targets["depth"], inputs["target_depth"])
        assert_matches(targets["extrinsics"], reference["extrinsics"][:, :, :3])
        assert_matches(targets["intrinsics"], reference["intrinsics"])
        # mode='predict' of the reference on the context views gives the same latents.
        assert_matches(model.spa3r(images[:, [0, 2]]).latents, reference["latents"])
        out = model(images, view_mask=inputs["view_mask"], field_targets={"sem": inputs["target_sem"]})
    assert_matches(out.latents, reference["latents"])
    assert_matches(out.predictions["geo"], reference["pred_geo"])
    expected_total = sum(reference[k] for k in reference if k.startswith("loss."))
    assert abs(out.loss.item() - expected_total.item()) <= 5 * TOLERANCE


def test_masked_pass_matches_reference_and_context_only_pass(spa3r_fixture, vggt_fixture):
    _, _, inputs, reference = spa3r_fixture
    args, weights, _, _ = vggt_fixture
    model = vggt_from_reference(weights, global_qk_norm="rmsnorm", **args)
    images, view_mask = inputs["images"], inputs["view_mask"]
    with torch.no_grad():
        masked = model(images, view_mask=view_mask, compute_cameras=False, compute_depth=False)
        context_only = model(images[:, [0, 2]], compute_cameras=False, compute_depth=False)
    assert_matches(masked.aggregated_tokens[-1], reference["masked_vggt_asym_tokens_last"])
    for layer in range(5):
        assert max_diff(masked.aggregated_tokens[layer][:, [0, 2]], context_only.aggregated_tokens[layer]) <= 1e-6


def test_tolerance_catches_wrong_variants(vggt_fixture):
    """The bound is tight enough to reject a wrong q/k-norm variant and a focal length off by 1e-4 (relative)."""
    args, weights, inputs, reference = vggt_fixture
    wrong = vggt_from_reference(weights, global_qk_norm="rmsnorm", **args)  # drops the LayerNorm biases
    with torch.no_grad():
        out = wrong(inputs["images"])
    with pytest.raises(AssertionError, match="aggregated_tokens.4"):
        assert_matches(out.aggregated_tokens[4], reference["aggregated_tokens.4"], "aggregated_tokens.4")
    with pytest.raises(AssertionError, match="intrinsics"):
        assert_matches(reference["intrinsics"] * (1 + 1e-4), reference["intrinsics"], "intrinsics")
    assert_matches(reference["intrinsics"] * (1 + 2e-7), reference["intrinsics"], "intrinsics")  # rounding passes
