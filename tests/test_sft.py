"""Spatial instruction tuning: answer-only labels (exact positions), record errors, trainable groups and per-group
learning rates, the adapter on TRL's fused-LM-head path, and train/sft_vlm.py end to end (full, LoRA merged,
LoRA adapter) with reloadable outputs."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction, Spa3VLMConfig, Spa3VLMForConditionalGeneration
from spa3_vlm.cards import sft_model_card as build_model_card
from spa3_vlm.configuration_spa3_vlm import encoder_only_spa3r_config
from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor
from spa3_vlm.training.sft_data import IGNORE_INDEX, Spa3VLMSFTCollator, processor_for_image_size, validate_sft_example
from spa3_vlm.training.sft_model import (
    ADAPTER_MODULES,
    configure_trainable,
    load_spa3_vlm,
    optimizer_param_groups,
    parameter_group,
    spa3r_config_differences,
)
from spa3_vlm.training.sft_trainer import Spa3VLMSFTTrainer
from sft_testing import frame, record

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "hub_configs" / "spa3-vlm-tiny"
sys.path.insert(0, str(REPO / "train"))
import sft_vlm  # noqa: E402


def tiny_model(seed=0, spatial_branch=True):
    torch.manual_seed(seed)
    return Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(TINY, spatial_branch=spatial_branch))


def randomize_adapter(model, seed=1):
    """The adaptor's last Linear starts at zero (identity adapter); give it weights so the adapter matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.geometry_adaptor[-1].parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


# ---------------------------------------------------------------------------------------------- labels


def test_labels_keep_exactly_the_answers(processor):
    """Two assistant turns: labels are the ids of 'answer<|im_end|>\\n' at exactly those positions, -100 elsewhere."""
    tok = processor.tokenizer
    example = record(answer="2", question_type=None)
    example["messages"] += [
        {"role": "user", "content": [{"type": "text", "text": "And the tables?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A. sofa"}]},
    ]
    batch = Spa3VLMSFTCollator(processor, spatial_inputs="frames")([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    # The same conversation rendered piece by piece: prompt (with the images), answer, user turn, answer.
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    prompt = f"{system}<|im_start|>user\n{image}{image}How many chair(s) are in this room?<|im_end|>\n<|im_start|>assistant\n"
    first = processor(text=[prompt], images=[example["images"]], add_special_tokens=False)["input_ids"][0]
    pieces = [first, tok("2<|im_end|>\n", add_special_tokens=False)["input_ids"],
              tok("<|im_start|>user\nAnd the tables?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"],
              tok("A. sofa<|im_end|>\n", add_special_tokens=False)["input_ids"]]  # fmt: skip
    assert ids == [t for piece in pieces for t in piece]
    expected = [IGNORE_INDEX] * len(pieces[0]) + pieces[1] + [IGNORE_INDEX] * len(pieces[2]) + pieces[3]
    assert labels == expected
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == "2<|im_end|>\nA. sofa<|im_end|>\n"


def test_padding_is_masked_and_geometry_or_latents_pass_through(processor):
    short, long = record("a", answer="3", num_images=1), record("b", answer="12", num_images=3, seed=5)
    batch = Spa3VLMSFTCollator(processor, spatial_inputs="frames")([short, long])
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert batch["labels"][0, lengths[0]:].eq(IGNORE_INDEX).all() and lengths[0] < lengths[1]
    decoded = [processor.tokenizer.decode(ids[lab != IGNORE_INDEX]) for ids, lab in zip(batch["input_ids"], batch["labels"])]
    assert decoded == ["3<|im_end|>\n", "12<|im_end|>\n"]
    assert [tuple(g.shape) for g in batch["geometry_pixel_values"]] == [(1, 3, 56, 70), (3, 3, 56, 70)]
    assert "spatial_latents" not in batch

    plain = Spa3VLMSFTCollator(processor, spatial_inputs="none")([short, long])
    assert "geometry_pixel_values" not in plain and "spatial_latents" not in plain
    assert torch.equal(plain["labels"], batch["labels"])

    latents = [np.full((16, 64), i, dtype=np.float32) for i in range(2)]
    cached = Spa3VLMSFTCollator(processor)([{**short, "spatial_latents": latents[0]}, {**long, "spatial_latents": latents[1]}])
    assert "geometry_pixel_values" not in cached
    assert cached["spatial_latents"].shape == (2, 16, 64) and torch.equal(cached["spatial_latents"][1], torch.ones(16, 64))
    with pytest.raises(ValueError, match=r"record 'b': no cached spatial_latents while other records have them"):
        Spa3VLMSFTCollator(processor)([{**short, "spatial_latents": latents[0]}, long])


# ---------------------------------------------------------------------------------------------- errors


def test_multiple_choice_answers_read_options_from_the_question(processor):
    question = "Which is closest to the bed?\nA. sofa\nB. lamp\nC. table\nAnswer with the option's letter."
    validate_sft_example(record(question_type="object_rel_distance", answer="C.", question=question))
    with pytest.raises(ValueError, match=r"'D' is not one of the option letters \['A', 'B', 'C'\]"):
        validate_sft_example(record(question_type="object_rel_distance", answer="D", question=question))
    validate_sft_example(record(question_type="free_form", answer="anything goes"))  # unknown types: not checked


def test_collator_needs_generation_markers(processor):
    stripped = Spa3VLMProcessor(
        image_processor=processor.image_processor, tokenizer=processor.tokenizer,
        chat_template="{% for m in messages %}{{ m['role'] }}{% endfor %}",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"no \{% generation %\} block"):
        Spa3VLMSFTCollator(stripped)
    with pytest.raises(ValueError, match=r"spatial_inputs must be one of"):
        Spa3VLMSFTCollator(processor, spatial_inputs="maybe")


# ---------------------------------------------------------------------------------------------- groups


def test_parameter_groups_and_reference_trainable_set():
    model = tiny_model()
    names = dict(model.named_parameters())
    assert {parameter_group(n) for n in names} == {"adapter", "llm", "merger", "vision", "spa3r"}
    assert parameter_group("base_model.model.geometry_gate.modules_to_save.default.0.weight") == "adapter"
    assert parameter_group("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") == "llm"
    assert parameter_group("module.model.visual.merger.mlp.0.weight") == "merger"
    with pytest.raises(ValueError, match=r"parameter 'extra.weight' belongs to no known Spa3-VLM group"):
        parameter_group("extra.weight")

    counts = configure_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names if n.split(".")[0] in ADAPTER_MODULES or n.startswith("model.language_model.")}
    assert counts["spa3r"] == counts["vision"] == counts["merger"] == 0
    assert counts["adapter"] == sum(p.numel() for n, p in names.items() if n.split(".")[0] in ADAPTER_MODULES)

    decay = [n for n in trainable if not n.endswith("bias") and "norm" not in n and not n.startswith("ln.")]
    groups = optimizer_param_groups(model, {"adapter": 3e-3, "llm": 1e-4}, 0.01, decay)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"adapter", "adapter/no_decay", "llm", "llm/no_decay"}
    assert by_name["adapter"]["lr"] == 3e-3 and by_name["llm/no_decay"]["lr"] == 1e-4
    assert by_name["llm/no_decay"]["weight_decay"] == 0.0 and by_name["llm"]["weight_decay"] == 0.01
    adapter_ids = {id(p) for n, p in names.items() if n.split(".")[0] in ADAPTER_MODULES}
    assert {id(p) for g in ("adapter", "adapter/no_decay") for p in by_name[g]["params"]} == adapter_ids

    with pytest.raises(ValueError, match=r"group 'llm', which has no learning rate"):
        optimizer_param_groups(model, {"adapter": 1e-3}, 0.0, decay)
    model.spa3r.projection.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"Spa3R must stay frozen, but spa3r.projection.weight requires grad"):
        optimizer_param_groups(model, {"adapter": 1e-3, "llm": 1e-3}, 0.0, decay)


def sft_config(tmp_path, **overrides):
    from trl import SFTConfig

    values = dict(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3, report_to="none",
        save_strategy="no", dataloader_num_workers=0, bf16=False, activation_checkpointing=False, max_length=None,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return SFTConfig(**values)


def test_fused_loss_uses_the_adapter_and_only_tuned_parts_get_grads(processor, tmp_path):
    """TRL's fused LM head bypasses the model's forward; the trainer routes it through the adapter: same loss as
    the model's own forward, gradients in the adapter and the LLM, none in Spa3R or the vision tower."""
    from datasets import Dataset

    model = tiny_model()
    randomize_adapter(model)
    configure_trainable(model)
    rows = [record(f"r{i}", answer=str(i + 2), seed=3 * i) for i in range(2)]
    trainer = Spa3VLMSFTTrainer(
        model=model, args=sft_config(tmp_path), train_dataset=Dataset.from_list(rows), processing_class=processor,
        data_collator=Spa3VLMSFTCollator(processor), learning_rates={"adapter": 5e-3},
    )  # fmt: skip
    batch = Spa3VLMSFTCollator(processor)(rows)
    model.train()
    with torch.no_grad():
        expected = model(**batch).loss
        without_adapter = model(**{k: v for k, v in batch.items() if k != "geometry_pixel_values"},
                                spatial_latents=torch.zeros(2, 16, 64)).loss  # fmt: skip
    trainer.fused_lm_head = False  # the model's own loss path (full logits)
    assert abs(float(trainer.compute_loss(model, dict(batch)).detach()) - float(expected)) < 1e-6
    trainer.fused_lm_head = True
    loss = trainer.compute_loss(model, dict(batch))
    assert abs(float(loss.detach()) - float(expected)) < 1e-6 and abs(float(without_adapter) - float(expected)) > 1e-4
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in grads if parameter_group(n) in ("spa3r", "vision", "merger"))
    assert grads["geometry_projector.0.weight"].abs().sum() > 0 and grads["geom_cross_attention.q_proj.weight"].abs().sum() > 0
    assert grads["model.language_model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0

    trainer.create_optimizer()
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["adapter"] == lrs["adapter/no_decay"] == 5e-3 and lrs["llm"] == lrs["llm/no_decay"] == 1e-3


def test_fused_lm_head_contract_fails_loudly_when_the_internals_change(processor, tmp_path):
    """The adapter routing relies on TRL's patched forward (`fused_lm_head`) and the backbone's `mm_encoder_outputs`:
    the day either is gone, building the trainer says so instead of training without the adapter."""
    import types

    from datasets import Dataset
    from spa3_vlm.training.sft_trainer import check_fused_lm_head_contract

    model = tiny_model()
    with pytest.raises(RuntimeError, match=r"no longer patches model.forward with a `fused_lm_head` keyword"):
        check_fused_lm_head_contract(model)  # TRL has not patched this model
    rows = [record("r0", answer="2", seed=0)]
    trainer = Spa3VLMSFTTrainer(
        model=model, args=sft_config(tmp_path), train_dataset=Dataset.from_list(rows), processing_class=processor,
        data_collator=Spa3VLMSFTCollator(processor),
    )  # fmt: skip
    check_fused_lm_head_contract(trainer.model)  # today's TRL and transformers keep the contract
    inner = trainer.model.base_model
    inner.forward = types.MethodType(lambda self, input_ids=None, **kwargs: None, inner)
    with pytest.raises(RuntimeError, match=r"no longer takes `mm_encoder_outputs`"):
        check_fused_lm_head_contract(trainer.model)


# ---------------------------------------------------------------------------------------------- models


def test_pretrained_spa3r_loads_into_the_tiny_vlm(spa3r_folder):
    model, notes = load_spa3_vlm(str(TINY), spa3r_name_or_path=str(spa3r_folder))
    source = Spa3RForFieldPrediction.from_pretrained(spa3r_folder).spa3r.state_dict()
    loaded = model.spa3r.state_dict()
    assert set(loaded) <= set(source) and all(torch.equal(loaded[k], source[k]) for k in loaded)
    # The VLM runs exactly the checkpoint's encoder path (its config, reduced to the encoder).
    expected = encoder_only_spa3r_config(Spa3RConfig.from_pretrained(spa3r_folder))
    assert spa3r_config_differences(model.config.spa3r_config, expected) == {}
    assert "pose_source" in notes["spa3r_config_changes"]  # the tiny VLM's own config reads cameras from VGGT
    frames = processor_for_image_size(Spa3VLMProcessor.from_pretrained(TINY), 84, 112)(images=[[frame(1, (112, 84))] * 2], return_tensors="pt")
    queries = Spa3RConfig.from_pretrained(spa3r_folder).num_queries
    assert model.compute_spatial_latents(frames["geometry_pixel_values"]).shape == (1, queries, 64)  # the encoder runs
    plain, notes = load_spa3_vlm(str(TINY), spa3r_name_or_path=str(spa3r_folder), spatial_branch=False)
    assert plain.spa3r is None and notes["spa3r_name_or_path"] is None
    with pytest.raises(ValueError, match="give config_name"):
        load_spa3_vlm()


def test_qwen_checkpoint_becomes_a_spa3_vlm_with_its_weights(spa3r_folder, tmp_path):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tiny = Spa3VLMConfig.from_pretrained(TINY)
    torch.manual_seed(2)
    qwen = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=tiny.text_config.to_dict(), vision_config=tiny.vision_config.to_dict(), tie_word_embeddings=True,
        image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4,
    ))  # fmt: skip
    qwen.save_pretrained(tmp_path / "qwen")
    model, notes = load_spa3_vlm(model_name_or_path=str(tmp_path / "qwen"), spa3r_name_or_path=str(spa3r_folder))
    expected = {k.replace("model.language_model.", "").replace("model.visual.", "visual."): v for k, v in qwen.state_dict().items()}
    for name, value in model.state_dict().items():
        key = name.replace("model.language_model.", "").replace("model.visual.", "visual.")
        if parameter_group(name) not in ("spa3r", "adapter"):
            assert torch.equal(value, expected[key]), name
    assert torch.count_nonzero(model.geometry_adaptor[-1].weight) == 0  # identity adapter
    assert model.config.spa3r_name_or_path == str(spa3r_folder) and notes["base_model"] == str(tmp_path / "qwen")
    images = [[frame(k, (112, 84)) for k in range(2)]]
    inputs = processor_for_image_size(Spa3VLMProcessor.from_pretrained(TINY), 84, 112)(
        text=["<|vision_start|><|image_pad|><|vision_end|>" * 2 + "how far?"], images=images, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.allclose(model.eval()(**inputs).logits, qwen.eval()(**{k: v for k, v in inputs.items() if k != "geometry_pixel_values"}).logits, atol=1e-5)


# ---------------------------------------------------------------------------------------------- sft_vlm.py


def run_main(tmp_path, name, *extra):
    out = tmp_path / name
    args = [
        "--output_dir", str(out), "--num_train_scenes", "2", "--frames_per_scene", "4", "--questions_per_scene", "4",
        "--num_eval_scenes", "0", "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--disable_tqdm", "true", "--data_cache_dir", str(tmp_path / "data"), *extra,
    ]  # fmt: skip
    return out, sft_vlm.main(args)


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def eval_batch(processor):
    sized = processor_for_image_size(processor, 84, 112)
    return sized, Spa3VLMSFTCollator(sized, spatial_inputs="frames")([record("e", num_images=2, seed=40)])


def test_sft_main_full_finetuning_saves_a_loadable_model(tmp_path, spa3r_folder, eval_batch):
    out, run = run_main(
        tmp_path, "full", "--spa3r_name_or_path", str(spa3r_folder), "--adapter_lr", "0.004", "--llm_lr", "0.0005",
        "--num_eval_scenes", "1", "--eval_max_new_tokens", "3",
    )  # fmt: skip
    trainer = run["trainer"]
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"adapter": 0.004, "adapter/no_decay": 0.004, "llm": 0.0005, "llm/no_decay": 0.0005}
    assert trainer.state.global_step == 2
    processor, batch = eval_batch
    loaded = Spa3VLMForConditionalGeneration.from_pretrained(out)
    assert torch.allclose(logits(loaded, batch), logits(run["model"], batch), atol=1e-6)
    assert loaded.config.spa3r_name_or_path == str(spa3r_folder)
    source = Spa3RForFieldPrediction.from_pretrained(spa3r_folder).spa3r.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in loaded.spa3r.state_dict().items())  # frozen: unchanged
    reloaded = Spa3VLMProcessor.from_pretrained(out)
    assert reloaded.geometry_image_processor.target_width == 112  # the processor at SynthRooms' frame size

    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and "spa3-vlm" in card.data.tags
    assert card.data.license == "unknown"  # the fixture's Spa3R folder has no card recording a licence (test_cards.py)
    assert str(spa3r_folder) in card.text and "| overall |" in card.text and "adapter 0.004" in card.text
    scores = json.loads((out / "vsibench_eval.json").read_text())
    assert scores["num_records"] == len(scores["predictions"]) > 0 and 0.0 <= scores["overall"] <= 1.0


def test_sft_main_lora_merged_and_adapter(tmp_path, eval_batch):
    from peft import PeftModel

    processor, batch = eval_batch
    out, run = run_main(tmp_path, "merged", "--use_lora", "--merge_lora", "--llm_lr", "0.01", "--adapter_lr", "0.01")
    assert not (out / "adapter_config.json").exists()
    merged = Spa3VLMForConditionalGeneration.from_pretrained(out)
    assert torch.allclose(logits(merged, batch), logits(run["model"], batch), atol=1e-6)
    initial = tiny_model(seed=0)  # main() seeds 0 before building: the same initial weights
    assert torch.allclose(merged.model.visual.patch_embed.proj.weight, initial.model.visual.patch_embed.proj.weight)
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.state_dict()[q_proj], initial.state_dict()[q_proj])  # LoRA merged in
    assert not torch.equal(merged.geometry_adaptor[-1].weight, torch.zeros_like(merged.geometry_adaptor[-1].weight))

    out, run = run_main(tmp_path, "adapter", "--use_lora", "--llm_lr", "0.01", "--adapter_lr", "0.01", "--lora_r", "4")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["modules_to_save"]) == sorted(ADAPTER_MODULES)
    assert Path(config["base_model_name_or_path"]) == (out / "base_model").resolve()
    base = Spa3VLMForConditionalGeneration.from_pretrained(config["base_model_name_or_path"])
    with warnings.catch_warnings():  # PEFT reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        adapter = PeftModel.from_pretrained(base, out)
    assert torch.allclose(logits(adapter, batch), logits(run["model"], batch), atol=1e-6)
    groups = {g["name"] for g in run["trainer"].optimizer.param_groups}
    assert groups <= {"adapter", "adapter/no_decay", "llm", "llm/no_decay"} and "llm" in groups and "adapter" in groups
    assert "library_name: peft" in (out / "README.md").read_text()


def test_model_card_lists_results_in_paper_order():
    results = {"overall": 0.5, "tasks": {"route_planning": 0.25, "object_counting": 0.75},
               "task_counts": {"route_planning": 4, "object_counting": 8}}  # fmt: skip
    card = build_model_card(model_name="demo", base_model="Qwen/Qwen2.5-VL-3B-Instruct", results=results)
    assert card.data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct" and card.data.library_name == "transformers"
    assert "| overall | object_counting | route_planning |" in card.text
    assert "| 50.0 | 75.0 (n=8) | 25.0 (n=4) |" in card.text


def test_the_reference_sft_recipe_parses_and_trains_on_tiny_data(tmp_path, spa3r_folder):
    """hub_configs/spa3-vlm-3b/sft_reference.json is the reference's SFT run (Qwen2.5-VL-3B, VSI-590K, AdamW 1e-5, wd
    0.01, 3% warm-up, cosine, batch 1 x 8 accumulation, one epoch, bf16, activation checkpointing, ZeRO-2, LLM and
    adapter trained, vision tower and merger frozen); with its model, data and GPU settings pointed at tiny local
    ones, the same file trains a step."""
    repo = Path(__file__).resolve().parents[1]
    recipe = json.loads((repo / "hub_configs" / "spa3-vlm-3b" / "sft_reference.json").read_text())
    from transformers import HfArgumentParser
    from trl import SFTConfig

    model_args, data_args, args = HfArgumentParser((sft_vlm.ModelArguments, sft_vlm.DataArguments, SFTConfig)).parse_dict(
        {**recipe, "bf16": False, "deepspeed": None}
    )
    assert (args.learning_rate, args.weight_decay, args.warmup_steps, args.lr_scheduler_type.value) == (1e-5, 0.01, 0.03, "cosine")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.num_train_epochs) == (1, 8, 1)
    assert args.max_grad_norm == 1.0 and args.activation_checkpointing and args.max_length == 16384
    assert recipe["bf16"] is True and json.loads((repo / recipe["deepspeed"]).read_text())["zero_optimization"]["stage"] == 2
    assert (model_args.model_name_or_path, data_args.dataset) == ("Qwen/Qwen2.5-VL-3B-Instruct", "vsi590k")
    assert model_args.tune_llm and not model_args.tune_vision and not model_args.tune_merger and data_args.num_frames is None

    tiny = {
        **recipe, "model_name_or_path": None, "config_name": str(repo / "hub_configs" / "spa3-vlm-tiny"),
        "spa3r_name_or_path": str(spa3r_folder), "dataset": "synthrooms_qa", "annotation_path": None, "media_root": None,
        "num_train_scenes": 2, "frames_per_scene": 4, "questions_per_scene": 4, "data_cache_dir": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "run"), "bf16": False, "deepspeed": None, "max_steps": 1,
        "gradient_accumulation_steps": 1, "dataloader_num_workers": 0, "disable_tqdm": True,
    }  # fmt: skip
    (tmp_path / "recipe.json").write_text(json.dumps(tiny))
    run = sft_vlm.main([str(tmp_path / "recipe.json")])
    assert run["trainer"].state.global_step == 1 and run["trainer"].args.activation_checkpointing
