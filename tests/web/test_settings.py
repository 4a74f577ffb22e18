"""Settings come from the environment, fail loudly on bad values, and pass `check --deploy`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp.settings import envbool, envint, envlist, envstr

REPO = Path(__file__).resolve().parents[2]
STRONG_KEY = "k3Y-" + "x9Qz_7vLm2Rt" * 5


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run manage.py in a fresh process with extra environment variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_envbool_reads_the_usual_spellings(monkeypatch):
    for raw, value in [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("off", False)]:
        monkeypatch.setenv("DISTILLERY_DEBUG", raw)
        assert envbool("DISTILLERY_DEBUG", not value) is value
    monkeypatch.delenv("DISTILLERY_DEBUG")
    assert envbool("DISTILLERY_DEBUG", True) is True


def test_envbool_refuses_maybe(monkeypatch):
    monkeypatch.setenv("DISTILLERY_DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured) as err:
        envbool("DISTILLERY_DEBUG", True)
    assert str(err.value) == "DISTILLERY_DEBUG='maybe': use 1/0, true/false, yes/no"


def test_envint_refuses_text_and_small_numbers(monkeypatch):
    monkeypatch.setenv("DISTILLERY_HEARTBEAT_STALE_SECONDS", "a minute")
    with pytest.raises(ImproperlyConfigured, match="expected a whole number"):
        envint("DISTILLERY_HEARTBEAT_STALE_SECONDS", 60)
    monkeypatch.setenv("DISTILLERY_HEARTBEAT_STALE_SECONDS", "1")
    with pytest.raises(ImproperlyConfigured, match="must be at least 5"):
        envint("DISTILLERY_HEARTBEAT_STALE_SECONDS", 60, minimum=5)
    monkeypatch.setenv("DISTILLERY_HEARTBEAT_STALE_SECONDS", "90")
    assert envint("DISTILLERY_HEARTBEAT_STALE_SECONDS", 60) == 90


def test_envstr_and_envlist_fall_back_when_empty(monkeypatch):
    monkeypatch.setenv("DISTILLERY_ALLOWED_HOSTS", " a.example , b.example,")
    assert envlist("DISTILLERY_ALLOWED_HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("DISTILLERY_MEDIA_ROOT", "")
    assert envstr("DISTILLERY_MEDIA_ROOT", "/srv/media") == "/srv/media"


@pytest.mark.sqlite_only
def test_a_bad_debug_value_stops_manage_py_with_its_name():
    result = manage("check", DISTILLERY_DEBUG="maybe")
    assert result.returncode != 0
    assert "DISTILLERY_DEBUG='maybe': use 1/0, true/false, yes/no" in result.stderr


@pytest.mark.sqlite_only
def test_production_refuses_to_start_without_a_secret_key():
    result = manage("check", DISTILLERY_PRODUCTION="1")
    assert result.returncode != 0
    assert "DISTILLERY_SECRET_KEY is required when DISTILLERY_PRODUCTION=1" in result.stderr


@pytest.mark.sqlite_only
def test_production_refuses_a_weak_secret_key():
    result = manage("check", DISTILLERY_PRODUCTION="1", DISTILLERY_SECRET_KEY="short")
    assert result.returncode != 0
    assert "too weak" in result.stderr


@pytest.mark.sqlite_only
def test_check_deploy_is_clean_in_production():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DISTILLERY_PRODUCTION="1",
        DISTILLERY_SECRET_KEY=STRONG_KEY,
        DISTILLERY_ALLOWED_HOSTS="distillery.example.org",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


@pytest.mark.sqlite_only
def test_sqlite_waits_for_locks_instead_of_failing(settings):
    db = settings.DATABASES["default"]
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["OPTIONS"]["timeout"] >= 20
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
