"""Evaluation throughput: questions grouped by scene against one question per pass, and a full VSI-Bench projection.

    python bench/bench_eval.py [--scenes 4] [--questions 17] [--batch-size 4] [--repeats 3] [--threads 1] [--quick]

**Measured** (a random tiny Spa3-VLM, ``hub_configs/spa3-vlm-tiny``, on fake VSI-Bench videos): the runner
(:func:`spa3_vlm.evaluation.runner.run_generation`) answers every question three ways, in rotating order within each
round: one question per pass (frames decoded and Spa3R run for every question, ``--no_scene_grouping``), grouped by
scene (frames and Spa3R once per video, ``--batch_size 1``) and grouped with batched generation (``--batch-size``).
Reported: questions per second and the per-round ratios to the per-question pass, whether the answers are the same,
and the cost of each stage (decoding a video, Spa3R, answering one question from given latents).

**Projected** (Spa3-VLM-3B on the full VSI-Bench: 5,130 questions over 288 videos, 32 frames each): the CPU stages are
measured here on a VSI-Bench-sized video (640x480; decoding and sampling 32 frames, and the processor: geometry frames
518x392, Qwen frames at lmms-eval's pixel budget); the model stages are counted in FLOPs (VGGT-1B aggregator and Spa3R
encoder from ``spa3r_flops``; Qwen2.5-VL-3B's vision tower, prefill and 16 new tokens, linear layers and attention)
and turned into seconds at ``--accelerator-tflops`` (an assumed sustained rate, 400 by default: about 40% of an H100's
dense bf16 peak). Nothing of the 3B model runs here. Grouped, the processor's cost per question is measured on a
batch of ``--batch-size`` questions about the same frames (one image pass per call).

Writes ``results/eval_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, format_table, machine_info, ratios, resolve_device, summarize, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "hub_configs" / "spa3-vlm-tiny"
OUTPUT = RESULTS_DIR / "eval_throughput.json"
VSIBENCH_QUESTIONS, VSIBENCH_VIDEOS = 5130, 288
OPTIONS = ["A. sofa", "B. chair", "C. table", "D. bed"]
# One question of each VSI-Bench kind, cycled: (question type, options, ground truth).
QUESTION_KINDS = [
    ("object_counting", None, "3"),
    ("object_abs_distance", None, "2.0"),
    ("object_size_estimation", None, "80"),
    ("room_size_estimation", None, "20"),
    ("object_rel_distance", OPTIONS, "B"),
    ("object_rel_direction_easy", OPTIONS[:2], "A"),
    ("object_rel_direction_medium", OPTIONS[:3], "C"),
    ("object_rel_direction_hard", OPTIONS, "D"),
    ("route_planning", OPTIONS, "A"),
    ("obj_appearance_order", OPTIONS, "C"),
]
MODES = ("per_question", "grouped", "grouped_batched")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenes", type=int, default=4, help="videos of the fake benchmark")
    parser.add_argument("--questions", type=int, default=17, help="questions per video (VSI-Bench: 5130 / 288 = 17.8)")
    parser.add_argument("--frames", type=int, default=32, help="frames shown per question (VSI-Bench protocol: 32)")
    parser.add_argument("--video-frames", type=int, default=96, help="frames in each fake video")
    parser.add_argument("--video-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--batch-size", type=int, default=4, help="generation batch of the batched grouped mode")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (each answers everything in every mode)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--accelerator-tflops", type=float, default=400.0, help="projection: sustained TFLOP/s assumed")
    parser.add_argument("--projection-video-seconds", type=float, default=60.0, help="projection: the 640x480 video's length")
    parser.add_argument("--quick", action="store_true", help="2 videos x 3 questions, 8 small frames, 1 round (smoke test)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.scenes, args.questions, args.frames, args.video_frames, args.video_size = 2, 3, 8, 12, (64, 48)
        args.batch_size, args.repeats, args.projection_video_seconds = 2, 1, 2.0
    return args


# ---------------------------------------------------------------------------------------------- fake benchmark


def write_video(path: Path, frames: int, size: tuple[int, int], fps: int = 24, seed: int = 0) -> Path:
    """An mp4 (MPEG-4 part 2) of ``frames`` frames of ``size = (W, H)``: a drifting colour gradient with noise, so
    that frames differ and decoding does real work."""
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            frame = base.copy()
            frame[..., 0] += ((xs + 3 * index) % 200).astype(np.uint8)
            frame[..., 1] += ((ys + 2 * index) % 200).astype(np.uint8)
            frame[..., 2] += np.uint8((index * 5) % 200)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def fake_vsibench(root: Path, scenes: int, questions: int, video_frames: int, size: tuple[int, int]) -> Path:
    """``root`` in the VSI-Bench layout (records.jsonl, ``scannet/scene_<i>.mp4``). The questions are ordered by kind,
    as in VSI-Bench, so one video's questions are spread over the whole list."""
    (root / "scannet").mkdir(parents=True, exist_ok=True)
    for scene in range(scenes):
        write_video(root / "scannet" / f"scene_{scene}.mp4", video_frames, size, seed=scene)
    records = []
    for number in range(questions):
        kind, options, answer = QUESTION_KINDS[number % len(QUESTION_KINDS)]
        for scene in range(scenes):
            records.append({"id": len(records), "dataset": "scannet", "scene_name": f"scene_{scene}", "question_type": kind,
                            "question": f"Question {number} about scene {scene}: {kind.replace('_', ' ')}?",
                            "options": options, "ground_truth": answer})  # fmt: skip
    with open(root / "records.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return root


def tiny_generator(device: torch.device):
    """A random tiny Spa3-VLM with varied answers (an untied unit-variance head, a non-zero adapter output)."""
    from spa3_vlm import Spa3VLMConfig, Spa3VLMForConditionalGeneration, Spa3VLMProcessor
    from spa3_vlm.inference import Spa3VLMGenerator

    config = Spa3VLMConfig.from_json_file(TINY / "config.json")
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = Spa3VLMForConditionalGeneration(config).to(device).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
        model.geometry_adaptor[-1].weight.normal_(0.0, 0.5)
    return Spa3VLMGenerator(model, Spa3VLMProcessor.from_pretrained(TINY))


# ---------------------------------------------------------------------------------------------- measured


def run_mode(generator, samples, mode: str, args, folder: Path) -> tuple[float, dict]:
    """Seconds to answer every sample in ``mode``, and the answers by id."""
    from spa3_vlm.evaluation.predictions import read_predictions
    from spa3_vlm.evaluation.runner import run_generation

    output = folder / f"{mode}-{time.monotonic_ns()}.jsonl"
    batch = args.batch_size if mode == "grouped_batched" else 1
    start = time.perf_counter()
    run_generation(generator, samples, output, num_frames=args.frames, batch_size=batch, progress=False,
                   log=lambda message: None, group_by_scene=mode != "per_question")  # fmt: skip
    seconds = time.perf_counter() - start
    answers = {key: line["prediction"] for key, line in read_predictions(output).predictions.items()}
    output.unlink()
    return seconds, answers


def stage_costs(generator, samples, args) -> dict:
    """Seconds of each stage for the first video: decoding its frames, Spa3R, one answer from given latents."""
    first = samples[0]
    start = time.perf_counter()
    frames = first.load_frames(args.frames)
    decode = time.perf_counter() - start
    start = time.perf_counter()
    latents = generator.encode_scene(frames)
    spa3r = time.perf_counter() - start
    start = time.perf_counter()
    generator.generate([(frames, first.prompt)], spatial_latents=latents)
    answer = time.perf_counter() - start
    return {"decode_s": decode, "spa3r_s": spa3r, "answer_s": answer}


def measure(args, device: torch.device) -> dict:
    from spa3_vlm.evaluation.samples import load_vsibench_samples

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as folder:
        root = fake_vsibench(Path(folder) / "vsibench", args.scenes, args.questions, args.video_frames, tuple(args.video_size))
        samples, _ = load_vsibench_samples(str(root), records_path=str(root / "records.jsonl"))
        generator = tiny_generator(device)
        run_mode(generator, samples[: len(samples) // args.questions or 1], "grouped", args, Path(folder))  # warm-up
        seconds = {mode: [] for mode in MODES}
        answers, stages = {}, []
        for round_index in range(args.repeats):
            order = MODES[round_index % 3 :] + MODES[: round_index % 3]
            for mode in order:
                elapsed, answers[mode] = run_mode(generator, samples, mode, args, Path(folder))
                seconds[mode].append(elapsed)
            stages.append(stage_costs(generator, samples, args))
    count = len(samples)
    reference = answers["per_question"]
    return {
        "questions": count,
        "videos": args.scenes,
        "frames": args.frames,
        "video_frames": args.video_frames,
        "video_size": list(args.video_size),
        "batch_size": args.batch_size,
        "seconds": {mode: summarize(values) for mode, values in seconds.items()},
        "questions_per_second": {mode: summarize([count / s for s in values]) for mode, values in seconds.items()},
        "speedup_vs_per_question": {mode: summarize(ratios(seconds["per_question"], seconds[mode])) for mode in MODES[1:]},
        "answers_differing_from_per_question": {mode: sum(answers[mode][key] != reference[key] for key in reference) for mode in MODES[1:]},
        "stages": {name: summarize([stage[name] for stage in stages]) for name in stages[0]},
    }


# ---------------------------------------------------------------------------------------------- projected


def qwen25vl_flops(config: dict, frames: int, grid: tuple[int, int], text_tokens: int, new_tokens: int) -> dict:
    """Forward FLOPs (2·m·n·k per Linear, QKᵀ and AV) of Qwen2.5-VL answering one question about ``frames`` images of
    ``grid`` patches: ``vision`` (patch embedding, 32 blocks with window attention and per-frame full attention in
    ``fullatt_block_indexes``, the 2x2 merger), ``prefill`` (the language model over visual and text tokens, causal)
    and ``decode`` (``new_tokens`` steps on the cache, the LM head included)."""
    vision, text = config["vision_config"], config["text_config"]
    d, inner, depth = vision["hidden_size"], vision["intermediate_size"], vision["depth"]
    per_frame = grid[0] * grid[1]
    patches = frames * per_frame
    window = (vision["window_size"] // vision["patch_size"]) ** 2
    full = set(vision["fullatt_block_indexes"])
    linear = 2 * patches * (4 * d * d + 3 * d * inner)  # qkv + proj, SwiGLU gate / up / down
    attention = sum(4 * d * patches * (per_frame if layer in full else window) for layer in range(depth))
    embed = 2 * patches * 3 * vision["temporal_patch_size"] * vision["patch_size"] ** 2 * d
    merged = patches // vision["spatial_merge_size"] ** 2
    merger = 2 * merged * (4 * d * 4 * d + 4 * d * vision["out_hidden_size"])
    h, layers, ffn = text["hidden_size"], text["num_hidden_layers"], text["intermediate_size"]
    kv = text["num_key_value_heads"] * (h // text["num_attention_heads"])
    per_token = 2 * (2 * h * h + 2 * h * kv + 3 * h * ffn)  # q, o; k, v; gate, up, down
    tokens = merged + text_tokens
    prefill = layers * (tokens * per_token + 2 * tokens * tokens * h) + 2 * h * text["vocab_size"]  # causal QKᵀ, AV
    decode = new_tokens * (layers * (per_token + 4 * tokens * h) + 2 * h * text["vocab_size"])
    return {"vision": embed + depth * linear + attention + merger, "prefill": prefill, "decode": decode, "visual_tokens": merged}


def spa3r_scene_flops(config: dict, frames: int, grid: tuple[int, int]) -> int:
    """VGGT aggregator + Spa3R encoder FLOPs for one scene (what ``encode_scene`` runs)."""
    from spa3r_flops import spa3r_encoder_flops, vggt_aggregator_flops

    from spa3_vlm import Spa3RConfig

    spa3r = Spa3RConfig.from_dict(config["spa3r_config"])
    return vggt_aggregator_flops(spa3r.vggt_config, frames, grid) + spa3r_encoder_flops(spa3r, frames, grid)["total"]


def cpu_stages(args) -> dict:
    """Decoding and sampling 32 frames of a 640x480 video, and the processor on them with the 3B's settings, here."""
    from spa3_vlm import Spa3VLMProcessor
    from spa3_vlm.evaluation.runner import LMMS_EVAL_MAX_PIXELS, LMMS_EVAL_MIN_PIXELS
    from spa3_vlm.processing_spa3r import Spa3RImageProcessor
    from spa3_vlm.video import load_video_frames

    processor = Spa3VLMProcessor.from_pretrained(TINY)
    processor.geometry_image_processor = Spa3RImageProcessor()  # VGGT-1B's: 518 wide (640x480 -> 518x392)
    processor.set_pixel_budget(min_pixels=LMMS_EVAL_MIN_PIXELS, max_pixels=LMMS_EVAL_MAX_PIXELS)
    frames = 8 if args.quick else 32
    with tempfile.TemporaryDirectory(prefix="bench-eval-video-") as folder:
        video = write_video(Path(folder) / "scene.mp4", max(frames, int(args.projection_video_seconds * 24)), (640, 480))
        decode, preprocess, preprocess_batch = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            decoded = load_video_frames(video, frames)
            decode.append(time.perf_counter() - start)
            chat = [{"role": "user", "content": [{"type": "image"}] * len(decoded) + [{"type": "text", "text": "How many chairs?"}]}]
            text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            start = time.perf_counter()
            inputs = processor(text=[text], images=[decoded], return_tensors="pt")
            preprocess.append(time.perf_counter() - start)
            # A grouped batch: --batch-size questions about these frames in one call share one image pass.
            start = time.perf_counter()
            processor(text=[text] * args.batch_size, images=[decoded] * args.batch_size, padding=True, return_tensors="pt")
            preprocess_batch.append((time.perf_counter() - start) / args.batch_size)
    grid = inputs["image_grid_thw"][0].tolist()  # (1, rows, columns) of patches per frame
    visual = int((inputs["input_ids"] == processor.image_token_id).sum())
    return {"frames": frames, "decode_s": summarize(decode), "preprocess_s": summarize(preprocess),
            "preprocess_per_question_in_batch_s": summarize(preprocess_batch), "batch_size": args.batch_size,
            "qwen_grid": grid[1:], "visual_tokens": visual, "text_tokens": int(inputs["input_ids"].shape[1]) - visual,
            "geometry_size": list(inputs["geometry_pixel_values"][0].shape[-2:])}  # fmt: skip


def project(args) -> dict:
    """Per-question seconds of each stage and the full run's hours, per-question pass vs grouped by scene."""
    config = json.loads((REPO / "hub_configs" / "spa3-vlm-3b" / "config.json").read_text())
    cpu = cpu_stages(args)
    frames = cpu["frames"]
    patch = config["spa3r_config"]["patch_size"]
    geometry_grid = (cpu["geometry_size"][0] // patch, cpu["geometry_size"][1] // patch)
    # The Qwen frames are the geometry frames at lmms-eval's pixel budget (the processor's own plan, read back).
    qwen = qwen25vl_flops(config, frames, tuple(cpu["qwen_grid"]), cpu["text_tokens"], 16)
    spa3r = spa3r_scene_flops(config, frames, geometry_grid)
    rate = args.accelerator_tflops * 1e12
    per_video = VSIBENCH_QUESTIONS / VSIBENCH_VIDEOS
    stages = {  # stage -> (seconds per question in a per-question pass, seconds per question grouped)
        f"decode {frames} frames (CPU, measured)": (cpu["decode_s"]["median"], cpu["decode_s"]["median"] / per_video),
        f"processor (CPU, measured; grouped: batches of {cpu['batch_size']})": (
            cpu["preprocess_s"]["median"], cpu["preprocess_per_question_in_batch_s"]["median"]
        ),
        f"Spa3R: VGGT-1B + encoder ({spa3r / 1e12:.0f} TFLOP)": (spa3r / rate, spa3r / rate / per_video),
        f"Qwen vision tower ({qwen['vision'] / 1e12:.0f} TFLOP)": (qwen["vision"] / rate,) * 2,
        f"prefill, {qwen['visual_tokens']} visual tokens ({qwen['prefill'] / 1e12:.0f} TFLOP)": (qwen["prefill"] / rate,) * 2,
        f"16 new tokens ({qwen['decode'] / 1e12:.2f} TFLOP)": (qwen["decode"] / rate,) * 2,
    }
    totals = [sum(values[i] for values in stages.values()) for i in (0, 1)]
    return {
        "assumed_tflops": args.accelerator_tflops,
        "questions": VSIBENCH_QUESTIONS,
        "videos": VSIBENCH_VIDEOS,
        "cpu": cpu,
        "flops": {"spa3r_per_scene": spa3r, **{f"qwen_{k}": v for k, v in qwen.items()}},
        "stages": {name: {"per_question_s": a, "grouped_s": b} for name, (a, b) in stages.items()},
        "per_question_s": totals[0],
        "grouped_s": totals[1],
        "hours_per_question_pass": totals[0] * VSIBENCH_QUESTIONS / 3600,
        "hours_grouped": totals[1] * VSIBENCH_QUESTIONS / 3600,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started = time.perf_counter()
    measured = measure(args, device)
    projection = project(args)

    def stat(summary, scale=1.0):
        return f"{summary['median'] * scale:.3g} [{summary['q1'] * scale:.3g}, {summary['q3'] * scale:.3g}]"

    print(f"Tiny Spa3-VLM, {measured['questions']} questions over {measured['videos']} videos, {args.frames} frames each, "
          f"{args.repeats} rounds, {torch.get_num_threads()} thread(s) on {device}")  # fmt: skip
    print(format_table(
        ["mode", "seconds", "questions/s", "speedup vs per-question", "answers differing"],
        [[mode, stat(measured["seconds"][mode]), stat(measured["questions_per_second"][mode]),
          stat(measured["speedup_vs_per_question"][mode]) if mode != "per_question" else "1",
          measured["answers_differing_from_per_question"].get(mode, 0)] for mode in MODES],
    ))  # fmt: skip
    print("stages (first video): " + ", ".join(f"{name} {stat(value)}" for name, value in measured["stages"].items()))
    print(f"\nProjection: Spa3-VLM-3B on VSI-Bench ({VSIBENCH_QUESTIONS} questions, {VSIBENCH_VIDEOS} videos), model stages at "
          f"{args.accelerator_tflops:g} TFLOP/s (assumed), CPU stages measured here")  # fmt: skip
    print(format_table(
        ["stage", "per-question pass s/question", "grouped s/question"],
        [[name, f"{v['per_question_s']:.3f}", f"{v['grouped_s']:.3f}"] for name, v in projection["stages"].items()]
        + [["total", f"{projection['per_question_s']:.2f}", f"{projection['grouped_s']:.2f}"],
           ["full run, hours", f"{projection['hours_per_question_pass']:.2f}", f"{projection['hours_grouped']:.2f}"]],
    ))  # fmt: skip
    result = {"benchmark": "eval_throughput", "measured": measured, "projection": projection, "machine": machine_info(device),
              "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "output"},
              "wall_seconds": time.perf_counter() - started}  # fmt: skip
    path = write_json(args.output, result)
    print(f"wrote {path} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
