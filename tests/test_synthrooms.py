"""SynthRooms: determinism, layout validity, exact depth, camera conventions and the datasets round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spa3_vlm.data import (
    CATEGORIES,
    Light,
    Scene,
    SynthRoomsConfig,
    generate_scene,
    intrinsics_from_fov,
    load_synthrooms,
    look_extrinsics,
    make_object,
    points_to_first_camera,
    project_points,
    render,
    render_scene_frames,
    scene_seed,
)
from spa3_vlm.modeling_geometry import relative_to_first

TINY = (84, 112)
ODD = (49, 65)  # odd sizes: the centre pixel's ray is exactly the optical axis


def _hand_scene(objects=(), room=(5.0, 10.0, 3.0), center=(1.0, 5.0, 1.5), yaw=0.0, pitch=0.0, roll=0.0, image_size=ODD, hfov=60.0):
    extrinsics = look_extrinsics(np.array(center), yaw, pitch, roll)[None]
    intrinsics = intrinsics_from_fov(hfov, image_size)[None]
    return Scene(
        seed=-1,
        room_size=room,
        objects=tuple(objects),
        extrinsics=extrinsics,
        intrinsics=intrinsics,
        image_size=image_size,
        hfov_deg=hfov,
        light=Light((room[0] / 2, room[1] / 2, room[2] - 0.2)),
    )


def _unproject(depth, extrinsics, intrinsics):
    """World points ``[H, W, 3]`` of pixel centres at the given z-depth (float64, independent of the renderer)."""
    height, width = depth.shape
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    cam = np.stack([(u - intrinsics[0, 2]) / intrinsics[0, 0], (v - intrinsics[1, 2]) / intrinsics[1, 1], np.ones_like(u)], -1)
    cam = cam * depth[..., None].astype(np.float64)
    rotation, translation = extrinsics[:3, :3], extrinsics[:3, 3]
    return (cam - translation) @ rotation  # R^T (x - t)


def _analytic_room_depth(extrinsics, intrinsics, image_size, room):
    """z-depth of the inside of an empty box room: nearest positive plane crossing of each pixel ray."""
    height, width = image_size
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    cam = np.stack([(u - intrinsics[0, 2]) / intrinsics[0, 0], (v - intrinsics[1, 2]) / intrinsics[1, 1], np.ones_like(u)], -1)
    rotation = extrinsics[:3, :3]
    origin = -rotation.T @ extrinsics[:3, 3]
    world = cam @ rotation
    best = np.full(u.shape, np.inf)
    for axis in range(3):
        for plane in (0.0, room[axis]):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (plane - origin[axis]) / world[..., axis]
            best = np.where((t > 0) & (t < best), t, best)
    return best


@pytest.fixture(scope="module")
def scenes():
    config = SynthRoomsConfig(frames_per_scene=6, image_size=TINY)
    return [generate_scene(seed, config) for seed in range(12)]


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def test_same_seed_same_scene_and_pixels_different_seed_differs():
    config = SynthRoomsConfig(frames_per_scene=3, image_size=TINY)
    a, b, c = generate_scene(7, config), generate_scene(7, config), generate_scene(8, config)
    assert a.objects == b.objects and a.room_size == b.room_size and a.style == b.style
    np.testing.assert_array_equal(a.extrinsics, b.extrinsics)
    frames_a, frames_b, frames_c = render_scene_frames(a), render_scene_frames(b), render_scene_frames(c)
    for key in ("rgb", "depth", "instance"):
        np.testing.assert_array_equal(frames_a[key], frames_b[key])
    assert a.room_size != c.room_size
    assert not np.array_equal(frames_a["rgb"], frames_c["rgb"])
    assert not np.array_equal(frames_a["depth"], frames_c["depth"])


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def _to_object_frame(points_xy, obj):
    rel = points_xy - np.asarray(obj.center[:2])
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    return np.stack([rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c], -1)


def _inside_footprint(points_xy, obj):
    local = _to_object_frame(points_xy, obj)
    return (np.abs(local) < np.asarray(obj.size[:2]) / 2).all(-1)


def _footprint_samples(obj, n=15):
    """Points on a grid covering the footprint rectangle, edges included."""
    gx, gy = np.meshgrid(np.linspace(-0.5, 0.5, n), np.linspace(-0.5, 0.5, n))
    local = np.stack([gx.ravel() * obj.size[0], gy.ravel() * obj.size[1]], -1)
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    return local @ np.array([[c, s], [-s, c]]) + np.asarray(obj.center[:2])


def test_objects_inside_room_not_overlapping_and_on_the_floor():
    config = SynthRoomsConfig(frames_per_scene=2, image_size=TINY)
    counts = []
    for seed in range(40):
        scene = generate_scene(seed, config)
        w, d, h = scene.room_size
        assert 3.0 <= w <= 10.0 and 3.0 <= d <= 10.0 and 2.4 <= h <= 3.2
        counts.append(len(scene.objects))
        for k, obj in enumerate(scene.objects):
            assert obj.category in CATEGORIES
            assert math.isclose(obj.center[2], obj.size[2] / 2)  # stands on the floor
            assert obj.size[2] < h
            samples = _footprint_samples(obj)
            assert (samples >= -1e-9).all() and (samples[:, 0] <= w + 1e-9).all() and (samples[:, 1] <= d + 1e-9).all()
            for other in scene.objects[k + 1 :]:
                assert not _inside_footprint(samples, other).any(), f"seed {seed}: {obj.category} overlaps {other.category}"
                assert not _inside_footprint(_footprint_samples(other), obj).any()
    assert min(counts) >= 3 and max(counts) <= 12 and len(set(counts)) > 4


def test_parts_lie_within_their_object_bounding_box(scenes):
    for scene in scenes:
        for obj in scene.objects:
            assert obj.shape == ("composite" if len(obj.parts) > 1 else obj.parts[0].shape)
            for part in obj.parts:
                corners = np.array(np.meshgrid(*[[-0.5, 0.5]] * 3)).reshape(3, -1).T * np.asarray(part.size)
                c, s = math.cos(part.yaw - obj.yaw), math.sin(part.yaw - obj.yaw)
                rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
                offset = np.asarray(part.center) - np.asarray(obj.center)
                co, so = math.cos(obj.yaw), math.sin(obj.yaw)
                offset_local = np.array([co * offset[0] + so * offset[1], -so * offset[0] + co * offset[1], offset[2]])
                local = corners @ rot.T + offset_local
                assert (np.abs(local) <= np.asarray(obj.size) / 2 + 1e-6).all()


def test_camera_walk_is_rigid_inside_the_room_and_away_from_objects(scenes):
    for scene in scenes:
        rotation = scene.extrinsics[:, :3, :3]
        np.testing.assert_allclose(rotation @ rotation.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rotation.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-12)
        np.testing.assert_array_equal(scene.extrinsics[:, 3], np.broadcast_to([0, 0, 0, 1], (scene.num_frames, 4)))
        centers = scene.camera_centers
        assert (centers[:, :2] > 0.5).all() and (centers[:, :2] < np.asarray(scene.room_size[:2]) - 0.5).all()
        assert (centers[:, 2] > 1.35).all() and (centers[:, 2] < 1.75).all()
        for obj in scene.objects:
            local = _to_object_frame(centers[:, :2], obj)
            gap = np.linalg.norm(np.maximum(np.abs(local) - np.asarray(obj.size[:2]) / 2, 0.0), axis=-1)
            assert (gap > 0.4).all(), f"camera {gap.min():.2f} m from a {obj.category}"
        # OpenCV axes: the camera's y (down) points roughly to world -z, hand-held tilt only.
        down_in_world = rotation[:, 1, :]
        assert (down_in_world[:, 2] < -0.85).all()
        # Smooth walk: small steps between consecutive frames.
        assert (np.linalg.norm(np.diff(centers, axis=0), axis=1) < 1.0).all()
        forward = rotation[:, 2, :2] / np.linalg.norm(rotation[:, 2, :2], axis=1, keepdims=True)
        assert ((forward[1:] * forward[:-1]).sum(-1) > math.cos(math.radians(40))).all()


def test_intrinsics_are_centred_pixels_and_rescale():
    scene = generate_scene(3, SynthRoomsConfig(frames_per_scene=2, image_size=(392, 518)))
    K = scene.intrinsics[0]
    assert K[0, 2] == 259.0 and K[1, 2] == 196.0 and K[0, 0] == K[1, 1]
    np.testing.assert_allclose(2 * math.degrees(math.atan(259.0 / K[0, 0])), scene.hfov_deg)
    small = scene.intrinsics_at(TINY)[0]
    np.testing.assert_allclose(small, np.diag([112 / 518, 84 / 392, 1.0]) @ K)
    assert small[0, 2] == 56.0 and small[1, 2] == 42.0


# --------------------------------------------------------------------------------------------------
# Ray caster: exact depth
# --------------------------------------------------------------------------------------------------


def test_fronto_parallel_wall_has_constant_z_depth_not_ray_length():
    # Camera 4 m from the x = 5 wall, looking along +x: every wall pixel is at z-depth 4.
    scene = _hand_scene(center=(1.0, 5.0, 1.5), image_size=ODD, hfov=60.0)
    out = render(scene, scene.extrinsics[0], scene.intrinsics[0], ODD)
    assert out["depth"].shape == ODD and out["rgb"].shape == (*ODD, 3) and out["instance"].shape == ODD
    assert out["depth"][24, 32] == pytest.approx(4.0, abs=1e-5)
    # Rows 10..38 see only the wall (the floor/ceiling enter near the top and bottom edges).
    np.testing.assert_allclose(out["depth"][10:39], 4.0, atol=1e-5)
    assert (out["instance"] == 0).all()


@pytest.mark.parametrize("pose", [(0.0, 0.0, 0.0), (0.7, -0.3, 0.1), (-2.5, 0.25, -0.05), (1.9, -0.6, 0.0)])
def test_empty_room_depth_matches_analytic_box(pose):
    yaw, pitch, roll = pose
    room = (4.0, 6.5, 2.7)
    scene = _hand_scene(room=room, center=(1.3, 2.2, 1.55), yaw=yaw, pitch=pitch, roll=roll, image_size=(30, 44))
    out = render(scene)
    expected = _analytic_room_depth(scene.extrinsics[0], scene.intrinsics[0], (30, 44), room)
    np.testing.assert_allclose(out["depth"][0], expected, rtol=2e-6, atol=2e-6)


BOX = ("box", (0.0, 0.0, 0.5), (1.0, 1.0, 1.0), (0.8, 0.2, 0.2), "plain")


@pytest.mark.parametrize(
    "parts, yaw, expected",
    [
        ([BOX], 0.0, 1.5),  # front face at x = 2.5
        ([BOX], math.pi / 4, 2.0 - math.sqrt(0.5)),  # vertical edge at x = 3 - sqrt(2) / 2
        ([("cylinder", (0.0, 0.0, 0.5), (1.0, 1.0, 1.0), (0.2, 0.6, 0.2), "plain")], 0.3, 1.5),
        ([("sphere", (0.0, 0.0, 0.5), (1.0, 1.0, 1.0), (0.2, 0.2, 0.8), "plain")], 0.0, 1.5),
    ],
)
def test_primitive_depth_at_the_optical_axis(parts, yaw, expected):
    obj = make_object("thing", parts, (3.0, 5.0), yaw)
    scene = _hand_scene(objects=[obj], center=(1.0, 5.0, 0.5))
    out = render(scene)
    assert out["depth"][0, 24, 32] == pytest.approx(expected, abs=1e-5)
    assert out["instance"][0, 24, 32] == 1
    assert (out["instance"][0] == 0).sum() > 0  # the room is visible around it


def test_box_face_depth_is_flat_and_box_top_seen_from_above():
    obj = make_object("crate", [("box", (0.0, 0.0, 0.4), (0.8, 1.2, 0.8), (0.5, 0.4, 0.3), "plain")], (3.0, 5.0), 0.0)
    scene = _hand_scene(objects=[obj], center=(1.0, 5.0, 0.4))
    out = render(scene)
    face = out["instance"][0] == 1
    # Front face at x = 2.6: every box pixel is on it (the camera is level with the box centre).
    np.testing.assert_allclose(out["depth"][0][face], 1.6, atol=1e-5)
    # Its image footprint is the projection of a 1.2 x 0.8 rectangle at 1.6 m.
    focal = scene.intrinsics[0, 0, 0]
    cols = np.where(face.any(0))[0]
    rows = np.where(face.any(1))[0]
    assert abs(len(cols) - 1.2 * focal / 1.6) <= 1.0 and abs(len(rows) - 0.8 * focal / 1.6) <= 1.0
    # Looking straight down at the box top (z = 0.8) from 1.5 m: depth 0.7 at the centre.
    above = _hand_scene(objects=[obj], center=(3.0, 5.0, 1.5), yaw=0.0, pitch=-math.pi / 2 + 1e-9)
    top = render(above)
    assert top["depth"][0, 24, 32] == pytest.approx(0.7, abs=1e-5) and top["instance"][0, 24, 32] == 1


def test_any_image_size_renders():
    scene = generate_scene(4, SynthRoomsConfig(frames_per_scene=2, image_size=TINY))
    for size in [(1, 1), (7, 5), (13, 29)]:
        out = render(scene, image_size=size)
        assert out["rgb"].shape == (2, *size, 3) and out["depth"].shape == (2, *size)
        assert out["rgb"].dtype == np.float32 and 0.0 <= out["rgb"].min() and out["rgb"].max() <= 1.0
        assert (out["depth"] > 0).all() and np.isfinite(out["depth"]).all()
    # A single 1x1 pixel equals the centre of an odd-sized render: same central ray.
    one = render(scene, image_size=(1, 1))["depth"][:, 0, 0]
    odd = render(scene, image_size=(9, 11))["depth"][:, 4, 5]
    np.testing.assert_allclose(one, odd, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Cameras, depth and instances agree
# --------------------------------------------------------------------------------------------------


def test_unprojected_pixels_land_on_their_instance(scenes):
    for scene in scenes[:6]:
        frames = render_scene_frames(scene)
        room = np.asarray(scene.room_size)
        for v in range(scene.num_frames):
            points = _unproject(frames["depth"][v], scene.extrinsics[v], frames["intrinsics"][v])
            instance = frames["instance"][v]
            shell = points[instance == 0]
            assert (shell > -1e-3).all() and (shell < room + 1e-3).all()
            to_wall = np.minimum(np.abs(shell), np.abs(shell - room)).min(-1)
            assert (to_wall < 1e-3).all()
            for k, obj in enumerate(scene.objects, start=1):
                pts = points[instance == k]
                if not len(pts):
                    continue
                rel = pts - np.asarray(obj.center)
                c, s = math.cos(obj.yaw), math.sin(obj.yaw)
                local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], -1)
                assert (np.abs(local) <= np.asarray(obj.size) / 2 + 1e-3).all()
            assert frames["visible_objects"][v] == sorted(set(np.unique(instance).tolist()) - {0})


def test_projected_part_centres_hit_their_object_unless_occluded(scenes):
    hits = 0
    for scene in scenes:
        frames = render_scene_frames(scene)
        height, width = scene.image_size
        for k, obj in enumerate(scene.objects, start=1):
            centers = np.array([part.center for part in obj.parts])
            inner_radius = np.array([min(part.size) / 2 for part in obj.parts])
            pixels, z = project_points(centers, scene.extrinsics, frames["intrinsics"])
            focal = frames["intrinsics"][0, 0, 0]
            for v in range(scene.num_frames):
                for (x, y), depth, radius in zip(pixels[v], z[v], inner_radius):
                    col, row = int(math.floor(x)), int(math.floor(y))
                    # The pixel-centre ray passes within 0.71 px of the projected centre: keep parts thick
                    # enough that it still crosses the part's inscribed sphere at the centre's depth.
                    if depth <= 0 or radius <= depth / focal or not (0 <= col < width and 0 <= row < height):
                        continue
                    seen, seen_depth = frames["instance"][v, row, col], frames["depth"][v, row, col]
                    # So the surface seen there is in front of the centre.
                    assert seen_depth <= depth + 1e-4
                    if seen == k:
                        hits += 1
                    else:
                        assert seen != 0, "a room surface cannot hide an object inside the room"
    assert hits > 50


def test_relative_to_first_frame_is_identity_and_preserves_projection(scenes):
    scene = scenes[0]
    relative = relative_to_first(scene.extrinsics)
    np.testing.assert_allclose(relative[0], np.eye(4), atol=1e-12)
    rotation = relative[:, :3, :3]
    np.testing.assert_allclose(rotation @ rotation.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rotation.shape), atol=1e-12)
    world = np.array([obj.center for obj in scene.objects])
    in_first = points_to_first_camera(world, scene.extrinsics)
    pix_world, z_world = project_points(world, scene.extrinsics, scene.intrinsics)
    pix_rel, z_rel = project_points(in_first, relative, scene.intrinsics)
    np.testing.assert_allclose(pix_rel, pix_world, atol=1e-8)
    np.testing.assert_allclose(z_rel, z_world, atol=1e-10)
    # Torch tensors and a leading batch dimension work the same way.
    batch = torch.as_tensor(np.stack([scene.extrinsics, scenes[1].extrinsics]))
    relative_t = relative_to_first(batch)
    np.testing.assert_allclose(relative_t[0].numpy(), relative, atol=1e-12)
    np.testing.assert_allclose(relative_t[:, 0].numpy(), np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-12)


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    return load_synthrooms(num_scenes=2, frames_per_scene=3, image_size=TINY, seed=5, split="train", cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_dataset_rows_reproduce_the_scene_from_its_seed(train_set):
    assert len(train_set) == 2 and train_set.split == "train"
    row = train_set[1]
    assert row["scene_id"] == "train-00001" and row["height"] == 84 and row["width"] == 112
    assert row["seed"] == scene_seed(5, "train", 1)
    scene = generate_scene(row["seed"], SynthRoomsConfig(frames_per_scene=3, image_size=TINY))
    frames = render_scene_frames(scene)
    images = np.stack([np.asarray(img) for img in row["images"]])
    np.testing.assert_array_equal(images, np.round(frames["rgb"] * 255).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(row["depths"], dtype=np.float32), frames["depth"])
    np.testing.assert_array_equal(np.asarray(row["instances"]), frames["instance"])
    np.testing.assert_allclose(np.asarray(row["extrinsics"]), scene.extrinsics, atol=1e-5)
    np.testing.assert_allclose(np.asarray(row["intrinsics"]), scene.intrinsics, rtol=1e-6)
    assert row["visible_objects"] == frames["visible_objects"]
    assert [o["id"] for o in row["objects"]] == list(range(1, len(scene.objects) + 1))
    first = row["objects"][0]
    assert first["category"] == scene.objects[0].category and first["shape"] == scene.objects[0].shape
    np.testing.assert_allclose(first["center"], scene.objects[0].center, rtol=1e-6)
    np.testing.assert_allclose(first["size"], scene.objects[0].size, rtol=1e-6)
    np.testing.assert_allclose(row["room_size"], scene.room_size, rtol=1e-6)


def test_dataset_save_load_round_trip(train_set, tmp_path):
    from datasets import load_from_disk

    train_set.save_to_disk(str(tmp_path / "synthrooms"))
    loaded = load_from_disk(str(tmp_path / "synthrooms"))
    assert loaded.features == train_set.features
    for original, reloaded in zip(train_set.with_format("numpy"), loaded.with_format("numpy")):
        for key in ("images", "depths", "instances", "extrinsics", "intrinsics"):
            np.testing.assert_array_equal(np.stack(list(original[key])), np.stack(list(reloaded[key])))
    assert train_set.remove_columns(["images", "depths", "instances"]).to_list() == loaded.remove_columns(["images", "depths", "instances"]).to_list()


def test_train_and_test_splits_are_disjoint(train_set, tmp_path):
    test_set = load_synthrooms(num_scenes=2, frames_per_scene=3, image_size=TINY, seed=5, split="test", cache_dir=str(tmp_path))
    assert not set(train_set["seed"]) & set(test_set["seed"])
    assert test_set[0]["scene_id"] == "test-00000"
    assert train_set[0]["room_size"] != test_set[0]["room_size"]
    train_seeds = {scene_seed(5, "train", i) for i in range(500)}
    assert len(train_seeds) == 500 and not train_seeds & {scene_seed(5, "test", i) for i in range(500)}
    assert scene_seed(6, "train", 0) != scene_seed(5, "train", 0)


# --------------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": (0, 112)}, r"image_size must be a pair \(H, W\) of positive ints, got \(0, 112\)"),
        ({"image_size": (84,)}, r"image_size must be a pair"),
        ({"image_size": (84.0, 112)}, r"image_size must be a pair"),
        ({"frames_per_scene": 0}, r"frames_per_scene must be a positive int, got 0"),
        ({"num_scenes": -2}, r"num_scenes must be a positive int, got -2"),
        ({"split": "val"}, r"split must be one of \('train', 'validation', 'test'\), got 'val'"),
        ({"seed": -1}, r"seed must be a non-negative int, got -1"),
        ({"hfov_deg": (80.0, 60.0)}, r"hfov_deg must satisfy"),
        ({"num_objects": (5, 40)}, r"num_objects must satisfy"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthRoomsConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        load_synthrooms(**{"num_scenes": 1, **kwargs})


def test_bad_render_arguments_raise():
    scene = _hand_scene()
    with pytest.raises(ValueError, match=r"image_size must be a pair \(H, W\) of positive ints, got \(84, -1\)"):
        render(scene, image_size=(84, -1))
    with pytest.raises(ValueError, match=r"extrinsics must be \[4, 4\] or \[V, 4, 4\], got shape \(3, 4\)"):
        render(scene, np.eye(4)[:3], scene.intrinsics[0])
    with pytest.raises(ValueError, match="got 2 extrinsics but 3 intrinsics"):
        render(scene, np.repeat(scene.extrinsics, 2, 0), np.repeat(scene.intrinsics, 3, 0))
    with pytest.raises(ValueError, match="need at least one camera"):
        render(scene, np.zeros((0, 4, 4)), np.zeros((0, 3, 3)))
    with pytest.raises(ValueError, match="every camera centre must be inside the room"):
        render(scene, look_extrinsics(np.array([-1.0, 5.0, 1.5]), 0.0, 0.0), scene.intrinsics[0])
    skewed = scene.extrinsics[0].copy()
    skewed[0, 0] = 2.0
    with pytest.raises(ValueError, match="rigid"):
        render(scene, skewed, scene.intrinsics[0])
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        generate_scene(-3)
    with pytest.raises(ValueError, match="split must be one of"):
        scene_seed(0, "dev", 0)
