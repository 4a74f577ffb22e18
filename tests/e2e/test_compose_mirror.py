"""docker-compose.yml, checked and mirrored natively (no Docker engine runs here): the very
commands of its services (migrate, gunicorn, the gpu and cpu workers, the checker) run against a
real Redis and PostgreSQL, with the settings of .env.example, and carry one run and one dataset
ingestion to the end through the web app."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import yaml
from stack import (
    PG_ADMIN_URL,
    ROOT,
    Stack,
    assert_artifacts_match_files,
    free_port,
    parse_form,
    redis_broker,
    wait_until,
)

APP_SERVICES = ("migrate", "web", "worker-gpu", "worker-cpu", "checker")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def native(command: list[str], port: int) -> list[str]:
    """A service's command as run here: this virtualenv's programs, the web port on localhost."""
    program, *args = command
    argv = [sys.executable] if program == "python" else [sys.executable, "-m", program]
    return argv + [f"127.0.0.1:{port}" if a == "0.0.0.0:8000" else a for a in args]


def test_the_compose_file_declares_every_service_with_health_checks_and_a_gpu():
    services = compose()["services"]

    assert set(services) == {*APP_SERVICES, "redis", "postgres"}
    for name in APP_SERVICES:
        assert services[name]["image"] == "distillery:latest"
        assert services[name]["env_file"][0]["path"] == ".env.example"
    for name in ("web", "worker-gpu", "worker-cpu"):
        assert services[name]["volumes"] == ["media:/data/media"]
    for name in ("web", "worker-gpu", "worker-cpu", "redis", "postgres"):
        assert services[name]["healthcheck"]["test"]
    gpu = services["worker-gpu"]
    assert gpu["command"][gpu["command"].index("-Q") + 1] == "gpu"
    assert gpu["command"][gpu["command"].index("--concurrency") + 1] == "1"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    cpu = services["worker-cpu"]["command"]
    assert cpu[cpu.index("-Q") + 1] == "cpu"
    assert "--appendonly" in services["redis"]["command"]


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"distillery_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_compose_services_run_natively_and_complete_a_run_and_an_ingestion(
    tmp_path: Path, postgres_url: str, redis_server
):
    services = compose()["services"]
    settings = env_example()
    # The compose network's services become local ones (PostgreSQL, a private Redis), the media
    # volume a folder, and the demo login the tests' one.
    for key in ("DATABASE_URL", "REDIS_URL", "DISTILLERY_MEDIA_ROOT", "DISTILLERY_DEMO_PASSWORD"):
        settings.pop(key)
    settings["DISTILLERY_DATASET_ROOTS"] = str(tmp_path)
    stack = Stack(tmp_path, postgres_url, redis_broker(redis_server.url(3)), **settings)
    port = free_port()
    try:
        migrate = stack.start("migrate", native(services["migrate"]["command"], port))
        assert migrate.wait(timeout=120) == 0, stack.log("migrate")
        stack.manage("seed_demo", "--count", "14", "--size", "48")
        stack.port = port
        for name in ("worker-gpu", "worker-cpu", "checker"):
            stack.start(name, native(services[name]["command"], port))
        stack.start("web", native(services["web"]["command"], port))
        for name in ("worker-gpu", "worker-cpu"):
            wait_until(lambda n=name: "ready." in stack.log(n), 90, f"{name} to be ready")
        wait_until(stack._web_answers, 60, "gunicorn's /healthz/")
        client = stack.client()
        client.login()

        run_id = client.launch(steps=4)
        page = client.get("/datasets/new/")
        form = parse_form(page.text, field="folder")
        folder = str(stack.media / "datasets" / "demo")
        created = client.post(
            "/datasets/new/",
            data={**form["fields"], "name": "more photos", "folder": folder},
            headers={"Referer": page.url},
        )
        final = client.wait_for(run_id, ("succeeded", "failed", "cancelled"))

        assert final["status"] == "succeeded", final["error"]
        assert_artifacts_match_files(stack, run_id)
        ((worker,),) = stack.sql("SELECT worker FROM jobs_run WHERE id = ?", run_id)
        assert worker.startswith("gpu@")
        status_url = created.url.removeprefix(stack.url) + "status.json"
        ingested = wait_until(
            lambda: (d := client.get(status_url).json())["status"] in ("ready", "failed") and d,
            60,
            "the cpu worker to ingest the dataset",
        )
        assert ingested["status"] == "ready", ingested["error"]
        assert "jobs.tasks.ingest_dataset" in stack.log("worker-cpu")
    finally:
        stack.stop_all()
