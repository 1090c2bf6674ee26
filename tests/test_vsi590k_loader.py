"""VSI-590K-format loader: videos, frame directories and image lists into TRL messages; its errors."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image

from spa3_vlm.data.vsi590k import load_vsi590k, read_vsi590k_annotations

VIDEO_FRAMES = 12
DIR_FRAMES = 10


def _write_mp4(path, num_frames, rate=4):
    """Frame k is a flat grey of level 20 k (mpeg4 keeps flat frames within a few levels), ``rate`` frames/s."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * k % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _solid(value, size=(24, 16)):
    return Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "videos").mkdir()
    _write_mp4(root / "videos" / "scene0.mp4", VIDEO_FRAMES)
    frames = root / "frames" / "scene1"
    frames.mkdir(parents=True)
    for k in range(1, DIR_FRAMES + 1):  # frame_2 must come before frame_10 (natural order)
        _solid(10 * k).save(frames / f"frame_{k}.png")
    for name, value in (("a.png", 200), ("b.png", 100)):
        _solid(value, (20, 20)).save(root / name)
    return root


def _turns(question, answer):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


MC_QUESTION = (
    "<video>\nThese are frames of a video.\nWhich is closest to the bed?\nOptions:\nA. sofa\nB. table\nC. lamp\n"
    "Answer with the option's letter from the given choices directly."
)
GOOD = [
    {"id": "video-mc", "video": "videos/scene0.mp4", "question_type": "object_rel_distance",
     "conversations": _turns(MC_QUESTION, "B")},
    {"id": "dir-num", "video": "frames/scene1", "question_type": "object_abs_distance",
     "conversations": _turns("<video>\nThese are frames of a video.\nHow far apart are they (in meters)?", "2.5")},
    {"id": "two-images", "images": ["a.png", "b.png"], "question_type": "camera_motion",
     "conversations": _turns("<image>\nFirst view. <image>\nSecond view. Which way did the camera move?", "left")},
]


def _write(path, records, jsonl=True):
    with open(path, "w") as handle:
        if jsonl:
            handle.write("\n".join(json.dumps(r) for r in records) + "\n")
        else:
            json.dump(records, handle)
    return path


def test_loads_videos_frame_dirs_and_images(media, tmp_path):
    from trl.data_utils import prepare_multimodal_messages

    dataset = load_vsi590k(_write(tmp_path / "ann.jsonl", GOOD), media, num_frames=8, cache_dir=str(tmp_path / "cache"))
    assert dataset["id"] == ["video-mc", "dir-num", "two-images"]
    assert dataset["question_type"] == ["object_rel_distance", "object_abs_distance", "camera_motion"]
    video, frame_dir, images = dataset[0], dataset[1], dataset[2]

    # mp4: linspace(0, 11, 8) -> frames 0, 1, 3, 4, 6, 7, 9, 11.
    levels = [float(np.asarray(im).mean()) for im in video["images"]]
    assert levels == pytest.approx([20 * k for k in (0, 1, 3, 4, 6, 7, 9, 11)], abs=6)
    user, assistant = video["messages"]
    assert user["role"] == "user" and assistant == {"role": "assistant", "content": [{"type": "text", "text": "B"}]}
    assert [c["type"] for c in user["content"]] == ["image"] * 8 + ["text"]
    assert user["content"][-1]["text"] == MC_QUESTION[len("<video>\n"):]  # the placeholder and its newline are gone

    # Frame directory, natural order: linspace(0, 9, 8) -> frame_1, 2, 3, 4, 6, 7, 8, 10 (exact: PNG).
    assert [int(np.asarray(im)[0, 0, 0]) for im in frame_dir["images"]] == [10 * k for k in (1, 2, 3, 4, 6, 7, 8, 10)]

    # Two <image> placeholders, interleaved with the text; files kept byte for byte.
    assert [c["type"] for c in images["messages"][0]["content"]] == ["image", "text", "image", "text"]
    assert images["messages"][0]["content"][1]["text"] == "First view. "
    assert [int(np.asarray(im)[0, 0, 0]) for im in images["images"]] == [200, 100]
    assert images["images"][0].size == (20, 20)

    filled = prepare_multimodal_messages(video["messages"], video["images"])
    assert [c["image"] for c in filled[0]["content"][:8]] == video["images"]

    # Fewer frames asked for: the same uniform sampling.
    four = load_vsi590k(_write(tmp_path / "ann4.jsonl", GOOD[:2]), media, num_frames=4, cache_dir=str(tmp_path / "c"))
    assert [int(np.asarray(im)[0, 0, 0]) for im in four[1]["images"]] == [10, 40, 70, 100]
    assert [c["type"] for c in four[0]["messages"][0]["content"]] == ["image"] * 4 + ["text"]


def test_json_list_image_list_under_video_and_no_placeholder(media, tmp_path):
    records = [
        # An image list under one <video> placeholder is subsampled like a video.
        {"images": [f"frames/scene1/frame_{k}.png" for k in range(1, DIR_FRAMES + 1)],
         "conversations": _turns("<video>\nHow many chair(s) are in this room?", "3"),
         "question_type": "object_counting"},
        # No placeholder (and an absolute path): the frames go before the first human text.
        {"id": "plain", "video": str(media / "frames" / "scene1"),
         "conversations": _turns("Describe the room.", "A small room.")},
    ]
    path = _write(tmp_path / "ann.json", records, jsonl=False)
    dataset = load_vsi590k(path, media, num_frames=3, cache_dir=str(tmp_path / "c"))
    assert dataset["id"] == ["ann.json#0", "plain"]
    # linspace(0, 9, 3) -> frames 0, 4, 9
    assert [int(np.asarray(im)[0, 0, 0]) for im in dataset[0]["images"]] == [10, 50, 100]
    assert [c["type"] for c in dataset[1]["messages"][0]["content"]] == ["image"] * 3 + ["text"]
    assert dataset[1]["question_type"] is None


def _error(media, tmp_path, record, exception=ValueError):
    path = _write(tmp_path / "bad.jsonl", [GOOD[1], record])
    with pytest.raises(exception) as info:
        load_vsi590k(path, media, cache_dir=str(tmp_path / "cache"))
    return str(info.value)


def test_missing_frames_name_record_and_path(media, tmp_path):
    message = _error(media, tmp_path, {**GOOD[0], "id": "lost", "video": "videos/nope.mp4"}, FileNotFoundError)
    assert "record 'lost' (#1)" in message and str(media / "videos" / "nope.mp4") in message
    message = _error(media, tmp_path, {**GOOD[2], "id": "lost-img", "images": ["a.png", "c.png"]}, FileNotFoundError)
    assert "record 'lost-img' (#1)" in message and str(media / "c.png") in message
    (media / "empty").mkdir(exist_ok=True)
    message = _error(media, tmp_path, {**GOOD[0], "id": "empty-dir", "video": "empty"})
    assert "record 'empty-dir' (#1)" in message and "contains no image files" in message


def test_conversation_without_assistant_turn(media, tmp_path):
    record = {**GOOD[0], "id": "no-answer", "conversations": GOOD[0]["conversations"][:1]}
    message = _error(media, tmp_path, record)
    assert message == "record 'no-answer' (#1): the conversation has no assistant ('gpt') turn to learn from"


def test_answers_that_do_not_parse(media, tmp_path):
    message = _error(media, tmp_path, {**GOOD[0], "id": "bad-letter", "conversations": _turns(MC_QUESTION, "D")})
    assert message.startswith("record 'bad-letter' (#1): answer 'D' does not fit question_type 'object_rel_distance'")
    assert "not one of the option letters ['A', 'B', 'C']" in message
    record = {**GOOD[1], "id": "bad-number", "conversations": _turns("<video>\nHow far?", "about two meters")}
    message = _error(media, tmp_path, record)
    assert message.startswith(
        "record 'bad-number' (#1): answer 'about two meters' does not fit question_type 'object_abs_distance'"
    )
    # What the metric reads from a prediction is accepted: "B. table" is B, "2.5 meters" is 2.5.
    ok = [
        {**GOOD[0], "conversations": _turns(MC_QUESTION, "B. table")},
        {**GOOD[1], "conversations": _turns("<video>\nHow far?", "2.5 meters")},
    ]
    assert len(load_vsi590k(_write(tmp_path / "ok.jsonl", ok), media, cache_dir=str(tmp_path / "cache"))) == 2


def test_malformed_annotations(media, tmp_path):
    message = _error(media, tmp_path, {**GOOD[2], "id": "count", "images": ["a.png"]})
    assert message.startswith("record 'count' (#1): 1 image(s) but 2 <image> and 0 <video> placeholder(s)")
    record = {"id": "role", "video": "videos/scene0.mp4", "conversations": [{"from": "bot", "value": "hi"}]}
    message = _error(media, tmp_path, record)
    assert message.startswith("record 'role' (#1): turn 0 must be")
    (tmp_path / "broken.jsonl").write_text(json.dumps(GOOD[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2: invalid JSON"):
        read_vsi590k_annotations(tmp_path / "broken.jsonl")
    (tmp_path / "ann.csv").write_text("x")
    with pytest.raises(ValueError, match=r"must end in \.json or \.jsonl"):
        read_vsi590k_annotations(tmp_path / "ann.csv")
    with pytest.raises(ValueError, match="num_frames must be a positive int, got 0"):
        load_vsi590k(_write(tmp_path / "a.jsonl", GOOD), media, num_frames=0)


def test_unreadable_video_names_the_record(media, tmp_path):
    (media / "videos" / "corrupt.mp4").write_bytes(b"this is not a video")
    # With the reference's frame rule the duration is read while the records are checked, before any decoding.
    message = _error(media, tmp_path, {**GOOD[0], "id": "corrupt", "video": "videos/corrupt.mp4"})
    assert message.startswith("record 'corrupt' (#1): cannot read") and "corrupt.mp4" in message
    path = _write(tmp_path / "fixed.jsonl", [GOOD[1], {**GOOD[0], "id": "corrupt", "video": "videos/corrupt.mp4"}])
    with pytest.raises(ValueError) as info:  # a fixed frame count reads the video only when decoding it
        load_vsi590k(path, media, num_frames=4, cache_dir=str(tmp_path / "cache2"))
    assert str(info.value).startswith("record 'corrupt': cannot read frames of") and "corrupt.mp4" in str(info.value)


def test_frame_counts_follow_the_reference_rule_by_default(media, tmp_path):
    """clamp(round(duration / 2 s), 4, 8) (reference SFT settings): a 12-frame 4-fps video lasts 3 s -> 2 -> 4 frames;
    a 10-frame directory counts as 1 fps -> 10 s -> 5 frames; a 40-frame 2-fps video -> 20 s -> 10 -> 8 frames;
    an image list under <video> is capped at 8."""
    _write_mp4(media / "videos" / "long.mp4", 40, rate=2)
    records = [
        GOOD[0], GOOD[1], {**GOOD[0], "id": "long", "video": "videos/long.mp4"},
        {"id": "list", "images": [f"frames/scene1/frame_{k}.png" for k in range(1, DIR_FRAMES + 1)],
         "conversations": _turns("<video>\nHow many chair(s) are in this room?", "3"), "question_type": "object_counting"},
    ]  # fmt: skip
    dataset = load_vsi590k(_write(tmp_path / "ann.jsonl", records), media, cache_dir=str(tmp_path / "cache"))
    assert [len(images) for images in dataset["images"]] == [4, 5, 8, 8]
    # linspace(0, 11, 4) -> frames 0, 3, 7, 11; linspace(0, 9, 5) -> frame_1, 3, 5, 7, 10
    assert [float(np.asarray(im).mean()) for im in dataset[0]["images"]] == pytest.approx([0, 60, 140, 220], abs=6)
    assert [int(np.asarray(im)[0, 0, 0]) for im in dataset[1]["images"]] == [10, 30, 50, 70, 100]
    assert [c["type"] for c in dataset[1]["messages"][0]["content"]] == ["image"] * 5 + ["text"]
    # The rule's bounds are settings; a fixed count overrides the rule.
    wider = load_vsi590k(_write(tmp_path / "b.jsonl", records[:2]), media, min_frames=6, max_frames=6, cache_dir=str(tmp_path / "c"))
    assert [len(images) for images in wider["images"]] == [6, 6]
    fixed = load_vsi590k(_write(tmp_path / "c.jsonl", records), media, num_frames=3, cache_dir=str(tmp_path / "d"))
    assert [len(images) for images in fixed["images"]] == [3, 3, 3, 3]
    with pytest.raises(ValueError, match=r"max_frames \(3\) must be >= min_frames \(4\)"):
        load_vsi590k(_write(tmp_path / "d.jsonl", records), media, max_frames=3)
