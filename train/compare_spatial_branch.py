"""Does the Spa3R spatial branch help? Tiny Spa3-VLM vs the same tiny Qwen2.5-VL without it, on SynthRooms-QA.

Both arms start from the *same* randomly initialised tiny Qwen2.5-VL (hub_configs/spa3-vlm-tiny; the Spa3-VLM
gets those exact Qwen weights plus the Spa3R encoder pre-trained by train/pretrain_psfm.py and a fresh
identity adapter), are tuned with the same budget, data order, learning rates and seed (Spa3VLMSFTTrainer:
LLM + adapter trained, vision tower and Spa3R frozen), and are scored on questions about held-out scenes with
greedy answers (max 16 new tokens) by the VSI-Bench metrics. A third row, "train prior", answers every question
with the training set's most common answer of its type (median for numbers): what a model that ignores the
video can reach. Optional control arm (--random_spa3r_control): the same Spa3-VLM with a *random* Spa3R,
which separates "pre-trained spatial field" from "extra adapter parameters".

    python train/compare_spatial_branch.py                                  # Spa3R from runs/spa3r-tiny
    python train/compare_spatial_branch.py --spa3r_name_or_path <folder> --seeds 0,1,2 --random_spa3r_control

The paper's "VGGT features" arm (--vggt_features_arm): the same adapter reads the frozen VGGT's patch tokens of
every frame instead of Spa3R's latents. Its "latents as tokens" arm (--latent_tokens_arm): no cross-attention adapter;
the projected latents are appended after the frames as tokens of the LLM (Spa3VLMConfig(spatial_fusion="tokens")).
More arms (--spa3r_variants): Spa3-VLMs on other pre-trained Spa3Rs, e.g. the paper's ablations pre-trained with
train/pretrain_psfm.py --config_overrides (Plücker rays instead of PRoPE: '{"ray_encoding": "plucker",
"decoder_camera_attention": "none"}'; mask ratio: '{"mask_ratio": 0.25}'), each named and compared like the main arm.

Prints per-arm rows in the paper's column order (TASK_ORDER, x100) plus the held-out answer loss (teacher-forced
NLL of the answer tokens: more sensitive than greedy accuracy at this size), mean and standard deviation over
--seeds, each arm's paired difference to the plain model with a 95% interval from resampling held-out scenes
(spa3_vlm.evaluation.statistics), and per task the headroom the train prior and the plain model leave below the
ceiling (a task they nearly solve is answerable without the spatial branch). Writes JSON (--output_json, default
<output_dir>/compare_spatial_branch.json) and the table in Markdown next to it (.md). --quick: a smoke run of every
arm in well under a minute. --resume reuses the arms that a run with the same settings already finished in
--output_dir (each arm writes its result there): an interrupted run goes on where it stopped, an arm added later trains
alone, and processes given different --seeds can share a machine's cores, then one more run with every seed prints the
table.
Defaults (one seed, two arms, 1000 steps of batch 8 on 256 training scenes, 1,205 held-out questions on 150 scenes)
take 3.5-4 minutes per arm at one thread on a 2-core CPU (5 with three processes sharing it), plus rendering the
scenes once; the README's ablation table (10 arms, 3 seeds) took 71 minutes that way.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from transformers import HfArgumentParser, set_seed
from trl import SFTConfig

from spa3_vlm.configuration_spa3_vlm import Spa3VLMConfig, encoder_only_spa3r_config
from spa3_vlm.data.latent_cache import add_spatial_latents
from spa3_vlm.data.synthrooms_qa import build_synthrooms_qa
from spa3_vlm.evaluation.scoring import vsibench_scores
from spa3_vlm.evaluation.statistics import paired_scene_bootstrap
from spa3_vlm.modeling_spa3_vlm import Spa3VLMForConditionalGeneration
from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor
from spa3_vlm.training.flags import at_least
from spa3_vlm.training.sft_data import Spa3VLMSFTCollator, processor_for_image_size
from spa3_vlm.training.sft_eval import evaluate_vsibench
from spa3_vlm.training.sft_model import PARAMETER_GROUPS, configure_trainable, load_spa3r_encoder, parameter_group
from spa3_vlm.training.sft_trainer import Spa3VLMSFTTrainer
from spa3_vlm.vsibench import NUMERICAL_TYPES, TASK_ORDER

logger = logging.getLogger("compare_spatial_branch")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class CompareArguments:
    spa3r_name_or_path: str = field(
        default="runs/spa3r-tiny",
        metadata={"help": "Spa3R pre-trained by train/pretrain_psfm.py (its encoder must match the tiny VLM's)."},
    )
    config_name: str = field(default=os.path.join(REPO, "hub_configs", "spa3-vlm-tiny"), metadata={"help": "Tiny VLM."})
    output_dir: str = field(default="runs/compare-spatial-branch", metadata={"help": "Trainer scratch + JSON."})
    output_json: Optional[str] = field(
        default=None, metadata={"help": "Default: <output_dir>/compare_spatial_branch.json."}
    )
    num_train_scenes: int = field(default=256, metadata={"help": "SynthRooms-QA training scenes."})
    num_eval_scenes: int = field(
        default=150,
        metadata={"help": "Held-out scenes (the 'test' split: unseen rooms); about 1,200 questions by default (the printed "
                  "95% intervals say whether they suffice)."},
    )
    frames_per_scene: int = field(default=8, metadata={"help": "Frames per scene video."})
    questions_per_scene: int = field(default=10, metadata={"help": "Questions per scene."})
    image_height: int = field(default=84, metadata={"help": "Frame height (PSFM pre-training size)."})
    image_width: int = field(default=112, metadata={"help": "Frame width (PSFM pre-training size)."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps per arm (the shared budget)."})
    batch_size: int = field(default=8, metadata={"help": "Per-step batch."})
    learning_rate: float = field(default=3e-3, metadata={"help": "LLM learning rate."})
    adapter_lr: Optional[float] = field(default=None, metadata={"help": "Adapter lr (default: learning_rate)."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up steps (cosine decay after)."})
    seed: int = field(default=0, metadata={"help": "SynthRooms scenes and questions."})
    seeds: str = field(
        default="0",
        metadata={"help": "Comma-separated training seeds (model init + data order); each runs every arm, and the "
                  "table reports the mean over seeds and the per-seed Spa3-VLM - Qwen difference."},
    )
    max_new_tokens: int = field(default=16, metadata={"help": "Greedy tokens per answer."})
    random_spa3r_control: bool = field(
        default=False, metadata={"help": "Add the Spa3-VLM arm with a random Spa3R (control; ~3 more minutes)."}
    )
    spa3r_variants: Optional[str] = field(
        default=None,
        metadata={"help": "More Spa3-VLM arms: comma-separated name=folder pairs of other pre-trained Spa3Rs (e.g. "
                  "plucker=runs/spa3r-plucker,mask-0.25=runs/spa3r-mask25); each arm is 'spa3-vlm (<name>)'."},
    )
    vggt_features_arm: bool = field(
        default=False,
        metadata={"help": "Add the paper's 'VGGT features' arm: the same adapter reads the frozen VGGT's patch tokens of "
                  "every frame (spatial_source='backbone') instead of Spa3R's latents."},
    )
    latent_tokens_arm: bool = field(
        default=False,
        metadata={"help": "Add the paper's 'latents as tokens' arm: Spa3R's latents, projected, appended after the frames "
                  "as LLM tokens (spatial_fusion='tokens') instead of read through the cross-attention adapter."},
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Reuse arm results that a run with the same settings left in --output_dir (the Spa3R weights "
                  "included) instead of training those arms again. The code is not part of the key: after changing "
                  "it, run without --resume."},
    )
    bootstrap_resamples: int = field(default=2000, metadata={"help": "Scene-bootstrap draws per paired interval."})
    quick: bool = field(
        default=False,
        metadata={"help": "Smoke run: 2 training scenes, 1 held-out scene, 2 steps (numbers mean nothing)."},
    )
    data_cache_dir: Optional[str] = field(default=None, metadata={"help": "datasets cache folder (default HF_HOME)."})
    cpu_threads: int = field(
        default=1,
        metadata={"help": "torch threads when training on CPU (0 = torch's default); one, because two OpenMP threads "
                  "stall each other whenever another process shares a 2-core machine."},
    )


PLAIN_ARM = "qwen2.5-vl (no spatial branch)"
SPATIAL_ARM = "spa3-vlm (pre-trained Spa3R)"
QUICK = {
    "num_train_scenes": 2, "num_eval_scenes": 1, "frames_per_scene": 4, "questions_per_scene": 4, "max_steps": 2,
    "batch_size": 4, "max_new_tokens": 2, "bootstrap_resamples": 50,
}  # fmt: skip
# A task where the train prior or the plain model leaves less than this below the ceiling is flagged.
MIN_HEADROOM = 0.2


def parse_variants(text: Optional[str]) -> dict[str, str]:
    """``"a=path,b=path"`` -> ``{"a": "path", "b": "path"}``; ``ValueError`` naming a malformed or repeated entry."""
    variants: dict[str, str] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        name, sep, path = (part.strip() for part in entry.partition("="))
        if not sep or not name or not path:
            raise ValueError(f"--spa3r_variants entries must be name=folder, got {entry.strip()!r}")
        if name in variants:
            raise ValueError(f"--spa3r_variants names {name!r} twice")
        variants[name] = path
    return variants


def _missing_spa3r(path: str) -> Optional[str]:
    if os.path.exists(os.path.join(path, "config.json")):
        return None
    return f"no pre-trained Spa3R at {path!r} (no config.json). Train one first: python train/pretrain_psfm.py --output_dir {path}"


def flag_problems(args: CompareArguments) -> list[str]:
    """What is wrong with the flags, checked before any work (each entry names the flag, its value, what is allowed)."""
    problems = []
    missing = _missing_spa3r(args.spa3r_name_or_path)
    if missing:
        problems.append(missing + "  (or pass --spa3r_name_or_path)")
    try:
        for name, path in parse_variants(args.spa3r_variants).items():
            missing = _missing_spa3r(path)
            if missing:
                problems.append(f"--spa3r_variants {name}: {missing}")
    except ValueError as error:
        problems.append(str(error))
    for name in ("learning_rate", "adapter_lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            problems.append(f"--{name} must be a positive number, got {value}")
    problems += at_least(args, ["num_train_scenes", "num_eval_scenes", "frames_per_scene", "questions_per_scene",
                                "image_height", "image_width", "max_steps", "batch_size", "max_new_tokens",
                                "bootstrap_resamples"], 1)
    problems += at_least(args, ["warmup_steps", "cpu_threads"], 0)
    try:
        if not [int(value) for value in args.seeds.split(",") if value.strip()]:
            raise ValueError
    except ValueError:
        problems.append(f"--seeds must be a comma-separated list of at least one int, got {args.seeds!r}")
    return problems


def build_arm_models(args: CompareArguments, seed: int) -> dict[str, Spa3VLMForConditionalGeneration]:
    """The arms' initial models, sharing every Qwen2.5-VL weight; the Spa3-VLM arms also share the adapter's initial
    weights, so they differ only by their Spa3R."""
    set_seed(seed)
    plain = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(args.config_name, spatial_branch=False))
    qwen_state = plain.state_dict()
    models = {PLAIN_ARM: plain}

    def spatial(spa3r_path: Optional[str], source="spa3r", adapter: Optional[dict] = None, fusion="cross_attention"):
        """A Spa3-VLM arm on the shared Qwen weights, starting from ``adapter``'s weights where the shapes agree (all
        but the projector's input for another ``source``; only the projector for token fusion), else its own
        initialisation."""
        from spa3_vlm.configuration_spa3r import Spa3RConfig

        config = Spa3VLMConfig.from_pretrained(
            args.config_name, spatial_branch=True, spatial_source=source, spatial_fusion=fusion
        )
        if spa3r_path is not None:
            config.spa3r_config = encoder_only_spa3r_config(Spa3RConfig.from_pretrained(spa3r_path))
            config.spa3r_name_or_path = spa3r_path
        model = Spa3VLMForConditionalGeneration(config)
        own = model.state_dict()
        shared = {k: v for k, v in (adapter or {}).items() if k in own and own[k].shape == v.shape}
        missing, unexpected = model.load_state_dict({**qwen_state, **shared}, strict=False)
        groups = {parameter_group(name) for name in missing}
        if unexpected or not groups <= {"spa3r", "adapter"}:
            raise RuntimeError(f"Qwen weights do not transfer: unexpected {unexpected[:5]}, missing groups {groups}")
        if spa3r_path is not None:
            load_spa3r_encoder(model, spa3r_path)
        return model

    models[SPATIAL_ARM] = spatial(args.spa3r_name_or_path)
    adapter = {k: v for k, v in models[SPATIAL_ARM].state_dict().items() if parameter_group(k) == "adapter"}
    for name, path in parse_variants(args.spa3r_variants).items():
        models[f"spa3-vlm ({name})"] = spatial(path, adapter=adapter)
    if args.vggt_features_arm:
        torch.manual_seed(seed + 2)  # its projector's wider input layer: the same start whichever arms come before
        models["spa3-vlm (VGGT features)"] = spatial(args.spa3r_name_or_path, source="backbone", adapter=adapter)
    if args.latent_tokens_arm:
        models["spa3-vlm (latents as tokens)"] = spatial(args.spa3r_name_or_path, adapter=adapter, fusion="tokens")
    if args.random_spa3r_control:
        torch.manual_seed(seed + 1)
        models["spa3-vlm (random Spa3R)"] = spatial(None, adapter=adapter)
    return models


def prior_answers(train, held_out) -> list[str]:
    """Per question type, the training set's most common answer (median for numerical types)."""
    by_type: dict[str, list[str]] = {}
    for question_type, answer in zip(train["question_type"], train["ground_truth"]):
        by_type.setdefault(question_type, []).append(answer)
    prior = {}
    for question_type, answers in by_type.items():
        if question_type in NUMERICAL_TYPES:
            prior[question_type] = f"{statistics.median(float(a) for a in answers):g}"
        else:
            prior[question_type] = Counter(answers).most_common(1)[0][0]
    return [prior.get(question_type, "") for question_type in held_out["question_type"]]


def run_folder(args: CompareArguments, name: str, seed: int) -> str:
    """``<output_dir>/<arm name as a file name>-seed<seed>``: the arm's Trainer scratch and its result."""
    return os.path.join(
        args.output_dir, "-".join("".join(c if c.isalnum() or c in ".-" else " " for c in name).split()) + f"-seed{seed}"
    )


# Settings that do not change an arm's result: where it is written, how the table is summarised, threads, and which
# other arms run (each arm's start depends only on the seed and its own Spa3R, see build_arm_models).
_NOT_RESULT_SETTINGS = (
    "output_dir", "output_json", "seeds", "bootstrap_resamples", "data_cache_dir", "cpu_threads", "resume",
    "spa3r_variants", "vggt_features_arm", "latent_tokens_arm", "random_spa3r_control",
)  # fmt: skip


def arm_settings(args: CompareArguments, model) -> dict:
    """What an arm's result depends on: the run's settings and the arm's Spa3R weights (path, size, mtime)."""
    settings = {k: v for k, v in asdict(args).items() if k not in _NOT_RESULT_SETTINGS}
    path = getattr(model.config, "spa3r_name_or_path", None) if model.config.spatial_branch else None
    weights = os.path.join(path, "model.safetensors") if path else None
    if weights and os.path.exists(weights):
        stat = os.stat(weights)
        settings["spa3r_weights"] = [os.path.abspath(weights), stat.st_size, stat.st_mtime_ns]
    settings["spatial"] = [model.config.spatial_branch, getattr(model.config, "spatial_source", None),
                           getattr(model.config, "spatial_fusion", None), path]  # fmt: skip
    return settings


def reusable_result(folder: str, settings: dict) -> Optional[dict]:
    """The arm result a run with the same ``settings`` wrote to ``folder``, else ``None``."""
    try:
        with open(os.path.join(folder, "arm_result.json")) as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        return None
    return saved["result"] if saved.get("settings") == json.loads(json.dumps(settings)) else None


def save_result(folder: str, settings: dict, result: dict) -> None:
    """Write the arm's result atomically: a run killed while writing leaves the old file or none."""
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, "arm_result.json.tmp")
    with open(temporary, "w") as handle:
        json.dump({"settings": settings, "result": result}, handle)
    os.replace(temporary, os.path.join(folder, "arm_result.json"))


def train_arm(name, model, args: CompareArguments, seed: int, processor, train, held_out) -> dict:
    spatial = model.config.spatial_branch
    configure_trainable(model, tune_llm=True, tune_adapter=spatial)
    trainable = dict.fromkeys(PARAMETER_GROUPS, 0)
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            trainable[parameter_group(param_name)] += param.numel()
    config = SFTConfig(
        output_dir=run_folder(args, name, seed),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=16,
        learning_rate=args.learning_rate,
        weight_decay=0.01,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=max(args.max_steps // 5, 1),
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps copies to a GPU
        bf16=False,
        activation_checkpointing=False,
        max_length=None,
        seed=seed,
    )
    mode = "latents" if spatial else "none"
    trainer = Spa3VLMSFTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        processing_class=processor,
        data_collator=Spa3VLMSFTCollator(processor, spatial_inputs=mode),
        learning_rates={"adapter": args.adapter_lr} if args.adapter_lr is not None else None,
        fused_lm_head=False,  # same loss; TRL's chunked LM head costs more than this tiny model on a CPU
    )
    start = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - start
    eval_loss = trainer.evaluate(eval_dataset=held_out)["eval_loss"]
    start = time.perf_counter()
    scores = evaluate_vsibench(
        model, processor, held_out, batch_size=16, max_new_tokens=args.max_new_tokens, spatial_inputs=mode
    )
    return {
        "scores": scores,
        "train_loss": output.training_loss,
        "held_out_answer_loss": eval_loss,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "trainable_parameters": trainable,
        "learning_rates": trainer.group_lrs(),
    }


SHORT_TASK_NAMES = {
    "object_counting": "count", "object_abs_distance": "abs-dist", "object_size_estimation": "obj-size",
    "room_size_estimation": "room-size", "object_rel_distance": "rel-dist", "object_rel_direction": "rel-dir",
    "route_planning": "route", "obj_appearance_order": "appear",
}  # fmt: skip


def format_table(rows: dict[str, dict]) -> str:
    """Arms x (overall, the 8 tasks in the paper's order, held-out answer loss); scores x100."""
    short = SHORT_TASK_NAMES
    width = max(len(name) for name in rows) + 2
    columns = "".join(short[t].rjust(10) for t in TASK_ORDER)
    header = "arm".ljust(width) + "overall".rjust(8) + columns + "ans-loss".rjust(10)
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        tasks = row["scores"]["tasks"]
        cells = "".join((f"{100 * tasks[t]:.1f}" if t in tasks else "-").rjust(10) for t in TASK_ORDER)
        loss = row.get("held_out_answer_loss")
        overall = f"{100 * row['scores']['overall']:.1f}".rjust(8)
        lines.append(name.ljust(width) + overall + cells + (f"{loss:.3f}" if loss is not None else "-").rjust(10))
    counts = next(iter(rows.values()))["scores"]["task_counts"]
    lines.append("n".ljust(width) + "".rjust(8) + "".join(str(counts.get(t, 0)).rjust(10) for t in TASK_ORDER))
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    """The result as a Markdown table: per arm the overall (mean ± std over seeds), its paired difference to the plain
    model with the 95% interval, the tasks (mean over seeds) and the held-out answer loss; scores x100."""
    seeds = list(result["runs"])
    tasks = [t for t in result["task_order"] if t in result["train_prior"]["tasks"]]
    header = ["arm", f"overall ({len(seeds)} seed{'s' * (len(seeds) > 1)})", "vs plain [95%]"]
    lines = ["| " + " | ".join(header + [SHORT_TASK_NAMES[t] for t in tasks] + ["answer loss"]) + " |"]
    lines.append("|" + "---|" * (len(header) + len(tasks) + 1))
    prior = result["train_prior"]
    lines.append("| train prior (no video) | " + f"{100 * prior['overall']:.1f} | | "
                 + " | ".join(f"{100 * prior['tasks'][t]:.1f}" for t in tasks) + " | |")  # fmt: skip
    for name, row in result["mean_over_seeds"].items():
        if name not in result["overall_over_seeds"]:
            continue
        spread, paired = result["overall_over_seeds"][name], result["paired_difference_to_plain"].get(name)
        versus = f"{100 * paired['difference']:+.1f} [{100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}]" if paired else ""
        cells = [name, f"{100 * spread['mean']:.1f} ± {100 * spread['std']:.1f}", versus]
        cells += [f"{100 * row['tasks'][t]:.1f}" if t in row["tasks"] else "-" for t in tasks]
        cells.append(f"{row['held_out_answer_loss']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    counts = next(iter(result["runs"][seeds[0]].values()))["task_counts"]
    lines.append("| questions | " + f"{result['num_held_out_questions']} | | "
                 + " | ".join(str(counts.get(t, 0)) for t in tasks) + " | |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = HfArgumentParser(CompareArguments)
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = parser.parse_args_into_dataclasses(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    problems = flag_problems(args)
    if problems:
        parser.error("; ".join(problems))  # one line and exit status 2: a user mistake, not a crash
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(args.cpu_threads)
    began = time.perf_counter()

    processor = processor_for_image_size(
        Spa3VLMProcessor.from_pretrained(args.config_name), args.image_height, args.image_width
    )
    common = dict(
        frames_per_scene=args.frames_per_scene,
        image_size=(args.image_height, args.image_width),
        seed=args.seed,
        per_scene=args.questions_per_scene,
        cache_dir=args.data_cache_dir,
    )
    train = build_synthrooms_qa(num_scenes=args.num_train_scenes, split="train", **common)
    held_out = build_synthrooms_qa(num_scenes=args.num_eval_scenes, split="test", **common)
    logger.info("SynthRooms-QA: %d training questions, %d held-out questions", len(train), len(held_out))

    prior = prior_answers(train, held_out)
    table = held_out.select_columns(["id", "question_type", "ground_truth", "options"]).to_list()
    prior_row = {"scores": vsibench_scores([{**r, "prediction": p} for r, p in zip(table, prior)])}

    seeds = [int(value) for value in args.seeds.split(",") if value.strip()]  # checked by flag_problems
    runs: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        runs[seed] = {}
        for name, model in build_arm_models(args, seed).items():
            folder, settings = run_folder(args, name, seed), arm_settings(args, model)
            if args.resume and (reused := reusable_result(folder, settings)) is not None:
                logger.info("seed %d: %s reused from %s", seed, name, folder)
                runs[seed][name] = reused
                continue
            arm_processor = copy.copy(processor)
            arm_processor.spatial_slot_tokens = model.config.latent_slot_size  # the slot a "tokens" arm fills
            arm_train, arm_held_out = train, held_out
            if model.config.spatial_branch:
                arm_train = add_spatial_latents(train, model, processor)
                arm_held_out = add_spatial_latents(held_out, model, processor)
            logger.info(
                "seed %d: training %s (%d steps, then %d held-out questions)", seed, name, args.max_steps, len(held_out)
            )
            runs[seed][name] = train_arm(name, model, args, seed, arm_processor, arm_train, arm_held_out)
            save_result(folder, settings, runs[seed][name])

    arms = list(runs[seeds[0]])
    mean_rows = {"train prior (no video)": prior_row}
    spread, paired = {}, {}
    records = held_out.select_columns(["id", "question_type", "scene_name"]).to_list()
    table_ids = [record["id"] for record in records]

    def per_record_mean(name):
        """Each held-out question's score for arm ``name``, averaged over the seeds."""
        return {i: statistics.fmean(runs[seed][name]["scores"]["per_record"][i] for seed in seeds) for i in table_ids}

    plain_scores = per_record_mean(PLAIN_ARM)
    # The overall is linear in the per-question scores, so "minus a model that scores 0" is its own interval.
    plain_interval = paired_scene_bootstrap(
        records, plain_scores, dict.fromkeys(table_ids, 0.0), num_resamples=args.bootstrap_resamples, seed=0
    )
    for name in arms:
        per_seed = [runs[seed][name] for seed in seeds]
        overall = [r["scores"]["overall"] for r in per_seed]
        spread[name] = {"mean": statistics.fmean(overall), "std": statistics.stdev(overall) if len(overall) > 1 else 0.0}
        if name != PLAIN_ARM:
            paired[name] = paired_scene_bootstrap(
                records, per_record_mean(name), plain_scores, num_resamples=args.bootstrap_resamples, seed=0
            )
        mean_rows[name] = {
            "scores": {
                "overall": statistics.fmean(r["scores"]["overall"] for r in per_seed),
                "tasks": {
                    t: statistics.fmean(r["scores"]["tasks"][t] for r in per_seed) for t in per_seed[0]["scores"]["tasks"]
                },
                "task_counts": per_seed[0]["scores"]["task_counts"],
            },
            "held_out_answer_loss": statistics.fmean(r["held_out_answer_loss"] for r in per_seed),
        }
    spatial_name, plain_name = SPATIAL_ARM, PLAIN_ARM
    headroom = {
        task: {
            "train_prior": 1 - prior_row["scores"]["tasks"][task],
            "plain": 1 - mean_rows[PLAIN_ARM]["scores"]["tasks"][task],
        }
        for task in TASK_ORDER
        if task in prior_row["scores"]["tasks"] and task in mean_rows[PLAIN_ARM]["scores"]["tasks"]
    }
    differences = {
        seed: {
            "overall": runs[seed][spatial_name]["scores"]["overall"] - runs[seed][plain_name]["scores"]["overall"],
            "held_out_answer_loss": runs[seed][spatial_name]["held_out_answer_loss"]
            - runs[seed][plain_name]["held_out_answer_loss"],
        }
        for seed in seeds
    }

    print(f"\nHeld-out SynthRooms-QA: {len(held_out)} questions on {args.num_eval_scenes} unseen scenes; "
          f"{args.max_steps} steps x batch {args.batch_size} per arm; VSI-Bench metrics x100; "
          f"{'mean over seeds ' + args.seeds if len(seeds) > 1 else 'seed ' + str(seeds[0])}")
    print(format_table(mean_rows))
    per_seed_text = ", ".join(
        f"seed {seed}: overall {100 * d['overall']:+.1f}, answer loss {d['held_out_answer_loss']:+.3f}"
        for seed, d in differences.items()
    )
    print(f"\nspa3-vlm - qwen2.5-vl per seed: {per_seed_text}")
    print(f"\noverall x100 over {len(seeds)} seed(s), mean ± std; paired difference to {PLAIN_ARM} on the same "
          f"questions (mean over seeds) with its {100 * 0.95:.0f}% interval from {args.bootstrap_resamples} "
          f"resamples of the {args.num_eval_scenes} held-out scenes:")
    for name in arms:
        line = f"  {name}: {100 * spread[name]['mean']:.1f} ± {100 * spread[name]['std']:.1f}"
        if name in paired:
            p = paired[name]
            line += f"; difference {100 * p['difference']:+.1f} [{100 * p['low']:+.1f}, {100 * p['high']:+.1f}]"
        print(line)
    print(f"  (the overall of {PLAIN_ARM} alone: {100 * plain_interval['difference']:.1f} "
          f"[{100 * plain_interval['low']:.1f}, {100 * plain_interval['high']:.1f}], resampling the same scenes)")
    flagged = [t for t, room in headroom.items() if min(room.values()) < MIN_HEADROOM]
    print("\nheadroom below the ceiling (x100), train prior / plain model: " + ", ".join(
        f"{t} {100 * room['train_prior']:.0f}/{100 * room['plain']:.0f}" for t, room in headroom.items()))
    if flagged:
        print(f"warning: {', '.join(flagged)}: less than {100 * MIN_HEADROOM:.0f} points below the ceiling without "
              "the spatial branch; these tasks cannot show what it adds")
    result = {
        "benchmark": "compare_spatial_branch",
        # Repo-relative paths: the JSON is compared across machines.
        "args": {k: os.path.relpath(v, REPO) if isinstance(v, str) and v.startswith(REPO) else v for k, v in asdict(args).items()},
        "task_order": list(TASK_ORDER),
        "num_train_questions": len(train),
        "num_held_out_questions": len(held_out),
        "train_prior": {"overall": prior_row["scores"]["overall"], "tasks": prior_row["scores"]["tasks"]},
        "mean_over_seeds": {
            name: {"overall": row["scores"]["overall"], "tasks": row["scores"]["tasks"],
                   "held_out_answer_loss": row.get("held_out_answer_loss")}
            for name, row in mean_rows.items()
        },
        "spa3_minus_qwen": differences,
        "overall_over_seeds": spread,
        "paired_difference_to_plain": paired,
        "plain_overall_interval": plain_interval,
        "headroom": headroom,
        "flagged_tasks": flagged,
        "runs": {
            seed: {
                name: {
                    **{k: v for k, v in row.items() if k != "scores"},
                    "overall": row["scores"]["overall"],
                    "tasks": row["scores"]["tasks"],
                    "task_counts": row["scores"]["task_counts"],
                    "question_type_scores": row["scores"]["question_type_scores"],
                    "predictions": row["scores"].get("predictions"),
                    "per_record": row["scores"]["per_record"],
                }
                for name, row in by_arm.items()
            }
            for seed, by_arm in runs.items()
        },
        "total_seconds": time.perf_counter() - began,
    }
    path = args.output_json or os.path.join(args.output_dir, "compare_spatial_branch.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
    markdown = os.path.splitext(path)[0] + ".md"
    with open(markdown, "w") as handle:
        handle.write(format_markdown(json.loads(json.dumps(result))))  # the JSON's view: seeds as strings
    print(f"\nwritten {path} and {os.path.basename(markdown)} ({result['total_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
