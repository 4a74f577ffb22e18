"""Plotly figures and table data for the chart pages, as plain dicts (no Django, no I/O).

Figures are built here and drawn by static/js/charts.js with `Plotly.react`, so styling lives in
one place and every figure can be checked in a unit test without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Names the training task logs besides the loss terms (DESIGN: terms, total, lr, val PSNR/SSIM).
TOTAL = "total"
LR = "lr"
HIGHER_IS_BETTER = ("psnr", "ssim")

# Plotly's default qualitative palette, fixed here so a run keeps its colour on every chart.
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]

VARIANT_SYMBOLS = {"onnx_fp32": "circle", "onnx_int8": "square", "onnx_fp16": "diamond"}
VARIANT_LABELS = {"onnx_fp32": "fp32", "onnx_int8": "int8", "onnx_fp16": "fp16"}


def series_kind(name: str) -> str:
    """Which panel a series belongs to: 'loss' (terms and total), 'lr' or 'eval' (val_*)."""
    if name == LR:
        return "lr"
    if name.startswith("val_"):
        return "eval"
    return "loss"


def higher_is_better(name: str) -> bool | None:
    """True for validation PSNR/SSIM, False for losses, None where 'best' means nothing (lr).

    The loss term named "ssim" is 1 - SSIM: only a val_ series counts as a quality metric.
    """
    if name == LR:
        return None
    return series_kind(name) == "eval" and any(key in name for key in HIGHER_IS_BETTER)


def unit_of(name: str) -> str:
    """The unit a series is shown with."""
    return " dB" if "psnr" in name else ""


# ---------------------------------------------------------------- loss curves on the run page


def trace_style(name: str, index: int = 0) -> dict[str, Any]:
    """Everything about a run-page trace except its data; `meta.smooth` marks EMA-able traces."""
    kind = series_kind(name)
    style: dict[str, Any] = {
        "name": name,
        "type": "scattergl" if kind == "loss" else "scatter",
        "mode": "lines",
        "meta": {"kind": kind, "smooth": kind == "loss"},
        "hovertemplate": f"{name}<br>step %{{x}}<br>%{{y:.5g}}{unit_of(name)}<extra></extra>",
    }
    if kind == "loss":
        style["yaxis"] = "y"
        style["line"] = {"width": 2.5 if name == TOTAL else 1.3, "color": _loss_colour(name, index)}
    elif kind == "lr":
        style["yaxis"] = "y2"
        style["line"] = {"width": 1.3, "color": "#555"}
    else:
        # SSIM (0..1) gets its own right-hand axis so it is not flattened under PSNR (~30 dB).
        style["yaxis"] = "y4" if "ssim" in name else "y3"
        style["mode"] = "lines+markers"
        style["line"] = {"width": 1.5, "dash": "dot" if "ssim" in name else "solid"}
        style["marker"] = {"size": 5}
    return style


def _loss_colour(name: str, index: int) -> str:
    return "#111111" if name == TOTAL else PALETTE[index % len(PALETTE)]


def series_styles(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Styles for a set of series names, total first so it is drawn on top of the legend."""
    ordered = sorted(names, key=lambda n: (series_kind(n) != "loss", n != TOTAL, n))
    return {name: trace_style(name, i) for i, name in enumerate(ordered)}


def loss_layout(log_y: bool = False) -> dict[str, Any]:
    """Three stacked panels sharing the step axis: losses, learning rate, validation metrics."""
    return {
        "height": 620,
        "margin": {"l": 60, "r": 60, "t": 30, "b": 40},
        "hovermode": "x unified",
        "legend": {"orientation": "h", "y": 1.06},
        "xaxis": {"title": {"text": "step"}, "anchor": "y3", "zeroline": False},
        "yaxis": {
            "domain": [0.5, 1.0],
            "title": {"text": "loss"},
            "type": "log" if log_y else "linear",
        },
        # From zero: a constant lr would otherwise be centred in a ±1 range and look like 0.
        "yaxis2": {
            "domain": [0.36, 0.46],
            "title": {"text": "lr"},
            "exponentformat": "e",
            "rangemode": "tozero",
        },
        "yaxis3": {"domain": [0.0, 0.3], "title": {"text": "val PSNR (dB)"}},
        "yaxis4": {
            "overlaying": "y3",
            "side": "right",
            "title": {"text": "val SSIM"},
            "showgrid": False,
        },
    }


def loss_figure(series: Mapping[str, Mapping[str, Sequence]], log_y: bool = False) -> dict:
    """Figure for the run page from {name: {"step": [...], "value": [...]}}."""
    styles = series_styles(series)
    data = [
        {**style, "x": list(series[n]["step"]), "y": list(series[n]["value"])}
        for n, style in styles.items()
    ]
    return {"data": data, "layout": loss_layout(log_y)}


def ema(values: Sequence[float], alpha: float) -> list[float]:
    """Debiased exponential moving average, as TensorBoard's smoothing slider computes it."""
    if alpha <= 0:
        return list(values)
    out, acc = [], 0.0
    for i, v in enumerate(values, start=1):
        acc = alpha * acc + (1 - alpha) * v
        out.append(acc / (1 - alpha**i))
    return out


# ---------------------------------------------------------------- comparison page


def comparison_figure(
    runs: Sequence[Mapping[str, Any]], curves: Mapping[int, Mapping[str, Sequence]], metric: str
) -> dict:
    """One trace per run for `metric`, aligned by step; runs is [{"id", "label", "url"}]."""
    data = []
    for i, run in enumerate(runs):
        curve = curves.get(run["id"])
        if not curve or not len(curve["step"]):
            continue
        data.append(
            {
                "name": run["label"],
                "type": "scattergl",
                "mode": "lines+markers" if series_kind(metric) == "eval" else "lines",
                "x": list(curve["step"]),
                "y": list(curve["value"]),
                "line": {"color": PALETTE[i % len(PALETTE)], "width": 1.5},
                "meta": {"run": run["id"], "url": run.get("url", "")},
                "hovertemplate": f"{run['label']}<br>step %{{x}}<br>{metric} %{{y:.5g}}"
                f"{unit_of(metric)}<extra></extra>",
            }
        )
    layout = {
        "height": 420,
        "margin": {"l": 60, "r": 20, "t": 30, "b": 40},
        "xaxis": {"title": {"text": "step"}},
        "yaxis": {
            "title": {"text": metric + (" (dB)" if "psnr" in metric else "")},
            "type": "log" if series_kind(metric) == "loss" else "linear",
            **(
                log_ticks([v for t in data for v in t["y"]])
                if series_kind(metric) == "loss"
                else {}
            ),
        },
        "legend": {"orientation": "h", "y": -0.2},
        "hovermode": "closest",
    }
    return {"data": data, "layout": layout}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys ("losses.style"); lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


MISSING = object()


def config_diff(configs: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Only the dotted keys whose values differ between configs (a key absent in one differs)."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for key in keys:
        values = [f.get(key, MISSING) for f in flats]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, [None if v is MISSING else v for v in values]))
    return rows


def table_metrics(names: Iterable[str]) -> list[str]:
    """Columns of the metric table: validation metrics first, then total, then the loss terms."""
    names = [n for n in set(names) if higher_is_better(n) is not None]
    return sorted(names, key=lambda n: (series_kind(n) != "eval", n != TOTAL, n))


def best_of_column(values: Sequence[float | None], name: str) -> int | None:
    """Index of the best value across runs in one table column (None if the column is empty)."""
    present = [(v, i) for i, v in enumerate(values) if v is not None]
    if not present:
        return None
    pick = max if higher_is_better(name) else min
    return pick(present)[1]


# ---------------------------------------------------------------- trade-offs page


def pareto_front(points: Sequence[Mapping[str, float | None]]) -> list[int]:
    """Indices of the points no other point dominates, minimising size and latency, maximising PSNR.

    The rule: point a dominates point b when a.size <= b.size, a.latency <= b.latency and
    a.psnr >= b.psnr, and at least one of the three is strictly better. Points lacking any of
    `size`, `latency` or `psnr` are neither on the front nor dominate anything. Exact duplicates
    do not dominate each other, so both stay on the front. Indices are returned in ascending
    order of size (then latency), the order the front line is drawn in.
    """
    usable = [
        i
        for i, p in enumerate(points)
        if all(_finite(p.get(k)) for k in ("size", "latency", "psnr"))
    ]
    if not usable:
        return []
    arr = np.array([[points[i]["size"], points[i]["latency"], -points[i]["psnr"]] for i in usable])
    # Pairwise, all objectives minimised: a dominates b iff a <= b everywhere and a < b somewhere.
    le = (arr[:, None, :] <= arr[None, :, :]).all(axis=2)
    lt = (arr[:, None, :] < arr[None, :, :]).any(axis=2)
    dominated = (le & lt).any(axis=0)
    front = [usable[j] for j in np.flatnonzero(~dominated)]
    return sorted(front, key=lambda i: (points[i]["size"], points[i]["latency"]))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def tradeoff_figure(
    points: Sequence[Mapping[str, Any]],
    front: Sequence[int],
    teachers: Sequence[Mapping[str, Any]] = (),
    latency_label: str = "latency p50 (ms)",
) -> dict:
    """Size vs latency, colour = PSNR; the front as a line; teachers as star reference points.

    Each point is {"size", "latency", "psnr", "label", "url", "kind"}; size is in bytes and drawn
    in KB on a log axis, since a teacher is often a hundred times a student.
    """
    rated = [p for p in points if _finite(p.get("psnr"))]
    unrated = [p for p in points if not _finite(p.get("psnr"))]
    data: list[dict[str, Any]] = [
        _point_trace("runs", rated, colour_by_psnr=True),
    ]
    if unrated:
        data.append(_point_trace("no PSNR measured", unrated, colour_by_psnr=False))
    front_points = [points[i] for i in front]
    data.append(
        {
            "name": "Pareto front",
            "type": "scatter",
            "mode": "lines+markers",
            "x": [p["size"] / 1024 for p in front_points],
            "y": [p["latency"] for p in front_points],
            "text": [p["label"] for p in front_points],
            "customdata": [p.get("url", "") for p in front_points],
            "ids": [str(p.get("artifact", i)) for i, p in enumerate(front_points)],
            "line": {"color": "#d62728", "dash": "dash", "width": 1.5},
            "marker": {
                "size": 16,
                "color": "rgba(0,0,0,0)",
                "line": {"color": "#d62728", "width": 2},
            },
            "hovertemplate": "%{text}<br>on the Pareto front<extra></extra>",
        }
    )
    sized = [t for t in teachers if _finite(t.get("size"))]
    if sized:
        data.append(
            {
                "name": "teacher",
                "type": "scatter",
                "mode": "markers+text",
                "x": [t["size"] / 1024 for t in sized],
                "y": [t["latency"] for t in sized],
                "text": [t["label"] for t in sized],
                "textposition": "top center",
                "marker": {"symbol": "star", "size": 16, "color": "#222"},
                "hovertemplate": "teacher %{text}<br>%{x:.1f} KB<br>%{y:.2f} ms<extra></extra>",
            }
        )
    # A teacher with no model file (an OpenCV operator) has a latency but no size: a line.
    shapes, notes = [], []
    for t in teachers:
        if not _finite(t.get("size")):
            shapes.append(_hline(t["latency"]))
            notes.append(_hline_note(t["latency"], f"teacher {t['label']} (no model file)"))
    layout = {
        "height": 480,
        "margin": {"l": 70, "r": 20, "t": 30, "b": 50},
        "xaxis": {
            "title": {"text": "model file size (KB, log)"},
            "type": "log",
            **log_ticks([x for t in data for x in t["x"]]),
        },
        "yaxis": {
            "title": {"text": latency_label + ", log"},
            "type": "log",
            **log_ticks([y for t in data for y in t["y"]] + [t["latency"] for t in teachers]),
        },
        "legend": {"orientation": "h", "y": -0.18},
        "hovermode": "closest",
        "shapes": shapes,
        "annotations": notes,
    }
    return {"data": data, "layout": layout}


def log_ticks(values: Sequence[float]) -> dict[str, list]:
    """Ticks at 1-2-5 steps, labelled in full ("50", not Plotly's bare "5" under a decade)."""
    positive = [v for v in values if _finite(v) and v > 0]
    if not positive:
        return {}
    lo, hi = min(positive) / 1.5, max(positive) * 1.5
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for m in (1, 2, 5)
        if lo <= m * 10.0**e <= hi
    ]
    return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


def _hline(y: float) -> dict:
    return {
        "type": "line",
        "xref": "paper",
        "x0": 0,
        "x1": 1,
        "yref": "y",
        "y0": y,
        "y1": y,
        "line": {"color": "#222", "dash": "dot", "width": 1},
    }


def _hline_note(y: float, text: str) -> dict:
    return {
        "xref": "paper",
        "x": 1,
        "xanchor": "right",
        "yref": "y",
        "y": math.log10(y),
        "yanchor": "bottom",
        "text": f"{text}: {y:.1f} ms",
        "showarrow": False,
    }


def _point_trace(name: str, points: Sequence[Mapping[str, Any]], colour_by_psnr: bool) -> dict:
    marker: dict[str, Any] = {
        "size": 11,
        "symbol": [VARIANT_SYMBOLS.get(p.get("kind", ""), "circle") for p in points],
        "line": {"color": "#333", "width": 0.5},
    }
    if colour_by_psnr:
        marker.update(
            color=[p["psnr"] for p in points],
            colorscale="Viridis",
            showscale=True,
            colorbar={"title": {"text": "PSNR vs teacher (dB)"}},
        )
    else:
        marker["color"] = "#bbbbbb"
    return {
        "name": name,
        "type": "scatter",
        "mode": "markers",
        "x": [p["size"] / 1024 for p in points],
        "y": [p["latency"] for p in points],
        "text": [p["label"] for p in points],
        "customdata": [p.get("url", "") for p in points],
        "ids": [str(p.get("artifact", i)) for i, p in enumerate(points)],
        "marker": marker,
        "hovertemplate": "%{text}<br>%{x:.1f} KB<br>%{y:.2f} ms"
        + ("<br>%{marker.color:.2f} dB" if colour_by_psnr else "")
        + "<extra></extra>",
    }
