"""SynthRooms scene model: rooms, furniture, room styles, hand-held camera walks and camera helpers.

World frame (metres): the room is the box ``[0, w] x [0, d] x [0, h]``; **z is up**, the floor is z = 0.
An object's local frame has its origin at the centre of its footprint on the floor, local z up and
local x = ``(cos yaw, sin yaw, 0)``, the direction the object's front faces (a sofa's seat, a TV's
screen, a bookshelf's books). ``size`` is the full extent of the object's oriented bounding box along
local (x, y, z), so ``size[0]`` is front-to-back depth, ``size[1]`` side-to-side width, ``size[2]`` height.

Cameras follow the package conventions (VGGT): extrinsics are world->camera ``[4, 4]`` with OpenCV
camera axes (x right, y down, z forward); intrinsics are ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in
pixels with ``cx = W / 2, cy = H / 2``; pixel ``(u, v)`` covers ``[u, u + 1) x [v, v + 1)``, so its
centre is at ``(u + 0.5, v + 0.5)``. Depth is z-depth along the optical axis, not ray length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

Color = tuple[float, float, float]
Vec3 = tuple[float, float, float]

SHAPES = ("box", "cylinder", "sphere")
# Per-part surface patterns the renderer knows (albedo modulation computed from the hit point).
PATTERNS = ("plain", "wood", "fabric", "foliage", "books", "screen", "doors", "fridge")
FLOOR_PATTERNS = ("planks", "tiles", "carpet")
WALL_PATTERNS = ("plain", "stripes", "wainscot")

ROOM_WIDTH_RANGE = (3.0, 10.0)
ROOM_DEPTH_RANGE = (3.0, 10.0)
ROOM_HEIGHT_RANGE = (2.4, 3.2)
EYE_HEIGHT_RANGE = (1.4, 1.7)
# Free space kept between the camera path and any object footprint, and the smallest gap between objects.
CAMERA_CLEARANCE = 0.45
OBJECT_GAP = 0.05


# --------------------------------------------------------------------------------------------------
# Ground-truth dataclasses
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One primitive of an object, in world coordinates.

    ``size`` is the full extent along the part's local (x, y, z) axes (rotated by ``yaw`` about z):
    a cylinder (vertical axis) has size ``(2r, 2r, height)``, a sphere ``(2r, 2r, 2r)``.
    """

    shape: str
    center: Vec3
    size: Vec3
    yaw: float = 0.0
    color: Color = (0.6, 0.6, 0.6)
    pattern: str = "plain"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"Part.shape must be one of {SHAPES}, got {self.shape!r}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"Part.pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if len(self.size) != 3 or min(self.size) <= 0:
            raise ValueError(f"Part.size must be 3 positive extents (m), got {self.size!r}")
        if self.shape == "cylinder" and not math.isclose(self.size[0], self.size[1]):
            raise ValueError(f"a cylinder needs size[0] == size[1] (its diameter), got {self.size!r}")
        if self.shape == "sphere" and not (math.isclose(self.size[0], self.size[1]) and math.isclose(self.size[0], self.size[2])):
            raise ValueError(f"a sphere needs three equal extents (its diameter), got {self.size!r}")


@dataclass(frozen=True)
class SceneObject:
    """A piece of furniture: its oriented bounding box (ground truth) and the primitives that draw it.

    ``center`` is the world centre of the bounding box (its z is half the height: objects stand on the
    floor), ``size`` its full extents along local (x, y, z), ``yaw`` the rotation about world z (radians).
    ``shape`` is the part's shape for single-primitive objects, ``"composite"`` otherwise.
    """

    category: str
    center: Vec3
    size: Vec3
    yaw: float
    shape: str
    parts: tuple[Part, ...]

    def footprint_corners(self) -> np.ndarray:
        """``[4, 2]`` world xy corners of the bounding box footprint."""
        return _rectangle_corners(np.asarray(self.center[:2]), np.asarray(self.size[:2]) / 2, self.yaw)


@dataclass(frozen=True)
class RoomStyle:
    """Procedural texture parameters of the room shell (colours are linear RGB in [0, 1])."""

    floor_pattern: str = "planks"
    floor_colors: tuple[Color, Color] = ((0.55, 0.36, 0.2), (0.45, 0.29, 0.16))
    floor_scale: float = 0.18  # plank width or tile side (m)
    floor_axis: int = 0  # planks run along world x (0) or y (1)
    wall_pattern: str = "plain"
    wall_colors: tuple[Color, Color] = ((0.9, 0.88, 0.84), (0.78, 0.8, 0.84))
    wall_scale: float = 0.25  # stripe width or wainscot height (m)
    ceiling_color: Color = (0.94, 0.94, 0.92)
    texture_seed: int = 0

    def __post_init__(self) -> None:
        if self.floor_pattern not in FLOOR_PATTERNS:
            raise ValueError(f"floor_pattern must be one of {FLOOR_PATTERNS}, got {self.floor_pattern!r}")
        if self.wall_pattern not in WALL_PATTERNS:
            raise ValueError(f"wall_pattern must be one of {WALL_PATTERNS}, got {self.wall_pattern!r}")
        if self.floor_scale <= 0 or self.wall_scale <= 0:
            raise ValueError(f"floor_scale and wall_scale must be > 0, got {self.floor_scale}, {self.wall_scale}")


@dataclass(frozen=True)
class Light:
    """A point light (world position, m) plus an ambient term; Lambertian shading."""

    position: Vec3
    intensity: float = 1.0
    ambient: float = 0.3


@dataclass(frozen=True, eq=False)
class Scene:
    """Ground truth of one room and its camera walk.

    Attributes:
        seed: the seed the scene was generated from (``-1`` for hand-made scenes).
        room_size: ``(w, d, h)`` in metres along world (x, y, z).
        objects: object ``k`` (1-based instance id) is ``objects[k - 1]``.
        extrinsics: ``[V, 4, 4]`` float64 world->camera.
        intrinsics: ``[V, 3, 3]`` float64, pixels of ``image_size``.
        image_size: ``(H, W)``.
        hfov_deg: horizontal field of view of the (fixed-focal) camera.
    """

    seed: int
    room_size: Vec3
    objects: tuple[SceneObject, ...]
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    image_size: tuple[int, int]
    hfov_deg: float
    style: RoomStyle = field(default_factory=RoomStyle)
    light: Light = field(default_factory=lambda: Light(position=(1.5, 1.5, 2.3)))

    @property
    def num_frames(self) -> int:
        return int(self.extrinsics.shape[0])

    @property
    def camera_centers(self) -> np.ndarray:
        """``[V, 3]`` camera centres in world coordinates."""
        rotation, translation = self.extrinsics[:, :3, :3], self.extrinsics[:, :3, 3]
        return -np.einsum("vji,vj->vi", rotation, translation)

    def intrinsics_at(self, image_size: tuple[int, int]) -> np.ndarray:
        """``[V, 3, 3]`` intrinsics of the same cameras rendered at another ``(H, W)``."""
        height, width = check_image_size(image_size)
        scale = np.diag([width / self.image_size[1], height / self.image_size[0], 1.0])
        return scale @ self.intrinsics


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """Validate ``(H, W)`` (two positive ints) and return it as a tuple."""
    try:
        height, width = image_size
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be a pair (H, W) of positive ints, got {image_size!r}") from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"image_size must be a pair (H, W) of positive ints, got {image_size!r}")
    return int(height), int(width)


def check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """Validate a ``(lo, hi)`` range with ``low <= lo <= hi <= high``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi), got {value!r}") from None
    if not (low <= lo <= hi <= high):
        raise ValueError(f"{name} must satisfy {low} <= lo <= hi <= {high}, got {value!r}")
    return lo, hi


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------------------
# Camera helpers (numpy or torch, any leading batch shape)
# --------------------------------------------------------------------------------------------------


def intrinsics_from_fov(hfov_deg: float, image_size: tuple[int, int]) -> np.ndarray:
    """``[3, 3]`` pinhole intrinsics with square pixels and the principal point at the image centre."""
    height, width = check_image_size(image_size)
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"hfov_deg must be in (0, 180), got {hfov_deg}")
    focal = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def look_extrinsics(center: np.ndarray, yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """World->camera ``[4, 4]`` for a camera at ``center`` (z-up world) looking along ``yaw`` (about z,
    from +x) tilted up by ``pitch`` and rolled clockwise (as seen by the camera) by ``roll``; radians."""
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    cos_r, sin_r = math.cos(roll), math.sin(roll)
    right, down = cos_r * right + sin_r * down, -sin_r * right + cos_r * down
    cam_to_world = np.stack([right, down, forward], axis=1)
    extrinsics = np.eye(4)
    extrinsics[:3, :3] = cam_to_world.T
    extrinsics[:3, 3] = -cam_to_world.T @ np.asarray(center, dtype=np.float64)
    return extrinsics


def points_to_first_camera(points, extrinsics):
    """World points ``[..., N, 3]`` -> frame-0 camera coordinates, given ``[..., V, 4, 4]`` extrinsics."""
    first = extrinsics[..., 0, :, :]
    return points @ first[..., :3, :3].swapaxes(-1, -2) + first[..., None, :3, 3]


def project_points(points, extrinsics, intrinsics):
    """Project world points ``[..., N, 3]`` with ``[..., 4, 4]`` / ``[..., 3, 3]`` cameras.

    Returns ``(pixels [..., N, 2], depth [..., N])``: continuous pixel coordinates (pixel ``(u, v)``
    spans ``[u, u+1)``) and z-depth in the camera (negative behind it).
    """
    camera = points @ extrinsics[..., :3, :3].swapaxes(-1, -2) + extrinsics[..., None, :3, 3]
    depth = camera[..., 2]
    homogeneous = camera @ intrinsics.swapaxes(-1, -2)
    return homogeneous[..., :2] / homogeneous[..., 2:3], depth


# --------------------------------------------------------------------------------------------------
# 2D footprint geometry
# --------------------------------------------------------------------------------------------------


def _rotation2d(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s], [s, c]])


def _rectangle_corners(center: np.ndarray, half: np.ndarray, yaw: float) -> np.ndarray:
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    return center + (signs * half) @ _rotation2d(yaw).T


def rectangles_overlap(corners_a: np.ndarray, corners_b: np.ndarray, gap: float = 0.0) -> bool:
    """Separating-axis test for two convex quads ``[4, 2]``; ``gap`` inflates the required separation."""
    for corners in (corners_a, corners_b):
        for i in range(4):
            edge = corners[(i + 1) % 4] - corners[i]
            axis = np.array([-edge[1], edge[0]]) / np.linalg.norm(edge)
            proj_a, proj_b = corners_a @ axis, corners_b @ axis
            if proj_a.max() + gap <= proj_b.min() or proj_b.max() + gap <= proj_a.min():
                return False
    return True


def distance_points_to_rectangle(points: np.ndarray, center: np.ndarray, half: np.ndarray, yaw: float) -> np.ndarray:
    """Euclidean distance ``[N]`` from xy points ``[N, 2]`` to a filled oriented rectangle (0 inside)."""
    local = (points - center) @ _rotation2d(yaw)
    outside = np.maximum(np.abs(local) - half, 0.0)
    return np.linalg.norm(outside, axis=-1)


# --------------------------------------------------------------------------------------------------
# Furniture catalogue: builders return parts in the object's local frame (origin at footprint centre)
# --------------------------------------------------------------------------------------------------

WOOD: tuple[Color, ...] = ((0.55, 0.36, 0.2), (0.42, 0.27, 0.15), (0.7, 0.52, 0.33), (0.3, 0.2, 0.12))
BLACK, WHITE = (0.1, 0.1, 0.1), (0.88, 0.88, 0.85)
_LocalPart = tuple[str, Vec3, Vec3, Color, str]  # shape, local centre, size, colour, pattern


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _pick(rng: np.random.Generator, palette: Sequence[Color]) -> Color:
    base = np.asarray(palette[int(rng.integers(len(palette)))])
    return tuple(float(c) for c in np.clip(base * rng.uniform(0.92, 1.08, 3), 0.0, 1.0))


def _darker(color: Color, factor: float = 0.6) -> Color:
    return tuple(c * factor for c in color)


def _box(center: Vec3, size: Vec3, color: Color, pattern: str = "plain") -> _LocalPart:
    return ("box", center, size, color, pattern)


def _cylinder(x: float, y: float, z_bottom: float, radius: float, height: float, color: Color, pattern: str = "plain") -> _LocalPart:
    return ("cylinder", (x, y, z_bottom + height / 2), (2 * radius, 2 * radius, height), color, pattern)


def _build_chair(rng):
    depth, width, height = _u(rng, 0.45, 0.58), _u(rng, 0.42, 0.55), _u(rng, 0.8, 1.0)
    seat_h, seat_t, leg = _u(rng, 0.42, 0.48), 0.05, 0.04
    color = _pick(rng, WOOD + (BLACK, WHITE, (0.7, 0.15, 0.12), (0.15, 0.3, 0.6)))
    legs = [
        _box((sx * (depth / 2 - leg / 2), sy * (width / 2 - leg / 2), (seat_h - seat_t) / 2), (leg, leg, seat_h - seat_t), _darker(color))
        for sx in (-1, 1)
        for sy in (-1, 1)
    ]
    seat = _box((0.0, 0.0, seat_h - seat_t / 2), (depth, width, seat_t), color, "wood")
    back = _box((-depth / 2 + 0.03, 0.0, (seat_h + height) / 2), (0.06, width, height - seat_h), color, "wood")
    return legs + [seat, back]


def _build_table(rng):
    depth, width, height = _u(rng, 0.7, 1.1), _u(rng, 0.8, 1.8), _u(rng, 0.7, 0.78)
    top_t, leg, inset = 0.04, 0.06, 0.04
    color = _pick(rng, WOOD + (WHITE, (0.25, 0.25, 0.27)))
    legs = [
        _box((sx * (depth / 2 - inset - leg / 2), sy * (width / 2 - inset - leg / 2), (height - top_t) / 2), (leg, leg, height - top_t), _darker(color, 0.75))
        for sx in (-1, 1)
        for sy in (-1, 1)
    ]
    return legs + [_box((0.0, 0.0, height - top_t / 2), (depth, width, top_t), color, "wood")]


def _build_sofa(rng):
    depth, width, height = _u(rng, 0.8, 1.0), _u(rng, 1.6, 2.4), _u(rng, 0.75, 0.95)
    seat_h, arm_w, arm_h, back_d = _u(rng, 0.4, 0.46), _u(rng, 0.12, 0.2), _u(rng, 0.55, 0.65), 0.2
    color = _pick(rng, ((0.45, 0.47, 0.5), (0.2, 0.3, 0.5), (0.35, 0.45, 0.3), (0.7, 0.62, 0.5), (0.55, 0.25, 0.2)))
    inner = width - 2 * arm_w
    return [
        _box((back_d / 2, 0.0, seat_h / 2), (depth - back_d, inner, seat_h), color, "fabric"),
        _box((-depth / 2 + back_d / 2, 0.0, height / 2), (back_d, inner, height), color, "fabric"),
        _box((0.0, width / 2 - arm_w / 2, arm_h / 2), (depth, arm_w, arm_h), _darker(color, 0.85), "fabric"),
        _box((0.0, -width / 2 + arm_w / 2, arm_h / 2), (depth, arm_w, arm_h), _darker(color, 0.85), "fabric"),
    ]


def _build_bed(rng):
    length, width, head_h = _u(rng, 1.95, 2.2), _u(rng, 0.95, 1.8), _u(rng, 0.9, 1.2)
    frame, bedding = _pick(rng, WOOD + (WHITE,)), _pick(rng, ((0.85, 0.85, 0.9), (0.4, 0.55, 0.7), (0.75, 0.6, 0.65), (0.55, 0.6, 0.45)))
    head_t = 0.06
    body = length - head_t
    return [
        _box((-length / 2 + head_t / 2, 0.0, head_h / 2), (head_t, width, head_h), frame, "wood"),
        _box((head_t / 2, 0.0, 0.15), (body, width, 0.3), frame, "wood"),
        _box((head_t / 2 + 0.02, 0.0, 0.4), (body - 0.08, width - 0.06, 0.2), bedding, "fabric"),
        _box((-length / 2 + head_t + 0.25, 0.0, 0.56), (0.35, 0.7 * width, 0.12), WHITE, "fabric"),
    ]


def _build_lamp(rng):
    height, shade_r, shade_h, base_r = _u(rng, 1.4, 1.8), _u(rng, 0.17, 0.25), _u(rng, 0.25, 0.35), _u(rng, 0.12, 0.16)
    metal = _pick(rng, ((0.25, 0.25, 0.25), (0.7, 0.6, 0.35), (0.75, 0.75, 0.78)))
    shade = _pick(rng, ((0.95, 0.9, 0.75), (0.92, 0.92, 0.92), (0.85, 0.7, 0.5)))
    return [
        _cylinder(0.0, 0.0, 0.0, base_r, 0.03, metal),
        _cylinder(0.0, 0.0, 0.03, 0.015, height - shade_h - 0.03, metal),
        _cylinder(0.0, 0.0, height - shade_h, shade_r, shade_h, shade, "fabric"),
    ]


def _build_tv(rng):
    depth, width, stand_h = _u(rng, 0.35, 0.5), _u(rng, 1.0, 1.8), _u(rng, 0.4, 0.55)
    screen_w = min(_u(rng, 0.7, 0.95) * width, 1.6)
    screen_h = screen_w * 9 / 16
    stand = _pick(rng, WOOD + (BLACK, WHITE))
    return [
        _box((0.0, 0.0, stand_h / 2), (depth, width, stand_h), stand, "doors"),
        _box((0.0, 0.0, stand_h + 0.03), (0.1, 0.2, 0.06), BLACK),
        _box((0.0, 0.0, stand_h + 0.06 + screen_h / 2), (0.06, screen_w, screen_h), (0.08, 0.08, 0.09), "screen"),
    ]


def _build_cabinet(rng):
    size = (_u(rng, 0.4, 0.6), _u(rng, 0.6, 1.4), _u(rng, 0.7, 1.2))
    color = _pick(rng, WOOD + (WHITE, (0.5, 0.5, 0.52), (0.3, 0.4, 0.35)))
    return [_box((0.0, 0.0, size[2] / 2), size, color, "doors")]


def _build_plant(rng):
    pot_r, pot_h, leaves_r = _u(rng, 0.12, 0.2), _u(rng, 0.25, 0.45), _u(rng, 0.22, 0.4)
    pot = _pick(rng, ((0.7, 0.4, 0.25), WHITE, (0.2, 0.2, 0.2)))
    leaves = _pick(rng, ((0.2, 0.5, 0.2), (0.3, 0.55, 0.25), (0.15, 0.4, 0.2)))
    sphere = ("sphere", (0.0, 0.0, pot_h + 0.8 * leaves_r), (2 * leaves_r,) * 3, leaves, "foliage")
    return [_cylinder(0.0, 0.0, 0.0, pot_r, pot_h, pot), sphere]


def _build_bookshelf(rng):
    size = (_u(rng, 0.28, 0.4), _u(rng, 0.7, 1.6), _u(rng, 1.5, 2.1))
    return [_box((0.0, 0.0, size[2] / 2), size, _pick(rng, WOOD + (WHITE, BLACK)), "books")]


def _build_refrigerator(rng):
    size = (_u(rng, 0.6, 0.75), _u(rng, 0.6, 0.9), _u(rng, 1.65, 1.95))
    return [_box((0.0, 0.0, size[2] / 2), size, _pick(rng, ((0.92, 0.92, 0.92), (0.75, 0.76, 0.78), (0.15, 0.15, 0.15))), "fridge")]


def _build_stool(rng):
    seat_r, height = _u(rng, 0.16, 0.21), _u(rng, 0.45, 0.75)
    color = _pick(rng, WOOD + (BLACK, (0.7, 0.15, 0.12), (0.9, 0.75, 0.2)))
    return [
        _cylinder(0.0, 0.0, 0.0, 0.9 * seat_r, 0.03, _darker(color)),
        _cylinder(0.0, 0.0, 0.03, 0.025, height - 0.08, _darker(color)),
        _cylinder(0.0, 0.0, height - 0.05, seat_r, 0.05, color, "wood"),
    ]


def _build_ball(rng):
    radius = _u(rng, 0.15, 0.35)
    color = _pick(rng, ((0.8, 0.2, 0.2), (0.2, 0.4, 0.8), (0.3, 0.7, 0.3), (0.9, 0.6, 0.1), (0.6, 0.3, 0.7)))
    return [("sphere", (0.0, 0.0, radius), (2 * radius,) * 3, color, "plain")]


def _build_trash_can(rng):
    color = _pick(rng, ((0.5, 0.5, 0.5), (0.2, 0.5, 0.3), (0.25, 0.3, 0.6), BLACK, WHITE))
    return [_cylinder(0.0, 0.0, 0.0, _u(rng, 0.12, 0.2), _u(rng, 0.3, 0.55), color)]


@dataclass(frozen=True)
class CategorySpec:
    builder: Callable[[np.random.Generator], list]
    weight: float  # relative sampling frequency
    max_count: int  # per room
    wall_probability: float  # chance the object is placed with its back against a wall


CATEGORIES: dict[str, CategorySpec] = {
    "chair": CategorySpec(_build_chair, 3.0, 4, 0.0),
    "table": CategorySpec(_build_table, 2.0, 2, 0.0),
    "sofa": CategorySpec(_build_sofa, 1.2, 2, 1.0),
    "bed": CategorySpec(_build_bed, 0.8, 1, 1.0),
    "lamp": CategorySpec(_build_lamp, 1.0, 2, 0.5),
    "tv": CategorySpec(_build_tv, 0.8, 1, 1.0),
    "cabinet": CategorySpec(_build_cabinet, 1.2, 3, 1.0),
    "plant": CategorySpec(_build_plant, 1.5, 3, 0.5),
    "bookshelf": CategorySpec(_build_bookshelf, 1.0, 2, 1.0),
    "refrigerator": CategorySpec(_build_refrigerator, 0.6, 1, 1.0),
    "stool": CategorySpec(_build_stool, 1.0, 3, 0.0),
    "ball": CategorySpec(_build_ball, 0.6, 2, 0.0),
    "trash can": CategorySpec(_build_trash_can, 1.0, 2, 0.3),
}
# Small things used to top a cramped room up to the minimum object count.
_SMALL_CATEGORIES = ("plant", "trash can", "stool", "ball", "lamp")


def make_object(category: str, local_parts: Sequence[_LocalPart], xy: Sequence[float], yaw: float) -> SceneObject:
    """Place local parts (shape, centre, size, colour, pattern; origin at the footprint centre) in the
    world at footprint centre ``xy`` with rotation ``yaw``; the bounding box is derived from the parts."""
    lows = np.array([np.asarray(c) - np.asarray(s) / 2 for _, c, s, _, _ in local_parts]).min(axis=0)
    highs = np.array([np.asarray(c) + np.asarray(s) / 2 for _, c, s, _, _ in local_parts]).max(axis=0)
    if lows[2] < -1e-9:
        raise ValueError(f"object parts must not go below the floor, lowest z is {lows[2]}")
    box_center_local = (lows + highs) / 2
    rotation = _rotation2d(yaw)
    origin = np.asarray(xy, dtype=np.float64)
    parts = []
    for shape, center, size, color, pattern in local_parts:
        center_xy = origin + rotation @ (np.asarray(center[:2]) - box_center_local[:2])
        parts.append(Part(shape, (float(center_xy[0]), float(center_xy[1]), float(center[2])), tuple(float(s) for s in size), float(yaw), tuple(color), pattern))
    shape = parts[0].shape if len(parts) == 1 else "composite"
    size = tuple(float(v) for v in highs - lows)
    center = (float(origin[0]), float(origin[1]), float(box_center_local[2]))
    return SceneObject(category, center, size, float(yaw), shape, tuple(parts))


# --------------------------------------------------------------------------------------------------
# Scene generation
# --------------------------------------------------------------------------------------------------


def _sample_style(rng: np.random.Generator) -> RoomStyle:
    floor_pattern = FLOOR_PATTERNS[int(rng.choice(3, p=[0.45, 0.35, 0.2]))]
    if floor_pattern == "planks":
        wood = _pick(rng, WOOD)
        floor_colors, floor_scale = (wood, _darker(wood, 0.8)), _u(rng, 0.12, 0.25)
    elif floor_pattern == "tiles":
        pairs = (((0.85, 0.85, 0.82), (0.75, 0.75, 0.72)), ((0.6, 0.35, 0.25), (0.5, 0.3, 0.2)), ((0.3, 0.3, 0.32), (0.8, 0.8, 0.8)), ((0.7, 0.72, 0.75), (0.62, 0.64, 0.68)))
        a, b = pairs[int(rng.integers(len(pairs)))]
        floor_colors, floor_scale = (_pick(rng, (a,)), _pick(rng, (b,))), _u(rng, 0.3, 0.6)
    else:
        carpet = _pick(rng, ((0.6, 0.55, 0.48), (0.4, 0.45, 0.58), (0.62, 0.4, 0.38), (0.5, 0.56, 0.5)))
        floor_colors, floor_scale = (carpet, _darker(carpet, 0.85)), 1.0
    pastels = ((0.92, 0.9, 0.85), (0.85, 0.88, 0.92), (0.9, 0.85, 0.8), (0.8, 0.88, 0.8), (0.95, 0.93, 0.8), (0.88, 0.82, 0.88), (0.75, 0.8, 0.85))
    wall_pattern = WALL_PATTERNS[int(rng.integers(3))]
    wall_a = _pick(rng, pastels)
    wall_b = _pick(rng, pastels) if wall_pattern == "stripes" else _darker(_pick(rng, pastels + WOOD[:1]), 0.8)
    wall_scale = _u(rng, 0.1, 0.4) if wall_pattern == "stripes" else _u(rng, 0.8, 1.0)
    return RoomStyle(
        floor_pattern=floor_pattern,
        floor_colors=(floor_colors[0], floor_colors[1]),
        floor_scale=floor_scale,
        floor_axis=int(rng.integers(2)),
        wall_pattern=wall_pattern,
        wall_colors=(wall_a, wall_b),
        wall_scale=wall_scale,
        ceiling_color=_pick(rng, ((0.95, 0.95, 0.93),)),
        texture_seed=int(rng.integers(2**31 - 1)),
    )


def _sample_path(rng: np.random.Generator, width: float, depth: float) -> np.ndarray:
    """Control points ``[3, 2]`` of a quadratic Bezier walk inside an inner rectangle of the room."""
    margin = np.clip(0.3 * np.array([width, depth]), 0.6, 1.5)
    low, high = margin, np.array([width, depth]) - margin
    start = rng.uniform(low, high)
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.4, min(2.5, float(np.linalg.norm(high - low))))
    end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), low, high)
    normal = np.array([-np.sin(angle), np.cos(angle)])
    control = np.clip((start + end) / 2 + rng.uniform(-0.4, 0.4) * length * normal, low, high)
    # The curve stays in the convex hull of its control points, hence inside [low, high].
    return np.stack([start, control, end])


def _bezier(control: np.ndarray, s: np.ndarray) -> np.ndarray:
    s = s[:, None]
    return (1 - s) ** 2 * control[0] + 2 * (1 - s) * s * control[1] + s**2 * control[2]


def _try_place(rng, category, room_wh, path_points, placed) -> SceneObject | None:
    spec = CATEGORIES[category]
    local_parts = spec.builder(rng)
    probe = make_object(category, local_parts, (0.0, 0.0), 0.0)
    half = np.asarray(probe.size[:2]) / 2
    against_wall = rng.uniform() < spec.wall_probability
    for _ in range(40):
        if against_wall:
            wall = int(rng.integers(4))  # 0: y = 0, 1: x = w, 2: y = d, 3: x = 0
            along_len = room_wh[0] if wall % 2 == 0 else room_wh[1]
            if along_len < 2 * half[1] + 0.1:
                continue
            along = rng.uniform(half[1] + 0.05, along_len - half[1] - 0.05)
            off = half[0] + rng.uniform(0.01, 0.08)
            xy, yaw = {
                0: ((along, off), np.pi / 2),
                1: ((room_wh[0] - off, along), np.pi),
                2: ((along, room_wh[1] - off), -np.pi / 2),
                3: ((off, along), 0.0),
            }[wall]
        else:
            yaw = rng.uniform(-np.pi, np.pi)
            radius = float(np.linalg.norm(half))
            if min(room_wh) < 2 * radius + 0.1:
                continue
            xy = rng.uniform(radius + 0.05, np.asarray(room_wh) - radius - 0.05)
        xy = np.asarray(xy, dtype=np.float64)
        corners = _rectangle_corners(xy, half, yaw)
        if (corners < 0.0).any() or (corners > np.asarray(room_wh)).any():
            continue
        if distance_points_to_rectangle(path_points, xy, half, yaw).min() < CAMERA_CLEARANCE:
            continue
        if any(rectangles_overlap(corners, other.footprint_corners(), OBJECT_GAP) for other in placed):
            continue
        return make_object(category, local_parts, xy, float(yaw))
    return None


def _place_objects(rng, room_wh, path_points, count_range) -> list[SceneObject]:
    names = list(CATEGORIES)
    weights = np.array([CATEGORIES[n].weight for n in names])
    target = int(rng.integers(count_range[0], count_range[1] + 1))
    wanted: list[str] = []
    while len(wanted) < target:
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        if wanted.count(name) < CATEGORIES[name].max_count:
            wanted.append(name)
    # Big pieces first: they are the hardest to fit.
    footprint = {"bed": 5, "sofa": 4, "table": 3, "tv": 3, "bookshelf": 2, "refrigerator": 2, "cabinet": 2}
    wanted.sort(key=lambda n: -footprint.get(n, 1))
    placed: list[SceneObject] = []
    for name in wanted:
        obj = _try_place(rng, name, room_wh, path_points, placed)
        if obj is not None:
            placed.append(obj)
    for _ in range(200):
        if len(placed) >= count_range[0]:
            break
        name = _SMALL_CATEGORIES[int(rng.integers(len(_SMALL_CATEGORIES)))]
        obj = _try_place(rng, name, room_wh, path_points, placed)
        if obj is not None:
            placed.append(obj)
    else:
        raise RuntimeError(f"could not place {count_range[0]} objects in a {room_wh[0]:.2f} x {room_wh[1]:.2f} m room")
    # Shuffle so that instance ids do not encode the size order.
    order = rng.permutation(len(placed))
    return [placed[i] for i in order]


def _smooth_jitter(rng: np.random.Generator, s: np.ndarray, amplitude: float) -> np.ndarray:
    """Sum of two low-frequency sinusoids: smooth like a hand-held camera's wobble."""
    out = np.zeros_like(s)
    for _ in range(2):
        out += amplitude / 2 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * s + rng.uniform(0, 2 * np.pi))
    return out


def _free_distance(origin: np.ndarray, yaw: np.ndarray, room_wh: tuple[float, float]) -> np.ndarray:
    """Distance from ``origin`` (inside the room) to the wall along each heading ``yaw [K]``."""
    direction = np.stack([np.cos(yaw), np.sin(yaw)], axis=-1)
    with np.errstate(divide="ignore"):
        exits = np.where(direction > 0, (np.asarray(room_wh) - origin) / direction, -origin / direction)
    return np.where(np.abs(direction) < 1e-12, np.inf, exits).min(axis=-1)


def _sample_heading(rng, room_wh, middle, objects, sweep, hfov) -> float:
    """Central heading of the pan: prefer directions that see many objects and look across the room."""
    candidates = np.linspace(-np.pi, np.pi, 24, endpoint=False)
    window = abs(sweep) / 2 + 0.4 * hfov
    score = 2.0 * _free_distance(middle, candidates, room_wh) / max(room_wh)
    if objects:
        centers = np.array([obj.center[:2] for obj in objects])
        bearings = np.arctan2(centers[:, 1] - middle[1], centers[:, 0] - middle[0])
        offsets = np.angle(np.exp(1j * (bearings[None, :] - candidates[:, None])))
        score = score + (np.abs(offsets) < window).sum(axis=1)
    weights = np.exp((score - score.max()) / 0.5)
    return float(candidates[rng.choice(len(candidates), p=weights / weights.sum())] + rng.uniform(-0.13, 0.13))


def _sample_cameras(rng, room_wh, path, objects, num_frames, hfov):
    s = np.linspace(0.0, 1.0, num_frames)
    xy = _bezier(path, s)
    z = rng.uniform(*EYE_HEIGHT_RANGE) + _smooth_jitter(rng, s, 0.03)
    sweep = rng.uniform(math.radians(40), math.radians(120)) * rng.choice([-1.0, 1.0])
    heading = _sample_heading(rng, room_wh, _bezier(path, np.array([0.5]))[0], objects, sweep, hfov)
    yaw = heading + sweep * (s - 0.5) + _smooth_jitter(rng, s, math.radians(4))
    pitch = rng.uniform(math.radians(-20), math.radians(-8)) + _smooth_jitter(rng, s, math.radians(3))
    roll = _smooth_jitter(rng, s, math.radians(3))
    centers = np.concatenate([xy, z[:, None]], axis=1)
    return np.stack([look_extrinsics(c, a, p, r) for c, a, p, r in zip(centers, yaw, pitch, roll)])


def sample_scene(
    seed: int,
    num_frames: int,
    image_size: tuple[int, int],
    hfov_deg_range: tuple[float, float],
    num_objects_range: tuple[int, int],
) -> Scene:
    """Draw a room, its furniture and a camera walk from ``seed`` (validated inputs expected)."""
    rng = np.random.default_rng(seed)
    width, depth = rng.uniform(*ROOM_WIDTH_RANGE), rng.uniform(*ROOM_DEPTH_RANGE)
    height = rng.uniform(*ROOM_HEIGHT_RANGE)
    room_wh = (float(width), float(depth))
    style = _sample_style(rng)
    path = _sample_path(rng, width, depth)
    path_points = _bezier(path, np.linspace(0.0, 1.0, 64))
    objects = _place_objects(rng, room_wh, path_points, num_objects_range)
    hfov = float(rng.uniform(*hfov_deg_range))
    extrinsics = _sample_cameras(rng, room_wh, path, objects, num_frames, math.radians(hfov))
    intrinsics = np.repeat(intrinsics_from_fov(hfov, image_size)[None], num_frames, axis=0)
    light_xy = rng.uniform(0.3, 0.7, 2) * np.array(room_wh)
    light = Light((float(light_xy[0]), float(light_xy[1]), float(height - 0.25)), float(rng.uniform(0.85, 1.1)), float(rng.uniform(0.25, 0.38)))
    return Scene(
        seed=seed,
        room_size=(float(width), float(depth), float(height)),
        objects=tuple(objects),
        extrinsics=extrinsics,
        intrinsics=intrinsics,
        image_size=tuple(image_size),
        hfov_deg=hfov,
        style=style,
        light=light,
    )
