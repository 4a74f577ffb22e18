"""`manage.py check_stale_runs --interval 10`: the periodic check behind run recovery.

Re-queues runs whose worker stopped beating (they resume from their checkpoint) and re-sends
queued runs the broker lost. One loop in its own process: simpler to run in compose and in
`make demo` than celery beat, and it needs nothing but the database and the broker.
"""

from __future__ import annotations

import logging
import signal
import threading

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from jobs.heartbeat import requeue_stale_runs, resend_pending_ingests

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Re-queue runs whose worker died and re-send queued runs the broker lost."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--interval", type=float, default=10.0, help="seconds between checks (default 10)"
        )
        parser.add_argument("--once", action="store_true", help="check once and exit")

    def handle(self, *args, interval: float, once: bool, **options) -> None:
        if interval <= 0:
            self.stderr.write("--interval must be greater than 0 seconds")
            raise SystemExit(2)
        stop = threading.Event()
        if not once:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            self.stdout.write(f"checking for stale runs every {interval:g} s", ending="\n")
            self.stdout.flush()
        while True:
            if not once:
                close_old_connections()  # a database that restarted gets a fresh connection
            try:
                resent = requeue_stale_runs()
                resend_pending_ingests()
            except Exception:  # the database restarting must not end the checker
                log.exception("stale-run check failed; trying again in %g s", interval)
                close_old_connections()
                resent = []
            if resent:
                self.stdout.write(f"re-queued runs {', '.join(map(str, resent))}")
                self.stdout.flush()
            if once or stop.wait(interval):
                return
