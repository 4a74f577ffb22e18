"""report.json: what a run produced and how every number in it was measured.

Keys (DESIGN.md): config, teacher, student, metrics, artifacts, run_id, config_hash, steps_done,
train_seconds, environment — plus dataset, samples, measurement and warnings. Artifact paths are
relative to the run's folder, so the folder can be moved or served as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPORT_VERSION = 1


def build_report(
    *,
    config: Any,
    run_id: str,
    teacher: Any,
    teacher_latency: dict[str, dict] | None,
    student: nn.Module,
    metrics: dict,
    artifacts: list[dict],
    samples: list[Path],
    out_dir: Path,
    steps_done: int,
    train_seconds: float,
    dataset: Any,
    device: torch.device,
    amp: str,
    warnings: list[str],
) -> dict:
    """Assemble the report dict (plain JSON data)."""
    from distill_core.evaluate import _p50_one_thread
    from distill_core.students import count_macs, count_params

    threads = ", ".join(str(t) for t in config.latency_threads)
    size = config.eval_size
    return {
        "report_version": REPORT_VERSION,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        "steps_done": steps_done,
        "train_seconds": round(train_seconds, 3),
        "teacher": {
            "spec": teacher.spec,
            "kind": teacher.kind,
            "size_bytes": teacher.size_bytes,
            "params": teacher.params,
            "fingerprint": teacher.fingerprint,
            "latency_ms_p50": _p50_one_thread(teacher_latency),
            "latency": teacher_latency,
        },
        "student": {
            "family": config.student_family,
            "params": count_params(student),
            # Multiply-accumulates of convs/linears for one 256×256 image (one MAC = 2 FLOPs).
            "flops_at_256": count_macs(student, 256),
        },
        "metrics": metrics,
        "artifacts": artifacts,
        "samples": [_relative(p, out_dir) for p in samples],
        "dataset": {
            "root": str(dataset.root),
            "paired": dataset.paired,
            "counts": dataset.counts(),
            "skipped": len(dataset.skipped),
        },
        "measurement": {
            "quality": (
                f"PSNR (dB, data range 1, capped at 100) and SSIM (Gaussian 11×11, σ 1.5) of the "
                f"output vs the teacher's output on the {metrics.get('split', 'test')} split, "
                f"{metrics.get('num_images', 0)} images prepared at {size}×{size} (short side "
                "resized, centre crop); outputs clipped to [0, 1]. identity_*: the input itself "
                "scored the same way, the floor any student must beat."
            ),
            "latency": (
                f"onnxruntime {_ort_version()} CPU in this process, input 1×3×{size}×{size}, "
                f"{config.latency_warmup} warm-up runs then {config.latency_runs} timed runs, "
                f"intra-op threads {threads}; latency_ms_p50 is the median at 1 thread. The "
                "teacher is timed on the same input size in the same process (non-ONNX teachers "
                "through their own runtime with torch/OpenCV limited to the same threads)."
            ),
            "size": "size_bytes is the file on disk; params counts the model's weights.",
        },
        "environment": _environment(device, amp),
        "warnings": warnings,
    }


def write_report(path: Path, report: dict) -> None:
    """Write report.json atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _relative(path: Path, root: Path) -> str:
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _environment(device: torch.device, amp: str) -> dict:
    from pi_agent.bench import environment

    env = dict(environment())
    env.update(
        {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "train_device": str(device),
            "train_device_name": (
                torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor()
            ),
            "amp": amp,
            "cpu_count": os.cpu_count(),
        }
    )
    return env
