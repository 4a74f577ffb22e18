"""Fixtures for the agent tests: a real ONNX student, a live server process on its own database,
agent subprocesses that cannot import torch or Django, and a TCP relay that breaks downloads.

The live server gets a database of its own (a migrated SQLite file, or a fresh PostgreSQL
database when DATABASE_URL points at PostgreSQL), and the test process's ORM is pointed at the
same database for the length of a test, so fixtures and assertions use plain model code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
BLOCKER = "import sys\nsys.modules['torch'] = None\nsys.modules['django'] = None\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a real ONNX student ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def onnx_student(tmp_path_factory) -> Path:
    """A small conv net exported with torch.onnx (legacy exporter), dynamic H and W, ~160 KB."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 3, 3, padding=1),
        nn.Sigmoid(),
    ).eval()
    path = tmp_path_factory.mktemp("onnx") / "student_fp32.onnx"
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            torch.rand(1, 3, 32, 32),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
    return path


@pytest.fixture(scope="session")
def blocker_dir(tmp_path_factory) -> Path:
    """A sitecustomize that makes `import torch` and `import django` fail."""
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return folder


def agent_env(blocker_dir: Path, home: Path) -> dict:
    """The environment agent subprocesses run in: no torch, no Django, a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker_dir), str(ROOT)])
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- databases ----------------------------------------------------------------------------------


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _pg_admin(url: str):
    import psycopg

    return psycopg.connect(
        _with_db(url, "postgres").replace("postgres://", "postgresql://", 1), autocommit=True
    )


def _manage(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def template_db(tmp_path_factory):
    """A migrated database that each test copies: a SQLite file, or a PostgreSQL template."""
    base = os.environ.get("DATABASE_URL", "")
    env = dict(os.environ)
    if base.startswith(("postgres://", "postgresql://")):
        name = f"agent_tmpl_{uuid.uuid4().hex[:8]}"
        with _pg_admin(base) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        env["DATABASE_URL"] = _with_db(base, name)
        done = _manage(["migrate", "-v0"], env)
        assert done.returncode == 0, done.stderr
        yield ("pg", base, name)
        with _pg_admin(base) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        path = tmp_path_factory.mktemp("db") / "template.sqlite3"
        env["DATABASE_URL"] = f"sqlite:///{path}"
        done = _manage(["migrate", "-v0"], env)
        assert done.returncode == 0, done.stderr
        yield ("sqlite", None, path)


@dataclass
class Server:
    """A `manage.py runserver` process; stop() and start() keep its port."""

    env: dict
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        with open(self.log, "a") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    PY,
                    "manage.py",
                    "runserver",
                    "--noreload",
                    "--skip-checks",
                    f"127.0.0.1:{self.port}",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/api/openapi.json", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Live:
    """One test's world: database, media folder, server(s), agents."""

    root: Path
    media: Path
    db_url: str
    blocker: Path
    onnx: Path
    servers: list[Server] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def server(self, **env: str) -> Server:
        """Start a live server; env overrides settings (e.g. DISTILLERY_AGENT_LEASE_SECONDS)."""
        full = dict(os.environ)
        full.update(
            DATABASE_URL=self.db_url,
            DISTILLERY_MEDIA_ROOT=str(self.media),
            DISTILLERY_AGENT_RUNS="5",
            DISTILLERY_AGENT_WARMUP="10",
            DISTILLERY_AGENT_INPUT_SIZE="32",
            PYTHONUNBUFFERED="1",
        )
        full.update(env)
        server = Server(env=full, log=self.root / f"server{len(self.servers)}.log")
        server.start()
        self.servers.append(server)
        return server

    def make_run(self, *, name: str = "tiny run", tamper: bool = False):
        """A succeeded run with a real fp32 ONNX artifact and two sample pairs on disk."""
        import onnxruntime as ort

        from jobs.models import Artifact, Dataset, Run, Teacher

        dataset, _ = Dataset.objects.get_or_create(
            name="tiny", defaults={"path": str(self.root), "status": "ready"}
        )
        teacher, _ = Teacher.objects.get_or_create(
            name="opencv:stylization", defaults={"spec": "opencv:stylization"}
        )
        run = Run.objects.create(name=name, dataset=dataset, teacher=teacher, status="succeeded")
        out = self.media / "runs" / str(run.pk)
        (out / "samples").mkdir(parents=True)
        model = out / "student_fp32.onnx"
        shutil.copy(self.onnx, model)
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(1)
        for i in range(2):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            x = image.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
            y = session.run(None, {"input": x})[0][0].transpose(1, 2, 0)
            Image.fromarray(image).save(out / "samples" / f"{i:03d}_input.png")
            teacher_img = np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)
            Image.fromarray(teacher_img).save(out / "samples" / f"{i:03d}_teacher.png")
        if tamper:  # bytes change after the sha256 was recorded
            data = bytearray(model.read_bytes())
            data[len(data) // 2] ^= 0xFF
            model.write_bytes(bytes(data))
        artifact = Artifact.objects.create(
            run=run,
            kind=Artifact.Kind.ONNX_FP32,
            path=f"runs/{run.pk}/student_fp32.onnx",
            size_bytes=self.onnx.stat().st_size,
            sha256=sha,
        )
        return run, artifact

    def agent(self, *args: str, name: str = "pi", wait: bool = True, timeout: float = 240):
        """Run `python -m pi_agent ARGS` as `name` (own HOME and config); returns the process."""
        home = self.root / f"home-{name}"
        home.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [PY, "-m", "pi_agent", *args, "--config", str(home / "agent.json")],
            cwd=home,
            env=agent_env(self.blocker, home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        if wait:
            proc.out, proc.err = proc.communicate(timeout=timeout)
        return proc

    def register(self, server_url: str, name: str, token: str | None = None) -> dict:
        """Register an agent through the CLI; tune its config for fast tests; return it."""
        from jobs.models import EnrollmentToken

        if token is None:
            _, token = EnrollmentToken.issue(name="test")
        proc = self.agent(
            "register", "--server", server_url, "--enroll-token", token, "--name", name, name=name
        )
        assert proc.returncode == 0, proc.err
        path = self.root / f"home-{name}" / "agent.json"
        config = json.loads(path.read_text())
        config.update(poll_seconds=0.3, backoff_base=0.3, backoff_cap=2.0, timeout=10)
        path.write_text(json.dumps(config))
        return config

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for server in self.servers:
            server.stop()


@pytest.fixture
def live(template_db, tmp_path, onnx_student, blocker_dir, django_db_blocker):
    """A per-test database copied from the template, shared by this process and its servers."""
    from django.db import connections

    kind, base, source = template_db
    if kind == "pg":
        name = f"agent_{uuid.uuid4().hex[:10]}"
        with _pg_admin(base) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        db_url, db_name = _with_db(base, name), name
    else:
        db_name = str(tmp_path / "live.sqlite3")
        shutil.copy(source, db_name)
        db_url = f"sqlite:///{db_name}"
    conn = connections["default"]
    conn.close()
    saved = conn.settings_dict["NAME"]
    conn.settings_dict["NAME"] = db_name
    world = Live(
        root=tmp_path,
        media=tmp_path / "media",
        db_url=db_url,
        blocker=blocker_dir,
        onnx=onnx_student,
    )
    world.media.mkdir()
    try:
        with django_db_blocker.unblock():
            yield world
    finally:
        world.close()
        conn.close()
        conn.settings_dict["NAME"] = saved
        if kind == "pg":
            with _pg_admin(base) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


# -- a TCP relay that breaks downloads ----------------------------------------------------------


class FaultyRelay:
    """Forwards 127.0.0.1:port to a server; can cut or hold an artifact download part-way.

    cut_after(n): the first download response is cut after n bytes (both sockets closed).
    hold_after(n): the first download response stops after n bytes and hangs there.
    """

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.mode: str | None = None
        self.limit = 0
        self.tripped = threading.Event()
        self.release = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, nbytes: int) -> None:
        self.mode, self.limit = "cut", nbytes

    def hold_after(self, nbytes: int) -> None:
        self.mode, self.limit = "hold", nbytes

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
        except OSError:
            client.close()  # the server is down: the agent sees the connection drop
            return
        upstream.settimeout(None)
        state = {"download": False}

        def pump_up() -> None:
            try:
                while data := client.recv(65536):
                    if re.search(rb"GET /api/artifacts/\d+/download", data):
                        state["download"] = True
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                upstream.close()

        threading.Thread(target=pump_up, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(8192):
                armed = state["download"] and self.mode and not self.tripped.is_set()
                if armed and sent + len(data) >= self.limit:
                    client.sendall(data[: max(0, self.limit - sent)])
                    self.tripped.set()
                    if self.mode == "hold":
                        self.release.wait()
                    break
                if state["download"]:
                    sent += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.release.set()
        self.sock.close()


@pytest.fixture
def relay_to():
    relays = []

    def make(server: Server) -> FaultyRelay:
        relay = FaultyRelay(server.port)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.close()
