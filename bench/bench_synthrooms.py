"""Rendering speed of the SynthRooms ray caster (views/second) and dataset build time.

    python bench/bench_synthrooms.py [--device cpu|cuda] [--scenes 2] [--frames 8] [--threads N]

Prints a table and writes ``bench/results/synthrooms.json``. Default arguments run in well under a
minute on a 2-core CPU. One torch thread is the default: on a CPU shared with other jobs two OpenMP
threads spin-wait for each other and can run 10x slower; ``--threads 0`` keeps torch's default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from spa3_vlm.data import SynthRoomsConfig, generate_scene, load_synthrooms, render

RESULTS = Path(__file__).resolve().parent / "results" / "synthrooms.json"


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 392x518), got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_render(size, scenes, frames, shadows, device, repeats):
    """Best-of-``repeats`` views/second rendering every frame of ``scenes`` scenes at ``size``."""
    config = SynthRoomsConfig(frames_per_scene=frames, image_size=size)
    built = [generate_scene(seed, config) for seed in range(scenes)]
    render(built[0], built[0].extrinsics[:1], built[0].intrinsics[:1], size, shadows=shadows, device=device)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for scene in built:
            render(scene, shadows=shadows, device=device)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    views = scenes * frames
    primitives = sum(len(obj.parts) for scene in built for obj in scene.objects) / scenes
    return {"image_size": list(size), "views": views, "seconds": best, "views_per_second": views / best, "mean_primitives": primitives}


def bench_dataset(device) -> dict:
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        dataset = load_synthrooms(num_scenes=8, frames_per_scene=8, image_size=(84, 112), seed=0, cache_dir=cache_dir, device=device)
        seconds = time.perf_counter() - start
    return {"scenes": len(dataset), "frames_per_scene": 8, "image_size": [84, 112], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device for the ray caster (cpu, cuda, ...)")
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(392, 518), (84, 112)], help="HxW image sizes")
    parser.add_argument("--scenes", type=int, default=2, help="scenes per size")
    parser.add_argument("--frames", type=int, default=8, help="frames per scene")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions (best is kept)")
    parser.add_argument("--no-shadows", action="store_true", help="skip shadow rays")
    parser.add_argument("--skip-dataset", action="store_true", help="skip the 8x8 dataset build timing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.scenes < 1 or args.frames < 1 or args.repeats < 1:
        parser.error("--scenes, --frames and --repeats must be >= 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")

    shadows = not args.no_shadows
    rows = [bench_render(size, args.scenes, args.frames, shadows, device, args.repeats) for size in args.sizes]
    print(f"SynthRooms ray caster on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads, shadows={shadows})")
    print(f"{'size (HxW)':>12} {'views':>6} {'seconds':>8} {'views/s':>9} {'prims':>6}")
    for row in rows:
        print(f"{row['image_size'][0]:>5}x{row['image_size'][1]:<6} {row['views']:>6} {row['seconds']:>8.3f} {row['views_per_second']:>9.1f} {row['mean_primitives']:>6.1f}")
    dataset = None
    if not args.skip_dataset:
        dataset = bench_dataset(str(device))
        print(f"load_synthrooms 8 scenes x 8 frames at 84x112 (render + PNG + Arrow): {dataset['seconds']:.2f} s")

    result = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "shadows": shadows,
        "render": rows,
        "dataset_build": dataset,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
