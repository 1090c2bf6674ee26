"""Spa3-VLM Space: ask spatial questions about your own views (Ask), and see Spa3R's predicted feature field for a
camera you move (See: the paper's Figure 2, interactive).

Run ``python space/app.py`` (or ``python app.py`` inside ``space/``, as a Hugging Face Space does). Importing this
module builds ``demo`` and nothing else: models load on first use, and nothing touches the network unless a user
types a Hub id. Models: ``SPA3_VLM_MODEL`` / ``SPA3R_MODEL`` (hub id or folder), else
``runs/spa3-vlm-tiny-sft`` / ``runs/spa3r-tiny`` when trained (where train/sft_vlm.py and train/pretrain_psfm.py
save), else tiny models with random weights built from ``hub_configs/``.

The model boxes take only an allow-list: the choices they offer (the default above, ``tiny-random``, the saved models
under ``runs/``), the two variables above, and Hub ids (owner/name) unless the Hub is switched off
(``HF_HUB_OFFLINE=1``). Any other folder or path is refused with one message that names none of the server's
folders. ``SPA3_ALLOWED_MODELS`` (comma-separated folders or Hub ids) extends the allow-list of both boxes: such an
entry is offered in a box when it fits it (a saved model of that box's type, or a Hub id) and accepted in both.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
from pathlib import Path

# Before gradio is imported: it reads these at import time. No usage statistics, no Hub telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules next to this file
import spa3_demo as core  # noqa: E402
from spa3_vlm.vsibench import QUESTION_TYPES  # noqa: E402

SCENES = [f"SynthRooms test scene {i}" for i in range(core.NUM_EXAMPLE_SCENES)]
UPLOADS = "Uploaded images"
CONCURRENCY = int(os.environ.get("SPA3_SPACE_CONCURRENCY", "1"))  # CPU Spaces: one inference at a time per event
DEFAULT_VIDEO_FRAMES = 8  # the tiny processor's num_video_frames; VSI-Bench evaluation uses 32
MAX_FILE_SIZE = f"{core.MAX_FILE_MB:g}mb"
EXAMPLE_DIR = Path(tempfile.gettempdir()) / "spa3-space-examples"


def _user_errors(function):
    """Show a problem as a message in the UI (gr.Error) instead of a stack trace."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err), print_exception=False) from err
        except Exception as err:  # a bug or an environment problem: log it, still answer the user
            logging.getLogger("spa3_space").exception("unexpected error in %s", function.__name__)
            raise gr.Error(f"Unexpected error ({type(err).__name__}): {err}") from err

    return wrapper


def _scene_index(label: str) -> int:
    if label not in SCENES:
        raise ValueError(f"Unknown example scene {label!r}; choose one of {SCENES}.")
    return SCENES.index(label)


def _model_note(spec: core.ModelSpec, random_weights: bool, trained_how: str) -> str:
    if random_weights:
        return (
            f"**Model:** `{spec.label}`. ⚠️ **Random weights** (no trained model found): the output is meaningless "
            f"and only shows the pipeline working. {trained_how}"
        )
    return f"**Model:** `{spec.label}`."


VLM_HINT = (
    "To answer for real, make the tiny Spa3-VLM the README trains (about 10 minutes on a 2-core CPU), then restart "
    "the Space: `python train/pretrain_psfm.py --output_dir runs/spa3r-tiny` and `python train/sft_vlm.py "
    "--output_dir runs/spa3-vlm-tiny-sft --spa3r_name_or_path runs/spa3r-tiny`. Or set `SPA3_VLM_MODEL` to a Spa3-VLM "
    "folder or Hub id."
)
SPA3R_HINT = "Train one with `python train/pretrain_psfm.py` (saves `runs/spa3r-tiny`) or set `SPA3R_MODEL`."


# ------------------------------------------------------------------------------------------------ Ask


@_user_errors
def load_example(scene: str, question_type: str, progress=gr.Progress()):
    """Render an example SynthRooms scene (8-frame walk) and fill in one of its VSI-Bench-style questions."""
    index = _scene_index(scene)
    progress(0.1, desc="Rendering the scene")
    images, records = core.ask_example(index)
    record = core.pick_question(records, question_type or "any")
    EXAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for frame, image in enumerate(images):
        path = EXAMPLE_DIR / f"scene{index}_frame{frame:02d}.png"
        if not path.exists():
            image.save(path)
        paths.append(str(path))
    note = ""
    if question_type not in ("any", record["question_type"]):
        note = f" (this scene has no `{question_type}` question)"
        gr.Warning(f"{scene} has no {question_type} question; showing a {record['question_type']} question instead.")
    truth = (
        f"**Example:** {scene}, {len(paths)} frames, question type `{record['question_type']}`{note}. "
        f"**Ground truth** (from the scene's geometry): `{record['ground_truth']}`"
    )
    return paths, core.example_prompt(record), truth


@_user_errors
def ask(files, question: str, model: str, num_video_frames: float, max_new_tokens: float, progress=gr.Progress()):
    """Spa3-VLM's answer about the uploaded images or video. Returns (answer, notes, frames seen)."""
    progress(0.05, desc="Reading the upload")
    frames, kind = core.read_uploads(files, int(num_video_frames))
    if not (question or "").strip():
        raise ValueError("Type a question first.")
    progress(0.3, desc="Loading Spa3-VLM (first use only)")
    bundle = core.get_vlm(model)
    progress(0.6, desc=f"Answering from {len(frames)} frames")
    answer = core.answer_question(bundle, frames, kind, question, int(max_new_tokens))
    source = f"{len(frames)} evenly spaced frames of the video" if kind == "video" else f"{len(frames)} images"
    notes = _model_note(bundle.spec, bundle.random_weights, VLM_HINT) + (
        f"\n\n**Input:** {source}; the model saw {answer.frames_seen} frames ({answer.visual_tokens} visual tokens "
        f"in a {answer.prompt_tokens}-token prompt)."
    )
    if not answer.text:
        notes += " The model produced no text."
    gallery = [(frame, f"frame {i}") for i, frame in enumerate(frames)]
    return answer.text, notes, gallery


# ------------------------------------------------------------------------------------------------ See


def _views(source: str, files, bundle: core.FieldBundle) -> core.ViewSet:
    if source == UPLOADS:
        return core.uploaded_views(files, bundle)
    return core.synthrooms_views(_scene_index(source), bundle.image_size)


@_user_errors
def load_views(source: str, files, model: str, view_index: float = 0, progress=gr.Progress()):
    """The context views of a source, and the view slider's range (the chosen view kept when it still exists)."""
    progress(0.2, desc="Loading the field model (first use only)")
    bundle = core.get_field_model(model)
    progress(0.5, desc="Preparing the views")
    views = _views(source, files, bundle)
    last = views.num_views - 1
    return core.view_thumbnails(views), gr.Slider(maximum=last, value=min(int(view_index or 0), last))


@_user_errors
def see(source: str, files, view_index: float, yaw: float, pitch: float, forward: float, sideways: float, model: str,
        progress=gr.Progress()):  # fmt: skip
    """Predicted field (PCA colours) for the virtual camera, the nearest input view and, for SynthRooms scenes, the
    true rendering and its teacher features. Returns (field, nearest view, true view, teacher field, notes)."""
    progress(0.1, desc="Loading the field model (first use only)")
    bundle = core.get_field_model(model)
    progress(0.3, desc="Encoding the context views (once per scene)")
    views = _views(source, files, bundle)
    if int(view_index) >= views.num_views:
        raise ValueError(f"Context view must be 0-{views.num_views - 1} for {views.label}, got {int(view_index)}.")
    progress(0.6, desc="Decoding the field for the virtual camera")
    result = core.see(bundle, views, int(view_index), yaw, pitch, forward, sideways)
    lines = [_model_note(bundle.spec, bundle.random_weights, SPA3R_HINT), "", f"**Views:** {views.label}.", ""]
    lines += [f"- {note}" for note in result.notes]
    if views.scene is None:
        lines.append("- No true rendering: uploaded views have no ground truth.")
    elif result.true_view is None:
        gr.Warning("The virtual camera is outside the room: there is no true rendering for it.")
    return result.field, result.nearest, result.true_view, result.teacher_field, "\n".join(lines)


def _use_uploads():
    return UPLOADS


# ------------------------------------------------------------------------------------------------ UI

INTRO = """# Spa3-VLM: spatial questions and predicted feature fields
**Ask** a spatial question about your own frames (several images or one video). **See** what Spa3R's latent field
predicts for a camera you move around the scene: the paper's Figure 2, interactive. Everything runs locally; no
analytics, and the Hub is only contacted if you type a Hub id as the model."""

ASK_HELP = f"""Upload up to {core.MAX_FRAMES} images or one video (up to {core.MAX_FRAMES} evenly spaced frames are
sampled, as in VSI-Bench evaluation), at most {core.MAX_FILE_MB:g} MB per file, or load an example scene."""

SEE_HELP = f"""Pick views (a held-out SynthRooms scene, or 1-{core.MAX_SEE_VIEWS} of your own images), choose a
context view and move a virtual camera relative to it. Spa3R encodes all views once, then its decoder predicts the
feature field for the virtual camera (same intrinsics as the chosen view). SynthRooms cameras are metric and
expressed relative to view 0, as in pre-training; for uploads the backbone's camera head estimates the poses."""

def _result_image(label: str, elem_id: str) -> gr.Image:
    # PNG, not gradio's default WebP: lossy coding would blur the patch edges of the feature images.
    return gr.Image(label=label, type="pil", format="png", height=300, elem_id=elem_id)


vlm_choices = core.model_choices(core.VLM_ENV, core.DEFAULT_VLM_FOLDER, "spa3_vlm")
spa3r_choices = core.model_choices(core.SPA3R_ENV, core.DEFAULT_SPA3R_FOLDER, "spa3r")

with gr.Blocks(title="Spa3-VLM Space", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
    gr.Markdown(INTRO)
    with gr.Tabs():
        with gr.Tab("Ask", id="ask"):
            gr.Markdown(ASK_HELP)
            # Said before anyone asks: without a trained Spa3-VLM the default answers are meaningless.
            gr.Markdown(f"⚠️ No trained Spa3-VLM found, so answers come from random weights. {VLM_HINT}",
                        visible=vlm_choices[0] == core.TINY_RANDOM, elem_id="no-trained-vlm")
            with gr.Row():
                with gr.Column(scale=1):
                    ask_files = gr.File(label="Images or one video", file_count="multiple", type="filepath", height=180)
                    with gr.Row():
                        example_scene = gr.Dropdown(SCENES, value=SCENES[0], label="Example scene")
                        example_type = gr.Dropdown(["any", *QUESTION_TYPES], value="any", label="Question type")
                    example_button = gr.Button("Load example scene")
                    question = gr.Textbox(label="Question", lines=4, placeholder="How far apart are the sofa and the TV?")
                    with gr.Accordion("Model and sampling", open=False):
                        vlm_model = gr.Dropdown(
                            vlm_choices,
                            value=vlm_choices[0],
                            allow_custom_value=True,
                            label="Spa3-VLM: an offered model or a Hub id (tiny-random = untrained tiny model)",
                        )
                        num_video_frames = gr.Slider(
                            1, core.MAX_FRAMES, value=DEFAULT_VIDEO_FRAMES, step=1, label="Frames sampled from a video"
                        )
                        max_new_tokens = gr.Slider(1, 256, value=32, step=1, label="Max new tokens")
                    ask_button = gr.Button("Ask", variant="primary")
                with gr.Column(scale=1):
                    answer = gr.Textbox(label="Answer", lines=2, interactive=False)
                    ask_notes = gr.Markdown()
                    example_truth = gr.Markdown()
                    seen_frames = gr.Gallery(label="Frames the model sees", columns=4, height=300, elem_id="seen-frames")
        with gr.Tab("See", id="see"):
            gr.Markdown(SEE_HELP)
            with gr.Row():
                with gr.Column(scale=1):
                    see_source = gr.Dropdown([*SCENES, UPLOADS], value=SCENES[0], label="Views")
                    see_files = gr.File(
                        label=f"Your views (1-{core.MAX_SEE_VIEWS} images of one scene)",
                        file_count="multiple",
                        type="filepath",
                        height=120,
                    )
                    view_index = gr.Slider(0, core.MAX_SEE_VIEWS - 1, value=0, step=1, label="Move relative to view #")
                    yaw = gr.Slider(-180, 180, value=0, step=5, label="Yaw (°, + turns right)")
                    pitch = gr.Slider(-60, 60, value=0, step=5, label="Pitch (°, + looks up)")
                    forward = gr.Slider(-2, 2, value=0, step=0.1, label="Step forward (m, − steps back)")
                    sideways = gr.Slider(-2, 2, value=0, step=0.1, label="Step sideways (m, + steps right)")
                    spa3r_model = gr.Dropdown(
                        spa3r_choices,
                        value=spa3r_choices[0],
                        allow_custom_value=True,
                        label="Spa3R field model: an offered model or a Hub id",
                    )
                    see_button = gr.Button("Predict the field", variant="primary")
                with gr.Column(scale=2):
                    context_views = gr.Gallery(
                        label="Context views (Spa3R encodes all of them)",
                        columns=6,
                        height=130,
                        allow_preview=False,
                        elem_id="context-views",
                    )
                    with gr.Row():
                        field_image = _result_image("Predicted feature field (PCA colours)", "field-image")
                        nearest_image = _result_image("Nearest input view", "nearest-image")
                    with gr.Row():
                        true_image = _result_image("True rendering (SynthRooms)", "true-image")
                        teacher_image = _result_image("Teacher features of the true rendering", "teacher-image")
                    see_notes = gr.Markdown()

    example_button.click(
        load_example, [example_scene, example_type], [ask_files, question, example_truth], api_name="load_example"
    )
    ask_button.click(
        ask, [ask_files, question, vlm_model, num_video_frames, max_new_tokens], [answer, ask_notes, seen_frames],
        api_name="ask",
    )  # fmt: skip

    see_inputs = [see_source, see_files, view_index, yaw, pitch, forward, sideways, spa3r_model]
    see_outputs = [field_image, nearest_image, true_image, teacher_image, see_notes]
    view_inputs, view_outputs = [see_source, see_files, spa3r_model, view_index], [context_views, view_index]
    # Public endpoints first: a private event of the same function would otherwise take its plain name.
    see_source.input(load_views, view_inputs, view_outputs, api_name="load_views")
    see_button.click(see, see_inputs, see_outputs, api_name="see").then(
        load_views, view_inputs, view_outputs, api_name="load_views_after_see", api_visibility="private"
    )
    see_files.upload(_use_uploads, None, see_source, api_visibility="private").then(
        load_views, view_inputs, view_outputs, api_name="load_views_after_upload", api_visibility="private"
    )
    sliders = {"view": view_index, "yaw": yaw, "pitch": pitch, "forward": forward, "sideways": sideways}
    for name, slider in sliders.items():
        slider.release(see, see_inputs, see_outputs, api_name=f"see_on_{name}", api_visibility="private")

demo.queue(default_concurrency_limit=CONCURRENCY, max_size=32)

LAUNCH_KWARGS = dict(max_file_size=MAX_FILE_SIZE, ssr_mode=False, mcp_server=False)


def launch(**overrides):
    """``demo.launch`` with the Space's settings (upload limit, no SSR server); tests pass host and port."""
    return demo.launch(**{**LAUNCH_KWARGS, **overrides})


if __name__ == "__main__":
    launch()
