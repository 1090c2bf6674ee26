"""Model and dataset cards: every writer (PSFM trainer, conversion command, SFT trainer, teacher export, dataset
export) leaves a README.md whose metadata carries the licence of what the folder bundles (the most restrictive one,
module doc of spa3_vlm.cards), its Hub base models and a Licences section; unknown parts are reported as unknown."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard

from spa3_vlm import Spa3RConfig, VGGTConfig, VGGTModel
from spa3_vlm.cards import COMPONENTS_KEY, data_component, folder_licence, psfm_model_card, resolve
from spa3_vlm.cards import sft_model_card as build_model_card
from psfm_testing import psfm_trainer

REPO = Path(__file__).resolve().parents[1]
SPA3R_BASE = REPO / "hub_configs" / "spa3r-base"
SPA3R_TINY = REPO / "hub_configs" / "spa3r-tiny-synthrooms"


def components(card) -> list[dict]:
    return card.data.to_dict()[COMPONENTS_KEY]


def by_source(card) -> dict[str, dict]:
    return {c.get("source"): c for c in components(card)}


def spa3r_folder_with_card(folder: Path, config_dir: Path, **card_kwargs) -> Path:
    """A Spa3R folder as train/pretrain_psfm.py leaves it, minus the weights (the card needs only the config)."""
    config = Spa3RConfig.from_pretrained(config_dir)
    config.save_pretrained(folder)
    psfm_model_card(config, root=str(REPO), **card_kwargs).save(folder / "README.md")
    return folder


# ---------------------------------------------------------------------------------------------- the rule


def test_the_rule_takes_the_most_restrictive_licence_and_reports_unknown_parts(tmp_path):
    vggt = resolve("facebook/VGGT-1B", "backbone")
    qwen3 = resolve("Qwen/Qwen3-VL-4B-Instruct", "base")
    mit = resolve(str(REPO / "hub_configs" / "vggt-tiny-synthrooms"), "teacher")  # its own card: MIT
    assert [c.license for c in vggt + qwen3 + mit] == ["cc-by-nc-4.0", "apache-2.0", "mit"]
    assert folder_licence(qwen3 + mit).license == "apache-2.0"  # permissive only: the strictest, notices kept
    assert folder_licence(mit).license == "mit" and folder_licence([]).license == "mit"  # nothing third-party
    single = folder_licence(qwen3 + vggt + mit)
    assert (single.license, single.license_name, single.commercial) == ("cc-by-nc-4.0", None, "no")
    dino = resolve("facebook/dinov3-vitl16-pretrain-lvd1689m", "teacher")[0]
    assert (dino.license, dino.license_name) == ("other", "dinov3-license")
    assert dino.license_link == "https://huggingface.co/facebook/dinov3-vitl16-pretrain-lvd1689m"

    unlisted = resolve("someone/Spa3R-large", "encoder")[0]  # a Hub id nobody recorded
    assert unlisted.license == "unknown" and unlisted.hub and "not in spa3_vlm.cards.KNOWN_LICENCES" in unlisted.note
    released = resolve("hustvl/Spa3-VLM", "checkpoint")[0]
    assert released.license == "unknown" and "not recorded" in released.note
    assert folder_licence([*vggt, unlisted]).license == "unknown"
    assert folder_licence([*qwen3, data_component("scannet")]).license == "apache-2.0"  # data is outside the rule

    snapshot = tmp_path / "models--Qwen--Qwen2.5-VL-3B-Instruct" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)  # a Hub cache download names its repository
    [qwen] = resolve(str(snapshot), "base")
    assert (qwen.source, qwen.hub, qwen.license_name, qwen.commercial) == ("Qwen/Qwen2.5-VL-3B-Instruct", True, "qwen-research", "no")


def test_model_files_do_not_import_the_cards_module():
    """Saved folders ship configuration_* / modeling_* / processing_* files: they must not need spa3_vlm.cards."""
    shipped = [p for p in (REPO / "src" / "spa3_vlm").glob("*.py") if p.name.startswith(("configuration_", "modeling_", "processing_"))]
    assert shipped and not [p.name for p in shipped if re.search(r"\bcards\b", p.read_text())]


# ---------------------------------------------------------------------------------------------- PSFM


def test_the_psfm_trainer_writes_a_card_with_its_teachers_licences(tmp_path):
    trainer = psfm_trainer(tmp_path, max_steps=1)  # the tiny SynthRooms config: the shipped MIT geometry teacher
    trainer.model_card_kwargs = {"datasets": ["SynthRooms (3 scenes)"], "root": str(REPO), "results": "geo l1 0.5"}
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "mit" and card.data.base_model is None
    assert card.data.pipeline_tag == "image-feature-extraction" and "psfm" in card.data.tags
    teacher = by_source(card)["hub_configs/vggt-tiny-synthrooms"]
    assert teacher["license"] == "mit" and teacher["bundled"] and teacher["part"] == "geometry_backbone"
    assert by_source(card)["SynthRooms (3 scenes)"]["bundled"] is False
    for section in ("## Usage", "## Training", "## Held-out field scores", "## Licences"):
        assert section in card.text
    assert "| optimizer | adamw_torch" in card.text

    trainer.create_model_card(license="apache-2.0")  # as push_to_hub(license=...) passes it
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "apache-2.0" and "Licence chosen by the author of this folder: **`apache-2.0`**" in card.text


def test_a_psfm_card_on_vggt_1b_and_dinov3_bundles_both():
    config = Spa3RConfig.from_pretrained(SPA3R_BASE)
    card = psfm_model_card(config, datasets=["scannet", "scannetpp"])
    assert (card.data.license, card.data.license_name) == ("other", "cc-by-nc-4.0-and-dinov3-license")
    assert card.data.base_model == ["facebook/VGGT-1B", "facebook/dinov3-vitl16-pretrain-lvd1689m"]
    assert "non-commercial" in card.data.tags and "commercial use: **no**" in card.text
    scannet = by_source(card)["scannet"]
    assert scannet["license"] == "unknown" and scannet["bundled"] is False  # listed, outside the rule
    assert "not re-read online" in card.text

    untaught = psfm_model_card(config, teachers_loaded=False)  # random teachers: nothing third-party inside
    assert untaught.data.license == "mit" and untaught.data.base_model is None


# ---------------------------------------------------------------------------------------------- SFT


def test_sft_on_qwen25_vl_3b_and_a_vggt_1b_spa3r_is_non_commercial_with_both_listed(tmp_path):
    spa3r = spa3r_folder_with_card(tmp_path / "spa3r", SPA3R_BASE, datasets=["scannet"])
    card = build_model_card(model_name="demo", base_model="Qwen/Qwen2.5-VL-3B-Instruct", spa3r_name_or_path=str(spa3r),
                            datasets=["nyu-visionx/VSI-590K"])  # fmt: skip
    card = ModelCard(card.content)  # parsed back as ModelCard.load reads it
    assert (card.data.license, card.data.license_name) == ("other", "cc-by-nc-4.0-and-qwen-research")
    assert card.data.license_link == "README.md#licences" and "non-commercial" in card.data.tags
    assert card.data.base_model == ["Qwen/Qwen2.5-VL-3B-Instruct", "facebook/VGGT-1B"]
    assert card.data.base_model_relation == "finetune"
    listed = by_source(card)
    assert listed["Qwen/Qwen2.5-VL-3B-Instruct"]["license_name"] == "qwen-research"
    assert listed["facebook/VGGT-1B"]["bundled"] and listed["facebook/VGGT-1B"]["role"].startswith("Spa3R encoder")
    # The VLM keeps only Spa3R's encoder path: DINOv3 (PSFM targets) and the data are listed as used, not bundled.
    assert not listed["facebook/dinov3-vitl16-pretrain-lvd1689m"]["bundled"]
    assert not listed["nyu-visionx/VSI-590K"]["bundled"] and listed["nyu-visionx/VSI-590K"]["license"] == "unknown"
    assert "## Licences" in card.text and "Used to make it, not in this folder" in card.text


def test_sft_on_qwen3_vl_4b_and_the_mit_tiny_teachers_is_apache(tmp_path):
    spa3r = spa3r_folder_with_card(tmp_path / "spa3r", SPA3R_TINY, datasets=["SynthRooms (tiny)"])
    assert ModelCard.load(spa3r / "README.md").data.license == "mit"
    card = build_model_card(base_model="Qwen/Qwen3-VL-4B-Instruct", spa3r_name_or_path=str(spa3r),
                            datasets=["SynthRooms-QA (procedural rooms)"], vlm_family="Qwen3-VL")  # fmt: skip
    assert card.data.license == "apache-2.0" and card.data.license_name is None
    assert card.data.base_model == "Qwen/Qwen3-VL-4B-Instruct" and "non-commercial" not in card.data.tags
    teachers = {c["source"] for c in components(card) if c["license"] == "mit" and c["bundled"]}
    assert teachers == {"hub_configs/vggt-tiny-synthrooms"}  # the MIT backbone; the sem teacher is not in the VLM
    assert "Qwen3-VL whose visual tokens" in card.text


def test_sft_reports_unknown_parts_and_takes_an_explicit_licence(tmp_path):
    bare = tmp_path / "spa3r"  # saved without a card: its licence is not recorded anywhere
    Spa3RConfig.from_pretrained(SPA3R_BASE).save_pretrained(bare)
    card = build_model_card(base_model="Qwen/Qwen2.5-VL-32B-Instruct", spa3r_name_or_path=str(bare))
    assert card.data.license == "unknown"
    listed = by_source(card)
    assert listed["Qwen/Qwen2.5-VL-32B-Instruct"]["license"] == "unknown"
    assert listed[str(bare)]["license"] == "unknown" and listed[str(bare)]["note"] == "a local folder without a model card"
    assert listed["facebook/VGGT-1B"]["bundled"]  # the backbone its config names is still listed
    assert "Why: the licence of `Qwen/Qwen2.5-VL-32B-Instruct`, `" in card.text

    chosen = build_model_card(base_model="Qwen/Qwen2.5-VL-32B-Instruct", license="other", license_name="my-terms",
                              license_link="LICENSE")  # fmt: skip
    assert (chosen.data.license, chosen.data.license_name, chosen.data.license_link) == ("other", "my-terms", "LICENSE")
    assert "Worked out from what it bundles it would be `unknown`" in chosen.text

    random = build_model_card()  # a model built from a config: nothing third-party
    assert random.data.license == "mit" and random.data.base_model is None and "Nothing third-party" in random.text


def test_the_sft_trainer_writes_the_card(tmp_path, processor):
    from datasets import Dataset
    from trl import SFTConfig

    from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration
    from spa3_vlm.training.sft_data import Spa3VLMSFTCollator
    from spa3_vlm.training.sft_trainer import Spa3VLMSFTTrainer
    from sft_testing import record

    spa3r = spa3r_folder_with_card(tmp_path / "spa3r", SPA3R_BASE)
    torch.manual_seed(0)
    model = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(REPO / "hub_configs" / "spa3-vlm-tiny"))
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, report_to="none", save_strategy="no", bf16=False,
                     activation_checkpointing=False, max_length=None, disable_tqdm=True, dataloader_num_workers=0)  # fmt: skip
    trainer = Spa3VLMSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list([record()]), processing_class=processor,
        data_collator=Spa3VLMSFTCollator(processor),
        model_card={"base_model": "Qwen/Qwen2.5-VL-3B-Instruct", "spa3r_name_or_path": str(spa3r)},
    )  # fmt: skip
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert (card.data.license, card.data.license_name) == ("other", "cc-by-nc-4.0-and-qwen-research")
    assert card.data.base_model == ["Qwen/Qwen2.5-VL-3B-Instruct", "facebook/VGGT-1B"]
    assert "Qwen2.5-VL whose visual tokens" in card.text and "## Training" in card.text


# ---------------------------------------------------------------------------------------------- conversion


def test_the_conversion_command_writes_a_card(tmp_path, fixtures_dir):
    from safetensors.torch import load_file

    from spa3_vlm.conversion import vggt_config_from_reference
    from spa3_vlm.conversion.__main__ import main as conversion_main
    from spa3_vlm.conversion.vlm import spa3r_encoder_config_from_reference

    vggt_args = json.loads((fixtures_dir / "vggt_tiny" / "config.json").read_text())
    vggt_args = {k: vggt_args[k] for k in ("vggt", "aggregator", "camera_head", "depth_head", "point_head")}
    vggt = load_file(fixtures_dir / "vggt_tiny" / "model.safetensors")
    vggt = {k: v for k, v in vggt.items() if not (".global_blocks." in k and k.endswith(("q_norm.bias", "k_norm.bias")))}
    state = {**load_file(fixtures_dir / "spa3r_tiny" / "model.safetensors"), **vggt}
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}}, tmp_path / "spa3r.ckpt")
    config = spa3r_encoder_config_from_reference(state, vggt_config=vggt_config_from_reference(global_qk_norm="rmsnorm", **vggt_args))
    config.to_json_file(tmp_path / "spa3r.json")

    base = ["--spa3r", str(tmp_path / "spa3r.ckpt"), "--spa3r-config", str(tmp_path / "spa3r.json")]
    assert conversion_main([*base, "--out", str(tmp_path / "encoder")]) == 0
    card = ModelCard.load(tmp_path / "encoder" / "README.md")
    assert card.data.license == "unknown" and card.data.base_model is None  # a local file; a backbone nobody named
    assert by_source(card)[str(tmp_path / "spa3r.ckpt")]["note"] == "a local file: nothing here records its licence"
    assert "frozen VGGT backbone: origin not named" in card.text and "## Conversion report" in card.text
    assert f"python -m spa3_vlm.conversion --spa3r {tmp_path / 'spa3r.ckpt'}" in card.text

    named = json.loads((tmp_path / "spa3r.json").read_text()) | {"vggt_name_or_path": "facebook/VGGT-1B"}
    (tmp_path / "named.json").write_text(json.dumps(named))
    args = ["--spa3r", str(tmp_path / "spa3r.ckpt"), "--spa3r-config", str(tmp_path / "named.json"),
            "--source-id", "someone/spa3r", "--license", "cc-by-nc-4.0", "--out", str(tmp_path / "named")]  # fmt: skip
    assert conversion_main(args) == 0
    card = ModelCard.load(tmp_path / "named" / "README.md")
    assert card.data.license == "cc-by-nc-4.0" and card.data.base_model == ["someone/spa3r", "facebook/VGGT-1B"]
    assert "it would be `unknown`" in card.text and by_source(card)["someone/spa3r"]["license"] == "unknown"


def test_a_qwen_plus_spa3r_conversion_card_bundles_both():
    from spa3_vlm.cards import conversion_model_card

    card = conversion_model_card("qwen_spa3r", "spa3r.ckpt", source_id="hustvl/Spa3-VLM", qwen="Qwen/Qwen3-VL-4B-Instruct",
                                 backbone="facebook/VGGT-1B")  # fmt: skip
    assert card.data.license == "unknown"  # the released weights' licence is not recorded
    assert card.data.base_model == ["hustvl/Spa3-VLM", "Qwen/Qwen3-VL-4B-Instruct", "facebook/VGGT-1B"]
    assert card.data.pipeline_tag == "image-text-to-text"
    released = conversion_model_card("spa3_vlm", "Spa3-VLM/", source_id="hustvl/Spa3-VLM", backbone="facebook/VGGT-1B")
    assert "the Qwen VLM it was tuned from" in released.text  # not named: listed as unknown
    named = conversion_model_card("spa3_vlm", "Spa3-VLM/", base_models=["Qwen/Qwen2.5-VL-3B-Instruct"],
                                  backbone="facebook/VGGT-1B", license="other", license_name="qwen-research")  # fmt: skip
    assert named.data.base_model == ["facebook/VGGT-1B", "Qwen/Qwen2.5-VL-3B-Instruct"]  # a local folder is no Hub base
    assert (named.data.license, named.data.license_name) == ("other", "qwen-research")
    with pytest.raises(ValueError, match="kind must be one of"):
        conversion_model_card("unknown", "x")


# ---------------------------------------------------------------------------------------------- teachers


def test_a_teacher_card_is_mit_and_stands_for_itself(tmp_path):
    from spa3_vlm.training.teacher_export import save_teacher

    torch.manual_seed(0)
    teacher = VGGTModel(VGGTConfig.from_pretrained(REPO / "hub_configs" / "vggt-tiny-synthrooms"))
    save_teacher(teacher, str(tmp_path / "t"), "geometry", "| teacher |", {}, "python train/x.py", 3)
    card = ModelCard.load(tmp_path / "t" / "README.md")
    assert card.data.license == "mit" and "## Licences" in card.text
    [component] = resolve(str(tmp_path / "t"), "backbone")  # bundles nothing third-party: it stands for itself
    assert (component.license, component.note) == ("mit", "as its own model card says")


# ---------------------------------------------------------------------------------------------- datasets


def test_the_synthrooms_qa_export_round_trips(tmp_path):
    from datasets import load_dataset

    from spa3_vlm.data.export import export_dataset, main

    folder = tmp_path / "qa"
    built = export_dataset("synthrooms_qa", folder, {"train": 2, "test": 1}, frames_per_scene=4, image_size=(56, 70),
                           questions_per_scene=6, max_shard_bytes=50_000, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert len(list((folder / "data").glob("train-*-of-*.parquet"))) > 1  # small shards: several per split
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.pretty_name == "SynthRooms-QA"
    assert card.data.task_categories == ["visual-question-answering", "image-text-to-text"]
    assert card.data.size_categories == ["n<1K"]
    assert card.data.configs[0]["data_files"] == [{"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]
    for section in ("## How it was made", "## Columns", "## Question types", "## Licence"):
        assert section in card.text
    assert "python -m spa3_vlm.data.export synthrooms_qa --output_dir qa --scenes train=2 test=1" in card.text
    assert "| `object_size_estimation` |" in card.text

    loaded = load_dataset(str(folder), cache_dir=str(tmp_path / "loaded"))
    assert set(loaded) == {"train", "test"}
    for split, dataset in built.items():
        assert loaded[split].features == dataset.features
        text = [c for c in dataset.column_names if c != "images"]
        assert loaded[split].select_columns(text).to_list() == dataset.select_columns(text).to_list()
        for a, b in zip(loaded[split][0]["images"], dataset[0]["images"]):
            assert np.array_equal(np.asarray(a), np.asarray(b))

    with pytest.raises(ValueError, match="already holds files"):
        export_dataset("synthrooms_qa", folder, {"train": 1})
    assert main(["synthrooms", "--output_dir", str(tmp_path / "bad"), "--scenes", "dev=2"]) == 2


def test_the_synthrooms_export_round_trips(tmp_path):
    from datasets import load_dataset

    from spa3_vlm.data.export import export_dataset

    built = export_dataset("synthrooms", tmp_path / "rooms", {"train": 1}, frames_per_scene=2, image_size=(28, 42),
                           cache_dir=str(tmp_path / "cache"))  # fmt: skip
    card = DatasetCard.load(tmp_path / "rooms" / "README.md")
    assert card.data.license == "mit" and card.data.pretty_name == "SynthRooms" and "depth-estimation" in card.data.task_categories
    assert "| `depths` | list of float32 array (28, 42) |" in card.text
    row, loaded = built["train"][0], load_dataset(str(tmp_path / "rooms"), cache_dir=str(tmp_path / "loaded"))["train"][0]
    assert np.array_equal(np.asarray(row["depths"]), np.asarray(loaded["depths"])) and row["objects"] == loaded["objects"]
