"""Chart pages and the JSON behind them: run curves, sample viewer, comparison, trade-offs."""

from __future__ import annotations

import json
from html import escape

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET

from jobs import charts, samples, series, tradeoff_points
from jobs.models import Run

# The comparison page lists this many recent runs to pick from (the runs list can link more).
PICKER_LIMIT = 500


class BadParameter(ValueError):
    """A query parameter the user (or a link) got wrong; answered with a 400 naming it."""


def _int_param(request: HttpRequest, name: str, default: int | None = None) -> int | None:
    raw = request.GET.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadParameter(f"{name}={raw!r} is not a whole number") from None


def _run_ids(request: HttpRequest) -> list[int]:
    """Run ids from ?runs=1,2 or ?runs=1&runs=2 (the runs list's checkboxes), order kept."""
    ids: list[int] = []
    for raw in request.GET.getlist("runs"):
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise BadParameter(f"runs: {part!r} is not a run number")
            if int(part) not in ids:
                ids.append(int(part))
    return ids


def _bad_request(exc: Exception) -> JsonResponse:
    return JsonResponse({"error": str(exc)}, status=400)


# ---------------------------------------------------------------- run page curves


@login_required
@require_GET
def run_series_json(request: HttpRequest, pk: int) -> JsonResponse:
    """Downsampled series of one run; with ?since=<step>, only the points after that step."""
    run = get_object_or_404(Run.objects.only("id", "status", "finished"), pk=pk)
    try:
        since = _int_param(request, "since")
        max_points = _int_param(request, "max_points", series.MAX_POINTS)
    except BadParameter as exc:
        return _bad_request(exc)
    max_points = max(10, min(series.MAX_POINTS, max_points))
    data = series.run_series(run, since, max_points)
    body = {
        "run": run.pk,
        "status": run.status,
        "active": run.is_active,
        "since": since,
        "last_step": series.last_step(data, since),
        "max_points": max_points,
        "series": {name: s.to_json() for name, s in data.items()},
    }
    if since is None:
        # Styling travels with full fetches only; the page keeps it for incremental ones.
        body["styles"] = charts.series_styles(data)
        body["layout"] = charts.loss_layout()
    return JsonResponse(body)


# ---------------------------------------------------------------- sample viewer


def _sample_url(run: Run):
    def url_for(index: int, part: str) -> str:
        return reverse("run_sample_image", args=[run.pk, index, part])

    return url_for


@login_required
@require_GET
def run_samples(request: HttpRequest, pk: int) -> HttpResponse:
    """Test images side by side: input | teacher | students, swipe overlay, difference map."""
    run = get_object_or_404(Run.objects.select_related("dataset", "teacher"), pk=pk)
    listing = samples.sample_listing(run, _sample_url(run))
    return render(request, "jobs/samples.html", {"run": run, "listing": listing})


@login_required
@require_GET
def run_samples_json(request: HttpRequest, pk: int) -> JsonResponse:
    """The viewer's data: per image its panel URLs, name and per-variant PSNR/SSIM."""
    run = get_object_or_404(Run, pk=pk)
    return JsonResponse(samples.sample_listing(run, _sample_url(run)))


@login_required
@require_GET
def run_sample_image(request: HttpRequest, pk: int, index: int, part: str) -> HttpResponse:
    """One panel as PNG; difference maps are made on request from the stored images."""
    run = get_object_or_404(Run.objects.only("id", "status"), pk=pk)
    try:
        png = samples.part_png(run, index, part)
    except samples.SampleError as exc:
        raise Http404(str(exc)) from None
    if isinstance(png, bytes):
        response = HttpResponse(png, content_type="image/png")
    else:
        response = FileResponse(png.open("rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=300"
    return response


# ---------------------------------------------------------------- comparison


@login_required
@require_GET
def compare(request: HttpRequest) -> HttpResponse:
    """Pick runs, then: overlaid curves, config diff, best/final metrics, samples side by side."""
    try:
        ids = _run_ids(request)
    except BadParameter as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    # Only what the page shows: a run's report (per-image scores) can weigh more than the page.
    fields = ("id", "name", "status", "finished", "dataset_id", "teacher_id", "config")
    by_id = Run.objects.only(*fields).in_bulk(ids)
    runs = [by_id[i] for i in ids if i in by_id]
    missing = [i for i in ids if i not in by_id]
    picker = _picker_rows({r.pk for r in runs})
    context = {
        "picker": picker,
        "picker_count": picker.count("<tr>"),
        "picker_limit": PICKER_LIMIT,
        "selected_ids": [r.pk for r in runs],
        "runs": runs,
        "missing": missing,
    }
    if runs:
        context.update(_comparison(runs))
    return render(request, "jobs/compare.html", context)


def _picker_rows(selected: set[int]) -> str:
    """The run picker's table rows as HTML, made here with plain escaping: 500 rows through the
    template engine cost more than the rest of the comparison (a page that must stay fast)."""
    rows = Run.objects.order_by("-created").values_list(
        "id", "name", "status", "preset", "created", "dataset__name"
    )[:PICKER_LIMIT]
    tz = timezone.get_current_timezone()
    html = []
    for pk, name, status, preset, created, dataset in rows:
        check = " checked" if pk in selected else ""
        html.append(
            f'<tr><td class="check"><input type="checkbox" name="runs" value="{pk}" '
            f'id="pick-{pk}"{check}></td><td><label for="pick-{pk}">#{pk} {escape(name)}</label>'
            f'</td><td><span class="badge status-{escape(status)}">{escape(status)}</span></td>'
            f"<td>{escape(dataset)}</td><td>{escape(preset or '—')}</td>"
            f'<td class="muted small">{created.astimezone(tz):%Y-%m-%d %H:%M}</td></tr>'
        )
    return mark_safe("\n".join(html))  # noqa: S308 - every value above is escaped


def _comparison(runs: list[Run]) -> dict:
    ids = [r.pk for r in runs]
    rows = charts.config_diff([r.config for r in runs])
    summaries = series.metric_summaries(ids)
    names = charts.table_metrics({name for (_, name) in summaries})
    # Validation metrics get best @ step and final; losses their final value (a per-step loss is
    # noisy: its minimum is one lucky batch, and finding it would mean reading every point).
    columns = [{"name": n, "has_best": charts.series_kind(n) == "eval"} for n in names]
    table = []
    for run in runs:
        cells = []
        for col in columns:
            s = summaries.get((run.pk, col["name"]), {})
            cells.append(
                {
                    **col,
                    **s,
                    "best_text": _fmt(col["name"], s.get("best")),
                    "final_text": _fmt(col["name"], s.get("final")),
                }
            )
        table.append({"run": run, "cells": cells})
    for i, col in enumerate(columns):
        key = "best" if col["has_best"] else "final"
        winner = charts.best_of_column([row["cells"][i].get(key) for row in table], col["name"])
        if winner is not None:
            table[winner]["cells"][i]["winner"] = True
    common: set[int] | None = None
    for run in runs:
        found = set(samples.sample_indices(run))
        common = found if common is None else common & found
    shown = sorted(common or [])
    first = runs[0]
    return {
        "diff_rows": [(key, [_show(v) for v in values]) for key, values in rows],
        "metric_names": names,
        "metric_columns": columns,
        "metric_table": table,
        "curve_metrics": names + ([charts.LR] if names else []),
        "default_metric": next((n for n in ("val_psnr", charts.TOTAL) if n in names), None)
        or (names[0] if names else charts.TOTAL),
        "sample_indices": shown,
        # Same test images across runs: input and teacher from the first run, then each student.
        "sample_urls": {
            i: {
                "input": reverse("run_sample_image", args=[first.pk, i, "input"]),
                "teacher": reverse("run_sample_image", args=[first.pk, i, "teacher"]),
                "students": {
                    r.pk: reverse("run_sample_image", args=[r.pk, i, "student_fp32"]) for r in runs
                },
            }
            for i in shown
        },
        "same_inputs": len({(r.dataset_id, r.config.get("image_size")) for r in runs}) == 1,
        "same_teacher": len({r.teacher_id for r in runs}) == 1,
        "labels": {r.pk: _label(r) for r in runs},
    }


def _label(run: Run) -> str:
    return f"#{run.pk} {run.name}".strip()


def _fmt(name: str, value: float | None) -> str:
    """A metric value with its unit: PSNR in dB to 0.01, SSIM to 4 places, losses to 4 digits."""
    if value is None:
        return "—"
    if "psnr" in name:
        return f"{value:.2f} dB"
    if "ssim" in name:
        return f"{value:.4f}"
    return f"{value:.4g}"


def _show(value) -> str:
    """A config value as the diff table prints it ("—" where a run lacks the key)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value)


@login_required
@require_GET
def compare_data_json(request: HttpRequest) -> JsonResponse:
    """Overlaid curves of one metric (?metric=, default total) for ?runs=1,2,… as a figure."""
    try:
        ids = _run_ids(request)
    except BadParameter as exc:
        return _bad_request(exc)
    metric = request.GET.get("metric", charts.TOTAL).strip() or charts.TOTAL
    runs = list(Run.objects.filter(pk__in=ids).only("id", "name", "status", "finished"))
    order = {rid: i for i, rid in enumerate(ids)}
    runs.sort(key=lambda r: order[r.pk])
    curves = series.compare_curves(runs, metric)
    meta = [
        {"id": r.pk, "label": _label(r), "url": reverse("run_detail", args=[r.pk])} for r in runs
    ]
    return JsonResponse(
        {
            "metric": metric,
            "runs": meta,
            "points": sum(len(c["step"]) for c in curves.values()),
            "figure": charts.comparison_figure(meta, curves, metric),
        }
    )


# ---------------------------------------------------------------- trade-offs


@login_required
@require_GET
def tradeoffs(request: HttpRequest) -> HttpResponse:
    """Size vs latency with PSNR as colour, per device, with the Pareto front and its runs."""
    try:
        filters = tradeoff_points.Filters.from_query(request.GET)
    except ValueError as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    data = tradeoff_points.tradeoff_charts(filters, run_url=_run_url)
    return render(
        request,
        "jobs/tradeoffs.html",
        {"data": data, "filters": filters, "options": tradeoff_points.filter_options()},
    )


@login_required
@require_GET
def tradeoffs_data_json(request: HttpRequest) -> JsonResponse:
    """The trade-off charts as JSON (?variant=&device=&dataset=&teacher=&threads=)."""
    try:
        filters = tradeoff_points.Filters.from_query(request.GET)
    except ValueError as exc:
        return _bad_request(exc)
    return JsonResponse(tradeoff_points.tradeoff_charts(filters, run_url=_run_url))


def _run_url(run_id: int) -> str:
    return reverse("run_detail", args=[run_id])
