"""Command line: `python -m distill_core {distill,presets,demo-data,teacher-info}`.

Mistakes in arguments, configs, datasets and teachers end in one line on stderr (`error: …`) and
exit code 2; a diverged run exits 1; a cancelled one (Ctrl-C) 130 with its checkpoint kept.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_CANCELLED = 130


class UsageError(Exception):
    """Bad command-line arguments (argparse's complaint, as one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the whole usage block and exits; one line says it better.
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# -- entry point ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    from distill_core.config import ConfigError
    from distill_core.datasets import DatasetError, ImageError
    from distill_core.export import ExportError
    from distill_core.quantize import QuantizeError
    from distill_core.teachers import TeacherError
    from distill_core.train import Cancelled, TrainingDiverged

    try:
        return args.run(args)
    except (ConfigError, DatasetError, ImageError, TeacherError, ExportError, QuantizeError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except TrainingDiverged as exc:
        return _fail(f"training diverged at {exc}", EXIT_FAILED)
    except Cancelled as exc:
        return _fail(str(exc), EXIT_CANCELLED)
    except KeyboardInterrupt:
        return _fail("interrupted; the last checkpoint is kept (run again with --resume)", 130)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m distill_core",
        description="Distil an image-to-image teacher into a tiny student; export it to ONNX.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "distill",
        help="train a student, evaluate it, export fp32/int8/fp16 ONNX and time them",
        description="Train a student to imitate a teacher, then evaluate, export and time it.",
    )
    run.add_argument("--data", required=True, help="folder or .zip of images")
    run.add_argument(
        "--teacher",
        required=True,
        help="opencv:<op>[+<op>], onnx:<path>, torchscript:<path> or pairs",
    )
    run.add_argument("--preset", help="start from this preset (see `presets`); default: default")
    run.add_argument(
        "--config", type=Path, help="JSON config (keys of DistillConfig, or a report.json)"
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set steps=200 --set losses.style=0.5 (repeatable)",
    )
    run.add_argument("--out", required=True, type=Path, help="folder for the run's outputs")
    run.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if present"
    )
    run.add_argument("--run-id", help="id written into the ONNX metadata (default: OUT's name)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(run=cmd_distill)

    presets = commands.add_parser("presets", help="list the built-in recipes")
    presets.set_defaults(run=cmd_presets)

    demo = commands.add_parser("demo-data", help="build offline demo images from bundled photos")
    demo.add_argument("dir", type=Path, help="folder to write the images to")
    demo.add_argument("--count", type=int, default=1000, help="number of images (default 1000)")
    demo.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    demo.set_defaults(run=cmd_demo_data)

    info = commands.add_parser("teacher-info", help="load a teacher and describe it")
    info.add_argument("spec", help="teacher spec, e.g. opencv:stylization or onnx:teacher.onnx")
    info.set_defaults(run=cmd_teacher_info)
    return parser


# -- distill --------------------------------------------------------------------------------------
def cmd_distill(args: argparse.Namespace) -> int:
    """Train, evaluate, export; print the closing table."""
    from distill_core.datasets import open_dataset
    from distill_core.teachers import load_teacher
    from distill_core.train import distill

    config = build_config(args)
    dataset = open_dataset(args.data)
    teacher = load_teacher(args.teacher)
    counts = dataset.counts()
    _note(
        f"data: {len(dataset)} images ({counts['train']} train, {counts['val']} val, "
        f"{counts['test']} test) in {dataset.root}"
        + (f"; {len(dataset.skipped)} files skipped" if dataset.skipped else "")
    )
    for skipped in dataset.skipped[:5]:
        _note(f"  {skipped}")
    _note(f"teacher: {teacher.spec} ({teacher.kind}, {_size(teacher.size_bytes)})")
    _note(
        f"student: {config.student_family} · preset {config.preset} · {config.steps} steps · "
        f"batch {config.batch_size} × {config.image_size}² crops · eval at {config.eval_size}²"
    )
    display = ProgressDisplay(enabled=not args.quiet)
    with display, _cancel_on_sigint() as cancel_requested:
        report = distill(
            config,
            dataset,
            teacher,
            args.out,
            display.callbacks(cancel_requested),
            resume=args.resume,
            run_id=args.run_id,
        )
    print(closing_table(report))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


def build_config(args: argparse.Namespace) -> Any:
    """The run's config: preset, then --config file, then --set overrides (or, on --resume
    with none of them given, the config saved in the checkpoint)."""
    from distill_core.config import ConfigError, DistillConfig

    if args.resume and not (args.preset or args.config or args.overrides):
        saved = _checkpoint_config(Path(args.out))
        if saved is not None:
            return DistillConfig.from_dict(saved)
    if args.config:
        data = _read_config_file(args.config)
        if args.preset:  # the file's keys over the preset's
            data = {**_preset_dict(args.preset), **data}
    else:
        data = _preset_dict(args.preset or "default")
    config = DistillConfig.from_dict(data)
    try:
        return config.with_overrides(args.overrides)
    except ConfigError:  # a ValueError too, already worded for the user
        raise
    except (TypeError, ValueError) as exc:  # a value of the wrong shape deep inside a group
        raise ConfigError(f"--set: {exc}") from exc


def _preset_dict(name: str) -> dict:
    from distill_core.presets import get_preset

    return get_preset(name).to_dict()


def _read_config_file(path: Path) -> dict:
    from distill_core.config import ConfigError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid JSON ({exc})") from exc
    # A run's report.json carries its full config: passing it reproduces the run.
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "config_hash" in data:
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of settings")
    return data


def _checkpoint_config(out_dir: Path) -> dict | None:
    import torch

    path = out_dir / "checkpoints" / "last.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["config"]
    except Exception:
        return None  # distill() reports an unreadable checkpoint in its own words


@contextmanager
def _cancel_on_sigint() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C: stop cleanly after the current step (checkpoint saved); second: at once."""
    requested = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        _note("\nstopping after this step and saving a checkpoint (Ctrl-C again to stop now)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield lambda: False
        return
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


class ProgressDisplay:
    """tqdm bars for preparing and training; phase notes on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.bar_phase = ""
        self.val_psnr: float | None = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def callbacks(self, should_cancel: Callable[[], bool]) -> Any:
        from distill_core.train import Callbacks

        return Callbacks(
            on_progress=self.progress,
            on_eval=self.evaluated,
            should_cancel=should_cancel,
            on_phase=self.phase,
        )

    def phase(self, name: str) -> None:
        self._close()
        if name in ("evaluating", "exporting"):
            what = {
                "evaluating": "evaluating the student on the test split",
                "exporting": "exporting to ONNX; scoring and timing each variant and the teacher",
            }[name]
            _note(f"{what}…")

    def progress(self, p: Any) -> None:
        if not self.enabled:
            return
        if self.bar is None or self.bar_phase != p.phase:
            from tqdm import tqdm

            self._close()
            desc, unit = (
                ("teacher outputs", "img") if p.phase == "preparing" else ("training", "step")
            )
            # A resumed run's bar starts at its checkpoint, not at 0.
            initial = p.step - 1 if p.phase == "training" else 0
            self.bar = tqdm(total=p.total, initial=initial, desc=desc, unit=unit, file=sys.stderr)
            self.bar_phase = p.phase
        self.bar.update(p.step - self.bar.n)
        if p.phase == "training":
            postfix = {"loss": f"{p.losses.get('total', float('nan')):.4g}", "lr": f"{p.lr:.2g}"}
            if self.val_psnr is not None:
                postfix["val_psnr"] = f"{self.val_psnr:.2f}dB"
            self.bar.set_postfix(postfix, refresh=False)

    def evaluated(self, event: Any) -> None:
        self.val_psnr = event.metrics.get("val_psnr")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def closing_table(report: dict) -> str:
    """Teacher vs each student variant: size, params, latency, PSNR, SSIM (units in headers)."""
    config = report["config"]
    threads = [str(t) for t in config["latency_threads"]]
    size = config["eval_size"]
    headers = ["", "size", "params"]
    headers += [f"p50 @{t} thread{'s' if t != '1' else ''} (ms)" for t in threads]
    headers += ["PSNR vs teacher (dB)", "SSIM vs teacher"]
    teacher = report["teacher"]
    rows = [
        [
            "teacher",
            _size(teacher["size_bytes"]),
            _count(teacher["params"]),
            *[_ms(teacher.get("latency"), t) for t in threads],
            "(reference)",
            "(reference)",
        ]
    ]
    params = _count(report["student"]["params"])
    for artifact in report["artifacts"]:
        rows.append(
            [
                "student " + artifact["kind"].removeprefix("onnx_"),
                _size(artifact["size_bytes"]),
                params,
                *[_ms(artifact.get("latency"), t) for t in threads],
                _num(artifact["psnr_vs_teacher"], 2),
                _num(artifact["ssim_vs_teacher"], 4),
            ]
        )
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    metrics = report["metrics"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(
        f"identity (output = input): PSNR {_num(metrics['identity_psnr'], 2)} dB, "
        f"SSIM {_num(metrics['identity_ssim'], 4)} — the floor a student must beat"
    )
    lines.append(
        f"quality: vs the teacher's output on {metrics['num_images']} {metrics['split']} images "
        f"at {size}×{size}; latency: onnxruntime CPU, 1×3×{size}×{size}, "
        f"{config['latency_warmup']} warm-ups + {config['latency_runs']} runs, in this process"
    )
    lines.extend(f"warning: {w}" for w in report.get("warnings", []))
    return "\n".join(lines)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f} MB"
    return f"{n / 1000:.1f} KB"


def _count(n: int | None) -> str:
    if n is None:
        return "—"
    if n >= 1_000_000_000:
        return f"{n / 1_000_000_000:.2f} G"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f} M"
    if n >= 1000:
        return f"{n / 1000:.1f} K"
    return str(n)


def _ms(latency: dict | None, threads: str) -> str:
    if not latency or threads not in latency:
        return "—"
    return f"{latency[threads]['p50_ms']:.2f}"


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _note(message: str) -> None:
    print(message, file=sys.stderr)


# -- other commands -------------------------------------------------------------------------------
def cmd_presets(args: argparse.Namespace) -> int:
    """List presets with parameters and MACs at 256×256."""
    from distill_core.presets import list_presets

    presets = list_presets()
    headers = ["name", "params", "MACs @256²", "description"]
    rows = [
        [p["name"], _count(p.get("params")), _count(p.get("macs")), p.get("description", "")]
        for p in presets
    ]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(3)]
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Write demo images made from photos bundled with scikit-image/scikit-learn."""
    from distill_core.config import ConfigError
    from distill_core.demo_data import build_demo_data

    if args.count < 1 or args.size < 8:
        raise ConfigError("--count must be at least 1 and --size at least 8")
    try:
        written = build_demo_data(args.dir, count=args.count, size=args.size)
    except ValueError as exc:  # e.g. DIR is an existing file
        raise ConfigError(str(exc)) from exc
    print(f"wrote {written} images to {args.dir}")
    return 0


def cmd_teacher_info(args: argparse.Namespace) -> int:
    """Load a teacher and print what it is."""
    from distill_core.teachers import load_teacher

    info = load_teacher(args.spec).info()
    if info.get("size_bytes") is not None:
        info["size_bytes"] = f"{info['size_bytes']} ({_size(info['size_bytes'])})"
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value if value is not None else '—'}")
    return 0
