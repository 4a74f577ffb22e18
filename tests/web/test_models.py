"""Model behaviour the pages rely on, and the services that move runs along."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import services
from jobs.models import Run


def test_a_new_run_is_queued_and_active(make_run):
    run = make_run()
    assert run.status == Run.Status.QUEUED
    assert run.is_active


def test_finished_runs_are_not_active(make_run):
    for status in (Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED):
        assert not make_run(status).is_active


def test_a_runs_files_live_under_media_root(make_run, media_root):
    run = make_run()
    assert run.out_dir() == Path(media_root) / "runs" / str(run.pk)


def test_runs_are_listed_newest_first(make_run):
    first, second = make_run(), make_run()
    assert list(Run.objects.all()) == [second, first]


def test_cancelling_a_finished_run_says_there_is_nothing_to_cancel(make_run):
    run = make_run(Run.Status.SUCCEEDED)
    with pytest.raises(services.RunStateError, match="nothing to cancel"):
        services.cancel_run(run)


def test_an_exporting_run_is_asked_to_stop(make_run):
    run = services.cancel_run(make_run(Run.Status.EXPORTING))
    assert run.cancel_requested and run.status == Run.Status.EXPORTING


def test_a_running_run_cannot_be_retried(make_run):
    with pytest.raises(services.RunStateError, match="only failed or cancelled"):
        services.retry_run(make_run(Run.Status.RUNNING))


def test_retry_keeps_dataset_teacher_and_preset(make_run, alice):
    old = make_run(Run.Status.CANCELLED)
    new = services.retry_run(old, alice)
    assert (new.dataset, new.teacher, new.preset, new.config_hash) == (
        old.dataset,
        old.teacher,
        old.preset,
        old.config_hash,
    )
    assert new.total_steps == old.config["steps"]


def test_a_clone_of_a_run_with_a_removed_preset_starts_from_defaults(make_run):
    run = make_run(Run.Status.FAILED, preset="retired")
    initial = services.clone_config(run)
    assert initial["preset"] == ""
    assert initial["steps"] == run.config["steps"]
