"""The Agents page (devices, enrollment tokens) and the run page's "benchmark on …" action."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from jobs import benchmarks
from jobs.models import Agent, Artifact, BenchmarkJob, EnrollmentToken, Run

MAX_TOKEN_HOURS = 24 * 30


def online_seconds() -> int:
    """An agent that called in within this many seconds is shown online."""
    return benchmarks.setting_int("DISTILLERY_AGENT_ONLINE_SECONDS", 90)


def agent_rows() -> list[dict]:
    """Every agent with its online state, jobs done and the job it holds now."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=online_seconds())
    agents = Agent.objects.annotate(
        jobs_done=Count("claimed_jobs", filter=Q(claimed_jobs__status=BenchmarkJob.Status.DONE)),
        jobs_failed=Count(
            "claimed_jobs", filter=Q(claimed_jobs__status=BenchmarkJob.Status.FAILED)
        ),
    ).order_by("revoked", "name")
    rows = []
    for agent in agents:
        current = agent.claimed_jobs.filter(status=BenchmarkJob.Status.CLAIMED).first()
        rows.append(
            {
                "agent": agent,
                "online": bool(agent.last_seen and agent.last_seen >= cutoff),
                "age_s": (now - agent.last_seen).total_seconds() if agent.last_seen else None,
                "current": current,
                "queued": agent.assigned_jobs.filter(status=BenchmarkJob.Status.QUEUED).count(),
            }
        )
    return rows


def _page(request: HttpRequest, new_token: str = "", new_token_record=None) -> HttpResponse:
    now = timezone.now()
    tokens = EnrollmentToken.objects.order_by("-created")[:50]
    ctx = {
        "rows": agent_rows(),
        "tokens": [
            {"token": t, "active": not t.revoked and t.expires > now, "expired": t.expires <= now}
            for t in tokens
        ],
        "new_token": new_token,
        "new_token_record": new_token_record,
        "online_seconds": online_seconds(),
        "server_url": request.build_absolute_uri("/").rstrip("/"),
    }
    return render(request, "jobs/agents.html", ctx)


@login_required
def agents(request: HttpRequest) -> HttpResponse:
    return _page(request)


@login_required
@require_POST
def enrollment_token_create(request: HttpRequest) -> HttpResponse:
    """Issue an enrollment token and show it on this response only (it is stored hashed)."""
    try:
        hours = float(request.POST.get("hours") or 24)
    except ValueError:
        hours = 0
    if not 0 < hours <= MAX_TOKEN_HOURS:
        messages.error(request, f"Expiry must be between 1 and {MAX_TOKEN_HOURS} hours.")
        return redirect("agents")
    record, plain = EnrollmentToken.issue(name=request.POST.get("name", "")[:200], hours=hours)
    # Rendered, not redirected: the plain token must not sit in a cookie or session.
    return _page(request, new_token=plain, new_token_record=record)


@login_required
@require_POST
def enrollment_token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(EnrollmentToken, pk=pk)
    token.revoked = True
    token.save(update_fields=["revoked"])
    messages.success(request, f"Enrollment token {token.name or token.pk} revoked.")
    return redirect("agents")


@login_required
@require_POST
def agent_update(request: HttpRequest, pk: int) -> HttpResponse:
    """Enable or disable automatic benchmarks on an agent, or revoke its token for good."""
    agent = get_object_or_404(Agent, pk=pk)
    action = request.POST.get("action")
    if action in ("enable", "disable"):
        agent.enabled = action == "enable"
        agent.save(update_fields=["enabled"])
        state = "benchmarks every new model" if agent.enabled else "takes only jobs sent to it"
        messages.success(request, f"{agent} now {state}.")
    elif action == "revoke":
        agent.revoked = True
        agent.enabled = False
        agent.save(update_fields=["revoked", "enabled"])
        benchmarks.forget_agent(agent)
        messages.success(
            request, f"{agent}'s token is revoked; register the device again to reuse it."
        )
    else:
        messages.error(request, "Unknown action: use enable, disable or revoke.")
    return redirect("agents")


@login_required
@require_POST
def run_benchmark(request: HttpRequest, pk: int) -> HttpResponse:
    """ "Benchmark on …": queue the run's ONNX models on one agent, all agents, or any agent."""
    run = get_object_or_404(Run, pk=pk)
    target = request.POST.get("agent", "")
    artifacts = list(run.artifacts.filter(kind__in=benchmarks.ONNX_KINDS))
    if not artifacts:
        messages.error(
            request, f"{run} has no ONNX models yet; benchmark it once it has succeeded."
        )
        return redirect("run_detail", pk=run.pk)
    if target == "any":
        jobs = [benchmarks.create_open_job(a) for a in artifacts]
        where = "the first free device"
    else:
        usable = Agent.objects.filter(revoked=False)
        if target == "all":
            chosen = list(usable.filter(enabled=True))
        elif target.isdigit():
            chosen = list(usable.filter(pk=int(target)))
        else:
            chosen = []
        if not chosen:
            messages.error(request, "Pick a registered device (see the Agents page to add one).")
            return redirect("run_detail", pk=run.pk)
        jobs = benchmarks.create_jobs_for_run(run, chosen)
        where = ", ".join(a.name for a in chosen)
    if jobs:
        messages.success(request, f"Queued {len(jobs)} benchmark job(s) on {where}.")
    else:
        messages.info(request, f"Benchmarks of {run} are already queued on {where}.")
    return redirect("run_detail", pk=run.pk)


def benchmark_context(run: Run) -> dict:
    """What templates/jobs/_benchmarks.html needs: latest result rows, open jobs, agents."""
    seen = set()
    rows = []
    for result in benchmarks.results_for_run(run):
        key = (result.agent_id, result.artifact_id, result.threads, result.input_size)
        if key in seen:  # keep the newest measurement of each combination
            continue
        seen.add(key)
        rows.append(result)
    return {
        "run": run,
        "bench_rows": rows,
        "bench_jobs": benchmarks.open_jobs_for_run(run),
        "bench_agents": list(Agent.objects.filter(revoked=False).order_by("name")),
        "has_onnx": run.artifacts.filter(kind__in=benchmarks.ONNX_KINDS).exists(),
        "artifact_kinds": dict(Artifact.Kind.choices),
    }
