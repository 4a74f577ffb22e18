"""The run: prepare teacher targets, train the student, evaluate it, export it, write the report.

`distill()` is the one function the CLI and the Celery task both call. A fresh start and a resume
go through the same code: build everything from the config, then — when resuming — load the
checkpoint's states over it, and run the loop from the checkpoint's step. The batch stream comes
from a seeded generator whose state is checkpointed, so a resumed run sees the very batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill_core.config import ConfigError, DistillConfig

CHECKPOINT_NAME = "last.pt"
METRICS_NAME = "metrics.jsonl"
REPORT_NAME = "report.json"
PREPARE_CHUNK = 16  # images per teacher batch while preparing (progress and cancel checks)


# -- public types ---------------------------------------------------------------------------------
@dataclass
class Progress:
    """One report of how far a phase has got. `phase` is "training" or "preparing"."""

    step: int
    total: int
    losses: dict[str, float]
    lr: float
    elapsed_s: float
    eta_s: float | None
    phase: str = "training"


@dataclass
class EvalEvent:
    """Validation metrics at a training step: {"val_psnr": dB, "val_ssim": ...}."""

    step: int
    metrics: dict[str, float]


@dataclass
class Callbacks:
    """Optional hooks; any may be None."""

    on_progress: Callable[[Progress], None] | None = None
    on_eval: Callable[[EvalEvent], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_phase: Callable[[str], None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None

    def progress(self, progress: Progress) -> None:
        if self.on_progress:
            self.on_progress(progress)

    def evaluated(self, event: EvalEvent) -> None:
        if self.on_eval:
            self.on_eval(event)

    def cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())

    def phase(self, name: str) -> None:
        if self.on_phase:
            self.on_phase(name)

    def checkpointed(self, step: int, path: Path) -> None:
        if self.on_checkpoint:
            self.on_checkpoint(step, path)


class Cancelled(Exception):
    """The run was cancelled; its last checkpoint is kept, so it can be resumed."""


class TrainingDiverged(RuntimeError):
    """A loss term became NaN/Inf; the message names the step and term, the checkpoint is kept."""


# -- the run --------------------------------------------------------------------------------------
def distill(
    config: DistillConfig,
    dataset: Any,
    teacher: Any,
    out_dir: Path,
    callbacks: Callbacks | None = None,
    *,
    resume: bool = False,
    run_id: str | None = None,
    cache: Any = None,
) -> dict:
    """Distil `teacher` into the configured student on `dataset`; returns the report dict and
    writes out_dir/report.json, the ONNX variants, samples, checkpoints and metrics.jsonl."""
    from distill_core import evaluate, report

    config.validate()
    callbacks = callbacks or Callbacks()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = run_id or out_dir.resolve().name
    device = _pick_device(config)
    if config.image_size > config.eval_size:
        raise ConfigError(
            f"image_size={config.image_size} (the training crop) is larger than "
            f"eval_size={config.eval_size} (the size images are prepared at); lower image_size "
            "or raise eval_size"
        )

    with _deterministic(device):
        _seed_everything(config.seed)
        data = prepare_data(config, dataset, teacher, cache, callbacks)
        session = TrainingSession(config, teacher, data, device, out_dir)
        checkpoint = session.checkpoint_path
        if resume and checkpoint.exists():
            session.load(checkpoint)
        else:
            # A fresh start owns out_dir: a stale checkpoint must not be resumed into later.
            checkpoint.unlink(missing_ok=True)
        # The report marks a finished run; until this one finishes, there must be none here.
        (out_dir / REPORT_NAME).unlink(missing_ok=True)
        session.truncate_history()
        callbacks.phase("training")
        session.run(callbacks)

        if callbacks.cancelled():
            raise Cancelled(f"run cancelled after training step {session.step}; {_kept(session)}")
        callbacks.phase("evaluating")
        # Scored as exported: a float32 CPU copy in eval mode (no TF32/AMP on a GPU).
        student = copy.deepcopy(session.student).to("cpu", torch.float32).eval()
        test = data.eval_split
        outputs = evaluate.predict(student, test.inputs, torch.device("cpu"))
        metrics = evaluate.split_metrics(outputs, test.inputs, test.targets, test.relpaths)
        metrics["split"] = test.name
        samples = evaluate.write_samples(
            out_dir / "samples", test.inputs, test.targets, outputs, config.num_samples
        )

        if callbacks.cancelled():
            raise Cancelled(f"run cancelled before export; {_kept(session)}")
        callbacks.phase("exporting")
        artifacts, teacher_latency, warnings = evaluate.export_and_measure(
            config, student, outputs, teacher, data, out_dir, run_id, callbacks.cancelled
        )
        if callbacks.cancelled():
            raise Cancelled(f"run cancelled while exporting; {_kept(session)}")

    result = report.build_report(
        config=config,
        run_id=run_id,
        teacher=teacher,
        teacher_latency=teacher_latency,
        student=student,
        metrics=metrics,
        artifacts=artifacts,
        samples=samples,
        out_dir=out_dir,
        steps_done=session.step,
        train_seconds=session.train_seconds,
        dataset=dataset,
        device=device,
        amp=session.amp_name,
        warnings=warnings,
    )
    report.write_report(out_dir / REPORT_NAME, result)
    return result


def _kept(session: TrainingSession, *, resumable: bool = True) -> str:
    if not session.last_checkpoint_step:
        return "no checkpoint had been written yet"
    kept = (
        f"the checkpoint at step {session.last_checkpoint_step} is kept in "
        f"{session.checkpoint_path}"
    )
    return kept + ("; run again with --resume to continue" if resumable else "")


# -- data -----------------------------------------------------------------------------------------
@dataclass
class Split:
    """Prepared images of one split: uint8 N×S×S×3 inputs and teacher targets, same order."""

    name: str
    relpaths: list[str]
    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.relpaths)


@dataclass
class PreparedData:
    train: Split
    val: Split
    test: Split
    fingerprint: str  # which images and teacher the targets came from (checked on resume)

    @property
    def eval_split(self) -> Split:
        """The test split; a dataset too small to have one is scored on val (the report says)."""
        for split in (self.test, self.val, self.train):
            if len(split):
                return split
        return self.test

    @property
    def calibration_split(self) -> Split:
        """Images for int8 calibration: val, else train (never the test split)."""
        return self.val if len(self.val) else self.train


def prepare_data(
    config: DistillConfig, dataset: Any, teacher: Any, cache: Any, callbacks: Callbacks
) -> PreparedData:
    """Load every image once at eval_size and get the teacher's output for it from the cache."""
    from distill_core.cache import TeacherCache
    from distill_core.datasets import DatasetError

    cache = cache or TeacherCache(None, teacher)  # None: $DISTILL_CACHE_DIR or ~/.cache
    size = config.eval_size
    wanted = {
        "train": _sorted(dataset.split("train")),
        # Only the val/test images that are used are prepared: evaluation and calibration caps.
        "val": _sorted(dataset.split("val"))[
            : max(config.max_eval_images, config.calibration_images)
        ],
        "test": _sorted(dataset.split("test"))[: config.max_eval_images],
    }
    if not wanted["train"]:
        raise DatasetError(
            "the dataset's train split is empty; add more images (the split is 7:2:1 by a hash "
            "of each file's path)"
        )
    total = sum(len(items) for items in wanted.values())
    callbacks.phase("preparing")
    started = time.monotonic()
    done = 0
    splits = {}
    for name, items in wanted.items():
        inputs = np.zeros((len(items), size, size, 3), dtype=np.uint8)
        targets = np.zeros_like(inputs)
        for start in range(0, len(items), PREPARE_CHUNK):
            if callbacks.cancelled():
                raise Cancelled("run cancelled while preparing the teacher's outputs")
            chunk = items[start : start + PREPARE_CHUNK]
            targets[start : start + len(chunk)] = np.stack(cache.targets_for(chunk, size))
            for offset, item in enumerate(chunk):
                inputs[start + offset] = cache.input_for(item, size)
            done += len(chunk)
            elapsed = time.monotonic() - started
            callbacks.progress(
                Progress(
                    step=done,
                    total=total,
                    losses={},
                    lr=0.0,
                    elapsed_s=elapsed,
                    eta_s=elapsed / done * (total - done),
                    phase="preparing",
                )
            )
        splits[name] = Split(name, [item.relpath for item in items], inputs, targets)
    fingerprint = hashlib.sha256(
        json.dumps(
            [getattr(teacher, "fingerprint", ""), size, splits["train"].relpaths], sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    return PreparedData(splits["train"], splits["val"], splits["test"], fingerprint)


def _sorted(items: list) -> list:
    return sorted(items, key=lambda item: item.relpath)


class BatchSampler:
    """Random crops with identical flips for inputs and targets, from a seeded generator."""

    def __init__(self, split: Split, crop: int, batch_size: int, seed: int, device: torch.device):
        self.generator = torch.Generator().manual_seed(seed)
        self.crop = crop
        self.batch_size = batch_size
        self.device = device
        # Whole prepared split on the device as uint8: crops are cut there, nothing is re-read.
        self.inputs = torch.from_numpy(split.inputs).to(device)
        self.targets = torch.from_numpy(split.targets).to(device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) float32 B×3×crop×crop in [0, 1]."""
        n, size = self.inputs.shape[0], self.inputs.shape[1]
        g, b, c = self.generator, self.batch_size, self.crop
        index = torch.randint(0, n, (b,), generator=g)
        top = torch.randint(0, size - c + 1, (b,), generator=g)
        left = torch.randint(0, size - c + 1, (b,), generator=g)
        flip = torch.randint(0, 2, (b,), generator=g)
        xs, ys = [], []
        for i, t, lft, f in zip(
            index.tolist(), top.tolist(), left.tolist(), flip.tolist(), strict=True
        ):
            x = self.inputs[i, t : t + c, lft : lft + c]
            y = self.targets[i, t : t + c, lft : lft + c]
            if f:
                x, y = x.flip(1), y.flip(1)
            xs.append(x)
            ys.append(y)
        return _to_float_nchw(torch.stack(xs)), _to_float_nchw(torch.stack(ys))


def _to_float_nchw(batch: torch.Tensor) -> torch.Tensor:
    out = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if out.device.type == "cuda":
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


# -- training -------------------------------------------------------------------------------------
class TrainingSession:
    """Model, losses, optimizer, scheduler, sampler and step of one run, and their checkpoint."""

    def __init__(
        self,
        config: DistillConfig,
        teacher: Any,
        data: PreparedData,
        device: torch.device,
        out_dir: Path,
    ) -> None:
        from distill_core.losses import build_losses
        from distill_core.students import build_student

        self.config = config
        self.data = data
        self.device = device
        self.out_dir = out_dir
        self.checkpoint_path = out_dir / "checkpoints" / CHECKPOINT_NAME
        self.metrics_path = out_dir / METRICS_NAME
        self.step = 0
        self.last_checkpoint_step = 0
        self.train_seconds = 0.0

        student = build_student(config.student_family, config.student).to(device)
        if device.type == "cuda":
            student = student.to(memory_format=torch.channels_last)
        self.student = student
        self.losses = build_losses(config, teacher, student).to(device)
        params = [p for p in student.parameters() if p.requires_grad]
        params += [p for p in self.losses.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(config, params)
        # A constant rate is StepLR with gamma 1: one scheduler type, one checkpoint layout.
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer,
            step_size=config.lr_step_size or 1,
            gamma=config.lr_gamma if config.lr_step_size else 1.0,
        )
        self.amp_dtype = _amp_dtype(config, device)
        self.amp_name = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        # Loss scaling is only needed for fp16: bf16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.amp_dtype == torch.float16 and device.type == "cuda"
        )
        self.sampler = BatchSampler(
            data.train, config.image_size, config.batch_size, config.seed, device
        )

    # -- the loop --
    def run(self, callbacks: Callbacks) -> None:
        """Train from self.step to config.steps, checking for cancellation before every step."""
        config = self.config
        started = time.monotonic()
        first_step = self.step
        prior_seconds = self.train_seconds
        self.student.train()
        with open(self.metrics_path, "a", encoding="utf-8") as history:
            while self.step < config.steps:
                if callbacks.cancelled():
                    self.train_seconds = prior_seconds + time.monotonic() - started
                    if self.step > self.last_checkpoint_step:
                        self.save(callbacks)
                    raise Cancelled(f"run cancelled at step {self.step}; {_kept(self)}")
                step = self.step + 1
                lr = self.optimizer.param_groups[0]["lr"]
                values = self._train_step(step, lr)
                line: dict[str, Any] = {"step": step, **values, "lr": lr}
                self.step = step
                if step % config.eval_every == 0 or step == config.steps:
                    val = self.validate()
                    if val:
                        line.update(val)
                        callbacks.evaluated(EvalEvent(step, val))
                history.write(json.dumps(line) + "\n")
                history.flush()
                elapsed = time.monotonic() - started
                self.train_seconds = prior_seconds + elapsed
                per_step = elapsed / (step - first_step)
                callbacks.progress(
                    Progress(
                        step=step,
                        total=config.steps,
                        losses=values,
                        lr=lr,
                        elapsed_s=self.train_seconds,
                        eta_s=per_step * (config.steps - step),
                    )
                )
                if step % config.checkpoint_every == 0 or step == config.steps:
                    self.save(callbacks)

    def _train_step(self, step: int, lr: float) -> dict[str, float]:
        inputs, targets = self.sampler.next_batch()
        with self._autocast():
            # One forward pass gives the output and, when a term needs them, the feature maps.
            out, feats = self.losses.run_student(self.student, inputs)
            total, terms = self.losses(out, targets, inputs, feats)
        values = {name: float(term.detach().float()) for name, term in terms.items()}
        values["total"] = float(total.detach().float())
        for name, value in values.items():
            if not math.isfinite(value):
                self._diverged(step, name, value, lr)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values

    def _diverged(self, step: int, term: str, value: float, lr: float) -> None:
        what = "nan" if math.isnan(value) else "inf"
        raise TrainingDiverged(
            f"step {step}: loss term '{term}' became {what}; {_kept(self, resumable=False)}; "
            f"start again with a lower lr (now {lr:g}), a lower weight for '{term}', or "
            "another optimizer"
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def validate(self) -> dict[str, float]:
        """Mean PSNR/SSIM on the (capped) val split at eval_size; {} when there is none."""
        from distill_core import evaluate

        val = self.data.val
        if not len(val):
            return {}
        images = val.inputs[: self.config.max_eval_images]
        targets = val.targets[: self.config.max_eval_images]
        scores = evaluate.mean_scores(evaluate.predict(self.student, images, self.device), targets)
        return {"val_psnr": scores["psnr"], "val_ssim": scores["ssim"]}

    # -- history --
    def truncate_history(self) -> None:
        """Keep metrics.jsonl lines up to the current step only (none on a fresh start)."""
        kept = []
        if self.step and self.metrics_path.exists():
            for raw in self.metrics_path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    line = json.loads(raw)
                    # A line cut short by a kill does not parse and is dropped with the rest.
                    if isinstance(line, dict) and 0 < line.get("step", 0) <= self.step:
                        kept.append(raw)
        _atomic_write_bytes(self.metrics_path, "".join(k + "\n" for k in kept).encode("utf-8"))

    # -- checkpoints --
    def save(self, callbacks: Callbacks) -> None:
        """Write checkpoints/last.pt atomically (tmp file + os.replace)."""
        bad = [n for n, p in self.student.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            # The last update broke the weights although its loss was finite; do not overwrite
            # the good checkpoint with them.
            raise TrainingDiverged(
                f"step {self.step}: the update made the weights non-finite ({bad[0]}); "
                f"{_kept(self, resumable=False)}; start again with a lower lr (now "
                f"{self.optimizer.param_groups[0]['lr']:g})"
            )
        state = {
            "format": 1,
            "step": self.step,
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "losses": self.losses.state_dict(),
            "rng": self._rng_state(),
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "data_fingerprint": self.data.fingerprint,
            "history_len": self.step,
            "train_seconds": self.train_seconds,
        }
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".pt.tmp")
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.checkpoint_path)
        self.last_checkpoint_step = self.step
        callbacks.checkpointed(self.step, self.checkpoint_path)

    def load(self, path: Path) -> None:
        """Restore every state from a checkpoint of the same config, teacher and images."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(
                f"cannot resume: {path} is not a readable checkpoint ({exc}); delete it to "
                "start over"
            ) from exc
        if state.get("config_hash") != self.config.config_hash():
            changed = _config_diff(state.get("config", {}), self.config.to_dict())
            raise ConfigError(
                f"cannot resume: the checkpoint in {path.parent} was made with a different "
                f"config ({changed}); resume with the same settings, or write the new run to "
                "another --out folder"
            )
        if state.get("data_fingerprint") != self.data.fingerprint:
            raise ConfigError(
                f"cannot resume: the checkpoint in {path.parent} was trained on other images or "
                "another teacher; resume with the same --data and --teacher, or use another --out"
            )
        self.student.load_state_dict(state["model"])
        self.losses.load_state_dict(state["losses"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self._set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.last_checkpoint_step = self.step
        self.train_seconds = float(state.get("train_seconds", 0.0))

    def _rng_state(self) -> dict[str, Any]:
        # Everything as tensors, lists and numbers so torch.load(weights_only=True) accepts it.
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        py_version, py_state, py_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
            "python": [py_version, list(py_state), py_gauss],
            "sampler": self.sampler.generator.get_state(),
        }

    def _set_rng_state(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        cuda = rng["cuda"]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, py_state, py_gauss = rng["python"]
        random.setstate((version, tuple(py_state), py_gauss))
        self.sampler.generator.set_state(rng["sampler"])


def _make_optimizer(config: DistillConfig, params: list) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # Plain SGD barely moves an image CNN in a few hundred steps; momentum 0.9 is the usual pick.
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def _config_diff(old: dict, new: dict) -> str:
    changed = [
        f"{key}: {old.get(key)!r} → {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    return "; ".join(changed[:5]) or "the config hash differs"


# -- device, precision, seeding ------------------------------------------------------------------
def _pick_device(config: DistillConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible here; use device=auto or cpu")
    if config.device == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _amp_dtype(config: DistillConfig, device: torch.device) -> torch.dtype | None:
    # Mixed precision is a CUDA feature here: on CPU it is slower and breaks bit-exact resume.
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Fast cuDNN kernels on CUDA for the run, restored afterwards (a worker runs many runs).

    CPU kernels for these nets are deterministic for a fixed thread count, which the tests check;
    torch.use_deterministic_algorithms is not called because it imports the compiler stack
    (seconds per run) and changes nothing on CPU here.
    """
    benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        # Fixed crop sizes: let cuDNN pick the fastest kernels; exact CUDA replay is not promised.
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
