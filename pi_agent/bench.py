"""ONNX Runtime CPU timing and memory, the same code on the host and on a Raspberry Pi.

Imports only onnxruntime, numpy and the standard library: the device agent runs without torch.
Every figure carries how it was measured (warm-up, runs, threads, input size, runtime version),
because one warm-up and a single number — the source article's method — say little on a CPU.

    python -m pi_agent.bench MODEL.onnx     # latency at 1 and 4 threads, peak RSS at 256² and 512²
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

MIN_WARMUP = 10
# Timed runs kept even when a time budget runs out, so percentiles still mean something.
MIN_RUNS_UNDER_BUDGET = 5


def make_input(input_size: int = 256, batch: int = 1, seed: int = 0) -> np.ndarray:
    """The benchmark input: float32 NCHW RGB uniform in [0, 1], the same for every model."""
    rng = np.random.default_rng(seed)
    return rng.random((batch, 3, input_size, input_size), dtype=np.float32)


def _stats(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def _check_counts(warmup: int, runs: int) -> None:
    if warmup < MIN_WARMUP:
        raise ValueError(
            f"warmup must be at least {MIN_WARMUP} runs (got {warmup}): CPU caches, thread "
            "pools and ORT's memory arena settle over the first runs"
        )
    if runs < 1:
        raise ValueError(f"runs must be at least 1 (got {runs})")


def _timed_loop(
    call: Callable[[], object], warmup: int, runs: int, time_budget_s: float | None
) -> list[float]:
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        over_budget = time_budget_s is not None and time.perf_counter() - started > time_budget_s
        if over_budget and len(times) >= MIN_RUNS_UNDER_BUDGET:
            break
    return times


def session_options(threads: int) -> ort.SessionOptions:
    """Sequential execution, `threads` intra-op threads, one inter-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def _input_array(session: ort.InferenceSession, input_size: int, batch: int) -> np.ndarray:
    x = make_input(input_size, batch)
    # A model converted to fp16 without float32 I/O still benchmarks, on the same values.
    if session.get_inputs()[0].type == "tensor(float16)":
        x = x.astype(np.float16)
    return x


def benchmark_onnx(
    path: str | Path,
    input_size: int = 256,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    time_budget_s: float | None = None,
    batch: int = 1,
) -> dict[str, Any]:
    """Latency percentiles (ms) of an ONNX image model on the CPU provider."""
    _check_counts(warmup, runs)
    t0 = time.perf_counter()
    session = ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )
    load_ms = (time.perf_counter() - t0) * 1000.0
    feeds = {session.get_inputs()[0].name: _input_array(session, input_size, batch)}
    times = _timed_loop(lambda: session.run(None, feeds), warmup, runs, time_budget_s)
    return {
        **_stats(times),
        "load_ms": load_ms,
        "runs": len(times),
        "warmup": warmup,
        "threads": threads,
        "input_size": input_size,
        "batch": batch,
        "ort_version": ort.__version__,
        "providers": session.get_providers(),
    }


def time_callable(
    fn: Callable[[np.ndarray], object],
    inputs: np.ndarray,
    warmup: int = 10,
    runs: int = 50,
    time_budget_s: float | None = None,
) -> dict[str, Any]:
    """Latency percentiles (ms) of `fn(inputs)`, e.g. an OpenCV teacher on `make_input()`."""
    _check_counts(warmup, runs)
    times = _timed_loop(lambda: fn(inputs), warmup, runs, time_budget_s)
    return {**_stats(times), "runs": len(times), "warmup": warmup}


def _status_mb(field: str) -> float | None:
    # /proc/self/status belongs to this process image: unlike ru_maxrss, which Linux carries
    # across fork+exec, so a child of a 1 GB parent would report a 1 GB "peak".
    for line in _read_text("/proc/self/status").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def _reset_peak_rss() -> None:
    # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS, so the peak
    # counts from here and not from a transient during imports.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _rss_child(path: str, input_size: int, threads: int, runs: int) -> dict[str, float]:
    # Runtime imports are already paid for here: the figure is what the model adds on top.
    _reset_peak_rss()
    before = _status_mb("VmRSS")
    if before is None:  # no /proc (macOS): the peak so far stands in for the current RSS
        before = _maxrss_mb()
    session = ort.InferenceSession(
        path, session_options(threads), providers=["CPUExecutionProvider"]
    )
    feeds = {session.get_inputs()[0].name: _input_array(session, input_size, 1)}
    for _ in range(runs):
        session.run(None, feeds)
    peak = _status_mb("VmHWM")
    if peak is None:
        peak = _maxrss_mb()
    return {"rss_before_mb": before, "peak_rss_mb": peak, "growth_mb": max(0.0, peak - before)}


def measure_peak_rss(
    path: str | Path, input_size: int = 256, threads: int = 1, runs: int = 3
) -> dict[str, float]:
    """Peak RSS (MiB) of loading and running the model, measured in a fresh Python process."""
    # A fresh process, because a peak only ever grows: in this one it would remember whatever
    # ran before (training, other models).
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pi_agent.bench", "--rss", str(path)]
    command += ["--size", str(input_size), "--threads", str(threads), "--runs", str(runs)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(
            f"measuring memory of {Path(path).name} at {input_size}² failed "
            f"(exit {done.returncode}): {done.stderr.strip()[-500:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read_text(path: str) -> str:
    try:
        # Device-tree strings end in a NUL byte.
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""


def _total_memory_mb() -> int | None:
    for line in _read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def _cpu_model() -> str:
    # x86 kernels say "model name"; ARM ones "Hardware", "Model" or only the part number.
    fields: dict[str, str] = {}
    for line in _read_text("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "hardware", "model", "cpu part"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Where a figure was measured: machine, CPU, cores, memory, Python and ONNX Runtime."""
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "memory_mb": _total_memory_mb(),
        "board": _read_text("/proc/device-tree/model") or None,
        "python": platform.python_version(),
        "ort_version": ort.__version__,
        "providers": ort.get_available_providers(),
        "numpy": np.__version__,
    }


def _table(path: Path, threads: list[int], sizes: list[int], runs: int, warmup: int) -> str:
    lines = [f"{path.name}  ({path.stat().st_size / 1024:.1f} KiB, ONNX Runtime {ort.__version__})"]
    lines.append(f"latency at {sizes[0]}², {warmup} warm-up + {runs} timed runs:")
    lines.append(f"  {'threads':>7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'load ms':>9}")
    for n in threads:
        s = benchmark_onnx(path, sizes[0], threads=n, warmup=warmup, runs=runs)
        row = f"{s['p50_ms']:9.2f} {s['p90_ms']:9.2f} {s['p99_ms']:9.2f} {s['load_ms']:9.1f}"
        lines.append(f"  {n:>7} {row}")
    lines.append("memory (fresh process, 1 thread, MiB):")
    lines.append(f"  {'size':>7} {'before':>9} {'peak':>9} {'growth':>9}")
    for size in sizes:
        m = measure_peak_rss(path, size, threads=1)
        row = f"{m['rss_before_mb']:9.1f} {m['peak_rss_mb']:9.1f} {m['growth_mb']:9.1f}"
        lines.append(f"  {size:>7} {row}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: a latency and memory table for one model, or (--rss) one memory measurement."""
    parser = argparse.ArgumentParser(prog="python -m pi_agent.bench", description=__doc__)
    parser.add_argument("model", type=Path, help="an ONNX file taking float32 NCHW RGB in [0,1]")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the environment as JSON too")
    # Internal: the child process of measure_peak_rss.
    parser.add_argument("--rss", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} is not a file; pass the path of an .onnx model")
    if args.rss:
        threads = args.threads[0]
        print(json.dumps(_rss_child(str(args.model), args.size, threads, args.runs)))
        return 0
    try:
        print(_table(args.model, args.threads, args.sizes, args.runs, args.warmup))
    except Exception as exc:  # ORT's errors derive from Exception only; print one line
        print(f"error: {args.model.name} could not be benchmarked: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(environment(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
