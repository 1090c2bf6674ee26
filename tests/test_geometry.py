"""Camera maths, 2D RoPE and PRoPE as pure functions."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from spa3_vlm.modeling_common import RotaryEmbedding2D, patch_grid_positions
from spa3_vlm.modeling_geometry import (
    ProjectiveRoPE,
    camera_rays,
    cameras_to_pose_encoding,
    invert_intrinsics,
    invert_rigid,
    matrix_to_quaternion,
    plucker_rays,
    pose_encoding_to_cameras,
    quaternion_to_matrix,
    to_homogeneous,
)


def random_rigid(n, generator):
    quaternion = torch.randn(n, 4, generator=generator)
    rotation = quaternion_to_matrix(quaternion)
    transform = torch.eye(4).repeat(n, 1, 1)
    transform[:, :3, :3] = rotation
    transform[:, :3, 3] = torch.randn(n, 3, generator=generator)
    return transform


def test_quaternion_round_trip_and_rotation_properties():
    g = torch.Generator().manual_seed(0)
    quaternion = F.normalize(torch.randn(500, 4, generator=g), dim=-1)
    quaternion = torch.where(quaternion[:, 3:] < 0, -quaternion, quaternion)
    rotation = quaternion_to_matrix(quaternion)
    eye = torch.eye(3).expand(500, 3, 3)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(500), atol=1e-5)
    assert torch.allclose(matrix_to_quaternion(rotation), quaternion, atol=1e-5)
    # The quaternion's scale does not matter.
    assert torch.allclose(quaternion_to_matrix(3.0 * quaternion), rotation, atol=1e-6)
    # Rotations near 180 degrees (w ~ 0) are where naive formulas break.
    flip = torch.tensor([[0.0, 0.0, 1.0, 1e-4]])
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(quaternion_to_matrix(flip))), quaternion_to_matrix(flip), atol=1e-5)


def test_pose_encoding_round_trip():
    g = torch.Generator().manual_seed(1)
    extrinsics = random_rigid(20, g)[:, :3]
    intrinsics = torch.zeros(20, 3, 3)
    fov = torch.rand(20, 2, generator=g) * 1.5 + 0.3
    height, width = 56, 98
    intrinsics[:, 0, 0] = (width / 2) / torch.tan(fov[:, 1] / 2)
    intrinsics[:, 1, 1] = (height / 2) / torch.tan(fov[:, 0] / 2)
    intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = width / 2, height / 2, 1
    encoding = cameras_to_pose_encoding(extrinsics, intrinsics, (height, width))
    assert torch.allclose(encoding[:, 7:], fov, atol=1e-5)
    extrinsics2, intrinsics2 = pose_encoding_to_cameras(encoding, (height, width))
    assert torch.allclose(extrinsics2, extrinsics, atol=1e-5)
    assert torch.allclose(intrinsics2, intrinsics, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="9 values"):
        pose_encoding_to_cameras(torch.zeros(2, 7), (14, 14))


def test_pose_encoding_matches_vggt_fixture(fixtures_dir):
    reference = load_file(fixtures_dir / "vggt_tiny" / "outputs.safetensors")
    extrinsics, intrinsics = pose_encoding_to_cameras(reference["pose_enc"], (56, 70))
    assert (extrinsics - reference["extrinsics"]).abs().max() <= 1e-6
    assert (intrinsics - reference["intrinsics"]).abs().max() <= 1e-5


def test_closed_form_inverses():
    g = torch.Generator().manual_seed(2)
    transform = random_rigid(10, g)
    assert torch.allclose(invert_rigid(transform), torch.linalg.inv(transform), atol=1e-5)
    # The renderer's numpy cameras go through the same function and come back as numpy, exact in float64.
    as_numpy = torch.eye(4, dtype=torch.float64).repeat(10, 1, 1)
    as_numpy[:, :3, :3] = quaternion_to_matrix(torch.randn(10, 4, dtype=torch.float64, generator=g))
    as_numpy[:, :3, 3] = torch.randn(10, 3, dtype=torch.float64, generator=g)
    as_numpy = as_numpy.numpy()
    inverse = invert_rigid(as_numpy)
    assert type(inverse) is type(as_numpy) and inverse.dtype == as_numpy.dtype
    assert abs(inverse @ as_numpy - np.eye(4)).max() < 1e-12
    with pytest.raises(ValueError, match=r"must be \[\.\.\., 4, 4\], got shape \(10, 3, 4\)"):
        invert_rigid(transform[:, :3])
    intrinsics = torch.tensor([[[300.0, 0, 40], [0, 250, 30], [0, 0, 1]]])
    assert torch.allclose(invert_intrinsics(intrinsics), torch.linalg.inv(intrinsics), atol=1e-6)
    assert to_homogeneous(transform[:, :3]).equal(transform)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 4\] or \[\.\.\., 4, 4\]"):
        to_homogeneous(torch.zeros(2, 3, 3))


def test_camera_rays_unit_norm_principal_ray_and_fixture(fixtures_dir):
    intrinsics = torch.tensor([[2.0, 0, 2.5], [0, 3.0, 1.5], [0, 0, 1]])  # centre of a 3x5 grid
    rays = camera_rays(intrinsics, (3, 5))
    assert rays.shape == (3, 3, 5)
    assert torch.allclose(rays.norm(dim=0), torch.ones(3, 5), atol=1e-6)
    assert torch.allclose(rays[:, 1, 2], torch.tensor([0.0, 0.0, 1.0]))
    # x grows to the right, y downwards (OpenCV).
    assert rays[0, 1, 4] > 0 and rays[0, 1, 0] < 0 and rays[1, 2, 2] > 0 and rays[1, 0, 2] < 0
    reference = load_file(fixtures_dir / "spa3r_tiny" / "outputs.safetensors")
    ours = camera_rays(reference["intrinsics_patch"], (4, 5))
    assert (ours - reference["camera_rays"]).abs().max() <= 1e-6


def test_plucker_rays_are_world_rays_independent_of_the_point_on_them():
    g = torch.Generator().manual_seed(5)
    extrinsics = random_rigid(2, g)
    intrinsics = torch.tensor([[2.0, 0, 2.5], [0, 3.0, 1.5], [0, 0, 1]]).repeat(2, 1, 1)
    codes = plucker_rays(extrinsics, intrinsics, (3, 5))
    assert codes.shape == (2, 6, 3, 5)
    direction, moment = codes[:, :3], codes[:, 3:]
    rotation = extrinsics[:, :3, :3]
    local = camera_rays(intrinsics, (3, 5))
    assert torch.allclose(direction, torch.einsum("nji,njhw->nihw", rotation, local), atol=1e-6)  # R^T d
    assert torch.allclose((direction * moment).sum(1), torch.zeros(2, 3, 5), atol=1e-5)  # moment ⟂ direction
    # Move the camera 1.7 units along its own principal ray: that ray keeps its code, the others change.
    centre = invert_rigid(extrinsics)[:, :3, 3]
    moved = extrinsics.clone()
    moved[:, :3, 3] = -(rotation @ (centre + 1.7 * direction[:, :, 1, 2])[..., None])[..., 0]
    shifted = plucker_rays(moved, intrinsics, (3, 5))
    assert torch.allclose(shifted[:, :, 1, 2], codes[:, :, 1, 2], atol=1e-5)
    assert not torch.allclose(shifted[:, 3:, 0, 0], codes[:, 3:, 0, 0], atol=1e-3)
    # A camera at the world origin has zero moments.
    at_origin = extrinsics.clone()
    at_origin[:, :3, 3] = 0
    assert torch.allclose(plucker_rays(at_origin, intrinsics, (3, 5))[:, 3:], torch.zeros(2, 3, 3, 5), atol=1e-6)


def test_rope_2d_identity_at_origin_and_relative_positions():
    g = torch.Generator().manual_seed(3)
    head_dim = 16
    q = torch.randn(1, 2, 1, head_dim, generator=g)
    k = torch.randn(1, 2, 1, head_dim, generator=g)
    origin = RotaryEmbedding2D(torch.zeros(1, 2, dtype=torch.long), head_dim)
    assert torch.equal(origin(q), q)

    def logit(pq, pk):
        rq = RotaryEmbedding2D(torch.tensor([pq]), head_dim)
        rk = RotaryEmbedding2D(torch.tensor([pk]), head_dim)
        return (rq(q) * rk(k)).sum(-1)

    # Depends only on the offset, and both axes matter.
    assert torch.allclose(logit((3, 1), (1, 4)), logit((5, 2), (3, 5)), atol=1e-5)
    assert not torch.allclose(logit((3, 1), (1, 4)), logit((3, 1), (2, 4)), atol=1e-3)
    assert not torch.allclose(logit((3, 1), (1, 4)), logit((3, 1), (1, 3)), atol=1e-3)
    # Rotation preserves norms.
    rope = RotaryEmbedding2D(patch_grid_positions(3, 4), head_dim)
    x = torch.randn(2, 3, 12, head_dim, generator=g)
    assert torch.allclose(rope(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        RotaryEmbedding2D(torch.zeros(1, 2), 6)


def _prope_attention(q, k, v, prope):
    q, k, v = prope.transform_qkv(q, k, v)
    return prope.transform_output(F.scaled_dot_product_attention(q, k, v))


def _random_cameras(batch, cams, generator, size=(28, 42)):
    extrinsics = random_rigid(batch * cams, generator).reshape(batch, cams, 4, 4)
    intrinsics = torch.zeros(batch, cams, 3, 3)
    intrinsics[..., 0, 0] = 30 + 20 * torch.rand(batch, cams, generator=generator)
    intrinsics[..., 1, 1] = 30 + 20 * torch.rand(batch, cams, generator=generator)
    intrinsics[..., 0, 2] = size[1] / 2
    intrinsics[..., 1, 2] = size[0] / 2
    intrinsics[..., 2, 2] = 1
    return extrinsics, intrinsics


def test_prope_is_invariant_to_a_global_rigid_transform():
    g = torch.Generator().manual_seed(4)
    batch, cams, heads, head_dim, grid = 2, 3, 2, 16, (2, 3)
    n = cams * grid[0] * grid[1]
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g, dtype=torch.float64) for _ in range(3))
    extrinsics, intrinsics = _random_cameras(batch, cams, g)
    world = random_rigid(batch, g)[:, None]  # new-world-from-old-world
    moved = extrinsics @ invert_rigid(world)  # camera-from-new-world
    out = _prope_attention(q, k, v, ProjectiveRoPE(extrinsics, intrinsics, (28, 42), grid, head_dim))
    out_moved = _prope_attention(q, k, v, ProjectiveRoPE(moved, intrinsics, (28, 42), grid, head_dim))
    assert torch.allclose(out, out_moved, atol=1e-4)
    # ... but not to moving one camera alone.
    one = extrinsics.clone()
    one[:, 1] = one[:, 1] @ invert_rigid(world[:, 0])
    out_one = _prope_attention(q, k, v, ProjectiveRoPE(one, intrinsics, (28, 42), grid, head_dim))
    assert not torch.allclose(out, out_one, atol=1e-2)


def test_prope_single_camera_reduces_to_rope_and_keeps_prefix_tokens():
    g = torch.Generator().manual_seed(5)
    heads, head_dim, grid, prefix = 2, 16, (2, 2), 3
    extrinsics, intrinsics = _random_cameras(1, 1, g)
    prope = ProjectiveRoPE(extrinsics, intrinsics, (28, 42), grid, head_dim)
    x = torch.randn(1, heads, prefix + 4, head_dim, generator=g)
    for transformed in prope.transform_qkv(x, x, x) + (prope.transform_output(x),):
        assert torch.equal(transformed[:, :, :prefix], x[:, :, :prefix])
        assert not torch.allclose(transformed[:, :, prefix:], x[:, :, prefix:])
    # Forward then inverse transform is the identity.
    _, _, forward_v = prope.transform_qkv(x, x, x)
    assert torch.allclose(prope.transform_output(forward_v), x, atol=1e-5)
    # Among the tokens of one camera, P and P^-1 cancel: logits equal those with identity cameras.
    q, k = torch.randn(2, 1, heads, 4, head_dim, generator=g)
    identity = ProjectiveRoPE(torch.eye(4)[None, None], None, (28, 42), grid, head_dim)
    q1, k1, _ = prope.transform_qkv(q, k, k)
    q2, k2, _ = identity.transform_qkv(q, k, k)
    assert torch.allclose(q1 @ k1.transpose(-1, -2), q2 @ k2.transpose(-1, -2), atol=1e-4)
    with pytest.raises(ValueError, match="spatial tokens"):
        prope.transform_qkv(x[:, :, :2], x[:, :, :2], x[:, :, :2])
    with pytest.raises(ValueError, match="divisible by 8"):
        ProjectiveRoPE(extrinsics, intrinsics, (28, 42), grid, 12)


def test_prope_uses_column_then_row_rope():
    """The second quarter of each head rotates with the patch column, the last with the row."""
    head_dim, grid = 16, (2, 3)
    prope = ProjectiveRoPE(torch.eye(4)[None, None], None, (28, 42), grid, head_dim)
    x = torch.zeros(1, 1, 6, head_dim)
    x[..., 8] = 1.0  # first dim of the column block
    x[..., 12] = 1.0  # first dim of the row block
    q, _, _ = prope.transform_qkv(x, x, x)
    # Token 1 is (row 0, col 1): column block rotated by 1 rad at frequency 1, row block untouched.
    assert torch.allclose(q[0, 0, 1, 8], torch.tensor(math.cos(1.0)))
    assert torch.allclose(q[0, 0, 1, 12], torch.tensor(1.0))
    # Token 3 is (row 1, col 0).
    assert torch.allclose(q[0, 0, 3, 8], torch.tensor(1.0))
    assert torch.allclose(q[0, 0, 3, 12], torch.tensor(math.cos(1.0)))


def test_block_query_rows_equal_the_slice_of_the_full_block():
    """A last block computing only the kept rows gives those rows of the full block (PRoPE and 2D RoPE)."""
    from spa3_vlm.modeling_common import Block

    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    block = Block(32, 2, qk_norm="rmsnorm").double()
    grid, cams, prefix = (2, 3), 2, 5
    extrinsics, intrinsics = _random_cameras(1, cams, g)
    prope = ProjectiveRoPE(extrinsics, intrinsics, (28, 42), grid, 16)
    x = torch.randn(1, prefix + cams * 6, 32, generator=g, dtype=torch.float64)
    full = block(x, camera_transform=prope)
    for rows in (slice(0, prefix), slice(2, prefix), slice(prefix, None), slice(1, None)):
        assert torch.allclose(block(x, query_rows=rows, camera_transform=prope), full[:, rows], atol=1e-10)
    rope = RotaryEmbedding2D(patch_grid_positions(3, 4), 16)
    x = torch.randn(2, 12, 32, generator=g, dtype=torch.float64)
    full = block(x, rope=rope)
    assert torch.allclose(block(x, query_rows=slice(4, 9), rope=rope), full[:, 4:9], atol=1e-10)
    # The spatial block cannot be split: its camera transform is per camera-major token layout.
    x = torch.randn(1, prefix + cams * 6, 32, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match="no spatial token or all"):
        block(x, query_rows=slice(prefix + 1, None), camera_transform=prope)
    with pytest.raises(ValueError, match="no spatial token or all"):
        block(x, query_rows=slice(0, prefix + 3), camera_transform=prope)
