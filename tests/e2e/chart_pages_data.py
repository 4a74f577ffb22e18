"""Database rows and files for the chart-page browser tests, made without training anything.

Run inside the installation's own Django (`manage.py shell -c`), it writes runs, metric points,
artifacts, benchmark results and sample PNGs, and prints what the tests need as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from PIL import Image, ImageFilter

from jobs.models import (
    Agent,
    Artifact,
    BenchmarkJob,
    BenchmarkResult,
    Dataset,
    MetricPoint,
    Run,
    Teacher,
)

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
SIZE = 160
BASE_CONFIG = {
    "preset": "default",
    "steps": 200,
    "lr": 0.002,
    "batch_size": 8,
    "image_size": 160,
    "student_family": "mobile_residual",
    "student": {"width": 24, "blocks": 4},
    "losses": {"pixel_l1": 1.0, "ssim": 0.2, "style": 0.05},
}
# The trade-offs set: (name, size KB, host p50 ms, PSNR dB); front = A, C, D, E (see the test).
PARETO_SET = [
    ("tiny-int8", 60, 9.0, 27.0),  # C: smallest
    ("small-int8", 110, 7.0, 29.5),  # A
    ("small-fp32", 220, 8.0, 29.0),  # dominated by A
    ("wide-int8", 330, 4.5, 28.0),  # D: fastest
    ("wide-fp32", 900, 14.0, 31.5),  # E: best PSNR
    ("deep-fp32", 950, 16.0, 30.0),  # dominated by E
]


def photo(name: str) -> np.ndarray:
    import skimage

    path = Path(skimage.__file__).parent / "data" / name
    with Image.open(path) as im:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        return np.asarray(im.crop((left, top, left + side, top + side)).resize((SIZE, SIZE)))


def posterize(rgb: np.ndarray) -> np.ndarray:
    """The fixture's "teacher": 5 flat levels per channel, a cartoon look."""
    return (np.floor(rgb / 255.0 * 5) / 5 * 255 + 20).clip(0, 255).astype(np.uint8)


def posterize_onnx(path: Path) -> Path:
    """A real ONNX image model: floor(x*5)/5*0.95 + 0.1, close to the teacher but not equal."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["N", 3, "H", "W"]
    nodes = [
        helper.make_node("Mul", ["input", "five"], ["a"]),
        helper.make_node("Floor", ["a"], ["b"]),
        helper.make_node("Mul", ["b", "scale"], ["c"]),
        helper.make_node("Add", ["c", "shift"], ["output"]),
    ]
    consts = [
        helper.make_tensor("five", TensorProto.FLOAT, [], [5.0]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [0.19]),
        helper.make_tensor("shift", TensorProto.FLOAT, [], [0.1]),
    ]
    graph = helper.make_graph(
        nodes,
        "posterize",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def curve(steps: np.ndarray, start: float, end: float, rate: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 0.03, len(steps))
    return end + (start - end) * np.exp(-steps / rate) * (1 + noise)


def add_series(run: Run, steps: range, seed: int, rate: float = 50.0) -> None:
    s = np.array(steps)
    terms = {"pixel_l1": (0.30, 0.04), "ssim": (0.50, 0.08), "style": (0.20, 0.05)}
    values = {
        name: curve(s, a, b, rate, seed + i) for i, (name, (a, b)) in enumerate(terms.items())
    }
    values["total"] = sum(values.values())
    values["lr"] = 0.002 * 0.5 ** (s // 100)
    rows = [
        MetricPoint(run=run, name=name, step=int(step), value=float(v))
        for name, series in values.items()
        for step, v in zip(s, series, strict=True)
    ]
    for step in s[s % 10 == 0]:
        grown = 1 - np.exp(-step / rate)
        faster = 1 - np.exp(-step / (rate / 3))  # SSIM saturates sooner than PSNR
        rows.append(MetricPoint(run=run, name="val_psnr", step=int(step),
                                value=float(22 + 8 * grown + seed * 0.3)))  # fmt: skip
        rows.append(MetricPoint(run=run, name="val_ssim", step=int(step),
                                value=float(0.7 + 0.2 * faster)))  # fmt: skip
    MetricPoint.objects.bulk_create(rows, batch_size=2000)


def write_samples(run: Run, blur: float) -> list[dict]:
    folder = run.out_dir() / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    per_image = []
    for i, name in enumerate(PHOTOS):
        rgb = photo(name)
        teacher = posterize(rgb)
        student = np.asarray(Image.fromarray(teacher).filter(ImageFilter.GaussianBlur(blur)))
        for part, arr in (("input", rgb), ("teacher", teacher), ("student", student)):
            Image.fromarray(arr).save(folder / f"{i:03d}_{part}.png")
        mse = np.mean((teacher / 255.0 - student / 255.0) ** 2)
        per_image.append({"relpath": f"photos/{name}", "psnr": float(-10 * np.log10(mse)),
                          "ssim": 0.9 - blur / 20})  # fmt: skip
    return per_image


def artifact(run: Run, kind: str, size_kb: float, **fields) -> Artifact:
    rel = f"runs/{run.pk}/student_{kind.removeprefix('onnx_')}.onnx"
    path = Path(settings.MEDIA_ROOT) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(b"\0" * 16)
    return Artifact.objects.create(run=run, kind=kind, path=rel, size_bytes=int(size_kb * 1024),
                                   sha256="0" * 64, **fields)  # fmt: skip


def build(password: str) -> dict:
    User.objects.create_user("eve", "eve@example.org", password)
    photos = Dataset.objects.create(name="photos", path=str(settings.MEDIA_ROOT),
                                    status=Dataset.Status.READY, counts={"test": 4})  # fmt: skip
    opencv = Teacher.objects.create(name="OpenCV stylization", spec="opencv:stylization")
    johnson = Teacher.objects.create(name="Johnson (ONNX)", spec="onnx:johnson.onnx",
                                     size_bytes=int(6.6 * 1024 * 1024))  # fmt: skip
    now = timezone.now()

    live = Run.objects.create(
        name="live run", dataset=photos, teacher=opencv, config=BASE_CONFIG,
        status=Run.Status.RUNNING, step=60, total_steps=200, progress=0.3, started=now,
        heartbeat=now,
    )  # fmt: skip
    add_series(live, range(0, 60), seed=1)

    runs = {}
    for name, lr, blur, seed in (("lr 2e-3", 0.002, 1.2, 2), ("lr 5e-3", 0.005, 2.5, 3)):
        run = Run.objects.create(name=name, dataset=photos, teacher=opencv,
                                 config={**BASE_CONFIG, "lr": lr}, status=Run.Status.SUCCEEDED,
                                 step=200, total_steps=200, progress=1.0, started=now,
                                 finished=now)  # fmt: skip
        add_series(run, range(0, 200), seed=seed, rate=40 if lr > 0.003 else 60)
        per_image = write_samples(run, blur)
        run.report = {"metrics": {"per_image": per_image}}
        run.save(update_fields=["report"])
        model = posterize_onnx(run.out_dir() / "student_int8.onnx")
        Artifact.objects.create(run=run, kind=Artifact.Kind.ONNX_INT8,
                                path=str(model.relative_to(settings.MEDIA_ROOT)),
                                size_bytes=model.stat().st_size, sha256="0" * 64)  # fmt: skip
        runs[name] = run.pk

    agent, _ = Agent.issue("raspberry-pi-4b", facts={"board": "Raspberry Pi 4 Model B"})
    front = {}
    for i, (name, kb, ms, psnr) in enumerate(PARETO_SET):
        kind = Artifact.Kind.ONNX_INT8 if name.endswith("int8") else Artifact.Kind.ONNX_FP32
        run = Run.objects.create(name=name, dataset=photos, teacher=johnson,
                                 config={**BASE_CONFIG, "student": {"width": 8 * (i + 1)}},
                                 status=Run.Status.SUCCEEDED, finished=now,
                                 summary={"teacher_latency_ms_p50": 61.0})  # fmt: skip
        art = artifact(run, kind, kb, psnr_vs_teacher=psnr, latency_ms_p50=ms)
        front[name] = art.pk
        job = BenchmarkJob.objects.create(artifact=art, agent=agent, status="done")
        BenchmarkResult.objects.create(job=job, agent=agent, artifact=art, threads=1,
                                       input_size=256, p50_ms=ms * 9 + (40 if "fp32" in name
                                       else 0), p90_ms=ms * 10, p99_ms=ms * 11)  # fmt: skip
    return {"live": live.pk, "runs": runs, "artifacts": front, "agent": agent.pk}


def main(password: str) -> None:
    print("CHART-DATA " + json.dumps(build(password)))
