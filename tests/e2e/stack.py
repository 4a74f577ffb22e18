"""Whole Distillery installations made of real processes, and a user that talks to them.

A `Stack` is one installation for a test: its own database (a SQLite file, or a PostgreSQL
database), media folder and broker (a private redis-server, or kombu's filesystem transport), and
the processes the test starts (gunicorn, Celery workers, the stale-run checker), each in its own
process group so a test can SIGKILL a worker the way a machine dies. Tests talk to it over HTTP
like a user, and read the database with plain SQL to check what the pages do not show.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SCREENSHOTS = ROOT / "test-output" / "screenshots"
PASSWORD = "e2e-password-3141"
PG_ADMIN_URL = os.environ.get(
    "DISTILLERY_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
# The form's fields for the `tiny` preset (32 px, ~1.7 K parameters), validated every 5 steps.
TINY_FIELDS = {"image_size": "32", "batch_size": "2", "seed": "0"}
TINY_EXTRA = '{"eval_every": 20, "checkpoint_every": 10, "latency_runs": 2}'
# Only what the processes need from our own environment: nothing of the test process' settings.
_OURS = re.compile(r"^(DISTILLERY_|DATABASE_URL$|REDIS_URL$|DJANGO_SETTINGS_MODULE$)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll until predicate() is truthy; returns its value or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- brokers ---------------------------------------------------------------------------------
class RedisServer:
    """A private redis-server on a free port, with nothing on disk (like the CI Redis)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_until(self.answers, 10, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: everything it held in memory is gone."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- an installation -------------------------------------------------------------------------
class Stack:
    """One Distillery installation: env for its processes, the processes, SQL on its database."""

    def __init__(self, root: Path, database_url: str, broker: dict[str, str], **env: str) -> None:
        self.root = root
        self.media = root / "media"
        self.logs = root / "logs"
        self.media.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.env = {k: v for k, v in os.environ.items() if not _OURS.match(k)}
        self.env.update(
            {
                "DISTILLERY_MEDIA_ROOT": str(self.media),
                "DISTILLERY_DEMO_PASSWORD": PASSWORD,
                "DISTILLERY_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                # One OpenMP thread per process: on two cores shared by the web server, workers and
                # the browser, torch's spinning thread pool made a tiny step 15x slower.
                "OMP_NUM_THREADS": "1",
                **broker,
                **env,  # may override the defaults above
                "DATABASE_URL": database_url,
            }
        )
        self.procs: dict[str, subprocess.Popen] = {}
        self.port: int | None = None

    # -- processes --
    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stderr[-3000:]}"
        return result.stdout

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self.procs[name]

    def start_worker(
        self, name: str = "worker", queues: str = "gpu,cpu", wait: bool = True, **env: str
    ) -> None:
        self.start(
            name,
            [PY, "-m", "celery", "-A", "webapp", "worker", "-Q", queues, "--concurrency", "1",
             "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
             "--loglevel", "INFO"],
            **env,
        )  # fmt: skip
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        """Wait for a Celery worker's "ready." line (it has imported torch by then)."""
        wait_until(lambda: "ready." in self.log(name), 120, f"celery worker {name} to be ready")

    def start_checker(self, interval: float = 1.0) -> None:
        self.start("checker", [PY, "manage.py", "check_stale_runs", "--interval", str(interval)])

    def start_web(self, argv: list[str] | None = None) -> str:
        """gunicorn on a free port (or `argv`, binding self.port); returns the base URL."""
        self.port = free_port()
        # One process with threads: the launch form imports torch once, not once per process.
        argv = argv or [PY, "-m", "gunicorn", "webapp.wsgi", "--bind", f"127.0.0.1:{self.port}",
                        "--workers", "1", "--threads", "4", "--timeout", "120"]  # fmt: skip
        self.start("web", argv)
        wait_until(self._web_answers, 90, "the web server's /healthz/")
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _web_answers(self) -> bool:
        if self.procs["web"].poll() is not None:
            raise AssertionError(f"the web server exited:\n{self.log('web')[-3000:]}")
        try:
            return requests.get(self.url + "/healthz/", timeout=2).ok
        except requests.RequestException:
            return False

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and everything it started (a Celery worker and its pool child)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                with_group = signal.SIGQUIT if "worker" in name else signal.SIGTERM
                try:
                    os.killpg(proc.pid, with_group)
                except ProcessLookupError:
                    continue
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"----- {p.name} -----\n"
            + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
            for p in sorted(self.logs.glob("*.log"))
        )

    # -- the database --
    def sql(self, query: str, *params) -> list[tuple]:
        """Rows of a query on this stack's database (placeholders written as `?`)."""
        if self.database_url.startswith("sqlite:"):
            path = self.database_url.removeprefix("sqlite:///")
            with sqlite3.connect(path, timeout=30) as conn:
                return conn.execute(query, params).fetchall()
        import psycopg

        with psycopg.connect(self.database_url) as conn:
            return conn.execute(query.replace("%", "%%").replace("?", "%s"), params).fetchall()

    def client(self) -> Client:
        return Client(self.url)


def filesystem_broker(folder: Path) -> dict[str, str]:
    return {"DISTILLERY_BROKER_URL": "filesystem://", "DISTILLERY_BROKER_FOLDER": str(folder)}


def redis_broker(url: str) -> dict[str, str]:
    return {"REDIS_URL": url}


# -- talking to it like a user -----------------------------------------------------------------
class FormFields(HTMLParser):
    """The fields of the forms on a page, with the values a browser would submit."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self._select: str | None = None
        self._option = ""
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "fields": {}, "options": {}})
        elif not self.forms:
            return
        fields = self.forms[-1]["fields"]
        if tag == "input" and a.get("name") and a.get("type") not in ("submit", "file"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                return
            fields[a["name"]] = a.get("value") or ""
        elif tag == "select":
            self._select = a.get("name")
            fields.setdefault(self._select, None)
        elif tag == "option" and self._select:
            self.forms[-1]["options"].setdefault(self._select, []).append(a.get("value", ""))
            self._option = a.get("value", "")
            if "selected" in a or fields.get(self._select) is None:
                fields[self._select] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a.get("name")
            fields[self._textarea] = ""

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea and self.forms:
            self.forms[-1]["fields"][self._textarea] += data
        if self._select and self.forms:
            labels = self.forms[-1].setdefault("labels", {}).setdefault(self._select, {})
            labels[self._option] = labels.get(self._option, "") + data


def parse_form(html: str, action: str = "", field: str | None = None) -> dict:
    """The first form posting to `action` (any, when empty) that has `field` (if given)."""
    parser = FormFields()
    parser.feed(html)
    for form in parser.forms:
        if action and not form["action"].rstrip("/").endswith(action.rstrip("/")):
            continue
        if field is None or field in form["fields"]:
            return form
    raise AssertionError(f"no form posting to {action or 'this page'} with {field} on the page")


class Client(requests.Session):
    """A user with a browser that does not run JavaScript: logs in, fills forms, polls status."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.base_url + url if url.startswith("/") else url,
                               *args, **kwargs)  # fmt: skip

    def login(self, username: str = "demo", password: str = PASSWORD) -> None:
        page = self.get("/accounts/login/")
        form = parse_form(page.text, field="username")
        answer = self.post(
            "/accounts/login/",
            data={**form["fields"], "username": username, "password": password},
            headers={"Referer": page.url},
        )
        assert answer.ok and "/accounts/login/" not in answer.url, "login failed"

    def launch(self, steps: int, teacher: str = "OpenCV stylization", **fields: str) -> int:
        """Fill the launch form with the tiny preset and submit it; returns the new run's id."""
        page = self.get("/runs/new/?preset=tiny")
        form = parse_form(page.text, "/runs/new/")
        labels = form.get("labels", {})
        data = dict(form["fields"])
        data["teacher"] = next(v for v, text in labels["teacher"].items() if teacher in text)
        data["dataset"] = next(v for v, text in labels["dataset"].items() if "demo" in text)
        data.update(preset="tiny", steps=str(steps), extra=TINY_EXTRA, **TINY_FIELDS)
        data.update(fields)
        answer = self.post("/runs/new/", data=data, headers={"Referer": page.url})
        match = re.search(r"/runs/(\d+)/$", answer.url)
        assert match, f"the launch form did not start a run:\n{answer.text[:3000]}"
        return int(match.group(1))

    def status(self, run_id: int) -> dict:
        return self.get(f"/runs/{run_id}/status.json").json()

    def wait_for(self, run_id: int, states: tuple[str, ...], timeout: float = 180) -> dict:
        return wait_until(
            lambda: (s := self.status(run_id))["status"] in states and s,
            timeout,
            f"run {run_id} to reach {' or '.join(states)}",
            interval=0.5,
        )

    def cancel(self, run_id: int) -> None:
        page = self.get(f"/runs/{run_id}/")
        form = parse_form(page.text, f"/runs/{run_id}/cancel/")
        self.post(f"/runs/{run_id}/cancel/", data=form["fields"], headers={"Referer": page.url})


def assert_artifacts_match_files(stack: Stack, run_id: int) -> list[tuple]:
    """The run has fp32, int8 and fp16 ONNX artifacts whose sha256 and size match the files."""
    import hashlib

    rows = stack.sql(
        "SELECT id, kind, path, sha256, size_bytes FROM jobs_artifact "
        "WHERE run_id = ? AND kind LIKE 'onnx_%' ORDER BY kind",
        run_id,
    )
    assert sorted(r[1] for r in rows) == ["onnx_fp16", "onnx_fp32", "onnx_int8"]
    for _, kind, path, sha, size in rows:
        data = (stack.media / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, f"{kind}: sha256 differs from the file"
        assert len(data) == size, f"{kind}: size differs from the file"
    return rows


def steps_lasting(stack: Stack, seconds: float) -> int:
    """How many tiny steps train for about `seconds` here and now (a step takes 10 ms on an idle
    machine and 50 times that on a busy one), measured with a 20-step run on `stack`'s worker."""
    client = stack.client()
    client.login()
    probe = client.launch(steps=20)
    client.wait_for(probe, ("succeeded",))
    ((report,),) = stack.sql("SELECT report FROM jobs_run WHERE id = ?", probe)
    report = json.loads(report) if isinstance(report, str) else report  # SQLite keeps text
    per_step = report["train_seconds"] / report["steps_done"]
    return max(40, min(3000, int(seconds / per_step)))
