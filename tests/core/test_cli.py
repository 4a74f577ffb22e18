"""The command line: a whole run with an ONNX teacher, the other commands, and bad input ending in
one `error:` line with exit code 2 (no traceback)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from distill_core.cli import main

TINY = ["--preset", "tiny", "--set", "steps=6", "--set", "latency_runs=2", "--quiet"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared test machine; a net this small is fastest on one thread
    yield
    torch.set_num_threads(before)


@pytest.fixture
def onnx_teacher(tmp_path) -> Path:
    """A tiny image-to-image ONNX model: a fixed 3×3 colour-mixing blur, clipped to [0, 1]."""
    # Each output channel: 70 % of its own centre pixel + 30 % spread over the 3×3×3 window.
    weight = np.full((3, 3, 3, 3), 0.3 / 27, dtype=np.float32)
    for channel in range(3):
        weight[channel, channel, 1, 1] += 0.7
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["mixed"], pads=[1, 1, 1, 1]),
            helper.make_node("Clip", ["mixed", "lo", "hi"], ["out"]),
        ],
        "tiny_teacher",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "teacher.onnx"
    onnx.save(model, str(path))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_distill_with_an_onnx_teacher_writes_everything_and_prints_the_table(
    image_dir, onnx_teacher, tmp_path, capsys
):
    out = tmp_path / "run"
    code = main(
        ["distill", "--data", str(image_dir), "--teacher", f"onnx:{onnx_teacher}"]
        + TINY
        + ["--out", str(out)]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["kind"] == "onnx" and report["teacher"]["latency_ms_p50"] > 0
    assert report["steps_done"] == 6
    for name in ("student_fp32.onnx", "student_int8.onnx", "student_fp16.onnx", "samples/000.png"):
        assert (out / name).exists(), name
    table = captured.out
    for row in ("teacher", "student fp32", "student int8", "student fp16", "identity"):
        assert row in table
    for header in ("size", "params", "p50 @1 thread (ms)", "PSNR vs teacher (dB)", "SSIM"):
        assert header in table
    assert "report: " in table


def test_a_report_json_given_as_config_reproduces_the_run_settings(
    image_dir, onnx_teacher, tmp_path, capsys
):
    first = tmp_path / "first"
    args = ["distill", "--data", str(image_dir), "--teacher", f"onnx:{onnx_teacher}"]
    assert main([*args, *TINY, "--set", "quantize_int8=false", "--out", str(first)]) == 0
    second = tmp_path / "second"
    assert (
        main([*args, "--config", str(first / "report.json"), "--quiet", "--out", str(second)]) == 0
    )
    a = json.loads((first / "report.json").read_text())
    b = json.loads((second / "report.json").read_text())
    assert a["config_hash"] == b["config_hash"]
    # Same training, step for step (the ONNX files differ only in their run id metadata).
    assert (first / "metrics.jsonl").read_text() == (second / "metrics.jsonl").read_text()
    assert a["metrics"]["psnr_vs_teacher"] == b["metrics"]["psnr_vs_teacher"]


@pytest.mark.timeout(300)
def test_ctrl_c_stops_after_the_step_keeps_a_checkpoint_and_exits_130(image_dir, tmp_path, capsys):
    out = tmp_path / "run"

    def interrupt_once_training() -> None:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count(
                "\n"
            ) >= 3:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=interrupt_once_training, daemon=True)
    watcher.start()
    code = main(
        [
            "distill",
            "--data",
            str(image_dir),
            "--teacher",
            "opencv:stylization",
            "--preset",
            "tiny",
            "--set",
            "steps=100000",
            "--set",
            "checkpoint_every=1000",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    watcher.join()

    assert code == 130
    err = capsys.readouterr().err
    assert "error: run cancelled at step" in err and "--resume" in err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == len(lines) >= 3  # saved at the step where it stopped
    assert not (out / "report.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "preset 'nope' is unknown"),
        (["--set", "steps=abc"], "steps='abc'"),
        (["--set", "stepz=10"], "unknown key 'stepz'"),
        (["--set", "steps"], "expected key=value"),
        (["--set", "lr=5"], "lr=5"),
    ],
)
def test_bad_settings_end_in_one_error_line_and_exit_2(image_dir, tmp_path, capsys, argv, message):
    code = main(
        [
            "distill",
            "--data",
            str(image_dir),
            "--teacher",
            "opencv:stylization",
            "--out",
            str(tmp_path / "run"),
            *argv,
        ]
    )
    assert code == 2
    assert message in one_error_line(capsys)


def test_a_missing_data_folder_ends_in_one_error_line(tmp_path, capsys):
    code = main(
        [
            "distill",
            "--data",
            str(tmp_path / "nowhere"),
            "--teacher",
            "opencv:stylization",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    assert "nowhere does not exist" in one_error_line(capsys)


def test_an_unknown_teacher_ends_in_one_error_line(image_dir, tmp_path, capsys):
    code = main(
        [
            "distill",
            "--data",
            str(image_dir),
            "--teacher",
            "magic:thing",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    assert "unknown teacher 'magic:thing'" in one_error_line(capsys)


def test_missing_arguments_end_in_one_usage_line(capsys):
    assert main(["distill", "--teacher", "opencv:stylization"]) == 2
    assert "--data" in one_error_line(capsys)
    assert main(["bogus"]) == 2
    assert "invalid choice" in one_error_line(capsys)


def test_presets_lists_every_preset_with_params_and_macs(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "MACs @256²" in out
    for name in ("seed", "default", "can24", "tiny"):
        assert f"\n{name} " in out


def test_teacher_info_describes_a_teacher(onnx_teacher, capsys):
    assert main(["teacher-info", f"onnx:{onnx_teacher}"]) == 0
    out = capsys.readouterr().out
    assert "kind" in out and "onnx" in out and "params" in out and "fingerprint" in out


def test_demo_data_writes_the_requested_number_of_images(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "demo"), "--count", "3", "--size", "32"]) == 0
    assert len([p for p in (tmp_path / "demo").rglob("*") if p.is_file()]) >= 3
    assert "wrote 3 images" in capsys.readouterr().out


def test_demo_data_into_an_existing_file_is_one_clear_line(tmp_path, capsys):
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    assert main(["demo-data", str(target), "--count", "3", "--size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
