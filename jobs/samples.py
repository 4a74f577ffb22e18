"""Test-split sample images of a run for the viewer: files, per-image scores, difference maps.

Training writes `samples/NNN_{input,teacher,student}.png` (the student in float32 torch, which the
fp32 ONNX file reproduces to 1e-4). The int8 and fp16 students' outputs are made here on first
request by running their ONNX files on the same inputs, then kept beside the others as
`NNN_student_{int8,fp16}.png` with their PSNR/SSIM in `variant_metrics.json`.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image

from jobs.models import Artifact, Run

VARIANTS = ("fp32", "int8", "fp16")
ARTIFACT_KIND = {
    "fp32": Artifact.Kind.ONNX_FP32,
    "int8": Artifact.Kind.ONNX_INT8,
    "fp16": Artifact.Kind.ONNX_FP16,
}
PARTS = (
    ("input", "teacher")
    + tuple(f"student_{v}" for v in VARIANTS)
    + tuple(f"diff_{v}" for v in VARIANTS)
)
# A mean absolute error of 1/DIFF_GAIN of full scale or more shows as the brightest colour.
DIFF_GAIN = 4
METRICS_FILE = "variant_metrics.json"
_INPUT = re.compile(r"^(\d{3,})_input\.png$")

# Anchors of matplotlib's "inferno" (perceptually uniform, dark = identical, bright = far apart).
_INFERNO = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)


class SampleError(ValueError):
    """A sample image or variant cannot be shown; the message says why."""


def samples_dir(run: Run) -> Path:
    """Where training wrote this run's sample PNGs."""
    return run.out_dir() / "samples"


def sample_indices(run: Run) -> list[int]:
    """Indices of the test images that have an input PNG, in order."""
    folder = samples_dir(run)
    if not folder.is_dir():
        return []
    found = (_INPUT.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def part_path(run: Run, index: int, part: str) -> Path:
    """File of one panel: input, teacher, or student_<variant> (fp32 is the training output)."""
    if part not in ("input", "teacher") and not part.startswith("student_"):
        raise SampleError(
            f"{part!r} is not an image panel; use input, teacher or student_<variant>"
        )
    name = "student" if part == "student_fp32" else part
    return samples_dir(run) / f"{index:03d}_{name}.png"


def variant_models(run: Run) -> dict[str, Path]:
    """The run's exported ONNX file per variant, where the file exists."""
    models = {}
    for artifact in run.artifacts.filter(kind__in=ARTIFACT_KIND.values()).only("kind", "path"):
        path = Path(settings.MEDIA_ROOT) / artifact.path
        variant = artifact.kind.removeprefix("onnx_")
        if path.is_file():
            models[variant] = path
    return models


def variant_status(run: Run) -> dict[str, str | None]:
    """None for each variant that can be shown, else the reason it cannot."""
    models = variant_models(run)
    status: dict[str, str | None] = {"fp32": None}
    for variant in ("int8", "fp16"):
        if variant in models:
            status[variant] = None
        elif run.is_active:
            status[variant] = f"the {variant} model is made at export, after training"
        else:
            status[variant] = f"this run has no {variant} model (export did not produce one)"
    return status


def ensure_variant(run: Run, variant: str) -> None:
    """Write NNN_student_<variant>.png and its scores for every sample, unless already there."""
    if variant == "fp32":
        return
    indices = sample_indices(run)
    targets = [part_path(run, i, f"student_{variant}") for i in indices]
    scores = _read_scores(run)
    if all(t.is_file() for t in targets) and len(scores.get(variant, [])) == len(indices):
        return
    model = variant_models(run).get(variant)
    if model is None:
        raise SampleError(variant_status(run)[variant] or f"no {variant} model")
    from distill_core.metrics import psnr, ssim

    session = _session(model)
    input_name = session.get_inputs()[0].name
    scores[variant] = []
    for index, target in zip(indices, targets, strict=True):
        image = _load(part_path(run, index, "input"))
        teacher = _load(part_path(run, index, "teacher")).astype(np.float32) / 255.0
        # float NCHW [0, 1] in and out: the contract written into every exported model.
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        out = np.clip(session.run(None, {input_name: x})[0][0], 0.0, 1.0)
        out = out.transpose(1, 2, 0)
        _atomic_write(target, _png_bytes(np.round(out * 255.0).astype(np.uint8)))
        scores[variant].append({"psnr": psnr(out, teacher), "ssim": ssim(out, teacher)})
    _atomic_write(samples_dir(run) / METRICS_FILE, json.dumps(scores).encode())


def prepare_variants(run: Run) -> dict[str, str | None]:
    """Make every exportable variant's sample outputs now (a worker can call this after export,
    so the first visitor of the viewer does not wait); returns each variant's reason or None."""
    status = variant_status(run)
    for variant, reason in status.items():
        if reason is None and variant != "fp32":
            try:
                ensure_variant(run, variant)
            except Exception as exc:  # noqa: BLE001 - a broken model must not hide the others
                status[variant] = f"running the {variant} model on the samples failed: {exc}"
    return status


def _session(model: Path):
    """An ONNX Runtime CPU session, one thread (the web process shares its cores).

    ONNX Runtime directly rather than distill_core.export.run_onnx: that module imports torch,
    which costs the web process ~8 s and ~300 MB on the first sample page.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def sample_listing(run: Run, url_for) -> dict[str, Any]:
    """What the viewer shows: per image its panel URLs, name and per-variant PSNR/SSIM.

    `url_for(index, part)` turns a panel into a URL. Variants that cannot be shown carry their
    reason in `variants`, and are generated here on first request when their model exists.
    """
    status = prepare_variants(run)
    scores = _read_scores(run)
    per_image = (run.report or {}).get("metrics", {}).get("per_image") or []
    images = []
    for pos, index in enumerate(sample_indices(run)):
        entry = per_image[index] if index < len(per_image) else {}
        metrics = {}
        if entry.get("psnr") is not None:
            metrics["fp32"] = {"psnr": entry["psnr"], "ssim": entry.get("ssim")}
        for variant in ("int8", "fp16"):
            if status[variant] is None and pos < len(scores.get(variant, [])):
                metrics[variant] = scores[variant][pos]
        images.append(
            {
                "index": index,
                "name": entry.get("relpath") or f"test image {index + 1}",
                "input": url_for(index, "input"),
                "teacher": url_for(index, "teacher"),
                "students": {
                    v: url_for(index, f"student_{v}") for v in VARIANTS if status[v] is None
                },
                "diffs": {v: url_for(index, f"diff_{v}") for v in VARIANTS if status[v] is None},
                "metrics": metrics,
            }
        )
    return {
        "run": run.pk,
        "variants": {v: {"available": r is None, "reason": r} for v, r in status.items()},
        "diff_gain": DIFF_GAIN,
        "images": images,
    }


def part_png(run: Run, index: int, part: str) -> bytes | Path:
    """A panel's PNG: a file path for stored images, bytes for a difference map made now."""
    if part not in PARTS:
        raise SampleError(f"{part!r} is not a panel; choose one of {', '.join(PARTS)}")
    if part.startswith("diff_"):
        variant = part.removeprefix("diff_")
        student = part_png(run, index, f"student_{variant}")
        teacher = part_path(run, index, "teacher")
        if not teacher.is_file():
            raise SampleError(f"test image {index + 1} has no teacher output on disk")
        return _png_bytes(diff_heatmap(_load(teacher), _load(student)))
    path = part_path(run, index, part)
    if not path.is_file() and part in ("student_int8", "student_fp16"):
        ensure_variant(run, part.removeprefix("student_"))
    if not path.is_file():
        raise SampleError(f"test image {index + 1} has no {part.replace('_', ' ')} image on disk")
    return path


def diff_heatmap(a: np.ndarray, b: np.ndarray, gain: int = DIFF_GAIN) -> np.ndarray:
    """Mean absolute RGB difference per pixel, times `gain`, coloured with inferno (uint8 HxWx3)."""
    if a.shape != b.shape:
        raise SampleError(f"the images differ in size ({a.shape[:2]} vs {b.shape[:2]})")
    err = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2) / 255.0
    t = np.clip(err * gain, 0.0, 1.0) * (len(_INFERNO) - 1)
    stops = np.arange(len(_INFERNO))
    rgb = np.stack([np.interp(t, stops, _INFERNO[:, c]) for c in range(3)], axis=2)
    return np.round(rgb).astype(np.uint8)


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _read_scores(run: Run) -> dict[str, list[dict]]:
    path = samples_dir(run) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a concurrent reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
