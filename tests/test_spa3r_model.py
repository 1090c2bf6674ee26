"""Spa3R as a trainable, hub-native model: losses, freezing, masking, bad input, save/load, remote code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction, Spa3RModel
from spa3_vlm.modeling_spa3r import sample_view_mask


@pytest.fixture(scope="module")
def tiny_config():
    return AutoConfig.from_pretrained("hub_configs/spa3r-tiny")


@pytest.fixture()
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return Spa3RForFieldPrediction(tiny_config)


def images(batch=2, views=4, height=56, width=84, seed=0):
    return torch.rand(batch, views, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_hub_configs_describe_the_paper_and_a_tiny_model():
    base = AutoConfig.from_pretrained("hub_configs/spa3r-base")
    assert (base.hidden_size, base.num_attention_heads, base.num_queries) == (768, 12, 256)
    assert (base.num_encoder_layers, base.num_decoder_layers, base.num_register_tokens) == (6, 6, 4)
    assert base.target_heads == {"geo": 2048, "sem": 1024} and base.mask_ratio == 0.5 and base.masking_mode == "two_pass"
    assert base.vggt_config.global_qk_norm == "rmsnorm" and base.vggt_config.hidden_size == 1024
    assert base.semantic_teacher_config["model_type"] == "dinov3_vit" and base.semantic_teacher_config["patch_size"] == 16
    vggt = AutoConfig.from_pretrained("hub_configs/vggt-1b")
    assert vggt.global_qk_norm == "layernorm" and vggt.num_hidden_layers == 24


def test_encoder_and_decoder_compute_only_the_rows_they_return(tiny_model):
    """Latents and decoded rays equal the matching rows of the full Transformers' outputs, and the last block
    computes fewer rows (that is the saving)."""
    from spa3_vlm.modeling_spa3r import Spa3RTransformer

    model = tiny_model.double().eval()
    calls = []
    full_forward = Spa3RTransformer.forward

    def run_all_rows(self, tokens, output_rows=None, **kwargs):
        calls.append(output_rows)
        return full_forward(self, tokens, **kwargs)[:, output_rows]

    batch = {"pixel_values": images(views=3).double(), "view_mask": torch.tensor([[False, True, False]] * 2)}
    pruned = model(**batch)
    seen = []
    hook = model.decoder.blocks[-1].register_forward_hook(lambda module, args, output: seen.append(output.shape[1]))
    try:
        Spa3RTransformer.forward = run_all_rows
        reference = model(**batch)
    finally:
        Spa3RTransformer.forward = full_forward
    pruned_again = model(**batch)
    hook.remove()
    assert calls == [slice(0, model.config.num_queries), slice(model.config.num_queries, None)]
    assert torch.allclose(pruned.latents, reference.latents, atol=1e-10)
    for name, value in reference.predictions.items():
        assert torch.allclose(pruned.predictions[name], value, atol=1e-10), name
    rays = (56 // 14) * (84 // 14)
    assert seen == [model.config.num_queries + rays, rays]  # registers are never output rows
    assert torch.equal(pruned_again.latents, pruned.latents)


def test_training_step_updates_only_trainable_parts(tiny_model):
    model = tiny_model.train()
    assert not model.spa3r.backbone.training and not model.semantic_teacher.training  # frozen stay in eval
    frozen = {n for n, p in model.named_parameters() if n.startswith(("spa3r.backbone.", "semantic_teacher."))}
    assert frozen and all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    out = model(images())
    assert set(out.losses) == {"geo_l1", "geo_cos", "sem_l1", "sem_cos", "depth_probe"}
    assert torch.allclose(out.loss, sum(out.losses.values()))
    out.loss.backward()
    for name, param in model.named_parameters():
        if name in frozen:
            assert param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    # The view split: view 0 is always context, floor(V/2) context views.
    assert not out.view_mask[:, 0].any() and ((~out.view_mask).sum(1) == 2).all()


def test_depth_probe_does_not_train_the_decoder(tiny_model):
    out = tiny_model.train()(images())
    out.losses["depth_probe"].backward()
    assert tiny_model.depth_probe.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_model.decoder.parameters())
    assert all(p.grad is None for p in tiny_model.spa3r.encoder.parameters())


def test_eval_mode_uses_all_views_as_context_and_is_deterministic(tiny_model):
    model = tiny_model.eval()
    x = images(batch=1, views=3)
    with torch.no_grad():
        first, second = model(x), model(x)
        latents = model.spa3r(x).latents
    assert not first.view_mask.any()
    assert torch.equal(first.loss, second.loss)
    assert torch.allclose(first.latents, latents, atol=1e-6)


def test_masking_modes_share_context_tokens(tiny_config):
    torch.manual_seed(0)
    two_pass = Spa3RForFieldPrediction(tiny_config).eval()
    one_pass_config = Spa3RConfig.from_dict({**tiny_config.to_dict(), "masking_mode": "masked_pass"})
    one_pass = Spa3RForFieldPrediction(one_pass_config).eval()
    one_pass.load_state_dict(two_pass.state_dict())
    x = images(batch=2, views=5)
    view_mask = torch.tensor([[False, True, False, True, True], [False, False, True, True, True]])
    a = two_pass.teacher_targets(x, view_mask)
    b = one_pass.teacher_targets(x, view_mask)
    assert torch.allclose(a["context_tokens"], b["context_tokens"], atol=1e-5)
    # In the two-pass mode the geo targets come from the unmasked pass: context views differ from context tokens.
    assert not torch.allclose(a["context_tokens"][0, 1], a["geo"][0, 2], atol=1e-4)
    assert a["context_tokens"].shape == (2, 2, 24, 128)


def test_view_mask_sampling():
    generator = torch.Generator().manual_seed(0)
    masks = torch.stack([sample_view_mask(3, 8, 0.5, generator=generator) for _ in range(50)])
    assert not masks[..., 0].any()
    assert ((~masks).sum(-1) == 4).all()
    assert masks[..., 1:].float().mean(dim=(0, 1)).min() > 0.3  # every other view is sometimes context
    assert ((~sample_view_mask(1, 1, 0.5)).sum() == 1).all()  # a single view is its own context
    again = torch.stack([sample_view_mask(3, 8, 0.5, generator=torch.Generator().manual_seed(0)) for _ in range(1)])
    assert torch.equal(again[0], masks[0])


def test_dataset_cameras_and_extra_field_targets(tiny_config):
    config = Spa3RConfig.from_dict(
        {**tiny_config.to_dict(), "pose_source": "dataset", "target_heads": {"geo": 128, "rgb": 3}, "semantic_teacher_config": None}
    )
    model = Spa3RForFieldPrediction(config).train()
    x = images(batch=1, views=3)
    extrinsics = torch.eye(4).repeat(1, 3, 1, 1)
    extrinsics[0, 1, 0, 3] = 0.5
    intrinsics = torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(1, 3, 1, 1)
    rgb = torch.rand(1, 3, 24, 3)
    out = model(x, extrinsics=extrinsics, intrinsics=intrinsics, field_targets={"rgb": rgb})
    assert {"rgb_l1", "rgb_cos", "geo_l1"} <= set(out.losses)
    assert torch.equal(out.targets["rgb"], rgb)
    with pytest.raises(ValueError, match='pose_source="dataset" needs extrinsics and intrinsics'):
        model(x)
    with pytest.raises(ValueError, match="field target 'sem' has no head"):
        model(x, extrinsics=extrinsics, intrinsics=intrinsics, field_targets={"sem": rgb})


@pytest.mark.parametrize(
    "break_cameras, message",
    [
        (lambda e, k: (e[:, :2], k), r"extrinsics cover 2 views, expected 3: one camera per view"),
        (lambda e, k: (e, k[:, :1]), r"intrinsics cover 1 views, expected 3"),
        (lambda e, k: (e * 2, k), r"extrinsics must be rigid: .*orthonormal with determinant \+1"),
        (lambda e, k: (e @ torch.diag(torch.tensor([1.0, 1, -1, 1])), k), r"extrinsics must be rigid"),  # a reflection
        (lambda e, k: (e, k * torch.tensor([1.0, 1, 0])[:, None]), r"intrinsics must end with the row 0 0 1"),
        (lambda e, k: (e.index_put((torch.tensor(0), torch.tensor(1), torch.tensor(0), torch.tensor(3)), torch.tensor(1e30)), k),
         r"translations must stay below 1e\+06 in absolute value \(got 1e\+30\)"),
        (lambda e, k: (e.index_put((torch.tensor(0), torch.tensor(1), torch.tensor(3), torch.tensor(0)), torch.tensor(1.0)), k),
         r"4x4 extrinsics must end with the row 0 0 0 1"),
        (lambda e, k: (e, k * float("nan")), r"NaN or infinite"),
    ],
)
def test_dataset_cameras_are_checked_per_view_for_rigidity_and_range(tiny_config, break_cameras, message):
    config = Spa3RConfig.from_dict({**tiny_config.to_dict(), "pose_source": "dataset", "semantic_teacher_config": None})
    model = Spa3RForFieldPrediction(config).eval()
    x = images(batch=1, views=3)
    extrinsics = torch.eye(4).repeat(1, 3, 1, 1)
    extrinsics[0, 1, 0, 3] = 0.5
    intrinsics = torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.isfinite(model(x, extrinsics=extrinsics, intrinsics=intrinsics).predictions["geo"]).all()
        with pytest.raises(ValueError, match=message):
            broken_extrinsics, broken_intrinsics = break_cameras(extrinsics, intrinsics)
            model(x, extrinsics=broken_extrinsics, intrinsics=broken_intrinsics)


def test_a_renderer_depth_probe_predicts_without_its_target_in_eval_mode_only(tiny_config):
    config = Spa3RConfig.from_dict(
        {**tiny_config.to_dict(), "pose_source": "dataset", "semantic_teacher_config": None, "use_depth_probe": True,
         "depth_probe_target": "metric_depth"}
    )
    model = Spa3RForFieldPrediction(config)
    x = images(batch=1, views=2)
    cameras = {"extrinsics": torch.eye(4).repeat(1, 2, 1, 1),
               "intrinsics": torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(1, 2, 1, 1)}
    with torch.no_grad():
        out = model.eval()(x, **cameras)
    assert out.predictions["depth"].shape == (1, 2, 24, 1) and "depth" not in out.targets and "depth_probe" not in out.losses
    with pytest.raises(ValueError, match=r"the depth probe learns field_targets\['metric_depth'\]"):
        model.train()(x, **cameras)


def test_loss_weights_and_smooth_l1_beta(tiny_config):
    """Weights scale each named loss in the total; beta switches a head's smooth-L1 towards plain L1."""
    base = {**tiny_config.to_dict(), "pose_source": "dataset", "target_heads": {"geo": 128, "rgb": 3}, "semantic_teacher_config": None}
    x = images(batch=1, views=3)
    cameras = dict(extrinsics=torch.eye(4).repeat(1, 3, 1, 1), intrinsics=torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(1, 3, 1, 1))
    rgb = torch.rand(1, 3, 24, 3)
    mask = torch.tensor([[False, True, False]])
    torch.manual_seed(0)
    plain = Spa3RForFieldPrediction(Spa3RConfig.from_dict(base)).eval()
    weighted = Spa3RForFieldPrediction(
        Spa3RConfig.from_dict({**base, "loss_weights": {"rgb_l1": 3.0, "rgb_cos": 0.0}, "smooth_l1_beta": {"rgb": 0.0}})
    ).eval()
    weighted.load_state_dict(plain.state_dict())
    a = plain(x, view_mask=mask, field_targets={"rgb": rgb}, **cameras)
    b = weighted(x, view_mask=mask, field_targets={"rgb": rgb}, **cameras)
    error = a.predictions["rgb"] - rgb
    assert torch.allclose(a.losses["rgb_l1"], torch.where(error.abs() < 1, 0.5 * error**2, error.abs() - 0.5).mean())
    assert torch.allclose(b.losses["rgb_l1"], error.abs().mean())  # beta 0: plain L1, logged unweighted
    assert torch.allclose(a.loss, sum(a.losses.values()))
    assert set(b.losses) == {"geo_l1", "geo_cos", "rgb_l1", "rgb_cos", "depth_probe"}
    expected = b.losses["geo_l1"] + b.losses["geo_cos"] + 3.0 * b.losses["rgb_l1"] + b.losses["depth_probe"]
    assert torch.allclose(b.loss, expected)


def test_head_activations(tiny_config):
    """An ``exp`` head predicts positive values in log space, a ``sigmoid`` head values in (0, 1)."""
    heads = {"geo": 128, "rgb": 3, "metric_depth": 1}
    values = {**tiny_config.to_dict(), "target_heads": heads, "semantic_teacher_config": None}
    torch.manual_seed(0)
    plain = Spa3RForFieldPrediction(Spa3RConfig.from_dict(values)).eval()
    activated = Spa3RForFieldPrediction(
        Spa3RConfig.from_dict({**values, "head_activations": {"metric_depth": "exp", "rgb": "sigmoid"}})
    ).eval()
    activated.load_state_dict(plain.state_dict())
    latents = torch.randn(1, 16, 64)
    cameras = (torch.eye(4).repeat(1, 2, 1, 1), torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(1, 2, 1, 1))
    with torch.no_grad():
        raw = plain.decode_field(latents, *cameras, (56, 84))
        out = activated.decode_field(latents, *cameras, (56, 84))
    assert torch.allclose(out["metric_depth"], raw["metric_depth"].exp())
    assert torch.allclose(out["rgb"], torch.sigmoid(raw["rgb"]))
    assert torch.equal(out["geo"], raw["geo"])
    with pytest.raises(ValueError, match=r"head_activations names unknown head\(s\) \['depth'\]"):
        Spa3RConfig(head_activations={"depth": "exp"})
    with pytest.raises(ValueError, match=r"head_activations\['geo'\] must be one of"):
        Spa3RConfig(head_activations={"geo": "relu"})


def test_context_inputs_reach_the_encoder_from_context_views_only(tiny_config):
    """Extra per-patch inputs reach the latents, are read from context views only, and can be withheld."""
    heads = {"geo": 128, "rgb": 3, "metric_depth": 1}
    base = {**tiny_config.to_dict(), "pose_source": "dataset", "target_heads": heads, "semantic_teacher_config": None}
    config = Spa3RConfig.from_dict({**base, "context_inputs": {"rgb": 3, "metric_depth": 1}})
    torch.manual_seed(0)
    model = Spa3RForFieldPrediction(config).eval()
    x = images(batch=2, views=3)
    cameras = dict(extrinsics=torch.eye(4).repeat(2, 3, 1, 1), intrinsics=torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(2, 3, 1, 1))
    fields = {"rgb": torch.rand(2, 3, 24, 3), "metric_depth": 1 + 4 * torch.rand(2, 3, 24, 1)}
    mask = torch.tensor([[False, True, False], [False, False, True]])

    def latents(field_targets, **overrides):
        return model(x, view_mask=mask, field_targets=field_targets, **cameras, **overrides).latents

    informed = latents(fields)
    plain = model.spa3r.encode_tokens(torch.randn(2, 2, 24, 128), (4, 6))
    changed = {name: value.clone() for name, value in fields.items()}
    changed["metric_depth"][0, 1] += 1.0  # view 1 of sample 0 is a target view: the encoder never sees it
    assert torch.equal(latents(changed), informed)
    changed["metric_depth"][1, 1] += 1.0  # a context view of sample 1 only
    moved = latents(changed)
    assert torch.equal(moved[0], informed[0]) and not torch.allclose(moved[1], informed[1])

    tokens = torch.randn(2, 2, 24, 128)
    zeros = {"rgb": torch.zeros(2, 2, 24, 3), "metric_depth": torch.zeros(2, 2, 24, 1)}
    assert torch.equal(model.spa3r.encode_tokens(tokens, (4, 6)), model.spa3r.encode_tokens(tokens, (4, 6), context_inputs=zeros))
    config.context_input_dropout = 0.5
    model.train()
    torch.manual_seed(3)
    dropped = [latents(fields) for _ in range(6)]
    model.eval()
    withheld = latents({"rgb": fields["rgb"] * 0, "metric_depth": fields["metric_depth"] * 0})
    assert not torch.allclose(withheld, informed, atol=1e-4)  # the inputs reach the latents
    for sample in range(2):
        outcomes = [torch.allclose(d[sample], withheld[sample]) for d in dropped]
        assert all(o or torch.allclose(d[sample], informed[sample]) for o, d in zip(outcomes, dropped))
        assert any(outcomes) and not all(outcomes)  # both outcomes occur over 6 draws at p = 0.5 with this seed

    with pytest.raises(ValueError, match=r"config.context_inputs needs \['metric_depth'\] for the context views"):
        latents({"rgb": fields["rgb"]})
    with pytest.raises(ValueError, match=r"context input 'rgb' must be \[B, Vc, N, 3\] = \(2, 2, 24, 3\), got \(2, 2, 24, 1\)"):
        model.spa3r.encode_tokens(tokens, (4, 6), context_inputs={"rgb": torch.zeros(2, 2, 24, 1)})
    with pytest.raises(ValueError, match=r"context_inputs \['sem'\] are not configured"):
        model.spa3r.encode_tokens(tokens, (4, 6), context_inputs={"sem": torch.zeros(2, 2, 24, 1)})
    plain_model = Spa3RForFieldPrediction(Spa3RConfig.from_dict(base))
    with pytest.raises(ValueError, match=r"context_inputs \['rgb'\] were given, but config.context_inputs configures none"):
        plain_model.spa3r.encode_tokens(tokens, (4, 6), context_inputs={"rgb": torch.zeros(2, 2, 24, 3)})
    assert plain.shape == (2, 16, 64)


def test_bad_inputs_are_rejected_with_clear_messages(tiny_model):
    model = tiny_model.eval()
    encoder = model.spa3r
    with pytest.raises(ValueError, match=r"context_tokens must be \[B, Vc, N, C_backbone\]"):
        encoder.encode_tokens(torch.zeros(2, 24, 128), (4, 6))
    with pytest.raises(ValueError, match="at least one sample and one context view"):
        encoder.encode_tokens(torch.zeros(1, 0, 24, 128), (4, 6))
    with pytest.raises(ValueError, match="have 64 channels, expected backbone_hidden_size=128"):
        encoder.encode_tokens(torch.zeros(1, 2, 24, 64), (4, 6))
    with pytest.raises(ValueError, match=r"24 tokens per view, but patch_grid \(4, 5\) has 20"):
        encoder.encode_tokens(torch.zeros(1, 2, 24, 128), (4, 5))
    latents = torch.zeros(1, 16, 64)
    cams = torch.eye(4).repeat(1, 2, 1, 1)
    intrinsics = torch.tensor([[50.0, 0, 42], [0, 50, 28], [0, 0, 1]]).repeat(1, 2, 1, 1)
    with pytest.raises(ValueError, match=r"latents must be \[B, 16, 64\]"):
        model.decode_field(torch.zeros(1, 8, 64), cams, intrinsics, (56, 84))
    with pytest.raises(ValueError, match=r"extrinsics must be \[B=1, V=2, 3 or 4, 4\]"):
        model.decode_field(latents, torch.eye(3).repeat(1, 2, 1, 1), intrinsics, (56, 84))
    with pytest.raises(ValueError, match=r"intrinsics cover 1 views, expected 2: one camera per view"):
        model.decode_field(latents, cams, intrinsics[:, :1], (56, 84))
    with pytest.raises(ValueError, match=r"intrinsics must be \[B=1, V=2, 3, 3\]"):
        model.decode_field(latents, cams, intrinsics[..., :2], (56, 84))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.decode_field(latents, cams * float("nan"), intrinsics, (56, 84))
    with pytest.raises(ValueError, match="positive focal lengths"):
        model.decode_field(latents, cams, intrinsics * 0, (56, 84))
    with pytest.raises(ValueError, match=r"image_size \(50, 84\) must be positive multiples of the patch size 14"):
        model.decode_field(latents, cams, intrinsics, (50, 84))
    with pytest.raises(ValueError, match="latents have batch size 1 but the cameras have 2"):
        model.decode_field(latents, cams.repeat(2, 1, 1, 1), intrinsics.repeat(2, 1, 1, 1), (56, 84))
    with pytest.raises(ValueError, match=r"view_mask must have shape \[B, V\]"):
        model(images(batch=1, views=3), view_mask=torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        model(torch.rand(1, 2, 1, 56, 84))


def test_config_validation():
    with pytest.raises(ValueError, match="masking_mode must be one of"):
        Spa3RConfig(masking_mode="random")
    with pytest.raises(ValueError, match="divisible by 8"):
        Spa3RConfig(hidden_size=96, num_attention_heads=16)
    with pytest.raises(ValueError, match="'geo' head predicts backbone tokens of size 2048"):
        Spa3RConfig(target_heads={"geo": 1024})
    with pytest.raises(ValueError, match=r"loss_weights names unknown loss\(es\) \['rbg_l1'\]"):
        Spa3RConfig(loss_weights={"rbg_l1": 2.0})
    with pytest.raises(ValueError, match=r"smooth_l1_beta names unknown head\(s\) \['depth'\]"):
        Spa3RConfig(smooth_l1_beta={"depth": 0.1})
    with pytest.raises(ValueError, match="context_inputs maps names to channel counts >= 1, got 'rgb': 0"):
        Spa3RConfig(context_inputs={"rgb": 0})
    with pytest.raises(ValueError, match=r"context_input_dropout must be in \[0, 1\), got 1.0"):
        Spa3RConfig(context_input_dropout=1.0)
    with pytest.raises(ValueError, match="non-negative numbers, got 'geo_l1': -1"):
        Spa3RConfig(loss_weights={"geo_l1": -1})


def test_save_and_load_round_trip(tiny_model, tmp_path):
    model = tiny_model.eval()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "modeling_spa3r.py", "configuration_spa3r.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_spa3r.Spa3RModel"
    x = images(batch=1, views=3)
    reloaded = Spa3RForFieldPrediction.from_pretrained(tmp_path).eval()
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is Spa3RModel
    assert all(not p.requires_grad for p in reloaded.spa3r.backbone.parameters())
    with torch.no_grad():
        assert torch.equal(model(x).loss, reloaded(x).loss)
        assert torch.equal(model.spa3r(x).latents, encoder(x).latents)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockPackage:  # make the installed package unimportable: only the saved folder's code may be used
        def find_spec(self, name, path=None, target=None):
            if name == "spa3_vlm" or name.startswith("spa3_vlm."):
                raise ImportError("spa3_vlm is blocked in this process")

    sys.meta_path.insert(0, BlockPackage())
    try:
        import spa3_vlm  # noqa: F401
        raise SystemExit("spa3_vlm should not be importable here")
    except ImportError:
        pass
    import torch
    from transformers import AutoModel

    folder = sys.argv[1]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "Spa3RModel", type(model)
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    with torch.no_grad():
        latents = model(torch.load(folder + "/x.pt", weights_only=True)).latents
    torch.save(latents, folder + "/remote_latents.pt")
    """
)


def test_remote_code_loads_without_the_package(tiny_model, tmp_path):
    model = tiny_model.eval()
    model.save_pretrained(tmp_path)
    x = images(batch=1, views=2)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model.spa3r(x).latents
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "remote_latents.pt", weights_only=True), expected)


def test_pretrained_teachers_load_strictly_from_folders(tiny_config, tmp_path):
    """The training scripts' path: VGGT weights from a reference-format file, the semantic teacher from a
    transformers folder (a hub id resolves the same way online)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig as HFAutoConfig

    from spa3_vlm.training.teachers import load_pretrained_teachers

    torch.manual_seed(1)
    source = Spa3RForFieldPrediction(tiny_config)
    vggt_state = {k: v.contiguous() for k, v in source.spa3r.backbone.state_dict().items()}
    (tmp_path / "vggt").mkdir()
    save_file(vggt_state, tmp_path / "vggt" / "model.safetensors")
    teacher = AutoModel.from_config(HFAutoConfig.for_model(**tiny_config.semantic_teacher_config))
    teacher.save_pretrained(tmp_path / "dino")

    config = Spa3RConfig.from_dict(
        {**tiny_config.to_dict(), "vggt_name_or_path": str(tmp_path / "vggt"), "semantic_teacher_name_or_path": str(tmp_path / "dino")}
    )
    torch.manual_seed(2)
    model = Spa3RForFieldPrediction(config)
    load_pretrained_teachers(model)
    assert all(torch.equal(v, model.spa3r.backbone.state_dict()[k]) for k, v in vggt_state.items())
    assert all(torch.equal(v, model.semantic_teacher.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in model.semantic_teacher.parameters())

    del vggt_state["aggregator.camera_token"]
    save_file(vggt_state, tmp_path / "vggt" / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): \['aggregator.camera_token'\]"):
        load_pretrained_teachers(model)

    # Settings without parameters load "strictly" too, so the teachers' own configs are compared with the copies.
    save_file({k: v.contiguous() for k, v in source.spa3r.backbone.state_dict().items()}, tmp_path / "vggt" / "model.safetensors")
    teacher.config.image_size = 2 * teacher.config.image_size
    teacher.save_pretrained(tmp_path / "dino")
    with pytest.raises(ValueError, match=r"semantic teacher at .*dino was made with other settings .*image_size"):
        load_pretrained_teachers(model)
    teacher.config.image_size //= 2
    teacher.save_pretrained(tmp_path / "dino")
    source.spa3r.backbone.config.rope_theta = 10.0  # no parameter depends on it
    source.spa3r.backbone.config.save_pretrained(tmp_path / "vggt")
    with pytest.raises(ValueError, match=r"VGGT teacher at .*vggt was made with other settings .*rope_theta: teacher 10.0"):
        load_pretrained_teachers(model)


def test_encoder_camera_encoding_uses_the_context_cameras(tiny_config):
    config = Spa3RConfig.from_dict({**tiny_config.to_dict(), "encoder_camera_encoding": "prope"})
    torch.manual_seed(0)
    model = Spa3RForFieldPrediction(config).eval()
    x = images(batch=1, views=3)
    with torch.no_grad():
        cameras = model.spa3r.backbone(x, compute_depth=False)
        implicit = model.spa3r(x).latents  # cameras from the backbone's camera head
        explicit = model.spa3r(x, extrinsics=cameras.extrinsics, intrinsics=cameras.intrinsics).latents
        moved = cameras.extrinsics.clone()
        moved[:, 1:, :3, 3] += 0.5
        other = model.spa3r(x, extrinsics=moved, intrinsics=cameras.intrinsics).latents
        tokens = model.spa3r.backbone(x, compute_cameras=False, compute_depth=False).last_patch_tokens
    assert torch.allclose(implicit, explicit, atol=1e-6)
    assert not torch.allclose(implicit, other, atol=1e-4)
    with pytest.raises(ValueError, match="encoder_camera_encoding='prope' needs the context views' extrinsics"):
        model.spa3r.encode_tokens(tokens, (4, 6))
    with pytest.raises(ValueError, match="encoder_camera_encoding must be one of"):
        Spa3RConfig(encoder_camera_encoding="plucker")
    out = model.train()(x)  # field prediction passes the context views' cameras through
    assert torch.isfinite(out.loss)


def two_views_one_at_the_origin():
    """Cameras ``[1, 2, 4, 4]`` / ``[1, 2, 3, 3]``: view 0 at the world origin, view 1 translated, for 56x84 images."""
    extrinsics = torch.eye(4).repeat(1, 2, 1, 1)
    extrinsics[0, 1, :3, 3] = torch.tensor([0.3, -0.2, 0.5])
    intrinsics = torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(1, 2, 1, 1)
    return extrinsics, intrinsics


def test_plucker_ray_encoding_extends_the_camera_frame_rays(tiny_config):
    """World-frame Plücker ray tokens reduce to the paper's camera-frame rays for a camera at the world origin;
    the encoder's ray embedding starts from the same encoder when its weights are zero."""
    values = {**tiny_config.to_dict(), "encoder_camera_encoding": "prope"}
    torch.manual_seed(0)
    camera = Spa3RForFieldPrediction(Spa3RConfig.from_dict(values)).eval()
    plucker = Spa3RForFieldPrediction(Spa3RConfig.from_dict({**values, "ray_encoding": "plucker"})).eval()
    assert plucker.pose_tokenizer.in_features == 6 and plucker.spa3r.ray_embedding.in_features == 6
    assert camera.spa3r.ray_embedding is None
    state = camera.state_dict()
    state["pose_tokenizer.weight"] = torch.cat([state["pose_tokenizer.weight"], torch.randn(64, 3)], dim=1)
    state["spa3r.ray_embedding.weight"] = torch.zeros(64, 6)
    state["spa3r.ray_embedding.bias"] = torch.zeros(64)
    plucker.load_state_dict(state)

    latents = torch.randn(1, 16, 64)
    extrinsics, intrinsics = two_views_one_at_the_origin()
    with torch.no_grad():
        ours = plucker.decode_field(latents, extrinsics, intrinsics, (56, 84))["geo"]
        paper = camera.decode_field(latents, extrinsics, intrinsics, (56, 84))["geo"]
        tokens = torch.randn(1, 2, 24, 128)
        same = (camera.spa3r.encode_tokens(tokens, (4, 6), extrinsics, intrinsics), plucker.spa3r.encode_tokens(tokens, (4, 6), extrinsics, intrinsics))
    # Ray tokens differ only where the moment c x d is non-zero: the translated view 1, not view 0 at the origin.
    assert torch.allclose(ours[:, 0], paper[:, 0], atol=1e-5)
    assert not torch.allclose(ours[:, 1], paper[:, 1], atol=1e-3)
    assert torch.allclose(*same, atol=1e-6)
    with pytest.raises(ValueError, match="ray_encoding must be one of"):
        Spa3RConfig(ray_encoding="world")


def test_plucker_rays_without_prope_the_papers_ablation(tiny_config, monkeypatch):
    """decoder_camera_attention='none': the target camera reaches the decoder only through world-frame Plücker ray
    tokens (the paper's "Plücker rays instead of PRoPE" arm); PRoPE is never built."""
    values = {**tiny_config.to_dict(), "ray_encoding": "plucker"}
    torch.manual_seed(0)
    with_prope = Spa3RForFieldPrediction(Spa3RConfig.from_dict(values)).eval()
    without = Spa3RForFieldPrediction(Spa3RConfig.from_dict({**values, "decoder_camera_attention": "none"})).eval()
    without.load_state_dict(with_prope.state_dict())  # PRoPE has no weights: the same parameters
    latents = torch.randn(1, 16, 64)
    extrinsics, intrinsics = two_views_one_at_the_origin()
    with torch.no_grad():
        reference = with_prope.decode_field(latents, extrinsics, intrinsics, (56, 84))["geo"]
        import spa3_vlm.modeling_spa3r as modeling

        def refuse(*args, **kwargs):
            raise AssertionError("PRoPE built with decoder_camera_attention='none'")

        monkeypatch.setattr(modeling, "ProjectiveRoPE", refuse)
        plain = without.decode_field(latents, extrinsics, intrinsics, (56, 84))["geo"]
        moved = extrinsics.clone()
        moved[0, 1, :3, 3] = torch.tensor([-0.4, 0.1, 0.2])
        after_move = without.decode_field(latents, moved, intrinsics, (56, 84))["geo"]
    assert not torch.allclose(plain, reference, atol=1e-3)  # the switch changes the attention
    # Views are decoded independently; only the moved camera's field changes, through its rays.
    assert torch.equal(after_move[:, 0], plain[:, 0]) and not torch.allclose(after_move[:, 1], plain[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match="use ray_encoding='plucker'"):
        Spa3RConfig(decoder_camera_attention="none")
    with pytest.raises(ValueError, match=r"decoder_camera_attention must be one of \('prope', 'none'\)"):
        Spa3RConfig(decoder_camera_attention="rope")


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_config):
    """`activation_checkpointing_enable()` (transformers' API) recomputes every Transformer block in the backward pass:
    the blocks run twice, and loss and gradients are those of the plain pass, for Spa3R and for VGGT training."""
    from spa3_vlm.modeling_common import Block
    from spa3_vlm.training.geometry_teacher import VGGTForGeometryTraining

    config = Spa3RConfig.from_dict({**tiny_config.to_dict(), "pose_source": "dataset", "semantic_teacher_config": None})
    torch.manual_seed(0)
    spa3r = Spa3RForFieldPrediction(config).train()
    extrinsics = torch.eye(4).repeat(1, 3, 1, 1)
    extrinsics[0, 1:, 0, 3] = torch.tensor([0.4, -0.3])
    intrinsics = torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).repeat(1, 3, 1, 1)
    spa3r_inputs = dict(pixel_values=images(batch=1, views=3), extrinsics=extrinsics, intrinsics=intrinsics,
                        view_mask=torch.tensor([[False, True, False]]))  # fmt: skip

    vggt_config = AutoConfig.from_pretrained("hub_configs/vggt-tiny-synthrooms")
    torch.manual_seed(0)
    vggt = VGGTForGeometryTraining(vggt_config).train()
    vggt_inputs = dict(
        pixel_values=images(batch=1, views=2, height=84, width=112), depth=1 + torch.rand(1, 2, 84, 112),
        extrinsics=torch.eye(4).repeat(1, 2, 1, 1), intrinsics=torch.tensor([[80.0, 0, 56], [0, 80, 42], [0, 0, 1]]).repeat(1, 2, 1, 1),
    )  # fmt: skip

    for model, inputs in ((spa3r, spa3r_inputs), (vggt, vggt_inputs)):
        calls = []
        # Count the trained blocks' attention calls: a recomputed block calls its attention again (the block's own hooks
        # stay outside the checkpoint, by transformers' design). Frozen blocks (Spa3R's VGGT, under no_grad) are not
        # checkpointed: they keep no activations for a backward pass.
        trained = [m for m in model.modules() if isinstance(m, Block) and any(p.requires_grad for p in m.parameters())]
        hooks = [m.attn.register_forward_pre_hook(lambda *a: calls.append(1)) for m in trained]

        def step():
            model.zero_grad(set_to_none=True)
            calls.clear()
            loss = model(**inputs).loss
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            return loss.detach(), grads, len(calls)

        plain_loss, plain_grads, plain_calls = step()
        model.activation_checkpointing_enable()
        loss, grads, checkpointed_calls = step()
        model.activation_checkpointing_disable()
        for hook in hooks:
            hook.remove()
        assert plain_calls > 0 and checkpointed_calls == 2 * plain_calls, type(model).__name__
        assert torch.equal(loss, plain_loss) and grads.keys() == plain_grads.keys() and len(grads) > 10
        for name, grad in grads.items():
            torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
