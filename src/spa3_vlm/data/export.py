"""Write SynthRooms or SynthRooms-QA as a Hub-style dataset folder: parquet shards and a dataset card.

    python -m spa3_vlm.data.export synthrooms --output_dir synthrooms --scenes train=1000 test=8
    python -m spa3_vlm.data.export synthrooms_qa --output_dir synthrooms-qa --scenes train=32 test=8
    hf upload --repo-type dataset <user>/synthrooms-qa synthrooms-qa    # or huggingface_hub.upload_folder

The folder holds ``data/<split>-<k>-of-<n>.parquet`` (the ``datasets`` features ride in the parquet metadata) and
``README.md`` (:func:`spa3_vlm.cards.dataset_card`: licence, task categories, size, columns, question types and the
command that regenerates the same rows); ``datasets.load_dataset(folder)`` loads it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

__all__ = ["KINDS", "export_dataset", "main"]

KINDS = ("synthrooms", "synthrooms_qa")


def _command(kind: str, output_dir: Path, scenes: Mapping[str, int], settings: Mapping) -> str:
    """The command line that writes the same rows (the card's "How it was made")."""
    height, width = settings["image_size"]
    parts = [
        f"python -m spa3_vlm.data.export {kind} --output_dir {output_dir.name}",
        "--scenes " + " ".join(f"{split}={count}" for split, count in scenes.items()),
        f"--frames_per_scene {settings['frames_per_scene']} --image_height {height} --image_width {width}",
        f"--seed {settings['seed']}",
    ]
    if kind == "synthrooms_qa":
        parts.append(f"--questions_per_scene {settings['questions_per_scene']}")
    return " ".join(parts)


def export_dataset(
    kind: str,
    output_dir: str | Path,
    scenes: Optional[Mapping[str, int]] = None,
    *,
    frames_per_scene: int = 8,
    image_size: tuple[int, int] = (84, 112),
    seed: int = 0,
    questions_per_scene: int = 10,
    max_shard_bytes: int = 500_000_000,
    overwrite: bool = False,
    cache_dir: Optional[str] = None,
    num_proc: Optional[int] = None,
) -> dict:
    """Build ``kind`` (``"synthrooms"`` or ``"synthrooms_qa"``) for every ``{split: scene count}`` of ``scenes``
    (default ``{"train": 8}``) and write it to ``output_dir``. Returns ``{split: datasets.Dataset}`` as built.

    ``max_shard_bytes``: parquet shards are at most about this big (Arrow size). An ``output_dir`` that already
    holds ``data/`` is refused unless ``overwrite`` (which removes that folder's parquet files first).
    """
    from ..cards import dataset_card
    from .synthrooms import SPLITS, _code_fingerprint, load_synthrooms
    from .synthrooms_qa import QA_FORMAT_VERSION, build_synthrooms_qa

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    scenes = dict(scenes or {"train": 8})
    bad = {s: n for s, n in scenes.items() if s not in SPLITS or isinstance(n, bool) or not isinstance(n, int) or n < 1}
    if bad or not scenes:
        raise ValueError(f"scenes must map splits {SPLITS} to positive scene counts, got {scenes!r}")
    if not (isinstance(max_shard_bytes, int) and max_shard_bytes > 0):
        raise ValueError(f"max_shard_bytes must be a positive int, got {max_shard_bytes!r}")
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{data_dir} already holds files: pass overwrite=True (--overwrite) to replace them")
        for old in data_dir.glob("*.parquet"):  # only what an export writes: shards of an earlier run
            old.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)

    splits = {}
    for split, count in scenes.items():
        common = dict(frames_per_scene=frames_per_scene, image_size=image_size, seed=seed, split=split,
                      cache_dir=cache_dir, num_proc=num_proc)  # fmt: skip
        if kind == "synthrooms":
            splits[split] = load_synthrooms(count, **common)
        else:
            splits[split] = build_synthrooms_qa(count, per_scene=questions_per_scene, **common)
    data_files = {}
    for split, dataset in splits.items():
        shards = max(1, math.ceil(dataset.data.nbytes / max_shard_bytes))
        for index in range(shards):
            path = data_dir / f"{split}-{index:05d}-of-{shards:05d}.parquet"
            dataset.shard(num_shards=shards, index=index, contiguous=True).to_parquet(str(path))
        data_files[split] = f"data/{split}-*"

    settings = {
        "frames_per_scene": frames_per_scene,
        "image_size": tuple(image_size),
        "seed": seed,
        **({"questions_per_scene": questions_per_scene, "QA format version": QA_FORMAT_VERSION} if kind != "synthrooms" else {}),
        "spa3-vlm version": importlib.metadata.version("spa3-vlm"),
        "generator fingerprint": _code_fingerprint()[:16],
    }
    card = dataset_card(kind, splits, settings, command=_command(kind, output_dir, scenes, settings), data_files=data_files)
    card.save(str(output_dir / "README.md"))
    return splits


def _scene_counts(values: list[str]) -> dict[str, int]:
    counts = {}
    for value in values:
        split, _, count = value.partition("=")
        if not count.isdigit():
            raise argparse.ArgumentTypeError(f"--scenes takes split=count pairs, got {value!r}")
        counts[split] = int(count)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spa3_vlm.data.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--scenes", nargs="+", default=["train=8"], metavar="SPLIT=COUNT", help="scenes per split")
    parser.add_argument("--frames_per_scene", type=int, default=8)
    parser.add_argument("--image_height", type=int, default=84)
    parser.add_argument("--image_width", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0, help="scene (and question) seed")
    parser.add_argument("--questions_per_scene", type=int, default=10, help="synthrooms_qa: questions per scene")
    parser.add_argument("--max_shard_mb", type=int, default=500, help="largest parquet shard, MB")
    parser.add_argument("--overwrite", action="store_true", help="replace the parquet files of an earlier export")
    parser.add_argument("--num_proc", type=int, default=None, help="rendering processes")
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder")
    args = parser.parse_args(argv)
    try:
        splits = export_dataset(
            args.kind, args.output_dir, _scene_counts(args.scenes), frames_per_scene=args.frames_per_scene,
            image_size=(args.image_height, args.image_width), seed=args.seed,
            questions_per_scene=args.questions_per_scene, max_shard_bytes=args.max_shard_mb * 1_000_000,
            overwrite=args.overwrite, cache_dir=args.cache_dir, num_proc=args.num_proc,
        )  # fmt: skip
    except (ValueError, argparse.ArgumentTypeError) as error:  # bad input: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = ", ".join(f"{split} {len(dataset)}" for split, dataset in splits.items())
    print(f"wrote {args.output_dir} ({rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
