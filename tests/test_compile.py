"""torch.compile: the Spa3R encoder, decoder and VGGT aggregator compile as one graph each (fullgraph=True) that serves
every view count, with the eager outputs; PSFM pre-training runs compiled through the Trainer (``--torch_compile``)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig

from spa3_vlm import Spa3RForFieldPrediction

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SPA3R = os.path.join(REPO, "hub_configs", "spa3r-tiny")


def tiny_inputs(views: int, seed: int = 0):
    """Backbone tokens, cameras (view 0 at the origin, the others turned and moved) and images for ``views`` views."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, views, 12, 128, generator=generator)  # a 3x4 patch grid (42x56 pixels) of width-128 tokens
    extrinsics = torch.eye(4).repeat(1, views, 1, 1)
    angle = torch.linspace(0, 0.3, views)
    extrinsics[0, :, 0, 0], extrinsics[0, :, 0, 2] = angle.cos(), angle.sin()
    extrinsics[0, :, 2, 0], extrinsics[0, :, 2, 2] = -angle.sin(), angle.cos()
    extrinsics[0, :, :3, 3] = torch.randn(views, 3, generator=generator) * 0.3
    extrinsics[0, 0] = torch.eye(4)
    intrinsics = torch.tensor([[50.0, 0, 28], [0, 50.0, 21], [0, 0, 1]]).repeat(1, views, 1, 1)
    images = torch.rand(1, views, 3, 42, 56, generator=generator)
    return tokens, extrinsics, intrinsics, images


@pytest.mark.slow
def test_encoder_decoder_and_aggregator_compile_to_one_graph_for_every_view_count(monkeypatch):
    import torch._dynamo
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)  # no compile workers on a shared machine
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]
    graphs.clear()
    torch.manual_seed(0)
    model = Spa3RForFieldPrediction(AutoConfig.from_pretrained(TINY_SPA3R)).eval()
    latents = torch.randn(1, model.config.num_queries, model.config.hidden_size)
    compiled = {
        "encoder": torch.compile(model.spa3r._encode_tokens, fullgraph=True),
        "decoder": torch.compile(model._decode_field, fullgraph=True),
        "aggregator": torch.compile(model.spa3r.backbone.aggregator, fullgraph=True),
    }
    last = model.spa3r.backbone.config.num_hidden_layers - 1

    def outputs(views: int, functions: dict) -> dict:
        tokens, extrinsics, intrinsics, images = tiny_inputs(views)
        if functions is compiled:  # the view count is a symbolic size: one graph for all of them
            for tensor in (tokens, extrinsics, intrinsics, images):
                torch._dynamo.mark_dynamic(tensor, 1)
        with torch.no_grad():
            return {
                "encoder": functions["encoder"](tokens, (3, 4), None, None, None, None),
                "decoder": functions["decoder"](latents, extrinsics, intrinsics, (42, 56))["geo"],
                "masked aggregator": functions["aggregator"](images, num_context_views=1, keep_layers={last})[-1],
            }

    eager = {"encoder": model.spa3r._encode_tokens, "decoder": model._decode_field, "aggregator": model.spa3r.backbone.aggregator}
    for views in (2, 3, 5):
        got, expected = outputs(views, compiled), outputs(views, eager)
        for name in expected:
            assert got[name].shape == expected[name].shape, name
            assert (got[name] - expected[name]).abs().max() <= 1e-5 * max(1.0, expected[name].abs().max()), (name, views)
    # One graph per function, compiled once for every view count (a recompile would add a graph).
    assert graphs["unique_graphs"] == len(compiled)


@pytest.mark.slow
def test_psfm_pre_training_runs_compiled_through_the_trainer(tmp_path):
    """``--torch_compile`` (the Trainer's flag) on the tiny main job, in fresh processes (accelerate keeps one compile
    setting per process): the same losses as the eager run. The ``aot_eager`` backend traces and differentiates the
    same graphs as inductor without generating kernels, which takes minutes on a CPU."""
    common = [
        sys.executable, os.path.join(REPO, "train", "pretrain_psfm.py"), "--max_steps", "2", "--num_train_scenes", "2",
        "--num_eval_scenes", "0", "--frames_per_scene", "6", "--image_height", "56", "--image_width", "70",
        "--min_views", "3", "--max_views", "4", "--per_device_train_batch_size", "2", "--samples_per_scene", "2",
        "--logging_steps", "1", "--save_steps", "2", "--use_cpu", "true",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_LOGS": "dynamo"}
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["--torch_compile", "true", "--torch_compile_backend", "aot_eager"])):
        output = tmp_path / name
        result = subprocess.run([*common, "--output_dir", str(output), *extra], capture_output=True, text=True, timeout=900, env=env)
        assert result.returncode == 0, result.stderr[-4000:]
        traced = "torchdynamo start tracing forward" in result.stderr
        assert traced == (name == "compiled"), name  # the compiled run really went through torch.compile
        state = json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())
        losses[name] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses["eager"]) == 2 and losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)


def test_slice_bounds_match_python_slices():
    from spa3_vlm.modeling_geometry import contiguous_slice_bounds

    for rows in (slice(None), slice(0, 3), slice(3, None), slice(-4, None), slice(2, -1), slice(-20, 50), slice(5, 2), slice(None, None, 1)):
        for length in (0, 4, 7):
            start, stop, _ = rows.indices(length)
            assert contiguous_slice_bounds(rows, length) == (start, stop), (rows, length)
    with pytest.raises(ValueError, match="contiguous slice"):
        contiguous_slice_bounds(slice(0, 4, 2), 8)
