"""The Celery task bodies, called directly: ingest, train (success, cancel, failure, resume) and the
stale-run check. Real database, real distill_core on tiny images, real Redis for sent messages."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone

from jobs.heartbeat import claim_run, requeue_stale_runs
from jobs.models import Artifact, Dataset, MetricPoint, Run, Teacher
from jobs.tasks import _send_run, ingest_dataset, train_run

# The `tiny` preset (32 px, a ~1.7 K-parameter student), validated every 3 steps.
TINY = ["eval_every=3", "latency_runs=2"]


def tiny_config(steps: int = 6) -> dict:
    from distill_core.presets import get_preset

    return get_preset("tiny").with_overrides([*TINY, f"steps={steps}"]).to_dict()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """14 demo photos of 48 px: the hash split gives 8 train, 5 val, 1 test."""
    from distill_core.demo_data import build_demo_data

    folder = tmp_path / "images"
    build_demo_data(folder, count=14, size=48)
    return folder


@pytest.fixture
def ready_dataset(transactional_db, images: Path) -> Dataset:
    return Dataset.objects.create(
        name="tiny photos", path=str(images), status=Dataset.Status.READY, progress=1.0
    )


@pytest.fixture
def stylization(transactional_db) -> Teacher:
    return Teacher.objects.create(name="OpenCV stylization", spec="opencv:stylization")


@pytest.fixture
def new_run(ready_dataset, stylization):
    def make(steps: int = 6, **fields) -> Run:
        config = tiny_config(steps)
        return Run.objects.create(
            name="tiny",
            dataset=ready_dataset,
            teacher=stylization,
            preset="tiny",
            config=config,
            total_steps=steps,
            **fields,
        )

    return make


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def steps_of(run: Run, name: str = "total") -> list[int]:
    return list(
        MetricPoint.objects.filter(run=run, name=name)
        .order_by("step")
        .values_list("step", flat=True)
    )


def sent_run_ids(client, prefix: str, queue: str = "gpu") -> list[int]:
    """Run ids of the messages waiting in a Redis queue (the body is [args, kwargs, embed])."""
    ids = []
    for raw in client.lrange(f"{prefix}{queue}", 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        ids.append(args[0])
    return ids


def train_in_thread(run_id: int) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def body() -> None:
        try:
            result["state"] = train_run(run_id)
        finally:
            connections.close_all()

    thread = threading.Thread(target=body)
    thread.start()
    return thread, result


# -- ingest ----------------------------------------------------------------------------------
def test_ingest_records_splits_thumbnails_and_skipped_files(transactional_db, images, media_root):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    dataset = Dataset.objects.create(name="photos", path=str(images))

    assert ingest_dataset(dataset.pk) == "ready"

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY
    assert dataset.progress == 1.0
    assert dataset.counts == {"train": 8, "val": 5, "test": 1}
    assert [s["path"] for s in dataset.skipped] == ["broken.png"]
    assert dataset.skipped[0]["reason"]
    assert len(dataset.thumbnails) == 12
    assert all((media_root / t).is_file() for t in dataset.thumbnails)


def test_ingest_of_a_missing_folder_fails_with_the_reason(transactional_db, tmp_path):
    dataset = Dataset.objects.create(name="gone", path=str(tmp_path / "nowhere"))

    assert ingest_dataset(dataset.pk) == "failed"

    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert "nowhere does not exist" in dataset.error


# -- training --------------------------------------------------------------------------------
def test_a_tiny_run_succeeds_with_three_onnx_artifacts_and_its_loss_history(new_run, media_root):
    run = new_run(steps=6)

    assert train_run(run.pk) == "succeeded"

    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert (run.step, run.total_steps, run.progress) == (6, 6, 1.0)
    assert run.attempts == 1 and run.worker and run.started and run.finished
    onnx = {a.kind: a for a in run.artifacts.filter(kind__startswith="onnx_")}
    assert set(onnx) == {"onnx_fp32", "onnx_int8", "onnx_fp16"}
    for artifact in onnx.values():
        path = media_root / artifact.path
        assert artifact.path.startswith(f"runs/{run.pk}/")
        assert artifact.sha256 == sha256_of(path)
        assert artifact.size_bytes == path.stat().st_size
        assert artifact.psnr_vs_teacher is not None
    assert run.artifacts.filter(kind=Artifact.Kind.REPORT).exists()
    assert run.report["run_id"] == str(run.pk)
    assert run.summary["psnr_vs_teacher"] == run.report["metrics"]["psnr_vs_teacher"]
    assert steps_of(run) == [1, 2, 3, 4, 5, 6]
    assert steps_of(run, "lr") == [1, 2, 3, 4, 5, 6]
    assert steps_of(run, "val_psnr") == [3, 6]


def test_a_succeeded_run_queues_a_benchmark_per_onnx_file_for_every_enabled_agent(new_run):
    from jobs.models import Agent, BenchmarkJob

    pi, _ = Agent.issue("kitchen-pi")
    Agent.issue("switched-off", enabled=False)
    run = new_run(steps=2)

    assert train_run(run.pk) == "succeeded"

    jobs = BenchmarkJob.objects.filter(artifact__run=run)
    assert sorted(j.artifact.kind for j in jobs) == ["onnx_fp16", "onnx_fp32", "onnx_int8"]
    assert {j.agent_id for j in jobs} == {pi.pk}
    # The thinned curves were saved when the run ended, not on the first page view.
    assert list((run.out_dir() / "series").glob("*.bin"))


def test_a_queued_run_cancelled_before_a_worker_takes_it_never_starts(new_run):
    run = new_run(cancel_requested=True)

    assert train_run(run.pk) == "skipped"

    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert run.attempts == 0 and run.started is None
    assert not run.out_dir().exists()


def test_a_running_run_stops_within_seconds_when_cancel_is_requested(new_run):
    run = new_run(steps=2000)
    thread, result = train_in_thread(run.pk)
    deadline = time.monotonic() + 120
    while Run.objects.get(pk=run.pk).step < 2 and time.monotonic() < deadline:
        time.sleep(0.2)

    Run.objects.filter(pk=run.pk).update(cancel_requested=True)
    asked = time.monotonic()
    thread.join(timeout=60)

    assert result["state"] == "cancelled"
    assert time.monotonic() - asked < 10
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert 2 <= run.step < 2000
    assert not run.artifacts.exists()


def test_a_run_with_a_missing_dataset_fails_with_a_message_naming_it(new_run, ready_dataset):
    run = new_run()
    for image in Path(ready_dataset.path).iterdir():
        image.unlink()
    Path(ready_dataset.path).rmdir()

    assert train_run(run.pk) == "failed"

    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert ready_dataset.path in run.error and "does not exist" in run.error


def test_a_run_another_worker_is_running_is_left_alone(new_run):
    beat = timezone.now()
    run = new_run(status=Run.Status.RUNNING, heartbeat=beat, worker="gpu@elsewhere", attempts=1)

    assert train_run(run.pk) == "skipped"

    run.refresh_from_db()
    assert (run.status, run.worker, run.attempts, run.heartbeat) == (
        Run.Status.RUNNING,
        "gpu@elsewhere",
        1,
        beat,
    )


def test_a_run_whose_worker_died_resumes_from_its_checkpoint_without_repeating_steps(new_run):
    run = new_run(steps=2000)
    thread, result = train_in_thread(run.pk)
    deadline = time.monotonic() + 120
    while Run.objects.get(pk=run.pk).step < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    Run.objects.filter(pk=run.pk).update(cancel_requested=True)
    thread.join(timeout=60)
    checkpoint = run.out_dir() / "checkpoints" / "last.pt"
    assert checkpoint.is_file()
    # Now make it look like the worker died mid-run instead, with a shorter run to finish.
    stopped_at = Run.objects.get(pk=run.pk).step
    config = {**run.config, "steps": stopped_at + 3}
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.RUNNING,
        cancel_requested=False,
        heartbeat=timezone.now() - timedelta(hours=1),
        config=config,
        total_steps=stopped_at + 3,
    )
    _rewrite_checkpoint_config(checkpoint, config)

    assert train_run(run.pk) == "succeeded"

    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert run.attempts == 2
    assert run.report["steps_done"] == stopped_at + 3
    assert steps_of(run) == list(range(1, stopped_at + 4))


def _rewrite_checkpoint_config(path: Path, config: dict) -> None:
    """Give a checkpoint the config of the shortened run (as if it had been started that way)."""
    import torch

    from distill_core.config import DistillConfig

    state = torch.load(path, map_location="cpu", weights_only=True)
    state["config"] = config
    state["config_hash"] = DistillConfig.from_dict(config).config_hash()
    torch.save(state, path)


# -- claiming and the stale-run check --------------------------------------------------------
def test_a_worker_takes_a_run_whose_heartbeat_went_stale(new_run):
    run = new_run(
        status=Run.Status.RUNNING,
        heartbeat=timezone.now() - timedelta(hours=1),
        worker="gpu@dead",
        attempts=1,
    )

    claimed = claim_run(run.pk, "gpu@alive")

    assert claimed is not None
    assert (claimed.status, claimed.worker, claimed.attempts) == (
        Run.Status.RUNNING,
        "gpu@alive",
        2,
    )


def test_the_checker_requeues_a_run_whose_worker_stopped_beating(new_run, broker):
    client, prefix = broker
    dead = new_run(
        status=Run.Status.RUNNING, heartbeat=timezone.now() - timedelta(hours=1), attempts=1
    )
    alive = new_run(status=Run.Status.RUNNING, heartbeat=timezone.now(), attempts=1)

    assert requeue_stale_runs() == [dead.pk]

    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == Run.Status.QUEUED
    assert alive.status == Run.Status.RUNNING
    assert sent_run_ids(client, prefix) == [dead.pk]


def test_the_checker_resends_a_queued_run_the_broker_lost_but_not_one_still_waiting(
    new_run, broker
):
    client, prefix = broker
    long_ago = timezone.now() - timedelta(hours=1)
    lost = new_run(heartbeat=long_ago)

    assert requeue_stale_runs() == [lost.pk]
    assert sent_run_ids(client, prefix) == [lost.pk]
    # Its message now waits in the queue: the next check must not send it again.
    Run.objects.filter(pk=lost.pk).update(heartbeat=long_ago)
    assert requeue_stale_runs() == []
    assert sent_run_ids(client, prefix) == [lost.pk]


def test_the_checker_fails_a_run_whose_worker_died_too_often(new_run, broker):
    run = new_run(
        status=Run.Status.RUNNING,
        heartbeat=timezone.now() - timedelta(hours=1),
        attempts=3,
        worker="gpu@oom",
    )

    assert requeue_stale_runs() == []

    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "stopped responding 3 times" in run.error and "gpu@oom" in run.error


def test_the_checker_finishes_cancelling_a_run_whose_worker_died(new_run, broker):
    run = new_run(
        status=Run.Status.RUNNING,
        heartbeat=timezone.now() - timedelta(hours=1),
        attempts=1,
        cancel_requested=True,
    )

    assert requeue_stale_runs() == []

    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED


def test_a_run_stays_queued_with_the_reason_when_the_broker_is_unreachable(new_run, broker):
    from webapp.celery import app

    run = new_run()
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    app._pool = None
    app.amqp._producer_pool = None

    assert _send_run(run.pk) is False

    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED
    assert run.error.startswith("broker unreachable:")
    assert "stays queued" in run.error


def test_a_run_preparing_teacher_outputs_shows_how_far_it_got_then_clears_it(new_run):
    from distill_core.train import Progress
    from jobs.heartbeat import Heartbeat
    from jobs.recorder import RunRecorder

    run = new_run(steps=4)
    recorder = RunRecorder(run, Heartbeat(run.pk, run.attempts), flush_seconds=0)

    recorder.on_progress(Progress(12, 40, {}, 0.0, 1.0, 3.0, phase="preparing"))
    run.refresh_from_db()
    assert run.phase == "preparing teacher outputs 12/40" and run.step == 0

    recorder.on_progress(Progress(1, 4, {"total": 0.5}, 1e-3, 1.0, 3.0))
    run.refresh_from_db()
    assert run.phase == "" and run.step == 1
