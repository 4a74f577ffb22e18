"""Celery tasks. Thin: they take ids, load the row, call distill_core, and write results back.

Queues: `gpu` trains (and, in the same task, exports, quantizes and evaluates: distill_core's
`distill()` does all of it in one call, and handing a trained model to another machine would cost
more than the seconds export takes for students this size); `cpu` ingests datasets.
"""

from __future__ import annotations

import logging
import socket
import time
from functools import partial
from pathlib import Path

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from distill_core.checksums import sha256_file
from jobs.heartbeat import Heartbeat, _number, claim_run
from jobs.models import Artifact, Dataset, MetricPoint, Run
from jobs.recorder import RunRecorder

log = logging.getLogger(__name__)

# Seconds a training task may run (DISTILLERY_TASK_TIME_LIMIT); past it the run fails cleanly.
TIME_LIMIT = _number("DISTILLERY_TASK_TIME_LIMIT", 24 * 3600)
THUMBNAILS = 12
THUMB_SIZE = 96
# A web request that enqueues must not hang when the broker is down: a few quick retries only.
SEND_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


@worker_init.connect
def _preload_training(**_kwargs) -> None:
    """Import what a training task needs once, in the worker's main process, so every forked
    child starts warm: torch alone takes seconds, and torch.optim pulls in torch._dynamo lazily
    on first use (seconds more), as does the ONNX exporter."""
    import torch

    import distill_core.cache
    import distill_core.datasets
    import distill_core.evaluate
    import distill_core.export
    import distill_core.losses
    import distill_core.quantize
    import distill_core.report
    import distill_core.teachers
    import distill_core.train  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo


# -- sending ---------------------------------------------------------------------------------
def enqueue_run(run_id: int) -> None:
    """Send a run to the `gpu` queue once the current transaction commits.

    On a broker error the run stays queued with the error in its `error` field; the stale-run
    checker re-sends it when the broker answers (so a run is never lost to a broker outage).
    """
    transaction.on_commit(partial(_send_run, run_id))


def _send_run(run_id: int) -> bool:
    try:
        train_run.apply_async((run_id,), queue="gpu", retry=True, retry_policy=SEND_RETRY)
    except Exception as exc:  # kombu's OperationalError, redis' ConnectionError, an OSError...
        log.warning("could not send run %s to the broker: %s", run_id, exc)
        Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(
            error=f"broker unreachable: {exc}. The run stays queued and is sent when the broker "
            "answers again (the stale-run checker retries every few seconds)."
        )
        return False
    # For a queued run the heartbeat is when it was last sent (see jobs/heartbeat.py).
    Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(
        heartbeat=timezone.now(), error=""
    )
    return True


def enqueue_ingest(dataset_id: int) -> None:
    """Send a dataset to the `cpu` queue for ingestion once the current transaction commits."""
    transaction.on_commit(partial(_send_ingest, dataset_id))


def _send_ingest(dataset_id: int) -> bool:
    try:
        ingest_dataset.apply_async((dataset_id,), queue="cpu", retry=True, retry_policy=SEND_RETRY)
    except Exception as exc:
        log.warning("could not send dataset %s to the broker: %s", dataset_id, exc)
        Dataset.objects.filter(pk=dataset_id, status=Dataset.Status.PENDING).update(
            error=f"broker unreachable: {exc}. Ingestion starts when the broker answers again."
        )
        return False
    return True


# -- datasets --------------------------------------------------------------------------------
@shared_task(queue="cpu", acks_late=True)
def ingest_dataset(dataset_id: int) -> str:
    """Check every image of a dataset, split it, record skipped files and make thumbnails."""
    from distill_core.datasets import DatasetError, open_dataset

    rows = Dataset.objects.filter(pk=dataset_id)
    if not rows.update(status=Dataset.Status.INGESTING, progress=0.0, error=""):
        return "missing"
    record = rows.get()
    last_write = [0.0]

    def progress(done: int, total: int) -> None:
        # Checking images is 90% of the work; thumbnails the rest. At most one write a second.
        if time.monotonic() - last_write[0] >= 1.0:
            last_write[0] = time.monotonic()
            rows.update(progress=0.9 * done / max(1, total))

    try:
        data = open_dataset(record.path, progress=progress)
        thumbs = _thumbnails(record, data.items[:THUMBNAILS])
    except DatasetError as exc:
        rows.update(status=Dataset.Status.FAILED, error=str(exc), progress=0.0)
        return "failed"
    except Exception as exc:
        log.exception("ingesting dataset %s failed", dataset_id)
        rows.update(
            status=Dataset.Status.FAILED,
            error=f"could not read the dataset at {record.path}: {type(exc).__name__}: {exc}",
        )
        return "failed"
    rows.update(
        status=Dataset.Status.READY,
        progress=1.0,
        paired=data.paired,
        counts=data.counts(),
        skipped=[{"path": s.relpath, "reason": s.reason} for s in data.skipped],
        thumbnails=thumbs,
    )
    return "ready"


def _thumbnails(record: Dataset, items) -> list[str]:
    from PIL import Image

    from distill_core.datasets import load_rgb, prepare_image

    media = Path(settings.MEDIA_ROOT)
    folder = media / "datasets" / str(record.pk) / "thumbs"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, item in enumerate(items):
        target = folder / f"{n:03d}.jpg"
        Image.fromarray(prepare_image(load_rgb(item.path), THUMB_SIZE)).save(target, quality=85)
        paths.append(str(target.relative_to(media)))
    return paths


# -- training --------------------------------------------------------------------------------
@shared_task(
    bind=True,
    queue="gpu",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=TIME_LIMIT,
    time_limit=TIME_LIMIT + 120,
)
def train_run(self, run_id: int) -> str:
    """Train, export, quantize and evaluate one run; resumes from its checkpoint if it has one."""
    return run_training(run_id, worker=self.request.hostname or socket.gethostname())


def run_training(run_id: int, worker: str) -> str:
    """The body of train_run: returns the state it left the run in ("skipped" if not ours)."""
    run = claim_run(run_id, worker)
    if run is None:
        return "skipped"
    from distill_core.train import Cancelled, TrainingDiverged

    # A re-queued run (its worker died) continues from its checkpoint through the same call;
    # one that died before its first checkpoint starts over, and so does its loss history.
    resume = (run.out_dir() / "checkpoints" / "last.pt").is_file()
    if not resume:
        MetricPoint.objects.filter(run=run).delete()
    beat = Heartbeat(run.pk, run.attempts)
    recorder = RunRecorder(run, beat, history=run.out_dir() / "metrics.jsonl" if resume else None)
    mine = Run.objects.filter(pk=run.pk, attempts=run.attempts)
    beat.start()
    try:
        report = _distill(run, recorder, resume)
    except Cancelled:
        recorder.flush()
        if beat.lost.is_set():
            return "superseded"  # the checker handed the run to another attempt: leave it be
        mine.update(status=Run.Status.CANCELLED, finished=timezone.now(), eta_seconds=None)
        return "cancelled"
    except TrainingDiverged as exc:
        recorder.flush()
        return _fail(mine, f"training diverged: {exc}")
    except SoftTimeLimitExceeded:
        return _fail(
            mine,
            f"the run took longer than the task time limit of {TIME_LIMIT:.0f} s "
            "(DISTILLERY_TASK_TIME_LIMIT); raise it or lower steps, then retry",
        )
    except (ValueError, FileNotFoundError) as exc:  # ConfigError, DatasetError, TeacherError...
        log.warning("run %s refused: %s", run.pk, exc, exc_info=True)
        return _fail(mine, str(exc))
    except Exception as exc:
        log.exception("run %s failed", run.pk)
        return _fail(
            mine,
            f"the run stopped on an unexpected error: {type(exc).__name__}: {exc} "
            "(the worker log has the full traceback)",
        )
    finally:
        beat.stop()
    with transaction.atomic():
        if not mine.filter(status__in=(Run.Status.RUNNING, Run.Status.EXPORTING)).exists():
            return "superseded"
        _store_artifacts(run, report)
        mine.update(
            status=Run.Status.SUCCEEDED,
            finished=timezone.now(),
            progress=1.0,
            eta_seconds=0.0,
            report=report,
            summary=summarize(report),
            heartbeat=timezone.now(),
        )
        transaction.on_commit(partial(after_success, run.pk))
    return "succeeded"


def after_success(run_id: int) -> None:
    """Work a finished run's pages and devices need: queue a benchmark job per ONNX artifact and
    enabled agent, save the thinned curves, and run the int8/fp16 models on the samples, so the
    first visitor of the comparison or the viewer does not wait. A failure here is logged and
    never turns a succeeded run into a failed one."""
    from jobs import benchmarks, samples, series

    run = Run.objects.get(pk=run_id)
    for artifact in run.artifacts.filter(kind__startswith="onnx_"):
        benchmarks.create_jobs_for_artifact(artifact)
    for step in (series.build_digests, samples.prepare_variants):
        try:
            step(run)
        except Exception:
            log.exception("run %s: %s after success failed", run_id, step.__name__)


def _fail(mine, message: str) -> str:
    mine.update(status=Run.Status.FAILED, finished=timezone.now(), error=message, eta_seconds=None)
    return "failed"


def cache_root() -> Path:
    """Teacher outputs are cached next to the media, so every worker sharing it reuses them."""
    configured = getattr(settings, "DISTILLERY_CACHE_DIR", None)
    return Path(configured) if configured else Path(settings.MEDIA_ROOT) / "cache"


def _distill(run: Run, recorder: RunRecorder, resume: bool) -> dict:
    from distill_core.cache import TeacherCache
    from distill_core.config import DistillConfig
    from distill_core.datasets import open_dataset
    from distill_core.teachers import load_teacher
    from distill_core.train import distill

    config = DistillConfig.from_dict(run.config)
    dataset = open_dataset(run.dataset.path)
    teacher = load_teacher(run.teacher.spec)
    out_dir = run.out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    return distill(
        config,
        dataset,
        teacher,
        out_dir,
        recorder.callbacks(),
        resume=resume,
        run_id=str(run.pk),
        cache=TeacherCache(cache_root(), teacher),
    )


def _store_artifacts(run: Run, report: dict) -> None:
    media = Path(settings.MEDIA_ROOT).resolve()
    out_dir = run.out_dir().resolve()
    Artifact.objects.filter(run=run).delete()  # a resumed attempt replaces an earlier record
    for item in report.get("artifacts", []):
        path = out_dir / item["path"]
        Artifact.objects.create(
            run=run,
            kind=item["kind"],
            path=str(path.relative_to(media)),
            size_bytes=item.get("size_bytes") or path.stat().st_size,
            sha256=item.get("sha256") or sha256_file(path),
            psnr_vs_teacher=item.get("psnr_vs_teacher"),
            ssim_vs_teacher=item.get("ssim_vs_teacher"),
            latency_ms_p50=item.get("latency_ms_p50"),
            extra={k: item[k] for k in ("latency", "parity_max_abs_diff", "extra") if k in item},
        )
    report_path = out_dir / "report.json"
    if report_path.is_file():
        Artifact.objects.create(
            run=run,
            kind=Artifact.Kind.REPORT,
            path=str(report_path.relative_to(media)),
            size_bytes=report_path.stat().st_size,
            sha256=sha256_file(report_path),
        )


def summarize(report: dict) -> dict:
    """The handful of numbers the runs list and charts show, taken from report.json."""
    metrics = report.get("metrics", {})
    student = report.get("student", {})
    teacher = report.get("teacher", {})
    summary = {
        "psnr_vs_teacher": metrics.get("psnr_vs_teacher"),
        "ssim_vs_teacher": metrics.get("ssim_vs_teacher"),
        "identity_psnr": metrics.get("identity_psnr"),
        "identity_ssim": metrics.get("identity_ssim"),
        "student_params": student.get("params"),
        "student_family": student.get("family"),
        "flops_at_256": student.get("flops_at_256"),
        "teacher_latency_ms_p50": teacher.get("latency_ms_p50"),
        "steps_done": report.get("steps_done"),
        "train_seconds": report.get("train_seconds"),
    }
    for item in report.get("artifacts", []):
        kind = item.get("kind", "")
        summary[f"{kind}_size_bytes"] = item.get("size_bytes")
        summary[f"{kind}_psnr"] = item.get("psnr_vs_teacher")
        summary[f"{kind}_latency_ms_p50"] = item.get("latency_ms_p50")
    return summary
