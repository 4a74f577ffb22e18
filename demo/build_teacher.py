"""Rebuild the built-in neural demo teacher.

OpenCV's operators are cheap (stylization is ~42 ms at 256² on one core, faster than a
Johnson-size net), so distilling them shows no speed-up. The demo teacher is therefore a heavy
network made by our own engine: a Johnson et al. (2016) transform net (~1.68 M parameters)
trained with `distill_core.distill` to imitate the OpenCV chain `stylization+oilpainting` on the
built-in demo images. `make demo` then distils *this* network into a tiny student: a big teacher,
a tiny student, as in the article our users start from.

    .venv/bin/python demo/build_teacher.py --steps 500

writes demo/teacher/demo_teacher.onnx, demo_teacher.pt (TorchScript) and MANIFEST.json (sha256,
params, the command, the teacher's own PSNR/SSIM against the operator chain on held-out images).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from distill_core.checksums import sha256_file  # noqa: E402
from distill_core.config import DistillConfig  # noqa: E402
from distill_core.datasets import open_dataset  # noqa: E402
from distill_core.demo_data import build_demo_data  # noqa: E402
from distill_core.students import build_student, count_params  # noqa: E402
from distill_core.teachers import load_teacher  # noqa: E402
from distill_core.train import Callbacks, distill  # noqa: E402

OPERATOR = "opencv:stylization+oilpainting"
STUDENT = {"channels": [32, 64, 128], "blocks": 5, "norm": "instance", "output": "residual"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64, help="training crop (px)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "demo-teacher")
    parser.add_argument("--out", type=Path, default=HERE / "teacher")
    args = parser.parse_args()

    data_dir = args.work / "data"
    build_demo_data(data_dir, count=args.images)
    dataset = open_dataset(data_dir)
    teacher = load_teacher(OPERATOR)
    config = DistillConfig.from_dict(
        {
            "preset": "demo-teacher",
            "student_family": "johnson",
            "student": STUDENT,
            "losses": {"pixel_l1": 1.0},
            "lr": 1e-3,
            "lr_step_size": max(1, args.steps // 3),
            "lr_gamma": 0.5,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "image_size": args.crop,
            "eval_size": 256,
            "checkpoint_every": 50,
            "eval_every": 100,
            "max_eval_images": 32,
            "num_samples": 4,
            "quantize_int8": False,
            "quantize_fp16": False,
            "latency_runs": 20,
            "latency_threads": [1],
        }
    )
    run_dir = args.work / "run"
    started = time.time()

    def progress(p) -> None:
        if "total" in p.losses and (p.step % 50 == 0 or p.step == p.total):
            print(
                f"step {p.step}/{p.total} loss {p.losses['total']:.4f} eta {p.eta_s:.0f}s",
                flush=True,
            )

    report = distill(
        config,
        dataset,
        teacher,
        run_dir,
        Callbacks(on_progress=progress),
        resume=True,
        run_id="demo-teacher",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "demo_teacher.onnx"
    shutil.copyfile(run_dir / "student_fp32.onnx", onnx_path)

    # TorchScript twin, for feature distillation from the teacher's layers.
    model = build_student("johnson", STUDENT)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    model.load_state_dict(state["model"])
    model.eval()
    ts_path = args.out / "demo_teacher.pt"
    torch.jit.trace(model, torch.rand(1, 3, 64, 64)).save(str(ts_path))

    fp32 = next(a for a in report["artifacts"] if a["kind"] == "onnx_fp32")
    manifest = {
        "description": "Johnson transform net trained with distill_core to imitate " + OPERATOR,
        "operator": OPERATOR,
        "student_family": "johnson",
        "student": STUDENT,
        "params": count_params(model),
        "steps": report["steps_done"],
        "train_seconds": round(time.time() - started, 1),
        "psnr_vs_operator_db": report["metrics"]["psnr_vs_teacher"],
        "ssim_vs_operator": report["metrics"]["ssim_vs_teacher"],
        "identity_psnr_vs_operator_db": report["metrics"].get("identity_psnr"),
        "latency_ms_p50_1thread_256": fp32.get("latency_ms_p50"),
        "operator_latency_ms_p50_1thread_256": report["teacher"].get("latency_ms_p50"),
        "files": {
            "demo_teacher.onnx": {
                "sha256": sha256_file(onnx_path),
                "size_bytes": onnx_path.stat().st_size,
            },
            "demo_teacher.pt": {
                "sha256": sha256_file(ts_path),
                "size_bytes": ts_path.stat().st_size,
            },
        },
        "command": (
            f".venv/bin/python demo/build_teacher.py --steps {args.steps} --images {args.images} "
            f"--batch-size {args.batch_size} --crop {args.crop}"
        ),
        "config": report["config"],
    }
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: v for k, v in manifest.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
