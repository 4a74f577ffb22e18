"""HTTP to the Distillery server: bearer auth, retries with backoff, resumable verified download."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Iterable
from pathlib import Path

import requests

log = logging.getLogger("pi_agent")

# Gateways and a restarting server answer these; they say "try again", not "you are wrong".
RETRY_STATUSES = {502, 503, 504}
CHUNK = 16 * 1024  # small enough that a broken download keeps most of what arrived


class ApiError(Exception):
    """The server refused a request (4xx, or a 5xx that retrying will not fix)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"server said {status}: {message}")
        self.status = status
        self.message = message


class Stopped(Exception):
    """The agent was asked to stop while it waited for the network."""


class ChecksumMismatch(Exception):
    """The downloaded bytes do not hash to the sha256 the server recorded for the artifact."""

    def __init__(self, expected: str, actual: str):
        super().__init__(
            f"downloaded artifact has sha256 {actual}, the server recorded {expected}: "
            "the file on the server changed or was damaged; it was not benchmarked"
        )
        self.expected = expected
        self.actual = actual


def backoff_delays(base: float, cap: float) -> Iterable[float]:
    """Exponential delays with jitter, capped: base, 2*base, 4*base... each scaled by 0.5..1."""
    attempt = 0
    while True:
        # Jitter keeps a fleet of agents from hammering a server that just came back in step.
        yield min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)
        attempt += 1


def _message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)
    return str(body)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class Client:
    """One agent's connection to one server; every wait can be cut short by `stop`."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        stop: threading.Event | None = None,
        timeout: float = 30.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        max_attempts: int | None = None,
    ):
        self.server = server.rstrip("/")
        self.token = token
        self.stop = stop or threading.Event()
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_attempts = max_attempts  # None: retry until stopped
        self.session = requests.Session()

    def url(self, path: str) -> str:
        """An absolute URL for a server path (or a URL the server handed out)."""
        return path if path.startswith(("http://", "https://")) else self.server + path

    def _headers(self, extra: dict | None = None) -> dict:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def _wait(self, delays: Iterable[float], attempt: int, what: str, why: object) -> None:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            raise ConnectionError(f"{what}: gave up after {attempt} attempts ({why})")
        delay = next(iter(delays))
        log.warning("%s failed (%s); retrying in %.1f s", what, why, delay)
        if self.stop.wait(delay):
            raise Stopped(what)

    def request(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        """Send a request, retrying network errors and 502/503/504; raise ApiError on refusals."""
        delays = iter(backoff_delays(self.backoff_base, self.backoff_cap))
        what = f"{method} {path}"
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.session.request(
                    method, self.url(path), json=body, headers=self._headers(), timeout=self.timeout
                )
            except requests.RequestException as exc:
                self._wait(delays, attempt, what, exc.__class__.__name__)
                continue
            if resp.status_code in RETRY_STATUSES:
                self._wait(delays, attempt, what, f"HTTP {resp.status_code}")
                continue
            if resp.status_code >= 400:
                raise ApiError(resp.status_code, _message(resp))
            return resp

    def call(self, method: str, path: str, body: dict | None = None) -> dict | None:
        """A JSON request; returns the decoded body, or None for 204 No Content."""
        resp = self.request(method, path, body)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get_bytes(self, path: str) -> bytes:
        """A small binary download held in memory (test inputs)."""
        return self.request("GET", path).content

    def download(self, path: str, dest: Path, sha256: str, size: int | None = None) -> Path:
        """Fetch to `dest`, resuming a `.part` file with Range after any break; verify sha256.

        Raises ChecksumMismatch (and deletes the partial file) when the bytes do not match.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        delays = iter(backoff_delays(self.backoff_base, self.backoff_cap))
        attempt = 0
        while True:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if size is not None and have > size:
                part.unlink()
                have = 0
            headers = self._headers({"Range": f"bytes={have}-"} if have else None)
            if have:
                log.info("resuming download at byte %d of %s", have, size or "?")
            try:
                if self._fetch(path, headers, part, have, size):
                    break
            except requests.RequestException as exc:
                if part.exists() and part.stat().st_size > have:
                    # Progress was made: start the backoff over rather than wait ever longer.
                    delays = iter(backoff_delays(self.backoff_base, self.backoff_cap))
                    attempt = 0
                self._wait(delays, attempt, f"download {path}", exc.__class__.__name__)
            except _Retry as exc:
                self._wait(delays, attempt, f"download {path}", exc)
        actual = file_sha256(part)
        if actual != sha256:
            part.unlink()
            raise ChecksumMismatch(sha256, actual)
        part.replace(dest)
        return dest

    def _fetch(self, path: str, headers: dict, part: Path, have: int, size: int | None) -> bool:
        """One GET; appends to `part`. True when the file is complete."""
        with self.session.get(
            self.url(path), headers=headers, stream=True, timeout=self.timeout
        ) as resp:
            if resp.status_code == 416:
                # Nothing left past `have`: the part file is complete, or the file shrank.
                if size is not None and have == size:
                    return True
                part.unlink(missing_ok=True)
                raise _Retry("range not satisfiable; starting over")
            if resp.status_code in RETRY_STATUSES:
                raise _Retry(f"HTTP {resp.status_code}")
            if resp.status_code >= 400:
                raise ApiError(resp.status_code, _message(resp))
            if resp.status_code == 206:
                start = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if start != str(have):
                    part.unlink(missing_ok=True)
                    raise _Retry(f"server resumed at {start!r}, wanted {have}")
                mode = "ab"
            else:
                mode = "wb"  # the server sent the whole file
            with open(part, mode) as f:
                for chunk in resp.iter_content(CHUNK):
                    if self.stop.is_set():
                        raise Stopped("download")
                    f.write(chunk)
        got = part.stat().st_size
        if size is not None and got < size:
            raise _Retry(f"connection closed after {got} of {size} bytes")
        return True


class _Retry(Exception):
    """A download attempt that should be retried after a pause."""
