"""The Spa3R benchmarks: each runs at its smallest size and writes the JSON it promises; the analytic FLOP
counts equal a hand count and torch's FlopCounterMode; the measuring helpers measure what they say.
Timings are never asserted (this machine is shared)."""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
STAT_KEYS = {"median", "q1", "q3", "iqr", "rel_iqr", "min", "max", "n"}
MACHINE_KEYS = {"date", "cpu_model", "cpu_count", "torch_threads", "torch", "python", "device"}


@pytest.fixture(scope="module")
def bench():
    """The benchmark modules, run on one thread (two spin-wait on a busy 2-core machine); state restored."""
    threads = torch.get_num_threads()
    sys.path.insert(0, str(BENCH_DIR))
    import bench_spa3r
    import common

    yield bench_spa3r, common
    sys.path.remove(str(BENCH_DIR))
    for name in [name for name, module in sys.modules.items() if str(getattr(module, "__file__", "")).startswith(str(BENCH_DIR))]:
        sys.modules.pop(name)  # generic module names (`common`, ...): don't leave them to other tests
    torch.set_num_threads(threads)


def run(bench, name, tmp_path):
    module, _ = bench
    results = module.main([name, "--quick", "--threads", "1", "--output-dir", str(tmp_path)])
    written = json.loads((tmp_path / f"spa3r_{name}.json").read_text())
    assert written["benchmark"] == f"spa3r_{name}" == results[name]["benchmark"]
    assert MACHINE_KEYS <= set(written["machine"]) and written["machine"]["torch"] == torch.__version__
    assert written["args"] == {"repeats": 1, "warmup": 0, "min_seconds": 0.0, "quick": True, "threads": 1}
    return written


def assert_stats(summary, n=1, positive=True):
    assert set(summary) == STAT_KEYS and summary["n"] == n
    assert summary["q1"] <= summary["median"] <= summary["q3"] and (summary["median"] > 0 or not positive)


# ---------------------------------------------------------------------------------------------- FLOPs


def micro_config():
    from spa3_vlm import Spa3RConfig

    return Spa3RConfig(
        hidden_size=16, num_attention_heads=2, num_queries=2, num_register_tokens=1, num_encoder_layers=1,
        num_decoder_layers=1, mlp_ratio=2.0, backbone_hidden_size=8, target_heads={"geo": 8}, vggt_config=None,
    )


def test_flop_counts_equal_a_hand_count_and_flop_counter(bench):
    module, common = bench
    config = micro_config()
    # Encoder, 1 view on a 1x2 grid: 2 patches, sequence 1 register + 2 queries + 2 patches = 5, width 16, MLP 32.
    projection = 2 * 2 * 8 * 16
    block_linear = 2 * 5 * 16 * 48 + 2 * 5 * 16 * 16 + 2 * 5 * 16 * 32 + 2 * 5 * 32 * 16
    block_attention = 2 * (2 * 5 * 5 * 16)  # QK^T and AV over 2 heads of 8 channels
    # The last (here: only) block computes just the 2 query rows: the other 3 rows' output projection, MLP and
    # attention row are skipped (their q still comes out of the shared qkv projection).
    skipped_row = 2 * 16 * 16 + 2 * 16 * 32 + 2 * 32 * 16 + 4 * 5 * 16
    assert module.last_block_skipped_flops(config, "encoder", 1, (1, 2)) == 3 * skipped_row
    encoder = projection + block_linear + block_attention - 3 * skipped_row
    assert module.spa3r_encoder_flops(config, 1, (1, 2))["total"] == encoder == 13952
    # Decoder, 2 views: two sequences of 5, 4 ray tokens in all.
    pose_tokenizer = 2 * 4 * 3 * 16
    # PRoPE on q, k, v and out: half of each head's 8 channels (2 heads: 2 groups of 4) times a 4x4 matrix, 4 tokens.
    prope = 4 * (2 * 4 * 2 * 4 * 4)
    geo_head = 2 * 4 * 16 * 32 + 2 * 4 * 32 * 8
    probe_fc1, probe_fc2 = 2 * 4 * 16 * 32, 2 * 4 * 32 * 1
    cameras = 2 * (2 * (2 * 4 * 4 * 4) + 2 * 3 * 3)
    # Its last block computes only the 2 ray rows of each sequence: 1 register and 2 latent rows skipped, twice.
    assert module.last_block_skipped_flops(config, "decoder", 2, (1, 2)) == 2 * 3 * skipped_row
    decoder = pose_tokenizer + 2 * (block_linear + block_attention) + prope + geo_head + probe_fc1 + probe_fc2 + cameras - 6 * skipped_row
    assert module.spa3r_decoder_flops(config, 2, (1, 2))["total"] == decoder == 39332
    # Training step: backward 2x, except 1x for the layers whose input needs no gradient, 0x for the cameras.
    one_x = projection + pose_tokenizer + prope + probe_fc1
    step = module.spa3r_train_step_flops(config, 2, 1, (1, 2))
    assert step["forward"] == encoder + decoder
    assert step["total"] == encoder + decoder + 2 * (encoder + decoder - one_x - cameras) + one_x == 152740

    device = torch.device("cpu")
    micro = module.build_model(config, device)
    data = module.random_field_batch(config, 2, 1, (14, 28), device)
    assert common.counted_flops(module.encoder_forward(micro, data, device)) == encoder
    assert common.counted_flops(module.train_step(micro, data, device)) == 152740


def test_analytic_flops_match_flop_counter_on_tiny_models(bench):
    module, common = bench
    from spa3_vlm import VGGTConfig, VGGTModel

    device = torch.device("cpu")
    config = module.spa3r_config("tiny")
    model = module.build_model(config, device)
    data = module.random_field_batch(config, 3, 2, (28, 42), device)
    latents = torch.randn(1, config.num_queries, config.hidden_size)
    assert common.counted_flops(module.train_step(model, data, device)) == module.spa3r_train_step_flops(config, 3, 2, (2, 3))["total"]
    assert common.counted_flops(module.decoder_forward(model, data, latents, device)) == module.spa3r_decoder_flops(config, 3, (2, 3))["total"]

    # The encoder variant with PRoPE on the context tokens (cameras of the context views) instead of 2D RoPE.
    values = config.to_dict()
    values["encoder_camera_encoding"] = "prope"
    prope_config = type(config).from_dict(values)
    prope_model = module.build_model(prope_config, device)
    encoder = module.spa3r_encoder_flops(prope_config, 2, (2, 3))
    assert encoder["prope"] > 0 and encoder["camera_matrices"] > 0
    assert common.counted_flops(module.encoder_forward(prope_model, data, device)) == encoder["total"]
    assert common.counted_flops(module.train_step(prope_model, data, device)) == module.spa3r_train_step_flops(prope_config, 3, 2, (2, 3))["total"]

    tiny_vggt = module.spa3r_config("tiny", with_backbone=True).vggt_config
    dino_vggt = VGGTConfig(image_size=56, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_embed_num_layers=1,
                           patch_embed_num_heads=2, use_camera_head=False, use_depth_head=False, use_point_head=False)
    images = torch.rand(1, 4, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    for vggt_config in (tiny_vggt, dino_vggt):
        torch.manual_seed(0)
        aggregator = VGGTModel(vggt_config).aggregator
        for context in (None, 2):
            with torch.no_grad():
                counted = common.counted_flops(lambda: aggregator(images, num_context_views=context))
            assert counted == module.vggt_aggregator_flops(vggt_config, 4, (2, 3), num_context_views=context)
    # The masked pass attends fewer (query, key) pairs: 2 context views see 2 views, 2 targets see all 4.
    full, masked = (module.vggt_aggregator_flops(tiny_vggt, 4, (2, 3), num_context_views=c) for c in (None, 2))
    per_view = 1 + tiny_vggt.num_register_tokens + 6
    pairs_saved = (4 * per_view) ** 2 - ((2 * per_view) ** 2 + 2 * per_view * 4 * per_view)
    assert full - masked == tiny_vggt.num_hidden_layers * 4 * pairs_saved * tiny_vggt.hidden_size


# ---------------------------------------------------------------------------------------------- helpers


def test_summary_fit_and_interleaving(bench):
    _, common = bench
    summary = common.summarize([4.0, 1.0, 3.0, 2.0, 100.0])
    assert summary["median"] == 3.0 and summary["q1"] == 2.0 and summary["q3"] == 4.0 and summary["iqr"] == 2.0
    assert summary["min"] == 1.0 and summary["max"] == 100.0 and summary["n"] == 5
    with pytest.raises(ValueError, match="at least one sample"):
        common.summarize([])
    fit = common.loglog_slope([1, 2, 4, 8], [3 * x**1.5 for x in (1, 2, 4, 8)])
    assert fit["slope"] == pytest.approx(1.5) and fit["prefactor"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="two distinct x values"):
        common.loglog_slope([2, 2], [1, 3])

    calls = []
    workloads = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = common.interleaved_times(workloads, torch.device("cpu"), repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotating rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert common.ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    calls.clear()  # a workload far faster than min_seconds is repeated within each sample
    common.interleaved_times({"noop": lambda: calls.append(1)}, torch.device("cpu"), repeats=2, warmup=0, min_seconds=0.05)
    assert len(calls) > 2 * 10

    probe = common.MatmulProbe(8, 4, 2, torch.device("cpu"), torch.float32, min_seconds=0.0)
    assert probe.flops == 2 * 8 * 4 * 2 * probe.iterations
    probe()
    assert torch.allclose(probe.out, probe.a @ probe.b)


def test_peak_memory_counts_tensors_alive_together(bench):
    _, common = bench
    before = torch.ones(1_000_000)  # allocated before the call: not counted, even when freed inside

    def allocate():
        nonlocal before
        first = torch.empty(2_000_000)  # 8 MB
        second = torch.empty(2_000_000)  # 8 MB, both alive: 16 MB
        del first
        third = torch.empty(1_000_000)  # 4 MB while 8 MB alive: 12 MB
        before = None
        return second, third

    peak = common.peak_memory_bytes(allocate, torch.device("cpu"))
    assert 16_000_000 <= peak < 16_100_000


# ---------------------------------------------------------------------------------------------- runs


def test_compute_benchmark_quick(bench, tmp_path):
    result = run(bench, "compute", tmp_path)
    rows = {row["workload"]: row for row in result["rows"]}
    assert set(rows) == {"encoder_forward", "train_step", "train_step_with_backbone"}
    for row in rows.values():
        assert row["size"] == "tiny" and row["flops"] > 0 and row["flops"] == row["flops_counted"]
        for key in ("seconds", "achieved_flops_per_s", "matmul_flops_per_s", "shape_matmul_flops_per_s", "efficiency", "efficiency_vs_shape"):
            assert_stats(row[key])
        assert row["efficiency"]["median"] == pytest.approx(row["achieved_flops_per_s"]["median"] / row["matmul_flops_per_s"]["median"])
    assert rows["train_step"]["flops_source"] == "analytic" and rows["train_step_with_backbone"]["flops_source"] == "FlopCounterMode"
    # The step with the backbone does the step without it plus the teachers' work.
    assert rows["train_step_with_backbone"]["flops"] > rows["train_step"]["flops"]
    ops = result["profile"]["top_ops"]
    assert ops and all(set(op) == {"op", "self_ms", "share", "calls"} for op in ops) and sum(op["share"] for op in ops) <= 1 + 1e-9
    assert "encoder_forward" in result["table"]


def test_passes_benchmark_quick(bench, tmp_path):
    (row,) = run(bench, "passes", tmp_path)["rows"]
    assert row["size"] == "tiny" and row["views"] == 4 and row["context_views"] == 2
    for key in ("seconds_two_pass", "seconds_masked_pass", "time_ratio_two_over_masked"):
        assert_stats(row[key])
    # Both modes give the same context tokens; the second pass costs extra FLOPs.
    assert row["equality"]["context_tokens_max_abs_diff"] <= 1e-5 < row["equality"]["context_tokens_max_abs"]
    assert row["flops_counted"]["two_pass"] > row["flops_counted"]["masked_pass"] > 0
    assert row["aggregator_flop_ratio"] > 1 and row["flop_ratio_two_over_masked"] > 1
    assert all(value > 0 for value in row["peak_memory_bytes"].values())


def test_rows_benchmark_quick(bench, tmp_path):
    (row,) = run(bench, "rows", tmp_path)["rows"]
    assert row["config"] == "tiny" and row["views"] == 4 and row["context_views"] == 2
    for key in ("seconds_kept_rows", "seconds_all_rows", "time_ratio_all_over_kept"):
        assert_stats(row[key])
    # The same values either way; computing all rows costs more FLOPs.
    assert row["latents_max_abs_diff"] <= 1e-5 and row["decoded_max_abs_diff"] <= 1e-5
    assert row["flop_ratio_all_over_kept"] > 1
    # ... and the all-rows path really computes every row of the decoder's last block.
    module, _ = bench
    config = module.spa3r_config("tiny")
    model = module.build_model(config, torch.device("cpu"))
    data = module.random_field_batch(config, 2, 1, (28, 42), torch.device("cpu"))
    rows = []
    hook = model.decoder.blocks[-1].register_forward_hook(lambda block, args, output: rows.append(output.shape[1]))
    with torch.no_grad():
        latents = module.encode(model, data)
        model.decode_field(latents, data.extrinsics, data.intrinsics, data.image_size)
        with module.all_rows_last_block():
            model.decode_field(latents, data.extrinsics, data.intrinsics, data.image_size)
    hook.remove()
    assert rows == [6, config.num_queries + 6]  # 2x3 ray tokens; registers are never output rows


def test_scaling_benchmark_quick(bench, tmp_path):
    result = run(bench, "scaling", tmp_path)
    section = result["sections"]["tiny"]
    assert [p["views"] for p in section["views_sweep"]] == [1, 2, 4]
    for point in section["views_sweep"]:
        assert_stats(point["encoder_seconds"])
        assert_stats(point["decoder_seconds"])
        assert point["encoder_peak_bytes"] > 0 and point["encoder_train_peak_bytes"] > point["encoder_peak_bytes"]
    exponents = section["views_exponents"]
    assert_stats(exponents["encoder_time"], positive=False)  # a noisy 1-round fit may even come out negative
    assert_stats(exponents["decoder_time"], positive=False)
    # One decoder sequence per view: FLOPs exactly, and memory nearly, linear in the view count.
    assert exponents["decoder_flops"] == pytest.approx(1.0)
    assert 0.9 < exponents["decoder_memory"] < 1.1
    # The control: SDPA's math backend materialises the scores, so its peak memory exceeds the fused kernel's.
    control = section["math_backend_control"]
    assert control["views"] == [2, 4] and all(m > d for m, d in zip(control["math_backend_peak_bytes"], control["sdpa_peak_bytes"]))
    largest = result["largest_views"]
    assert largest["size"] == "tiny" and largest["budget_bytes"] > 0
    assert largest["inference"]["largest_views"] > 4 and largest["inference"]["bytes_per_view"] > 0
    assert largest["inference"]["bytes_at_largest"] <= largest["budget_bytes"]


def test_memory_benchmark_quick(bench, tmp_path):
    result = run(bench, "memory", tmp_path)
    rows = {row["case"]: row for row in result["rows"]}
    assert set(rows) == {"encoder tiny", "decoder tiny", "aggregator tiny"}
    assert result["reference_dir"] is None
    if rows["encoder tiny"]["baseline_bytes"] is None:  # a copy without the git history
        pytest.skip(result["baseline"])
    assert result["baseline"] == "git 03bd959"
    for row in rows.values():
        assert row["now_bytes"] > 0 and row["baseline_bytes"] > 0 and row["reference_bytes"] is None
        # Released branch outputs and in-place residuals: never more than the code before.
        assert row["now_over_baseline"] <= 1.0
    assert rows["encoder tiny"]["now_over_baseline"] < 0.9 and rows["decoder tiny"]["now_over_baseline"] < 0.9


def test_reference_layers_drive_like_ours(bench, tmp_path):
    """The reference driver (bench/spa3r_memory.py) on stand-in layers with the reference's call signatures: the
    encoder and decoder wiring runs and gives the shapes Spa3R gives."""
    module, _ = bench
    import spa3r_memory

    layers, camera = tmp_path / "spa3r" / "models" / "layers", tmp_path / "spa3r" / "models" / "utils"
    layers.mkdir(parents=True), camera.mkdir(parents=True)
    (layers / "__init__.py").write_text(REFERENCE_STANDIN)
    (camera / "camera_utils.py").write_text(
        "import torch\n\ndef get_camera_rays(intrinsics, size):\n"
        "    return torch.ones(*intrinsics.shape[:-2], 3, *size)\n"
    )
    config = module.spa3r_config("tiny")
    data = module.random_field_batch(config, 2, 2, (28, 42), torch.device("cpu"))
    reference = spa3r_memory.ReferenceSpa3R(*spa3r_memory.load_reference(str(tmp_path)), config).eval()
    with torch.no_grad():
        latents = reference.encode(data.context_tokens, data.grid)
        field = reference.decode(latents, data.extrinsics, data.intrinsics, data.image_size)
    assert latents.shape == (1, config.num_queries, config.hidden_size)
    assert {name: tuple(value.shape) for name, value in field.items()} == {
        **{name: (1, 2, 6, size) for name, size in config.target_heads.items()}, "depth": (1, 2, 6, 1)}


# Stand-ins with the reference's constructor and forward signatures (hustvl/Spa3R spa3r/models/layers).
REFERENCE_STANDIN = '''
import torch
from torch import nn


class PositionGetter:
    def __call__(self, batch, height, width, device):
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        return torch.stack([rows, cols], -1).reshape(1, -1, 2).expand(batch, -1, -1).clone()


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features or in_features)

    def forward(self, x):
        return self.fc(x)


class Block(nn.Module):
    def __init__(self, dim, attn_layer=None, **kwargs):
        super().__init__()


class PRoPEAttention(nn.Module):
    pass


class Transformer(nn.Module):
    def __init__(self, embed_dim, depth, num_heads, ffn_ratio, qk_norm, num_register_tokens, block_fn=None, rope_freq=100):
        super().__init__()
        self.num_register_tokens = num_register_tokens
        self.linear = nn.Linear(embed_dim, embed_dim)

    def forward(self, x, pos=None, **kwargs):
        assert pos.shape[:2] == x.shape[:2]
        if "spatial_mask" in kwargs:
            assert kwargs["spatial_mask"].shape == (x.shape[1] + self.num_register_tokens,)
            assert kwargs["viewmats"].shape == (x.shape[0], 1, 4, 4)
        return self.linear(x)
'''


@pytest.mark.slow
def test_compile_benchmark_quick(bench, tmp_path):
    (row,) = run(bench, "compile", tmp_path)["rows"]
    assert row["workload"] == "encoder" and row["compile_seconds"] > 0
    for key in ("seconds_eager", "seconds_compiled", "speedup"):
        assert_stats(row[key])
    assert row["max_abs_diff"] <= 1e-5 * max(1.0, row["max_abs"])


def test_eval_benchmark_quick(tmp_path):
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import bench_eval

        result = bench_eval.main(["--quick", "--output", str(tmp_path / "eval.json")])
    finally:
        sys.path.remove(str(BENCH_DIR))
        for name in [name for name, module in sys.modules.items() if str(getattr(module, "__file__", "")).startswith(str(BENCH_DIR))]:
            sys.modules.pop(name)
    measured = result["measured"]
    assert measured["questions"] == 6 and set(measured["seconds"]) == {"per_question", "grouped", "grouped_batched"}
    assert measured["answers_differing_from_per_question"] == {"grouped": 0, "grouped_batched": 0}
    for summary in (*measured["seconds"].values(), *measured["speedup_vs_per_question"].values(), *measured["stages"].values()):
        assert_stats(summary)
    projection = result["projection"]
    assert projection["hours_grouped"] < projection["hours_per_question_pass"]
    assert projection["flops"]["spa3r_per_scene"] > 0 and projection["cpu"]["visual_tokens"] > 0
    assert json.loads((tmp_path / "eval.json").read_text())["benchmark"] == "eval_throughput"
