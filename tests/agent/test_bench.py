"""pi_agent.bench: ORT timing with stated method, memory in a fresh process, no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from pi_agent import bench

REPO = Path(__file__).resolve().parents[2]
STAT_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny image-to-image ONNX model (3x3 conv + sigmoid), dynamic N/H/W, built without torch."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.1, (3, 3, 3, 3)).astype(np.float32), "w")
    dims = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["conv"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, dims)],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_it_reports_percentiles_and_how_they_were_measured(model_path):
    stats = bench.benchmark_onnx(model_path, input_size=32, threads=1, runs=5)
    assert stats.keys() >= STAT_KEYS
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert stats["p99_ms"] <= stats["max_ms"]
    assert stats["min_ms"] > 0 and stats["load_ms"] > 0
    assert (stats["runs"], stats["warmup"], stats["threads"], stats["input_size"]) == (5, 10, 1, 32)
    assert stats["ort_version"] == bench.ort.__version__
    assert stats["providers"] == ["CPUExecutionProvider"]


def test_fewer_than_ten_warmup_runs_are_refused(model_path):
    with pytest.raises(ValueError, match="warmup must be at least 10"):
        bench.benchmark_onnx(model_path, input_size=32, warmup=1, runs=5)
    with pytest.raises(ValueError, match="warmup must be at least 10"):
        bench.time_callable(lambda x: x, bench.make_input(8), warmup=9, runs=5)


def test_a_time_budget_stops_early_but_keeps_five_timed_runs(model_path):
    stats = bench.benchmark_onnx(model_path, input_size=32, runs=1000, time_budget_s=0)
    assert stats["runs"] == 5


def test_it_times_a_batch_and_several_threads(model_path):
    stats = bench.benchmark_onnx(model_path, input_size=32, threads=2, runs=5, batch=2)
    assert (stats["threads"], stats["batch"]) == (2, 2)


def test_time_callable_times_a_non_onnx_teacher_on_the_same_inputs():
    inputs = bench.make_input(32)
    seen: list[np.ndarray] = []
    stats = bench.time_callable(lambda x: seen.append(x) or x[:, ::-1], inputs, warmup=10, runs=5)
    assert stats.keys() >= STAT_KEYS
    assert (stats["runs"], stats["warmup"]) == (5, 10)
    assert len(seen) == 15 and all(x is inputs for x in seen)


def test_the_benchmark_input_is_fixed_float32_rgb_in_unit_range():
    a, b = bench.make_input(16), bench.make_input(16)
    assert a.shape == (1, 3, 16, 16) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_peak_memory_is_measured_in_a_fresh_process(model_path):
    rss = bench.measure_peak_rss(model_path, input_size=32, threads=1)
    assert set(rss) == {"rss_before_mb", "peak_rss_mb", "growth_mb"}
    assert rss["rss_before_mb"] > 1.0
    assert rss["peak_rss_mb"] >= rss["rss_before_mb"]
    assert rss["growth_mb"] == pytest.approx(rss["peak_rss_mb"] - rss["rss_before_mb"])


def test_the_callers_own_memory_does_not_count_as_the_models(model_path):
    # Linux carries ru_maxrss across fork+exec: a big parent once made every child look big.
    ballast = np.ones(300 * 2**20, dtype=np.uint8)
    rss = bench.measure_peak_rss(model_path, input_size=32)
    assert ballast.sum() == 300 * 2**20
    assert rss["peak_rss_mb"] < 250
    assert rss["growth_mb"] < 100


def test_a_model_that_cannot_load_gives_a_clear_memory_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeError, match="measuring memory of broken.onnx at 32² failed"):
        bench.measure_peak_rss(bad, input_size=32)


def test_environment_names_the_machine_and_the_runtime():
    env = bench.environment()
    assert env["machine"] and env["python"] and env["cpu_count"] >= 1
    assert env["ort_version"] == bench.ort.__version__
    assert "CPUExecutionProvider" in env["providers"]
    assert "board" in env  # None off a device-tree board (this x86 host)


def test_it_works_where_torch_and_django_cannot_be_imported(model_path, tmp_path):
    # The Raspberry Pi agent has neither; a sitecustomize on PYTHONPATH blocks them in this
    # process and in the memory-measuring child it starts.
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "for name in ('torch', 'django', 'distill_core', 'cv2', 'jobs', 'webapp'):\n"
        "    sys.modules[name] = None\n"
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        from pi_agent import bench
        stats = bench.benchmark_onnx({str(model_path)!r}, input_size=32, runs=5)
        rss = bench.measure_peak_rss({str(model_path)!r}, input_size=32)
        env = bench.environment()
        try:
            import torch  # noqa: F401
            blocked = False
        except ImportError:
            blocked = True
        print(json.dumps({{"p50": stats["p50_ms"], "rss": rss, "blocked": blocked,
                          "ort": env["ort_version"]}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={"PYTHONPATH": f"{blocker}:{REPO}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["blocked"] is True
    assert result["p50"] > 0 and result["rss"]["peak_rss_mb"] > 0


def test_the_command_line_prints_a_latency_and_memory_table(model_path):
    done = subprocess.run(
        [sys.executable, "-m", "pi_agent.bench", str(model_path)]
        + ["--threads", "1", "2", "--sizes", "32", "64", "--runs", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "p50 ms" in done.stdout and "growth" in done.stdout
    assert "latency at 32², 10 warm-up + 5 timed runs" in done.stdout


def test_the_command_line_names_a_missing_model(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pi_agent.bench", str(tmp_path / "nope.onnx")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "is not a file" in done.stderr
