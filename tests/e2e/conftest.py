"""End-to-end fixtures: a private Redis, a seeded database to copy, installations (`Stack`s) made
of real processes, and a headless chromium. The helpers themselves live in stack.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import CHROMIUM_ARGS, SCREENSHOTS, RedisServer, Stack, redis_broker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory) -> Path:
    """migrate + seed_demo once (14 demo photos of 48 px, the teachers, user `demo`); each SQLite
    stack starts from a copy. The dataset's images stay here, read by every stack."""
    root = tmp_path_factory.mktemp("template")
    stack = Stack(root, f"sqlite:///{root / 'db.sqlite3'}", {"DISTILLERY_BROKER_URL": "memory://"})
    stack.manage("migrate", "--noinput", "-v", "0")
    stack.manage("seed_demo", "--count", "14", "--size", "48")
    return root


@pytest.fixture
def make_stack(tmp_path, seeded_template, request):
    """make_stack(broker={...}, **env) -> a Stack with a copy of the seeded SQLite database."""
    stacks: list[Stack] = []

    def make(broker: dict[str, str], **env: str) -> Stack:
        root = tmp_path / f"stack{len(stacks)}"
        root.mkdir()
        for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"):
            if (seeded_template / name).exists():
                shutil.copy(seeded_template / name, root / name)
        stack = Stack(root, f"sqlite:///{root / 'db.sqlite3'}", broker, **env)
        stacks.append(stack)
        return stack

    yield make
    failed = getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed
    for stack in stacks:
        stack.stop_all()
        if failed:
            print(stack.log_tails())  # shown under "Captured stdout teardown"


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory, seeded_template, redis_server) -> Iterator[Stack]:
    """One installation on Redis shared by the tests that need nothing special: web + worker."""
    root = tmp_path_factory.mktemp("shared")
    shutil.copy(seeded_template / "db.sqlite3", root / "db.sqlite3")
    stack = Stack(root, f"sqlite:///{root / 'db.sqlite3'}", redis_broker(redis_server.url(1)))
    try:
        stack.start_worker(wait=False)
        stack.start_web()
        stack.wait_ready("worker")
        yield stack
    finally:
        stack.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's outcome on the item, so fixtures can print logs on failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}-last.png"), full_page=True)
    context.close()
