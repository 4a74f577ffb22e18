"""The agent package runs where torch and Django cannot be imported (as on a Raspberry Pi)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

BENCHMARK = """
import json, sys
import numpy as np
from pi_agent import agent, bench, client, facts
model = sys.argv[1]
stats = bench.benchmark_onnx(model, input_size=32, threads=1, warmup=10, runs=5)
rss = bench.measure_peak_rss(model, 32, 1)
x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
psnr = agent.on_device_psnr(model, {"input_000": x, "teacher_000": x})
print(json.dumps({
    "stats": stats, "rss": rss, "psnr": psnr, "facts": facts.collect_facts(),
    "torch": sys.modules.get("torch", "absent"), "django": sys.modules.get("django", "absent"),
}, default=str))
"""


def run_blocked(args: list[str], blocker_dir, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
            "PYTHONPATH": os.pathsep.join([str(blocker_dir), str(ROOT)]),
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_blocked_environment_really_refuses_torch_and_django(blocker_dir, tmp_path):
    for name in ("torch", "django"):
        done = run_blocked(["-c", f"import {name}"], blocker_dir, tmp_path)
        assert done.returncode != 0 and "import of " in done.stderr


def test_the_agent_cli_starts_without_torch_or_django(blocker_dir, tmp_path):
    done = run_blocked(["-m", "pi_agent", "--help"], blocker_dir, tmp_path)

    assert done.returncode == 0, done.stderr
    assert "register" in done.stdout and "run" in done.stdout


def test_the_agent_reports_device_facts_without_torch_or_django(blocker_dir, tmp_path):
    done = run_blocked(["-m", "pi_agent", "facts"], blocker_dir, tmp_path)

    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["cores"] >= 1 and facts["arch"] and facts["onnxruntime"]
    assert "CPUExecutionProvider" in facts["providers"]


def test_a_full_benchmark_runs_without_torch_or_django(onnx_student, blocker_dir, tmp_path):
    done = run_blocked(["-c", BENCHMARK, str(onnx_student)], blocker_dir, tmp_path)

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["torch"] is None and out["django"] is None  # still blocked: never imported
    assert 0 < out["stats"]["p50_ms"] <= out["stats"]["p99_ms"] and out["stats"]["runs"] == 5
    assert out["rss"]["peak_rss_mb"] > 0
    assert np.isfinite(out["psnr"]) and out["psnr"] < 100  # the net is no identity
