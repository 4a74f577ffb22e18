"""The web tests' small fixed cast: alice, one ready dataset, one built-in teacher, and factories
for runs and artifacts. Files go to a per-test MEDIA_ROOT; messages go to a real Redis."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
import redis
from django.contrib.auth.models import User

from jobs.models import Artifact, Dataset, Run, Teacher

TEST_REDIS_URL = os.environ.get("DISTILLERY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path: Path) -> Path:
    """Each test writes uploads and artifacts under its own MEDIA_ROOT."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    settings.DISTILLERY_DATASET_ROOTS = [tmp_path.resolve()]
    return root


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice", "alice@example.org", "correct horse battery")


@pytest.fixture
def client_alice(client, alice):
    """A test client logged in as alice."""
    client.force_login(alice)
    return client


@pytest.fixture
def dataset(db, tmp_path: Path) -> Dataset:
    folder = tmp_path / "photos"
    folder.mkdir()
    return Dataset.objects.create(
        name="photos",
        path=str(folder),
        status=Dataset.Status.READY,
        progress=1.0,
        counts={"train": 7, "val": 2, "test": 1},
    )


@pytest.fixture
def teacher(db) -> Teacher:
    return Teacher.objects.create(
        name="stylization", spec="opencv:stylization", builtin=True, fingerprint="ab" * 32
    )


@pytest.fixture
def make_run(dataset, teacher, alice):
    """make_run(status="failed", steps=5, ...) -> a Run with the tiny preset's config."""

    def make(status: str = Run.Status.QUEUED, **fields) -> Run:
        from distill_core.presets import get_preset

        config = get_preset("tiny").to_dict()
        fields.setdefault("name", "tiny run")
        fields.setdefault("preset", "tiny")
        return Run.objects.create(
            dataset=fields.pop("dataset", dataset),
            teacher=fields.pop("teacher", teacher),
            config=config,
            total_steps=config["steps"],
            status=status,
            created_by=alice,
            **fields,
        )

    return make


@pytest.fixture
def make_artifact(media_root: Path):
    """make_artifact(run, kind, content=b"...") -> an Artifact whose file and sha256 match."""

    def make(run: Run, kind: str = Artifact.Kind.ONNX_INT8, content: bytes = b"onnx", **fields):
        rel = Path("runs") / str(run.pk) / f"student_{kind.removeprefix('onnx_')}.onnx"
        (media_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (media_root / rel).write_bytes(content)
        return Artifact.objects.create(
            run=run,
            kind=kind,
            path=str(rel),
            size_bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            **fields,
        )

    return make


@pytest.fixture
def broker():
    """Point the Celery app at a real Redis under a key prefix of its own; yields (client, prefix).

    The prefix keeps these messages away from any worker listening on the same database, and
    every key under it is deleted afterwards.
    """
    from webapp.celery import app

    prefix = f"distillery-webtest-{uuid.uuid4().hex[:8]}:"
    saved = (app.conf.broker_url, dict(app.conf.broker_transport_options or {}))
    app.conf.broker_url = TEST_REDIS_URL
    app.conf.broker_transport_options = {**saved[1], "global_keyprefix": prefix}
    _drop_connections(app)
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        yield client, prefix
    finally:
        _drop_connections(app)
        app.conf.broker_url, app.conf.broker_transport_options = saved
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def _drop_connections(app) -> None:
    """Forget pooled broker connections so the next send uses the current broker settings."""
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None
