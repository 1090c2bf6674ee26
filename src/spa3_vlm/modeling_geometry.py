"""Camera geometry: VGGT pose encodings, camera rays and PRoPE (projective relative position encoding).

Conventions used across the package:

- extrinsics are **world-to-camera** ``[..., 4, 4]`` (or ``[..., 3, 4]``), OpenCV axes (x right, y down,
  z forward); VGGT puts the world frame at the first view's camera;
- intrinsics are ``[..., 3, 3]`` in **pixels** of the image they describe;
- a pose encoding is 9 numbers: translation (3), quaternion xyzw (4, any scale), fov_h, fov_w (radians).
"""

from __future__ import annotations

from typing import Optional

import torch


# --------------------------------------------------------------------------------------------------
# Rotations and pose encodings
# --------------------------------------------------------------------------------------------------


def quaternion_to_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` quaternion (x, y, z, w; need not be unit) -> ``[..., 3, 3]`` rotation matrix."""
    x, y, z, w = quaternion.unbind(-1)
    two_s = 2.0 / (quaternion * quaternion).sum(-1)
    matrix = torch.stack(
        (
            1 - two_s * (y * y + z * z),
            two_s * (x * y - z * w),
            two_s * (x * z + y * w),
            two_s * (x * y + z * w),
            1 - two_s * (x * x + z * z),
            two_s * (y * z - x * w),
            two_s * (x * z - y * w),
            two_s * (y * z + x * w),
            1 - two_s * (x * x + y * y),
        ),
        dim=-1,
    )
    return matrix.reshape(quaternion.shape[:-1] + (3, 3))


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` rotation -> unit quaternion ``[..., 4]`` (x, y, z, w) with w >= 0.

    Uses, per matrix, the best-conditioned of the four candidate formulas (the one whose
    denominator, 4·|component|, is largest).
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4·q_i² for each component i, from the diagonal.
    sq = torch.stack(
        (1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22, 1 + m00 + m11 + m22), dim=-1
    ).clamp_min(0)
    root = 2.0 * sq.sqrt()  # 4·|q_i| in the candidate where q_i is the pivot
    # Candidate quaternions (x, y, z, w) scaled by 4·q_pivot, one row per pivot.
    candidates = torch.stack(
        (
            torch.stack((sq[..., 0], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] - m[..., 1, 2]), -1),
            torch.stack((m[..., 0, 1] + m[..., 1, 0], sq[..., 1], m[..., 1, 2] + m[..., 2, 1], m[..., 0, 2] - m[..., 2, 0]), -1),
            torch.stack((m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], sq[..., 2], m[..., 1, 0] - m[..., 0, 1]), -1),
            torch.stack((m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1], sq[..., 3]), -1),
        ),
        dim=-2,
    )
    candidates = candidates / root.clamp_min(0.1)[..., None]
    best = sq.argmax(dim=-1)
    quaternion = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    quaternion = quaternion / quaternion.norm(dim=-1, keepdim=True)
    return torch.where(quaternion[..., 3:4] < 0, -quaternion, quaternion)


def pose_encoding_to_cameras(pose_encoding: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """VGGT pose encoding ``[..., 9]`` -> (extrinsics ``[..., 3, 4]`` world-to-camera, intrinsics ``[..., 3, 3]`` px).

    The principal point is the image centre, as VGGT assumes.
    """
    if pose_encoding.shape[-1] != 9:
        raise ValueError(f"a pose encoding has 9 values (t, quaternion xyzw, fov_h, fov_w), got shape {tuple(pose_encoding.shape)}")
    height, width = image_size
    translation = pose_encoding[..., :3]
    rotation = quaternion_to_matrix(pose_encoding[..., 3:7])
    fov_h, fov_w = pose_encoding[..., 7], pose_encoding[..., 8]
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)
    intrinsics = torch.zeros(pose_encoding.shape[:-1] + (3, 3), dtype=pose_encoding.dtype, device=pose_encoding.device)
    intrinsics[..., 0, 0] = (width / 2) / torch.tan(fov_w / 2)
    intrinsics[..., 1, 1] = (height / 2) / torch.tan(fov_h / 2)
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def cameras_to_pose_encoding(extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pose_encoding_to_cameras` (the principal point is assumed centred)."""
    height, width = image_size
    rotation = extrinsics[..., :3, :3]
    translation = extrinsics[..., :3, 3]
    quaternion = matrix_to_quaternion(rotation)
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([translation, quaternion, fov_h[..., None], fov_w[..., None]], dim=-1)


def to_homogeneous(extrinsics: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 4]`` or ``[..., 4, 4]`` -> ``[..., 4, 4]`` with last row (0, 0, 0, 1)."""
    if extrinsics.shape[-2:] == (4, 4):
        return extrinsics
    if extrinsics.shape[-2:] != (3, 4):
        raise ValueError(f"extrinsics must be [..., 3, 4] or [..., 4, 4], got {tuple(extrinsics.shape)}")
    bottom = torch.zeros(extrinsics.shape[:-2] + (1, 4), dtype=extrinsics.dtype, device=extrinsics.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([extrinsics, bottom], dim=-2)


def invert_rigid(transform: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of rigid ``[..., 4, 4]`` transforms: ``[Rᵀ | -Rᵀt]``.

    Also takes a numpy array (the renderer's cameras) and returns one, exact in float64.
    """
    if not isinstance(transform, torch.Tensor):
        return invert_rigid(torch.as_tensor(transform)).numpy()
    if tuple(transform.shape[-2:]) != (4, 4):
        raise ValueError(f"rigid transforms must be [..., 4, 4], got shape {tuple(transform.shape)}")
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    translation = transform[..., :3, 3:]
    inverse = torch.zeros_like(transform)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3:] = -rotation_t @ translation
    inverse[..., 3, 3] = 1.0
    return inverse


def contiguous_slice_bounds(rows: slice, length) -> tuple:
    """``rows.indices(length)[:2]`` for a step-1 slice. Unlike ``slice.indices`` it accepts a symbolic ``length``
    without fixing it to a constant, so that ``torch.compile`` keeps one graph for every view count."""
    if rows.step not in (None, 1):
        raise ValueError(f"output_rows must be a contiguous slice, got {rows}")

    def bound(value, default):
        if value is None:
            return default
        if value < 0:
            value = value + length
        return min(max(value, 0), length)

    return bound(rows.start, 0), bound(rows.stop, length)


def relative_to_first(extrinsics: torch.Tensor) -> torch.Tensor:
    """World-to-camera ``[..., V, 4, 4]`` -> the same cameras in view 0's frame (``E_i inv(E_0)``; view 0 becomes
    the identity), the frame VGGT predicts cameras in and Spa3R's decoder reads them in. Torch or numpy in, the
    same out."""
    if extrinsics.ndim < 3 or extrinsics.shape[-3] < 1:
        raise ValueError(f"extrinsics must be [..., V, 4, 4] with V >= 1, got shape {tuple(extrinsics.shape)}")
    return extrinsics @ invert_rigid(extrinsics[..., :1, :, :])


def camera_centers_and_directions(extrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera ``[..., 4, 4]`` -> camera centres ``[..., 3]`` and unit viewing directions ``[..., 3]``."""
    rotation, translation = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    centers = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]
    directions = rotation[..., 2, :]  # the camera's +z axis in world coordinates
    return centers, directions


def invert_intrinsics(intrinsics: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of skew-free ``[..., 3, 3]`` intrinsics."""
    fx, fy = intrinsics[..., 0, 0], intrinsics[..., 1, 1]
    cx, cy = intrinsics[..., 0, 2], intrinsics[..., 1, 2]
    inverse = torch.zeros_like(intrinsics)
    inverse[..., 0, 0] = 1.0 / fx
    inverse[..., 1, 1] = 1.0 / fy
    inverse[..., 0, 2] = -cx / fx
    inverse[..., 1, 2] = -cy / fy
    inverse[..., 2, 2] = 1.0
    return inverse


def camera_rays(intrinsics: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Unit camera-frame ray directions through pixel centres.

    Args:
        intrinsics: ``[..., 3, 3]`` in units of the grid's cells (divide pixel intrinsics by the patch
            size to get rays per patch).
        grid_size: ``(h, w)``.
    Returns:
        ``[..., 3, h, w]``; the ray through the principal point is +z.
    """
    height, width = grid_size
    fx, fy = intrinsics[..., 0, 0, None, None], intrinsics[..., 1, 1, None, None]
    cx, cy = intrinsics[..., 0, 2, None, None], intrinsics[..., 1, 2, None, None]
    rows = torch.arange(height, device=intrinsics.device, dtype=intrinsics.dtype)[:, None] + 0.5
    cols = torch.arange(width, device=intrinsics.device, dtype=intrinsics.dtype)[None, :] + 0.5
    x = ((cols - cx) / fx).expand(*fx.shape[:-2], height, width)
    y = ((rows - cy) / fy).expand(*fx.shape[:-2], height, width)
    directions = torch.stack([x, y, torch.ones_like(x)], dim=-3)
    return directions / directions.norm(dim=-3, keepdim=True).clamp_min(1e-3)


def plucker_rays(extrinsics: torch.Tensor, intrinsics: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """World-frame Plücker coordinates ``(d, c × d)`` of the rays through the cells of a ``grid_size`` grid.

    Args:
        extrinsics: ``[..., 3|4, 4]`` rigid world-to-camera transforms.
        intrinsics: ``[..., 3, 3]`` in units of the grid's cells (as :func:`camera_rays`).
    Returns:
        ``[..., 6, h, w]``: unit world direction ``d`` then moment ``c × d`` (``c`` the camera centre). Both are
        independent of the point chosen on the ray, so a ray has one code whichever camera on it looks along it.
    """
    directions = camera_rays(intrinsics, grid_size)  # [..., 3, h, w], camera frame
    rotation, translation = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    world = torch.einsum("...ji,...jhw->...ihw", rotation, directions)  # Rᵀ d
    centre = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]  # -Rᵀ t
    moment = torch.linalg.cross(centre[..., :, None, None].expand_as(world), world, dim=-3)
    return torch.cat([world, moment], dim=-3)


# --------------------------------------------------------------------------------------------------
# PRoPE
# --------------------------------------------------------------------------------------------------


def _rope_1d_tables(positions: torch.Tensor, num_freqs: int, base: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = scale * (base ** (-torch.arange(num_freqs, device=positions.device) / num_freqs))
    angles = positions.float()[:, None] * freqs
    return angles.cos(), angles.sin()


def _rotate_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    """1D RoPE with "split" pairing (first half with second half)."""
    a, b = x.chunk(2, dim=-1)
    if inverse:
        return torch.cat([cos * a - sin * b, sin * a + cos * b], dim=-1)
    return torch.cat([cos * a + sin * b, -sin * a + cos * b], dim=-1)


class ProjectiveRoPE:
    """PRoPE ("Cameras as Relative Positional Encoding") as a per-forward attention transform.

    The last ``num_cameras * h * w`` tokens of every sequence are *spatial*: camera-major, row-major
    patch tokens. Each head vector of a spatial token is split into ``[d/2 | d/4 | d/4]``: the first
    part is transformed as ``d/8`` homogeneous 4-vectors by the camera's projection ``P = K̃·E``
    (queries by ``Pᵀ``, keys and values by ``P⁻¹``, outputs by ``P``), the two others by 1D RoPE
    over the patch column and row index. Logits between spatial tokens therefore depend only on
    relative camera geometry; tokens before the spatial block are left untouched.

    Args:
        extrinsics: ``[B, cams, 4, 4]`` world-to-camera.
        intrinsics: ``[B, cams, 3, 3]`` in pixels, or ``None`` for the projective-free (GTA) variant.
        image_size: ``(H, W)`` in pixels.
        patch_grid: ``(h, w)`` patches per image.
        head_dim: attention head size (divisible by 8).
    """

    def __init__(
        self,
        extrinsics: torch.Tensor,
        intrinsics: Optional[torch.Tensor],
        image_size: tuple[int, int],
        patch_grid: tuple[int, int],
        head_dim: int,
        freq_base: float = 100.0,
        freq_scale: float = 1.0,
    ):
        if head_dim % 8:
            raise ValueError(f"PRoPE needs a head dim divisible by 8, got {head_dim}")
        height, width = image_size
        grid_h, grid_w = patch_grid
        viewmats = to_homogeneous(extrinsics).float()
        if intrinsics is None:
            projection, projection_inv = viewmats, invert_rigid(viewmats)
        else:
            intrinsics = intrinsics.float()
            normalized = torch.zeros_like(intrinsics)
            normalized[..., 0, 0] = intrinsics[..., 0, 0] / width
            normalized[..., 1, 1] = intrinsics[..., 1, 1] / height
            normalized[..., 0, 2] = intrinsics[..., 0, 2] / width - 0.5
            normalized[..., 1, 2] = intrinsics[..., 1, 2] / height - 0.5
            normalized[..., 2, 2] = 1.0
            projection = _lift(normalized) @ viewmats
            projection_inv = invert_rigid(viewmats) @ _lift(invert_intrinsics(normalized))
        self.projection = projection  # [B, cams, 4, 4]
        self.projection_inv = projection_inv
        self.num_cameras = viewmats.shape[1]
        self.tokens_per_camera = grid_h * grid_w
        self.head_dim = head_dim
        token = torch.arange(self.tokens_per_camera, device=viewmats.device)
        num_freqs = head_dim // 8
        self.cos_x, self.sin_x = _rope_1d_tables(token % grid_w, num_freqs, freq_base, freq_scale)
        self.cos_y, self.sin_y = _rope_1d_tables(token // grid_w, num_freqs, freq_base, freq_scale)

    @property
    def num_spatial_tokens(self) -> int:
        return self.num_cameras * self.tokens_per_camera

    def _apply(self, x: torch.Tensor, matrix: torch.Tensor, transpose: bool, inverse_rope: bool) -> torch.Tensor:
        """``x [B, heads, T, d]``: transform the trailing spatial tokens, keep the rest."""
        d = self.head_dim
        n = self.num_spatial_tokens
        if x.shape[2] < n:
            raise ValueError(f"sequence of {x.shape[2]} tokens is shorter than the {n} spatial tokens PRoPE expects")
        prefix, spatial = x[:, :, : x.shape[2] - n], x[:, :, x.shape[2] - n :]
        batch, heads = spatial.shape[:2]
        spatial = spatial.reshape(batch, heads, self.num_cameras, self.tokens_per_camera, d)
        projective, rope_x, rope_y = spatial.split([d // 2, d // 4, d // 4], dim=-1)
        groups = projective.unflatten(-1, (d // 8, 4))
        matrix = matrix.to(x.dtype)
        equation = "bcji,bhcnkj->bhcnki" if transpose else "bcij,bhcnkj->bhcnki"
        projective = torch.einsum(equation, matrix, groups).flatten(-2)
        cos_x, sin_x = self.cos_x.to(x.dtype), self.sin_x.to(x.dtype)
        cos_y, sin_y = self.cos_y.to(x.dtype), self.sin_y.to(x.dtype)
        rope_x = _rotate_split(rope_x, cos_x, sin_x, inverse_rope)
        rope_y = _rotate_split(rope_y, cos_y, sin_y, inverse_rope)
        spatial = torch.cat([projective, rope_x, rope_y], dim=-1).reshape(batch, heads, n, d)
        return torch.cat([prefix, spatial], dim=2)

    def transform_query(self, q: torch.Tensor) -> torch.Tensor:
        """``[B, heads, T, d]``: queries by ``Pᵀ``."""
        return self._apply(q, self.projection, transpose=True, inverse_rope=False)

    def transform_key(self, k: torch.Tensor) -> torch.Tensor:
        """``[B, heads, T, d]``: keys by ``P⁻¹``."""
        return self._apply(k, self.projection_inv, transpose=False, inverse_rope=False)

    def transform_value(self, v: torch.Tensor) -> torch.Tensor:
        """``[B, heads, T, d]``: values by ``P⁻¹``."""
        return self._apply(v, self.projection_inv, transpose=False, inverse_rope=False)

    def transform_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.transform_query(q), self.transform_key(k), self.transform_value(v)

    def transform_output(self, out: torch.Tensor, rows: Optional[slice] = None, sequence_length: Optional[int] = None) -> torch.Tensor:
        """``out [B, heads, T, d]``: the attention output of all rows, or of ``rows`` (a slice of a
        ``sequence_length``-token sequence) that must either hold no spatial token or end with all of them."""
        if rows is not None:
            if sequence_length is None:
                raise ValueError("transform_output(rows=...) needs the full sequence_length")
            start, stop = contiguous_slice_bounds(rows, sequence_length)
            first_spatial = sequence_length - self.num_spatial_tokens
            if not (stop <= first_spatial or (stop == sequence_length and start <= first_spatial)):
                raise ValueError(
                    f"PRoPE output rows {start}:{stop} of {sequence_length} must hold no spatial token or all "
                    f"{self.num_spatial_tokens} (the last ones)"
                )
            if stop <= first_spatial:
                return out  # prefix tokens carry no camera
        return self._apply(out, self.projection, transpose=False, inverse_rope=True)


def _lift(intrinsics: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` -> block-diagonal ``[..., 4, 4]`` with a trailing 1."""
    lifted = torch.zeros(intrinsics.shape[:-2] + (4, 4), dtype=intrinsics.dtype, device=intrinsics.device)
    lifted[..., :3, :3] = intrinsics
    lifted[..., 3, 3] = 1.0
    return lifted
