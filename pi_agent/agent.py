"""The device agent: its config file, registration, and the claim → download → benchmark loop."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from pi_agent.client import ApiError, ChecksumMismatch, Client, Stopped, file_sha256
from pi_agent.facts import collect_facts

log = logging.getLogger("pi_agent")

DEFAULT_CONFIG = "~/.config/distillery-agent.json"
DEFAULT_CACHE = "~/.cache/distillery-agent"
KEEP_CACHED_MODELS = 10
# PSNR of identical images is infinite; JSON has no infinity, and 100 dB already means "same".
PSNR_CAP_DB = 100.0


class AgentError(Exception):
    """Something the person running the agent has to fix; the message says what."""


class DownloadFailed(Exception):
    """The server could not hand out the artifact (its file is gone): report, do not retry."""


@dataclass
class AgentConfig:
    """What `register` writes and `run` reads; the token makes it a secret (mode 0600)."""

    server: str
    token: str
    agent_id: int
    name: str
    cache_dir: str = DEFAULT_CACHE
    poll_seconds: float = 10.0
    heartbeat_seconds: float = 60.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    timeout: float = 30.0

    def client(self, stop: threading.Event | None = None, **kwargs) -> Client:
        """A client for this server with this agent's token."""
        opts = {
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
            "timeout": self.timeout,
            **kwargs,
        }
        return Client(self.server, self.token, stop=stop, **opts)


def config_path(path: str | os.PathLike | None = None) -> Path:
    """--config, else $DISTILLERY_AGENT_CONFIG, else ~/.config/distillery-agent.json."""
    return Path(path or os.environ.get("DISTILLERY_AGENT_CONFIG") or DEFAULT_CONFIG).expanduser()


def save_config(config: AgentConfig, path: Path) -> None:
    """Write the config atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover tmp file may have had wider permissions
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(config), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def load_config(path: Path) -> AgentConfig:
    """Read the config `register` wrote; say how to make one when it is missing or broken."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AgentError(
            f"no agent config at {path}: register this device first with "
            "`python -m pi_agent register --server URL --enroll-token TOKEN`"
        ) from None
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read agent config {path} ({exc}): register again") from None
    if path.stat().st_mode & 0o077:
        log.warning("%s was readable by other users; restricting it to its owner", path)
        path.chmod(0o600)
    known = {f.name for f in fields(AgentConfig)}
    missing = {"server", "token", "agent_id", "name"} - data.keys()
    if missing:
        raise AgentError(f"agent config {path} lacks {sorted(missing)}: register again")
    return AgentConfig(**{k: v for k, v in data.items() if k in known})


def register(
    server: str,
    enroll_token: str,
    name: str | None = None,
    path: Path | None = None,
    cache_dir: str | None = None,
) -> AgentConfig:
    """Exchange an enrollment token for this agent's own token and save it to the config file."""
    path = path or config_path()
    name = name or socket.gethostname()
    client = Client(server, max_attempts=5)
    try:
        reply = client.call(
            "POST",
            "/api/agents/register",
            {"enroll_token": enroll_token, "name": name, "facts": collect_facts()},
        )
    except ApiError as exc:
        raise AgentError(f"registration refused: {exc.message}") from None
    except ConnectionError as exc:
        raise AgentError(f"cannot reach {server}: {exc}. Is the URL right?") from None
    config = AgentConfig(
        server=server.rstrip("/"),
        token=reply["token"],
        agent_id=reply["agent_id"],
        name=name,
        cache_dir=cache_dir or DEFAULT_CACHE,
    )
    save_config(config, path)
    return config


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] (data range 1)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * float(np.log10(1.0 / mse)))


def on_device_psnr(model_path: Path, arrays: dict[str, np.ndarray]) -> float | None:
    """Run the model on the job's test inputs; mean PSNR of its outputs vs the teacher's."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores = []
    for key in sorted(k for k in arrays if k.startswith("input_")):
        teacher = arrays.get("teacher_" + key.removeprefix("input_"))
        if teacher is None:
            continue
        out = session.run(None, {name: arrays[key].astype(np.float32)})[0]
        # Outputs are saved as images, so values outside [0, 1] never reach a user.
        scores.append(psnr(np.clip(out, 0.0, 1.0), teacher))
    return float(np.mean(scores)) if scores else None


class _LeaseKeeper(threading.Thread):
    """Heartbeats for a job while it runs, so a slow device does not lose its lease."""

    def __init__(self, config: AgentConfig, job_id: int, interval: float):
        super().__init__(daemon=True, name=f"lease-{job_id}")
        self.done = threading.Event()
        self.client = config.client(stop=self.done, max_attempts=1)
        self.job_id = job_id
        self.interval = interval

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.client.call("POST", "/api/agents/heartbeat", {"job_id": self.job_id})
            except (ApiError, ConnectionError, Stopped) as exc:
                log.warning("lease heartbeat for job %s failed: %s", self.job_id, exc)


class Agent:
    """Polls one server for benchmark jobs and runs them one at a time."""

    def __init__(self, config: AgentConfig, stop: threading.Event | None = None):
        self.config = config
        self.stop = stop or threading.Event()
        self.client = config.client(stop=self.stop)
        self.cache = Path(config.cache_dir).expanduser()
        self.jobs_done = 0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop after the current measurement, release the job, exit 0."""

        def handle(signum: int, _frame: object) -> None:
            log.info("got %s: releasing any job and stopping", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def heartbeat(self, facts: dict | None = None) -> None:
        self.client.call("POST", "/api/agents/heartbeat", {"facts": facts} if facts else {})

    def run(self, once: bool = False) -> int:
        """Loop until stopped (or, with once, until the queue is empty). Returns an exit code."""
        try:
            self.heartbeat(collect_facts())
            last_beat = time.monotonic()
            while not self.stop.is_set():
                if time.monotonic() - last_beat > self.config.heartbeat_seconds:
                    self.heartbeat()
                    last_beat = time.monotonic()
                try:
                    job = self.client.call("POST", "/api/jobs/claim", {})
                except ApiError as exc:
                    if exc.status == 401:
                        raise
                    # A server bug or a proxy error page: keep the agent alive and ask again later.
                    log.error("claiming a job failed: %s", exc)
                    if once or self.stop.wait(self.config.poll_seconds * 6):
                        break
                    continue
                if job is None:
                    if once or self.stop.wait(self.config.poll_seconds):
                        break
                    continue
                self.process(job)
        except Stopped:
            pass
        except ApiError as exc:
            if exc.status == 401:
                log.error(
                    "the server refused this agent's token (%s): it was revoked or the server "
                    "was reset; register again with a new enrollment token",
                    exc.message,
                )
                return 2
            raise
        log.info("stopped after %d job(s)", self.jobs_done)
        return 0

    def process(self, job: dict) -> str:
        """Run one claimed job to a posted result, failure or release; returns which."""
        job_id = job["job_id"]
        lease = float(job.get("lease_seconds") or 300)
        keeper = _LeaseKeeper(self.config, job_id, max(0.5, lease / 3))
        keeper.start()
        log.info("job %s: artifact %s (%s)", job_id, job["artifact"]["id"], job["artifact"]["kind"])
        try:
            outcome = self._run_job(job)
        except ChecksumMismatch as exc:
            log.error("job %s: %s", job_id, exc)
            outcome = self._post_failure(job_id, "checksum_mismatch", str(exc))
        except DownloadFailed as exc:
            log.error("job %s: %s", job_id, exc)
            outcome = self._post_failure(job_id, "download_error", str(exc))
        except Stopped:
            outcome = self._release(job_id)
        except ApiError as exc:
            if exc.status == 401:
                raise
            # 403/404/409: the job was taken back or deleted; nothing of ours to report.
            log.warning("job %s: dropped, %s", job_id, exc)
            outcome = "dropped"
        except Exception as exc:  # onnxruntime and numpy errors: report, keep serving
            log.exception("job %s failed", job_id)
            outcome = self._post_failure(job_id, "runtime_error", f"{type(exc).__name__}: {exc}")
        finally:
            keeper.done.set()
        if outcome == "released":
            raise Stopped("released job after a stop request")
        return outcome

    def _run_job(self, job: dict) -> str:
        from pi_agent import bench  # onnxruntime loads only when there is work

        job_id = job["job_id"]
        model = self.fetch_artifact(job["artifact"])
        arrays = (
            self.fetch_test_inputs(job["test_inputs_url"]) if job.get("test_inputs_url") else {}
        )
        results = []
        for threads in job["threads"]:
            if self.stop.is_set():
                return self._release(job_id)
            stats = bench.benchmark_onnx(
                model,
                input_size=job["input_size"],
                threads=threads,
                warmup=job["warmup"],
                runs=job["runs"],
                time_budget_s=job.get("time_budget_s"),
            )
            rss = bench.measure_peak_rss(model, job["input_size"], threads)
            results.append(_result_row(stats, rss, threads, job["input_size"]))
            log.info("job %s: %d thread(s) p50 %.2f ms", job_id, threads, stats["p50_ms"])
        if self.stop.is_set():
            return self._release(job_id)
        score = on_device_psnr(model, arrays) if arrays else None
        environment = {**bench.environment(), "agent": "pi_agent"}
        body = {"results": results, "psnr_vs_teacher": score, "environment": environment}
        self.client.call("POST", f"/api/jobs/{job_id}/result", body)
        self.jobs_done += 1
        log.info("job %s: result posted", job_id)
        return "done"

    def fetch_artifact(self, artifact: dict) -> Path:
        """The artifact from the cache when its hash still matches, else downloaded."""
        dest = self.cache / f"{artifact['sha256']}.onnx"
        if dest.exists() and file_sha256(dest) == artifact["sha256"]:
            dest.touch()
            return dest
        try:
            self.client.download(
                artifact["download_url"], dest, artifact["sha256"], artifact.get("size_bytes")
            )
        except ApiError as exc:
            if exc.status in (404, 410):
                raise DownloadFailed(f"artifact {artifact['id']}: {exc.message}") from None
            raise
        self._prune_cache()
        return dest

    def fetch_test_inputs(self, url: str) -> dict[str, np.ndarray]:
        """The job's .npz of test inputs and teacher outputs (float32 NCHW in [0, 1])."""
        try:
            payload = self.client.get_bytes(url)
        except ApiError as exc:
            if exc.status != 404:
                raise
            # Latency is still worth having without the PSNR check.
            log.warning("no test inputs (%s): on-device PSNR is skipped", exc.message)
            return {}
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def _prune_cache(self) -> None:
        models = sorted(self.cache.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in models[KEEP_CACHED_MODELS:]:
            old.unlink(missing_ok=True)

    def _post_failure(self, job_id: int, reason: str, detail: str) -> str:
        try:
            self.client.call(
                "POST", f"/api/jobs/{job_id}/failure", {"reason": reason, "detail": detail[:2000]}
            )
        except (ApiError, Stopped) as exc:
            log.warning("job %s: could not report the failure: %s", job_id, exc)
        return "failed"

    def _release(self, job_id: int) -> str:
        # One try with a short timeout: if the server is away, the lease expires anyway.
        client = self.config.client(max_attempts=1, timeout=5)
        try:
            client.call("POST", f"/api/jobs/{job_id}/release", {})
            log.info("job %s: released back to the queue", job_id)
        except (ApiError, ConnectionError) as exc:
            log.warning("job %s: release failed (%s); its lease will expire", job_id, exc)
        return "released"


def _result_row(stats: dict, rss: dict, threads: int, input_size: int) -> dict:
    row = {k: stats.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")}
    row.update(
        threads=threads,
        input_size=input_size,
        load_ms=stats.get("load_ms"),
        peak_rss_mb=rss.get("peak_rss_mb"),
        rss_growth_mb=rss.get("growth_mb"),
        runs=stats.get("runs"),
        warmup=stats.get("warmup"),
    )
    return row
