"""A user in a real browser (Debian's chromium through Playwright): logs in, launches a run from
the form, watches its progress bar move, downloads the int8 model; and is told inline when a value
is wrong. Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from stack import PASSWORD, SCREENSHOTS, TINY_EXTRA, TINY_FIELDS, steps_lasting


def log_in(page, base_url: str) -> None:
    page.goto(base_url + "/accounts/login/")
    page.fill("#id_username", "demo")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/")


def fill_launch_form(page, base_url: str, **values: str) -> None:
    page.goto(base_url + "/runs/new/")
    page.select_option("#id_dataset", label="demo (14 images)")
    page.select_option("#id_teacher", label="OpenCV stylization")
    page.select_option("#id_preset", "tiny")  # the page fills every field from the preset
    for name, value in {**TINY_FIELDS, "extra": TINY_EXTRA, **values}.items():
        page.fill(f"#id_{name}", value)


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_user_launches_a_run_watches_it_progress_and_downloads_the_int8_model(shared_stack, page):
    base = shared_stack.url
    steps = steps_lasting(shared_stack, 12)
    log_in(page, base)
    fill_launch_form(page, base, steps=str(steps))
    shot(page, "launch-form")

    page.click("#launch-button")
    page.wait_for_url(f"{base}/runs/*/")
    run_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    seen: list[float] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            status = page.locator("[data-field=status]").first.text_content().strip()
            if status in ("succeeded", "failed", "cancelled"):
                break
            value = float(page.locator("progress").first.evaluate("bar => bar.value"))
        except PlaywrightError:  # the page reloads itself when the run ends
            continue
        if not seen or value != seen[-1]:
            seen.append(value)
            if len(seen) == 2:
                shot(page, "run-in-progress")
        time.sleep(0.5)

    assert status == "succeeded", page.locator(".run-error").text_content()
    moving = [v for v in seen if 0 < v < 1]
    assert moving and moving == sorted(moving), f"the progress bar did not move forward: {seen}"
    page.wait_for_selector("a[data-kind=onnx_int8]")
    shot(page, "run-succeeded")
    with page.expect_download() as download:
        page.click("a[data-kind=onnx_int8]")
    data = Path(download.value.path()).read_bytes()
    ((sha,),) = shared_stack.sql(
        "SELECT sha256 FROM jobs_artifact WHERE run_id = ? AND kind = 'onnx_int8'", run_id
    )
    assert hashlib.sha256(data).hexdigest() == sha


def test_a_negative_learning_rate_is_refused_next_to_its_field(shared_stack, page):
    base = shared_stack.url
    log_in(page, base)
    fill_launch_form(page, base, steps="4", lr="-1")

    page.click("#launch-button")

    error = page.locator("#field-lr .error")
    error.wait_for()
    assert "lr=-1" in error.text_content() and "greater than 0" in error.text_content()
    assert page.url == f"{base}/runs/new/"
    shot(page, "launch-form-inline-error")
