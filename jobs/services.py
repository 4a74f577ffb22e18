"""What the pages do to runs: launch, cancel, retry, clone. Views stay thin; tasks do the work.

Every launch commits the Run first and sends its id to the broker after the commit (jobs.tasks
defers the send with on_commit), so a worker never looks for a row it cannot see yet.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from jobs.models import Dataset, Run, Teacher

log = logging.getLogger(__name__)

# Config keys the launch form shows as their own fields; the rest go in "extra settings".
FORM_KEYS = (
    "preset",
    "student_family",
    "student",
    "losses",
    "steps",
    "lr",
    "image_size",
    "batch_size",
    "seed",
)


class RunStateError(ValueError):
    """The run is not in a state that allows this action."""


def launch_run(data: dict[str, Any], user) -> Run:
    """Create a queued Run from the launch form's cleaned data and enqueue it after commit.

    `data` holds dataset, teacher, preset, name and `config` (a validated DistillConfig).
    """
    config = data["config"]
    dataset: Dataset = data["dataset"]
    name = data.get("name") or f"{config.preset} · {dataset.name}"
    with transaction.atomic():
        run = Run.objects.create(
            name=name,
            dataset=dataset,
            teacher=data["teacher"],
            preset=config.preset,
            config=config.to_dict(),
            config_hash=config.config_hash(),
            total_steps=config.steps,
            created_by=user if getattr(user, "is_authenticated", False) else None,
            cloned_from=data.get("cloned_from"),
        )
        _enqueue(run.pk)
    return run


def cancel_run(run: Run) -> Run:
    """Stop a run: a queued one is cancelled now, a running one is asked to stop.

    The worker checks `cancel_requested` every step and marks the run cancelled within seconds.
    """
    now = timezone.now()
    updated = Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
        status=Run.Status.CANCELLED, cancel_requested=True, finished=now, eta_seconds=None
    )
    if not updated:
        updated = Run.objects.filter(
            pk=run.pk, status__in=(Run.Status.RUNNING, Run.Status.EXPORTING)
        ).update(cancel_requested=True)
    run.refresh_from_db()
    if not updated:
        raise RunStateError(f"{run} has already {run.status}: there is nothing to cancel.")
    return run


def retry_run(run: Run, user=None) -> Run:
    """Start a new run with the same dataset, teacher and config; the old one stays as it was."""
    if run.status not in (Run.Status.FAILED, Run.Status.CANCELLED):
        raise RunStateError(
            f"{run} is {run.status}: only failed or cancelled runs can be retried. "
            "Use Clone to start a variant of it."
        )
    with transaction.atomic():
        new = Run.objects.create(
            name=run.name,
            dataset=run.dataset,
            teacher=run.teacher,
            preset=run.preset,
            config=run.config,
            config_hash=run.config_hash,
            total_steps=run.config.get("steps", run.total_steps),
            cloned_from=run,
            created_by=user if getattr(user, "is_authenticated", False) else run.created_by,
        )
        _enqueue(new.pk)
    return new


def clone_config(run: Run) -> dict[str, Any]:
    """Initial values for the launch form that reproduce `run`'s config exactly.

    Keys without a form field of their own, whose value differs from the preset's, are returned
    under "extra" so nothing is lost on the way through the form.
    """
    from distill_core.config import ConfigError, DistillConfig
    from distill_core.presets import get_preset

    config = dict(run.config)
    preset = run.preset or config.get("preset", "")
    try:
        base = get_preset(preset).to_dict()
    except (ConfigError, KeyError, ValueError):
        # The preset was renamed or removed since: start from the dataclass defaults.
        base = DistillConfig().to_dict()
        preset = ""
    extra = {
        key: value
        for key, value in config.items()
        if key not in FORM_KEYS and base.get(key, object()) != value
    }
    return {
        "name": f"{run.name} (clone)" if run.name else "",
        "dataset": run.dataset_id,
        "teacher": run.teacher_id,
        "preset": preset,
        "student_family": config.get("student_family", base.get("student_family")),
        "student": config.get("student", {}),
        "losses": config.get("losses", {}),
        "steps": config.get("steps"),
        "lr": config.get("lr"),
        "image_size": config.get("image_size"),
        "batch_size": config.get("batch_size"),
        "seed": config.get("seed"),
        "extra": extra,
    }


def _enqueue(run_id: int) -> None:
    """Send the run id to the broker once the transaction commits (jobs.tasks handles outages)."""
    from jobs.tasks import enqueue_run  # tasks import distill_core: keep page loads light

    enqueue_run(run_id)


def enqueue_ingest(dataset: Dataset) -> None:
    """Queue ingestion of a dataset once the current transaction commits."""
    from jobs.tasks import enqueue_ingest as send_ingest

    send_ingest(dataset.pk)


def probe_teacher(spec: str):
    """Load a teacher from its spec; returns distill_core's Teacher.

    distill_core loads model files and runs them once on a small probe image, so a model that
    cannot serve as an image-to-image teacher is refused here with a TeacherError saying why.
    """
    from distill_core.teachers import load_teacher

    return load_teacher(spec)


def create_teacher(
    name: str, loaded=None, *, spec: str, description: str = "", builtin: bool = False
) -> Teacher:
    """Record a teacher; `loaded` (from probe_teacher) supplies its size, params and fingerprint."""
    return Teacher.objects.create(
        name=name,
        spec=getattr(loaded, "spec", None) or spec,
        size_bytes=getattr(loaded, "size_bytes", None),
        params=getattr(loaded, "params", None),
        fingerprint=getattr(loaded, "fingerprint", "") or "",
        description=description,
        builtin=builtin,
    )


def store_upload(upload, subdir: str, suffix: str) -> Path:
    """Write an uploaded file under MEDIA_ROOT/<subdir>/ with a unique, safe name."""
    stem = slugify(Path(upload.name).stem)[:60] or "upload"
    folder = Path(settings.MEDIA_ROOT) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{uuid.uuid4().hex[:12]}-{stem}{suffix}"
    with dest.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return dest
