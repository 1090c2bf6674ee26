"""The ``spa3-vlm`` command and the one generation path behind it (``spa3_vlm.inference``)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from eval_testing import frame_index, write_index_video
from PIL import Image

from spa3_vlm.cli import main
from spa3_vlm.field_view import encode_views, load_field_model, read_views, relative_motion
from spa3_vlm.inference import Spa3VLMGenerator, load_scene_frames


@pytest.fixture(scope="module")
def generator(spa3_dir):
    return Spa3VLMGenerator.from_pretrained(str(spa3_dir), device="cpu", max_new_tokens=4)


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for index in range(12):  # frame_10 sorts after frame_2: the natural order is the walk's
        Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8)).save(folder / f"frame_{index}.png")
    return folder


def test_ask_encodes_the_scene_once_and_answers_like_one_question_at_a_time(generator, frame_folder):
    calls = []
    handle = generator.model.spa3r.register_forward_hook(lambda *args: calls.append(1))
    try:
        answers = generator.ask(frame_folder, ["How many chairs?", "How big is the room?", "Where is the door?"], num_frames=4)
    finally:
        handle.remove()
    assert len(calls) == 1  # one Spa3R pass for the three questions
    frames = load_scene_frames(frame_folder, 4)
    one_by_one = [generator.generate([(frames, q)])[0].strip() for q in ("How many chairs?", "How big is the room?", "Where is the door?")]
    assert answers == one_by_one
    assert generator.ask(frame_folder, "How many chairs?", num_frames=4) == one_by_one[0]


def test_answers_read_the_frames_and_details_count_what_the_model_saw(generator, frame_folder):
    frames = load_scene_frames(frame_folder, 4)
    (details,) = generator.generate([(frames, "How many chairs?")], return_details=True)
    inputs = generator.processor(
        text=[generator.processor.apply_chat_template(generator.messages(4, "How many chairs?"), add_generation_prompt=True)],
        images=frames, return_tensors="pt",
    )  # fmt: skip
    assert details.frames == 4 and details.prompt_tokens == inputs["input_ids"].shape[1]
    assert details.visual_tokens == int((inputs["input_ids"] == generator.processor.image_token_id).sum()) > 0
    with torch.no_grad():
        expected = generator.model(**inputs).logits[0, -1].argmax().item()
    first = generator.processor.tokenizer(details.text, add_special_tokens=False)["input_ids"]
    assert first and first[0] == expected  # the answer starts with the greedy token of a plain forward pass


def test_cli_ask_answers_about_a_folder_and_a_video(spa3_dir, frame_folder, tmp_path, capsys, generator):
    video = write_index_video(tmp_path / "walk.mp4", 20, size=(112, 84))
    assert main(["ask", str(frame_folder), "How many chairs?", "-q", "Where is the door?", "--model", str(spa3_dir),
                 "--num_frames", "4", "--max_new_tokens", "4", "--device", "cpu", "--json"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["question"] for line in lines] == ["How many chairs?", "Where is the door?"]
    assert [line["answer"] for line in lines] == generator.ask(frame_folder, ["How many chairs?", "Where is the door?"], num_frames=4)
    assert main(["ask", str(video), "How big is the room?", "--model", str(spa3_dir), "--num_frames", "5",
                 "--max_new_tokens", "4", "--device", "cpu"]) == 0  # fmt: skip
    answer = capsys.readouterr().out.strip()
    frames = load_scene_frames(video, 5)
    assert [frame_index(f) for f in frames] == [0, 4, 9, 14, 19]  # linspace(0, 19, 5) cast to int
    assert answer == generator.ask(frames, "How big is the room?")
    images = sorted(frame_folder.glob("*.png"))[:2]
    assert main(["ask", *map(str, images), "Which one is nearer?", "--model", str(spa3_dir), "--max_new_tokens", "4",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == generator.ask([Image.open(p) for p in images], "Which one is nearer?")


def test_cli_ask_says_what_is_wrong(spa3_dir, frame_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", str(tmp_path / "missing.mp4"), "How many?", "--model", str(spa3_dir)])
    assert exit_info.value.code == 2
    assert "is not a video file, a folder or an image file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ask", str(frame_folder), "--model", str(spa3_dir)])
    assert "no question" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ask", str(frame_folder), "q", "--model", str(frame_folder)])  # not a model folder
    assert "spa3-vlm ask: error:" in capsys.readouterr().err


def test_cli_field_writes_the_novel_view_picture(spa3r_folder, frame_folder, tmp_path, capsys):
    out = tmp_path / "pictures" / "field.png"
    views = sorted(frame_folder.glob("*.png"))[:3]
    assert main(["field", *map(str, views), "--model", str(spa3r_folder), "--yaw", "20", "--out", str(out), "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out and Image.open(out).size[0] > 200
    model, image_processor = load_field_model(str(spa3r_folder), device="cpu")
    with pytest.raises(SystemExit):
        main(["field", str(views[0]), "--model", str(frame_folder), "--out", str(out)])
    assert "spa3-vlm field: error:" in capsys.readouterr().err
    images = read_views(views, image_processor)
    assert images.shape[0] == 3 and images.shape[-1] == image_processor.target_width
    # The dataset's cameras, given in any world frame, are re-expressed relative to view 0.
    rng = np.random.default_rng(1)
    world = np.stack([relative_motion(*rng.uniform(-30, 30, 2), *rng.uniform(-1, 1, 2)) for _ in range(3)])
    intrinsics = np.tile(np.array([[60.0, 0, 56], [0, 60, 42], [0, 0, 1]]), (3, 1, 1))
    encoded = encode_views(model, images, world, intrinsics)
    np.testing.assert_allclose(encoded.extrinsics[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(encoded.extrinsics[2], world[2] @ np.linalg.inv(world[0]), atol=1e-12)


def test_python_dash_m_runs_the_same_command(spa3_dir):
    result = subprocess.run([sys.executable, "-m", "spa3_vlm", "--help"], capture_output=True, text=True, check=True)
    assert "ask" in result.stdout and "field" in result.stdout and "eval" in result.stdout
