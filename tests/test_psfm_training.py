"""PSFM pre-training: view sampling, collation, resumable Trainer runs, multi-process runs, the main job."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, TrainerCallback, TrainingArguments

from spa3_vlm import Spa3RForFieldPrediction, Spa3RModel
from spa3_vlm.data.psfm import PSFMCollator, PSFMDataset
from spa3_vlm.training.field_eval import evaluate_field, format_field_table, nearest_context_view
from spa3_vlm.visualization import depth_colors, field_pca_figure
from psfm_testing import TINY, fake_scenes, psfm_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dataset_is_deterministic_and_relative_to_the_first_view():
    scenes = fake_scenes()
    dataset = PSFMDataset(scenes, num_views=(3, 5), interval=(1, 2), samples_per_scene=4, seed=7)
    assert len(dataset) == 12
    a, b = dataset[5], dataset[5]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["scene_id"] == "fake-2"
    assert 3 <= a["pixel_values"].shape[0] <= 5 and a["pixel_values"].dtype == torch.float32
    assert torch.allclose(a["extrinsics"][0], torch.eye(4), atol=1e-6)
    # Cameras walk along +x: relative to view 0, later views sit further along x (translation -dx).
    assert (a["extrinsics"][1:, 0, 3] < 0).all()
    # Two samples of the same scene draw different view sets.
    assert any(not torch.equal(dataset[2]["pixel_values"][:3], dataset[2 + 3 * k]["pixel_values"][:3]) for k in (1, 2, 3))
    cached = PSFMDataset(scenes, num_views=(3, 5), interval=(1, 2), samples_per_scene=4, seed=7, cache_scenes=True)
    assert torch.equal(cached[5]["pixel_values"], a["pixel_values"]) and torch.equal(cached[5]["depth"], a["depth"])


def test_relative_extrinsics_are_the_samples_cameras_without_their_images():
    import datasets

    scenes = fake_scenes()
    dataset = PSFMDataset(scenes, num_views=(3, 5), interval=(1, 2), samples_per_scene=4, seed=7)
    table = PSFMDataset(datasets.Dataset.from_list(scenes), num_views=(3, 5), interval=(1, 2), samples_per_scene=4, seed=7)
    cameras_only = PSFMDataset([{"extrinsics": s["extrinsics"]} for s in scenes], (3, 5), (1, 2), samples_per_scene=4, seed=7)
    for index in range(len(dataset)):
        expected = dataset[index]["extrinsics"]
        for source in (dataset, table, cameras_only):
            assert torch.equal(source.relative_extrinsics(index), expected)
    with pytest.raises(IndexError, match="out of range"):
        dataset.relative_extrinsics(len(dataset))


def test_collator_aligns_views_and_sizes():
    big = PSFMDataset(fake_scenes(1, size=(42, 56)), num_views=(5, 5), seed=1)[0]
    small = PSFMDataset(fake_scenes(1, size=(28, 42), seed=1), num_views=(3, 3), seed=1)[0]
    small["index"] = 1
    collator = PSFMCollator(patch_size=14, mask_ratio=0.5, field_targets=("rgb", "metric_depth"), seed=3)
    batch = collator([big, small])
    assert batch["pixel_values"].shape == (2, 3, 3, 28, 42)
    # The big sample is centre-cropped by (7, 7) pixels: its principal point moves accordingly.
    assert torch.allclose(batch["intrinsics"][0, :, 0, 2], torch.full((3,), 28.0 - 7))
    assert torch.allclose(batch["intrinsics"][0, :, 1, 2], torch.full((3,), 21.0 - 7))
    assert torch.equal(batch["pixel_values"][0], big["pixel_values"][:3, :, 7:35, 7:49])
    # Per-patch means, row-major.
    rgb = batch["field_targets"]["rgb"]
    assert rgb.shape == (2, 3, 6, 3)
    assert torch.allclose(rgb[1, 2, 4], small["pixel_values"][2, :, 14:28, 14:28].mean(dim=(1, 2)), atol=1e-6)
    depth = batch["field_targets"]["metric_depth"]
    assert torch.allclose(depth[1, 0, 1, 0], small["depth"][0, 0:14, 14:28].mean(), atol=1e-5)
    mask = batch["view_mask"]
    assert not mask[:, 0].any() and ((~mask).sum(1) == 1).all()
    assert torch.equal(collator([big, small])["view_mask"], mask)  # a function of the sample indices
    with pytest.raises(ValueError, match="empty batch"):
        collator([])


def test_nearest_context_view_and_field_table():
    extrinsics = torch.eye(4).repeat(1, 4, 1, 1)
    extrinsics[0, :, 0, 3] = -torch.tensor([0.0, 1.0, 2.0, 3.0])  # centres at x = 0, 1, 2, 3
    view_mask = torch.tensor([[False, True, False, True]])
    assert nearest_context_view(extrinsics, view_mask).tolist() == [[0, 0, 2, 2]]
    results = {"rgb": {m: {"l1": v} for m, v in zip(("model", "context_mean", "nearest_view"), (0.1, 0.3, 0.2))}, "num_views": 4}
    table = format_field_table(results)
    assert "0.1000*" in table and "0.3000 " in table


def test_field_evaluation_and_figure_on_a_perfect_predictor():
    class Oracle(torch.nn.Module):
        """Predicts every target exactly: the model column must be perfect."""

        def forward(self, pixel_values, view_mask, extrinsics, intrinsics, field_targets):
            from spa3_vlm.modeling_spa3r import Spa3RFieldOutput

            return Spa3RFieldOutput(predictions=dict(field_targets), targets=dict(field_targets))

    dataset = PSFMDataset(fake_scenes(2), num_views=(4, 4), seed=0)
    collator = PSFMCollator(field_targets=("rgb",), mask_ratio=0.5)
    batches = [collator([dataset[0], dataset[1]])]
    oracle = Oracle()
    oracle.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    results = evaluate_field(oracle, batches)
    assert results["rgb"]["model"]["l1"] == 0 and results["rgb"]["model"]["cosine"] == pytest.approx(1.0)
    assert results["rgb"]["nearest_view"]["l1"] > 0 and results["num_views"] == 4
    batch = batches[0]
    features = torch.randn(4, 6, 8)
    figure = field_pca_figure(batch["pixel_values"][0], features, features, batch["view_mask"][0])
    assert figure.size == (70 + 4 * (42 + 4) + 4, 3 * (28 + 4) + 4)
    teacher_row, predicted_row = (np.asarray(figure)[4 + r * 32 : 32 + r * 32, 74:] for r in (1, 2))
    assert np.array_equal(teacher_row, predicted_row)  # one PCA basis: equal features, equal colours
    depth = torch.rand(4, 6) * 4 + 1
    figure = field_pca_figure(batch["pixel_values"][0], features, features, batch["view_mask"][0], true_depth=depth,
                              predicted_depth=depth.flip(0))  # fmt: skip
    assert figure.size == (70 + 4 * (42 + 4) + 4, 5 * (28 + 4) + 4)
    pixels = np.asarray(figure)
    true_row, read_out_row = pixels[4 + 3 * 32 : 32 + 3 * 32, 74:], pixels[4 + 4 * 32 : 32 + 4 * 32, 74:]
    assert np.array_equal(true_row[:, : 42], read_out_row[:, 3 * 46 : 3 * 46 + 42])  # shared depth colour scale
    with pytest.raises(ValueError, match="pass both true_depth and predicted_depth"):
        field_pca_figure(batch["pixel_values"][0], features, features, batch["view_mask"][0], true_depth=depth)
    near, far = depth_colors(torch.tensor([1.0, 5.0]), 1.0, 5.0)
    assert near.sum() > far.sum()  # near is bright


def test_field_evaluation_reports_the_images_only_model_for_context_inputs():
    """With context inputs the table gains a row for the same model with them withheld (as in Spa3-VLM)."""
    config = AutoConfig.from_pretrained(
        TINY, context_inputs={"metric_depth": 1, "rgb": 3}, target_heads={"geo": 128, "rgb": 3, "metric_depth": 1},
        use_depth_probe=False, smooth_l1_beta=None, loss_weights=None, depth_probe_target="backbone",
    )  # fmt: skip
    torch.manual_seed(0)
    model = Spa3RForFieldPrediction(config).eval()
    dataset = PSFMDataset(fake_scenes(2), num_views=(4, 4), seed=0)
    batches = [PSFMCollator(field_targets=("rgb", "metric_depth"), mask_ratio=0.5)([dataset[0], dataset[1]])]
    results = evaluate_field(model, batches)
    with torch.no_grad():
        alone = model(**batches[0], use_context_inputs=False).predictions["metric_depth"]
    mask = batches[0]["view_mask"]
    expected = (alone[mask] - batches[0]["field_targets"]["metric_depth"][mask]).abs().mean().item()
    assert results["metric_depth"]["model_images_only"]["l1"] == pytest.approx(expected, rel=1e-5)
    assert results["metric_depth"]["model_images_only"]["l1"] != pytest.approx(results["metric_depth"]["model"]["l1"])
    header = format_field_table(results).splitlines()[0].split()
    assert header == ["head", "metric", "model", "model_images_only", "context_mean", "nearest_view"]
    config.context_inputs = None
    plain = evaluate_field(Spa3RForFieldPrediction(config).eval(), batches)
    assert "model_images_only" not in plain["rgb"]
    assert format_field_table(plain).splitlines()[0].split()[2:] == ["model", "context_mean", "nearest_view"]


def test_a_depth_probe_on_true_depth_is_scored_against_teacher_estimate_copies():
    """The tiny config's probe learns the renderer's depth: scored against it, with baselines that copy the geometry
    teacher's depth estimate of the context views (what images give); copies of their true depth are reported apart."""
    from spa3_vlm.training.field_eval import teacher_depth

    config = AutoConfig.from_pretrained(TINY)
    assert config.use_depth_probe and config.depth_probe_target == "metric_depth"
    torch.manual_seed(0)
    model = Spa3RForFieldPrediction(config).eval()
    dataset = PSFMDataset(fake_scenes(2), num_views=(4, 4), seed=0)
    batch = PSFMCollator(field_targets=("metric_depth",), mask_ratio=0.5)([dataset[0], dataset[1]])
    results = evaluate_field(model, [batch])
    mask, truth = batch["view_mask"], batch["field_targets"]["metric_depth"]
    with torch.no_grad():
        probe = model(**batch).predictions["depth"]
        estimate = teacher_depth(model, batch["pixel_values"])
    nearest = nearest_context_view(batch["extrinsics"], mask)[..., None, None].expand_as(truth)
    assert results["depth"]["model"]["l1"] == pytest.approx((probe[mask] - truth[mask]).abs().mean().item(), rel=1e-5)
    copied = torch.gather(estimate, 1, nearest)
    assert results["depth"]["nearest_view"]["l1"] == pytest.approx((copied[mask] - truth[mask]).abs().mean().item(), rel=1e-5)
    privileged = torch.gather(truth, 1, nearest)
    assert results["depth_true_copies"]["nearest_view"]["l1"] == pytest.approx(
        (privileged[mask] - truth[mask]).abs().mean().item(), rel=1e-5
    )
    table = format_field_table(results)
    assert "copying their true depth instead" in table and "depth_true_copies" not in table.splitlines()[0]
    without = {k: v for k, v in batch.items() if k != "field_targets"}
    with torch.no_grad():  # evaluation needs no renderer: the probe predicts the same without its target
        assert torch.equal(model(**without).predictions["depth"], probe)
    with pytest.raises(ValueError, match=r"depth probe learns field_targets\['metric_depth'\]"):
        model.train()(**without)


class KillAt(TrainerCallback):
    """Simulates a crash: raises once training reaches a step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("killed")


@pytest.mark.parametrize("muon", [False, True], ids=["adamw", "muon"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, muon):
    reference = psfm_trainer(tmp_path / "straight", 4, muon=muon)
    reference.train()
    logged = [entry for entry in reference.state.log_history if "loss" in entry]
    assert {"loss/geo_l1", "loss/rgb_l1", "loss/metric_depth_l1"} <= set(logged[0])

    crashed = psfm_trainer(tmp_path / "resumed", 4, [KillAt(3)], muon=muon)
    with pytest.raises(RuntimeError, match="killed"):
        crashed.train()
    assert sorted(os.listdir(tmp_path / "resumed")) == ["checkpoint-2"]  # complete, no staging leftovers
    resumed = psfm_trainer(tmp_path / "resumed", 4, muon=muon)
    resumed.train(resume_from_checkpoint=True)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    if muon:
        assert type(resumed.optimizer.optimizer).__name__ == "MuonWithAdamW"


def test_muon_steps_block_matrices_with_muon_and_the_rest_with_adamw(tmp_path):
    """One MuonWithAdamW step equals torch's Muon on the blocks' weight matrices and torch's AdamW on every
    other parameter, with the scheduler's learning rate and per-group weight decay."""
    from spa3_vlm.training.optim import MuonWithAdamW, is_muon_parameter, muon_param_groups

    trainer = psfm_trainer(tmp_path, 1, muon=True)
    model = trainer.model
    groups = muon_param_groups(model, 0.1, trainer.get_decay_parameter_names(model))
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in groups if g["use_muon"] for p in g["params"]}
    assert "decoder.blocks.0.attn.qkv.weight" in muon_names and "spa3r.encoder.blocks.1.mlp.fc2.weight" in muon_names
    for name in ("spa3r.query_embed.weight", "pose_tokenizer.weight", "heads.geo.fc1.weight", "spa3r.projection.weight"):
        assert name not in muon_names and dict(model.named_parameters())[name].requires_grad
    assert all(p.requires_grad for g in groups for p in g["params"])  # frozen teachers stay out
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    assert not is_muon_parameter("decoder.blocks.0.norm1.weight", torch.zeros(4))

    torch.manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    def copies(params):  # detached copies with the same gradients, for the plain torch optimizers
        out = [p.detach().clone().requires_grad_() for p in params]
        for copy, p in zip(out, params):
            copy.grad = p.grad.clone()
        return out

    muon_params = [p for g in groups if g["use_muon"] for p in g["params"]]
    adamw_groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups if not g["use_muon"]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected_muon = copies(muon_params)
    expected_adamw = [{"params": copies(g["params"]), "weight_decay": g["weight_decay"]} for g in adamw_groups]
    optimizer = MuonWithAdamW(groups, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, momentum=0.9)
    for group in optimizer.param_groups:  # what an LR scheduler does
        group["lr"] = 5e-3
    optimizer.step()
    torch.optim.Muon(expected_muon, lr=5e-3, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw").step()
    torch.optim.AdamW(expected_adamw, lr=5e-3, betas=(0.9, 0.95), eps=1e-8).step()
    for copy, p in zip(expected_muon, muon_params):
        assert torch.equal(copy, p)
    for expected, g in zip(expected_adamw, adamw_groups):
        for copy, p in zip(expected["params"], g["params"]):
            assert torch.equal(copy, p)
    assert not torch.equal(before["decoder.blocks.0.attn.qkv.weight"], model.decoder.blocks[0].attn.qkv.weight)

    # The state round-trips, and a state from another optimizer layout is refused with a clear message.
    state = optimizer.state_dict()
    again = MuonWithAdamW(muon_param_groups(model, 0.1, trainer.get_decay_parameter_names(model)), lr=1e-2)
    again.load_state_dict(state)
    assert again.param_groups[0]["lr"] == 5e-3 and again._muon.param_groups[0] is again._muon_groups[0]
    with pytest.raises(ValueError, match="not a MuonWithAdamW state dict"):
        again.load_state_dict(torch.optim.AdamW(model.heads.parameters()).state_dict())
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        MuonWithAdamW([{"params": [model.decoder.norm.weight], "use_muon": True}])


def test_weight_decay_skips_norms_tokens_and_biases(tmp_path):
    trainer = psfm_trainer(tmp_path, 1)
    decay = set(trainer.get_decay_parameter_names(trainer.model))
    assert "spa3r.encoder.blocks.0.attn.qkv.weight" in decay
    for name in ("spa3r.query_embed.weight", "spa3r.encoder.register_tokens", "spa3r.encoder.blocks.0.attn.q_norm.weight",
                 "decoder.blocks.0.norm1.weight", "heads.geo.fc1.bias", "spa3r.backbone.aggregator.camera_token"):  # fmt: skip
        assert name not in decay


TINY_RUN = [
    "--num_train_scenes", "2", "--num_eval_scenes", "1", "--frames_per_scene", "6", "--image_height", "56",
    "--image_width", "70", "--min_views", "3", "--max_views", "4", "--per_device_train_batch_size", "2",
    "--samples_per_scene", "2", "--logging_steps", "1", "--save_steps", "2", "--use_cpu", "true",
]  # fmt: skip


@pytest.mark.slow
def test_main_job_trains_evaluates_and_saves_a_loadable_model(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "train"))
    try:
        import pretrain_psfm
    finally:
        sys.path.pop(0)
    results = pretrain_psfm.main(["--output_dir", str(tmp_path), "--max_steps", "2", *TINY_RUN])
    # Images only: geo and sem fields, the depth read-out and its privileged true-depth copies; no context inputs.
    assert set(results) == {"geo", "sem", "depth", "depth_true_copies", "num_views"}
    assert set(results["geo"]) == {"model", "context_mean", "nearest_view"}
    assert (tmp_path / "field_pca.png").stat().st_size > 0 and (tmp_path / "field_pca_sem.png").stat().st_size > 0
    saved = json.loads((tmp_path / "field_eval.json").read_text())
    assert saved["geo"]["model"]["l1"] == pytest.approx(results["geo"]["model"]["l1"])
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder) is Spa3RModel
    # The frozen backbone is the shipped geometry teacher, loaded from the config's relative path.
    teacher = load_file(os.path.join(REPO, "hub_configs", "vggt-tiny-synthrooms", "model.safetensors"))
    for name, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, teacher[name]), name
    # The model card: both shipped MIT teachers bundled, so MIT; the scores the run printed (tests/test_cards.py).
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "mit" and "## Held-out field scores" in card.text and "| steps | 2 |" in card.text
    assert "`hub_configs/vggt-tiny-synthrooms`" in card.text and "`hub_configs/dinov3-tiny-synthrooms`" in card.text


@pytest.mark.slow
def test_two_cpu_processes_train_with_accelerate(tmp_path):
    command = [
        # --multi_gpu starts one process per rank through torch.distributed; without GPUs they use gloo on the CPU.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(REPO, "train", "pretrain_psfm.py"),
        "--output_dir", str(tmp_path), "--max_steps", "2", *TINY_RUN, "--num_eval_scenes", "0",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (tmp_path / "checkpoint-2" / "rng_state_0.pth").exists() and (tmp_path / "checkpoint-2" / "rng_state_1.pth").exists()
    assert type(AutoModel.from_pretrained(tmp_path)) is Spa3RModel
    assert not (tmp_path / "field_eval.json").exists()


def test_reference_recipe_json_gives_the_reference_optimizer_and_schedule():
    """hub_configs/spa3r-base/pretrain_reference.json: the reference's AdamW and per-step cosine to 2e-4 over 80k
    steps without warm-up (CosineAnnealingLR), clipping 1.0, 4-12 views of ScanNet (2-6 frames apart) and ScanNet++
    (20-60 frames apart) mixed."""
    sys.path.insert(0, os.path.join(REPO, "train"))
    try:
        import pretrain_psfm
    finally:
        sys.path.pop(0)
    from transformers import HfArgumentParser
    from transformers.optimization import get_scheduler

    with open(os.path.join(REPO, "hub_configs", "spa3r-base", "pretrain_reference.json")) as handle:
        recipe = json.load(handle)
    assert recipe["bf16"] is True  # GPU recipe; parsed here on CPU without it
    recipe["bf16"] = False
    parser = HfArgumentParser((pretrain_psfm.ModelArguments, pretrain_psfm.DataArguments, pretrain_psfm.OptimizerArguments, TrainingArguments))
    model_args, data_args, optim_args, args = parser.parse_dict(recipe)
    assert model_args.config_name == "hub_configs/spa3r-base" and not optim_args.muon
    assert (data_args.dataset, data_args.min_views, data_args.max_views) == ("scannet,scannetpp", 4, 12)
    assert pretrain_psfm.dataset_sources(data_args) == ["scannet", "scannetpp"] and len(pretrain_psfm.data_roots(data_args)) == 2
    assert [pretrain_psfm.source_interval(data_args, s) for s in ("scannet", "scannetpp")] == [(2, 6), (20, 60)]
    assert data_args.images_per_batch == 24  # per GPU: 6 samples of 4 views ... 2 of 12, one view count per batch
    assert args.optim == "adamw_torch" and (args.learning_rate, args.weight_decay, args.adam_beta1, args.adam_beta2) == (2e-3, 1e-4, 0.9, 0.999)
    assert args.max_grad_norm == 1.0 and args.warmup_steps == 0 and args.max_steps == 80000

    ours = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, ours, num_warmup_steps=args.warmup_steps,
                              num_training_steps=args.max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)  # fmt: skip
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=80000, eta_min=2e-4)
    reference.step()  # no gradient, so no change: only tells the scheduler that the optimizer has stepped
    for step in range(80000):
        if step % 9999 == 0:  # ours is a LambdaLR: its lr at any step is base lr x lambda(step)
            lr = args.learning_rate * scheduler.lr_lambdas[0](step)
            assert lr == pytest.approx(reference.param_groups[0]["lr"], rel=1e-6, abs=1e-12), step
        annealing.step()


def _readme_main_job_table() -> dict:
    """The baselines of the table the README says the main job printed: {(head, metric): (context_mean, nearest)}."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    block = text.split("and printed:\n\n```\n", 1)[1].split("```", 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = line.replace("*", "").split()
        if len(cells) == 5 and cells[1] in ("l1", "cosine"):
            rows[(cells[0], cells[1])] = (float(cells[3]), float(cells[4]))
    copies = re.search(r"gives l1 context_mean ([0-9.]+), nearest_view ([0-9.]+)", block)
    rows[("depth_true_copies", "l1")] = (float(copies[1]), float(copies[2]))
    return rows


@pytest.mark.slow
def test_readme_main_job_baselines_are_what_the_code_computes_for_seed_0(tmp_path):
    """The README's quoted baselines for seed 0 depend only on the held-out scenes, the shipped teachers and the
    fixed evaluation draws, not on training: one step on two training scenes must reproduce them to the printed
    precision, half a unit of the last digit (the model's own numbers need the full run and vary a little across CPUs; README)."""
    quoted = _readme_main_job_table()
    assert {head for head, _ in quoted} == {"geo", "sem", "depth", "depth_true_copies"}
    sys.path.insert(0, os.path.join(REPO, "train"))
    try:
        import pretrain_psfm
    finally:
        sys.path.pop(0)
    results = pretrain_psfm.main(
        ["--output_dir", str(tmp_path), "--max_steps", "1", "--num_train_scenes", "2", "--save_strategy", "no", "--use_cpu", "true"]
    )
    for (head, metric), (context_mean, nearest) in quoted.items():
        assert results[head]["context_mean"][metric] == pytest.approx(context_mean, abs=5.1e-5), (head, metric)
        assert results[head]["nearest_view"][metric] == pytest.approx(nearest, abs=5.1e-5), (head, metric)


def test_checkpoints_can_leave_out_the_frozen_teachers_and_still_resume_exactly(tmp_path):
    """With checkpoint_teachers=False the Trainer's checkpoints hold the trained parts only (the teachers come from
    their sources again when a run resumes), resuming reaches the uninterrupted weights bit for bit, save_model still
    writes the whole model, and a checkpoint missing a trained tensor is refused by name."""
    from safetensors.torch import load_file, save_file

    from spa3_vlm.training.psfm import frozen_teacher_keys
    from spa3_vlm.training.teachers import load_pretrained_teachers

    def trainer(output, steps):
        run = psfm_trainer(output, steps)
        load_pretrained_teachers(run.model, root=REPO)  # the shipped tiny VGGT named by the config
        run.checkpoint_teachers = False
        return run

    straight = trainer(tmp_path / "straight", 4)
    straight.train()
    teachers = frozen_teacher_keys(straight.model)
    assert teachers and all(k.startswith("spa3r.backbone.") for k in teachers)
    saved = load_file(tmp_path / "straight" / "checkpoint-2" / "model.safetensors")
    assert not teachers & set(saved) and set(saved) == set(straight.model.state_dict()) - teachers
    straight.save_model(str(tmp_path / "release"))
    assert teachers <= set(load_file(tmp_path / "release" / "model.safetensors"))  # self-contained release
    # Such a checkpoint is no model folder on its own: from_pretrained says so, load_training_checkpoint completes it.
    from spa3_vlm.training.psfm import load_training_checkpoint

    checkpoint = str(tmp_path / "straight" / "checkpoint-4")
    with pytest.raises(ValueError, match=r"is a training checkpoint without the frozen teachers .*load_training_checkpoint"):
        Spa3RForFieldPrediction.from_pretrained(checkpoint)
    loaded = load_training_checkpoint(checkpoint, root=REPO).state_dict()
    assert loaded.keys() == straight.model.state_dict().keys()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, loaded[name]), name

    import shutil

    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")  # as if killed
    resumed = trainer(tmp_path / "resumed", 4)
    resumed.train(resume_from_checkpoint=True)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name

    weights = tmp_path / "resumed" / "checkpoint-2" / "model.safetensors"
    state = load_file(weights)
    dropped = sorted(k for k in state if k.startswith("spa3r.encoder."))[0]
    save_file({k: v for k, v in state.items() if k != dropped}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"the checkpoint does not fit this model: missing \['{re.escape(dropped)}'\]"):
        trainer(tmp_path / "resumed", 4).train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))


def test_the_view_budget_batch_sampler_is_the_references_and_resumes_exactly(tmp_path):
    """ViewBudgetBatchSampler: one view count per batch, images_per_batch // V samples, uniform view counts (not
    biased low), deterministic per epoch; through PSFMTrainer every batch has that many views and a resumed run
    reaches the uninterrupted weights bit for bit."""
    import shutil
    from collections import Counter

    from spa3_vlm.data.psfm import ViewBudgetBatchSampler

    sampler = ViewBudgetBatchSampler(100, num_views=(4, 12), images_per_batch=24, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(100 / (sum(max(1, 24 // v) for v in range(4, 13)) / 9))
    for batch in batches:
        views = {v for _, v in batch}
        assert len(views) == 1 and len(batch) == 24 // views.pop()
    seen = Counter(index for batch in batches for index, _ in batch)
    assert set(seen) <= set(range(100)) and len(seen) >= 90  # one pass over a shuffled order, refilled at the end
    draws = Counter(batch[0][1] for epoch in range(40) for batch in (sampler.set_epoch(epoch) or list(sampler)))
    assert set(draws) == set(range(4, 13)) and max(draws.values()) < 2 * min(draws.values())
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler) and list(sampler) != batches

    def trainer(output):
        run = psfm_trainer(output, 4)
        run.images_per_batch = 6  # views 2-4: 3 samples of 2 views, 2 of 3, or 1 of 4
        return run

    straight = trainer(tmp_path / "straight")
    loader = straight.get_train_dataloader()
    for batch in loader:
        assert batch["pixel_values"].shape[0] == 6 // batch["pixel_values"].shape[1]
    straight.train()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=True)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
