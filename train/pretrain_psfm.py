"""PSFM pre-training of Spa3R on the HF Trainer.

With no data flags it trains the tiny model (hub_configs/spa3r-tiny-synthrooms, whose frozen teachers are the
trained tiny ones shipped in hub_configs/) on SynthRooms, rendered on the fly, on CPU in about 9 minutes; then scores
the learned field on held-out scenes against two baselines, writes PCA figures and saves a model folder that
``AutoModel.from_pretrained`` loads, with a model card (README.md) naming its teachers, data, scores and licence
(``spa3_vlm.cards``; ``--license`` overrides the licence worked out from the bundled teachers).

    python train/pretrain_psfm.py --output_dir runs/spa3r-tiny
    python train/pretrain_psfm.py --config_overrides '{"pose_source": "backbone"}'   # the teacher's own cameras
    python train/pretrain_psfm.py hub_configs/spa3r-base/pretrain_reference.json      # the reference recipe (edit data_root)
    accelerate launch --num_processes 8 train/pretrain_psfm.py --dataset scannet,scannetpp --data_root /data/scannet,/data/scannetpp ...

Every ``TrainingArguments`` flag works (``--max_steps``, ``--learning_rate``, ``--resume_from_checkpoint``, ...).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import AutoConfig, HfArgumentParser, TrainingArguments, set_seed

from spa3_vlm import Spa3RForFieldPrediction
from spa3_vlm.data.psfm import ConcatPSFMDataset, PSFMCollator, PSFMDataset
from spa3_vlm.training.field_eval import evaluate_field, format_field_table
from spa3_vlm.training.flags import at_least, training_flag_problems
from spa3_vlm.training.psfm import PSFMTrainer, field_model_inputs, train_resuming
from spa3_vlm.visualization import field_pca_figure

logger = logging.getLogger("pretrain_psfm")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class ModelArguments:
    config_name: str = field(
        default=os.path.join(REPO, "hub_configs", "spa3r-tiny-synthrooms"),
        metadata={"help": "Spa3R config (folder or hub id) for a model trained from scratch."},
    )
    config_overrides: Optional[str] = field(
        default=None,
        metadata={
            "help": "JSON object of config fields to change for a model trained from scratch, e.g. "
            '\'{"pose_source": "backbone"}\' or \'{"context_inputs": {"metric_depth": 1, "rgb": 3}}\'.'
        },
    )
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Continue from a saved Spa3R model."})
    load_teacher_weights: bool = field(
        default=True,
        metadata={"help": "Load pretrained VGGT / semantic-teacher weights from the config's *_name_or_path fields."},
    )
    license: Optional[str] = field(
        default=None,
        metadata={"help": "Model card licence (a Hub licence id); default: the most restrictive licence of the bundled "
                  "teachers (spa3_vlm.cards)."},
    )
    license_name: Optional[str] = field(default=None, metadata={"help": "With --license other: its short name."})
    license_link: Optional[str] = field(default=None, metadata={"help": "With --license other: a link to its text."})


@dataclass
class OptimizerArguments:
    muon: bool = field(
        default=False,
        metadata={"help": "Muon (torch.optim.Muon) for the Transformer blocks' weight matrices, AdamW for the rest."},
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's momentum."})


@dataclass
class DataArguments:
    dataset: str = field(
        default="synthrooms",
        metadata={"help": "synthrooms | scannet | scannetpp, or a mix of real sources: scannet,scannetpp (the paper's)."},
    )
    data_root: Optional[str] = field(
        default=None, metadata={"help": "Root folder of a real dataset; for a mix, one per source, comma-separated."}
    )
    skip_bad_scenes: bool = field(
        default=False, metadata={"help": "Real data: drop (and log) scenes that fail validation instead of raising."}
    )
    skip_bad_frames: bool = field(
        default=False, metadata={"help": "Real data: drop (and log) frames whose pose is missing or not finite."}
    )
    index_cache_dir: Optional[str] = field(default=None, metadata={"help": "Real data: folder for a copy of the scene index."})
    num_train_scenes: int = field(default=1000, metadata={"help": "SynthRooms training scenes."})
    num_eval_scenes: int = field(default=8, metadata={"help": "SynthRooms held-out scenes for the field evaluation."})
    frames_per_scene: int = field(default=8, metadata={"help": "SynthRooms frames per scene (the camera walk)."})
    image_height: int = field(default=84, metadata={"help": "SynthRooms image height (multiple of 14)."})
    image_width: int = field(default=112, metadata={"help": "SynthRooms image width (multiple of 14)."})
    min_views: int = field(default=4, metadata={"help": "Fewest views per sample."})
    max_views: int = field(default=6, metadata={"help": "Most views per sample (the paper: 4-12)."})
    min_interval: Optional[int] = field(
        default=None,
        metadata={"help": "Smallest frame step between sampled views, for every source; default per source: SynthRooms 1, "
                  "ScanNet 2, ScanNet++ 20 (the reference's)."},
    )
    max_interval: Optional[int] = field(
        default=None,
        metadata={"help": "Largest frame step, for every source; default per source: SynthRooms 2, ScanNet 6, ScanNet++ 60."},
    )
    samples_per_scene: int = field(default=8, metadata={"help": "View sets drawn per scene and epoch."})
    images_per_batch: Optional[int] = field(
        default=None,
        metadata={"help": "Per-device image budget: each batch draws one view count V and holds images_per_batch // V "
                  "samples (the reference: 24). Default: per_device_train_batch_size samples, view counts per sample."},
    )
    data_seed_offset: int = field(default=0, metadata={"help": "Shifts SynthRooms scene seeds (other scenes)."})
    figure_path: Optional[str] = field(default=None, metadata={"help": "PCA figure path (default: output_dir/field_pca.png)."})
    render_processes: int = field(default=2, metadata={"help": "SynthRooms: processes that render the scenes (once, cached)."})
    cpu_threads: int = field(
        default=0,
        metadata={
            "help": "torch threads when training on CPU (0 = torch's default: every core). Pass 1 when another busy "
            "process shares a small machine: OpenMP threads that wait for a core stall each other (up to 25x slower)."
        },
    )


def flag_problems(data: DataArguments, optim: OptimizerArguments, training: TrainingArguments) -> list[str]:
    """What is wrong with the flags, checked before any work (each entry names the flag, its value, what is allowed)."""
    problems = training_flag_problems(training)
    if not 0 <= optim.muon_momentum < 1:
        problems.append(f"--muon_momentum must be in [0, 1), got {optim.muon_momentum}")
    sources, roots = dataset_sources(data), data_roots(data)
    unknown = [source for source in sources if source not in SOURCES]
    if unknown or not sources or len(set(sources)) != len(sources):
        problems.append(
            f"--dataset must be synthrooms, scannet, scannetpp or a comma-separated mix of the real ones (each once), "
            f"got {data.dataset!r}"
        )
    elif "synthrooms" in sources and len(sources) > 1:
        problems.append(f"--dataset mixes real sources only (SynthRooms renders its own scenes), got {data.dataset!r}")
    elif sources != ["synthrooms"]:
        if len(roots) != len(sources) or not all(os.path.isdir(root) for root in roots):
            problems.append(
                f"--dataset {data.dataset} needs --data_root, an existing folder per source (comma-separated, same "
                f"order); got {data.data_root!r}"
            )
    problems += at_least(data, ["num_train_scenes", "frames_per_scene", "image_height", "image_width", "min_views",
                                "samples_per_scene", "render_processes"], 1)
    problems += at_least(data, ["num_eval_scenes", "cpu_threads"], 0)
    if data.max_views < data.min_views:
        problems.append(f"--max_views ({data.max_views}) must be >= --min_views ({data.min_views})")
    if data.images_per_batch is not None and data.images_per_batch < 1:
        problems.append(f"--images_per_batch must be >= 1, got {data.images_per_batch}")
    if (data.min_interval is None) != (data.max_interval is None):
        problems.append("--min_interval and --max_interval go together (or neither: each source's recommended steps)")
    elif data.min_interval is not None:
        if data.min_interval < 1:
            problems.append(f"--min_interval must be >= 1, got {data.min_interval}")
        if data.max_interval < data.min_interval:
            problems.append(f"--max_interval ({data.max_interval}) must be >= --min_interval ({data.min_interval})")
    return problems


SOURCES = ("synthrooms", "scannet", "scannetpp")
# Frame steps between sampled views when --min/max_interval are not given: the reference's for real data.
DEFAULT_INTERVALS = {"synthrooms": (1, 2), "scannet": (2, 6), "scannetpp": (20, 60)}


def dataset_sources(data: DataArguments) -> list[str]:
    return [source.strip() for source in data.dataset.split(",") if source.strip()]


def data_roots(data: DataArguments) -> list[str]:
    return [root.strip() for root in (data.data_root or "").split(",") if root.strip()]


def source_interval(data: DataArguments, source: str) -> tuple[int, int]:
    if data.min_interval is not None:
        return data.min_interval, data.max_interval
    return DEFAULT_INTERVALS[source]


def build_scenes(data: DataArguments, split: str, seed: int, source: Optional[str] = None, root: Optional[str] = None):
    """The scenes of one source (default: the only one ``--dataset`` names)."""
    source = source or dataset_sources(data)[0]
    if source == "synthrooms":
        from spa3_vlm.data.synthrooms import load_synthrooms

        count = data.num_train_scenes if split == "train" else data.num_eval_scenes
        return load_synthrooms(
            num_scenes=count,
            frames_per_scene=data.frames_per_scene,
            image_size=(data.image_height, data.image_width),
            seed=seed + data.data_seed_offset,
            split=split,
            num_proc=data.render_processes,
        )
    if source in ("scannet", "scannetpp"):
        from spa3_vlm.data.scannet import ScanNetScenes

        root = root or (data_roots(data) or [None])[0]
        if root is None:
            raise ValueError(f"--dataset {source} needs --data_root")
        return ScanNetScenes(
            root,
            layout=source,
            split=None if source == "scannet" else split,
            skip_bad_scenes=data.skip_bad_scenes,
            skip_bad_frames=data.skip_bad_frames,
            cache_dir=data.index_cache_dir,
        )
    raise ValueError(f"--dataset must be synthrooms, scannet or scannetpp, got {source!r}")


def build_train_dataset(data: DataArguments, seed: int):
    """One ``PSFMDataset`` per source, each with its own frame steps, joined as the reference joins ScanNet and
    ScanNet++ (a ``ConcatDataset``; the collator centre-crops a batch to its smallest frames, as the reference's)."""
    sources = dataset_sources(data)
    roots = data_roots(data) if sources != ["synthrooms"] else [None]
    datasets = [
        PSFMDataset(
            build_scenes(data, "train", seed, source, root),
            (data.min_views, data.max_views),
            source_interval(data, source),
            data.samples_per_scene,
            seed,
            cache_scenes=source == "synthrooms",
        )
        for source, root in zip(sources, roots)
    ]
    return datasets[0] if len(datasets) == 1 else ConcatPSFMDataset(datasets)


def build_model(model_args: ModelArguments) -> Spa3RForFieldPrediction:
    if model_args.model_name_or_path:
        if model_args.config_overrides:
            raise ValueError("--config_overrides applies to a model trained from scratch, not to --model_name_or_path")
        return Spa3RForFieldPrediction.from_pretrained(model_args.model_name_or_path)
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"--config_overrides must be a JSON object of config fields, got {model_args.config_overrides!r}")
    config = AutoConfig.from_pretrained(model_args.config_name)
    # Rebuilt rather than passed as from_pretrained kwargs, which are set after __init__ and skip its validation.
    config = type(config).from_dict({**config.to_dict(), **overrides})
    model = Spa3RForFieldPrediction(config)
    if model_args.load_teacher_weights:
        from spa3_vlm.training.teachers import load_pretrained_teachers

        load_pretrained_teachers(model, root=REPO)
    return model


def main(argv=None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, OptimizerArguments, TrainingArguments))
    # Defaults of the tiny CPU run; every one can be overridden on the command line. A JSON file sets every flag
    # itself (unset ones keep the dataclass defaults, e.g. AdamW rather than Muon).
    parser.set_defaults(
        muon=True,  # learns the tiny field ~2x faster than AdamW on SynthRooms (issue notes); --muon false for AdamW
        output_dir="runs/spa3r-tiny",
        max_steps=1800,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        weight_decay=1e-4,
        warmup_steps=50,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=50,
        save_steps=800,
        save_total_limit=2,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps copies to a GPU
        remove_unused_columns=False,  # the collator needs depth maps and sample indices
        seed=0,
    )
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, optim_args, training_args = parser.parse_json_file(argv[0])
    else:
        model_args, data_args, optim_args, training_args = parser.parse_args_into_dataclasses(argv)
    problems = flag_problems(data_args, optim_args, training_args)
    if problems:
        parser.error("; ".join(problems))  # one line and exit status 2: a user mistake, not a crash
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # A recipe file sets every flag itself, pinning included: pinned memory only helps copies to an accelerator.
    training_args.dataloader_pin_memory = training_args.dataloader_pin_memory and torch.accelerator.is_available()
    if data_args.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(data_args.cpu_threads)
    set_seed(training_args.seed)

    try:
        model = build_model(model_args)
    except (ValueError, OSError) as error:  # a config that does not load or validate: the user's input
        parser.error(str(error))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Spa3R: %.2fM trainable / %.2fM parameters", trainable / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
    # Renderer fields the model needs: as targets of its heads or depth probe, and as context inputs of its encoder.
    wanted = set(model.config.target_heads) | set(model.config.context_inputs or {})
    if model.config.use_depth_probe:
        wanted.add(model.config.depth_probe_target)
    heads = [name for name in ("rgb", "metric_depth") if name in wanted]
    train_dataset = build_train_dataset(data_args, training_args.seed)
    collator = PSFMCollator(model.config.patch_size, model.config.mask_ratio, tuple(heads), training_args.seed)

    trainer = PSFMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator,
        muon=optim_args.muon,
        muon_momentum=optim_args.muon_momentum,
        # Teachers loaded from their sources are loaded again on resume: checkpoints need not carry them.
        checkpoint_teachers=not (model_args.load_teacher_weights and model_args.model_name_or_path is None),
        images_per_batch=data_args.images_per_batch,
        model_card=card_arguments(model_args, data_args, training_args),
    )
    train_resuming(trainer)  # picks up an interrupted run automatically
    trainer.save_model(training_args.output_dir)  # config + safetensors + model code: AutoModel loads it

    results = {}
    if trainer.is_world_process_zero() and data_args.num_eval_scenes > 0:
        results = evaluate_held_out(model, data_args, collator, training_args)
        trainer.model_card_kwargs["results"] = format_field_table(results)
    trainer.create_model_card()  # README.md: teachers, data, training, scores and the licences they bring
    return results


def card_arguments(model_args: ModelArguments, data_args: DataArguments, training_args) -> dict:
    """Keyword arguments of ``spa3_vlm.cards.psfm_model_card`` for this run."""
    sources = dataset_sources(data_args)
    if sources == ["synthrooms"]:
        height, width = data_args.image_height, data_args.image_width
        sources = [f"SynthRooms ({data_args.num_train_scenes} training scenes x {data_args.frames_per_scene} frames, "
                   f"{height}x{width}, seed {training_args.seed + data_args.data_seed_offset})"]  # fmt: skip
    return dict(
        teachers_loaded=model_args.load_teacher_weights,
        init_from=model_args.model_name_or_path,
        datasets=sources,
        root=REPO,  # the config's teacher paths are relative to the repository
        license=model_args.license,
        license_name=model_args.license_name,
        license_link=model_args.license_link,
    )


def evaluate_held_out(model, data_args: DataArguments, collator: PSFMCollator, training_args) -> dict:
    """Field scores on held-out scenes (model vs both baselines) and the PCA figure."""
    scenes = build_scenes(data_args, "test", training_args.seed)
    # Fixed 6-view samples, half of them unseen (view 0 always seen), the same for every run.
    dataset = PSFMDataset(scenes, (6, 6), source_interval(data_args, dataset_sources(data_args)[0]), 2, seed=12345)
    eval_collator = PSFMCollator(collator.patch_size, 0.5, collator.field_targets, seed=12345)
    batches = [eval_collator([dataset[i] for i in range(start, min(start + 4, len(dataset)))]) for start in range(0, len(dataset), 4)]
    results = evaluate_field(model, batches)
    print("\nPredicted field on held-out SynthRooms scenes (target views only):")
    print(format_field_table(results))

    first = batches[0]
    with torch.no_grad():
        out = model(**field_model_inputs(model, first))
    depths = {}
    if "depth" in out.predictions and "depth" in out.targets:
        depths = {"true_depth": out.targets["depth"][0], "predicted_depth": out.predictions["depth"][0]}
    base = data_args.figure_path or os.path.join(training_args.output_dir, "field_pca.png")
    # field_pca.png: the geo field and the depth read-out; field_pca_sem.png: the sem field.
    for index, head in enumerate(name for name in ("geo", "sem") if name in out.predictions):
        path = base if index == 0 else base.replace(".png", f"_{head}.png")
        rows = depths if index == 0 else {}
        views, teacher, predicted, mask = first["pixel_values"][0], out.targets[head][0], out.predictions[head][0], first["view_mask"][0]
        field_pca_figure(views, teacher, predicted, mask, **rows).save(path)
        print(f"PCA figure of the {head} field (views / teacher / predicted{' / depth' if rows else ''}; unseen views "
              f"framed in red): {path}")
    with open(os.path.join(training_args.output_dir, "field_eval.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
