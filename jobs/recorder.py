"""Writes a training run's progress and metric series to the database, throttled.

distill_core calls back every step; the database sees at most one progress write per second and
the per-step losses in one bulk insert per second. MetricPoint rows are inserted with
ignore_conflicts, so a resumed run that replays steps adds no duplicates.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from django.utils import timezone

from jobs.heartbeat import Heartbeat
from jobs.models import MetricPoint, Run


class RunRecorder:
    """Callback target for one attempt of one run; every write is fenced by the attempt number."""

    def __init__(
        self,
        run: Run,
        heartbeat: Heartbeat,
        history: Path | None = None,
        flush_seconds: float = 1.0,
    ) -> None:
        self.run_id = run.pk
        # metrics.jsonl of a resumed run: loaded once training starts (distill has cut it back
        # to the checkpoint's step by then), to fill steps the dead attempt had not flushed.
        self.history = history
        self.attempt = run.attempts
        self.heartbeat = heartbeat
        self.flush_seconds = flush_seconds
        self._points: list[MetricPoint] = []
        self._pending: dict | None = None
        self._last_flush = 0.0

    def _mine(self):
        return Run.objects.filter(pk=self.run_id, attempts=self.attempt)

    # -- distill_core callbacks --------------------------------------------------------------
    def on_progress(self, progress) -> None:
        """Queue the step's losses and lr; write progress when a second has passed."""
        phase = getattr(progress, "phase", "training")
        if phase != "training":
            # Teacher outputs being prepared: no step yet, but the user sees it move.
            now = time.monotonic()
            if now - self._last_flush >= self.flush_seconds or progress.step >= progress.total:
                self._last_flush = now
                eta = progress.eta_s if progress.eta_s and math.isfinite(progress.eta_s) else None
                self._mine().update(
                    phase=f"{phase} teacher outputs {progress.step}/{progress.total}",
                    eta_seconds=eta,
                )
            return
        for name, value in progress.losses.items():
            self._add(name, progress.step, value)
        if progress.lr is not None:
            self._add("lr", progress.step, progress.lr)
        eta = progress.eta_s
        if eta is not None and not math.isfinite(eta):
            eta = None
        self._pending = {
            "phase": "",
            "step": progress.step,
            "total_steps": progress.total,
            "progress": min(1.0, progress.step / progress.total) if progress.total else 0.0,
            "eta_seconds": eta,
        }
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if due or progress.step >= progress.total:
            self.flush()

    def on_eval(self, event) -> None:
        """Validation metrics are rare and worth seeing at once."""
        for name, value in event.metrics.items():
            self._add(name, event.step, value)
        self.flush()

    def on_phase(self, phase: str) -> None:
        """Export is its own visible state; training and evaluation show as running."""
        self.flush()
        if phase == "training" and self.history is not None:
            self.backfill(self.history)
            self.history = None
        if phase == "exporting":
            self._mine().filter(status=Run.Status.RUNNING).update(
                status=Run.Status.EXPORTING, heartbeat=timezone.now(), eta_seconds=None
            )

    def should_cancel(self) -> bool:
        """True when the user asked to cancel, or when this attempt no longer owns the run."""
        return self.heartbeat.cancel_requested.is_set() or self.heartbeat.lost.is_set()

    def callbacks(self):
        """The distill_core Callbacks object wired to this recorder."""
        from distill_core.train import Callbacks

        return Callbacks(
            on_progress=self.on_progress,
            on_eval=self.on_eval,
            should_cancel=self.should_cancel,
            on_phase=self.on_phase,
        )

    # -- writing -----------------------------------------------------------------------------
    def _add(self, name: str, step: int, value) -> None:
        value = float(value)
        if math.isfinite(value):  # a NaN loss is reported by TrainingDiverged, not charted
            self._points.append(
                MetricPoint(run_id=self.run_id, name=name[:64], step=step, value=value)
            )

    def flush(self) -> None:
        """Write queued metric points and the latest progress."""
        self._last_flush = time.monotonic()
        if self._points:
            MetricPoint.objects.bulk_create(self._points, ignore_conflicts=True, batch_size=500)
            self._points = []
        if self._pending is not None:
            self._mine().update(heartbeat=timezone.now(), **self._pending)
            self._pending = None

    def backfill(self, metrics_jsonl: Path) -> int:
        """Load the loss history a previous attempt wrote to disk (steps it had not flushed)."""
        if not metrics_jsonl.is_file():
            return 0
        count = 0
        with metrics_jsonl.open() as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed process may be cut short
                step = row.pop("step", None)
                if not isinstance(step, int):
                    continue
                for name, value in row.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self._add(name, step, value)
                        count += 1
        self.flush()
        return count
