"""Reliability, loading: damaged weights, configs of another model, unreadable config files and untrusted
checkpoints are refused with an error that names the file, and never load as a silently random model."""

import io

import pytest
import torch
from transformers import AutoConfig

from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction, Spa3RModel, VGGTConfig, VGGTModel
from spa3_vlm.configuration_spa3_vlm import Spa3VLMConfig
from spa3_vlm.conversion.reference import load_reference_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny saved folders: a VGGT teacher and a Spa3R field model (random weights)."""
    root = tmp_path_factory.mktemp("saved")
    config = AutoConfig.from_pretrained(
        "hub_configs/spa3r-tiny-synthrooms", vggt_name_or_path=None, semantic_teacher_name_or_path=None
    )
    torch.manual_seed(0)
    Spa3RForFieldPrediction(config).save_pretrained(root / "spa3r")
    VGGTModel(config.vggt_config).save_pretrained(root / "vggt")
    return root


def damage(folder, how):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00garbage" * 16, "empty": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize(
    "model_class, folder", [(VGGTModel, "vggt"), (Spa3RModel, "spa3r"), (Spa3RForFieldPrediction, "spa3r")]
)
def test_damaged_weights_are_refused_naming_the_file(saved, tmp_path, model_class, folder, how):
    copy = tmp_path / folder
    copy.mkdir()
    for file in (saved / folder).iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    model_class.from_pretrained(copy)  # intact: loads
    damage(copy, how)
    with pytest.raises(ValueError, match=rf"could not read the weights of {copy} \(model.safetensors\): .*damaged or incomplete"):
        model_class.from_pretrained(copy)


@pytest.mark.parametrize(
    "load, folder, message",
    [
        (Spa3RConfig.from_pretrained, "vggt", r"this config is a 'spa3_vggt' model's, not a Spa3RConfig \('spa3r'\)"),
        (Spa3VLMConfig.from_pretrained, "spa3r", r"this config is a 'spa3r' model's, not a Spa3VLMConfig \('spa3_vlm'\)"),
        (Spa3RForFieldPrediction.from_pretrained, "vggt", r"this config is a 'spa3_vggt' model's, not a Spa3RConfig"),
        (VGGTModel.from_pretrained, "spa3r", r"holds almost none of VGGTModel's weights"),
    ],
)
def test_a_folder_of_another_model_is_an_error_not_a_log_line(saved, load, folder, message):
    with pytest.raises(ValueError, match=message):
        load(saved / folder)


def test_a_qwen_config_still_loads_into_the_spa3_vlm_config(tmp_path):
    from transformers import Qwen2_5_VLConfig

    from spa3_vlm_testing import qwen_values

    Qwen2_5_VLConfig(**qwen_values()).save_pretrained(tmp_path)
    config = Spa3VLMConfig.from_pretrained(tmp_path)
    assert config.text_config.hidden_size == 64 and config.spatial_branch


@pytest.mark.parametrize("config_class", [Spa3RConfig, VGGTConfig])
def test_an_unreadable_config_file_is_named(tmp_path, config_class):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(OSError, match=rf"config file at '{tmp_path / 'config.json'}' is not a valid JSON file"):
        config_class.from_pretrained(tmp_path)


def _saved_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _Payload:  # unpickling this without weights_only would call print: it stands for arbitrary code
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: torch.save({"state_dict": {"model.w": torch.ones(1)}, "payload": _Payload()}, p),
         r"refused, it pickles objects other than tensors"),
        (lambda p: p.write_bytes(_saved_bytes({"w": torch.ones(64)})[:200]), r"could not read checkpoint"),
        (lambda p: p.write_bytes(b""), r"could not read checkpoint"),
        (lambda p: torch.save({"state_dict": {}}, p), r"holds no tensors"),
        (lambda p: torch.save([torch.ones(1)], p), r"does not hold a state dict of tensors"),
        (lambda p: torch.save({"w": "text"}, p), r"does not hold a state dict of tensors"),
    ],
)  # fmt: skip
def test_untrusted_or_broken_reference_checkpoints_are_refused_by_name(tmp_path, write, message):
    path = tmp_path / "reference.ckpt"
    write(path)
    with pytest.raises(ValueError, match=message) as refused:
        load_reference_checkpoint(path)
    assert str(path) in str(refused.value)
    assert "weights_only=False" not in str(refused.value)  # never suggest loading that runs the file's code
