"""Compare the student recipes at equal steps against the built-in neural demo teacher.

    .venv/bin/python bench/recipes.py --steps 400

Trains `seed` (the article's recipe, corrected), `default` (ours) and `can24` (Chen, Xu, Koltun
2017) on the demo data for the same number of steps with the same crop and batch (so each sees the
same pixels), then prints, per recipe: params, MACs at 256², fp32/int8 file size, host ONNX Runtime
p50 latency at 1 and 4 threads at 256², PSNR/SSIM vs the teacher on the test split (fp32 and int8),
plus the identity baseline (output = input) and the teacher's own size and latency, measured in the
same process on the same inputs. Paste the table into docs/BENCHMARKS.md with the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill_core.datasets import open_dataset  # noqa: E402
from distill_core.demo_data import build_demo_data  # noqa: E402
from distill_core.presets import get_preset  # noqa: E402
from distill_core.teachers import load_teacher  # noqa: E402
from distill_core.train import distill  # noqa: E402

DEMO_TEACHER = ROOT / "demo" / "teacher" / "demo_teacher.onnx"


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _latency(artifact: dict, threads: int) -> float | None:
    entry = (artifact.get("latency") or {}).get(str(threads)) or {}
    return entry.get("p50_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare student recipes at equal steps.")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=96, help="training crop (px)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--presets", default="seed,default,can24")
    parser.add_argument("--images", type=int, default=1000, help="demo images to use")
    parser.add_argument("--teacher", default=f"onnx:{DEMO_TEACHER}")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-recipes")
    args = parser.parse_args()

    data_dir = args.work / "data"
    build_demo_data(data_dir, count=args.images)
    dataset = open_dataset(data_dir)
    teacher = load_teacher(args.teacher)
    rows = []
    identity = None
    teacher_row = None
    for name in args.presets.split(","):
        config = get_preset(name).with_overrides(
            [
                f"steps={args.steps}",
                f"image_size={args.image_size}",
                f"batch_size={args.batch_size}",
                "latency_threads=[1,4]",
                "max_eval_images=64",
            ]
        )
        started = time.time()
        report = distill(config, dataset, teacher, args.work / name, run_id=f"bench-{name}")
        arts = {a["kind"]: a for a in report["artifacts"]}
        fp32, int8 = arts.get("onnx_fp32", {}), arts.get("onnx_int8", {})
        identity = report["metrics"].get("identity_psnr"), report["metrics"].get("identity_ssim")
        teacher_row = report["teacher"]
        rows.append(
            {
                "preset": name,
                "family": config.student_family,
                "params": report["student"]["params"],
                "macs_256_M": report["student"]["flops_at_256"] / 1e6,
                "fp32_kb": fp32.get("size_bytes", 0) / 1024,
                "int8_kb": int8.get("size_bytes", 0) / 1024,
                "fp32_1t": _latency(fp32, 1),
                "fp32_4t": _latency(fp32, 4),
                "int8_1t": _latency(int8, 1),
                "int8_4t": _latency(int8, 4),
                "psnr_fp32": fp32.get("psnr_vs_teacher"),
                "ssim_fp32": fp32.get("ssim_vs_teacher"),
                "psnr_int8": int8.get("psnr_vs_teacher"),
                "ssim_int8": int8.get("ssim_vs_teacher"),
                "wall_s": time.time() - started,
            }
        )
        (args.work / f"{name}.json").write_text(json.dumps(rows[-1], indent=2))

    header = (
        "| recipe | family | params | MACs@256² (M) | fp32 KB | int8 KB | fp32 p50 1t / 4t (ms) "
        "| int8 p50 1t / 4t (ms) | PSNR fp32 / int8 (dB) | SSIM fp32 / int8 | wall (s) |"
    )
    print(header)
    print("|" + "---|" * 11)
    for r in rows:
        print(
            f"| {r['preset']} | {r['family']} | {r['params']:,} | {r['macs_256_M']:.0f} "
            f"| {r['fp32_kb']:.0f} | {r['int8_kb']:.0f} "
            f"| {_fmt(r['fp32_1t'], '.1f')} / {_fmt(r['fp32_4t'], '.1f')} "
            f"| {_fmt(r['int8_1t'], '.1f')} / {_fmt(r['int8_4t'], '.1f')} "
            f"| {_fmt(r['psnr_fp32'], '.2f')} / {_fmt(r['psnr_int8'], '.2f')} "
            f"| {_fmt(r['ssim_fp32'], '.3f')} / {_fmt(r['ssim_int8'], '.3f')} | {r['wall_s']:.0f} |"
        )
    if identity:
        print(
            f"| identity (output = input) | – | 0 | 0 | – | – | – | – "
            f"| {_fmt(identity[0], '.2f')} | {_fmt(identity[1], '.3f')} | – |"
        )
    if teacher_row:
        size = (teacher_row.get("size_bytes") or 0) / 1024
        print(
            f"| teacher {teacher_row['spec'].split('/')[-1]} | – "
            f"| {teacher_row.get('params') or 0:,} "
            f"| – | {size:.0f} | – | {_fmt(teacher_row.get('latency_ms_p50'), '.1f')} (1t) | – "
            "| reference | reference | – |"
        )


if __name__ == "__main__":
    main()
