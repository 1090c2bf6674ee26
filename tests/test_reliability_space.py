"""The Space's model boxes load only what the operator allows (issue 17).

A visitor may pick an offered choice (the default, ``tiny-random``, saved runs under ``runs/``), what the operator
set (``SPA3_VLM_MODEL`` / ``SPA3R_MODEL``, ``SPA3_ALLOWED_MODELS``) or, with the Hub reachable, a Hub id. Anything
else gets one refusal that reads the same whether or not the path exists, so it tells nothing about the server's
folders; a typed Hub id is fetched from the Hub, never read from a server folder of the same name.
"""

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch

from test_space import REPO

OFFLINE_REFUSAL = (
    "This model is not offered here. Choose one of: runs/spa3-vlm-tiny-sft, tiny-random. Hub ids (owner/name) "
    "cannot be used: the Hub is offline on this server (HF_HUB_OFFLINE)."
)
ONLINE_REFUSAL = (
    "This model is not offered here. Choose one of: runs/spa3-vlm-tiny-sft, tiny-random; or type a Hub id (owner/name)."
)


def saved_model(folder: Path, model_type: str = "spa3_vlm", weights: bool = True) -> Path:
    """A folder that looks like a ``save_pretrained`` output (enough for the model box, not for loading)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.fixture
def server(core, tmp_path, monkeypatch):
    """A Space folder with one trained Spa3-VLM under runs/, beside folders that exist on the server but are not
    offered; no model variables set; the Hub off (as HF_HUB_OFFLINE=1 sets it at huggingface_hub's import)."""
    root = tmp_path / "space"
    saved_model(root / "runs" / "spa3-vlm-tiny-sft")
    saved_model(root / "runs" / "unfinished", weights=False)  # still training: not offered
    saved_model(root / "src")
    saved_model(tmp_path / "outside")
    monkeypatch.setattr("space_models.SEARCH_ROOTS", (root,))
    monkeypatch.chdir(root)
    for name in (core.VLM_ENV, core.SPA3R_ENV, core.ALLOW_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def resolve(core, choice):
    return core.resolve_model(choice, core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm")


def refusal(core, choice) -> str:
    with pytest.raises(ValueError) as caught:
        resolve(core, choice)
    return str(caught.value)


# ------------------------------------------------------------------------------------------------ refused


BAD_CHOICES = {
    "existing folder outside the allow-list": "{tmp}/outside",
    "nonexistent absolute path": "{tmp}/missing",
    "existing folder under the Space, not offered": "src",
    "existing run that is not offered (looks like a Hub id)": "runs/unfinished",
    "path traversal": "runs/../src",
    "traversal to an offered folder": "../space/runs/spa3-vlm-tiny-sft",
    "home folder": "~",
    "inside the home folder": "~/models/spa3",
    "absolute system folder": "/etc",
    "filesystem root": "/",
    "current folder": ".",
    "hub id while the Hub is offline": "someone/spa3-vlm-3b",
    "dot segment in a hub-shaped id": "runs/..",
}


@pytest.mark.parametrize("choice", list(BAD_CHOICES.values()), ids=list(BAD_CHOICES))
def test_choices_outside_the_allow_list_are_refused(core, server, choice):
    message = refusal(core, choice.format(tmp=server))
    assert message == OFFLINE_REFUSAL
    assert str(server) not in message  # and no other folder of the server either: the text is fixed


@pytest.mark.parametrize(
    "existing, missing",
    [("{tmp}/outside", "{tmp}/missing"), ("src", "no-such-folder"), ("runs/unfinished", "runs/no-such-run")],
    ids=["absolute", "relative", "under-runs"],
)
def test_refusal_is_the_same_whether_or_not_the_path_exists(core, server, existing, missing):
    assert Path(existing.format(tmp=server)).expanduser().is_dir() or (server / "space" / existing).is_dir()
    assert refusal(core, existing.format(tmp=server)) == refusal(core, missing.format(tmp=server))


def test_online_a_typed_hub_id_goes_to_the_hub_but_paths_stay_refused(core, server, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert core.hub_reachable()
    assert resolve(core, "someone/spa3-vlm-3b") == core.ModelSpec("hub", "someone/spa3-vlm-3b")
    # Shaped like a Hub id and present on the server: still a Hub id, never the server's folder.
    assert resolve(core, "runs/unfinished") == core.ModelSpec("hub", "runs/unfinished")
    for choice in (str(server / "outside"), str(server / "missing"), "runs/../src", "~", "/etc", "runs/.."):
        assert refusal(core, choice) == ONLINE_REFUSAL


def test_hub_offline_is_read_from_huggingface_hub(core, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert not core.hub_reachable()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert core.hub_reachable()


def test_a_refused_model_reaches_the_page_and_nothing_loads(app, core, server):
    import gradio as gr

    loaded = core.FIELD_CACHE.loaded()
    for choice in (str(server / "outside"), str(server / "missing")):
        with pytest.raises(gr.Error) as caught:
            app.load_views(app.SCENES[0], None, choice, 0)
        assert caught.value.message == (
            "This model is not offered here. Choose one of: tiny-random. Hub ids (owner/name) cannot be used: the "
            "Hub is offline on this server (HF_HUB_OFFLINE)."
        )
    assert core.FIELD_CACHE.loaded() == loaded


# ------------------------------------------------------------------------------------------------ allowed


def test_offered_choices_resolve(core, server):
    run = server / "space" / "runs" / "spa3-vlm-tiny-sft"
    assert core.model_choices(core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm") == ["runs/spa3-vlm-tiny-sft", "tiny-random"]
    for choice in ("", "   ", None, "runs/spa3-vlm-tiny-sft", "runs/spa3-vlm-tiny-sft/", str(run)):
        assert resolve(core, choice) == core.ModelSpec("folder", str(run)), choice
    for choice in ("tiny-random", "tiny-random (hub_configs/spa3-vlm-tiny, random weights)"):
        assert resolve(core, choice).kind == "random"


def test_the_operator_variables_are_allowed(core, server, monkeypatch):
    outside = server / "outside"
    monkeypatch.setenv(core.VLM_ENV, str(outside))
    assert resolve(core, "") == resolve(core, str(outside)) == core.ModelSpec("folder", str(outside))
    monkeypatch.setenv(core.VLM_ENV, "someone/spa3-vlm-3b")  # the Hub is off: it may still be in the cache
    assert resolve(core, "someone/spa3-vlm-3b") == core.ModelSpec("hub", "someone/spa3-vlm-3b")
    assert refusal(core, str(outside)).startswith("This model is not offered here. Choose one of: someone/spa3-vlm-3b,")


def test_spa3_allowed_models_extends_the_allow_list(core, server, monkeypatch):
    field_model = saved_model(server / "elsewhere" / "spa3r", model_type="spa3r")
    entries = [str(server / "outside"), "org/private-vlm", str(field_model)]
    monkeypatch.setenv(core.ALLOW_ENV, " , ".join(entries) + ",")
    assert resolve(core, str(server / "outside")) == core.ModelSpec("folder", str(server / "outside"))
    assert resolve(core, "org/private-vlm") == core.ModelSpec("hub", "org/private-vlm")  # allowed even offline
    # Accepted in both boxes, offered only where it fits (a folder of the box's model type, or a Hub id).
    assert resolve(core, str(field_model)) == core.ModelSpec("folder", str(field_model))
    vlm = core.model_choices(core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm")
    spa3r = core.model_choices(core.SPA3R_ENV, core.DEFAULT_SPA3R_FOLDER, "spa3r")
    assert vlm == ["runs/spa3-vlm-tiny-sft", "tiny-random", str(server / "outside"), "org/private-vlm"]
    assert spa3r == ["tiny-random", "org/private-vlm", str(field_model)]
    # The rest of the server stays closed.
    assert refusal(core, str(server / "elsewhere")).startswith("This model is not offered here.")


def test_an_allowed_folder_must_be_a_saved_model(core, server, monkeypatch):
    empty = server / "empty"
    empty.mkdir()
    monkeypatch.setenv(core.ALLOW_ENV, str(empty))
    assert refusal(core, str(empty)) == (
        f"Model folder {str(empty)!r} has no config.json (nor a PEFT adapter_config.json): give a folder written by "
        "save_pretrained."
    )
    monkeypatch.setenv(core.ALLOW_ENV, str(server / "gone"))
    assert refusal(core, str(server / "gone")) == (
        f"Model {str(server / 'gone')!r} is allowed by the Space's settings (SPA3_VLM_MODEL / SPA3_ALLOWED_MODELS) "
        "but there is no such folder and it is not a Hub id (owner/name)."
    )


# ------------------------------------------------------------------------------------------------ Hub loading


def test_a_hub_id_is_loaded_from_the_hub_cache_not_a_server_folder(core, server, monkeypatch):
    """`from_pretrained("runs/x")` would read the server's runs/x: the loader hands it the Hub snapshot instead."""
    from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction

    config = Spa3RConfig.from_pretrained(REPO / "hub_configs" / "spa3r-tiny-synthrooms")
    with torch.random.fork_rng():
        torch.manual_seed(7)
        Spa3RForFieldPrediction(config).save_pretrained(server / "hub-cache" / "snapshot")
        torch.manual_seed(8)
        Spa3RForFieldPrediction(config).save_pretrained(server / "space" / "runs" / "lookalike")
    calls = []

    def config_download(repo_id, filename, **kwargs):
        calls.append(("config", repo_id, filename))
        return str(server / "hub-cache" / "snapshot" / filename)

    def snapshot(repo_id, **kwargs):
        calls.append(("snapshot", repo_id, tuple(kwargs.get("allow_patterns") or ())))
        return str(server / "hub-cache" / "snapshot")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", config_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    bundle = core._load_field_model(core.ModelSpec("hub", "runs/lookalike"))
    assert calls == [("config", "runs/lookalike", "config.json"), ("snapshot", "runs/lookalike", core.HUB_FILES)]
    expected = Spa3RForFieldPrediction.from_pretrained(server / "hub-cache" / "snapshot").state_dict()
    for name, value in bundle.model.state_dict().items():
        torch.testing.assert_close(value.cpu(), expected[name], msg=name)


def test_a_hub_model_of_another_type_is_not_downloaded(core, server, monkeypatch):
    (server / "llama.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **_: str(server / "llama.json"))

    def no_snapshot(*args, **kwargs):
        raise AssertionError("the weights of a model of another type were downloaded")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_snapshot)
    with pytest.raises(ValueError, match=r"someone/llama \(Hub\) holds a 'llama' model, not a 'spa3_vlm' one"):
        core._load_vlm(core.ModelSpec("hub", "someone/llama"))
