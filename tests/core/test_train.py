"""distill(): the whole run on tiny images — report, ONNX variants, samples, history, checkpoints,
determinism, cancellation and divergence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from distill_core.cache import TeacherCache
from distill_core.config import ConfigError, DistillConfig
from distill_core.train import Callbacks, Cancelled, TrainingDiverged, distill

REPORT_KEYS = {
    "config",
    "teacher",
    "student",
    "metrics",
    "artifacts",
    "run_id",
    "config_hash",
    "steps_done",
    "train_seconds",
    "environment",
}
ARTIFACT_KEYS = {
    "kind",
    "path",
    "size_bytes",
    "sha256",
    "psnr_vs_teacher",
    "ssim_vs_teacher",
    "latency_ms_p50",
    "latency",
    "parity_max_abs_diff",
}


def tiny_config(**overrides) -> DistillConfig:
    """A ~2 K-parameter student trained for 12 steps on 24² crops, scored at 32²."""
    data = {
        "student_family": "mobile_residual",
        "student": {"width": 8, "blocks": 1},
        "losses": {"pixel_l1": 1.0},
        "steps": 12,
        "batch_size": 4,
        "image_size": 24,
        "eval_size": 32,
        "checkpoint_every": 4,
        "eval_every": 6,
        "num_samples": 2,
        "max_eval_images": 4,
        "calibration_images": 4,
        "latency_runs": 2,
        "latency_threads": [1],
        "seed": 3,
    }
    data.update(overrides)
    return DistillConfig.from_dict(data)


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The test machine's cores are shared; one thread is faster for a net this small and keeps
    # every run on the same reduction order.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """One teacher-output cache for the module: every test's images have the same content."""
    return tmp_path_factory.mktemp("teacher-cache")


@pytest.fixture
def cache(cache_root, opencv_teacher) -> TeacherCache:
    return TeacherCache(cache_root, opencv_teacher)


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_a_run_writes_the_report_three_onnx_files_samples_and_history(
    image_dataset, opencv_teacher, cache, tmp_path
):
    out = tmp_path / "run"
    phases, steps, evals, checkpoints = [], [], [], []
    callbacks = Callbacks(
        on_progress=lambda p: p.phase == "training" and steps.append(p),
        on_eval=evals.append,
        on_phase=phases.append,
        on_checkpoint=lambda step, path: checkpoints.append(step),
    )

    report = distill(
        tiny_config(), image_dataset, opencv_teacher, out, callbacks, run_id="run-1", cache=cache
    )

    assert json.loads((out / "report.json").read_text()) == report
    assert set(report) >= REPORT_KEYS
    assert report["run_id"] == "run-1" and report["steps_done"] == 12
    assert report["config_hash"] == tiny_config().config_hash()
    assert report["student"]["params"] > 0 and report["student"]["flops_at_256"] > 0
    assert report["teacher"]["spec"] == opencv_teacher.spec
    assert report["teacher"]["latency_ms_p50"] > 0
    assert [a["kind"] for a in report["artifacts"]] == ["onnx_fp32", "onnx_int8", "onnx_fp16"]
    for artifact in report["artifacts"]:
        assert set(artifact) >= ARTIFACT_KEYS
        path = out / artifact["path"]  # relative to the run folder
        assert not Path(artifact["path"]).is_absolute()
        assert artifact["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert artifact["size_bytes"] == path.stat().st_size
        assert 0 < artifact["latency_ms_p50"] == artifact["latency"]["1"]["p50_ms"]
        assert np.isfinite(artifact["psnr_vs_teacher"]) and 0 < artifact["ssim_vs_teacher"] <= 1
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta["run_id"] == "run-1" and meta["config_hash"] == report["config_hash"]
    fp32 = report["artifacts"][0]
    assert fp32["parity_max_abs_diff"] <= 1e-4
    assert fp32["psnr_vs_teacher"] == pytest.approx(report["metrics"]["psnr_vs_teacher"], abs=1e-3)

    metrics = report["metrics"]
    test_count = min(image_dataset.counts()["test"], 4)
    assert metrics["split"] == "test" and metrics["num_images"] == test_count
    assert len(metrics["per_image"]) == test_count
    assert metrics["identity_psnr"] > 0 and 0 < metrics["identity_ssim"] <= 1

    strip = Image.open(out / "samples" / "000.png")
    assert strip.size == (3 * 32, 32)
    for name in ("000_input", "000_teacher", "000_student", "001"):
        assert (out / "samples" / f"{name}.png").exists()
    assert not (out / "samples" / "002.png").exists()
    assert report["samples"] == ["samples/000.png", "samples/001.png"]

    lines = history(out)
    assert [line["step"] for line in lines] == list(range(1, 13))
    assert {"total", "pixel_l1", "lr"} <= set(lines[0])
    assert [line["step"] for line in lines if "val_psnr" in line] == [6, 12]
    assert [e.step for e in evals] == [6, 12]
    assert [p.step for p in steps] == list(range(1, 13)) and steps[-1].eta_s == 0
    assert checkpoints == [4, 8, 12]
    assert phases == ["preparing", "training", "evaluating", "exporting"]


def test_the_same_config_twice_gives_identical_losses_and_weights(
    image_dataset, opencv_teacher, cache, tmp_path
):
    config = tiny_config(quantize_int8=False, quantize_fp16=False, steps=8)
    first, second = tmp_path / "a", tmp_path / "b"
    distill(config, image_dataset, opencv_teacher, first, cache=cache)
    distill(config, image_dataset, opencv_teacher, second, cache=cache)

    assert history(first) == history(second)
    a, b = weights(first), weights(second)
    assert all(torch.equal(a[name], b[name]) for name in a)
    different = tmp_path / "c"
    distill(
        config.with_overrides(["seed=4"]), image_dataset, opencv_teacher, different, cache=cache
    )
    assert history(different) != history(first)


def test_a_cancelled_run_keeps_its_checkpoint_and_resumes_to_the_same_result(
    image_dataset, opencv_teacher, cache, tmp_path
):
    config = tiny_config(quantize_int8=False, quantize_fp16=False)
    reference = tmp_path / "reference"
    distill(config, image_dataset, opencv_teacher, reference, cache=cache)

    out = tmp_path / "cancelled"
    done: list[int] = []
    cancel_after_6 = Callbacks(
        on_progress=lambda p: p.phase == "training" and done.append(p.step),
        should_cancel=lambda: bool(done) and done[-1] >= 6,
    )
    with pytest.raises(Cancelled, match="step 6"):
        distill(config, image_dataset, opencv_teacher, out, cancel_after_6, cache=cache)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    assert not (out / "report.json").exists()

    report = distill(config, image_dataset, opencv_teacher, out, resume=True, cache=cache)
    assert report["steps_done"] == 12
    assert history(out) == history(reference)
    a, b = weights(out), weights(reference)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_an_exploding_learning_rate_stops_the_run_naming_the_step_and_the_term(
    image_dataset, opencv_teacher, cache, tmp_path
):
    # SGD at lr 1 on a loss weighted 1e6 blows the weights up within a few steps.
    config = tiny_config(
        student={"width": 8, "blocks": 1, "norm": "none"},
        optimizer="sgd",
        lr=1.0,
        losses={"pixel_mse": 1e6},
        steps=40,
        checkpoint_every=2,
    )
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        distill(config, image_dataset, opencv_teacher, out, cache=cache)

    message = str(caught.value)
    bad_step = int(message.split(":")[0].removeprefix("step "))
    assert "loss term 'pixel_mse' became nan" in message or "became inf" in message
    assert "lower lr" in message
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] < bad_step and f"step {state['step']}" in message
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert [line["step"] for line in history(out)] == list(range(1, bad_step))
    assert not (out / "report.json").exists()


def test_the_checkpoint_holds_every_state_as_plain_weights_only_data(
    image_dataset, opencv_teacher, cache, tmp_path
):
    out = tmp_path / "run"
    config = tiny_config(quantize_int8=False, quantize_fp16=False, steps=4)
    distill(config, image_dataset, opencv_teacher, out, cache=cache)

    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "losses", "rng", "config", "step"} <= set(state)
    assert state["config"] == config.to_dict() and state["step"] == 4
    assert {"torch", "cuda", "numpy", "python", "sampler"} == set(state["rng"])
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_resuming_with_a_different_config_is_refused_with_what_changed(
    image_dataset, opencv_teacher, cache, tmp_path
):
    out = tmp_path / "run"
    config = tiny_config(quantize_int8=False, quantize_fp16=False, steps=4)
    distill(config, image_dataset, opencv_teacher, out, cache=cache)

    changed = config.with_overrides(["lr=0.01"])
    with pytest.raises(ConfigError, match=r"different config \(lr: 0.001 → 0.01\)"):
        distill(changed, image_dataset, opencv_teacher, out, resume=True, cache=cache)


def test_a_training_crop_larger_than_the_eval_size_is_refused(
    image_dataset, opencv_teacher, cache, tmp_path
):
    with pytest.raises(ConfigError, match="image_size=48"):
        distill(tiny_config(image_size=48), image_dataset, opencv_teacher, tmp_path, cache=cache)
