"""The chart pages in a real browser against a real server: loss curves that grow while points
arrive, the sample viewer's swipe slider, the comparison's config diff, the trade-offs' Pareto
front. Data is written straight to the database (no training); screenshots go to
test-output/screenshots/, and to docs/screenshots/ (the README shows those) when
DISTILLERY_UPDATE_DOC_SCREENSHOTS=1, so an ordinary test run leaves the checkout clean."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from stack import ROOT, SCREENSHOTS, Stack, wait_until

PASSWORD = "charts-e2e-2718"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
DATA_SCRIPT = ROOT / "tests" / "e2e" / "chart_pages_data.py"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("charts")
    stack = Stack(root, f"sqlite:///{root / 'db.sqlite3'}", {"DISTILLERY_BROKER_URL": "memory://"})
    stack.manage("migrate", "--noinput", "-v", "0")
    code = f"import runpy; runpy.run_path({str(DATA_SCRIPT)!r})['main']({PASSWORD!r})"
    out = stack.manage("shell", "-c", code)
    stack.data = json.loads(out.split("CHART-DATA ", 1)[1])
    try:
        stack.start_web()
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(stack.url + "/accounts/login/")
    page.fill("#id_username", "eve")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + "/")
    yield page
    context.close()


def shot(page, name: str) -> None:
    """Screenshot for the test output (copied to docs/screenshots/ when asked, for the README)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    if os.environ.get("DISTILLERY_UPDATE_DOC_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SCREENSHOTS / path.name)


def trace_names(page, div: str) -> list[str]:
    return page.evaluate(f"document.getElementById({div!r}).data.map(t => t.name)")


def insert_points(stack: Stack, run_id: int, steps: range) -> None:
    """What the worker's recorder does: one row per series per step, the losses still falling."""
    db = Path(stack.database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(db, timeout=30) as conn:
        last = dict(
            conn.execute(
                "SELECT name, value FROM jobs_metricpoint WHERE run_id = ? AND step = ?",
                (run_id, steps.start - 1),
            ).fetchall()
        )
        rows = [
            (run_id, name, step, value * (0.995 ** (i + 1) if name != "lr" else 1.0))
            for i, step in enumerate(steps)
            for name, value in last.items()
        ]
        conn.executemany(
            "INSERT INTO jobs_metricpoint (run_id, name, step, value) VALUES (?, ?, ?, ?)", rows
        )


def test_the_run_page_draws_every_curve_and_they_grow_while_points_arrive(stack, page):
    run_id = stack.data["live"]
    page.goto(f"{stack.url}/runs/{run_id}/")
    page.wait_for_function("document.getElementById('loss-chart').data?.length > 0")
    names = trace_names(page, "loss-chart")
    assert names[0] == "total"
    assert set(names) == {"total", "pixel_l1", "ssim", "style", "lr", "val_psnr", "val_ssim"}
    total_len = "document.getElementById('loss-chart').data.find(t => t.name === 'total').x.length"
    assert page.evaluate(total_len) == 60

    insert_points(stack, run_id, range(60, 75))  # the worker logs 15 more steps
    page.wait_for_function(f"{total_len} === 75", timeout=20_000)
    assert "step 74" in page.text_content("#loss-live")

    page.check("#loss-log")
    assert page.evaluate("document.getElementById('loss-chart').layout.yaxis.type") == "log"
    raw = page.evaluate("document.getElementById('loss-chart').data[0].y.slice(0, 5)")
    page.fill("#loss-smoothing", "0.9")
    smoothed = page.evaluate("document.getElementById('loss-chart').data[0].y.slice(0, 5)")
    assert smoothed[0] == pytest.approx(raw[0]) and smoothed[4] != pytest.approx(raw[4])
    page.fill("#loss-smoothing", "0.6")
    page.uncheck("#loss-log")
    shot(page, "run-charts")

    stack.sql("UPDATE jobs_run SET status = 'succeeded' WHERE id = ?", run_id)
    # The status poller reloads the page when the run ends; the curves then stop polling.
    wait_until(lambda: page.text_content("#loss-live") == "finished", 30, "the curves to stop")


def test_the_sample_viewer_swipes_navigates_with_keys_and_zooms_every_panel(stack, page):
    run_id = stack.data["runs"]["lr 2e-3"]
    page.goto(f"{stack.url}/runs/{run_id}/samples/")
    assert page.text_content("#sample-position") == "1 of 4"
    assert page.text_content("#sample-name") == "photos/astronaut.png"
    # Every panel is at full size: the image's own pixels, not scaled.
    wait_until(lambda: page.evaluate("document.getElementById('img-teacher').naturalWidth"), 10,
               "the teacher image")  # fmt: skip
    assert page.evaluate("document.getElementById('img-teacher').getBoundingClientRect().width") \
        == 160  # fmt: skip
    clip = "getComputedStyle(document.getElementById('swipe-student')).clipPath"
    assert page.evaluate(clip) == "inset(0px 0px 0px 50%)"
    page.fill("#swipe-range", "20")
    assert page.evaluate(clip) == "inset(0px 0px 0px 20%)"
    page.fill("#swipe-range", "65")
    assert page.evaluate(clip) == "inset(0px 0px 0px 65%)"

    page.locator("h1").click()  # focus off the slider: arrows now move between images
    page.keyboard.press("ArrowRight")
    assert page.text_content("#sample-position") == "2 of 4"
    assert page.text_content("#sample-name") == "photos/chelsea.png"
    page.keyboard.press("ArrowLeft")
    assert page.text_content("#sample-position") == "1 of 4"

    # int8 is made on first view by running the run's ONNX file; its scores appear per image.
    rows = page.locator("#sample-metrics tbody tr")
    assert [rows.nth(i).get_attribute("data-variant") for i in range(rows.count())] == [
        "fp32", "int8"]  # fmt: skip
    assert "dB" in page.text_content("#sample-metrics tbody tr[data-variant=int8]")

    page.click("#zoom-in")
    transforms = page.evaluate(
        "[...document.querySelectorAll('#sample-viewer .zoom-layer')]"
        ".filter(l => l.offsetParent).map(l => l.style.transform)"
    )
    assert len(transforms) >= 5 and len(set(transforms)) == 1 and "scale(1.5)" in transforms[0]
    page.click("#zoom-reset")
    shot(page, "samples")


def test_the_comparison_overlays_curves_and_diffs_exactly_the_field_that_differs(stack, page):
    a, b = stack.data["runs"]["lr 2e-3"], stack.data["runs"]["lr 5e-3"]
    page.goto(f"{stack.url}/compare/?runs={a},{b}")
    page.wait_for_function("document.getElementById('compare-chart').data?.length === 2")
    assert trace_names(page, "compare-chart") == [f"#{a} lr 2e-3", f"#{b} lr 5e-3"]
    assert page.evaluate("document.getElementById('compare-chart').data[0].x.length") == 20
    rows = page.locator("#config-diff tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-key") == "lr"
    assert page.locator("#config-diff td.differs").all_text_contents() == ["0.002", "0.005"]
    assert page.locator("#metric-table tbody tr").count() == 2
    assert page.locator("#metric-table td.winner").count() >= 1
    # The same test input for each run's student, side by side.
    wait_until(
        lambda: page.evaluate(
            "[...document.querySelectorAll('#compare-samples img')].every(i => i.naturalWidth)"
        ),
        15,
        "the sample images",
    )
    srcs = page.evaluate("[...document.querySelectorAll('[data-run-student]')].map(i => i.src)")
    assert srcs[0].endswith(f"/runs/{a}/samples/0/student_fp32.png")
    assert srcs[1].endswith(f"/runs/{b}/samples/0/student_fp32.png")
    page.select_option("#compare-metric", "total")
    page.wait_for_function(
        "document.getElementById('compare-chart').layout.yaxis.title.text === 'total'"
    )
    shot(page, "compare")


def test_the_tradeoffs_page_marks_the_pareto_front(stack, page):
    arts = stack.data["artifacts"]
    page.goto(f"{stack.url}/tradeoffs/")
    page.wait_for_function("document.getElementById('tradeoff-host').data?.length > 0")
    names = trace_names(page, "tradeoff-host")
    assert names == ["runs", "Pareto front", "teacher"]
    front = page.evaluate(
        "document.getElementById('tradeoff-host').data.find(t => t.name === 'Pareto front').ids"
    )
    expected = ["tiny-int8", "small-int8", "wide-int8", "wide-fp32"]  # by size
    assert front == [str(arts[n]) for n in expected]
    listed = page.locator("#front-host tbody tr")
    assert [listed.nth(i).get_attribute("data-artifact") for i in range(listed.count())] == [
        str(arts[n]) for n in expected]  # fmt: skip
    # The device's own timings make a chart of their own, with its own front.
    device = f"tradeoff-agent-{stack.data['agent']}"
    page.wait_for_function(f"document.getElementById({device!r}).data?.length > 0")
    assert "Pareto front" in trace_names(page, device)
    shot(page, "tradeoffs")

    page.select_option("select[name=variant]", "int8")
    page.click("#tradeoff-filters button[type=submit]")
    page.wait_for_url("**/tradeoffs/?*variant=int8*")
    page.wait_for_function("document.getElementById('tradeoff-host').data?.length > 0")
    ids = page.evaluate("document.getElementById('tradeoff-host').data[0].ids")
    assert sorted(ids) == sorted(str(arts[n]) for n in arts if n.endswith("int8"))
