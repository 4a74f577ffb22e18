"""Evaluation against the teacher: PSNR/SSIM per image and mean, the identity floor, sample PNGs.

Every number here compares a student's output with the *teacher's* output on the same prepared
image (short side resized to the eval size, centre-cropped), never with the input. Outputs are
clipped to [0, 1] first — the image a user would see — and kept in float (not rounded to 8 bits).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from distill_core.metrics import psnr, ssim


def to_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 N×H×W×3 → float32 N×3×H×W in [0, 1] (the models' input contract)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """float N×3×H×W in [0, 1] → uint8 N×H×W×3, rounded."""
    hwc = np.clip(images, 0.0, 1.0).transpose(0, 2, 3, 1)
    return np.round(hwc * 255.0).astype(np.uint8)


def predict(
    model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 8
) -> np.ndarray:
    """Run `model` in float32 over uint8 N×H×W×3 images; float32 N×3×H×W in [0, 1] back."""
    was_training = model.training
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(to_nchw(images[start : start + batch_size])).to(device)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            outputs.append(model(x).float().clamp(0.0, 1.0).cpu().numpy())
    model.train(was_training)
    if not outputs:
        return np.zeros((0, 3, *images.shape[1:3]), dtype=np.float32)
    return np.concatenate(outputs)


def score(outputs: np.ndarray, targets: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-image PSNR (dB) and SSIM of float N×3×H×W outputs vs uint8 N×H×W×3 targets."""
    outputs = np.clip(outputs, 0.0, 1.0)
    reference = to_nchw(targets)
    psnrs = [psnr(o, r) for o, r in zip(_hwc(outputs), _hwc(reference), strict=True)]
    ssims = [ssim(o, r) for o, r in zip(_hwc(outputs), _hwc(reference), strict=True)]
    return psnrs, ssims


def mean_scores(outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean PSNR/SSIM over images ({"psnr": dB, "ssim": ...}); None when there are no images."""
    psnrs, ssims = score(outputs, targets)
    return {"psnr": _mean(psnrs), "ssim": _mean(ssims)}


def split_metrics(
    outputs: np.ndarray, inputs: np.ndarray, targets: np.ndarray, relpaths: list[str]
) -> dict:
    """Student-vs-teacher metrics per image and mean, with the identity (output = input) floor."""
    psnrs, ssims = score(outputs, targets)
    id_psnrs, id_ssims = score(to_nchw(inputs), targets)
    per_image = [
        {
            "relpath": rel,
            "psnr": p,
            "ssim": s,
            "identity_psnr": ip,
            "identity_ssim": iss,
        }
        for rel, p, s, ip, iss in zip(relpaths, psnrs, ssims, id_psnrs, id_ssims, strict=True)
    ]
    return {
        "psnr_vs_teacher": _mean(psnrs),
        "ssim_vs_teacher": _mean(ssims),
        "identity_psnr": _mean(id_psnrs),
        "identity_ssim": _mean(id_ssims),
        "num_images": len(relpaths),
        "per_image": per_image,
    }


def write_samples(
    samples_dir: Path, inputs: np.ndarray, targets: np.ndarray, outputs: np.ndarray, count: int
) -> list[Path]:
    """Write NNN.png (input | teacher | student) and NNN_{input,teacher,student}.png."""
    samples_dir.mkdir(parents=True, exist_ok=True)
    for stale in samples_dir.glob("*.png"):
        stale.unlink()  # a re-run with fewer samples must not leave older ones behind
    student = to_uint8_hwc(outputs)
    written = []
    for index in range(min(count, len(inputs))):
        images = {"input": inputs[index], "teacher": targets[index], "student": student[index]}
        for name, image in images.items():
            Image.fromarray(image).save(samples_dir / f"{index:03d}_{name}.png")
        strip = samples_dir / f"{index:03d}.png"
        Image.fromarray(np.concatenate(list(images.values()), axis=1)).save(strip)
        written.append(strip)
    return written


def _hwc(batch: np.ndarray) -> np.ndarray:
    return batch.transpose(0, 2, 3, 1)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


# -- exported variants --------------------------------------------------------------------------
ONNX_FILES = {
    "onnx_fp32": "student_fp32.onnx",
    "onnx_int8": "student_int8.onnx",
    "onnx_fp16": "student_fp16.onnx",
}
PARITY_IMAGES = 4  # test images the torch↔ONNX parity check runs on


def export_and_measure(
    config: Any,
    student: nn.Module,
    torch_out: np.ndarray,
    teacher: Any,
    data: Any,
    out_dir: Path,
    run_id: str,
    cancelled: Callable[[], bool],
) -> tuple[list[dict], dict | None, list[str]]:
    """Export the CPU fp32 `student` (+ int8, fp16), score each variant on the test images via
    ONNX Runtime, time each and the teacher; returns (artifacts, teacher latency, warnings).
    `torch_out` is the student's torch output on those images (for the variants' drift)."""
    from distill_core.checksums import sha256_file
    from distill_core.export import (
        check_parity,
        export_onnx,
        read_metadata,
        run_onnx,
    )
    from distill_core.quantize import QuantizeError, convert_fp16, quantize_int8

    for name in ONNX_FILES.values():
        (out_dir / name).unlink(missing_ok=True)  # no stale variant from an earlier run here
    test = data.eval_split
    test_images = to_nchw(test.inputs)
    warnings: list[str] = []

    fp32 = export_onnx(
        student, out_dir / ONNX_FILES["onnx_fp32"], run_id=run_id, config_hash=config.config_hash()
    )
    parity = check_parity(student, fp32, test_images[:PARITY_IMAGES])
    variants: list[tuple[str, Path, dict]] = [("onnx_fp32", fp32, {})]
    if config.quantize_int8 and not cancelled():
        calib = to_nchw(data.calibration_split.inputs[: config.calibration_images])
        try:
            path = quantize_int8(
                fp32,
                out_dir / ONNX_FILES["onnx_int8"],
                calib,
                exclude_first_last=config.int8_exclude_first_last,
            )
            variants.append(("onnx_int8", path, {"calibration_images": len(calib)}))
        except QuantizeError as exc:
            warnings.append(f"int8 variant not made: {exc}")
    if config.quantize_fp16 and not cancelled():
        variants.append(("onnx_fp16", convert_fp16(fp32, out_dir / ONNX_FILES["onnx_fp16"]), {}))

    artifacts = []
    for kind, path, extra in variants:
        if cancelled():
            break
        outputs = np.clip(run_onnx(path, test_images, threads=_eval_threads()), 0.0, 1.0)
        scores = mean_scores(outputs, test.targets)
        latency = time_onnx(path, config)
        artifacts.append(
            {
                "kind": kind,
                "path": path.name,
                "size_bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "psnr_vs_teacher": scores["psnr"],
                "ssim_vs_teacher": scores["ssim"],
                "latency_ms_p50": _p50_one_thread(latency),
                "latency": latency,
                # fp32: the export parity check; others: how far the variant strays from torch fp32.
                "parity_max_abs_diff": (
                    parity if kind == "onnx_fp32" else float(np.max(np.abs(outputs - torch_out)))
                ),
                # run id, config hash, input/output spec, precision, quantization details
                "metadata": read_metadata(path),
                **extra,
            }
        )
    teacher_latency = None if cancelled() else time_teacher(teacher, config)
    return artifacts, teacher_latency, warnings


def time_onnx(path: Path, config: Any) -> dict[str, dict]:
    """ORT CPU latency at eval_size for each configured thread count: {"1": stats, "4": stats}."""
    from pi_agent.bench import benchmark_onnx

    return {
        str(threads): benchmark_onnx(
            path,
            input_size=config.eval_size,
            threads=threads,
            warmup=config.latency_warmup,
            runs=config.latency_runs,
        )
        for threads in config.latency_threads
    }


def time_teacher(teacher: Any, config: Any) -> dict[str, dict] | None:
    """The teacher timed like the students, in this process, on the same input size."""
    from pi_agent.bench import make_input, time_callable

    if teacher.kind == "pairs":
        return None  # its outputs were made elsewhere; there is nothing here to time
    if teacher.kind == "onnx":
        with contextlib.suppress(Exception):
            return time_onnx(teacher.path, config)
        # A teacher with a fixed input size or float16 input: timed through its own wrapper.
    image = make_input(config.eval_size)
    latency = {}
    for threads in config.latency_threads:
        with _threads(threads):
            stats = time_callable(
                teacher.run_numpy, image, warmup=config.latency_warmup, runs=config.latency_runs
            )
        latency[str(threads)] = {**stats, "threads": threads, "input_size": config.eval_size}
    return latency


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Limit torch and OpenCV to `count` threads while timing a non-ONNX teacher."""
    import cv2

    torch_before, cv_before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(count)
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv_before)


def _p50_one_thread(latency: dict[str, dict] | None) -> float | None:
    """The headline latency: p50 at 1 thread (else at the fewest threads measured)."""
    if not latency:
        return None
    key = "1" if "1" in latency else min(latency, key=int)
    return latency[key]["p50_ms"]


def _eval_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))
