"""A run killed with SIGKILL mid-training and started again with --resume ends exactly where an
uninterrupted run ends: same steps, each step once in metrics.jsonl, same losses, same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distill_core.cache import TeacherCache
from distill_core.config import DistillConfig
from distill_core.datasets import open_dataset
from distill_core.teachers import load_teacher
from distill_core.train import distill

REPO = Path(__file__).resolve().parents[2]
TEACHER = "opencv:edge_preserving"
STEPS = 120
CHECKPOINT_EVERY = 10
KILL_AFTER_LINES = 25  # well past the first checkpoints, far from the end

CONFIG = {
    "student_family": "mobile_residual",
    "student": {"width": 8, "blocks": 1},
    "losses": {"pixel_l1": 1.0},
    "steps": STEPS,
    "batch_size": 4,
    "image_size": 24,
    "eval_size": 32,
    "checkpoint_every": CHECKPOINT_EVERY,
    "eval_every": 100,
    "num_samples": 1,
    "max_eval_images": 2,
    "quantize_int8": False,
    "quantize_fp16": False,
    "latency_runs": 1,
    "latency_threads": [1],
    "seed": 7,
}


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _command(image_dir: Path, config_file: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill_core",
        "distill",
        "--data",
        str(image_dir),
        "--teacher",
        TEACHER,
        "--config",
        str(config_file),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.mark.timeout(400)
def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_result(image_dir, tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(CONFIG))
    cache = tmp_path / "cache"
    # One thread in the child as here, so both compute in the same order, bit for bit.
    env = {**os.environ, "DISTILL_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    metrics = out / "metrics.jsonl"

    child = subprocess.Popen(
        _command(image_dir, config_file, out),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while len(_lines(metrics)) < KILL_AFTER_LINES and child.poll() is None:
        assert time.monotonic() < deadline, "the child never got training"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    lines_at_kill = len(_lines(metrics))
    checkpoint_step = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert CHECKPOINT_EVERY <= checkpoint_step <= lines_at_kill < STEPS
    assert not (out / "report.json").exists()

    resumed = subprocess.run(
        _command(image_dir, config_file, out, "--resume"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, f"exit {resumed.returncode}: {resumed.stderr[-3000:]}"
    history = [json.loads(line) for line in _lines(metrics)]
    assert [line["step"] for line in history] == list(range(1, STEPS + 1))
    report = json.loads((out / "report.json").read_text())
    assert report["steps_done"] == STEPS

    # The uninterrupted run, in this process (one torch thread, the same cache).
    reference = tmp_path / "reference"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = load_teacher(TEACHER)
        distill(
            DistillConfig.from_dict(CONFIG),
            open_dataset(image_dir),
            teacher,
            reference,
            cache=TeacherCache(cache, teacher),
        )
    finally:
        torch.set_num_threads(before)
    expected = [json.loads(line) for line in _lines(reference / "metrics.jsonl")]
    assert history == expected
    resumed_weights = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    reference_weights = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(t, reference_weights["model"][k]) for k, t in resumed_weights.items())
