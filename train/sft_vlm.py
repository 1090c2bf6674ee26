"""Spatial instruction tuning of Spa3-VLM with TRL's SFTTrainer (full fine-tuning or LoRA through PEFT).

With no data flags it tunes the tiny random model (hub_configs/spa3-vlm-tiny) on SynthRooms-QA rendered on the
fly, on CPU in about a minute, scores greedy answers on held-out scenes with the VSI-Bench metrics and writes a
loadable model folder (+ processor files, model card) to --output_dir:

    python train/sft_vlm.py --output_dir runs/spa3-vlm-tiny-sft --spa3r_name_or_path runs/spa3r-tiny
    python train/sft_vlm.py --use_lora --merge_lora ...           # LoRA on the LLM, merged into a full model
    python train/sft_vlm.py --use_lora ...                          # LoRA kept as a PEFT adapter (+ base_model/)
    python train/sft_vlm.py hub_configs/spa3-vlm-3b/sft_reference.json   # the reference recipe (GPUs; edit the paths)
    accelerate launch --num_processes 8 train/sft_vlm.py --deepspeed train/zero2.json --bf16 true \
        --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --spa3r_name_or_path <spa3r folder> \
        --dataset vsi590k --annotation_path vsi590k.jsonl --media_root media/ \
        --per_device_train_batch_size 1 --gradient_accumulation_steps 8 --num_train_epochs 1 \
        --learning_rate 1e-5 --weight_decay 0.01 --warmup_steps 0.03 --lr_scheduler_type cosine \
        --activation_checkpointing --max_steps -1 --num_eval_scenes 0 --cache_latents false \
        --dataloader_num_workers 4 --frame_cache_dir /scratch/vsi590k-frames

Trainable groups as in the reference: the LLM and the adapter train, the vision tower (with its merger) and
Spa3R stay frozen; ``--tune_merger`` / ``--tune_vision`` unfreeze them. Each group has its own learning rate
(``--adapter_lr``, ``--llm_lr``, ``--merger_lr``, ``--vision_lr``; default ``--learning_rate``), implemented as
optimizer param groups in ``Spa3VLMSFTTrainer.create_optimizer``. With ``--use_lora`` the LLM gets LoRA
(``--lora_r`` ...) and the adapter modules are trained in full (PEFT ``modules_to_save``).

VSI-590K rows hold video paths and frame indices, not pixels: the DataLoader's workers decode the frames
(``--dataloader_num_workers``), ``--frame_cache_dir`` keeps each video's decoded frames once per frame set, and the
Spa3R latent cache (``--cache_latents``) holds one entry per video and frame set (:mod:`spa3_vlm.data.vsi590k`).

``train/zero2.json`` is a DeepSpeed ZeRO-2 config for GPUs (not exercised on this CPU-only machine). It has no
optimizer / scheduler sections on purpose: the Trainer then builds them, with the per-group learning rates.
Under ``accelerate launch`` / ``torchrun`` only the main process evaluates, saves and writes the card (checked here
with ``torchrun --nproc_per_node 2 train/sft_vlm.py ... --ddp_backend gloo`` on CPU).

Every ``SFTConfig`` / ``TrainingArguments`` flag works (``--max_steps``, ``--push_to_hub``, ``--hub_model_id``,
``--deepspeed``, ...). ``--push_to_hub`` uploads through the libraries' own ``push_to_hub`` (trainer, or model +
processor + ``ModelCard`` for a merged LoRA), with the generated model card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import HfArgumentParser, set_seed
from trl import SFTConfig

from spa3_vlm.cards import sft_model_card
from spa3_vlm.data.row_transforms import raw_column, row_columns
from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor
from spa3_vlm.training.flags import at_least, training_flag_problems
from spa3_vlm.training.sft_data import Spa3VLMSFTCollator, processor_for_image_size
from spa3_vlm.training.sft_eval import evaluate_vsibench
from spa3_vlm.training.sft_model import DEFAULT_LORA_TARGETS, configure_trainable, load_spa3_vlm, lora_config
from spa3_vlm.training.sft_trainer import Spa3VLMSFTTrainer
from spa3_vlm.vsibench import TASK_ORDER

logger = logging.getLogger("sft_vlm")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "hub_configs", "spa3-vlm-tiny")


@dataclass
class ModelArguments:
    config_name: str = field(
        default=TINY_CONFIG,
        metadata={"help": "Spa3-VLM config (+ processor files) for a randomly initialised model, used when "
                  "--model_name_or_path is not given."},
    )
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "A Spa3-VLM or Qwen2.5-VL checkpoint (folder or hub id) to tune."}
    )
    processor_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Processor folder; default: --model_name_or_path, else --config_name."}
    )
    spa3r_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Pretrained Spa3R (e.g. runs/spa3r-tiny from train/pretrain_psfm.py) for the frozen "
                  "encoder. Without it the encoder is random (unless the checkpoint has one)."},
    )
    spatial_branch: bool = field(default=True, metadata={"help": "False: plain Qwen2.5-VL (the ablation)."})
    tune_llm: bool = field(default=True, metadata={"help": "Train the LLM (full fine-tuning; LoRA with --use_lora)."})
    tune_merger: bool = field(default=False, metadata={"help": "Train the vision merger (reference: frozen)."})
    tune_vision: bool = field(default=False, metadata={"help": "Train the vision tower (reference: frozen)."})
    adapter_lr: Optional[float] = field(default=None, metadata={"help": "Adapter lr (default --learning_rate)."})
    llm_lr: Optional[float] = field(default=None, metadata={"help": "LLM / LoRA lr (default --learning_rate)."})
    merger_lr: Optional[float] = field(default=None, metadata={"help": "Merger learning rate (default --learning_rate)."})
    vision_lr: Optional[float] = field(default=None, metadata={"help": "Vision learning rate (default --learning_rate)."})
    use_lora: bool = field(default=False, metadata={"help": "LoRA (PEFT) on the LLM instead of full fine-tuning."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default=DEFAULT_LORA_TARGETS, metadata={"help": "Regex of LoRA target modules."})
    merge_lora: bool = field(
        default=False,
        metadata={"help": "Merge LoRA into the weights and write a full model folder (else a PEFT adapter folder)."},
    )
    license: Optional[str] = field(
        default=None,
        metadata={"help": "Model card licence (a Hub licence id); default: the most restrictive licence of the bundled "
                  "base model and Spa3R (spa3_vlm.cards)."},
    )
    license_name: Optional[str] = field(default=None, metadata={"help": "With --license other: its short name."})
    license_link: Optional[str] = field(default=None, metadata={"help": "With --license other: a link to its text."})


@dataclass
class DataArguments:
    dataset: str = field(
        default="synthrooms_qa",
        metadata={"help": "synthrooms_qa | vsi590k | a folder written by datasets' save_to_disk (images + messages)."},
    )
    annotation_path: Optional[str] = field(default=None, metadata={"help": "VSI-590K annotations (.json / .jsonl)."})
    media_root: Optional[str] = field(default=None, metadata={"help": "VSI-590K media folder."})
    num_frames: Optional[int] = field(
        default=None,
        metadata={"help": "VSI-590K frames per video; default: the reference's clamp(round(duration / 2 s), 4, 8)."},
    )
    video_min_frames: int = field(default=4, metadata={"help": "VSI-590K: fewest frames per video (reference: 4)."})
    video_max_frames: int = field(default=8, metadata={"help": "VSI-590K: most frames per video (reference: 8)."})
    frame_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "VSI-590K: keep each video's decoded frames here (PNG, once per video and frame set), so "
                  "the records of a video read them instead of decoding it again; default: decode on every read."},
    )
    num_train_scenes: int = field(default=32, metadata={"help": "SynthRooms-QA training scenes."})
    num_eval_scenes: int = field(default=8, metadata={"help": "SynthRooms-QA held-out scenes (0: no evaluation)."})
    frames_per_scene: int = field(default=8, metadata={"help": "SynthRooms frames per scene video."})
    image_height: int = field(default=84, metadata={"help": "SynthRooms frame height (multiple of 14)."})
    image_width: int = field(default=112, metadata={"help": "SynthRooms frame width (multiple of 14)."})
    questions_per_scene: int = field(default=10, metadata={"help": "SynthRooms-QA questions per scene."})
    scenes_seed: int = field(default=0, metadata={"help": "SynthRooms scene / question seed."})
    geometry_at_image_size: bool = field(
        default=True,
        metadata={"help": "SynthRooms: feed Spa3R the frames at their size (as in PSFM pre-training) instead of the "
                  "processor's geometry size."},
    )
    cache_latents: bool = field(
        default=True,
        metadata={"help": "Compute the frozen Spa3R's latents once per frame set (a store under --data_cache_dir) "
                  "instead of per step."},
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep the first N training records."})
    eval_max_new_tokens: int = field(default=16, metadata={"help": "Greedy tokens per held-out answer."})
    data_cache_dir: Optional[str] = field(default=None, metadata={"help": "datasets cache folder (default HF_HOME)."})
    cpu_threads: int = field(
        default=1,
        metadata={"help": "torch threads when training on CPU (0 = torch's default); one, because two OpenMP threads "
                  "stall each other whenever another process shares a 2-core machine."},
    )


def flag_problems(model: ModelArguments, data: DataArguments, training) -> list[str]:
    """What is wrong with the flags, checked before any work (each entry names the flag, its value, what is allowed)."""
    problems = training_flag_problems(training)
    if model.merge_lora and not model.use_lora:
        problems.append("--merge_lora needs --use_lora")
    if model.use_lora and not model.tune_llm:
        problems.append("--use_lora trains LoRA weights in the LLM; it contradicts --tune_llm false")
    for name in ("adapter_lr", "llm_lr", "merger_lr", "vision_lr"):
        value = getattr(model, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            problems.append(f"--{name} must be a positive number, got {value}")
    problems += at_least(model, ["lora_r", "lora_alpha"], 1)
    if not 0 <= model.lora_dropout < 1:
        problems.append(f"--lora_dropout must be in [0, 1), got {model.lora_dropout}")
    if data.dataset == "vsi590k":
        for name in ("annotation_path", "media_root"):
            if not (getattr(data, name) and os.path.exists(getattr(data, name))):
                problems.append(f"--dataset vsi590k needs --{name}, an existing path; got {getattr(data, name)!r}")
    elif data.dataset != "synthrooms_qa" and not os.path.isdir(data.dataset):
        problems.append(f"--dataset must be synthrooms_qa, vsi590k or a save_to_disk folder, got {data.dataset!r}")
    if data.frame_cache_dir is not None and data.dataset != "vsi590k":
        problems.append(f"--frame_cache_dir caches decoded videos of --dataset vsi590k; got --dataset {data.dataset!r}")
    problems += at_least(data, ["video_min_frames", "num_train_scenes", "frames_per_scene", "image_height", "image_width",
                                "questions_per_scene", "eval_max_new_tokens"], 1)
    if data.num_frames is not None and data.num_frames < 1:
        problems.append(f"--num_frames must be >= 1, got {data.num_frames}")
    if data.video_max_frames < data.video_min_frames:
        problems.append(f"--video_max_frames ({data.video_max_frames}) must be >= --video_min_frames ({data.video_min_frames})")
    problems += at_least(data, ["num_eval_scenes", "cpu_threads"], 0)
    if data.max_train_samples is not None and data.max_train_samples < 1:
        problems.append(f"--max_train_samples must be >= 1, got {data.max_train_samples}")
    return problems


def build_datasets(data: DataArguments, seed: int):
    """(train, held-out or None, dataset names for the card)."""
    import datasets

    if data.dataset == "synthrooms_qa":
        from spa3_vlm.data.synthrooms_qa import build_synthrooms_qa

        common = dict(
            frames_per_scene=data.frames_per_scene,
            image_size=(data.image_height, data.image_width),
            seed=data.scenes_seed,
            per_scene=data.questions_per_scene,
            cache_dir=data.data_cache_dir,
        )
        train = build_synthrooms_qa(num_scenes=data.num_train_scenes, split="train", **common)
        held_out = None
        if data.num_eval_scenes:
            held_out = build_synthrooms_qa(num_scenes=data.num_eval_scenes, split="test", **common)
        names = ["SynthRooms-QA (procedural rooms, VSI-Bench question types)"]
    elif data.dataset == "vsi590k":
        from spa3_vlm.data.vsi590k import load_vsi590k

        if not data.annotation_path or not data.media_root:
            raise ValueError("--dataset vsi590k needs --annotation_path and --media_root")
        # Rows name their frames; the DataLoader's workers (--dataloader_num_workers) decode them.
        train = load_vsi590k(
            data.annotation_path, data.media_root, data.num_frames, min_frames=data.video_min_frames,
            max_frames=data.video_max_frames, cache_dir=data.data_cache_dir, frame_cache_dir=data.frame_cache_dir,
        )  # fmt: skip
        held_out, names = None, ["nyu-visionx/VSI-590K"]
    elif os.path.isdir(data.dataset):
        train = datasets.load_from_disk(data.dataset)
        if isinstance(train, datasets.DatasetDict):
            train = train["train"]
        held_out, names = None, [data.dataset]
    else:
        raise ValueError(f"--dataset must be synthrooms_qa, vsi590k or a save_to_disk folder, got {data.dataset!r}")
    columns = row_columns(train)  # with lazy rows, `images` is added when a row is read
    for column in ("images", "messages"):
        if column not in columns:
            raise ValueError(f"the training data has no {column!r} column (columns: {columns})")
    if data.max_train_samples is not None:
        train = train.select(range(min(data.max_train_samples, len(train))))
    return train, held_out, names


def load_processor(model_args: ModelArguments, data_args: DataArguments) -> Spa3VLMProcessor:
    source = model_args.processor_name_or_path or model_args.model_name_or_path or model_args.config_name
    processor = Spa3VLMProcessor.from_pretrained(source)
    if data_args.dataset == "synthrooms_qa" and data_args.geometry_at_image_size:
        processor = processor_for_image_size(processor, data_args.image_height, data_args.image_width)
    return processor


def format_scores(results: dict) -> str:
    """One-line header + values in the paper's column order (x100)."""
    tasks = [t for t in TASK_ORDER if t in results["tasks"]]
    header = "overall  " + "  ".join(tasks)
    values = f"{100 * results['overall']:7.1f}  " + "  ".join(f"{100 * results['tasks'][t]:>{len(t)}.1f}" for t in tasks)
    return header + "\n" + values


def main(argv=None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, SFTConfig))
    # Defaults of the tiny CPU run; every one can be overridden on the command line or in a JSON file.
    parser.set_defaults(
        output_dir="runs/spa3-vlm-tiny-sft",
        max_steps=200,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=3e-3,
        weight_decay=0.01,
        warmup_steps=10,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=25,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps copies to a GPU
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        activation_checkpointing=False,
        max_length=None,  # the collator never truncates through image tokens; None = no truncation at all
        assistant_only_loss=True,  # informational: our collator always trains on the answers only
        seed=0,
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(argv[0])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    problems = flag_problems(model_args, data_args, training_args)
    if problems:
        parser.error("; ".join(problems))  # one line and exit status 2: a user mistake, not a crash
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # A recipe file sets every flag itself, pinning included: pinned memory only helps copies to an accelerator.
    training_args.dataloader_pin_memory = training_args.dataloader_pin_memory and torch.accelerator.is_available()
    if data_args.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(data_args.cpu_threads)
    set_seed(training_args.seed)

    processor = load_processor(model_args, data_args)
    model, notes = load_spa3_vlm(
        config_name=model_args.config_name,
        model_name_or_path=model_args.model_name_or_path,
        spa3r_name_or_path=model_args.spa3r_name_or_path,
        spatial_branch=model_args.spatial_branch,
    )
    if notes.get("spa3r_config_changes"):
        logger.info(
            "Spa3R encoder config taken from %s; changed fields: %s",
            model_args.spa3r_name_or_path,
            notes["spa3r_config_changes"],
        )
    if model_args.spatial_branch and model_args.spa3r_name_or_path is None and model_args.model_name_or_path is None:
        logger.warning("No --spa3r_name_or_path: the Spa3R encoder is randomly initialised (no pretrained spatial field)")
    counts = configure_trainable(
        model,
        tune_llm=model_args.tune_llm and not model_args.use_lora,
        tune_adapter=model_args.spatial_branch,
        tune_merger=model_args.tune_merger,
        tune_vision=model_args.tune_vision,
    )
    logger.info("trainable parameters per group (before LoRA): %s", counts)

    cache = data_args.cache_latents and model_args.spatial_branch and model.spa3r.backbone is not None
    # Under a distributed launch the main process renders / encodes first; the others then read its cache files.
    with training_args.main_process_first(desc="SFT data and Spa3R latent cache"):
        train_dataset, held_out, dataset_names = build_datasets(data_args, training_args.seed)
        if cache:
            from spa3_vlm.data.latent_cache import add_spatial_latents

            store = dict(cache_dir=data_args.data_cache_dir, num_workers=training_args.dataloader_num_workers)
            train_dataset = add_spatial_latents(train_dataset, model, processor, **store)
            if held_out is not None:
                held_out = add_spatial_latents(held_out, model, processor, **store)
    if cache:
        distinct = len(set(raw_column(train_dataset, "frames_key")))
        logger.info("Spa3R latents cached for %d distinct frame sets (%d records)", distinct, len(train_dataset))
    spatial_inputs = ("latents" if cache else "frames") if model_args.spatial_branch else "none"
    collator = Spa3VLMSFTCollator(processor, max_length=training_args.max_length, spatial_inputs=spatial_inputs)

    peft_config, lora_settings = None, None
    if model_args.use_lora:
        peft_config = lora_config(
            model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules,
            adapter=model_args.spatial_branch,
        )
        lora_settings = {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout}
    base_for_adapter = None
    if model_args.use_lora and not model_args.merge_lora and training_args.should_save:
        # A PEFT adapter needs its exact base model to load; a base built here (random config, or Qwen + Spa3R
        # + a new adapter) is saved next to it and named in adapter_config.json.
        base_for_adapter = os.path.join(training_args.output_dir, "base_model")
        model.save_pretrained(base_for_adapter)

    learning_rates = {
        group: lr
        for group, lr in (("adapter", model_args.adapter_lr), ("llm", model_args.llm_lr),
                          ("merger", model_args.merger_lr), ("vision", model_args.vision_lr))
        if lr is not None
    }
    card = dict(
        model_name=os.path.basename(os.path.normpath(training_args.output_dir)),
        base_model=model_args.model_name_or_path,
        spa3r_name_or_path=notes.get("spa3r_name_or_path") or getattr(model.config, "spa3r_name_or_path", None),
        datasets=dataset_names,
        spatial_branch=model_args.spatial_branch,
        lora=lora_settings,
        merged=model_args.merge_lora,
        license=model_args.license,
        license_name=model_args.license_name,
        license_link=model_args.license_link,
    )
    trainer = Spa3VLMSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
        learning_rates=learning_rates,
        model_card=card,
    )
    logger.info("optimizer groups: %s", trainer.group_lrs())
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    output_dir = training_args.output_dir
    final_model = trainer.model
    if model_args.use_lora and model_args.merge_lora:
        final_model = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            final_model.save_pretrained(output_dir)
            processor.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)  # full model or PEFT adapter, + processor files
        if base_for_adapter is not None and trainer.is_world_process_zero():
            config_path = os.path.join(output_dir, "adapter_config.json")
            with open(config_path) as handle:
                adapter_config = json.load(handle)
            adapter_config["base_model_name_or_path"] = os.path.abspath(base_for_adapter)
            with open(config_path, "w") as handle:
                json.dump(adapter_config, handle, indent=2, sort_keys=True)

    results = {}
    if held_out is not None and trainer.is_world_process_zero():
        results = evaluate_vsibench(
            final_model,
            processor,
            held_out,
            batch_size=training_args.per_device_eval_batch_size,
            max_new_tokens=data_args.eval_max_new_tokens,
            spatial_inputs=spatial_inputs,
        )
        scenes = data_args.num_eval_scenes
        print(f"\nHeld-out SynthRooms-QA ({results['num_records']} questions, {scenes} unseen scenes), x100:")
        print(format_scores(results))
        with open(os.path.join(output_dir, "vsibench_eval.json"), "w") as handle:
            json.dump(results, handle, indent=2)
        trainer.model_card_kwargs["results"] = {
            **results,
            "description": f"Greedy answers on {results['num_records']} questions about "
            f"{data_args.num_eval_scenes} held-out SynthRooms scenes.",
        }
    trainer.create_model_card()

    if training_args.push_to_hub:
        if model_args.use_lora and model_args.merge_lora:
            repo = training_args.hub_model_id or os.path.basename(os.path.normpath(output_dir))
            final_model.push_to_hub(repo, token=training_args.hub_token, private=training_args.hub_private_repo)
            processor.push_to_hub(repo, token=training_args.hub_token)
            sft_model_card(**trainer.model_card_kwargs, training=trainer.training_summary()).push_to_hub(
                repo, token=training_args.hub_token
            )
        else:
            trainer.push_to_hub()
    return {"results": results, "trainer": trainer, "model": final_model, "processor": processor, "notes": notes}


if __name__ == "__main__":
    main()
