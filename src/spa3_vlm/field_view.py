"""Predict the feature field of a novel camera from a few views: ``spa3-vlm field`` and the Space's See tab.

A Spa3R field model (``Spa3RForFieldPrediction``) encodes the context views once (:func:`encode_views`: backbone
tokens, cameras and the latent field ``z``); any camera placed relative to a context view
(:func:`relative_motion`) then only runs the decoder (:func:`decode_at`). Cameras are the dataset's when given,
else the backbone's camera head's (VGGT's convention: world = view 0's camera, up to scale).

    model, image_processor = load_field_model("runs/spa3r-tiny")
    views = read_views(["a.png", "b.png", "c.png"], image_processor)
    picture, note = novel_view_picture(model, views, yaw=30)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import PIL.Image
import torch

from .modeling_geometry import camera_centers_and_directions, relative_to_first
from .visualization import patch_picture, upscale

__all__ = [
    "EncodedViews",
    "decode_at",
    "encode_views",
    "field_basis",
    "field_head",
    "load_field_model",
    "nearest_view",
    "novel_view_picture",
    "read_views",
    "relative_motion",
    "run_backbone",
]

DISPLAY_WIDTH = 448


def load_field_model(source: str, device: str | torch.device = "auto"):
    """A ``Spa3RForFieldPrediction`` with its decoder (folder or hub id) in eval mode, and the image processor for
    its backbone's input width. Raises ``ValueError`` for an encoder-only checkpoint or one without a backbone."""
    from .inference import resolve_device
    from .modeling_spa3r import Spa3RForFieldPrediction
    from .processing_spa3r import Spa3RImageProcessor

    try:
        model, info = Spa3RForFieldPrediction.from_pretrained(source, output_loading_info=True)
    except (OSError, KeyError) as err:
        raise ValueError(f"could not load a Spa3R field model from {source!r}: {err}") from err
    missing = [k for k in info["missing_keys"] if k.split(".")[0] in ("decoder", "heads", "pose_tokenizer")]
    if missing:
        raise ValueError(
            f"{source!r} has no field decoder weights (missing {missing[:3]}...): predicting a field needs a "
            "Spa3RForFieldPrediction checkpoint such as train/pretrain_psfm.py saves, not an encoder-only Spa3RModel"
        )
    config = model.config
    if config.vggt_config is None:
        raise ValueError(f"{source!r} has no VGGT backbone (vggt_config is None): it cannot encode images")
    width = int(config.vggt_config.image_size)
    processor = Spa3RImageProcessor(target_width=width, max_height=width, patch_size=config.patch_size)
    return model.to(resolve_device(device)).eval(), processor


def read_views(sources: Sequence[Any], image_processor, num_frames: int = 8) -> torch.Tensor:
    """Image files (or images), a folder of frames or one video file -> context views ``[V, 3, H, W]`` in [0, 1]
    at the backbone's input size."""
    from .inference import load_scene_frames
    from .processing_spa3r import to_pil_rgb

    sources = list(sources)
    if len(sources) == 1 and isinstance(sources[0], (str, os.PathLike)) and not _is_image_file(sources[0]):
        frames = load_scene_frames(sources[0], num_frames)  # a video file or a folder of frames
    else:
        frames = [to_pil_rgb(source) for source in sources]
    if not frames:
        raise ValueError("no views: pass image files, a folder of frames or a video file")
    try:
        return image_processor.to_tensor(image_processor.resize_sample(frames))
    except ValueError as err:
        raise ValueError(f"cannot use these views together: {err}") from err


def _is_image_file(path) -> bool:
    from .processing_spa3_vlm import IMAGE_FILE_EXTENSIONS

    return os.path.isfile(path) and os.fspath(path).lower().endswith(IMAGE_FILE_EXTENSIONS)


def field_head(config) -> str:
    """The field to draw: the VGGT-feature head ``geo`` if present, else the first head with >= 3 channels."""
    heads = config.target_heads
    if "geo" in heads:
        return "geo"
    for name, size in heads.items():
        if size >= 3:
            return name
    raise ValueError(f"the model has no field head with at least 3 channels to colour: {dict(heads)}")


def relative_motion(yaw_deg: float, pitch_deg: float, forward: float, sideways: float) -> np.ndarray:
    """``[4, 4]`` map from a camera's frame to a virtual camera's frame (OpenCV axes: x right, y down, z forward).

    The virtual camera stands at ``(sideways, 0, forward)`` in the reference camera's frame, turned by ``yaw``
    about the reference camera's vertical axis (positive = to the right), then pitched about its own x axis
    (positive = up). So ``relative_motion(...) @ E_ref`` is the virtual camera's world->camera matrix.
    """
    for name, value in (("yaw", yaw_deg), ("pitch", pitch_deg), ("forward", forward), ("sideways", sideways)):
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    yaw, pitch = math.radians(float(yaw_deg)), math.radians(float(pitch_deg))
    turn = np.array([[math.cos(yaw), 0.0, math.sin(yaw)], [0.0, 1.0, 0.0], [-math.sin(yaw), 0.0, math.cos(yaw)]])
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(pitch), -math.sin(pitch)], [0.0, math.sin(pitch), math.cos(pitch)]])
    axes = turn @ tilt  # columns: the virtual camera's axes in the reference camera's frame
    centre = np.array([float(sideways), 0.0, float(forward)])
    motion = np.eye(4)
    motion[:3, :3] = axes.T
    motion[:3, 3] = -axes.T @ centre
    return motion


def nearest_view(extrinsics: np.ndarray, query: np.ndarray) -> tuple[int, float]:
    """Index of the camera nearest to ``query`` (centre distance + distance of unit viewing directions, as the
    field evaluation's nearest-view baseline) and that distance."""
    centres, directions = camera_centers_and_directions(torch.from_numpy(extrinsics).double())
    centre, direction = camera_centers_and_directions(torch.from_numpy(query).double())
    distance = (centres - centre).norm(dim=-1) + (directions - direction).norm(dim=-1)
    index = int(distance.argmin())
    return index, float(distance[index])


@dataclass
class EncodedViews:
    """Context views encoded by one field model: cameras in view 0's frame, backbone tokens and latents."""

    extrinsics: np.ndarray  # [V, 4, 4] relative to view 0
    intrinsics: np.ndarray  # [V, 3, 3] pixels
    context_tokens: torch.Tensor  # [1, V, N, C_backbone]
    latents: torch.Tensor  # [1, Q, hidden]
    image_size: tuple[int, int]
    pose_note: str


@torch.no_grad()
def run_backbone(model, pixels: torch.Tensor, compute_cameras: bool):
    """The frozen VGGT as pre-training runs it (bf16 autocast on GPUs): ``pixels [B, V, 3, H, W]``."""
    from .modeling_spa3r import frozen_autocast

    with frozen_autocast(pixels.device):
        return model.spa3r.backbone(pixels, compute_cameras=compute_cameras, compute_depth=False, output_all_layers=False)


@torch.no_grad()
def encode_views(
    model, images: torch.Tensor, extrinsics: Optional[np.ndarray] = None, intrinsics: Optional[np.ndarray] = None
) -> EncodedViews:
    """Encode context views ``images [V, 3, H, W]`` once. ``extrinsics [V, 4, 4]`` (world->camera, any world
    frame) and ``intrinsics [V, 3, 3]``: the dataset's cameras; without them the backbone's camera head estimates
    them (up to scale)."""
    target = next(model.parameters()).device
    pixels = images[None].to(target)
    height, width = pixels.shape[-2:]
    patch = model.config.patch_size
    if extrinsics is not None:
        if intrinsics is None:
            raise ValueError("pass intrinsics with the extrinsics")
        out = run_backbone(model, pixels, compute_cameras=False)
        extrinsics = relative_to_first(torch.from_numpy(np.asarray(extrinsics, dtype=np.float64))).numpy()
        note = "the dataset's cameras (relative to view 0)"
    else:
        if model.spa3r.backbone.camera_head is None:
            raise ValueError("the model's backbone has no camera head to estimate the poses of the views: pass cameras")
        out = run_backbone(model, pixels, compute_cameras=True)
        predicted = out.extrinsics[0].double().cpu()
        if predicted.shape[-2:] == (3, 4):
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=predicted.dtype).expand(predicted.shape[0], 1, 4)
            predicted = torch.cat([predicted, bottom], dim=1)
        intrinsics = out.intrinsics[0].double().cpu().numpy()
        usable = torch.isfinite(predicted).all() and np.isfinite(intrinsics).all()
        if not usable or (intrinsics[:, 0, 0] <= 0).any() or (intrinsics[:, 1, 1] <= 0).any():
            raise ValueError("the backbone's camera head gave no usable poses for these views; try other views")
        extrinsics = relative_to_first(predicted).numpy()
        note = "poses predicted by the backbone's camera head (up to scale, relative to view 0)"
    tokens = out.last_patch_tokens.float()
    # Cameras matter to encoders with encoder_camera_encoding="prope" and are ignored otherwise.
    latents = model.spa3r.encode_tokens(
        tokens,
        (height // patch, width // patch),
        torch.from_numpy(extrinsics).float()[None].to(target),
        torch.from_numpy(np.asarray(intrinsics)).float()[None].to(target),
        (height, width),
    )
    return EncodedViews(extrinsics, np.asarray(intrinsics, dtype=np.float64), tokens, latents, (height, width), note)


@torch.no_grad()
def decode_at(model, encoded: EncodedViews, extrinsics: np.ndarray, intrinsics: np.ndarray) -> dict[str, torch.Tensor]:
    """The field at the context cameras followed by ``extrinsics [K, 4, 4]`` / ``intrinsics [K, 3, 3]`` (in view
    0's frame): ``{head: [V + K, N, C]}``."""
    target = next(model.parameters()).device
    cameras = np.concatenate([encoded.extrinsics, np.asarray(extrinsics).reshape(-1, 4, 4)])[None]
    all_intrinsics = np.concatenate([encoded.intrinsics, np.asarray(intrinsics).reshape(-1, 3, 3)])[None]
    field = model.decode_field(
        encoded.latents,
        torch.from_numpy(cameras).float().to(target),
        torch.from_numpy(all_intrinsics).float().to(target),
        encoded.image_size,
    )
    return {name: value[0] for name, value in field.items()}


def _grid(model, image_size: tuple[int, int]) -> tuple[int, int]:
    patch = model.config.patch_size
    return image_size[0] // patch, image_size[1] // patch


def field_basis(encoded: EncodedViews, field: dict[str, torch.Tensor], head: str) -> tuple[torch.Tensor, str]:
    """The PCA basis of the pictures: the context views' backbone (teacher) features for ``geo``, else the field
    predicted at the context cameras."""
    if head == "geo":
        return encoded.context_tokens[0].reshape(-1, encoded.context_tokens.shape[-1]), "the backbone (teacher) features of the context views"
    views = encoded.extrinsics.shape[0]
    return field[head][:views].reshape(-1, field[head].shape[-1]), "the predicted field at the context cameras"


def novel_view_picture(
    model,
    images: torch.Tensor,
    yaw: float = 0.0,
    pitch: float = 0.0,
    forward: float = 0.0,
    sideways: float = 0.0,
    view_index: int = 0,
    extrinsics: Optional[np.ndarray] = None,
    intrinsics: Optional[np.ndarray] = None,
) -> tuple[PIL.Image.Image, str]:
    """One picture: the context views (top row) and, below, the nearest context view and the predicted field of a
    camera moved from view ``view_index`` (PCA colours). Returns the picture and a note on cameras and colours."""
    from PIL import ImageDraw

    views = images.shape[0]
    if not 0 <= int(view_index) < views:
        raise ValueError(f"view_index must be 0-{views - 1}, got {view_index}")
    encoded = encode_views(model, images, extrinsics, intrinsics)
    virtual = relative_motion(yaw, pitch, forward, sideways) @ encoded.extrinsics[view_index]
    field = decode_at(model, encoded, virtual[None], encoded.intrinsics[view_index][None])
    head = field_head(model.config)
    basis, basis_note = field_basis(encoded, field, head)
    nearest, _ = nearest_view(encoded.extrinsics, virtual)
    tile = max(1, DISPLAY_WIDTH // 2)
    thumbs = [upscale(image, tile // 2) for image in images]
    bottom = [upscale(images[nearest], tile), patch_picture(field[head][-1], basis, _grid(model, encoded.image_size), tile)]
    pad, label = 6, 16
    top_w = sum(t.width for t in thumbs) + pad * (len(thumbs) + 1)
    bottom_w = sum(b.width for b in bottom) + pad * 3
    width = max(top_w, bottom_w)
    height = label + max(t.height for t in thumbs) + label + max(b.height for b in bottom) + pad * 3
    canvas = PIL.Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), "context views", fill=(40, 40, 40))
    x, y = pad, label
    for thumb in thumbs:
        canvas.paste(thumb, (x, y))
        x += thumb.width + pad
    y += max(t.height for t in thumbs) + pad
    draw.text((pad, y), f"nearest view #{nearest}", fill=(40, 40, 40))
    draw.text((pad * 2 + bottom[0].width, y), f"predicted `{head}` field", fill=(40, 40, 40))
    y += label
    x = pad
    for part in bottom:
        canvas.paste(part, (x, y))
        x += part.width + pad
    note = (
        f"camera: yaw {yaw:+g} deg, pitch {pitch:+g} deg, forward {forward:+g}, sideways {sideways:+g} from view "
        f"{view_index}; cameras: {encoded.pose_note}; colours: top 3 principal components of {basis_note}"
    )
    return canvas, note
