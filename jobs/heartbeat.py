"""Run heartbeats: a worker proves it is alive; a periodic check re-queues runs whose worker died.

The database is the source of truth. A run's `heartbeat` is the last sign of life of whatever
holds it: while running or exporting, the worker's heartbeat thread writes it every few seconds;
while queued, it is when the run was last sent to the broker. `attempts` is a fencing token: a
worker writes only while the run still carries the attempt number it claimed, so a worker that was
presumed dead (and replaced) cannot overwrite the new attempt's progress.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections
from django.db.models import F, Q
from django.utils import timezone

from jobs.models import Dataset, Run

log = logging.getLogger(__name__)

WORKING = (Run.Status.RUNNING, Run.Status.EXPORTING)


def _number(name: str, default: float) -> float:
    """A positive number from settings (when H-web's settings define it) or the environment."""
    value = getattr(settings, name, None)
    if value is None:
        raw = os.environ.get(name, "")
        if not raw.strip():
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise ImproperlyConfigured(f"{name}={value}: must be greater than 0")
    return float(value)


def stale_seconds() -> float:
    """A running run whose heartbeat is older than this is presumed dead (its worker died)."""
    return _number("DISTILLERY_HEARTBEAT_STALE_SECONDS", 120.0)


def beat_seconds() -> float:
    """How often a worker writes its heartbeat: several beats fit in one stale period."""
    return max(0.25, min(10.0, stale_seconds() / 4))


def resend_seconds() -> float:
    """A queued run not picked up for this long, with its queue empty, was lost by the broker."""
    return _number("DISTILLERY_QUEUED_RESEND_SECONDS", max(30.0, stale_seconds()))


def max_attempts() -> int:
    """After this many worker deaths on one run it is failed instead of re-queued again."""
    return int(_number("DISTILLERY_MAX_ATTEMPTS", 3))


def claim_run(run_id: int, worker: str) -> Run | None:
    """Take a queued run (or one whose worker died) for this worker; None when it is not ours."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=stale_seconds())
    takeable = Q(status=Run.Status.QUEUED, cancel_requested=False) | Q(
        Q(heartbeat__lt=stale_before) | Q(heartbeat__isnull=True), status__in=WORKING
    )
    claimed = Run.objects.filter(takeable, pk=run_id).update(
        status=Run.Status.RUNNING,
        worker=worker[:200],
        heartbeat=now,
        attempts=F("attempts") + 1,
        error="",
    )
    if not claimed:
        # A queued run whose cancel arrived before any worker did ends here, before it starts.
        Run.objects.filter(pk=run_id, status=Run.Status.QUEUED, cancel_requested=True).update(
            status=Run.Status.CANCELLED, finished=now
        )
        return None
    run = Run.objects.select_related("dataset", "teacher").get(pk=run_id)
    if run.started is None:
        Run.objects.filter(pk=run_id).update(started=now)
        run.started = now
    return run


class Heartbeat(threading.Thread):
    """Writes the run's heartbeat from a thread, so long phases without progress callbacks
    (export, latency timing) still count as alive, and reads the cancel flag every second."""

    def __init__(self, run_id: int, attempt: int, interval: float | None = None) -> None:
        super().__init__(name=f"heartbeat-run-{run_id}", daemon=True)
        self.run_id = run_id
        self.attempt = attempt
        self.interval = interval or beat_seconds()
        self.poll = min(1.0, self.interval)
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()  # another attempt owns the run now, or it was finished
        self._halt = threading.Event()
        self._last_beat = time.monotonic()

    def check(self) -> None:
        """Read the cancel flag; write the heartbeat when one is due."""
        mine = Run.objects.filter(pk=self.run_id, attempts=self.attempt, status__in=WORKING)
        if time.monotonic() - self._last_beat >= self.interval:
            self._last_beat = time.monotonic()
            if not mine.update(heartbeat=timezone.now()):
                self.lost.set()
                return
        flag = mine.values_list("cancel_requested", flat=True).first()
        if flag is None:
            self.lost.set()
        elif flag:
            self.cancel_requested.set()

    def run(self) -> None:
        try:
            while not self._halt.wait(self.poll):
                try:
                    self.check()
                except Exception:  # a locked SQLite file or a DB restart: try again next time
                    log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)
                    close_old_connections()
        finally:
            connections.close_all()  # this thread's own connections

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


def queue_is_empty(queue: str) -> bool | None:
    """Whether the broker holds no message for `queue`; None when the broker does not answer."""
    from webapp.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            bound = app.amqp.queues[queue](conn.default_channel)
            # Declaring also restores the queue's exchange binding after a broker restart (not
            # passive: Redis has no key for an empty queue, a passive declare would say "no queue").
            bound.exchange.declare()
            declared = bound.queue_declare()
            bound.queue_bind()
            return declared.message_count == 0
    except Exception as exc:
        log.warning("broker did not answer while checking queue %s: %s", queue, exc)
        return None


def requeue_stale_runs(now: datetime | None = None) -> list[int]:
    """Re-queue runs whose worker died and re-send queued runs the broker lost; returns their ids.

    A running/exporting run whose heartbeat is older than DISTILLERY_HEARTBEAT_STALE_SECONDS goes
    back to queued and is sent again (the task resumes from the run's last checkpoint). A queued
    run not picked up for DISTILLERY_QUEUED_RESEND_SECONDS while its queue is empty was lost (Redis
    here keeps nothing on disk) and is sent again. A duplicate message is harmless: a worker only
    takes a run that is queued or whose heartbeat is stale (see claim_run).
    """
    from jobs.tasks import enqueue_run

    now = now or timezone.now()
    resent: list[int] = []
    stale_before = now - timedelta(seconds=stale_seconds())
    dead = Run.objects.filter(
        Q(heartbeat__lt=stale_before) | Q(heartbeat__isnull=True), status__in=WORKING
    )
    for run in dead:
        same = Run.objects.filter(pk=run.pk, status=run.status, attempts=run.attempts)
        if run.cancel_requested:
            same.update(status=Run.Status.CANCELLED, finished=now)
            continue
        if run.attempts >= max_attempts():
            same.update(
                status=Run.Status.FAILED,
                finished=now,
                error=(
                    f"the worker running this run stopped responding {run.attempts} times "
                    f"(last on {run.worker or 'an unknown host'}); check that worker's log, "
                    "e.g. for running out of memory, then retry the run"
                ),
            )
            continue
        if same.update(status=Run.Status.QUEUED, heartbeat=now):
            log.warning("run %s: worker %s stopped beating; re-queued", run.pk, run.worker)
            enqueue_run(run.pk)
            resent.append(run.pk)

    Run.objects.filter(status=Run.Status.QUEUED, cancel_requested=True).update(
        status=Run.Status.CANCELLED, finished=now
    )
    resend_before = now - timedelta(seconds=resend_seconds())
    waiting = Run.objects.filter(
        Q(heartbeat__lt=resend_before) | Q(heartbeat__isnull=True, created__lt=resend_before),
        status=Run.Status.QUEUED,
    ).exclude(pk__in=resent)
    if waiting.exists() and queue_is_empty("gpu"):
        for run_id in waiting.values_list("pk", flat=True):
            log.warning("run %s: queued but not in the broker; sending it again", run_id)
            enqueue_run(run_id)
            resent.append(run_id)
    return resent


def resend_pending_ingests(now: datetime | None = None) -> list[int]:
    """Re-send datasets still pending after DISTILLERY_QUEUED_RESEND_SECONDS while the cpu queue
    is empty (the broker lost them, or was down when they were registered)."""
    from jobs.tasks import _send_ingest

    now = now or timezone.now()
    waiting = Dataset.objects.filter(
        status=Dataset.Status.PENDING, created__lt=now - timedelta(seconds=resend_seconds())
    )
    if not waiting.exists() or not queue_is_empty("cpu"):
        return []
    ids = list(waiting.values_list("pk", flat=True))
    for dataset_id in ids:
        _send_ingest(dataset_id)
    return ids
