"""SFT training-step time of Spa3-VLM with cached Spa3R latents vs computing them every step vs plain Qwen2.5-VL.

    python bench/bench_latent_cache.py [--device cpu|cuda] [--repeats 10] [--batch-size 8] [--threads 1] [--quick]

One step = collate the records (chat template, Qwen patches, geometry frames or cached latents) + forward +
backward + AdamW step, on the tiny models (hub_configs/spa3-vlm-tiny; the plain Qwen2.5-VL has the same Qwen
weights, ``spatial_branch=False``) and SynthRooms-QA frames at 84x112. The three steps run interleaved
(bench/common.py), so the ratios per round come from the same machine state:

* ``uncached_over_cached``: what the latent cache saves (Spa3R, i.e. VGGT + encoder, plus geometry preprocessing);
* ``cached_over_plain_qwen``: the adapter's overhead over plain Qwen2.5-VL once latents are cached;
* ``uncached_over_plain_qwen``: the whole spatial branch's overhead.

Also reports the one-off cost of building the cache (``add_spatial_latents``). The tiny VGGT is small next to the
tiny Qwen; with VGGT-1B the uncached/cached ratio is much larger. Prints a table and writes
``bench/results/latent_cache.json``. Defaults run in about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    format_table,
    interleaved_times,
    machine_info,
    ratios,
    resolve_device,
    summarize,
    write_json,
)

from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration  # noqa: E402
from spa3_vlm.data.latent_cache import add_spatial_latents  # noqa: E402
from spa3_vlm.data.row_transforms import raw_column  # noqa: E402
from spa3_vlm.data.synthrooms_qa import build_synthrooms_qa  # noqa: E402
from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor  # noqa: E402
from spa3_vlm.training.sft_data import Spa3VLMSFTCollator, processor_for_image_size  # noqa: E402
from spa3_vlm.training.sft_model import configure_trainable  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "hub_configs" / "spa3-vlm-tiny"
OUTPUT = RESULTS_DIR / "latent_cache.json"
PLAIN = "qwen2.5-vl (no spatial branch)"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (each runs every step once)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=2, help="SynthRooms scenes the batch's questions come from")
    parser.add_argument("--frames", type=int, default=8, help="frames per scene video")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smallest run (1 round, batch 2, 4 frames), for tests")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.batch_size, args.scenes, args.frames = 1, 0, 2, 1, 4
    return args


def build_models(device):
    torch.manual_seed(0)
    spa3 = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(TINY))
    plain = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(TINY, spatial_branch=False))
    plain.load_state_dict({k: v for k, v in spa3.state_dict().items() if k in plain.state_dict()})
    for model in (spa3, plain):
        configure_trainable(model)
        model.to(device).train()
    return spa3, plain


def step_fn(model, collator, rows, device):
    """One SFT step: collate, forward, backward, optimizer step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        batch = collator(rows)
        batch = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else [g.to(device) for g in v] if isinstance(v, list) else v)
            for k, v in batch.items()
        }
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    processor = processor_for_image_size(Spa3VLMProcessor.from_pretrained(TINY), 84, 112)
    with tempfile.TemporaryDirectory() as cache_dir:
        data = build_synthrooms_qa(num_scenes=args.scenes, frames_per_scene=args.frames, cache_dir=cache_dir)
        data = data.select(range(min(args.batch_size, len(data))))
        spa3, plain = build_models(device)
        start = time.perf_counter()
        cached = add_spatial_latents(data, spa3, processor, load_from_cache_file=False, cache_dir=cache_dir)
        cache_seconds = time.perf_counter() - start
        rows = [cached[i] for i in range(len(cached))]  # decoded once, outside the timed steps
    workloads = {
        "spa3-vlm, cached latents": step_fn(spa3, Spa3VLMSFTCollator(processor, spatial_inputs="latents"), rows, device),
        "spa3-vlm, Spa3R every step": step_fn(spa3, Spa3VLMSFTCollator(processor, spatial_inputs="frames"), rows, device),
        PLAIN: step_fn(plain, Spa3VLMSFTCollator(processor, spatial_inputs="none"), rows, device),
    }
    times = interleaved_times(workloads, device, repeats=args.repeats, warmup=args.warmup)
    cached_t, uncached_t, plain_t = (times[name] for name in workloads)
    result = {
        "benchmark": "latent_cache",
        "machine": machine_info(device),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "batch": {"records": len(rows), "frames_per_record": args.frames, "frame_size": [84, 112]},
        "cache": {
            "records": len(cached),
            "distinct_frame_sets": len(set(raw_column(cached, "frames_key"))),
            "build_seconds": cache_seconds,
        },
        "step_seconds": {name: summarize(values) for name, values in times.items()},
        "ratios": {
            "uncached_over_cached": summarize(ratios(uncached_t, cached_t)),
            "cached_over_plain_qwen": summarize(ratios(cached_t, plain_t)),
            "uncached_over_plain_qwen": summarize(ratios(uncached_t, plain_t)),
        },
    }
    rows_out = [
        [name, 1e3 * s["median"], 1e3 * s["q1"], 1e3 * s["q3"], s["median"] / result["step_seconds"][PLAIN]["median"]]
        for name, s in result["step_seconds"].items()
    ]
    print(f"SFT step, batch {len(rows)} x {args.frames} frames (84x112), {args.repeats} interleaved rounds, {device}:")
    print(format_table(["step", "median ms", "q1 ms", "q3 ms", "/ plain"], rows_out))
    print(format_table(
        ["ratio (per round)", "median", "q1", "q3"],
        [[name, s["median"], s["q1"], s["q3"]] for name, s in result["ratios"].items()],
    ))  # fmt: skip
    distinct = result["cache"]["distinct_frame_sets"]
    print(f"cache build: {cache_seconds:.2f} s for {len(cached)} records ({distinct} distinct frame sets)")
    path = write_json(args.output, result)
    print(f"written {path}")
    return result


if __name__ == "__main__":
    main()
