"""VSI-590K-format loader: videos, frame directories and image lists into TRL messages; its errors. Rows name their
frames (video path + frame indices) and decode them when read: the same frames as the eager decoder, disk use that
grows with the videos and not the records (rows, frame cache, Spa3R latent store), one decode per video and frame set
with the frame cache, DataLoader workers, and SFT end to end on a generated mini VSI-590K."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    # Each video's frame count (and rate) is read while the records are checked, before any row is written.
    message = _error(media, tmp_path, {**GOOD[0], "id": "corrupt", "video": "videos/corrupt.mp4"})
    assert message.startswith("record 'corrupt' (#1): cannot read") and "corrupt.mp4" in message
    path = _write(tmp_path / "fixed.jsonl", [GOOD[1], {**GOOD[0], "id": "corrupt", "video": "videos/corrupt.mp4"}])
    with pytest.raises(ValueError) as info:  # also with a fixed frame count: the indices need the frame count
        load_vsi590k(path, media, num_frames=4, cache_dir=str(tmp_path / "cache2"))
    assert str(info.value).startswith("record 'corrupt' (#1): cannot read") and "corrupt.mp4" in str(info.value)


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
    assert [len(row["images"]) for row in dataset] == [4, 5, 8, 8]
    # linspace(0, 11, 4) -> frames 0, 3, 7, 11; linspace(0, 9, 5) -> frame_1, 3, 5, 7, 10
    assert [float(np.asarray(im).mean()) for im in dataset[0]["images"]] == pytest.approx([0, 60, 140, 220], abs=6)
    assert [int(np.asarray(im)[0, 0, 0]) for im in dataset[1]["images"]] == [10, 30, 50, 70, 100]
    assert [c["type"] for c in dataset[1]["messages"][0]["content"]] == ["image"] * 5 + ["text"]
    # The rule's bounds are settings; a fixed count overrides the rule.
    wider = load_vsi590k(_write(tmp_path / "b.jsonl", records[:2]), media, min_frames=6, max_frames=6, cache_dir=str(tmp_path / "c"))
    assert [len(row["images"]) for row in wider] == [6, 6]
    fixed = load_vsi590k(_write(tmp_path / "c.jsonl", records), media, num_frames=3, cache_dir=str(tmp_path / "d"))
    assert [len(row["images"]) for row in fixed] == [3, 3, 3, 3]
    with pytest.raises(ValueError, match=r"max_frames \(3\) must be >= min_frames \(4\)"):
        load_vsi590k(_write(tmp_path / "d.jsonl", records), media, max_frames=3)


# ---------------------------------------------------------------------------------------------- lazy rows


def _pixels(images):
    return [(image.mode, image.size, np.asarray(image).tobytes()) for image in images]


@pytest.fixture(scope="module")
def bench():
    """bench/bench_vsi590k.py (its mini VSI-590K writer and the benchmark); the generic `common` is not left behind."""
    folder = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, folder)
    try:
        import bench_vsi590k
    finally:
        sys.path.remove(folder)
    yield bench_vsi590k
    for name in ("bench_vsi590k", "common"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def mini(bench, tmp_path_factory):
    """A mini VSI-590K: 2 videos of 24 frames (6 s at 4 fps -> 4 frames each), 8 and 32 records over them."""
    root = tmp_path_factory.mktemp("mini")
    return root, bench.write_mini_vsi590k(root, num_videos=2, num_frames=24, size=(64, 48), record_counts=[8, 32])


@pytest.fixture(scope="module")
def model_and_processor():
    import torch

    from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration
    from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor

    torch.manual_seed(0)
    tiny = Path(__file__).resolve().parents[1] / "hub_configs" / "spa3-vlm-tiny"
    model = Spa3VLMForConditionalGeneration(Spa3VLMConfig.from_pretrained(tiny)).eval()
    return model, Spa3VLMProcessor.from_pretrained(tiny)


def test_rows_name_their_frames_and_decode_as_the_eager_loader(media, tmp_path):
    from datasets import Image as ImageFeature

    from spa3_vlm.video import load_video_frames

    dataset = load_vsi590k(_write(tmp_path / "ann.jsonl", GOOD), media, num_frames=8, cache_dir=str(tmp_path / "c"))
    stored = dataset.with_format(None)
    assert "images" not in dataset.column_names  # no pixels in the Arrow table
    video, frame_dir, images = stored[0], stored[1], stored[2]
    assert (video["media_kind"], video["media"], video["frame_files"]) == ("video", "videos/scene0.mp4", [])
    assert video["media_path"] == str(media / "videos" / "scene0.mp4")
    assert video["frame_indices"] == [0, 1, 3, 4, 6, 7, 9, 11]
    assert frame_dir["media_kind"] == "frame_dir" and frame_dir["media_path"] is None
    sampled = (1, 2, 3, 4, 6, 7, 8, 10)
    assert frame_dir["frame_files"] == [str(media / "frames" / "scene1" / f"frame_{k}.png") for k in sampled]
    assert images["media_kind"] == "images" and images["frame_indices"] == [0, 1]
    assert len(set(stored["frames_key"])) == 3

    # The eager path's frames, pixel for pixel: load_video_frames for the video and the frame directory, datasets'
    # Image decoding (mode kept) for listed images; also when read through the frame cache, cold and warm.
    expected = [
        _pixels(load_video_frames(media / "videos" / "scene0.mp4", 8)),
        _pixels(load_video_frames(media / "frames" / "scene1", 8)),
        _pixels([ImageFeature().decode_example({"path": str(media / n), "bytes": None}) for n in ("a.png", "b.png")]),
    ]
    assert [_pixels(row["images"]) for row in dataset] == expected
    cached = load_vsi590k(_write(tmp_path / "ann.jsonl", GOOD), media, num_frames=8, cache_dir=str(tmp_path / "c"),
                          frame_cache_dir=tmp_path / "frames")  # fmt: skip
    for _ in range(2):
        assert [_pixels(row["images"]) for row in cached] == expected
    assert len(list((tmp_path / "frames").iterdir())) == 1  # only the video file is cached


def test_disk_use_grows_with_videos_not_records(mini, model_and_processor, tmp_path):
    from spa3_vlm.data.latent_cache import add_spatial_latents
    from spa3_vlm.data.row_transforms import raw_column

    root, annotations = mini
    model, processor = model_and_processor
    sizes = {}
    for count, path in annotations.items():
        work = tmp_path / str(count)
        rows = load_vsi590k(path, root, cache_dir=str(work / "rows"), frame_cache_dir=work / "frames")
        for _ in rows:
            pass
        add_spatial_latents(rows, model, processor, cache_dir=work / "latents", desc=None)
        assert len(rows) == count and len(set(raw_column(rows, "frames_key"))) == 2  # one frame set per video
        sizes[count] = {
            "rows": sum(f.stat().st_size for f in (work / "rows").rglob("*.arrow")),
            "frames": sum(f.stat().st_size for f in (work / "frames").rglob("*") if f.is_file()),
            "latents": sum(f.stat().st_size for f in (work / "latents").rglob("*") if f.is_file()),
            "entries": sorted(p.name for p in (work / "frames").iterdir()),
        }
    small, large = sizes[8], sizes[32]
    # Frame cache and latent store: the same bytes for 4x the records (2 entries each); the rows are a few hundred
    # bytes per record, no pixels.
    assert large["entries"] == small["entries"] and len(large["entries"]) == 2
    assert large["frames"] == small["frames"] > 0 and large["latents"] == small["latents"] > 0
    assert large["rows"] < 1000 * 32


def test_each_video_is_decoded_once_per_frame_set_with_the_frame_cache(mini, monkeypatch, tmp_path):
    import spa3_vlm.data.lazy_frames as lazy_frames

    root, annotations = mini
    calls = []
    decode = lazy_frames.decode_frames_at
    monkeypatch.setattr(lazy_frames, "decode_frames_at", lambda path, idx: calls.append(path) or decode(path, idx))

    plain = load_vsi590k(annotations[32], root, cache_dir=str(tmp_path / "rows"))
    assert len(plain[0:8]["images"]) == 8 and len(calls) == 2  # records of one batch share a decode per frame set
    calls.clear()
    cached = load_vsi590k(annotations[32], root, cache_dir=str(tmp_path / "rows"), frame_cache_dir=tmp_path / "frames")
    order = np.random.default_rng(0).permutation(32).tolist()
    first = [cached[i]["images"] for i in order]  # one record at a time, shuffled
    assert sorted(calls) == sorted({str(root / "videos" / f"scene{k:03d}.mp4") for k in range(2)})
    calls.clear()
    again = load_vsi590k(annotations[8], root, cache_dir=str(tmp_path / "rows8"), frame_cache_dir=tmp_path / "frames")
    assert [_pixels(row["images"]) for row in again] == [_pixels(first[order.index(i)]) for i in range(8)]
    assert calls == []  # another dataset over the same videos and frames reads the same entries


def test_dataloader_workers_read_the_same_rows(mini, tmp_path):
    import pickle

    from torch.utils.data import DataLoader

    root, annotations = mini
    dataset = load_vsi590k(annotations[8], root, cache_dir=str(tmp_path / "rows"), frame_cache_dir=tmp_path / "frames")
    reference = [_pixels(row["images"]) for row in dataset]
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=lambda rows: rows)
    assert [_pixels(row["images"]) for batch in loader for row in batch] == reference
    # What a spawned worker gets: the rows and their transform (settings only) by pickle.
    assert _pixels(pickle.loads(pickle.dumps(dataset))[5]["images"]) == reference[5]


def test_errors_while_decoding_name_the_record(mini, monkeypatch, tmp_path, bench):
    import shutil

    import spa3_vlm.data.lazy_frames as lazy_frames

    root, annotations = mini
    media = tmp_path / "media"
    shutil.copytree(root / "videos", media / "videos")
    dataset = load_vsi590k(annotations[8], media, cache_dir=str(tmp_path / "rows"))

    # Trainers that drop the columns the frames are decoded from.
    with pytest.raises(ValueError, match=r"frame-set column\(s\) \['frame_indices'\].*remove_unused_columns=False"):
        dataset.remove_columns(["frame_indices"])[0]

    # A damaged video (the decoder's error), a video rewritten since the rows were built, and a removed one.
    def damaged(path, indices):
        raise ValueError("boom")

    monkeypatch.setattr(lazy_frames, "decode_frames_at", damaged)
    with pytest.raises(ValueError, match=r"^record 'mini-000001': cannot read frames of .*scene001\.mp4: boom$"):
        dataset[1]
    monkeypatch.undo()
    bench.write_video(media / "videos" / "scene000.mp4", 30, 4, (64, 48), seed=5)
    with pytest.raises(ValueError, match=r"^record 'mini-000000': .*scene000\.mp4 changed \(size or modification"):
        dataset[0]
    (media / "videos" / "scene001.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=r"^record 'mini-000003': media file not found: .*scene001\.mp4$"):
        dataset[3]


def test_sft_trains_on_lazy_vsi590k_rows_with_workers_and_both_caches(mini, tmp_path, spa3r_folder):
    """train/sft_vlm.py --dataset vsi590k: rows decoded in 2 DataLoader workers, frames and Spa3R latents cached once
    per video (TRL's SFTTrainer sees a vision dataset through the rows' transform)."""
    root, annotations = mini
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    try:
        import sft_vlm
    finally:
        sys.path.pop(0)
    common = [
        "--output_dir", str(tmp_path / "run"), "--dataset", "vsi590k", "--annotation_path", str(annotations[8]),
        "--media_root", str(root), "--data_cache_dir", str(tmp_path / "data"), "--num_eval_scenes", "0",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--disable_tqdm", "true",
        "--spa3r_name_or_path", str(spa3r_folder),
    ]  # fmt: skip
    run = sft_vlm.main([*common, "--dataloader_num_workers", "2", "--frame_cache_dir", str(tmp_path / "frames")])
    trainer = run["trainer"]
    assert trainer.state.global_step == 2 and trainer.args.remove_unused_columns is False
    assert all(np.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    assert len(list((tmp_path / "frames").iterdir())) == 2  # one entry per video
    (store,) = (tmp_path / "data" / "spa3r_latents").iterdir()
    assert np.load(store / "latents.npy").shape[0] == 2  # one latent per video and frame set, not per record
    with pytest.raises(SystemExit) as info:  # the frame cache is for VSI-590K's videos only
        sft_vlm.main(["--output_dir", str(tmp_path / "x"), "--frame_cache_dir", str(tmp_path / "frames")])
    assert info.value.code == 2


def test_benchmark_runs_and_writes_its_json(bench, tmp_path):
    result = bench.main(["--quick", "--output", str(tmp_path / "vsi590k.json")])
    written = json.loads((tmp_path / "vsi590k.json").read_text())
    assert written["benchmark"] == "vsi590k" == result["benchmark"]
    small, large = written["disk"]["4"], written["disk"]["16"]
    assert small["frame_sets"] == large["frame_sets"] == 2
    assert small["frame_cache_bytes"] == large["frame_cache_bytes"] > 0
    assert small["latent_store_bytes"] == large["latent_store_bytes"] > 0
    assert large["eager_rows_bytes"] > large["rows_bytes"]
    assert set(written["records_per_second"]) == {"decode, 0 workers", "decode, 2 workers", "frame cache, 0 workers",
                                                   "frame cache, 2 workers"}  # fmt: skip
