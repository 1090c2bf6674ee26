"""Measurement helpers shared by the Spa3R benchmarks: interleaved timing, spread, peak memory, FLOPs.

The machines these run on are shared and noisy, so the figures that matter are *ratios of two things
timed in the same round*: :func:`interleaved_times` runs every workload once per round (rotating the
order) and the caller divides round by round, then reports the median and interquartile range of the
per-round ratios (:func:`summarize`).

Peak memory (:func:`peak_memory_bytes`) means the most bytes of tensors allocated *by the call* that are
alive at the same time; tensors that exist before the call (weights, inputs, earlier gradients) are not
counted. On CUDA it is ``torch.cuda.max_memory_allocated`` minus what was allocated before. On CPU it is
the running total of the ``[memory]`` allocation events that ``torch.profiler`` records from torch's CPU
allocator: tensor storage only, not allocator slack, not the Python heap, not scratch buffers that
BLAS/oneDNN allocate themselves.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------- device


def sync(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock time covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype the benchmarks compute in: bf16 on CUDA (autocast), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (float32, where bf16 matmuls are emulated on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_device(name: str) -> torch.device:
    """``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` -> ``torch.device``; a clear error when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:index], got {name!r}")
    return device


# ---------------------------------------------------------------------------------------------- timing


def summarize(samples: Sequence[float]) -> dict:
    """Median, quartiles (linear interpolation), IQR, relative IQR, min, max and count of ``samples``."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        raise ValueError("summarize() needs at least one sample, got none")
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "rel_iqr": float((q3 - q1) / median) if median else float("nan"),
        "min": float(values.min()),
        "max": float(values.max()),
        "n": int(values.size),
    }


def interleaved_times(
    workloads: Mapping[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds per call of each workload, ``repeats`` rounds, every workload timed once per round.

    The order rotates from round to round so that no workload always runs first (caches, turbo) or last.
    ``warmup`` untimed calls of each come first (allocator, oneDNN/cuBLAS plan caches, lazy init). A workload
    faster than ``min_seconds`` is called back to back enough times per sample to last that long (the
    sample is then the mean per call), so that timer resolution and scheduler ticks do not dominate.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0 or min_seconds < 0:
        raise ValueError(f"warmup and min_seconds must be >= 0, got {warmup} and {min_seconds}")
    names = list(workloads)

    def timed(name: str, calls: int) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            workloads[name]()
        sync(device)
        return (time.perf_counter() - start) / calls

    last_warmup = {name: 0.0 for name in names}
    for _ in range(warmup):
        for name in names:
            last_warmup[name] = timed(name, 1)
    calls = {name: 1 for name in names}
    if min_seconds > 0:
        for name in names:
            single = last_warmup[name] if warmup else timed(name, 1)  # the last warm-up call calibrates
            calls[name] = max(1, math.ceil(min_seconds / max(single, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        gc.collect()
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(name, calls[name]))
    return times


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two equally long sample lists."""
    if len(numerators) != len(denominators):
        raise ValueError(f"ratio of sample lists of different lengths: {len(numerators)} vs {len(denominators)}")
    return [a / b for a, b in zip(numerators, denominators)]


class MatmulProbe:
    """Dense ``[rows, inner] @ [inner, cols]`` GEMM, repeated so one call lasts at least ``min_seconds``.

    Timed in the same rounds as a workload, it gives the matmul FLOP/s this machine reaches *right now*
    on a model-shaped GEMM; the workload's FLOP/s divided by it is the compute efficiency.
    """

    def __init__(self, rows: int, inner: int, cols: int, device: torch.device, dtype: torch.dtype, min_seconds: float = 0.05):
        if min(rows, inner, cols) < 1:
            raise ValueError(f"matmul probe sizes must be positive, got [{rows}, {inner}] x [{inner}, {cols}]")
        generator = torch.Generator().manual_seed(0)
        self.shape = (rows, inner, cols)
        self.device = device
        self.a = torch.randn(rows, inner, generator=generator).to(device, dtype)
        self.b = torch.randn(inner, cols, generator=generator).to(device, dtype)
        self.out = torch.empty(rows, cols, device=device, dtype=dtype)
        self.iterations = 1
        self()  # warm-up (BLAS thread pool, cuBLAS handle)
        sync(device)
        start = time.perf_counter()
        self()
        sync(device)
        elapsed = max(time.perf_counter() - start, 1e-6)
        self.iterations = max(1, math.ceil(min_seconds / elapsed))

    @property
    def flops(self) -> int:
        rows, inner, cols = self.shape
        return 2 * rows * inner * cols * self.iterations

    def __call__(self) -> None:
        for _ in range(self.iterations):
            torch.mm(self.a, self.b, out=self.out)

    def describe(self) -> str:
        rows, inner, cols = self.shape
        return f"[{rows}, {inner}] x [{inner}, {cols}] {str(self.a.dtype).replace('torch.', '')}"


# ---------------------------------------------------------------------------------------------- memory


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence C++ log lines written to fd 2 (the profiler's start/stop chatter and allocator warnings)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of tensors allocated during ``fn()`` and alive at once (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    with _quiet_native_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for frees
        peak = max(peak, live)
    return int(peak)


def available_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation could use now: free GPU memory, or the kernel's ``MemAvailable`` on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# ---------------------------------------------------------------------------------------------- FLOPs


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    SDPA runs on its math backend here: CPU's fused attention kernel has no FLOP formula (it would count 0)
    and the math backend's backward is two matmuls per forward matmul, the same convention as our analytic
    counts (no recomputation). The counter counts matmuls, convolutions and attention only.
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def profile_top_ops(fn: Callable[[], object], device: torch.device, top: int = 12) -> list[dict]:
    """Self time per aten op of one ``fn()`` call, largest first: ``[{op, self_ms, share, calls}]``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with _quiet_native_stderr():
        with profile(activities=activities) as prof:
            fn()
            sync(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = [event for event in prof.key_averages() if getattr(event, attribute) > 0]
    total = sum(getattr(event, attribute) for event in averages) or 1.0
    averages.sort(key=lambda event: getattr(event, attribute), reverse=True)
    return [
        {
            "op": event.key,
            "self_ms": getattr(event, attribute) / 1e3,
            "share": getattr(event, attribute) / total,
            "calls": event.count,
        }
        for event in averages[:top]
    ]


# ---------------------------------------------------------------------------------------------- fits


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Least-squares fit ``log y = slope * log x + intercept``: the scaling exponent and its prefactor."""
    x = np.log(np.asarray(xs, dtype=np.float64))
    y = np.log(np.asarray(ys, dtype=np.float64))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"a log-log fit needs at least two distinct x values, got {list(xs)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"a log-log fit needs positive finite values, got x={list(xs)} y={list(ys)}")
    slope, intercept = np.polyfit(x, y, 1)
    return {"slope": float(slope), "prefactor": float(np.exp(intercept))}


# ---------------------------------------------------------------------------------------------- reporting


def cpu_model_name() -> str:
    """``lscpu``'s "Model name" (falls back to /proc/cpuinfo, then ``platform.processor()``)."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in output.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict:
    """Where and when a result was measured."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Right-aligned plain-text table; floats get 3 significant digits."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            if value != value:
                return "nan"
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
        return str(value)

    body = [[cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_relative(value):
    """Paths inside the repository, anywhere in a JSON-like payload, as repo-relative strings (results are
    shared between machines)."""
    if isinstance(value, dict):
        return {key: repo_relative(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [repo_relative(item) for item in value]
    if isinstance(value, (str, Path)) and os.path.isabs(str(value)):
        try:
            return str(Path(value).resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(value)
    return value


def write_json(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(repo_relative(payload), indent=2, default=str) + "\n")
    return path
