"""Metric series for the charts: read from MetricPoint, downsampled to a bounded size.

A curve is drawn from at most `MAX_POINTS` points per series however many were logged. We keep
min/max buckets rather than averages so a spike (a diverging loss, a best val PSNR) is never
smoothed away: the first and last points and every bucket's extremes survive, hence the global
extremes too. Very long series (past `SQL_BUCKET_THRESHOLD`) are first bucketed in SQL so a run
with a million points does not pull a million rows through Python.

Pages that show many runs at once never scan their points: series names and final values come
from index seeks (`series_index`), and a finished run's thinned curves are kept in small files
beside its artifacts (`digest`), read instead of its rows. A finished run's points do not change.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.db import connection
from django.db.models import F, Max, Min

from jobs.charts import series_kind
from jobs.models import MetricPoint, Run

MAX_POINTS = 2000
# Above this many points a series is bucketed in SQL (min/max per bucket) before numpy sees it.
SQL_BUCKET_THRESHOLD = 200_000
# Names safe as file names; others are simply not cached.
_FILE_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass
class Series:
    """One downsampled series: parallel step/value arrays plus how many points it came from."""

    steps: np.ndarray
    values: np.ndarray
    total_points: int

    def to_json(self) -> dict:
        """Plain lists for JsonResponse (numpy scalars are not JSON serialisable)."""
        return {
            "step": self.steps.tolist(),
            "value": self.values.tolist(),
            "total_points": self.total_points,
        }


def minmax_downsample(
    steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Keep first, last and each bucket's min and max, in step order; at most max_points points.

    Non-finite values (a NaN loss from a diverged step) are dropped: JSON cannot carry them and
    Plotly would break the line there anyway.
    """
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        steps, values = steps[finite], values[finite]
    n = len(values)
    if max_points < 4:
        raise ValueError(
            f"max_points must be at least 4 to keep first, last, min and max; got {max_points}"
        )
    if n <= max_points:
        return steps, values
    # Interior points (all but first and last) go into equal-width buckets of 2 survivors each.
    inner = values[1:-1]
    m = len(inner)
    width = math.ceil(m / ((max_points - 2) // 2))
    buckets = math.ceil(m / width)  # recomputed so the last bucket is never empty
    pad = buckets * width - m
    lo = np.concatenate([inner, np.full(pad, np.inf)]).reshape(buckets, width)
    hi = np.concatenate([inner, np.full(pad, -np.inf)]).reshape(buckets, width)
    base = np.arange(buckets) * width
    i_min = base + lo.argmin(axis=1)
    i_max = base + hi.argmax(axis=1)
    keep = np.unique(np.concatenate([i_min, i_max])) + 1  # unique also sorts: step order
    idx = np.concatenate([[0], keep, [n - 1]])
    return steps[idx], values[idx]


def load_series(
    run_id: int,
    name: str,
    since: int | None = None,
    max_points: int = MAX_POINTS,
    count: int | None = None,
) -> Series:
    """One series of one run, steps after `since`, downsampled to at most max_points."""
    qs = MetricPoint.objects.filter(run_id=run_id, name=name)
    if since is not None:
        qs = qs.filter(step__gt=since)
    if count is None:
        count = qs.count()
    if count > SQL_BUCKET_THRESHOLD:
        steps, values = _sql_buckets(qs, max_points)
    else:
        rows = list(qs.order_by("step").values_list("step", "value"))
        arr = np.array(rows, dtype=np.float64).reshape(-1, 2)
        steps, values = arr[:, 0].astype(np.int64), arr[:, 1]
    steps, values = minmax_downsample(steps, values, max_points)
    return Series(steps=steps, values=values, total_points=count)


def _sql_buckets(qs, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max per step bucket computed by the database, plus the exact first and last rows.

    Both extremes of a bucket are placed at the bucket's first step: a bucket is narrower than a
    pixel at this density, and the values (which is what the eye and the tests check) are exact.
    """
    bounds = qs.aggregate(lo=Min("step"), hi=Max("step"))
    lo, hi = bounds["lo"], bounds["hi"]
    buckets = max(1, (max_points - 2) // 2)
    width = max(1, math.ceil((hi - lo + 1) / buckets))
    rows = (
        qs.annotate(bucket=(F("step") - lo) / width)
        .values("bucket")
        .annotate(s=Min("step"), vmin=Min("value"), vmax=Max("value"))
        .order_by("bucket")
        .values_list("s", "vmin", "vmax")
    )
    first = qs.order_by("step").values_list("step", "value").first()
    last = qs.order_by("-step").values_list("step", "value").first()
    steps, values = [first[0]], [first[1]]
    for s, vmin, vmax in rows:
        steps += [s, s]
        values += [vmin, vmax]
    steps.append(last[0])
    values.append(last[1])
    return np.array(steps, dtype=np.int64), np.array(values, dtype=np.float64)


def series_index(run_ids: Sequence[int]) -> dict[tuple[int, str], tuple[int, float]]:
    """{(run_id, name): (last step, value at it)} for every series of the runs, by index seeks.

    A loose index scan: for each run the next name after the previous one is one seek into the
    (run, name, step) index, and so is each series' last point, so the cost grows with runs ×
    series, not with points. (A GROUP BY would read all 5 M index entries of 100 runs.)
    """
    if not run_ids:
        return {}
    points = MetricPoint._meta.db_table
    runs = Run._meta.db_table
    marks = ", ".join(["%s"] * len(run_ids))
    sql = f"""
        WITH RECURSIVE names(run_id, name) AS (
            SELECT r.id, (SELECT MIN(m.name) FROM {points} m WHERE m.run_id = r.id)
            FROM {runs} r WHERE r.id IN ({marks})
            UNION ALL
            SELECT n.run_id,
                   (SELECT MIN(m.name) FROM {points} m
                    WHERE m.run_id = n.run_id AND m.name > n.name)
            FROM names n WHERE n.name IS NOT NULL
        )
        SELECT n.run_id, n.name,
               (SELECT m.step FROM {points} m WHERE m.run_id = n.run_id AND m.name = n.name
                ORDER BY m.step DESC LIMIT 1),
               (SELECT m.value FROM {points} m WHERE m.run_id = n.run_id AND m.name = n.name
                ORDER BY m.step DESC LIMIT 1)
        FROM names n WHERE n.name IS NOT NULL
    """  # table names come from the models; every value is a parameter
    with connection.cursor() as cursor:
        cursor.execute(sql, list(run_ids))
        return {(run_id, name): (step, value) for run_id, name, step, value in cursor.fetchall()}


def run_series(
    run: Run, since: int | None = None, max_points: int = MAX_POINTS
) -> dict[str, Series]:
    """Every series of a run after `since`, each downsampled to at most max_points.

    A finished run's full series come from its digests; a live run's are read from the rows.
    """
    names = sorted(name for _, name in series_index([run.pk]))
    if since is None and max_points == MAX_POINTS and not run.is_active:
        return {name: digest(run, name) for name in names}
    out = {name: load_series(run.pk, name, since, max_points) for name in names}
    return {name: s for name, s in out.items() if s.total_points}


def last_step(series: dict[str, Series], since: int | None = None) -> int | None:
    """Highest step present in any series, or `since` when nothing new arrived."""
    tails = [int(s.steps[-1]) for s in series.values() if len(s.steps)]
    return max(tails) if tails else since


# ---------------------------------------------------------------- digests of finished runs


def digest(run: Run, name: str) -> Series:
    """A finished run's whole series thinned to MAX_POINTS, kept in runs/<id>/series/<name>.bin.

    Built on first use (the training task may build them when a run ends) and rebuilt if the run
    is finished again. A live run's series is read from the database every time. The file is one
    JSON header line, then steps and values as little-endian float64: parsing 100 JSON (or npz)
    digests took longer than the rest of a 100-run comparison.
    """
    if run.is_active:
        return load_series(run.pk, name)
    key = f"{run.status}|{run.finished.isoformat() if run.finished else ''}"
    path = run.out_dir() / "series" / f"{name}.bin" if _FILE_SAFE.fullmatch(name) else None
    if path is not None:
        cached = _read_digest(path, key)
        if cached is not None:
            return cached
    series = load_series(run.pk, name)
    if path is not None:
        _write_digest(path, key, series)
    return series


def build_digests(run: Run) -> int:
    """Write the digest of every series of a finished run (call when it ends); returns how many."""
    names = [name for _, name in series_index([run.pk])]
    for name in names:
        digest(run, name)
    return len(names)


def _read_digest(path: Path, key: str) -> Series | None:
    try:
        with path.open("rb") as fh:
            header = json.loads(fh.readline())
            if header.get("key") != key:
                return None
            data = np.frombuffer(fh.read(), dtype="<f8").reshape(2, header["n"])
    except (OSError, ValueError, KeyError):
        return None
    return Series(data[0].astype(np.int64), data[1].copy(), header["total_points"])


def _write_digest(path: Path, key: str, series: Series) -> None:
    """Atomic write; a read-only media folder just means no cache."""
    header = {"key": key, "n": len(series.steps), "total_points": series.total_points}
    body = np.stack([series.steps.astype("<f8"), series.values.astype("<f8")]).tobytes()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".bin")
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(header).encode() + b"\n" + body)
        os.replace(tmp, path)
    except OSError:
        pass


# ---------------------------------------------------------------- many runs at once


def metric_summaries(run_ids: Sequence[int]) -> dict[tuple[int, str], dict]:
    """Final value of every (run, series), and best value with its step for validation series.

    Returns {(run_id, name): {"final", "final_step", "best", "best_step"}}; "best" is the highest
    val PSNR/SSIM (first step reaching it), None for losses and lr. Final values come from index
    seeks; only the sparse validation rows are read, so 100 runs cost what 2 do.
    """
    index = series_index(run_ids)
    out = {
        key: {"final": value, "final_step": step, "best": None, "best_step": None}
        for key, (step, value) in index.items()
    }
    evals = sorted({name for _, name in index if series_kind(name) == "eval"})
    if evals:
        for run_id, name, best, step in _best_of(run_ids, evals):
            out[(run_id, name)].update(best=best, best_step=step)
    return out


def _best_of(run_ids: Sequence[int], names: Sequence[str]) -> list[tuple[int, str, float, int]]:
    """(run_id, name, highest value, first step reaching it) for the given (sparse) series."""
    points = MetricPoint._meta.db_table
    run_marks = ", ".join(["%s"] * len(run_ids))
    name_marks = ", ".join(["%s"] * len(names))
    sql = f"""
        SELECT g.run_id, g.name, g.best,
               (SELECT MIN(m.step) FROM {points} m
                WHERE m.run_id = g.run_id AND m.name = g.name AND m.value = g.best)
        FROM (SELECT run_id, name, MAX(value) AS best FROM {points}
              WHERE run_id IN ({run_marks}) AND name IN ({name_marks})
              GROUP BY run_id, name) g
    """  # the table name comes from the model; every value is a parameter
    with connection.cursor() as cursor:
        cursor.execute(sql, [*run_ids, *names])
        return cursor.fetchall()


def compare_curves(
    runs: Sequence[Run], name: str, budget: int = 20_000
) -> dict[int, dict[str, list]]:
    """One series across many runs for an overlaid chart, at most `budget` points in all.

    Finished runs are thinned from their digests (no rows read once a digest exists); live runs
    from their rows. Each run keeps its own first, last, minima and maxima.
    """
    per_run = max(200, min(MAX_POINTS, budget // max(1, len(runs))))
    present = {run_id for run_id, n in series_index([r.pk for r in runs]) if n == name}
    curves: dict[int, dict[str, list]] = {}
    for run in runs:
        if run.pk not in present:
            continue
        if run.is_active:
            s = load_series(run.pk, name, max_points=per_run)
            steps, values = s.steps, s.values
        else:
            d = digest(run, name)
            steps, values = minmax_downsample(d.steps, d.values, per_run)
        curves[run.pk] = {"step": steps.tolist(), "value": values.tolist()}
    return curves
