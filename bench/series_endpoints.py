"""How fast the curves and the comparison answer with 500 runs of 50,000 points each.

    .venv/bin/python bench/series_endpoints.py [--runs 500] [--steps 10000] [--db PATH]

Builds (once, then reuses) a SQLite database of `runs` runs, each with `steps` steps of five
dense series (total, three loss terms, lr) and val_psnr/val_ssim every 100 steps — 50,200 points
per run at the defaults, 25.1 M rows in all — then times the endpoints through Django's test
client, the whole request (URL routing, auth, queries, JSON or template), and prints p50/p95.
Nothing here touches the project's own database: the bench DB lives in the temp folder.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DENSE = ("total", "pixel_l1", "ssim", "style", "lr")
EVAL_EVERY = 100


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--steps", type=int, default=10_000, help="steps per run (5 dense series)")
    p.add_argument("--repeat", type=int, default=30, help="timed requests per endpoint")
    p.add_argument(
        "--db", type=Path, default=Path(tempfile.gettempdir()) / "distillery-series-bench.sqlite3"
    )
    p.add_argument("--rebuild", action="store_true", help="build the database again")
    return p.parse_args()


def setup_django(db: Path) -> None:
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ["DISTILLERY_DEBUG"] = "0"  # no query log piling up in memory
    os.environ["DISTILLERY_ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("DISTILLERY_MEDIA_ROOT", tempfile.mkdtemp(prefix="series-bench-media-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def build(db: Path, runs: int, steps: int) -> None:
    """Migrate, then bulk-load runs and points with executemany in large transactions."""
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from jobs.models import Dataset, Run, Teacher

    call_command("migrate", verbosity=0)
    User.objects.create_user("bench", password="bench-password-1")
    dataset = Dataset.objects.create(name="bench", path="/tmp", status=Dataset.Status.READY)
    teacher = Teacher.objects.create(name="bench", spec="opencv:stylization")
    Run.objects.bulk_create(
        [
            Run(
                name=f"bench {i}",
                dataset=dataset,
                teacher=teacher,
                status=Run.Status.SUCCEEDED,
                config={"lr": [1e-3, 2e-3, 5e-3][i % 3], "student": {"width": 8 + i % 5 * 8}},
                step=steps,
                total_steps=steps,
            )
            for i in range(runs)
        ],
        batch_size=500,
    )
    run_ids = list(Run.objects.order_by("pk").values_list("pk", flat=True))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")  # a throw-away database: durability buys nothing
    sql = "INSERT INTO jobs_metricpoint (run_id, name, step, value) VALUES (?, ?, ?, ?)"
    started = time.perf_counter()
    rng = random.Random(0)
    for n, run_id in enumerate(run_ids, start=1):
        rows = []
        for k, name in enumerate(DENSE):
            scale = 1e-3 if name == "lr" else 0.2 * (k + 1)
            rows += [
                (run_id, name, s, scale * (1 + 4 / (1 + s / 500)) * (1 + 0.05 * rng.random()))
                for s in range(steps)
            ]
        for name, base in (("val_psnr", 22.0), ("val_ssim", 0.7)):
            rows += [
                (run_id, name, s, base * (1 + 0.3 * s / steps) + rng.random() * 0.1)
                for s in range(0, steps, EVAL_EVERY)
            ]
        with conn:
            conn.executemany(sql, rows)
        if n % 50 == 0:
            rate = n * len(rows) / (time.perf_counter() - started)
            print(f"  {n}/{len(run_ids)} runs loaded ({rate:,.0f} rows/s)", flush=True)
    conn.execute("ANALYZE")
    conn.close()


def timed(client, url: str, repeat: int) -> tuple[float, float, float, int]:
    """(first ms, p50 ms, p95 ms, response bytes): the first request, then `repeat` more.

    The first request to a finished run's curves builds its digests; later ones read them.
    """
    t = time.perf_counter()
    response = client.get(url)
    first = (time.perf_counter() - t) * 1000
    assert response.status_code == 200, f"{url} answered {response.status_code}"
    size = len(response.content)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return first, statistics.median(times), p95, size


def main() -> None:
    args = parse_args()
    if args.rebuild and args.db.exists():
        args.db.unlink()
    fresh = not args.db.exists()
    setup_django(args.db)
    if fresh:
        print(f"building {args.db} ({args.runs} runs × {args.steps:,} steps)…", flush=True)
        t = time.perf_counter()
        build(args.db, args.runs, args.steps)
        print(f"built in {time.perf_counter() - t:.0f} s", flush=True)

    from django.contrib.auth.models import User
    from django.test import Client

    from jobs.models import MetricPoint, Run

    ids = list(Run.objects.order_by("pk").values_list("pk", flat=True))
    points = MetricPoint.objects.count()
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    rng = random.Random(1)
    one = rng.choice(ids)

    def pick(n: int) -> str:
        return ",".join(map(str, rng.sample(ids, min(n, len(ids)))))

    live = f"/runs/{one}/series.json?since={args.steps - 51}"
    cases = [("series.json, full (7 series)", f"/runs/{one}/series.json"),
             ("series.json?since=last-50 (live poll)", live)]  # fmt: skip
    for n in (2, 10, 100):
        cases.append((f"compare page, {n} runs", f"/compare/?runs={pick(n)}"))
    for metric in ("total", "val_psnr"):
        for n in (2, 10, 100):
            url = f"/compare/data.json?runs={pick(n)}&metric={metric}"
            cases.append((f"compare data.json {metric}, {n} runs", url))
    size_gb = args.db.stat().st_size / 2**30
    print(f"\n{len(ids)} runs, {points:,} metric points, SQLite file {size_gb:.1f} GB")
    print(f"{'endpoint':<40} {'first ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'KB':>8}")
    for label, url in cases:
        repeat = args.repeat
        first, p50, p95, size = timed(client, url, repeat)
        print(f"{label:<40} {first:>9.1f} {p50:>8.1f} {p95:>8.1f} {size / 1024:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
