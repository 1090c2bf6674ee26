"""VSI-590K loader on a generated mini VSI-590K: disk use against records and videos, and decoding throughput
against DataLoader workers.

    python bench/bench_vsi590k.py [--videos 4] [--records 400] [--workers 2] [--repeats 5] [--quick]

:func:`write_mini_vsi590k` writes short PyAV videos (a moving square over a gradient, 12 s at 4 fps, so the reference
rule samples 6 frames) and VSI-Bench-style questions over them, spread evenly. Then, in one run:

* disk, for a quarter of the records and for all of them over the same videos: the rows' Arrow table, the frame
  cache after reading every row once, the Spa3R latent store (tiny Spa3-VLM, ``add_spatial_latents``), and the
  layout this replaces: the same rows with their decoded frames stored as PNG (materialised with ``Dataset.map``, as
  the eager loader stored them) and one latent per record (records x Q x C x 4 bytes, computed);
* throughput: records per second through a torch DataLoader (batch 4, the rows' transform decodes, the collate
  function keeps the rows) over a fixed shuffled subset, with 0 and ``--workers`` workers, decoding the videos or
  reading the warm frame cache. The four loaders run interleaved (bench/common.py), workers persist between rounds,
  and the speed-ups are ratios within each round.

Prints tables and writes ``bench/results/vsi590k.json``. Defaults run in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    format_table,
    interleaved_times,
    machine_info,
    ratios,
    summarize,
    write_json,
)

TINY = Path(__file__).resolve().parents[1] / "hub_configs" / "spa3-vlm-tiny"
OUTPUT = RESULTS_DIR / "vsi590k.json"
FRAME_SIZE = (160, 120)  # width, height of the benchmark's videos

# (question_type, question, answer): every answer parses for its type, as the loader checks.
QUESTIONS = [
    ("object_counting", "How many chair(s) are in this room?\nAnswer with a single number.", "{n}"),
    ("object_abs_distance", "What is the distance between the sofa and the table (in meters)?", "{d}"),
    ("room_size", "What is the size of this room (in square meters)?", "{a}"),
    ("object_rel_distance", ("Which of these objects is the closest to the bed?\nOptions:\nA. sofa\nB. table\n"
                             "C. lamp\nAnswer with the option's letter from the given choices directly."), "{letter}"),
]  # fmt: skip


def write_video(path: Path, num_frames: int, fps: int, size: tuple[int, int], seed: int) -> None:
    """``num_frames`` frames of a square moving over a gradient (``size`` = width, height), mpeg4 at ``fps``."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    base[..., 2] = rng.integers(0, 256)
    side = max(4, height // 4)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(num_frames):
            image = base.copy()
            x = (k * 3 + seed * 17) % (width - side)
            y = (k * 2 + seed * 11) % (height - side)
            image[y : y + side, x : x + side] = 255 - base[y : y + side, x : x + side]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_mini_vsi590k(root: Path, num_videos: int = 4, num_records: int = 400, num_frames: int = 48, fps: int = 4,
                       size: tuple[int, int] = (160, 120), record_counts=None) -> dict[int, Path]:  # fmt: skip
    """Videos under ``root/videos`` and, for each count in ``record_counts`` (default: ``num_records``), an annotation
    file ``root/annotations_<count>.jsonl`` whose records cycle over the videos and the question types.
    Returns ``{count: annotation path}``."""
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for video in range(num_videos):
        write_video(root / "videos" / f"scene{video:03d}.mp4", num_frames, fps, size, seed=video)
    paths = {}
    for count in record_counts or [num_records]:
        lines = []
        for index in range(count):
            question_type, question, answer = QUESTIONS[index % len(QUESTIONS)]
            values = {"n": index % 7 + 1, "d": f"{1 + index % 9 * 0.5:.1f}", "a": f"{12 + index % 13}",
                      "letter": "ABC"[index % 3]}  # fmt: skip
            record = {
                "id": f"mini-{index:06d}",
                "video": f"videos/scene{index % num_videos:03d}.mp4",
                "question_type": question_type,
                "conversations": [
                    {"from": "human", "value": f"<video>\nThese are frames of a video.\n{question}"},
                    {"from": "gpt", "value": answer.format(**values)},
                ],
            }
            lines.append(json.dumps(record))
        paths[count] = root / f"annotations_{count}.jsonl"
        paths[count].write_text("\n".join(lines) + "\n")
    return paths


def folder_bytes(path) -> int:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    return total


def table_bytes(dataset) -> int:
    """Bytes of a dataset's Arrow cache files."""
    return sum(os.path.getsize(entry["filename"]) for entry in dataset.cache_files)


def keep_rows(rows):
    """DataLoader collate function: the decoded rows as they are."""
    return rows


def eager_layout_bytes(dataset) -> int:
    """The rows with their decoded frames stored as PNG (the eager loader's layout): written by ``Dataset.map``."""
    from datasets import Image, List

    features = dataset.features.copy()
    features["images"] = List(Image())
    stored = dataset.map(lambda batch: {"images": batch["images"]}, batched=True, batch_size=16, features=features,
                         desc="eager layout")  # fmt: skip
    return table_bytes(stored)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--records", type=int, default=400, help="records of the full set (a quarter for the small)")
    parser.add_argument("--video-frames", type=int, default=48, help="frames per video (4 fps)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers to compare with 0")
    parser.add_argument("--subset", type=int, default=64, help="records read per loader and round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs every loader once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (start the workers)")
    parser.add_argument("--quick", action="store_true", help="smallest run (2 videos, 16 records, 1 round), for tests")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.records, args.video_frames, args.subset, args.repeats, args.warmup = 2, 16, 24, 8, 1, 0
    for name in ("videos", "records", "video_frames", "workers", "subset", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.records < 4:
        parser.error(f"--records must be >= 4 (a quarter of them is the small set), got {args.records}")
    return args


def measure_disk(annotation, media, work: Path, model, processor, shape) -> dict:
    from spa3_vlm.data.latent_cache import add_spatial_latents
    from spa3_vlm.data.row_transforms import raw_column
    from spa3_vlm.data.vsi590k import load_vsi590k

    start = time.perf_counter()
    rows = load_vsi590k(annotation, media, cache_dir=str(work / "rows"), frame_cache_dir=work / "frames")
    load_seconds = time.perf_counter() - start
    for _ in rows:  # one pass fills the frame cache
        pass
    add_spatial_latents(rows, model, processor, cache_dir=work / "latents", desc=None)
    records, sets = len(rows), len(set(raw_column(rows, "frames_key")))
    return {
        "records": records,
        "frame_sets": sets,
        "load_seconds": load_seconds,
        "rows_bytes": table_bytes(rows),
        "frame_cache_bytes": folder_bytes(work / "frames"),
        "latent_store_bytes": folder_bytes(work / "latents"),
        "eager_rows_bytes": eager_layout_bytes(rows),
        "per_record_latents_bytes": records * shape[0] * shape[1] * 4,
    }


def main(argv=None) -> dict:
    from torch.utils.data import DataLoader

    from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration
    from spa3_vlm.data.vsi590k import load_vsi590k
    from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor

    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)  # the encoder is tiny; two threads stall each other on a shared 2-core machine
    torch.manual_seed(0)
    model = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(TINY)).eval()
    processor = Spa3VLMProcessor.from_pretrained(TINY)
    shape = (model.config.spa3r_config.num_queries, model.config.spa3r_config.hidden_size)
    small = max(1, args.records // 4)
    names = {(s, w): f"{s}, {w} workers" for s in ("decode", "frame cache") for w in (0, args.workers)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        annotations = write_mini_vsi590k(tmp / "media", args.videos, num_frames=args.video_frames, size=FRAME_SIZE,
                                         record_counts=[small, args.records])  # fmt: skip
        disk = {count: measure_disk(path, tmp / "media", tmp / f"work_{count}", model, processor, shape)
                for count, path in annotations.items()}  # fmt: skip

        full = annotations[args.records]
        plain = load_vsi590k(full, tmp / "media", cache_dir=str(tmp / "rows"))
        warm = tmp / f"work_{args.records}" / "frames"  # filled by the disk measurement
        cached = load_vsi590k(full, tmp / "media", cache_dir=str(tmp / "rows"), frame_cache_dir=warm)
        order = np.random.default_rng(0).permutation(len(plain))[: args.subset].tolist()  # a training-like shuffle
        loaders = {
            names[(source, workers)]: DataLoader(
                dataset, batch_size=args.batch_size, sampler=order, collate_fn=keep_rows, num_workers=workers,
                persistent_workers=workers > 0,
                # Spawned, not forked: a worker forked from this process (which has run PyAV's decoder threads and
                # torch's pools) can hang joining a thread it never had (seen with torch 2.9); the rows' transform
                # pickles as its settings, and persistent workers pay the start-up once.
                multiprocessing_context="spawn" if workers > 0 else None,
            )
            for source, dataset in (("decode", plain), ("frame cache", cached))
            for workers in (0, args.workers)
        }  # fmt: skip

        def reader(loader):
            return lambda: sum(len(batch) for batch in loader)

        workloads = {name: reader(loader) for name, loader in loaders.items()}
        times = interleaved_times(workloads, torch.device("cpu"), repeats=args.repeats, warmup=args.warmup)
        del workloads, loaders  # stops the persistent workers before their files go
        gc.collect()

    speedups = {
        f"{args.workers} workers / 0 workers, {source}": summarize(
            ratios(times[names[(source, 0)]], times[names[(source, args.workers)]])
        )
        for source in ("decode", "frame cache")
    }
    speedups["frame cache / decode, 0 workers"] = summarize(
        ratios(times[names[("decode", 0)]], times[names[("frame cache", 0)]])
    )
    result = {
        "benchmark": "vsi590k",
        "machine": machine_info(torch.device("cpu")),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dataset": {
            "videos": args.videos, "video_frames": args.video_frames, "frame_size": list(FRAME_SIZE),
            "latent_shape": list(shape),
        },
        "disk": {str(count): values for count, values in disk.items()},
        "records_per_second": {name: summarize([len(order) / t for t in values]) for name, values in times.items()},
        "speedups": speedups,
    }

    width, height = FRAME_SIZE
    print(f"Mini VSI-590K: {args.videos} videos of {args.video_frames} frames ({width}x{height}, 4 fps).")
    columns = ["rows_bytes", "frame_cache_bytes", "latent_store_bytes", "eager_rows_bytes", "per_record_latents_bytes"]
    print(format_table(
        ["records", "frame sets", "rows kB", "frame cache kB", "latent store kB", "old: rows+PNG kB", "old: latent kB"],
        [[count, values["frame_sets"], *(values[c] / 1e3 for c in columns)] for count, values in disk.items()],
    ))  # fmt: skip
    print(f"Reading {len(order)} shuffled records per round, batch {args.batch_size}, {args.repeats} rounds:")
    print(format_table(
        ["loader", "records/s", "q1", "q3"],
        [[name, s["median"], s["q1"], s["q3"]] for name, s in result["records_per_second"].items()],
    ))  # fmt: skip
    print(format_table(
        ["speed-up (per round)", "median", "q1", "q3"],
        [[name, s["median"], s["q1"], s["q3"]] for name, s in speedups.items()],
    ))  # fmt: skip
    path = write_json(args.output, result)
    print(f"written {path}")
    return result


if __name__ == "__main__":
    main()
