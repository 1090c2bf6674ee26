"""Real-data scene sources (ScanNet / ScanNet++ folders): layout, laziness, cameras, errors."""

import json
import logging
import math
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from spa3_vlm.data.psfm import PSFMDataset
from spa3_vlm.data.scannet import (
    RECOMMENDED_INTERVALS,
    ConcatScenes,
    ScanNetScenes,
    camera_to_world_to_extrinsics,
    clear_index_cache,
    load_scannet_scenes,
    natural_sort_key,
    pretraining_image_processor,
    resized_intrinsics,
)
from spa3_vlm.processing_spa3r import Spa3RImageProcessor

SCANNET_K = np.array([[50.0, 0.0, 31.0], [0.0, 40.0, 23.0], [0.0, 0.0, 1.0]])


def rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def frame_c2w(frame: int) -> np.ndarray:
    """A distinct rigid camera-to-world pose per frame number."""
    pose = np.eye(4)
    pose[:3, :3] = rotation_z(7.0 * frame)
    pose[:3, 3] = [0.1 * frame, 2.0, 1.5]
    return pose


def write_image(path: Path, size=(64, 48), value=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = np.random.default_rng(zlib.crc32(path.name.encode())).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if value is not None:
        pixels[:] = value
    PIL.Image.fromarray(pixels).save(path)


def write_matrix(path: Path, matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join(f"{v:.9g}" for v in row) for row in matrix) + "\n")


def make_scannet_scene(root: Path, scene: str, frames: int, ext=".jpg", size=(64, 48), poses=True) -> Path:
    folder = root / scene
    for n in range(frames):
        write_image(folder / "color" / f"{n}{ext}", size)
        if poses:
            write_matrix(folder / "pose" / f"{n}.txt", frame_c2w(n))
    if poses:
        k4 = np.eye(4)
        k4[:3, :3] = SCANNET_K
        write_matrix(folder / "intrinsic" / "intrinsic_color.txt", k4)
    return folder


@pytest.fixture
def scannet_root(tmp_path) -> Path:
    root = tmp_path / "scannet"
    make_scannet_scene(root, "scene0000_00", 12, ".jpg")
    make_scannet_scene(root, "scene0001_00", 4, ".png")
    (root / "not_a_scene").mkdir()
    write_image(root / "not_a_scene" / "color" / "0.jpg")
    return root


NS_FLX, NS_FLY, NS_CX, NS_CY = 60.0, 61.0, 30.0, 25.0


def make_scannetpp(root: Path, train: dict, val: dict, with_cameras=("a1",)) -> Path:
    """ScanNet++ layout; ``train``/``val``: scene id -> DSLR frame numbers."""
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "nvs_sem_train.txt").write_text("\n".join(train) + "\n")
    (root / "splits" / "nvs_sem_val.txt").write_text("\n".join(val) + "\n")
    for scene, numbers in {**train, **val}.items():
        dslr = root / "data" / scene / "dslr"
        names = [f"DSC{n:05d}.JPG" for n in numbers]
        for name in names:
            write_image(dslr / "undistorted_images" / name, (72, 48))
        if scene in with_cameras:
            entries = [
                {"file_path": name, "transform_matrix": frame_c2w(n).tolist()} for name, n in zip(names, numbers)
            ]
            transforms = {
                "fl_x": NS_FLX, "fl_y": NS_FLY, "cx": NS_CX, "cy": NS_CY, "w": 72, "h": 48,
                "camera_model": "PINHOLE", "frames": entries[:-1], "test_frames": entries[-1:],
            }
            (dslr / "nerfstudio").mkdir(parents=True)
            (dslr / "nerfstudio" / "transforms_undistorted.json").write_text(json.dumps(transforms))
    return root


@pytest.fixture
def opened_images(monkeypatch):
    """Paths passed to PIL.Image.open from now on."""
    opened = []
    original = PIL.Image.open

    def spy(fp, *args, **kwargs):
        opened.append(os.fspath(fp))
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    return opened


# --------------------------------------------------------------------------------------------------
# Layout, ordering, sizes
# --------------------------------------------------------------------------------------------------


def test_scannet_scenes_order_and_sizes(scannet_root):
    scenes = ScanNetScenes(scannet_root)
    assert scenes.scene_ids == ["scene0000_00", "scene0001_00"]  # not_a_scene is ignored
    row = scenes[0]
    assert [Path(p).name for p in row["image_paths"]] == [f"{n}.jpg" for n in range(12)]  # 10 after 9
    assert len(row["images"]) == 12 and len(row["extrinsics"]) == 12 and len(row["intrinsics"]) == 12
    # The reference's pre-training transform: 64x48 -> 518 x int(48 * 518 / 64) = 518x388, rows centre-cropped
    # down to whole patches: 378 (27 rows; the VLM pipeline's rounding would give 392)
    image = row["images"][10]
    assert image.mode == "RGB" and image.size == (518, 378)
    assert scenes[1]["images"][-1].size == (518, 378)
    assert scenes[-1]["scene_id"] == "scene0001_00"
    with pytest.raises(IndexError, match="scene index 2 out of range for 2 scenes"):
        scenes[2]
    with pytest.raises(IndexError, match="frame index 12 out of range for scene scene0000_00 with 12 frames"):
        row["images"][12]


def test_frames_match_the_processor_output(scannet_root):
    row = ScanNetScenes(scannet_root)[0]
    expected = pretraining_image_processor().resize_frame(PIL.Image.open(scannet_root / "scene0000_00" / "color" / "3.jpg"))
    np.testing.assert_array_equal(np.asarray(row["images"][3]), np.asarray(expected))


def test_target_width_and_tall_images_are_cropped(tmp_path):
    root = tmp_path / "scannet"
    make_scannet_scene(root, "scene0000_00", 3, size=(48, 64))
    row = ScanNetScenes(root, target_width=252)[0]
    # 48x64 -> 252 x int(64 * 252 / 48) = 252x336, already whole patches
    assert row["images"][0].size == (252, 336)
    row = ScanNetScenes(root)[0]  # 518 x int(690.67) = 690 -> 686 rows (under the 1036-row cap)
    assert row["images"][0].size == (518, 686)


def test_natural_sort_key():
    names = ["10.jpg", "9.jpg", "100.png", "0.jpg", "DSC00010.JPG", "DSC00009.JPG"]
    expected = ["0.jpg", "9.jpg", "10.jpg", "100.png", "DSC00009.JPG", "DSC00010.JPG"]
    assert sorted(names, key=natural_sort_key) == expected


def test_scannet_split_list(scannet_root):
    (scannet_root / "scannetv2_val.txt").write_text("scene0001_00\n")
    assert ScanNetScenes(scannet_root, split="val").scene_ids == ["scene0001_00"]
    with pytest.raises(ValueError, match=r"ScanNet split 'train': no list file .*scannetv2_train\.txt"):
        ScanNetScenes(scannet_root, split="train")


# --------------------------------------------------------------------------------------------------
# Laziness and caching
# --------------------------------------------------------------------------------------------------


def test_rows_open_only_the_accessed_frames(scannet_root, opened_images):
    scenes = ScanNetScenes(scannet_root)
    opened_images.clear()
    row = scenes[0]
    assert opened_images == []  # building a row decodes nothing
    row["images"][7]
    assert [Path(p).name for p in opened_images] == ["7.jpg"]
    # Poses are read per frame too: frame 5 works although every other pose file is gone.
    for n in range(12):
        if n != 5:
            (scannet_root / "scene0000_00" / "pose" / f"{n}.txt").unlink()
    np.testing.assert_allclose(row["extrinsics"][5], np.linalg.inv(frame_c2w(5)), atol=1e-12)
    with pytest.raises(FileNotFoundError, match=r"pose file not found for frame 4\.jpg: .*scene0000_00/pose/4\.txt"):
        row["extrinsics"][4]


def test_psfm_sample_decodes_only_the_sampled_views(scannet_root, opened_images):
    scenes = ScanNetScenes(scannet_root)
    dataset = PSFMDataset(scenes, num_views=(2, 3), interval=RECOMMENDED_INTERVALS["scannet"], seed=3)
    opened_images.clear()
    sample = dataset[0]
    views = sample["pixel_values"].shape[0]
    assert views in (2, 3) and len(opened_images) == views
    assert sample["scene_id"] == "scene0000_00"
    assert sample["pixel_values"].shape == (views, 3, 378, 518) and sample["pixel_values"].dtype == torch.float32
    assert sample["extrinsics"].shape == (views, 4, 4) and sample["intrinsics"].shape == (views, 3, 3)
    torch.testing.assert_close(sample["extrinsics"][0], torch.eye(4), atol=1e-6, rtol=0)
    # Relative extrinsics of the decoded frames, frame numbers read back from the opened file names.
    frames = [int(Path(p).stem) for p in opened_images]
    assert frames == sorted(frames) and all(2 <= b - a <= 6 for a, b in zip(frames, frames[1:]))
    w2c = [np.linalg.inv(frame_c2w(n)) for n in frames]
    expected = np.stack([m @ np.linalg.inv(w2c[0]) for m in w2c])
    np.testing.assert_allclose(sample["extrinsics"].numpy(), expected, atol=1e-5)
    expected_k = np.array([[518 / 64, 0, 0], [0, 388 / 48, -5.0], [0, 0, 1]]) @ SCANNET_K  # 5 rows cropped on top
    np.testing.assert_allclose(sample["intrinsics"][1].numpy(), expected_k, rtol=1e-6)


def test_index_is_built_once_and_never_written_to_the_root(scannet_root, tmp_path, opened_images):
    before = sorted(p.relative_to(scannet_root) for p in scannet_root.rglob("*"))
    ScanNetScenes(scannet_root, rebuild_index=True)
    assert len(opened_images) == 2  # index time reads frame 0's header of each scene, nothing else
    opened_images.clear()
    again = ScanNetScenes(scannet_root)
    assert opened_images == [] and again.scene_ids == ["scene0000_00", "scene0001_00"]

    cache_dir = tmp_path / "index_cache"
    ScanNetScenes(scannet_root, cache_dir=cache_dir, rebuild_index=True)
    assert len(list(cache_dir.glob("scannet_index_*.json"))) == 1
    clear_index_cache()
    opened_images.clear()
    cached = ScanNetScenes(scannet_root, cache_dir=cache_dir)
    assert opened_images == []  # read from cache_dir, no rescanning
    assert cached.records == again.records
    # Rows are rebuilt in DataLoader workers from a pickled scene source.
    restored = pickle.loads(pickle.dumps(cached))
    np.testing.assert_array_equal(np.asarray(restored[1]["images"][2]), np.asarray(again[1]["images"][2]))
    assert sorted(p.relative_to(scannet_root) for p in scannet_root.rglob("*")) == before


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


def test_scannet_pose_is_inverted_camera_to_world(tmp_path):
    # c2w: 90 degrees about z, camera centre (1, 2, 3). w2c by hand: R^T and -R^T t.
    c2w = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=float)
    expected = np.array([[0, 1, 0, -2], [-1, 0, 0, 1], [0, 0, 1, -3], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(camera_to_world_to_extrinsics(c2w), expected, atol=1e-15)
    root = tmp_path / "scannet"
    make_scannet_scene(root, "scene0000_00", 2)
    write_matrix(root / "scene0000_00" / "pose" / "1.txt", c2w)
    np.testing.assert_allclose(ScanNetScenes(root)[0]["extrinsics"][1], expected, atol=1e-9)


def test_opengl_pose_is_converted_to_opencv():
    # Same c2w read with OpenGL axes: camera y and z flip, so R_cv = R @ diag(1, -1, -1).
    c2w = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=float)
    expected = np.array([[0, 1, 0, -2], [1, 0, 0, -1], [0, 0, -1, 3], [0, 0, 0, 1]], dtype=float)
    w2c = camera_to_world_to_extrinsics(c2w, opengl=True)
    np.testing.assert_allclose(w2c, expected, atol=1e-15)
    # An OpenGL camera looks down its -z: the world point 1 m along world -z from the centre is in front.
    assert (w2c @ [1, 2, 2, 1])[2] == pytest.approx(1.0)


def test_intrinsics_scaling_hand_computed():
    processor = Spa3RImageProcessor()
    k = np.array([[50.0, 0.0, 32.0], [0.0, 40.0, 24.0], [0.0, 0.0, 1.0]])
    # 64x48 -> 518x392: x scale 518/64 = 8.09375, y scale 392/48 = 8.1666..
    expected = np.array([[404.6875, 0.0, 259.0], [0.0, 326.6666666666667, 196.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(resized_intrinsics(k, (64, 48), processor), expected, rtol=1e-12)
    # 48x64 -> 518x686 then 84 rows cropped from the top: cy = 32 * 686 / 64 - 84 = 259
    tall = np.array([[50.0, 0.0, 24.0], [0.0, 40.0, 32.0], [0.0, 0.0, 1.0]])
    expected_tall = np.array([[50 * 518 / 48, 0.0, 259.0], [0.0, 40 * 686 / 64, 259.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(resized_intrinsics(tall, (48, 64), processor), expected_tall, rtol=1e-12)


def test_the_pretraining_transform_is_the_references_resize_and_crop():
    """The reference's PSFM transform (torchvision v2: resize to width 518, height int(518 h / w), bilinear with
    antialiasing on the uint8 image, then CenterCrop to whole patches), recomputed with torch's antialiased
    interpolation (the kernel torchvision calls): same size, pixels within one grey level (PIL rounds its own way)."""
    rng = np.random.default_rng(0)
    for width, height in ((640, 480), (1752, 1168), (500, 375)):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ours = np.asarray(pretraining_image_processor().resize_frame(PIL.Image.fromarray(pixels))).astype(int)
        new_height = int(518 * height / width)
        out_height = new_height // 14 * 14
        top = int(round((new_height - out_height) / 2.0))
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(pixels).permute(2, 0, 1)[None], size=(new_height, 518), mode="bilinear", antialias=True
        )[0, :, top : top + out_height]
        reference = resized.permute(1, 2, 0).numpy().astype(int)
        assert ours.shape == reference.shape == (out_height, 518, 3)
        assert np.abs(ours - reference).max() <= 1 and (ours != reference).mean() < 0.02
    assert [pretraining_image_processor().crop_box(w, h) for w, h in ((640, 480), (1752, 1168))] == [
        (0, 5, 518, 383), (0, 4, 518, 340),  # 388 -> 378 rows; 345 -> 336 rows (round(4.5) = 4, as torchvision)
    ]
    k = np.array([[50.0, 0.0, 32.0], [0.0, 40.0, 24.0], [0.0, 0.0, 1.0]])
    expected = np.array([[50 * 518 / 64, 0.0, 32 * 518 / 64], [0.0, 40 * 388 / 48, 24 * 388 / 48 - 5], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(resized_intrinsics(k, (64, 48), pretraining_image_processor()), expected, rtol=1e-12)


def project(k: np.ndarray, point: np.ndarray) -> np.ndarray:
    uvw = k @ point
    return uvw[:2] / uvw[2]


@pytest.mark.parametrize("size", [(64, 48), (48, 64)])
def test_projection_lands_on_the_same_image_content(tmp_path, size):
    """A bright block marks where a 3D point projects; after preprocessing, the adjusted intrinsics must
    project the point onto the block's new position (the resize scales x and y differently, and tall
    images are cropped)."""
    width, height = size
    k = np.array([[45.0, 0.0, width / 2], [0.0, 47.0, height / 2], [0.0, 0.0, 1.0]])
    # Block [x0, x0+6) x [y0, y0+6), centre (x0+3, y0+3) in continuous pixels; off-centre so that a wrong scale
    # shows, but inside the rows a tall image keeps after the crop.
    x0, y0 = width - 14, int(0.6 * height)
    u, v = x0 + 3.0, y0 + 3.0
    point = np.array([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], 1.0]) * 2.5
    np.testing.assert_allclose(project(k, point), [u, v])

    root = tmp_path / "scannet"
    make_scannet_scene(root, "scene0000_00", 1, ext=".png", size=size)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[y0 : y0 + 6, x0 : x0 + 6] = 255
    PIL.Image.fromarray(pixels).save(root / "scene0000_00" / "color" / "0.png")
    k4 = np.eye(4)
    k4[:3, :3] = k
    write_matrix(root / "scene0000_00" / "intrinsic" / "intrinsic_color.txt", k4)

    row = ScanNetScenes(root)[0]
    image = np.asarray(row["images"][0], dtype=np.float64).mean(-1)
    rows, cols = np.nonzero(image > 0.5 * image.max())
    weights = image[rows, cols]
    centroid = [np.average(cols + 0.5, weights=weights), np.average(rows + 0.5, weights=weights)]
    projected = project(row["intrinsics"][0], point)
    np.testing.assert_allclose(projected, centroid, atol=0.35)
    # Undo the crop: the same relative location in the old image and the resized one.
    new_w, new_h = pretraining_image_processor().output_size(width, height)
    left, top = pretraining_image_processor().crop_box(width, height)[:2]
    np.testing.assert_allclose((projected + [left, top]) / [new_w, new_h], [u / width, v / height], rtol=1e-12)


def test_scannetpp_layout_and_opengl_cameras(tmp_path):
    train, val = {"a1": [10, 9, 11, 100], "b2": [3, 4]}, {"c3": [1, 2, 3]}
    root = make_scannetpp(tmp_path / "scannetpp", train, val, with_cameras=("a1", "b2"))
    scenes = ScanNetScenes(root, layout="scannetpp")  # split defaults to "train"
    assert scenes.split == "train" and scenes.scene_ids == ["a1", "b2"]
    row = scenes[0]
    names = [Path(p).name for p in row["image_paths"]]
    assert names == ["DSC00009.JPG", "DSC00010.JPG", "DSC00011.JPG", "DSC00100.JPG"]
    assert row["images"][0].size == (518, 336)  # 72x48 -> 518 x int(345.33) = 345 -> 336 rows, 4 cropped on top
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    for position, number in enumerate([9, 10, 11, 100]):  # frame 100 is one of the json's test_frames
        np.testing.assert_allclose(row["extrinsics"][position], np.linalg.inv(frame_c2w(number) @ flip), atol=1e-12)
    k = np.array([[NS_FLX * 518 / 72, 0, NS_CX * 518 / 72], [0, NS_FLY * 345 / 48, NS_CY * 345 / 48 - 4], [0, 0, 1]])
    np.testing.assert_allclose(row["intrinsics"][2], k, rtol=1e-12)

    val = ScanNetScenes(root, layout="scannetpp", split="val")
    assert val.scene_ids == ["c3"] and not val.has_cameras
    assert val[0]["extrinsics"] is None and val[0]["intrinsics"] is None
    assert load_scannet_scenes(root, split="val").layout == "scannetpp"


def test_load_poses_false_gives_no_cameras(scannet_root):
    row = ScanNetScenes(scannet_root, load_poses=False)[0]
    assert row["extrinsics"] is None and row["intrinsics"] is None and len(row["images"]) == 12


def test_concat_scenes_and_per_source_intervals(scannet_root, tmp_path):
    root_pp = make_scannetpp(tmp_path / "scannetpp", {"a1": list(range(0, 200, 4))}, {}, ("a1",))
    scannet = load_scannet_scenes(scannet_root)
    scannetpp = load_scannet_scenes(root_pp)
    assert (scannet.layout, scannetpp.layout) == ("scannet", "scannetpp")
    both = ConcatScenes([scannet, scannetpp])
    assert len(both) == 3
    assert [both[i]["scene_id"] for i in range(3)] == ["scene0000_00", "scene0001_00", "a1"]
    assert both[-1]["scene_id"] == "a1"
    with pytest.raises(IndexError, match="scene index 3 out of range for 3 scenes"):
        both[3]
    with pytest.raises(ValueError, match="at least one scene source"):
        ConcatScenes([])
    # The documented recipe: one PSFMDataset per source, each with its own interval.
    train_set = torch.utils.data.ConcatDataset([
        PSFMDataset(scannet, num_views=(2, 3), interval=RECOMMENDED_INTERVALS["scannet"]),
        PSFMDataset(scannetpp, num_views=(2, 3), interval=RECOMMENDED_INTERVALS["scannetpp"]),
    ])
    assert len(train_set) == 3
    assert train_set[2]["pixel_values"].shape[-2:] == (336, 518)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_root_without_scenes(tmp_path):
    (tmp_path / "empty" / "other").mkdir(parents=True)
    message = r"no scenes in .*empty: no folder named scene\* \(expected layout <root>/scene\*/color"
    with pytest.raises(ValueError, match=message):
        ScanNetScenes(tmp_path / "empty")
    message = r"ScanNet\+\+ split file not found: .*splits/nvs_sem_train\.txt .*undistorted_images"
    with pytest.raises(ValueError, match=message):
        ScanNetScenes(tmp_path / "empty", layout="scannetpp")
    with pytest.raises(FileNotFoundError, match=r"scannet root folder not found: .*missing"):
        ScanNetScenes(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"layout must be one of \('scannet', 'scannetpp'\), got 'arkit'"):
        ScanNetScenes(tmp_path / "empty", layout="arkit")
    with pytest.raises(ValueError, match=r"load_poses must be 'auto', True or False, got 'yes'"):
        ScanNetScenes(tmp_path / "empty", load_poses="yes")


def test_missing_and_corrupt_frames_name_the_file(scannet_root):
    row = ScanNetScenes(scannet_root)[0]
    (scannet_root / "scene0000_00" / "color" / "4.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"scene scene0000_00: frame file not found: .*color/4\.jpg"):
        row["images"][4]
    (scannet_root / "scene0000_00" / "color" / "6.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match=r"scene scene0000_00: cannot decode image file .*color/6\.jpg"):
        row["images"][6]
    # A corrupt first frame is found while indexing.
    (scannet_root / "scene0001_00" / "color" / "0.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"scene scene0001_00: cannot read image file .*color/0\.png"):
        ScanNetScenes(scannet_root, rebuild_index=True)


def test_scene_without_frames_and_skip_bad_scenes(scannet_root, caplog):
    (scannet_root / "scene0002_00" / "color").mkdir(parents=True)
    (scannet_root / "scene0003_00").mkdir()
    message = r"scene scene0002_00 has no frames \(\.jpg/\.jpeg/\.png files\) in .*scene0002_00/color"
    with pytest.raises(ValueError, match=message):
        ScanNetScenes(scannet_root)
    with caplog.at_level(logging.WARNING, logger="spa3_vlm.data.scannet"):
        scenes = ScanNetScenes(scannet_root, skip_bad_scenes=True)
    assert scenes.scene_ids == ["scene0000_00", "scene0001_00"]
    assert sorted(scenes.skipped_scenes) == ["scene0002_00", "scene0003_00"]
    assert "cannot list its frame folder" in scenes.skipped_scenes["scene0003_00"]
    assert "skipped 2 of 4 scenes that failed validation" in caplog.text


def test_everything_skipped_is_an_error(tmp_path):
    (tmp_path / "root" / "scene0000_00" / "color").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no usable scenes in .*root \(layout 'scannet'.*1 skipped"):
        ScanNetScenes(tmp_path / "root", skip_bad_scenes=True)


def test_mixed_image_sizes_name_scene_and_sizes(scannet_root):
    write_image(scannet_root / "scene0000_00" / "color" / "5.jpg", (80, 48))
    row = ScanNetScenes(scannet_root)[0]
    row["images"][4]
    message = r"scene scene0000_00 mixes image sizes: frame 0 \(.*/0\.jpg\) is 64x48 but frame 5 \(.*/5\.jpg\) is 80x48"
    with pytest.raises(ValueError, match=message):
        row["images"][5]


@pytest.mark.parametrize("bad", ["nan", "-inf"])
def test_non_finite_pose_names_scene_and_frame(scannet_root, bad):
    pose = frame_c2w(3).astype(object)
    pose[0, 3] = bad
    (scannet_root / "scene0000_00" / "pose" / "3.txt").write_text("\n".join(" ".join(str(v) for v in r) for r in pose))
    scenes = ScanNetScenes(scannet_root)
    message = r"scene scene0000_00 frame 3\.jpg \(.*pose/3\.txt\): camera pose has NaN or infinite"
    with pytest.raises(ValueError, match=message):
        scenes[0]["extrinsics"][3]
    # Opt-in: drop such frames at index time, logged and listed.
    kept = ScanNetScenes(scannet_root, skip_bad_frames=True)
    assert kept.skipped_frames == {"scene0000_00": ["3.jpg"]}
    assert [Path(p).name for p in kept[0]["image_paths"]] == [f"{n}.jpg" for n in range(12) if n != 3]


def test_non_rigid_pose_is_an_error(scannet_root):
    pose = frame_c2w(2)
    pose[:3, :3] *= 2.0
    write_matrix(scannet_root / "scene0000_00" / "pose" / "2.txt", pose)
    with pytest.raises(ValueError, match=r"scene scene0000_00 frame 2\.jpg .*pose is not rigid"):
        ScanNetScenes(scannet_root)[0]["extrinsics"][2]


def test_missing_pose_file_is_named(scannet_root):
    (scannet_root / "scene0001_00" / "pose" / "2.txt").unlink()
    message = r"scene scene0001_00: no pose for 1 of 4 frames, first missing: .*scene0001_00/pose/2\.txt"
    with pytest.raises(ValueError, match=message):
        ScanNetScenes(scannet_root)
    assert ScanNetScenes(scannet_root, skip_bad_scenes=True).scene_ids == ["scene0000_00"]


def test_cameras_in_some_scenes_only(scannet_root, tmp_path):
    make_scannet_scene(scannet_root, "scene0002_00", 3, poses=False)
    with pytest.raises(ValueError, match=r"2 scenes have cameras but 1 do not \(e.g. \['scene0002_00'\]\)"):
        ScanNetScenes(scannet_root)
    with pytest.raises(ValueError, match=r"scene scene0002_00 has no cameras \(a pose/ folder\) but load_poses=True"):
        ScanNetScenes(scannet_root, load_poses=True)
    with_cameras = ScanNetScenes(scannet_root, load_poses=True, skip_bad_scenes=True)
    assert with_cameras.scene_ids == ["scene0000_00", "scene0001_00"]
    assert "scene scene0002_00 has no cameras" in with_cameras.skipped_scenes["scene0002_00"]
    (scannet_root / "scene0000_00" / "intrinsic" / "intrinsic_color.txt").unlink()
    with pytest.raises(ValueError, match=r"scene scene0000_00: intrinsics file not found: .*intrinsic_color\.txt"):
        ScanNetScenes(scannet_root, load_poses=True)


def test_scannetpp_image_without_pose_is_named(tmp_path):
    root = make_scannetpp(tmp_path / "scannetpp", {"a1": [1, 2, 3]}, {}, ("a1",))
    write_image(root / "data" / "a1" / "dslr" / "undistorted_images" / "DSC00004.JPG", (72, 48))
    message = r"scene a1: no pose for 1 of 4 frames, first missing: DSC00004\.JPG in .*transforms_undistorted\.json"
    with pytest.raises(ValueError, match=message):
        ScanNetScenes(root, layout="scannetpp")
    (root / "splits" / "nvs_sem_train.txt").write_text("a1\nzz9\n")
    with pytest.raises(ValueError, match=r"scene zz9: cannot list its frame folder .*data/zz9/dslr/undistorted_images"):
        ScanNetScenes(root, layout="scannetpp", skip_bad_frames=True)


def test_psfm_dataset_rejects_short_scenes_from_the_loader(scannet_root):
    dataset = PSFMDataset(ScanNetScenes(scannet_root), num_views=(5, 5))
    with pytest.raises(ValueError, match="scene scene0001_00 has 4 frames, fewer than the 5 views requested"):
        dataset[1]


def test_training_script_skips_bad_scenes_only_when_asked(scannet_root, caplog):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train"))
    try:
        import pretrain_psfm
    finally:
        sys.path.pop(0)
    (scannet_root / "scene0002_00" / "color").mkdir(parents=True)
    strict = pretrain_psfm.DataArguments(dataset="scannet", data_root=str(scannet_root))
    with pytest.raises(ValueError, match="scene scene0002_00 has no frames"):
        pretrain_psfm.build_scenes(strict, "train", 0)
    lenient = pretrain_psfm.DataArguments(dataset="scannet", data_root=str(scannet_root), skip_bad_scenes=True)
    with caplog.at_level(logging.WARNING, logger="spa3_vlm.data.scannet"):
        scenes = pretrain_psfm.build_scenes(lenient, "train", 0)
    assert scenes.scene_ids == ["scene0000_00", "scene0001_00"]
    assert "skipped 1 of 3 scenes that failed validation" in caplog.text


def test_the_reference_recipe_mixes_scannet_and_scannetpp_and_trains(tmp_path):
    """hub_configs/spa3r-base/pretrain_reference.json with the data roots pointed at tiny ScanNet and ScanNet++
    folders: one PSFMDataset per source with the reference's frame steps (2-6 and 20-60), joined; batches mix
    518x378 and 518x336 frames, centre-cropped to the smaller as the reference's collate does; the Trainer built from
    the recipe's arguments takes a step."""
    import json
    import sys

    from transformers import AutoConfig, HfArgumentParser, TrainingArguments

    from spa3_vlm import Spa3RForFieldPrediction
    from spa3_vlm.data.psfm import PSFMCollator
    from spa3_vlm.training.psfm import PSFMTrainer

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "train"))
    try:
        import pretrain_psfm
    finally:
        sys.path.pop(0)
    scannet = tmp_path / "scannet"
    make_scannet_scene(scannet, "scene0000_00", 16)
    scannetpp = make_scannetpp(tmp_path / "scannetpp", {"a1": list(range(0, 400, 5))}, {}, with_cameras=("a1",))
    recipe = json.loads((repo / "hub_configs" / "spa3r-base" / "pretrain_reference.json").read_text())
    recipe.update(data_root=f"{scannet},{scannetpp}", bf16=False, output_dir=str(tmp_path / "run"), use_cpu=True,
                  max_steps=1, min_views=2, max_views=3, dataloader_num_workers=0)  # fmt: skip
    parser = HfArgumentParser((pretrain_psfm.ModelArguments, pretrain_psfm.DataArguments, pretrain_psfm.OptimizerArguments, TrainingArguments))
    _, data_args, _, training_args = parser.parse_dict(recipe)
    assert pretrain_psfm.flag_problems(data_args, pretrain_psfm.OptimizerArguments(), training_args) == []

    train_set = pretrain_psfm.build_train_dataset(data_args, seed=0)
    assert isinstance(train_set, torch.utils.data.ConcatDataset)
    assert train_set[(len(train_set) - 1, 2)]["pixel_values"].shape[0] == 2  # the sampler's (index, views) form
    assert [d.interval for d in train_set.datasets] == [(2, 6), (20, 60)]
    sizes = {tuple(train_set[i]["pixel_values"].shape[-2:]) for i in range(len(train_set))}
    assert sizes == {(378, 518), (336, 518)}  # ScanNet 64x48 frames, ScanNet++ 72x48 frames
    batch = PSFMCollator(14)([train_set[0], train_set[len(train_set) - 1]])
    assert batch["pixel_values"].shape[-2:] == (336, 518)

    config = AutoConfig.from_pretrained(repo / "hub_configs" / "spa3r-tiny-synthrooms", semantic_teacher_config=None,
                                        semantic_teacher_name_or_path=None, target_heads={"geo": 128}, use_depth_probe=False,
                                        loss_weights=None, smooth_l1_beta=None, depth_probe_target="backbone")  # fmt: skip
    trainer = PSFMTrainer(model=Spa3RForFieldPrediction(config), args=training_args, train_dataset=train_set,
                          data_collator=PSFMCollator(14, seed=0), images_per_batch=data_args.images_per_batch)  # fmt: skip
    for batch in trainer.get_train_dataloader():  # 16 samples (2 scenes x 8 view sets): 24 // V of them per batch
        assert batch["pixel_values"].shape[0] == 24 // batch["pixel_values"].shape[1]
    trainer.train()
    assert trainer.state.global_step == 1 and type(trainer.optimizer.optimizer) is torch.optim.AdamW
    # The recipe's cosine_with_min_lr over this run's one step ends at its min_lr (a plain cosine would reach 0).
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(recipe["lr_scheduler_kwargs"]["min_lr"])


@pytest.mark.parametrize(
    "dataset, data_root, message",
    [
        ("scannet,imagenet", "a,b", "--dataset must be synthrooms, scannet, scannetpp or a comma-separated mix"),
        ("synthrooms,scannet", "a", "--dataset mixes real sources only"),
        ("scannet,scannet", "a,b", "--dataset must be synthrooms, scannet, scannetpp or a comma-separated mix"),
        ("scannet,scannetpp", "ONE", "needs --data_root, an existing folder per source"),
    ],
)
def test_a_bad_data_mix_is_refused_before_any_work(tmp_path, dataset, data_root, message):
    import sys

    from transformers import TrainingArguments

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    try:
        import pretrain_psfm
    finally:
        sys.path.pop(0)
    (tmp_path / "ONE").mkdir()
    data = pretrain_psfm.DataArguments(dataset=dataset, data_root=str(tmp_path / data_root) if data_root == "ONE" else data_root)
    problems = pretrain_psfm.flag_problems(data, pretrain_psfm.OptimizerArguments(), TrainingArguments(output_dir=str(tmp_path)))
    assert any(message in problem for problem in problems), problems
