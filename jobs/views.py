"""Pages for runs, datasets and teachers. Function views; the logic lives in services and models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import connection
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from jobs import services
from jobs.forms import DatasetForm, RunForm, TeacherForm, preset_table
from jobs.models import Artifact, Dataset, Run, Teacher
from jobs.views_agents import benchmark_context

RUNS_PER_PAGE = 50


def key_numbers(run: Run) -> dict[str, Any]:
    """The figures the runs list shows: PSNR vs teacher, int8 file size and host latency.

    Reads prefetched artifacts; report summary first, the fp32 artifact as a fallback for PSNR.
    """
    by_kind = {a.kind: a for a in run.artifacts.all()}
    int8 = by_kind.get(Artifact.Kind.ONNX_INT8)
    fp32 = by_kind.get(Artifact.Kind.ONNX_FP32)
    psnr = (run.summary or {}).get("psnr_vs_teacher")
    if psnr is None and fp32 is not None:
        psnr = fp32.psnr_vs_teacher
    return {
        "psnr_db": psnr,
        "int8_kb": int8.size_bytes / 1024 if int8 else None,
        "int8_p50_ms": int8.latency_ms_p50 if int8 else None,
    }


def status_payload(run: Run) -> dict[str, Any]:
    """What the progress poller needs (also served as run_status_json)."""
    return {
        "id": run.pk,
        "status": run.status,
        "active": run.is_active,
        "step": run.step,
        "total": run.total_steps,
        "progress": round(run.progress, 4),
        "eta_seconds": run.eta_seconds,
        "phase": run.phase,
        "cancel_requested": run.cancel_requested,
        "heartbeat": run.heartbeat.isoformat() if run.heartbeat else None,
        "error": run.error,
    }


@login_required
def runs(request: HttpRequest) -> HttpResponse:
    qs = Run.objects.select_related("dataset", "teacher").prefetch_related("artifacts")
    status = request.GET.get("status", "")
    if status in Run.Status.values:
        qs = qs.filter(status=status)
    page = Paginator(qs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    rows = [{"run": r, **key_numbers(r)} for r in page]
    ctx = {"page": page, "rows": rows, "status": status, "statuses": Run.Status.choices}
    return render(request, "jobs/runs.html", ctx)


@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("dataset", "teacher", "cloned_from"), pk=pk)
    artifacts = list(run.artifacts.all())
    ctx = {
        "run": run,
        "artifacts": artifacts,
        "config_json": json.dumps(run.config, indent=2, sort_keys=True),
        "report": run.report or {},
        "clones": run.clones.order_by("-created")[:10],
        "can_cancel": run.is_active and not run.cancel_requested,
        "can_retry": run.status in (Run.Status.FAILED, Run.Status.CANCELLED),
        **benchmark_context(run),
    }
    return render(request, "jobs/run_detail.html", ctx)


@login_required
def run_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = RunForm(request.POST)
        if form.is_valid():
            clone_of = request.POST.get("cloned_from")
            data = {**form.cleaned_data}
            if clone_of and clone_of.isdigit():
                data["cloned_from"] = Run.objects.filter(pk=int(clone_of)).first()
            run = services.launch_run(data, request.user)
            messages.success(request, f"{run} is queued.")
            return redirect("run_detail", pk=run.pk)
        clone = None
    else:
        clone = None
        if request.GET.get("clone", "").isdigit():
            clone = get_object_or_404(Run, pk=int(request.GET["clone"]))
            initial = RunForm.initial_for(clone=services.clone_config(clone))
        else:
            initial = RunForm.initial_for(preset=request.GET.get("preset"))
        form = RunForm(initial=initial)
    ctx = {
        "form": form,
        "clone": clone,
        "cloned_from": request.POST.get("cloned_from") or (clone.pk if clone else ""),
        "presets": {p["name"]: p["config"] for p in preset_table()},
        "no_datasets": not Dataset.objects.filter(status=Dataset.Status.READY).exists(),
        "no_teachers": not Teacher.objects.exists(),
    }
    return render(request, "jobs/run_form.html", ctx)


@login_required
@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=pk)
    try:
        run = services.cancel_run(run)
    except services.RunStateError as exc:
        messages.error(request, str(exc))
    else:
        if run.status == Run.Status.CANCELLED:
            messages.success(request, f"{run} was cancelled before it started.")
        else:
            messages.info(request, f"Stopping {run}: the worker stops within a few seconds.")
    return redirect("run_detail", pk=pk)


@login_required
@require_POST
def run_retry(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=pk)
    try:
        new = services.retry_run(run, request.user)
    except services.RunStateError as exc:
        messages.error(request, str(exc))
        return redirect("run_detail", pk=pk)
    messages.success(request, f"Retrying {run} as run {new.pk}.")
    return redirect("run_detail", pk=new.pk)


@login_required
def run_status_json(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(status_payload(get_object_or_404(Run, pk=pk)))


@login_required
def artifact_download(request: HttpRequest, pk: int) -> FileResponse:
    artifact = get_object_or_404(Artifact.objects.select_related("run"), pk=pk)
    path = _media_file(artifact.path)
    name = f"run{artifact.run_id}-{path.name}"
    response = FileResponse(path.open("rb"), as_attachment=True, filename=name)
    response["X-Checksum-SHA256"] = artifact.sha256
    return response


@login_required
def datasets(request: HttpRequest) -> HttpResponse:
    items = Dataset.objects.order_by("-created")
    return render(request, "jobs/datasets.html", {"datasets": items})


@login_required
def dataset_new(request: HttpRequest) -> HttpResponse:
    form = DatasetForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        dataset = form.save(request.user)
        messages.success(request, f"{dataset} is queued for ingestion.")
        return redirect("dataset_detail", pk=dataset.pk)
    return render(request, "jobs/dataset_form.html", {"form": form})


@login_required
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(Dataset, pk=pk)
    ctx = {
        "dataset": dataset,
        "total": sum(v for v in (dataset.counts or {}).values() if isinstance(v, int)),
        "thumbs": range(len(dataset.thumbnails or [])),
        "runs": dataset.runs.select_related("teacher")[:20],
        "active": dataset.status in (Dataset.Status.PENDING, Dataset.Status.INGESTING),
    }
    return render(request, "jobs/dataset_detail.html", ctx)


@login_required
def dataset_status_json(request: HttpRequest, pk: int) -> JsonResponse:
    d = get_object_or_404(Dataset, pk=pk)
    active = d.status in (Dataset.Status.PENDING, Dataset.Status.INGESTING)
    return JsonResponse(
        {"id": d.pk, "status": d.status, "active": active, "progress": d.progress, "error": d.error}
    )


@login_required
def dataset_thumbnail(request: HttpRequest, pk: int, index: int) -> FileResponse:
    dataset = get_object_or_404(Dataset, pk=pk)
    thumbs = dataset.thumbnails or []
    if index >= len(thumbs):
        raise Http404("No such thumbnail.")
    return FileResponse(_media_file(thumbs[index]).open("rb"))


@login_required
def teachers(request: HttpRequest) -> HttpResponse:
    items = Teacher.objects.order_by("-builtin", "name")
    return render(request, "jobs/teachers.html", {"teachers": items})


@login_required
def teacher_new(request: HttpRequest) -> HttpResponse:
    form = TeacherForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        teacher = form.save()
        messages.success(request, f"Teacher {teacher} passed its probe run and is ready.")
        return redirect("teachers")
    return render(request, "jobs/teacher_form.html", {"form": form})


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for load balancers and docker-compose: the app answers and reaches its database."""
    connection.ensure_connection()
    return HttpResponse("ok\n", content_type="text/plain")


def _media_file(relpath: str) -> Path:
    """A file under MEDIA_ROOT named by a stored relative path; 404 if missing or outside."""
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / relpath).resolve()
    if root not in path.parents or not path.is_file():
        raise Http404("The file is gone from the server (it was deleted or never written).")
    return path
