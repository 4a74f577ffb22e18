"""The management commands: seed_demo (idempotent demo set-up) and check_stale_runs."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from django.contrib.auth import authenticate
from django.core.management import call_command
from django.utils import timezone

from jobs.models import Dataset, Run, StudentConfig, Teacher


def seed(**options) -> str:
    out = io.StringIO()
    call_command("seed_demo", count=14, size=48, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def test_seed_demo_builds_the_demo_once_and_a_second_run_changes_nothing(
    db, media_root: Path, monkeypatch, broker
):
    monkeypatch.setenv("DISTILLERY_DEMO_PASSWORD", "demo-pass-1234")

    seed(launch_run=3)
    first = (
        list(Dataset.objects.values_list("pk", "status", "counts")),
        list(Teacher.objects.values_list("pk", "spec")),
        list(StudentConfig.objects.values_list("pk", "name")),
        list(Run.objects.values_list("pk", "name", "total_steps")),
    )
    seed(launch_run=3)

    (dataset,) = Dataset.objects.all()
    assert dataset.status == Dataset.Status.READY
    assert dataset.counts == {"train": 8, "val": 5, "test": 1}
    assert Path(dataset.path) == media_root / "datasets" / "demo"
    specs = set(Teacher.objects.values_list("spec", flat=True))
    assert {"opencv:stylization", "opencv:detail_enhance"} <= specs
    assert {"seed", "default", "tiny"} <= set(StudentConfig.objects.values_list("name", flat=True))
    (run,) = Run.objects.all()
    assert (run.name, run.preset, run.total_steps) == ("demo run", "default", 3)
    assert authenticate(username="demo", password="demo-pass-1234") is not None
    assert first == (
        list(Dataset.objects.values_list("pk", "status", "counts")),
        list(Teacher.objects.values_list("pk", "spec")),
        list(StudentConfig.objects.values_list("pk", "name")),
        list(Run.objects.values_list("pk", "name", "total_steps")),
    )


def test_seed_demo_prints_a_generated_password_and_keeps_it_for_next_time(
    db, tmp_path: Path, monkeypatch
):
    monkeypatch.delenv("DISTILLERY_DEMO_PASSWORD", raising=False)
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    kept = tmp_path / "demo-password"

    printed = seed(password_file=kept)

    password = kept.read_text().strip()
    assert f"password: {password}" in printed
    assert kept.stat().st_mode & 0o777 == 0o600
    assert authenticate(username="demo", password=password) is not None
    assert f"password: {password}" in seed(password_file=kept)


def test_check_stale_runs_once_requeues_a_dead_workers_run(make_run, broker):
    dead = make_run(
        status=Run.Status.RUNNING, heartbeat=timezone.now() - timedelta(hours=1), attempts=1
    )
    out = io.StringIO()

    call_command("check_stale_runs", "--once", stdout=out)

    dead.refresh_from_db()
    assert dead.status == Run.Status.QUEUED
    assert f"re-queued runs {dead.pk}" in out.getvalue()
