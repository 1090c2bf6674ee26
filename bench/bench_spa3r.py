"""Speed, memory and scaling of Spa3R, every headline figure a ratio measured within one run.

    python bench/bench_spa3r.py compute|passes|scaling|rows|memory|compile|all [--device cpu|cuda] [--repeats 5] [--threads 1] [--quick]

- ``compute``: achieved FLOP/s of the encoder forward (``encode_tokens`` on random backbone tokens), of a
  PSFM training step without the backbone (encoder + decoder + heads, forward + backward, random tokens,
  cameras and targets) and, at the tiny size, of a full step with the tiny backbone and teachers, each
  divided by the dense-matmul FLOP/s measured in the same rounds. Writes ``results/spa3r_compute.json``.
- ``passes``: the PSFM teacher step with one masked backbone pass vs two passes (time ratio, FLOP ratio,
  peak memory) for a tiny and a mid-size VGGT, and how far their context / target tokens differ.
  Writes ``results/spa3r_passes.json``.
- ``scaling``: encoder / decoder time and peak memory against the view count and the image size; log-log
  exponents fitted round by round; the largest base-size view count that fits in memory, extrapolated from
  small measured runs; a check that attention never materialises its score matrix.
  Writes ``results/spa3r_scaling.json``.
- ``rows``: a PSFM training step (encoder + decoder + heads, no backbone) whose last encoder / decoder block
  computes only the rows it returns (``Spa3RTransformer(output_rows=...)``, the default) vs all rows then
  sliced, for the tiny, the SynthRooms main-job and the base shapes: time ratio and the largest output
  difference. Writes ``results/spa3r_rows.json``.
- ``memory`` (``spa3r_memory.py``): peak memory of Spa3R and VGGT forwards against the code of a git revision and,
  given a checkout, the public reference's modules. Writes ``results/spa3r_memory.json``.
- ``compile`` (``spa3r_compile.py``): ``torch.compile`` (fullgraph) against eager for the encoder, decoder,
  aggregator and a PSFM step; compile time apart. Writes ``results/spa3r_compile.json``.

The FLOP counts live in ``spa3r_flops.py``, the configs, inputs and measured calls in ``spa3r_workloads.py``.

CPU runs compute in float32; ``--device cuda`` runs under bf16 autocast. FLOPs are counted analytically
(2·m·n·k per Linear, QKᵀ and AV per attention, PRoPE's 4x4 camera matmuls; norms, activations, RoPE, softmax
and losses are ignored), backward as 2x forward except where the input needs no gradient (1x, weight
gradient only) and without the recomputation a fused attention backward does. ``--quick`` runs the
smallest configurations in seconds (the smoke test). Benchmarks run one after the other, never together.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

if str(Path(__file__).resolve().parent) not in sys.path:  # `common` sits next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS_DIR,
    MatmulProbe,
    autocast,
    available_memory_bytes,
    compute_dtype,
    counted_flops,
    format_table,
    interleaved_times,
    loglog_slope,
    machine_info,
    peak_memory_bytes,
    profile_top_ops,
    ratios,
    resolve_device,
    summarize,
    sync,
    write_json,
)
from spa3r_flops import (  # noqa: E402
    last_block_skipped_flops,
    mlp_hidden_size,
    spa3r_decoder_flops,
    spa3r_encoder_flops,
    spa3r_train_step_flops,
    train_step_skipped_flops,
    vggt_aggregator_flops,
)
from spa3r_workloads import (  # noqa: E402
    HUB_CONFIGS,
    build_model,
    context_count,
    decoder_forward,
    encode,
    encoder_forward,
    encoder_train,
    full_train_step,
    random_field_batch,
    random_images,
    random_view_mask,
    spa3r_config,
    teacher_step,
    train_step,
)

from spa3r_compile import run_compile  # noqa: E402
from spa3r_memory import DEFAULT_BASELINE, run_memory  # noqa: E402

from spa3_vlm import Spa3RConfig  # noqa: E402
from spa3_vlm.modeling_spa3r import Spa3RTransformer  # noqa: E402

MiB = 2**20


def _stat_row(summary: dict, scale: float = 1.0) -> str:
    return f"{summary['median'] * scale:.3g} [{summary['q1'] * scale:.3g}, {summary['q3'] * scale:.3g}]"


# ---------------------------------------------------------------------------------------------- 1. compute


@dataclass
class ComputeCase:
    size: str
    workload: str  # encoder_forward | train_step | train_step_with_backbone
    views: int
    image_size: tuple[int, int]


def compute_cases(quick: bool, sizes: tuple[str, ...]) -> list[ComputeCase]:
    if quick:
        return [
            ComputeCase("tiny", "encoder_forward", 2, (28, 28)),
            ComputeCase("tiny", "train_step", 2, (28, 28)),
            ComputeCase("tiny", "train_step_with_backbone", 2, (28, 28)),
        ]
    plan = {
        "tiny": [
            ComputeCase("tiny", "encoder_forward", 8, (224, 224)),
            ComputeCase("tiny", "train_step", 8, (224, 224)),
            ComputeCase("tiny", "train_step_with_backbone", 8, (112, 112)),
        ],
        "base": [
            ComputeCase("base", "encoder_forward", 4, (224, 224)),
            ComputeCase("base", "train_step", 2, (224, 224)),
        ],
    }
    return [case for size in sizes for case in plan[size]]


def run_compute(args, device: torch.device) -> dict:
    dtype = compute_dtype(device)
    # This machine's dense-matmul rate on the base model's MLP shape ([tokens, 768] x [768, 3072]).
    peak_probe = MatmulProbe(2048, 768, 3072, device, dtype)
    rows = []
    profile = None
    model, model_key = None, None
    for case in compute_cases(args.quick, tuple(args.sizes)):
        with_backbone = case.workload == "train_step_with_backbone"
        if model_key != (case.size, with_backbone):
            model = None  # one model alive at a time
            model, model_key = build_model(spa3r_config(case.size, with_backbone), device), (case.size, with_backbone)
        config = model.config
        grid = (case.image_size[0] // config.patch_size, case.image_size[1] // config.patch_size)
        context = context_count(config, case.views)
        skipped = None
        if case.workload == "encoder_forward":
            data = random_field_batch(config, case.views, case.views, case.image_size, device)
            workload = encoder_forward(model, data, device)
            flops = spa3r_encoder_flops(config, case.views, grid)["total"]
            saved = last_block_skipped_flops(config, "encoder", case.views, grid)
            skipped = saved / (flops + saved)
            probe_rows = config.num_register_tokens + config.num_queries + case.views * grid[0] * grid[1]
            context = case.views
        elif case.workload == "train_step":
            data = random_field_batch(config, case.views, context, case.image_size, device)
            workload = train_step(model, data, device)
            flops = spa3r_train_step_flops(config, case.views, context, grid)["total"]
            saved = train_step_skipped_flops(config, case.views, context, grid)
            skipped = saved / (flops + saved)
            probe_rows = case.views * (config.num_register_tokens + config.num_queries + grid[0] * grid[1])
        else:
            pixel_values = random_images(1, case.views, case.image_size, device)
            view_mask = random_view_mask(config, 1, case.views, device)
            workload = full_train_step(model, pixel_values, view_mask, device)
            flops = None
            probe_rows = case.views * (config.num_register_tokens + config.num_queries + grid[0] * grid[1])
        # The FlopCounterMode count: a cross-check, and the only count for the step with the backbone.
        counted = counted_flops(workload) if (with_backbone or args.quick) else None
        if flops is None:
            flops = counted
        shape_probe = MatmulProbe(min(probe_rows, 4096), config.hidden_size, mlp_hidden_size(config), device, dtype)
        times = interleaved_times({"peak": peak_probe, "shape": shape_probe, "workload": workload}, device, args.repeats, args.warmup, args.min_seconds)
        achieved = [flops / t for t in times["workload"]]
        peak_rate = [peak_probe.flops / t for t in times["peak"]]
        shape_rate = [shape_probe.flops / t for t in times["shape"]]
        row = {
            "size": case.size,
            "workload": case.workload,
            "views": case.views,
            "context_views": context,
            "image_size": list(case.image_size),
            "patch_grid": list(grid),
            "flops": int(flops),
            "flops_source": "FlopCounterMode" if with_backbone else "analytic",
            "flops_counted": counted,
            "seconds": summarize(times["workload"]),
            "achieved_flops_per_s": summarize(achieved),
            "matmul_flops_per_s": summarize(peak_rate),
            "shape_matmul": shape_probe.describe(),
            "shape_matmul_flops_per_s": summarize(shape_rate),
            "efficiency": summarize(ratios(achieved, peak_rate)),
            "efficiency_vs_shape": summarize(ratios(achieved, shape_rate)),
            "last_block_skipped_share": skipped,
        }
        rows.append(row)
        if case.workload == "encoder_forward" and (case.size == "base" or args.quick):
            profile = {"size": case.size, "workload": case.workload, "top_ops": profile_top_ops(workload, device)}
    model = None

    print(f"Spa3R compute efficiency on {device} ({dtype}); matmul probe {peak_probe.describe()}; "
          f"median [q1, q3] over {args.repeats} interleaved rounds")
    table = format_table(
        ["size", "workload", "views (ctx)", "grid", "GFLOP", "seconds", "GFLOP/s", "matmul GFLOP/s", "efficiency", "eff. vs shape"],
        [
            [r["size"], r["workload"], f"{r['views']} ({r['context_views']})", "x".join(map(str, r["patch_grid"])), r["flops"] / 1e9,
             _stat_row(r["seconds"]), _stat_row(r["achieved_flops_per_s"], 1e-9), _stat_row(r["matmul_flops_per_s"], 1e-9),
             _stat_row(r["efficiency"]), _stat_row(r["efficiency_vs_shape"])]
            for r in rows
        ],
    )
    print(table)
    if profile is not None:
        print(f"\nwhere the time goes: {profile['size']} {profile['workload']} (self time per op, one profiled call)")
        print(format_table(["op", "self ms", "share", "calls"], [[p["op"], p["self_ms"], p["share"], p["calls"]] for p in profile["top_ops"]]))
    return {"benchmark": "spa3r_compute", "matmul_probe": peak_probe.describe(), "rows": rows, "profile": profile, "table": table}


# ---------------------------------------------------------------------------------------------- 2. passes


def run_passes(args, device: torch.device) -> dict:
    cases = [("tiny", 4, (28, 28))] if args.quick else [("tiny", 8, (112, 112)), ("mid", 8, (224, 224))]
    rows = []
    for size, views, image_size in cases:
        model = build_model(spa3r_config(size, with_backbone=True), device)
        config = model.config
        original_mode = config.masking_mode
        pixel_values = random_images(1, views, image_size, device)
        view_mask = random_view_mask(config, 1, views, device)
        grid = (image_size[0] // config.patch_size, image_size[1] // config.patch_size)
        context = int((~view_mask).sum())
        two = teacher_step(model, pixel_values, view_mask, "two_pass", device)
        one = teacher_step(model, pixel_values, view_mask, "masked_pass", device)

        # Equality in float32 whatever the device: bf16 rounding would hide (or fake) a difference.
        two_fp32 = teacher_step(model, pixel_values, view_mask, "two_pass", device, use_autocast=False)()
        one_fp32 = teacher_step(model, pixel_values, view_mask, "masked_pass", device, use_autocast=False)()
        targets = view_mask[0]
        geo_two, geo_one = two_fp32["geo"][0], one_fp32["geo"][0]
        equality = {
            "context_tokens_max_abs_diff": float((two_fp32["context_tokens"] - one_fp32["context_tokens"]).abs().max()),
            "context_tokens_max_abs": float(two_fp32["context_tokens"].abs().max()),
            "geo_target_views_max_abs_diff": float((geo_two[targets] - geo_one[targets]).abs().max()) if targets.any() else 0.0,
            "geo_context_views_max_abs_diff": float((geo_two[~targets] - geo_one[~targets]).abs().max()),
            "geo_max_abs": float(geo_two.abs().max()),
        }
        del two_fp32, one_fp32

        flops = {"two_pass": counted_flops(two), "masked_pass": counted_flops(one)}
        aggregator = {
            "two_pass": vggt_aggregator_flops(config.vggt_config, views, grid) + vggt_aggregator_flops(config.vggt_config, context, grid),
            "masked_pass": vggt_aggregator_flops(config.vggt_config, views, grid, num_context_views=context),
        }
        memory = {"two_pass": peak_memory_bytes(two, device), "masked_pass": peak_memory_bytes(one, device)}
        times = interleaved_times({"two_pass": two, "masked_pass": one}, device, args.repeats, args.warmup, args.min_seconds)
        config.masking_mode = original_mode
        rows.append(
            {
                "size": size,
                "vggt": {"hidden_size": config.vggt_config.hidden_size, "layers": config.vggt_config.num_hidden_layers,
                         "patch_embed": config.vggt_config.patch_embed_type},
                "semantic_teacher": config.semantic_teacher_config is not None,
                "views": views,
                "context_views": context,
                "image_size": list(image_size),
                "seconds_two_pass": summarize(times["two_pass"]),
                "seconds_masked_pass": summarize(times["masked_pass"]),
                "time_ratio_two_over_masked": summarize(ratios(times["two_pass"], times["masked_pass"])),
                "flops_counted": flops,
                "flop_ratio_two_over_masked": flops["two_pass"] / flops["masked_pass"],
                "aggregator_flops": aggregator,
                "aggregator_flop_ratio": aggregator["two_pass"] / aggregator["masked_pass"],
                "peak_memory_bytes": memory,
                "equality": equality,
            }
        )
        del model

    print(f"PSFM teacher step, two backbone passes vs one masked pass, on {device}; median [q1, q3] over {args.repeats} rounds")
    table = format_table(
        ["size", "views (ctx)", "image", "two-pass s", "masked s", "time ratio", "FLOP ratio", "agg. FLOP ratio", "peak MiB 2p/1p", "ctx diff", "target geo diff"],
        [
            [r["size"], f"{r['views']} ({r['context_views']})", "x".join(map(str, r["image_size"])), _stat_row(r["seconds_two_pass"]),
             _stat_row(r["seconds_masked_pass"]), _stat_row(r["time_ratio_two_over_masked"]), r["flop_ratio_two_over_masked"],
             r["aggregator_flop_ratio"], f"{r['peak_memory_bytes']['two_pass'] / MiB:.0f}/{r['peak_memory_bytes']['masked_pass'] / MiB:.0f}",
             f"{r['equality']['context_tokens_max_abs_diff']:.1e}", f"{r['equality']['geo_target_views_max_abs_diff']:.1e}"]
            for r in rows
        ],
    )
    print(table)
    return {"benchmark": "spa3r_passes", "rows": rows, "table": table}


# ---------------------------------------------------------------------------------------------- 3. scaling


def _per_round_slopes(xs: list[float], times: dict[str, list[float]], names: list[str]) -> dict:
    """Log-log slope of time vs ``xs`` fitted in each round separately, then summarised over rounds."""
    rounds = len(times[names[0]])
    slopes = [loglog_slope(xs, [times[name][r] for name in names])["slope"] for r in range(rounds)]
    return summarize(slopes)


def _sweep(model, config, points: list[tuple[int, tuple[int, int]]], device, args, with_train_memory: bool) -> dict:
    """Time and memory of encoder / decoder forward at each (views, image size) point, rounds interleaved."""
    workloads, info = {}, []
    score_bytes = torch.finfo(compute_dtype(device)).bits // 8
    for views, image_size in points:
        data = random_field_batch(config, views, views, image_size, device)
        latents = torch.randn(1, config.num_queries, config.hidden_size, device=device)
        key = f"{views}v@{image_size[0]}x{image_size[1]}"
        workloads[f"encoder {key}"] = encoder_forward(model, data, device)
        workloads[f"decoder {key}"] = decoder_forward(model, data, latents, device)
        patches = data.grid[0] * data.grid[1]
        entry = {
            "views": views,
            "image_size": list(image_size),
            "patches_per_view": patches,
            "encoder_tokens": config.num_register_tokens + config.num_queries + views * patches,
            "decoder_tokens": views * (config.num_register_tokens + config.num_queries + patches),
            "encoder_flops": spa3r_encoder_flops(config, views, data.grid)["total"],
            "decoder_flops": spa3r_decoder_flops(config, views, data.grid)["total"],
            "encoder_peak_bytes": peak_memory_bytes(workloads[f"encoder {key}"], device),
            "decoder_peak_bytes": peak_memory_bytes(workloads[f"decoder {key}"], device),
            "key": key,
        }
        # What materialised attention scores (all heads) would take: one layer at a time in inference, every
        # layer's probabilities saved for backward in training (what SDPA's math path does).
        scores = score_bytes * config.num_attention_heads * entry["encoder_tokens"] ** 2
        entry["encoder_dense_scores_bytes"] = scores
        entry["encoder_train_dense_scores_bytes"] = scores * config.num_encoder_layers
        if with_train_memory:
            model.zero_grad(set_to_none=True)
            entry["encoder_train_peak_bytes"] = peak_memory_bytes(encoder_train(model, data, device), device)
            model.zero_grad(set_to_none=True)
        info.append(entry)
    times = interleaved_times(workloads, device, args.repeats, args.warmup, args.min_seconds)
    for entry in info:
        entry["encoder_seconds"] = summarize(times[f"encoder {entry['key']}"])
        entry["decoder_seconds"] = summarize(times[f"decoder {entry['key']}"])
    return {"points": info, "times": times}


def _fits(info: list[dict], times: dict, axis: str) -> dict:
    """Exponents of time (per round) and of peak memory against ``axis`` (views or tokens)."""
    out = {}
    for part in ("encoder", "decoder"):
        names = [f"{part} {entry['key']}" for entry in info]
        xs = [entry["views"] if axis == "views" else entry[f"{part}_tokens"] for entry in info]
        out[f"{part}_time"] = _per_round_slopes(xs, times, names)
        out[f"{part}_memory"] = loglog_slope(xs, [entry[f"{part}_peak_bytes"] for entry in info])["slope"]
        out[f"{part}_flops"] = loglog_slope(xs, [entry[f"{part}_flops"] for entry in info])["slope"]
    if "encoder_train_peak_bytes" in info[0]:
        xs = [entry["views"] if axis == "views" else entry["encoder_tokens"] for entry in info]
        out["encoder_train_memory"] = loglog_slope(xs, [entry["encoder_train_peak_bytes"] for entry in info])["slope"]
    return out


def _math_backend_control(model, config, view_counts: list[int], image_size, device) -> dict:
    """Encoder peak memory with SDPA forced onto its math backend (which materialises the scores) next to the
    default backend, at the largest view counts: shows that the memory check would catch a quadratic term."""
    tokens, default, math_path = [], [], []
    for views in view_counts:
        data = random_field_batch(config, views, views, image_size, device)
        run = encoder_forward(model, data, device)
        tokens.append(config.num_register_tokens + config.num_queries + views * data.grid[0] * data.grid[1])
        default.append(peak_memory_bytes(run, device))
        with sdpa_kernel(SDPBackend.MATH):
            math_path.append(peak_memory_bytes(run, device))
    return {
        "views": list(view_counts),
        "encoder_tokens": tokens,
        "sdpa_peak_bytes": default,
        "math_backend_peak_bytes": math_path,
        "sdpa_memory_exponent_vs_tokens": loglog_slope(tokens, default)["slope"],
        "math_backend_memory_exponent_vs_tokens": loglog_slope(tokens, math_path)["slope"],
    }


def _largest_fitting_views(points: list[dict], key: str, input_bytes_per_view: int, budget: int) -> dict:
    """Extrapolate peak memory from the measured points and find the largest view count within ``budget``.

    Fits ``a + b·V + c·V²`` by least squares. Peak memory is affine in ``V`` when nothing quadratic is held
    (then ``c`` is noise); the quadratic term is only kept when it adds more than 1% at the largest measured
    point. The budget must hold the call's peak plus its input tokens (allocated before the call, so not in
    the peak).
    """
    views = np.array([p["views"] for p in points], dtype=np.float64)
    peaks = np.array([p[key] for p in points], dtype=np.float64)
    quadratic, slope, intercept = np.polyfit(views, peaks, 2) if len(points) >= 3 else (0.0, *np.polyfit(views, peaks, 1))
    largest = views.max()
    quadratic_share = abs(quadratic) * largest**2 / max(abs(slope) * largest, 1.0)
    if quadratic_share <= 0.01 or quadratic < 0:
        slope, intercept = np.polyfit(views, peaks, 1)
        quadratic = 0.0

    def need(v: int) -> float:
        return intercept + (slope + input_bytes_per_view) * v + quadratic * v * v

    low, high = 0, int(largest)
    while need(high) <= budget and high < 10**8:
        low, high = high, high * 2
    while high - low > 1:  # need() grows with v: bisect for the last v that fits
        middle = (low + high) // 2
        low, high = (middle, high) if need(middle) <= budget else (low, middle)
    return {
        "bytes_per_view": float(slope),
        "intercept_bytes": float(intercept),
        "quadratic_bytes_per_view2": float(quadratic),
        "quadratic_share_at_largest_measured": float(quadratic_share),
        "memory_exponent_measured": loglog_slope(views, peaks)["slope"],
        "largest_views": low,
        "bytes_at_largest": need(low) if low else None,
    }


def run_scaling(args, device: torch.device) -> dict:
    if args.quick:
        view_counts, sweep_image, image_sizes, image_views = [1, 2, 4], (28, 28), [(28, 28), (56, 56)], 2
        # Big enough that the first encoder block's dense scores (its last block computes only the query rows'
        # scores) outweigh the other buffers at the peak.
        control_image = (56, 56)
        sizes, fit_size, fit_views, fit_train_views, fit_image = ["tiny"], "tiny", [1, 2, 4], [1, 2, 4], (28, 28)
    else:
        view_counts, sweep_image, image_sizes, image_views = [2, 4, 8, 16, 32], (112, 112), [(112, 112), (168, 168), (224, 224), (336, 336)], 4
        sizes, fit_size, fit_views, fit_train_views, fit_image = ["tiny", "mid"], "base", [1, 2, 4, 8], [1, 2, 4], (224, 224)
        control_image = sweep_image
    sections = {}
    for size in sizes:
        config = spa3r_config(size)
        model = build_model(config, device)
        by_views = _sweep(model, config, [(v, sweep_image) for v in view_counts], device, args, with_train_memory=True)
        by_image = _sweep(model, config, [(image_views, s) for s in image_sizes], device, args, with_train_memory=False)
        largest = by_views["points"][-1]
        sections[size] = {
            "views_sweep": by_views["points"],
            "views_exponents": _fits(by_views["points"], by_views["times"], "views"),
            "views_token_exponents": _fits(by_views["points"], by_views["times"], "tokens"),
            "image_sweep": by_image["points"],
            "image_token_exponents": _fits(by_image["points"], by_image["times"], "tokens"),
            # > 1 would mean the encoder holds more than one layer's worth of dense attention scores.
            "largest_point_peak_over_dense_scores": largest["encoder_peak_bytes"] / largest["encoder_dense_scores_bytes"],
            "largest_point_train_peak_over_dense_scores": largest["encoder_train_peak_bytes"] / largest["encoder_train_dense_scores_bytes"],
            "math_backend_control": _math_backend_control(model, config, view_counts[-2:], control_image, device),
        }
        del model

    # The largest encoder view count at base size, from small measured runs (never allocates much).
    config = spa3r_config(fit_size)
    model = build_model(config, device)
    budget = available_memory_bytes(device)
    grid = (fit_image[0] // config.patch_size, fit_image[1] // config.patch_size)
    points = []
    for views in fit_views:
        data = random_field_batch(config, views, views, fit_image, device)
        run = encoder_forward(model, data, device)
        point = {"views": views, "encoder_peak_bytes": peak_memory_bytes(run, device),
                 "encoder_flops": spa3r_encoder_flops(config, views, grid)["total"]}
        if views in fit_train_views:
            model.zero_grad(set_to_none=True)
            point["encoder_train_peak_bytes"] = peak_memory_bytes(encoder_train(model, data, device), device)
            model.zero_grad(set_to_none=True)
        points.append(point)
    # The FLOP/s at the largest measured point turns analytic FLOPs into a time estimate (the memory runs warmed up).
    times = interleaved_times({"largest": run}, device, max(1, min(args.repeats, 3)), 0, args.min_seconds)["largest"]
    points[-1]["encoder_seconds"] = summarize(times)
    input_per_view = grid[0] * grid[1] * config.backbone_hidden_size * data.context_tokens.element_size()
    inference = _largest_fitting_views(points, "encoder_peak_bytes", input_per_view, budget)
    training = _largest_fitting_views([p for p in points if "encoder_train_peak_bytes" in p], "encoder_train_peak_bytes", input_per_view, budget)
    # Time at that size from the analytic FLOPs and the FLOP/s measured at the largest measured point.
    rate = points[-1]["encoder_flops"] / points[-1]["encoder_seconds"]["median"]
    if inference["largest_views"]:
        inference["estimated_seconds"] = spa3r_encoder_flops(config, inference["largest_views"], grid)["total"] / rate
    fit = {"size": fit_size, "image_size": list(fit_image), "points": points, "budget_bytes": budget,
           "budget_source": "torch.cuda.mem_get_info free" if device.type == "cuda" else "/proc/meminfo MemAvailable",
           "input_bytes_per_view": input_per_view, "inference": inference, "training": training}
    del model

    print(f"Spa3R scaling on {device}; exponents are log-log slopes (time: median [q1, q3] of per-round fits over {args.repeats} rounds)")
    lines = []
    for size, section in sections.items():
        for sweep_name, exponent_key, axis in (("views_sweep", "views_exponents", "views"), ("image_sweep", "image_token_exponents", "tokens")):
            print(f"\n{size}: {sweep_name.replace('_', ' ')}")
            print(format_table(
                ["views", "image", "enc tokens", "enc s", "enc MiB", "enc train MiB", "dec tokens", "dec s", "dec MiB"],
                [[p["views"], "x".join(map(str, p["image_size"])), p["encoder_tokens"], _stat_row(p["encoder_seconds"]),
                  p["encoder_peak_bytes"] / MiB, p.get("encoder_train_peak_bytes", float("nan")) / MiB, p["decoder_tokens"],
                  _stat_row(p["decoder_seconds"]), p["decoder_peak_bytes"] / MiB] for p in section[sweep_name]],
            ))
            e = section[exponent_key]
            line = (f"{size} {sweep_name}: exponents vs {axis}: encoder time {_stat_row(e['encoder_time'])} (FLOPs {e['encoder_flops']:.2f}), "
                    f"memory {e['encoder_memory']:.2f}; decoder time {_stat_row(e['decoder_time'])} (FLOPs {e['decoder_flops']:.2f}), "
                    f"memory {e['decoder_memory']:.2f}")
            if "encoder_train_memory" in e:
                line += f"; encoder train memory {e['encoder_train_memory']:.2f}"
            print(line)
            lines.append(line)
        t, control = section["views_token_exponents"], section["math_backend_control"]
        line = (f"{size}: vs encoder tokens, encoder memory exponent {t['encoder_memory']:.2f} (train {t['encoder_train_memory']:.2f}); "
                f"at {section['views_sweep'][-1]['views']} views peak / dense scores {section['largest_point_peak_over_dense_scores']:.3f} "
                f"(one layer), train {section['largest_point_train_peak_over_dense_scores']:.3f} (all layers); "
                f"control, SDPA math backend: memory exponent {control['math_backend_memory_exponent_vs_tokens']:.2f} vs "
                f"{control['sdpa_memory_exponent_vs_tokens']:.2f}, peak {control['math_backend_peak_bytes'][-1] / MiB:.1f} vs "
                f"{control['sdpa_peak_bytes'][-1] / MiB:.1f} MiB")
        print(line)
        lines.append(line)
    print(f"\n{fit_size} encoder at {fit_image[0]}x{fit_image[1]}, views {fit_views}: budget {budget / 2**30:.1f} GiB ({fit['budget_source']})")
    print(format_table(["views", "seconds", "peak MiB", "train peak MiB"],
                       [[p["views"], _stat_row(p["encoder_seconds"]) if "encoder_seconds" in p else "-", p["encoder_peak_bytes"] / MiB,
                         p.get("encoder_train_peak_bytes", float("nan")) / MiB] for p in points]))
    line = (f"largest view count that fits: inference {inference['largest_views']} ({inference['bytes_per_view'] / MiB:.1f} MiB/view"
            f" + {input_per_view / MiB:.1f} MiB/view of input tokens"
            + (f", ~{inference['estimated_seconds']:.0f} s per forward at the measured rate" if "estimated_seconds" in inference else "")
            + f"), training {training['largest_views']} ({training['bytes_per_view'] / MiB:.1f} MiB/view)")
    print(line)
    lines.append(line)
    return {"benchmark": "spa3r_scaling", "sections": sections, "largest_views": fit, "summary": lines}


# ---------------------------------------------------------------------------------------------- main

# ---------------------------------------------------------------------------------------------- 4. rows


@contextlib.contextmanager
def all_rows_last_block():
    """Every ``Spa3RTransformer`` computes all rows of its last block and slices afterwards (the old code path)."""
    kept_rows_forward = Spa3RTransformer.forward

    def forward(self, tokens, output_rows=None, **kwargs):
        out = kept_rows_forward(self, tokens, **kwargs)
        return out if output_rows is None else out[:, output_rows]

    Spa3RTransformer.forward = forward
    try:
        yield
    finally:
        Spa3RTransformer.forward = kept_rows_forward


def _rows_config(name: str) -> Spa3RConfig:
    if name != "synthrooms":
        return spa3r_config(name)
    values = Spa3RConfig.from_pretrained(HUB_CONFIGS / "spa3r-tiny-synthrooms").to_dict()
    values["vggt_config"] = values["semantic_teacher_config"] = None
    return Spa3RConfig.from_dict(values)


def run_rows(args, device: torch.device) -> dict:
    if args.quick:
        cases = [("tiny", 1, 4, (28, 42))]
    else:  # (config, batch, views, image): the main job's batch, then one base sample
        cases = [("tiny", 2, 4, (56, 84)), ("synthrooms", 8, 5, (84, 112)), ("base", 1, 2, (224, 224))]
    rows = []
    for name, batch, views, image_size in cases:
        model = build_model(_rows_config(name), device)
        config = model.config
        context = context_count(config, views)
        data = random_field_batch(config, views, context, image_size, device, batch=batch)
        kept = train_step(model, data, device)

        def all_rows(step=kept):
            with all_rows_last_block():
                return step()

        with torch.no_grad(), autocast(device):
            latents = encode(model, data)
            field = model.decode_field(latents, data.extrinsics, data.intrinsics, data.image_size)["hidden_states"]
            with all_rows_last_block():
                latents_all = encode(model, data)
                field_all = model.decode_field(latents_all, data.extrinsics, data.intrinsics, data.image_size)["hidden_states"]
        saved = train_step_skipped_flops(config, views, context, data.grid, batch)
        flops = spa3r_train_step_flops(config, views, context, data.grid, batch)["total"]
        times = interleaved_times({"kept_rows": kept, "all_rows": all_rows}, device, args.repeats, args.warmup, args.min_seconds)
        rows.append(
            {
                "config": name,
                "batch": batch,
                "views": views,
                "context_views": context,
                "image_size": list(image_size),
                "seconds_kept_rows": summarize(times["kept_rows"]),
                "seconds_all_rows": summarize(times["all_rows"]),
                "time_ratio_all_over_kept": summarize(ratios(times["all_rows"], times["kept_rows"])),
                "flop_ratio_all_over_kept": (flops + saved) / flops,
                "latents_max_abs_diff": float((latents - latents_all).abs().max()),
                "decoded_max_abs_diff": float((field - field_all).abs().max()),
            }
        )
        del model
    print(f"PSFM training step (no backbone), last block on the kept rows vs all rows, on {device}; median [q1, q3] over {args.repeats} rounds")
    table = format_table(
        ["config", "batch", "views (ctx)", "image", "kept-rows s", "all-rows s", "time ratio", "FLOP ratio", "latent diff", "decoded diff"],
        [
            [r["config"], r["batch"], f"{r['views']} ({r['context_views']})", "x".join(map(str, r["image_size"])),
             _stat_row(r["seconds_kept_rows"]), _stat_row(r["seconds_all_rows"]), _stat_row(r["time_ratio_all_over_kept"]),
             r["flop_ratio_all_over_kept"], f"{r['latents_max_abs_diff']:.1e}", f"{r['decoded_max_abs_diff']:.1e}"]
            for r in rows
        ],
    )
    print(table)
    return {"benchmark": "spa3r_rows", "rows": rows, "table": table}


BENCHMARKS = {
    "compute": run_compute,
    "passes": run_passes,
    "scaling": run_scaling,
    "rows": run_rows,
    "memory": run_memory,
    "compile": run_compile,
}


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index] (bf16 autocast on CUDA)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median and quartiles are reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each workload first")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="faster workloads are repeated back to back per sample")
    parser.add_argument("--sizes", nargs="+", choices=["tiny", "base"], default=["tiny", "base"], help="compute: model sizes")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads, 0: torch's default (two OpenMP threads on a shared 2-core CPU wait for each other "
        "whenever one core is taken, and small ops get 10-40x slower)",
    )
    parser.add_argument("--quick", action="store_true", help="smallest configurations, 1 round (smoke test)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="memory: the git revision to compare with")
    parser.add_argument("--reference-dir", help="memory: a checkout of hustvl/Spa3R (its spa3r/models/layers) to compare with")
    parser.add_argument(
        "--vggt-reference-dir",
        help="memory: a folder holding facebookresearch/vggt's vggt package (its aggregator files) to compare with",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.min_seconds = 1, 0, 0.0
    if args.repeats < 1 or args.warmup < 0 or args.min_seconds < 0:
        parser.error(f"--repeats must be >= 1, --warmup and --min-seconds >= 0, got {args.repeats}, {args.warmup}, {args.min_seconds}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)

    names = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    results = {}
    for name in names:  # one at a time: concurrent benchmarks would measure each other
        start = time.perf_counter()
        result = BENCHMARKS[name](args, device)
        sync(device)
        result.update(machine=machine_info(device),
                      args={"repeats": args.repeats, "warmup": args.warmup, "min_seconds": args.min_seconds, "quick": args.quick,
                            "threads": torch.get_num_threads()},
                      wall_seconds=time.perf_counter() - start)
        path = write_json(args.output_dir / f"spa3r_{name}.json", result)
        print(f"wrote {path} ({result['wall_seconds']:.0f} s)\n")
        results[name] = result
    return results


if __name__ == "__main__":
    main()
