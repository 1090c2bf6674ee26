"""VGGT backbone: checkpoint layout, masked pass, conversion and input checks."""

import json
import logging

import pytest
import torch

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction, VGGTConfig, VGGTModel
from spa3_vlm.conversion import load_reference_checkpoint, vggt_from_reference
from spa3_vlm.conversion.reference import SPA3R_RENAMES


# Tracking-head sizes for tiny_vggt_config (the converter test maps them from the reference's TrackHead names).
TINY_TRACK = dict(
    use_track_head=True, track_features=8, track_num_iterations=2, track_corr_levels=2, track_corr_radius=1,
    track_hidden_size=16, track_num_attention_heads=8, track_depth=6, track_num_virtual_tracks=64,
)  # fmt: skip


def tiny_vggt_config(**overrides):
    args = dict(
        image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, patch_embed_type="conv",
        camera_trunk_depth=1, camera_num_heads=2, dpt_features=8, dpt_out_channels=[4, 8, 8, 8], dpt_intermediate_layers=[0, 1, 1, 2],
    )  # fmt: skip
    args.update(overrides)
    return VGGTConfig(**args)


def test_state_dict_matches_vggt_1b_release(fixtures_dir, repo_root):
    """Every released tensor name and shape, tracking head included, in the release's order (meta device)."""
    released = json.loads((fixtures_dir / "vggt_1b_keys.json").read_text())
    config = VGGTConfig.from_pretrained(repo_root / "hub_configs" / "vggt-1b")
    assert config.use_track_head and not VGGTConfig().use_track_head  # Spa3R configs keep building none
    with torch.device("meta"):
        model = VGGTModel(config)
    ours = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    assert ours == [(t["name"], t["shape"]) for t in released["tensors"]]
    assert len(ours) == released["num_tensors"] == 1797
    assert sum(p.numel() for p in model.parameters()) == released["num_elements"]


def test_spa3r_base_layout_matches_reference_spa3r(fixtures_dir):
    """The converter's renaming maps every full-size reference Spa3R tensor onto spa3r-base, shapes included."""
    keys = json.loads((fixtures_dir / "spa3r_full_keys.json").read_text())
    base = Spa3RConfig.from_pretrained("hub_configs/spa3r-base")
    base.semantic_teacher_config = None  # the torch.hub DINOv3 is not part of the listed keys
    with torch.device("meta"):
        model = Spa3RForFieldPrediction(base)
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}

    def rename(name):
        for source, target in SPA3R_RENAMES.items():
            if name.startswith(source):
                return target + name[len(source) :]
        return "spa3r.backbone." + name

    trained, frozen = keys["trained"]["tensors"], keys["frozen_vggt"]["tensors"]
    # spa3r-base builds no point head (Spa3R never uses it); the converter drops it with a report.
    theirs = {rename(t["name"]): t["shape"] for t in trained + frozen if not t["name"].startswith("point_head.")}
    assert ours == theirs
    trained_numel = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("spa3r.backbone."))
    assert trained_numel == keys["trained"]["num_elements"] == 103_368_961
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trained_numel


@pytest.mark.parametrize("views,context", [(4, [0, 2]), (5, [0, 1, 4]), (3, [0])])
def test_masked_pass_context_tokens_equal_context_only_pass(views, context):
    torch.manual_seed(views)
    model = VGGTModel(tiny_vggt_config(global_qk_norm="rmsnorm")).eval()
    with torch.no_grad():  # the default init (LayerScale 0.01) makes cross-view effects too small to see
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.fill_(0.5)
    images = torch.rand(2, views, 3, 28, 42)
    view_mask = torch.ones(2, views, dtype=torch.bool)
    view_mask[:, context] = False
    with torch.no_grad():
        masked = model(images, view_mask=view_mask, compute_depth=False)
        alone = model(images[:, context], compute_depth=False)
        full = model(images, compute_depth=False)
    for layer in range(3):
        assert torch.allclose(masked.aggregated_tokens[layer][:, context], alone.aggregated_tokens[layer], atol=1e-5)
    targets = [v for v in range(views) if v not in context]
    # Target views see every view, but through context tokens of the context-only pass, so they differ
    # from an unmasked pass (documented in the README); frame-block halves of layer 0 are still identical.
    assert not torch.allclose(masked.last_patch_tokens[:, targets], full.last_patch_tokens[:, targets], atol=1e-4)
    hidden = model.config.hidden_size
    assert torch.allclose(masked.aggregated_tokens[0][..., :hidden], full.aggregated_tokens[0][..., :hidden], atol=1e-6)


def test_view_mask_errors():
    model = VGGTModel(tiny_vggt_config()).eval()
    images = torch.rand(2, 3, 3, 28, 28)
    with pytest.raises(ValueError, match="view 0 is the reference frame"):
        model(images, view_mask=torch.tensor([[True, False, False], [False, True, False]]))
    with pytest.raises(ValueError, match="same number of context views"):
        model(images, view_mask=torch.tensor([[False, True, False], [False, True, True]]))
    with pytest.raises(ValueError, match=r"view_mask must have shape \[B, S\]"):
        model(images, view_mask=torch.zeros(2, 2, dtype=torch.bool))


@pytest.mark.parametrize(
    "images,message",
    [
        (torch.rand(3, 3, 28, 28), r"\[B, S, 3, H, W\] \(5 dims\)"),
        (torch.rand(1, 2, 4, 28, 28), "3 \\(RGB\\) channels"),
        (torch.rand(1, 0, 3, 28, 28), "at least one sample and one view"),
        (torch.rand(1, 2, 3, 30, 28), "multiples of the patch size 14, got 30x28"),
        (torch.rand(1, 2, 3, 28, 28) * 255, r"\[0, 1\]"),
        (torch.full((1, 2, 3, 28, 28), float("nan")), "NaN"),
        (torch.zeros(1, 2, 3, 28, 28, dtype=torch.uint8), "floating-point"),
    ],
)
def test_bad_images_are_rejected_with_a_clear_message(images, message):
    model = VGGTModel(tiny_vggt_config()).eval()
    with pytest.raises(ValueError, match=message):
        model(images)


def test_dinov2_patch_embed_interpolates_positions_for_other_grids():
    config = tiny_vggt_config(patch_embed_type="dinov2_vitl14_reg", patch_embed_num_layers=1, patch_embed_num_heads=2)
    model = VGGTModel(config).eval()
    embed = model.aggregator.patch_embed
    assert embed.position_embedding(4, 4) is embed.pos_embed  # the training grid is used as is
    resized = embed.position_embedding(2, 6)
    assert resized.shape == (1, 1 + 12, 32)
    assert torch.equal(resized[:, 0], embed.pos_embed[:, 0])  # the class position is never resized
    with torch.no_grad():
        out = model(torch.rand(1, 2, 3, 28, 84), compute_depth=False)
    assert out.last_patch_tokens.shape == (1, 2, 12, 64)


def test_random_camera_head_gives_finite_cameras():
    model = VGGTModel(tiny_vggt_config()).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 3, 28, 42), compute_depth=False)
    assert torch.isfinite(out.intrinsics).all() and (out.intrinsics[..., 0, 0] > 0).all()


def test_conversion_is_strict_and_reports_what_it_drops(tmp_path):
    config = tiny_vggt_config()
    state = VGGTModel(config).state_dict()
    reference_args = dict(
        vggt=dict(img_size=56, patch_size=14, embed_dim=32, enable_point=True),
        aggregator=dict(depth=3, num_heads=2, patch_embed="conv"),
        camera_head=dict(trunk_depth=1, num_heads=2),
        depth_head=dict(features=8, out_channels=[4, 8, 8, 8], intermediate_layer_idx=[0, 1, 1, 2]),
    )
    tracking = VGGTModel(tiny_vggt_config(**TINY_TRACK)).state_dict()
    track_state = {k: v for k, v in tracking.items() if k.startswith("track_head.")}
    assert len(track_state) == 394  # as many as the release's
    extra = {**state, **track_state, "spa3r_decoder.weight": torch.zeros(1)}
    disabled = dict(reference_args, vggt={**reference_args["vggt"], "enable_track": False})
    model, report = vggt_from_reference(extra, return_report=True, **disabled)
    assert model.track_head is None
    assert report.dropped["track_head disabled in the config"] == sorted(track_state)
    assert report.dropped["not part of VGGT"] == ["spa3r_decoder.weight"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    track_args = dict(features=8, iters=2, corr_levels=2, corr_radius=1, hidden_size=16)
    converted, report = vggt_from_reference(
        {**state, **track_state}, return_report=True, **reference_args, track_head=track_args
    )
    assert not report.dropped and converted.config.use_track_head
    assert converted.config.track_num_iterations == 2 and converted.config.track_corr_radius == 1
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in {**state, **track_state}.items())
    with pytest.raises(ValueError, match=r"missing 394 key\(s\): \['track_head"):
        vggt_from_reference(state, **reference_args, track_head=track_args)
    assert vggt_from_reference(extra, **disabled, track_head=track_args).track_head is None
    assert vggt_from_reference(state, **reference_args).track_head is None  # no track tensors, no head
    # Track tensors but no sizes: the head is built with VGGT-1B's sizes, so these tiny tensors do not fit.
    with pytest.raises(ValueError, match=r"shape mismatch: track_head\."):
        vggt_from_reference(extra, **reference_args)
    with pytest.raises(ValueError, match="predict_conf=True"):
        vggt_from_reference(state, **reference_args, track_head=dict(track_args, predict_conf=False))

    missing = dict(state)
    del missing["aggregator.camera_token"]
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): \['aggregator.camera_token'\]"):
        vggt_from_reference(missing, **reference_args)
    wrong = dict(state)
    wrong["aggregator.camera_token"] = torch.zeros(1, 2, 1, 16)
    with pytest.raises(ValueError, match="shape mismatch: aggregator.camera_token"):
        vggt_from_reference(wrong, **reference_args)


def test_reference_checkpoint_loading_is_safe(tmp_path, caplog):
    state = {"model.projection.weight": torch.ones(2, 2), "model.encoder.norm.weight": torch.ones(2)}
    lightning = tmp_path / "spa3r.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, lightning)
    assert set(load_reference_checkpoint(lightning)) == {"projection.weight", "encoder.norm.weight"}
    mixed = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": {**state, "ema.projection.weight": torch.ones(2, 2)}}, mixed)
    with caplog.at_level(logging.WARNING, logger="spa3_vlm.conversion.reference"):
        assert set(load_reference_checkpoint(mixed)) == {"projection.weight", "encoder.norm.weight"}
    assert "ignoring 1 tensor(s) outside the Lightning module's model. prefix: ema.projection.weight" in caplog.text

    class Payload:  # an arbitrary object would execute code when unpickled without weights_only
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "payload": Payload()}, evil)
    with pytest.raises(ValueError, match="could not read checkpoint .*evil.ckpt: refused, it pickles objects") as refused:
        load_reference_checkpoint(evil)
    assert "weights_only" not in str(refused.value) and refused.value.__cause__ is None  # never suggest unsafe loading
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {}}, empty)
    with pytest.raises(ValueError, match="empty.ckpt holds no tensors"):
        load_reference_checkpoint(empty)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not read checkpoint .*corrupt.safetensors"):
        load_reference_checkpoint(corrupt)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_reference_checkpoint(tmp_path / "absent.ckpt")


def test_from_pretrained_refuses_a_folder_of_another_model_class(tmp_path):
    """A Spa3R folder given to VGGTModel used to load as a random VGGT with a log table of missing keys."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        "hub_configs/spa3r-tiny-synthrooms", vggt_name_or_path=None, semantic_teacher_name_or_path=None
    )
    Spa3RForFieldPrediction(config).save_pretrained(tmp_path / "spa3r")
    with pytest.raises(ValueError, match=r"holds almost none of VGGTModel's weights \(229 of 229 tensors missing"):
        VGGTModel.from_pretrained(tmp_path / "spa3r")
    VGGTModel(config.vggt_config).save_pretrained(tmp_path / "vggt")
    model, info = VGGTModel.from_pretrained(tmp_path / "vggt", output_loading_info=True)  # the caller's info still comes back
    assert isinstance(model, VGGTModel) and not info["missing_keys"]
