"""Device benchmark jobs: created per artifact × agent, claimed under a lease, resolved by a post.

A job with `agent` set is meant for that device; one without can be claimed by any agent. A claim
holds a lease; an agent that goes silent past it has its job put back in the queue by the next
claim, so a dead device never strands a job.
"""

from __future__ import annotations

import os
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from jobs.models import Agent, Artifact, BenchmarkJob, BenchmarkResult, Run

ONNX_KINDS = (Artifact.Kind.ONNX_FP32, Artifact.Kind.ONNX_INT8, Artifact.Kind.ONNX_FP16)
# Per-row figures without a column of their own: kept in BenchmarkResult.environment.
EXTRA_KEYS = ("runs", "warmup", "rss_growth_mb")


def setting_int(name: str, default: int, minimum: int = 1) -> int:
    """A whole-number setting from settings.py, else from the environment, else the default."""
    value = getattr(settings, name, None)
    if value is None:
        raw = os.environ.get(name, "").strip()
        try:
            value = int(raw) if raw else default
        except ValueError:
            raise ImproperlyConfigured(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value}: must be at least {minimum}")
    return value


def lease_seconds() -> int:
    """How long a claimed job stays with a silent agent (DISTILLERY_AGENT_LEASE_SECONDS)."""
    return setting_int("DISTILLERY_AGENT_LEASE_SECONDS", 300)


def bench_plan() -> dict:
    """Warm-up and timed runs every job asks for; fewer than 10 warm-ups misleads on CPUs."""
    return {
        "warmup": setting_int("DISTILLERY_AGENT_WARMUP", 10, minimum=10),
        "runs": setting_int("DISTILLERY_AGENT_RUNS", 50),
    }


def default_input_size() -> int:
    return setting_int("DISTILLERY_AGENT_INPUT_SIZE", 256, minimum=8)


def default_threads(agent: Agent | None) -> list[int]:
    """One thread, and all cores up to four: what a single request and a busy device see."""
    cores = (agent.facts or {}).get("cores") if agent else None
    cores = cores if isinstance(cores, int) and cores > 0 else 4
    return sorted({1, min(4, cores)})


def create_jobs_for_artifact(
    artifact: Artifact,
    agents: list[Agent] | None = None,
    *,
    threads: list[int] | None = None,
    input_size: int | None = None,
) -> list[BenchmarkJob]:
    """Queue a benchmark of an ONNX artifact on each agent (default: every enabled agent).

    Idempotent: an agent that already has this artifact queued or claimed gets no second job.
    Call it when a run succeeds; non-ONNX artifacts are ignored.
    """
    if artifact.kind not in ONNX_KINDS:
        return []
    if agents is None:
        agents = list(Agent.objects.filter(enabled=True, revoked=False))
    open_for = set(
        BenchmarkJob.objects.filter(
            artifact=artifact, status__in=(BenchmarkJob.Status.QUEUED, BenchmarkJob.Status.CLAIMED)
        ).values_list("agent_id", flat=True)
    )
    created = []
    for agent in agents:
        if agent.pk in open_for:
            continue
        created.append(
            BenchmarkJob.objects.create(
                artifact=artifact,
                agent=agent,
                threads=threads or default_threads(agent),
                input_size=input_size or default_input_size(),
            )
        )
    return created


def create_jobs_for_run(run: Run, agents: list[Agent] | None = None) -> list[BenchmarkJob]:
    """Queue every ONNX artifact of a run on the given agents (the "benchmark on …" button)."""
    jobs = []
    for artifact in run.artifacts.filter(kind__in=ONNX_KINDS):
        jobs += create_jobs_for_artifact(artifact, agents)
    return jobs


def create_open_job(artifact: Artifact, **kwargs) -> BenchmarkJob:
    """A job any agent may take ("benchmark on any device")."""
    return BenchmarkJob.objects.create(
        artifact=artifact,
        threads=kwargs.get("threads") or default_threads(None),
        input_size=kwargs.get("input_size") or default_input_size(),
    )


def requeue_expired(now=None) -> int:
    """Put claimed jobs whose lease ran out back in the queue; returns how many."""
    now = now or timezone.now()
    return BenchmarkJob.objects.filter(
        status=BenchmarkJob.Status.CLAIMED, lease_expires__lt=now
    ).update(status=BenchmarkJob.Status.QUEUED, claimed_by=None, lease_expires=None)


def forget_agent(agent: Agent) -> None:
    """A revoked agent: drop the jobs meant for it, hand back the open jobs it held."""
    pending = (BenchmarkJob.Status.QUEUED, BenchmarkJob.Status.CLAIMED)
    BenchmarkJob.objects.filter(agent=agent, status__in=pending).delete()
    BenchmarkJob.objects.filter(claimed_by=agent, status=BenchmarkJob.Status.CLAIMED).update(
        status=BenchmarkJob.Status.QUEUED, claimed_by=None, lease_expires=None
    )


def _claimable(agent: Agent):
    return BenchmarkJob.objects.filter(
        Q(agent=agent) | Q(agent__isnull=True), status=BenchmarkJob.Status.QUEUED
    ).order_by("created", "pk")


def claim_next(agent: Agent) -> BenchmarkJob | None:
    """Give the agent its oldest claimable job under a fresh lease, or None; one job, one agent."""
    requeue_expired()
    now = timezone.now()
    lease = {
        "status": BenchmarkJob.Status.CLAIMED,
        "claimed_by": agent,
        "lease_expires": now + timedelta(seconds=lease_seconds()),
    }
    if connection.features.has_select_for_update_skip_locked:
        # PostgreSQL: concurrent claims skip each other's locked rows instead of queueing.
        with transaction.atomic():
            job = _claimable(agent).select_for_update(skip_locked=True).first()
            if job is None:
                return None
            for field, value in lease.items():
                setattr(job, field, value)
            job.save(update_fields=list(lease))
            return job
    # SQLite has no row locks: a conditional UPDATE makes sure only one claimer wins a row.
    for _ in range(10):
        job = _claimable(agent).first()
        if job is None:
            return None
        if BenchmarkJob.objects.filter(pk=job.pk, status=BenchmarkJob.Status.QUEUED).update(
            **lease
        ):
            job.refresh_from_db()
            return job
    return None


def extend_leases(agent: Agent, job_id: int | None = None) -> int:
    """A heartbeat keeps the agent's claimed jobs (or the one named) from expiring."""
    jobs = BenchmarkJob.objects.filter(claimed_by=agent, status=BenchmarkJob.Status.CLAIMED)
    if job_id is not None:
        jobs = jobs.filter(pk=job_id)
    return jobs.update(lease_expires=timezone.now() + timedelta(seconds=lease_seconds()))


class JobStateError(Exception):
    """The job is not this agent's to report on any more (finished, or re-queued and retaken)."""


def _hold(job: BenchmarkJob, agent: Agent) -> BenchmarkJob:
    """Lock the job row and check the agent still holds it."""
    job = BenchmarkJob.objects.select_for_update().get(pk=job.pk)
    if job.claimed_by_id != agent.pk or job.status != BenchmarkJob.Status.CLAIMED:
        raise JobStateError(
            f"job {job.pk} is {job.status} and no longer held by this agent: its lease ran out "
            "and it went back to the queue, or it was already reported"
        )
    return job


def record_result(job: BenchmarkJob, agent: Agent, payload: dict) -> list[BenchmarkResult]:
    """Store a validated result post (see api_schema.RESULT) and mark the job done."""
    environment = payload.get("environment") or {}
    psnr = payload.get("psnr_vs_teacher")
    with transaction.atomic():
        job = _hold(job, agent)
        rows = []
        for item in payload["results"]:
            extra = {k: item[k] for k in EXTRA_KEYS if item.get(k) is not None}
            rows.append(
                BenchmarkResult.objects.create(
                    job=job,
                    agent=agent,
                    artifact_id=job.artifact_id,
                    threads=item["threads"],
                    input_size=item["input_size"],
                    p50_ms=item["p50_ms"],
                    p90_ms=item["p90_ms"],
                    p99_ms=item["p99_ms"],
                    mean_ms=item.get("mean_ms"),
                    min_ms=item.get("min_ms"),
                    max_ms=item.get("max_ms"),
                    load_ms=item.get("load_ms"),
                    peak_rss_mb=item.get("peak_rss_mb"),
                    psnr_vs_teacher=psnr,
                    environment={**environment, **extra},
                )
            )
        job.status = BenchmarkJob.Status.DONE
        job.finished = timezone.now()
        job.lease_expires = None
        job.error = ""
        job.save(update_fields=["status", "finished", "lease_expires", "error"])
    return rows


def record_failure(job: BenchmarkJob, agent: Agent, reason: str, detail: str) -> BenchmarkJob:
    """Mark the job failed with the agent's reason; the Agents page shows it as the last error."""
    message = f"{reason}: {detail}".strip().rstrip(":")
    with transaction.atomic():
        job = _hold(job, agent)
        job.status = BenchmarkJob.Status.FAILED
        job.finished = timezone.now()
        job.lease_expires = None
        job.error = message
        job.save(update_fields=["status", "finished", "lease_expires", "error"])
        Agent.objects.filter(pk=agent.pk).update(last_error=f"job {job.pk}: {message}"[:5000])
    return job


def release(job: BenchmarkJob, agent: Agent) -> BenchmarkJob:
    """The agent is stopping: put its job back in the queue at once."""
    with transaction.atomic():
        job = _hold(job, agent)
        job.status = BenchmarkJob.Status.QUEUED
        job.claimed_by = None
        job.lease_expires = None
        job.save(update_fields=["status", "claimed_by", "lease_expires"])
    return job


def results_for_run(run: Run) -> list[BenchmarkResult]:
    """Every device measurement of a run's artifacts, grouped by device then variant."""
    return list(
        BenchmarkResult.objects.filter(artifact__run=run)
        .select_related("agent", "artifact")
        .order_by("agent__name", "artifact__kind", "input_size", "threads", "-created")
    )


def open_jobs_for_run(run: Run) -> list[BenchmarkJob]:
    """Queued, claimed and failed jobs of a run, for the status line under the table."""
    return list(
        BenchmarkJob.objects.filter(artifact__run=run)
        .exclude(status=BenchmarkJob.Status.DONE)
        .select_related("agent", "claimed_by", "artifact")
        .order_by("-created")
    )
