"""The Gradio Space (space/app.py), driven for real: launched on 127.0.0.1 and called with gradio_client.

Also checks the pieces whose mistakes would not show in a screenshot: the virtual camera's pose maths, the camera
convention (relative to view 0, as PSFMDataset builds pre-training samples), video frame sampling and upload errors.
"""

import importlib.util
import json
import os
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "space"

gradio_client = pytest.importorskip("gradio_client")
av = pytest.importorskip("av")

from space_testing import free_port  # noqa: E402


@pytest.fixture(scope="module")
def client(app):
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.demo.close()


def write_video(path: Path, num_frames: int, codec: str = "mpeg4", size=(64, 48)) -> Path:
    """Frame i is a flat colour with red = 20 * i, so sampled frames can be told apart after lossy coding."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=5)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        container.start_encoding()  # writes the header even when no frame follows
        for index in range(num_frames):
            pixels = np.zeros((height, width, 3), np.uint8)
            pixels[..., 0] = 20 * index
            pixels[..., 1] = 60
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_images(folder: Path, count: int, size=(112, 84), seed=0) -> list[str]:
    generator = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"view_{index:02d}.png"
        Image.fromarray(generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------------------------------------ import


def _space_modules() -> dict:
    """The imported modules of space/ (the app, spa3_demo and the space_*.py modules behind it), by name."""
    return {
        name: module
        for name, module in list(sys.modules.items())
        if Path(getattr(module, "__file__", None) or "/").parent == SPACE
    }


def _fresh_app(name: str):
    saved = _space_modules()
    for module_name in saved:
        del sys.modules[module_name]
    try:
        spec = importlib.util.spec_from_file_location(name, SPACE / "app.py")
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)
        return fresh
    finally:
        for module_name in _space_modules():
            del sys.modules[module_name]
        sys.modules.update(saved)


def test_import_builds_demo_without_loading_models_or_network(monkeypatch):
    """A fresh import of the app (and its helper module) with every outgoing connection refused builds `demo`,
    loads no model and returns (a launch at import would block)."""
    import gradio as gr

    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    helper = sys.modules.get("spa3_demo")
    fresh = _fresh_app("spa3_space_app_fresh")
    assert fresh.core is not helper  # the helper module was imported afresh too
    assert isinstance(fresh.demo, gr.Blocks) and not fresh.demo.is_running
    assert fresh.core.VLM_CACHE.loaded() == [] and fresh.core.FIELD_CACHE.loaded() == []
    assert fresh.core._ASK_EXAMPLES == {} and fresh.core._SEE_SCENES == {}
    public = sorted(fn.api_name for fn in fresh.demo.fns.values() if fn.api_visibility == "public")
    assert public == ["ask", "load_example", "load_views", "see"]
    assert attempts == []


@pytest.mark.parametrize("model, warned", [("tiny-random", True), (str(REPO / "hub_configs" / "spa3-vlm-tiny"), False)])
def test_ask_tab_says_how_to_train_a_model_before_anyone_asks(monkeypatch, model, warned):
    monkeypatch.setenv("SPA3_VLM_MODEL", model)
    fresh = _fresh_app("spa3_space_app_hint")
    notes = [block for block in fresh.demo.blocks.values() if getattr(block, "elem_id", None) == "no-trained-vlm"]
    assert len(notes) == 1 and notes[0].visible is warned
    assert "python train/sft_vlm.py --output_dir runs/spa3-vlm-tiny-sft" in notes[0].value


def test_app_defaults_turn_analytics_off_and_queue(app):
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert app.demo.analytics_enabled is False
    assert app.demo._queue.default_concurrency_limit == app.CONCURRENCY
    assert app.LAUNCH_KWARGS["max_file_size"] == f"{app.core.MAX_FILE_MB:g}mb"


def test_question_types_are_vsibench_ones(app):
    from spa3_vlm.vsibench import QUESTION_TYPES

    assert app.QUESTION_TYPES == QUESTION_TYPES


def test_pick_question(core):
    records = [{"question_type": "room_size_estimation", "n": 0}, {"question_type": "object_counting", "n": 1}]
    assert core.pick_question(records, "object_counting")["n"] == 1
    assert core.pick_question(records, "any")["n"] == 0
    assert core.pick_question(records, "route_planning")["n"] == 0  # absent type: the first question instead
    with pytest.raises(ValueError, match="no questions"):
        core.pick_question([], "any")


# ------------------------------------------------------------------------------------------------ model choice


def test_model_resolution(core, tmp_path, monkeypatch):
    monkeypatch.delenv(core.VLM_ENV, raising=False)
    monkeypatch.setattr("space_models.SEARCH_ROOTS", (tmp_path,))
    assert core.resolve_model("", core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm").kind == "random"
    assert core.resolve_model("tiny-random", core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm").kind == "random"
    # A finished run under runs/ becomes the default; one without weights (still training) does not.
    run = tmp_path / "runs" / "spa3-vlm-tiny-sft"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"model_type": "spa3_vlm"}')
    assert core.default_model_choice(core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm") == "tiny-random"
    (run / "model.safetensors").write_bytes(b"")
    assert core.default_model_choice(core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm") == "runs/spa3-vlm-tiny-sft"
    assert core.resolve_model("", core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm") == core.ModelSpec("folder", str(run))
    # Shown as the user would type it, not as this machine's absolute path.
    assert core.ModelSpec("folder", str(run)).label == "runs/spa3-vlm-tiny-sft (local folder)"
    assert core.ModelSpec("folder", "/elsewhere/model").label == "/elsewhere/model (local folder)"
    assert core.default_model_choice(core.SPA3R_ENV, core.DEFAULT_SPA3R_FOLDER, "spa3r") == "tiny-random"
    # A LoRA run (adapter + the base folder it names) counts as a Spa3-VLM too.
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "spa3_vlm"}')
    lora = tmp_path / "runs" / "lora"
    lora.mkdir()
    (lora / "adapter_model.safetensors").write_bytes(b"")
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    assert "runs/lora" in core.local_model_folders("spa3_vlm") and "runs/lora" not in core.local_model_folders("spa3r")
    assert core.resolve_model(str(lora), core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm") == core.ModelSpec("folder", str(lora))
    monkeypatch.setenv(core.VLM_ENV, "someone/spa3-vlm-3b")
    assert core.resolve_model(None, core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm") == core.ModelSpec("hub", "someone/spa3-vlm-3b")
    assert core.ModelSpec("hub", "someone/spa3-vlm-3b").label == "someone/spa3-vlm-3b (Hub)"
    with pytest.raises(ValueError, match="This model is not offered here"):
        core.resolve_model("no such folder", core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(core.ALLOW_ENV, str(tmp_path / "empty"))  # only allowed folders are looked at
    with pytest.raises(ValueError, match="has no config.json"):
        core.resolve_model(str(tmp_path / "empty"), core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm")


# ------------------------------------------------------------------------------------------------ virtual camera


def test_virtual_camera_moves_like_a_person(core):
    """Against SynthRooms' own camera builder: yaw right = smaller world yaw, pitch up = look_extrinsics pitch,
    steps go along the camera's forward / right axes."""
    from spa3_vlm.data.synthrooms import look_extrinsics

    centre, heading = np.array([2.0, 1.5, 1.6]), 0.7
    level = look_extrinsics(centre, heading, 0.0)
    np.testing.assert_allclose(core.relative_motion(0, 0, 0, 0) @ level, level, atol=1e-12)
    np.testing.assert_allclose(
        core.relative_motion(30, 0, 0, 0) @ level, look_extrinsics(centre, heading - np.radians(30), 0.0), atol=1e-12
    )
    np.testing.assert_allclose(
        core.relative_motion(0, 20, 0, 0) @ level, look_extrinsics(centre, heading, np.radians(20)), atol=1e-12
    )
    moved = core.relative_motion(0, 0, 0.5, -0.3) @ level
    forward_axis = np.array([np.cos(heading), np.sin(heading), 0.0])
    right_axis = np.array([np.sin(heading), -np.cos(heading), 0.0])
    np.testing.assert_allclose(-moved[:3, :3].T @ moved[:3, 3], centre + 0.5 * forward_axis - 0.3 * right_axis, atol=1e-12)
    np.testing.assert_allclose(moved[:3, :3], level[:3, :3], atol=1e-12)  # a step does not turn the camera
    with pytest.raises(ValueError, match="yaw must be a finite number"):
        core.relative_motion(float("nan"), 0, 0, 0)


def test_see_uses_the_pretraining_camera_convention(core):
    """Cameras handed to the decoder are those PSFMDataset gives pre-training (relative to the first view); the
    virtual camera's true rendering is rendered in the scene's world frame, so at zero offset it is the view."""
    from spa3_vlm.data.psfm import PSFMDataset
    from spa3_vlm.data.synthrooms import render

    bundle = core.get_field_model("tiny-random")
    views = core.synthrooms_views(1, bundle.image_size)
    row = {"images": [np.asarray(i.permute(1, 2, 0)) for i in views.images], "extrinsics": list(views.world_extrinsics),
           "intrinsics": list(views.intrinsics)}  # fmt: skip
    sample = PSFMDataset([row], num_views=(views.num_views, views.num_views), interval=(1, 1))[0]
    encoded = core.encode_views(bundle, views)
    torch.testing.assert_close(torch.from_numpy(encoded.extrinsics).float(), sample["extrinsics"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(encoded.intrinsics).float(), sample["intrinsics"])
    # The latents are the package encoder's on the pre-training cameras (they matter with a camera-aware encoder).
    with torch.no_grad():
        reference = bundle.model.spa3r(
            sample["pixel_values"][None], extrinsics=sample["extrinsics"][None], intrinsics=sample["intrinsics"][None]
        ).latents
    torch.testing.assert_close(encoded.latents, reference, atol=1e-5, rtol=1e-4)

    same = core.see(bundle, views, 4)
    np.testing.assert_allclose(same.true_rgb, views.images[4].permute(1, 2, 0).numpy(), atol=1e-6)
    assert same.nearest_index == 4

    moved = core.see(bundle, views, 4, yaw_deg=-40, pitch_deg=10, forward=0.3, sideways=0.2)
    world = core.relative_motion(-40, 10, 0.3, 0.2) @ views.world_extrinsics[4]
    expected = render(views.scene, world, views.intrinsics[4], tuple(views.images.shape[-2:]))["rgb"]
    np.testing.assert_array_equal(moved.true_rgb, expected)
    np.testing.assert_allclose(moved.extrinsics, world @ np.linalg.inv(views.world_extrinsics[0]), atol=1e-9)
    # The decoder really sees the new camera: the predicted field changes.
    assert not np.array_equal(np.asarray(moved.field), np.asarray(same.field))

    outside = core.see(bundle, views, 0, forward=40.0)
    assert outside.true_view is None and outside.field is not None
    assert any("outside the room" in note for note in outside.notes)
    with pytest.raises(ValueError, match="Context view must be 0-5"):
        core.see(bundle, views, 6)


# ------------------------------------------------------------------------------------------------ the served app


def test_ask_with_an_example_scene(client, tmp_path):
    paths, question, truth = client.predict("SynthRooms test scene 1", "object_counting", api_name="/load_example")
    assert len(paths) == 8
    assert "How many" in question and question.startswith("These are frames of a video.")
    assert "Ground truth" in truth and "object_counting" in truth
    answer, notes, gallery = client.predict(
        [gradio_client.handle_file(p) for p in paths], question, "tiny-random", 8, 4, api_name="/ask"
    )
    assert isinstance(answer, str)
    assert "Random weights" in notes and "8 images; the model saw 8 frames" in notes
    assert len(gallery) == 8


@pytest.mark.parametrize("base", ["spa3-vlm-tiny", "spa3-vlm-qwen3-tiny"])
def test_ask_answers_with_a_saved_model_folder(client, tmp_path, monkeypatch, base):
    """A model folder picked by path (allowed by the operator) is loaded and used: the served answer is the model's
    own greedy output, on either base VLM (Qwen2.5-VL, Qwen3-VL)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from spa3_vlm import Spa3VLMProcessor

    config_dir = REPO / "hub_configs" / base
    processor = Spa3VLMProcessor.from_pretrained(config_dir)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(3)
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(config_dir)).eval()
        for parameter in model.parameters():  # large random weights: answers that depend on the input
            if parameter.dim() > 1:
                parameter.normal_(0, 0.5)
    folder = tmp_path / "vlm"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    monkeypatch.setenv("SPA3_ALLOWED_MODELS", str(folder))

    images = write_images(tmp_path, 3)
    question = "Which object is closest to the door?"
    answer, notes, _ = client.predict(
        [gradio_client.handle_file(p) for p in images], question, str(folder), 8, 6, api_name="/ask"
    )
    messages = [{"role": "user", "content": [{"type": "image"}] * 3 + [{"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert expected.strip() and answer == expected.strip()
    assert "Random weights" not in notes and str(folder) in notes


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft reads it when building the adapter
def test_a_lora_adapter_folder_is_merged_into_its_base(core, tmp_path, monkeypatch):
    """train/sft_vlm.py --use_lora saves a PEFT adapter naming its base folder; the app loads base + adapter."""
    peft = pytest.importorskip("peft")
    from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration, Spa3VLMProcessor

    config_dir = REPO / "hub_configs" / "spa3-vlm-tiny"
    processor = Spa3VLMProcessor.from_pretrained(config_dir)
    with torch.random.fork_rng():
        torch.manual_seed(4)
        base = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(config_dir)).eval()
        base.save_pretrained(tmp_path / "base_model")
        lora = peft.LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
        tuned = peft.get_peft_model(base, lora)
    tuned.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    adapter_config = tmp_path / "adapter" / "adapter_config.json"
    settings = json.loads(adapter_config.read_text())
    settings["base_model_name_or_path"] = str(tmp_path / "base_model")  # as train/sft_vlm.py writes it
    adapter_config.write_text(json.dumps(settings))
    assert not (tmp_path / "adapter" / "config.json").exists()

    monkeypatch.setenv(core.ALLOW_ENV, str(tmp_path / "adapter"))
    bundle = core.get_vlm(str(tmp_path / "adapter"))
    assert type(bundle.model) is Spa3VLMForConditionalGeneration and not bundle.random_weights
    frames = [Image.open(p).convert("RGB") for p in write_images(tmp_path, 2)]
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Where is the bed?"}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=frames, return_tensors="pt")
    with torch.no_grad():
        expected = tuned.merge_and_unload()(**inputs).logits
        served = bundle.model(**inputs).logits
        plain = Spa3VLMForConditionalGeneration.from_pretrained(tmp_path / "base_model").eval()(**inputs).logits
    torch.testing.assert_close(served, expected)
    assert not torch.allclose(served, plain)  # the adapter really changed the model


@pytest.mark.parametrize("num_frames, expected", [(4, (0, 3, 7, 11)), (10, (0, 1, 2, 3, 4, 6, 7, 8, 9, 11))])
def test_ask_samples_video_frames_evenly(client, tmp_path, num_frames, expected):
    """The slider's frame count reaches the model (10 > the tiny processor's default of 8)."""
    video = write_video(tmp_path / "walk.mp4", 12)
    _, notes, gallery = client.predict(
        [gradio_client.handle_file(video)], "How big is the room?", "tiny-random", num_frames, 2, api_name="/ask"
    )
    assert f"{num_frames} evenly spaced frames of the video; the model saw {num_frames} frames" in notes
    reds = [pixels(item["image"])[..., 0].mean() for item in gallery]
    np.testing.assert_allclose(reds, [20 * i for i in expected], atol=6)  # linspace(0, 11, k) cast to int


def test_bad_uploads_get_clear_errors_and_the_app_keeps_serving(client, core, tmp_path, monkeypatch):
    def error_of(files, question="How many chairs?", frames=8):
        handles = [gradio_client.handle_file(str(f)) for f in files]
        with pytest.raises(gradio_client.exceptions.AppError) as caught:
            client.predict(handles, question, "tiny-random", frames, 2, api_name="/ask")
        assert caught.value.visible
        return caught.value.message

    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    assert "notes.txt is not an image or a video" in error_of([text])

    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    assert "Cannot read image broken.png: it is not a valid image file" in error_of([corrupt])

    empty_video = write_video(tmp_path / "empty.avi", 0, codec="mjpeg")
    assert "contains 0 decodable frames" in error_of([empty_video])

    too_many = write_images(tmp_path, 33, size=(28, 28))
    assert "Got 33 images; at most 32 frames per question" in error_of(too_many)

    mixed = [write_video(tmp_path / "clip.mp4", 3), *write_images(tmp_path, 1)]
    assert "upload several images or one video, not both" in error_of(mixed)

    assert "Type a question first" in error_of(write_images(tmp_path, 1), question="   ")

    big = write_images(tmp_path, 1)[0]  # ~28 KB of noise
    with monkeypatch.context() as patch:
        patch.setattr("space_uploads.MAX_FILE_MB", 0.01)
        message = error_of([big])
    assert re.fullmatch(r"view_00\.png is 0\.0\d+ MB; the limit is 0\.01 MB per file\.", message), message

    with pytest.raises(gradio_client.exceptions.AppError, match="No frames: upload images or one video"):
        client.predict(None, "How many chairs?", "tiny-random", 8, 2, api_name="/ask")

    # Still serving: a good request right after the bad ones.
    answer, notes, gallery = client.predict(
        [gradio_client.handle_file(p) for p in write_images(tmp_path, 2)], "How many chairs?", "tiny-random", 8, 2,
        api_name="/ask",
    )  # fmt: skip
    assert len(gallery) == 2 and "2 images" in notes


def test_see_on_a_synthrooms_scene(client):
    context, slider = client.predict("SynthRooms test scene 0", None, "tiny-random", 3, api_name="/load_views")
    assert len(context) == 6
    assert slider["maximum"] == 5 and slider["value"] == 3

    field, nearest, true_view, teacher, notes = client.predict(
        "SynthRooms test scene 0", None, 3, 0, 0, 0, 0, "tiny-random", api_name="/see"
    )
    # Zero offsets: the virtual camera is view 3, so its true rendering is view 3 (same pixels, same upscaling).
    np.testing.assert_array_equal(pixels(true_view), pixels(nearest))
    assert "nearest input view: #3" in notes and "ground-truth cameras" in notes and "Random weights" in notes
    assert pixels(field).shape == pixels(nearest).shape == pixels(teacher).shape

    moved = client.predict("SynthRooms test scene 0", None, 3, 45, -10, 0.4, 0.2, "tiny-random", api_name="/see")
    assert not np.array_equal(pixels(moved[0]), pixels(field))
    assert not np.array_equal(pixels(moved[2]), pixels(true_view))

    # Past the last view: the slider's own bound (this session's slider now ends at 5) or the app's check.
    with pytest.raises(gradio_client.exceptions.AppError, match="Context view must be 0-5|greater than maximum value 5"):
        client.predict("SynthRooms test scene 0", None, 7, 0, 0, 0, 0, "tiny-random", api_name="/see")


def test_see_on_uploaded_views(client, tmp_path):
    views = [gradio_client.handle_file(p) for p in write_images(tmp_path, 3, size=(160, 120))]
    field, nearest, true_view, teacher, notes = client.predict(
        "Uploaded images", views, 1, 0, 0, 0, 0, "tiny-random", api_name="/see"
    )
    assert true_view is None and teacher is None
    assert "camera head" in notes and "no ground truth" in notes
    assert pixels(field).shape[:2] == pixels(nearest).shape[:2] == (336, 448)  # 84x112 model input, shown x4

    too_many = [gradio_client.handle_file(p) for p in write_images(tmp_path, 13, size=(28, 28))]
    with pytest.raises(gradio_client.exceptions.AppError, match="Got 13 images; the field model takes at most 12"):
        client.predict("Uploaded images", too_many, 0, 0, 0, 0, 0, "tiny-random", api_name="/see")
    video = gradio_client.handle_file(str(write_video(tmp_path / "walk.mp4", 4)))
    with pytest.raises(gradio_client.exceptions.AppError, match="takes images .*not a video"):
        client.predict("Uploaded images", [video], 0, 0, 0, 0, 0, "tiny-random", api_name="/see")


def test_see_with_a_saved_field_model_folder(client, core, tmp_path, monkeypatch):
    """A Spa3R folder typed in the model box (allowed by the operator) is loaded and used: the served field (lossless
    PNG) is that model's."""
    from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction

    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = Spa3RForFieldPrediction(Spa3RConfig.from_pretrained(REPO / "hub_configs" / "spa3r-tiny-synthrooms"))
    folder, encoder_only = tmp_path / "spa3r", tmp_path / "encoder"
    model.save_pretrained(folder)
    monkeypatch.setenv(core.ALLOW_ENV, f"{folder},{encoder_only}")

    arguments = ("SynthRooms test scene 2", None, 1, 20, 5, 0.3, -0.2)
    field, _, _, _, notes = client.predict(*arguments, str(folder), api_name="/see")
    assert str(folder) in notes and "Random weights" not in notes
    bundle = core.get_field_model(str(folder))
    expected = core.see(bundle, core.synthrooms_views(2, bundle.image_size), 1, 20, 5, 0.3, -0.2).field
    np.testing.assert_array_equal(pixels(field), np.asarray(expected, dtype=np.int16))
    random_field = client.predict(*arguments, "tiny-random", api_name="/see")[0]
    assert not np.array_equal(pixels(random_field), pixels(field))

    model.spa3r.save_pretrained(encoder_only)
    with pytest.raises(gradio_client.exceptions.AppError, match="has no field decoder weights"):
        client.predict(*arguments, str(encoder_only), api_name="/see")
