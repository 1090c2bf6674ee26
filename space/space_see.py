"""The See tab: context views (:class:`ViewSet`, from uploads here; SynthRooms ones in ``space_examples``), encoded
once per model and view set, and Spa3R's predicted feature field for a virtual camera moved from a context view.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import PIL.Image
import torch
from space_models import FieldBundle
from space_uploads import check_upload_sizes, classify, files_digest, read_image

MAX_SEE_VIEWS = 12  # the paper pre-trains Spa3R on 4-12 views
DISPLAY_WIDTH = 448


@dataclass
class ViewSet:
    """Context views for the See tab.

    ``images [V, 3, H, W]`` in [0, 1]. For SynthRooms scenes also ``scene`` (ground truth), ``world_extrinsics``
    ``[V, 4, 4]`` (world->camera, metres) and ``intrinsics [V, 3, 3]``; uploads get their cameras from the backbone.
    """

    key: str
    label: str
    images: torch.Tensor
    scene: object = None
    world_extrinsics: Optional[np.ndarray] = None
    intrinsics: Optional[np.ndarray] = None

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])


def uploaded_views(paths: Optional[Sequence[str]], bundle: FieldBundle) -> ViewSet:
    """Uploaded images -> context views at the model's input size (no cameras: the backbone predicts them)."""
    paths = [str(p) for p in (paths or [])]
    if not paths:
        raise ValueError("No views: upload 1-12 images of one scene, or pick a SynthRooms scene.")
    check_upload_sizes(paths)
    if any(classify(p) == "video" for p in paths):
        raise ValueError("The See tab takes images (views of one scene), not a video: upload 1-12 images.")
    if len(paths) > MAX_SEE_VIEWS:
        raise ValueError(f"Got {len(paths)} images; the field model takes at most {MAX_SEE_VIEWS} context views.")
    images = [read_image(p) for p in paths]
    try:
        resized = bundle.image_processor.resize_sample(images)
    except ValueError as err:
        raise ValueError(f"Cannot use these views together: {err}") from err
    pixels = bundle.image_processor.to_tensor(resized)
    return ViewSet(f"upload-{files_digest(paths)}-{tuple(pixels.shape)}", f"{len(paths)} uploaded images", pixels)


def relative_motion(yaw_deg: float, pitch_deg: float, forward: float, sideways: float) -> np.ndarray:
    """The virtual camera's motion from a context view (:func:`spa3_vlm.field_view.relative_motion`)."""
    from spa3_vlm.field_view import relative_motion as motion

    return motion(yaw_deg, pitch_deg, forward, sideways)


_ENCODED: OrderedDict = OrderedDict()
_ENCODE_LOCK = threading.Lock()


def encode_views(bundle: FieldBundle, views: ViewSet):
    """Encode ``views`` once per (model, view set); later camera moves only run the decoder."""
    key = (bundle.spec, views.key)
    with _ENCODE_LOCK:
        if key not in _ENCODED:
            _ENCODED[key] = _encode(bundle, views)
            while len(_ENCODED) > 8:
                _ENCODED.popitem(last=False)
        _ENCODED.move_to_end(key)
        return _ENCODED[key]


def _encode(bundle: FieldBundle, views: ViewSet):
    from spa3_vlm.field_view import encode_views as encode

    if views.scene is not None:
        encoded = encode(bundle.model, views.images, views.world_extrinsics, views.intrinsics)
        encoded.pose_note = "ground-truth cameras of the scene (metric, relative to view 0)"
        return encoded
    if bundle.model.spa3r.backbone.camera_head is None:
        raise ValueError(
            f"{bundle.spec.label} has no camera head to estimate the poses of uploaded images: pick a SynthRooms scene."
        )
    try:
        encoded = encode(bundle.model, views.images)
    except ValueError as err:
        raise ValueError("The backbone's camera head gave no usable poses for these images; try other views.") from err
    encoded.pose_note = "poses predicted by the VGGT camera head (up to scale, relative to view 0)"
    if bundle.random_weights:
        encoded.pose_note += "; with random weights these poses are arbitrary"
    return encoded


def _upscale(image: torch.Tensor, mode: str) -> PIL.Image.Image:
    from spa3_vlm.visualization import upscale

    return upscale(image, DISPLAY_WIDTH, mode)


def field_image(features: torch.Tensor, basis: torch.Tensor, grid: tuple[int, int]) -> PIL.Image.Image:
    """PCA colours of ``features [N, C]`` in the top-3 components of ``basis [M, C]`` as a patch image."""
    from spa3_vlm.visualization import patch_picture

    return patch_picture(features, basis, grid, DISPLAY_WIDTH)


@dataclass
class SeeResult:
    field: PIL.Image.Image
    nearest: PIL.Image.Image
    nearest_index: int
    true_view: Optional[PIL.Image.Image]
    teacher_field: Optional[PIL.Image.Image]
    extrinsics: np.ndarray  # [4, 4] the virtual camera, relative to view 0
    intrinsics: np.ndarray  # [3, 3]
    true_rgb: Optional[np.ndarray]  # [H, W, 3] float in [0, 1], the exact render
    notes: list


@torch.no_grad()
def see(
    bundle: FieldBundle,
    views: ViewSet,
    view_index: int,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    forward: float = 0.0,
    sideways: float = 0.0,
) -> SeeResult:
    """Predict the field for a virtual camera placed relative to context view ``view_index``.

    The virtual camera has the chosen view's intrinsics. Colours: PCA of the teacher (backbone) features of the
    context views when the head is ``geo`` (the features it learns to predict), else of the predicted field at
    the context cameras; the same basis colours the teacher features of the true rendering.
    """
    if isinstance(view_index, bool) or int(view_index) != view_index or not 0 <= int(view_index) < views.num_views:
        raise ValueError(f"Context view must be 0-{views.num_views - 1} ({views.label}), got {view_index}.")
    index = int(view_index)
    from spa3_vlm.field_view import decode_at, field_basis, nearest_view, run_backbone

    encoded = encode_views(bundle, views)
    model = bundle.model
    target = next(model.parameters()).device
    motion = relative_motion(yaw_deg, pitch_deg, forward, sideways)
    virtual = motion @ encoded.extrinsics[index]
    intrinsics = encoded.intrinsics[index]
    height, width = views.images.shape[-2:]
    patch = model.config.patch_size
    grid = (height // patch, width // patch)
    field = decode_at(model, encoded, virtual[None], intrinsics[None])
    head = bundle.head
    predicted = field[head]  # [V + 1, N, C]
    basis, basis_note = field_basis(encoded, field, head)
    notes = [
        f"Field head `{head}` ({predicted.shape[-1]} channels), coloured by the top 3 principal components of {basis_note}.",
        f"Cameras: {encoded.pose_note}.",
    ]
    nearest_index, distance = nearest_view(encoded.extrinsics, virtual)
    true_view = teacher = true_rgb = None
    if views.scene is not None:
        world = motion @ views.world_extrinsics[index]
        from spa3_vlm.data.synthrooms import render

        world_centre = -world[:3, :3].T @ world[:3, 3]
        room = np.asarray(views.scene.room_size, dtype=np.float64)
        if (world_centre <= 0).any() or (world_centre >= room).any():
            notes.append(
                "No true rendering: the virtual camera stands outside the room (at "
                f"({world_centre[0]:.2f}, {world_centre[1]:.2f}, {world_centre[2]:.2f}) m; the room spans "
                f"{room[0]:.2f} x {room[1]:.2f} x {room[2]:.2f} m)."
            )
        else:
            true_rgb = render(views.scene, world, views.intrinsics[index], (height, width))["rgb"]
        if true_rgb is not None:
            true_image = torch.from_numpy(true_rgb).permute(2, 0, 1)
            true_view = _upscale(true_image, "bilinear")
            if head == "geo":
                # The teacher sees the context views with the new one, as in pre-training's full pass.
                both = torch.cat([views.images, true_image[None]])[None].to(target)
                tokens = run_backbone(model, both, compute_cameras=False).last_patch_tokens
                teacher = field_image(tokens[0, -1], basis, grid)
    centre = np.round(-virtual[:3, :3].T @ virtual[:3, 3], 2) + 0.0  # + 0.0: no "-0.00"
    notes.append(
        f"Virtual camera centre in view 0's frame: ({centre[0]:+.2f}, {centre[1]:+.2f}, {centre[2]:+.2f}); nearest "
        f"input view: #{nearest_index} (distance {distance:.2f})."
    )
    return SeeResult(
        field=field_image(predicted[-1], basis, grid),
        nearest=_upscale(views.images[nearest_index], "bilinear"),
        nearest_index=nearest_index,
        true_view=true_view,
        teacher_field=teacher,
        extrinsics=virtual,
        intrinsics=intrinsics,
        true_rgb=true_rgb,
        notes=notes,
    )


def view_thumbnails(views: ViewSet) -> list[tuple[PIL.Image.Image, str]]:
    return [(_upscale(image, "bilinear"), f"view {i}") for i, image in enumerate(views.images)]
