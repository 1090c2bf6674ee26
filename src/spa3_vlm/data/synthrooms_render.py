"""Vectorised torch ray caster for SynthRooms scenes (primary rays + optional hard shadows).

Every pixel's ray is intersected with every primitive at once (tensors ``[rays, primitives]``, rays
processed in chunks to bound memory); the room shell is the inside of a box. Shading is Lambertian
with one point light plus ambient, and albedo comes from procedural textures evaluated at the hit point.
Conventions (world frame, cameras, depth) are documented in :mod:`.synthrooms_scene`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from ..modeling_geometry import invert_rigid
from .synthrooms_scene import PATTERNS, SHAPES, Scene, check_image_size

_SHAPE_CODE = {name: i for i, name in enumerate(SHAPES)}
_PATTERN_CODE = {name: i for i, name in enumerate(PATTERNS)}
_BOOK_COLORS = ((0.6, 0.12, 0.1), (0.12, 0.25, 0.5), (0.15, 0.4, 0.2), (0.8, 0.65, 0.2), (0.85, 0.82, 0.75), (0.3, 0.2, 0.35), (0.15, 0.15, 0.15))
_HIT_EPS = 1e-5
# Light falloff: brightness / (1 + k d^2), gentle so large rooms stay readable.
_FALLOFF = 0.03


@dataclass
class _SceneTensors:
    room: torch.Tensor  # [3] (w, d, h)
    center: torch.Tensor  # [P, 3]
    half: torch.Tensor  # [P, 3] half extents along local axes
    cos: torch.Tensor  # [P]
    sin: torch.Tensor  # [P]
    shape: torch.Tensor  # [P] long
    instance: torch.Tensor  # [P] long, 1-based object id
    color: torch.Tensor  # [P, 3]
    pattern: torch.Tensor  # [P] long
    light: torch.Tensor  # [3]
    box_idx: torch.Tensor
    cylinder_idx: torch.Tensor
    sphere_idx: torch.Tensor
    order: torch.Tensor  # part index of each column of _hit_parts

    @classmethod
    def from_scene(cls, scene: Scene, device: torch.device) -> "_SceneTensors":
        parts = [(k + 1, part) for k, obj in enumerate(scene.objects) for part in obj.parts]
        f32 = dict(dtype=torch.float32, device=device)
        i64 = dict(dtype=torch.long, device=device)
        center = torch.tensor([p.center for _, p in parts], **f32).reshape(-1, 3)
        half = torch.tensor([p.size for _, p in parts], **f32).reshape(-1, 3) / 2
        yaw = torch.tensor([p.yaw for _, p in parts], dtype=torch.float64)
        shape = torch.tensor([_SHAPE_CODE[p.shape] for _, p in parts], **i64)
        box_idx, cylinder_idx, sphere_idx = ((shape == _SHAPE_CODE[name]).nonzero().flatten() for name in SHAPES)
        return cls(
            room=torch.tensor(scene.room_size, **f32),
            center=center,
            half=half,
            cos=torch.cos(yaw).to(**f32),
            sin=torch.sin(yaw).to(**f32),
            shape=shape,
            instance=torch.tensor([k for k, _ in parts], **i64),
            color=torch.tensor([p.color for _, p in parts], **f32).reshape(-1, 3),
            pattern=torch.tensor([_PATTERN_CODE[p.pattern] for _, p in parts], **i64),
            light=torch.tensor(scene.light.position, **f32),
            box_idx=box_idx,
            cylinder_idx=cylinder_idx,
            sphere_idx=sphere_idx,
            order=torch.cat([box_idx, cylinder_idx, sphere_idx]),
        )


# --------------------------------------------------------------------------------------------------
# Intersections: o, d are [R, 3]; results [R, n] ray parameters t (inf on a miss), hit = o + t d
# --------------------------------------------------------------------------------------------------


def _safe_reciprocal(x: torch.Tensor) -> torch.Tensor:
    # Exact zeros would give 0 * inf = nan in the slab tests; a tiny stand-in of either sign is harmless
    # there because both slab distances are then huge and min/max sort them.
    return 1.0 / torch.where(x.abs() < 1e-12, 1e-12, x)


def _to_local(vectors: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``[..., 3]`` world vectors by ``-yaw`` about z (``cos``/``sin`` broadcast on ``...``)."""
    x, y, z = vectors.unbind(-1)
    return torch.stack([cos * x + sin * y, -sin * x + cos * y, z.expand_as(cos * x)], dim=-1)


def _hit_boxes(o, d, center, half, cos, sin, eps):
    # Slab test in each box's frame, one axis at a time on [R, B] tensors (less memory traffic).
    rx, ry, rz = (o[:, None, i] - center[:, i] for i in range(3))
    dx, dy, dz = (d[:, None, i] for i in range(3))
    local = ((cos * rx + sin * ry, cos * dx + sin * dy), (cos * ry - sin * rx, cos * dy - sin * dx), (rz, dz))
    near = far = None
    for axis, (origin, direction) in enumerate(local):
        inv = _safe_reciprocal(direction)
        t1, t2 = (-half[:, axis] - origin) * inv, (half[:, axis] - origin) * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        near = lo if near is None else torch.maximum(near, lo)
        far = hi if far is None else torch.minimum(far, hi)
    return torch.where((near <= far) & (near > eps), near, torch.inf)


def _hit_cylinders(o, d, center, radius, half_height, eps):
    rel = o[:, None, :] - center
    rx, ry, rz = rel.unbind(-1)
    dx, dy, dz = (c[:, None] for c in d.unbind(-1))
    a = dx * dx + dy * dy
    b = 2 * (rx * dx + ry * dy)
    c = rx * rx + ry * ry - radius * radius
    disc = b * b - 4 * a * c
    t_side = (-b - disc.clamp_min(0).sqrt()) / (2 * a.clamp_min(1e-12))
    side_ok = (disc >= 0) & (a > 1e-12) & (t_side > eps) & ((rz + t_side * dz).abs() <= half_height)
    best = torch.where(side_ok, t_side, torch.inf)
    inv_dz = _safe_reciprocal(dz)
    for sign in (1.0, -1.0):
        t_cap = (sign * half_height - rz) * inv_dz
        px, py = rx + t_cap * dx, ry + t_cap * dy
        cap_ok = (t_cap > eps) & (px * px + py * py <= radius * radius)
        best = torch.minimum(best, torch.where(cap_ok, t_cap, torch.inf))
    return best


def _hit_spheres(o, d, center, radius, eps):
    rel = o[:, None, :] - center
    a = (d * d).sum(-1, keepdim=True)
    half_b = (rel * d[:, None, :]).sum(-1)
    disc = half_b * half_b - a * ((rel * rel).sum(-1) - radius * radius)
    t = (-half_b - disc.clamp_min(0).sqrt()) / a
    return torch.where((disc >= 0) & (t > eps), t, torch.inf)


def _hit_parts(o: torch.Tensor, d: torch.Tensor, st: _SceneTensors, eps: float) -> torch.Tensor:
    """``[R, P']`` first-hit parameters against every object part, columns in ``st.order``."""
    columns = []
    if st.box_idx.numel():
        i = st.box_idx
        columns.append(_hit_boxes(o, d, st.center[i], st.half[i], st.cos[i], st.sin[i], eps))
    if st.cylinder_idx.numel():
        i = st.cylinder_idx
        columns.append(_hit_cylinders(o, d, st.center[i], st.half[i, 0], st.half[i, 2], eps))
    if st.sphere_idx.numel():
        i = st.sphere_idx
        columns.append(_hit_spheres(o, d, st.center[i], st.half[i, 0], eps))
    return torch.cat(columns, dim=1)


def _hit_room(o: torch.Tensor, d: torch.Tensor, room: torch.Tensor):
    """Exit of rays starting inside the room box: ``(t [R], axis [R])``."""
    inv = _safe_reciprocal(d)
    t_exit = torch.maximum((0.0 - o) * inv, (room - o) * inv)
    return t_exit.min(-1)


# --------------------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------------------

_PRIMES = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)


def _hash(*keys: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Integer hash of int64 tensors -> float in [0, 1]; wrapping int64 arithmetic is deterministic."""
    h = torch.full_like(keys[0], (seed * 0x165667B1 + 0x3C6EF372) & 0x7FFFFFFF)
    for prime, key in zip(_PRIMES, keys):
        h = (h ^ (key * prime)) & 0xFFFFFFFF
        h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        h = h ^ (h >> 12)
    h = ((h ^ (h >> 15)) * 0x297A2D39) & 0xFFFFFFFF
    h = h ^ (h >> 15)
    return (h & 0xFFFFFF).to(torch.float32) / float(0xFFFFFF)


def _noise(u: torch.Tensor, v: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Smooth 2D value noise in [0, 1] with unit lattice spacing."""
    fu, fv = torch.floor(u), torch.floor(v)
    iu, iv = fu.long(), fv.long()
    su, sv = u - fu, v - fv
    su, sv = su * su * (3 - 2 * su), sv * sv * (3 - 2 * sv)
    n00, n10 = _hash(iu, iv, seed=seed), _hash(iu + 1, iv, seed=seed)
    n01, n11 = _hash(iu, iv + 1, seed=seed), _hash(iu + 1, iv + 1, seed=seed)
    return torch.lerp(torch.lerp(n00, n10, su), torch.lerp(n01, n11, su), sv)


def _noise3(p: torch.Tensor, scale: float, seed: int = 0) -> torch.Tensor:
    """Cheap 3D-looking noise: 2D noise on two oblique projections of ``p [R, 3]``."""
    x, y, z = (p * scale).unbind(-1)
    return 0.5 * (_noise(x + 0.6 * z, y - 0.8 * z, seed) + _noise(y + 0.7 * z, x + 0.4 * z, seed + 1))


def _rgb(color, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(color, dtype=like.dtype, device=like.device)


def _floor_albedo(x: torch.Tensor, y: torch.Tensor, scene: Scene) -> torch.Tensor:
    style = scene.style
    color_a, color_b = _rgb(style.floor_colors[0], x), _rgb(style.floor_colors[1], x)
    seed, scale = style.texture_seed, style.floor_scale
    if style.floor_pattern == "planks":
        along, across = (x, y) if style.floor_axis == 0 else (y, x)
        length = 6 * scale
        row_f = torch.floor(across / scale)
        row = row_f.long()
        shifted = along + _hash(row, seed=seed + 1) * length
        col_f = torch.floor(shifted / length)
        tone = _hash(row, col_f.long(), seed=seed)[:, None]
        grain = _noise(along * 2.0, across / scale * 6.0, seed + 2)[:, None]
        albedo = torch.lerp(color_a, color_b, tone) * (0.85 + 0.3 * grain)
        seam = ((across / scale - row_f) < 0.05) | ((shifted / length - col_f) < 0.01)
        return torch.where(seam[:, None], albedo * 0.5, albedo)
    if style.floor_pattern == "tiles":
        ix_f, iy_f = torch.floor(x / scale), torch.floor(y / scale)
        ix, iy = ix_f.long(), iy_f.long()
        albedo = torch.where(((ix + iy) % 2 == 0)[:, None], color_a, color_b) * (0.94 + 0.08 * _hash(ix, iy, seed=seed))[:, None]
        grout_width = 0.012 / scale
        grout = ((x / scale - ix_f) < grout_width) | ((y / scale - iy_f) < grout_width)
        return torch.where(grout[:, None], _rgb((0.68, 0.68, 0.66), x), albedo)
    fibre = (0.6 * _noise(x * 8, y * 8, seed) + 0.4 * _noise(x * 40, y * 40, seed + 1))[:, None]
    return torch.lerp(color_a, color_b, fibre) * (0.9 + 0.2 * fibre)


def _wall_albedo(along: torch.Tensor, z: torch.Tensor, wall_id: torch.Tensor, scene: Scene) -> torch.Tensor:
    style = scene.style
    color_a, color_b = _rgb(style.wall_colors[0], z), _rgb(style.wall_colors[1], z)
    seed = style.texture_seed + 10
    # Each wall gets its own slight tint so that walls are told apart.
    tone = (0.93 + 0.1 * _hash(wall_id, seed=seed))[:, None]
    grain = (0.94 + 0.08 * _noise(along * 1.5, z * 1.5, seed + 1))[:, None]
    if style.wall_pattern == "stripes":
        odd = (torch.floor(along / style.wall_scale).long() % 2 == 1)[:, None]
        albedo = torch.where(odd, color_b, color_a) * tone * grain
    elif style.wall_pattern == "wainscot":
        height = style.wall_scale
        groove = ((along / 0.4 - torch.floor(along / 0.4)) < 0.03)[:, None]
        lower = torch.where(groove, color_b * 0.7, color_b)
        albedo = torch.where((z < height)[:, None], lower, color_a * tone * grain)
        trim = ((z >= height) & (z < height + 0.04))[:, None]
        albedo = torch.where(trim, _rgb((0.9, 0.9, 0.88), z), albedo)
    else:
        albedo = color_a * tone * grain
    baseboard = (z < 0.08)[:, None]
    return torch.where(baseboard, _rgb((0.85, 0.85, 0.82), z) * tone, albedo)


def _part_albedo(p_world, local, half, base, pattern, scene: Scene) -> torch.Tensor:
    """Albedo ``[R, 3]`` of object hits: ``local`` is the hit point in the part's frame (centred)."""
    seed = scene.style.texture_seed + 20
    albedo = base * (0.94 + 0.08 * _noise3(p_world, 4.0, seed))[:, None]
    lx, ly, lz = local.unbind(-1)
    hx, hy, hz = half.unbind(-1)
    front = lx > hx - 1e-3

    def where(mask, value):
        nonlocal albedo
        albedo = torch.where(mask[:, None], value, albedo)

    code = _PATTERN_CODE
    where(pattern == code["wood"], base * (0.85 + 0.25 * _noise(ly * 3.0, (lx + lz) * 25.0, seed + 1))[:, None])
    where(pattern == code["fabric"], base * (0.85 + 0.2 * _noise3(p_world, 30.0, seed + 2))[:, None])
    leaves = 0.6 * _noise3(p_world, 9.0, seed + 3) + 0.4 * _noise3(p_world, 25.0, seed + 4)
    where(pattern == code["foliage"], base * (0.45 + 0.9 * leaves)[:, None])

    # Bookshelf front: shelf boards every 0.36 m and books of random colour and height in between.
    from_bottom = lz + hz
    shelf_f = torch.floor(from_bottom / 0.36)
    in_shelf = from_bottom / 0.36 - shelf_f
    book = torch.floor((ly + hy) / 0.035).long()
    book_color = torch.as_tensor(_BOOK_COLORS, dtype=base.dtype, device=base.device)
    book_rgb = book_color[(_hash(book, shelf_f.long(), seed=seed + 5) * len(_BOOK_COLORS)).long().clamp_max(len(_BOOK_COLORS) - 1)]
    book_top = 0.1 + 0.9 * (0.6 + 0.35 * _hash(book, shelf_f.long(), seed=seed + 6))
    board = (in_shelf < 0.1) | (ly.abs() > hy - 0.03) | (from_bottom > 2 * hz - 0.03)
    books = torch.where((in_shelf > book_top)[:, None], _rgb((0.12, 0.1, 0.08), base), book_rgb)
    where((pattern == code["books"]) & front & ~board, books)

    screen = _rgb((0.02, 0.03, 0.05), base) + (0.08 * (0.5 - 0.5 * lz / hz))[:, None] * _rgb((0.4, 0.5, 0.8), base)
    where((pattern == code["screen"]) & front & (ly.abs() < hy - 0.02) & (lz.abs() < hz - 0.02), screen)

    door_gap = front & (ly.abs() < 0.006)
    handle = front & (((ly.abs() - 0.06).abs() < 0.012) & ((lz - 0.3 * hz).abs() < 0.06))
    where((pattern == code["doors"]) & door_gap, base * 0.35)
    where((pattern == code["doors"]) & handle, _rgb((0.6, 0.6, 0.62), base))
    fridge_gap = front & ((lz - 0.33 * hz).abs() < 0.006)
    fridge_handle = front & ((ly - (hy - 0.07)).abs() < 0.015) & ((lz - 0.33 * hz).abs() > 0.05) & ((lz - 0.33 * hz).abs() < 0.35)
    where((pattern == code["fridge"]) & fridge_gap, base * 0.35)
    where((pattern == code["fridge"]) & fridge_handle, _rgb((0.3, 0.3, 0.32), base))
    return albedo


# --------------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------------


def _trace(o: torch.Tensor, d: torch.Tensor, st: _SceneTensors, scene: Scene, shadows: bool):
    """Shade rays ``o, d [R, 3]`` (``d`` has camera-frame z = 1, so t is z-depth)."""
    t_room, axis = _hit_room(o, d, st.room)
    num_parts = st.center.shape[0]
    if num_parts:
        t_obj, column = _hit_parts(o, d, st, _HIT_EPS).min(-1)
        part = st.order[column]
    else:
        t_obj = torch.full_like(t_room, torch.inf)
        part = torch.zeros_like(axis)
    on_object = t_obj < t_room
    depth = torch.where(on_object, t_obj, t_room)
    point = o + depth[:, None] * d

    # Room shell: normal points inwards, against the ray along the exit axis.
    axis_dir = d.gather(1, axis[:, None]).squeeze(1)
    normal = torch.zeros_like(d)
    normal.scatter_(1, axis[:, None], -torch.sign(axis_dir)[:, None])
    # Wall ids 0..3: y = 0, x = w, y = d, x = 0 (as in scene generation).
    wall_id = torch.where(axis == 1, torch.where(axis_dir < 0, 0, 2), torch.where(axis_dir > 0, 1, 3))
    albedo = torch.empty_like(d)
    on_shell = ~on_object
    is_floor = on_shell & (axis == 2) & (axis_dir < 0)
    is_ceiling = on_shell & (axis == 2) & (axis_dir > 0)
    is_wall = on_shell & (axis != 2)
    px, py, pz = point.unbind(-1)
    if is_floor.any():
        albedo[is_floor] = _floor_albedo(px[is_floor], py[is_floor], scene)
    if is_ceiling.any():
        ceiling = _rgb(scene.style.ceiling_color, d)
        albedo[is_ceiling] = ceiling * (0.96 + 0.05 * _noise(px[is_ceiling], py[is_ceiling], scene.style.texture_seed + 30))[:, None]
    if is_wall.any():
        along = torch.where(axis == 1, px, py)
        albedo[is_wall] = _wall_albedo(along[is_wall], pz[is_wall], wall_id[is_wall], scene)

    instance = torch.zeros_like(axis)
    if on_object.any():
        idx = part[on_object]
        hit = point[on_object]
        cos, sin = st.cos[idx], st.sin[idx]
        local = _to_local(hit - st.center[idx], cos, sin)
        half = st.half[idx]
        shape = st.shape[idx]
        scaled = local / half
        # Box: the face is the axis where the hit is closest to the surface (largest |local / half|).
        box_axis = scaled.abs().argmax(-1, keepdim=True)
        box_normal = torch.zeros_like(local).scatter_(1, box_axis, torch.sign(scaled.gather(1, box_axis)))
        radial = torch.stack([local[:, 0], local[:, 1], torch.zeros_like(local[:, 0])], -1)
        on_cap = scaled[:, 2].abs() >= radial.norm(dim=-1) / half[:, 0]
        cap_normal = torch.stack([torch.zeros_like(local[:, 0]), torch.zeros_like(local[:, 0]), torch.sign(local[:, 2])], -1)
        cylinder_normal = torch.where(on_cap[:, None], cap_normal, radial)
        local_normal = torch.where((shape == _SHAPE_CODE["box"])[:, None], box_normal, torch.where((shape == _SHAPE_CODE["cylinder"])[:, None], cylinder_normal, local))
        # Back to world: rotate by +yaw.
        nx, ny, nz = local_normal.unbind(-1)
        world_normal = torch.stack([cos * nx - sin * ny, sin * nx + cos * ny, nz], -1)
        normal[on_object] = world_normal / world_normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        albedo[on_object] = _part_albedo(hit, local, half, st.color[idx], st.pattern[idx], scene)
        instance[on_object] = st.instance[idx]

    to_light = st.light - point
    distance = to_light.norm(dim=-1)
    cosine = ((normal * to_light).sum(-1) / distance.clamp_min(1e-9)).clamp_min(0.0)
    lit = torch.ones_like(depth)
    if shadows and num_parts:
        origin = point + 2e-3 * normal
        # Shadow-ray direction is (light - origin), so an occluder lies at t in (0, 1).
        blocked = _hit_parts(origin, st.light - origin, st, 1e-4).amin(-1) < 1.0
        lit = torch.where(blocked, 0.0, 1.0)
    light = scene.light
    # Hemispherical ambient: light bounced off the floor brightens downward-facing surfaces (ceiling).
    ambient = light.ambient * (1.0 + 0.8 * (-normal[:, 2]).clamp_min(0.0))
    shading = ambient + light.intensity * cosine * lit / (1.0 + _FALLOFF * distance * distance)
    rgb = (albedo * shading[:, None]).clamp(0.0, 1.0)
    return rgb, depth, instance


def _as_batch(matrix, shape: tuple[int, int], name: str) -> np.ndarray:
    array = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    array = array.astype(np.float64)
    if array.shape[-2:] != shape or array.ndim not in (2, 3):
        raise ValueError(f"{name} must be [{shape[0]}, {shape[1]}] or [V, {shape[0]}, {shape[1]}], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array.reshape(-1, *shape)


def render(
    scene: Scene,
    extrinsics=None,
    intrinsics=None,
    image_size: Optional[tuple[int, int]] = None,
    *,
    shadows: bool = True,
    device: Union[str, torch.device, None] = None,
    chunk_elements: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """Ray-cast views of ``scene``.

    Args:
        scene: the room to draw.
        extrinsics: world->camera ``[4, 4]`` or ``[V, 4, 4]`` (numpy or torch); default: the scene's.
        intrinsics: pixel intrinsics ``[3, 3]`` or ``[V, 3, 3]`` for ``image_size``; default: the scene's
            (rescaled with :meth:`Scene.intrinsics_at` when ``image_size`` differs from the scene's).
        image_size: ``(H, W)``; default: the scene's.
        shadows: cast shadow rays towards the light (about twice the cost).
        device: torch device to trace on (default CPU).
        chunk_elements: rays x primitives per chunk (memory bound); default depends on the device.
    Returns:
        ``rgb`` float32 ``[V, H, W, 3]`` in [0, 1], ``depth`` float32 ``[V, H, W]`` (metres, z-depth),
        ``instance`` int32 ``[V, H, W]`` (0 = floor/walls/ceiling, k = ``scene.objects[k - 1]``);
        the leading ``V`` is dropped when a single ``[4, 4]`` camera was given. Outputs are bit-identical
        for the same inputs on the same device and torch build (float32 tracing).
    """
    image_size = scene.image_size if image_size is None else image_size
    height, width = check_image_size(image_size)
    single = extrinsics is not None and np.ndim(extrinsics) == 2
    if extrinsics is None:
        extrinsics = scene.extrinsics
    if intrinsics is None:
        intrinsics = scene.intrinsics_at((height, width))
    extrinsics = _as_batch(extrinsics, (4, 4), "extrinsics")
    intrinsics = _as_batch(intrinsics, (3, 3), "intrinsics")
    if len(intrinsics) == 1 and len(extrinsics) > 1:
        intrinsics = np.repeat(intrinsics, len(extrinsics), axis=0)
    if len(intrinsics) != len(extrinsics):
        raise ValueError(f"got {len(extrinsics)} extrinsics but {len(intrinsics)} intrinsics")
    if len(extrinsics) == 0:
        raise ValueError("need at least one camera to render, got 0")
    rotation = extrinsics[:, :3, :3]
    if not np.allclose(rotation @ rotation.transpose(0, 2, 1), np.eye(3), atol=1e-5):
        raise ValueError("extrinsics must be rigid: their 3x3 rotation block is not orthonormal")
    if (intrinsics[:, 0, 0] <= 0).any() or (intrinsics[:, 1, 1] <= 0).any():
        raise ValueError("intrinsics must have positive focal lengths fx, fy")
    centers = invert_rigid(extrinsics)[:, :3, 3]
    room = np.asarray(scene.room_size)
    if (centers <= 0).any() or (centers >= room).any():
        raise ValueError(f"every camera centre must be inside the room (0, 0, 0)-{tuple(room)}, got {centers.tolist()}")

    device = torch.device(device or "cpu")
    st = _SceneTensors.from_scene(scene, device)
    # Ray directions with camera z = 1: the hit parameter t is then the z-depth.
    cols = (np.arange(width) + 0.5 - intrinsics[:, 0, 2, None]) / intrinsics[:, 0, 0, None]
    rows = (np.arange(height) + 0.5 - intrinsics[:, 1, 2, None]) / intrinsics[:, 1, 1, None]
    cam_dirs = np.stack(np.broadcast_arrays(cols[:, None, :], rows[:, :, None], np.ones((1, 1, 1))), axis=-1)
    world_dirs = np.einsum("vhwj,vji->vhwi", cam_dirs, rotation)  # R^T d: camera -> world
    origins = np.broadcast_to(centers[:, None, None, :], world_dirs.shape)
    d_all = torch.as_tensor(world_dirs.reshape(-1, 3), dtype=torch.float32).to(device)
    o_all = torch.as_tensor(np.ascontiguousarray(origins).reshape(-1, 3), dtype=torch.float32).to(device)

    if chunk_elements is None:
        chunk_elements = 2**20 if device.type == "cpu" else 2**25
    rays_per_chunk = max(1024, chunk_elements // max(1, st.center.shape[0]))
    outputs = [_trace(o_all[i : i + rays_per_chunk], d_all[i : i + rays_per_chunk], st, scene, shadows) for i in range(0, len(o_all), rays_per_chunk)]
    rgb, depth, instance = (torch.cat(parts).cpu().numpy() for parts in zip(*outputs))
    views = len(extrinsics)
    result = {
        "rgb": rgb.reshape(views, height, width, 3).astype(np.float32),
        "depth": depth.reshape(views, height, width).astype(np.float32),
        "instance": instance.reshape(views, height, width).astype(np.int32),
    }
    if single:
        result = {k: v[0] for k, v in result.items()}
    return result
