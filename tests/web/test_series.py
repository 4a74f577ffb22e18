"""Metric series behind the curves: bounded, peak-preserving, incremental."""

from __future__ import annotations

import numpy as np
import pytest
from django.utils import timezone

from jobs import series
from jobs.models import MetricPoint, Run


@pytest.fixture
def make_run(dataset, teacher):
    """Runs with a small literal config: these tests need metric rows, not a trainable config."""

    def make(**fields) -> Run:
        fields.setdefault("name", "run")
        return Run.objects.create(dataset=dataset, teacher=teacher, config={"steps": 10}, **fields)

    return make


def add_points(run, name: str, values, start: int = 0) -> None:
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(run=run, name=name, step=start + i, value=float(v))
            for i, v in enumerate(values)
        ],
        batch_size=5000,
    )


def noisy(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.exp(-np.arange(n) / (n / 3)) + 0.05 * rng.standard_normal(n)


# ---------------------------------------------------------------- downsampling alone


@pytest.mark.parametrize("n", [2001, 2003, 5_000, 49_999, 1_000_000])
def test_downsampling_keeps_first_last_min_and_max(n):
    values = noisy(n)
    values[n // 3] = 50.0  # a spike, as a diverging step would make
    values[2 * n // 3] = -50.0
    steps = np.arange(n) * 10
    s, v = series.minmax_downsample(steps, values, 2000)
    assert len(s) <= 2000
    assert (s[0], v[0]) == (steps[0], values[0])
    assert (s[-1], v[-1]) == (steps[-1], values[-1])
    assert v.max() == 50.0 and s[v.argmax()] == steps[n // 3]
    assert v.min() == -50.0 and s[v.argmin()] == steps[2 * n // 3]
    assert np.all(np.diff(s) > 0), "points stay in step order"


def test_a_short_series_comes_back_unchanged():
    steps, values = np.arange(10), noisy(10)
    s, v = series.minmax_downsample(steps, values, 2000)
    assert s.tolist() == steps.tolist() and v.tolist() == values.tolist()


def test_non_finite_values_are_left_out():
    s, v = series.minmax_downsample(np.arange(4), np.array([1.0, np.nan, np.inf, 2.0]), 2000)
    assert s.tolist() == [0, 3] and v.tolist() == [1.0, 2.0]


# ---------------------------------------------------------------- from the database


def test_a_long_series_is_bounded_and_keeps_its_extremes(make_run):
    run = make_run()
    values = noisy(5_000)
    values[1_234] = 9.0
    add_points(run, "total", values)
    got = series.run_series(run, max_points=400)["total"]
    assert len(got.steps) <= 400
    assert got.total_points == 5_000
    assert (got.steps[0], got.steps[-1]) == (0, 4_999)
    assert got.values.max() == 9.0 and got.steps[got.values.argmax()] == 1_234
    assert got.values.min() == values.min()


def test_since_returns_only_the_points_after_that_step(make_run):
    run = make_run()
    add_points(run, "total", noisy(100))
    add_points(run, "val_psnr", [20.0, 21.0], start=49)  # steps 49 and 50
    first = series.run_series(run)
    assert series.last_step(first) == 99
    add_points(run, "total", [0.5, 0.4], start=100)
    newer = series.run_series(run, since=99)
    assert list(newer) == ["total"]
    assert newer["total"].steps.tolist() == [100, 101]
    assert series.last_step(newer, since=99) == 101
    assert series.run_series(run, since=101) == {}
    assert series.last_step({}, since=101) == 101


def test_a_series_past_the_sql_threshold_is_bucketed_by_the_database(make_run, monkeypatch):
    monkeypatch.setattr(series, "SQL_BUCKET_THRESHOLD", 1_000)
    run = make_run()
    values = noisy(3_000)
    values[2_345] = -3.0
    add_points(run, "total", values)
    got = series.load_series(run.pk, "total", max_points=200)
    assert len(got.steps) <= 200
    assert got.values[0] == values[0] and got.values[-1] == values[-1]
    assert got.values.min() == -3.0 and got.values.max() == values.max()


def test_the_series_index_finds_every_series_and_its_final_point(make_run):
    a, b = make_run(name="a"), make_run(name="b")
    add_points(a, "total", [0.9, 0.2, 0.3])
    add_points(a, "val_psnr", [20.0], start=1)
    add_points(b, "lr", [1e-3, 5e-4], start=4)
    assert series.series_index([a.pk, b.pk]) == {
        (a.pk, "total"): (2, 0.3),
        (a.pk, "val_psnr"): (1, 20.0),
        (b.pk, "lr"): (5, 5e-4),
    }
    assert series.series_index([]) == {}


def test_metric_summaries_give_best_validation_value_with_its_step_and_every_final(make_run):
    a, b = make_run(name="a"), make_run(name="b")
    add_points(a, "val_psnr", [20.0, 27.5, 26.0, 27.5])  # best 27.5 first at step 1
    add_points(a, "total", [0.9, 0.2, 0.3, 0.25])
    add_points(b, "val_psnr", [21.0, 22.0], start=10)
    got = series.metric_summaries([a.pk, b.pk])
    assert got[(a.pk, "val_psnr")] == {"best": 27.5, "best_step": 1, "final": 27.5,
                                       "final_step": 3}  # fmt: skip
    assert got[(a.pk, "total")] == {"best": None, "best_step": None, "final": 0.25,
                                    "final_step": 3}  # fmt: skip
    assert got[(b.pk, "val_psnr")]["final_step"] == 11


def test_a_finished_runs_series_come_from_its_digest_file(make_run):
    run = make_run(status=Run.Status.SUCCEEDED)
    values = noisy(3_000)
    add_points(run, "total", values)
    assert series.build_digests(run) == 1
    path = run.out_dir() / "series" / "total.bin"
    assert path.is_file()
    # The rows are gone, the digest still answers: proof the page reads the file, not the rows.
    MetricPoint.objects.filter(run=run).update(value=0.0)
    got = series.run_series(run)["total"]
    assert got.total_points == 3_000 and got.values.max() == values.max()
    # A run finished again (its key changes) is read afresh.
    Run.objects.filter(pk=run.pk).update(finished=timezone.now())
    run.refresh_from_db()
    assert series.run_series(run)["total"].values.max() == 0.0


def test_comparison_curves_stay_within_budget_for_many_runs(make_run):
    runs = [make_run(name=f"r{i}", status=Run.Status.SUCCEEDED) for i in range(11)]
    runs.append(make_run(name="live", status=Run.Status.RUNNING))
    for i, run in enumerate(runs):
        values = noisy(1_200 if i else 150, seed=i)  # the first is short enough to send whole
        values[100 + i] = 5.0 + i
        add_points(run, "total", values)
    curves = series.compare_curves(runs, "total", budget=3_000)
    assert set(curves) == {r.pk for r in runs}
    assert sum(len(c["step"]) for c in curves.values()) <= 3_000
    assert len(curves[runs[0].pk]["step"]) == 150
    for i, run in enumerate(runs):
        assert max(curves[run.pk]["value"]) == 5.0 + i, "each run's peak survives"
    assert series.compare_curves(runs, "no_such_series") == {}
