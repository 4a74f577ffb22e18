"""`make demo`: migrate, seed, start a worker, the stale-run checker and the web server, launch one
demo run, and stop everything on Ctrl-C.

Everything lives under .demo/ (SQLite database, media, logs, and the broker folder when there is
no Redis), so a second `make demo` reuses what the first built. Redis is used when one answers
on 127.0.0.1:6379; otherwise kombu's filesystem transport, which needs no server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
PY = sys.executable
DEMO_STEPS = int(os.environ.get("DEMO_STEPS", "300"))
DEMO_IMAGES = int(os.environ.get("DEMO_IMAGES", "1000"))


def redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    """True when a Redis server replies to PING there."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As gunicorn binds: a port left in TIME_WAIT by the last `make demo` is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo_env() -> tuple[dict[str, str], str]:
    """The environment every child gets, and a description of the broker chosen."""
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"sqlite:///{DEMO / 'db.sqlite3'}")
    env.setdefault("DISTILLERY_MEDIA_ROOT", str(DEMO / "media"))
    env.setdefault("DISTILLERY_LOG_LEVEL", "INFO")
    # A run left training by Ctrl-C resumes 20 s into the next `make demo`, not a minute.
    env.setdefault("DISTILLERY_HEARTBEAT_STALE_SECONDS", "20")
    env["PYTHONUNBUFFERED"] = "1"
    if env.get("DISTILLERY_BROKER_URL"):
        return env, env["DISTILLERY_BROKER_URL"]
    if redis_answers():
        env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
        return env, f"Redis ({env['REDIS_URL']})"
    env["DISTILLERY_BROKER_URL"] = "filesystem://"
    env.setdefault("DISTILLERY_BROKER_FOLDER", str(DEMO / "broker"))
    return env, f"no Redis found: the filesystem broker in {env['DISTILLERY_BROKER_FOLDER']}"


def manage(env: dict[str, str], *args: str) -> None:
    """Run a management command in the foreground; stop the demo if it fails."""
    result = subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env)
    if result.returncode:
        sys.exit(f"`manage.py {' '.join(args)}` failed (exit {result.returncode}); see above")


class Children:
    """The long-running processes, each in its own process group with its log under .demo/logs."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = DEMO / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )

    def dead(self) -> str | None:
        """The name of a child that exited, if any."""
        return next((n for n, p in self.procs.items() if p.poll() is not None), None)

    def tail(self, name: str, lines: int = 20) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        # Celery's TERM waits for the running task to finish; QUIT stops at once (the run is
        # picked up again, from its checkpoint, by the next `make demo`).
        stop_signal = {"worker": signal.SIGQUIT}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, stop_signal.get(name, signal.SIGTERM))
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, pool children included
            proc.wait()


def wait_for_web(url: str, children: Children, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if children.dead():
            return
        try:
            with urllib.request.urlopen(url + "healthz/", timeout=2):
                return
        except OSError:
            time.sleep(0.5)


def local_agent(env: dict[str, str], url: str) -> Path:
    """Register the demo's local agent once; later demos reuse its config file."""
    config = DEMO / "agent.json"
    if config.is_file():
        return config
    token = subprocess.run(
        [PY, "manage.py", "enroll_token", "create", "--name", "demo", "--hours", "1", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(
        [
            PY,
            "-m",
            "pi_agent",
            "register",
            "--server",
            url.rstrip("/"),
            "--enroll-token",
            token,
            "--name",
            "this-machine",
            "--config",
            str(config),
        ],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return config


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    if not port_is_free(port):
        sys.exit(
            f"port {port} is in use on 127.0.0.1; stop what uses it or run PORT=8001 make demo"
        )
    DEMO.mkdir(exist_ok=True)
    env, broker = demo_env()
    print(f"distillery demo: database and files in {DEMO}, broker: {broker}", flush=True)

    manage(env, "migrate", "--noinput", "-v", "0")
    password_file = DEMO / "demo-password"
    manage(
        env,
        "seed_demo",
        "--count",
        str(DEMO_IMAGES),
        "--password-file",
        str(password_file),
        "--launch-run",
        str(DEMO_STEPS),
    )

    children = Children(env)
    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(True))
    try:
        children.start(
            "worker",
            [
                PY,
                "-m",
                "celery",
                "-A",
                "webapp",
                "worker",
                "-Q",
                "gpu,cpu",
                "--concurrency",
                "1",
                "-n",
                "demo@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
        )
        children.start("checker", [PY, "manage.py", "check_stale_runs", "--interval", "10"])
        children.start(
            "web",
            [
                PY,
                "-m",
                "gunicorn",
                "webapp.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--timeout",
                "120",
            ],
        )
        url = f"http://127.0.0.1:{port}/"
        wait_for_web(url, children)
        # One local device agent, so a device benchmark appears for the demo run the way one
        # from a Raspberry Pi would (same program, same API; this machine is the "device").
        children.start(
            "agent", [PY, "-m", "pi_agent", "run", "--config", str(local_agent(env, url))]
        )
        password = (
            os.environ.get("DISTILLERY_DEMO_PASSWORD")
            or os.environ.get("DEMO_PASSWORD")
            or (password_file.read_text().strip() if password_file.is_file() else "(as set before)")
        )
        print(
            f"\n  Distillery is running at {url}\n"
            f"  log in as: demo / {password}\n"
            "  the demo run trains in the background: watch it on the runs page\n"
            f"  logs: {children.logs}/{{web,worker,checker,agent}}.log\n"
            "  press Ctrl-C to stop\n",
            flush=True,
        )
        while not stopping:
            dead = children.dead()
            if dead:
                print(f"the {dead} process stopped; the end of its log:\n{children.tail(dead)}")
                return 1
            time.sleep(0.5)
        print("stopping…", flush=True)
        return 0
    finally:
        children.stop()


if __name__ == "__main__":
    sys.exit(main())
