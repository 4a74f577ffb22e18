"""The Celery app: queue `gpu` trains, queue `cpu` ingests, exports, quantizes and evaluates.

Settings prefixed CELERY_ come from webapp/settings.py (broker URL, time limit); the queue
topology and delivery guarantees live here. Tasks take database ids: the broker carries nothing
else, so a lost message is recovered by re-queuing from the database.
"""

import os
from pathlib import Path

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("distillery")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    # Each queue its own direct exchange and routing key: a bare Queue("gpu") would be bound to
    # the default exchange with the default key ("cpu"), and every message would reach both.
    task_queues=(
        Queue("gpu", Exchange("gpu", type="direct"), routing_key="gpu"),
        Queue("cpu", Exchange("cpu", type="direct"), routing_key="cpu"),
    ),
    task_default_queue="cpu",
    task_routes={"jobs.tasks.train_run": {"queue": "gpu"}, "jobs.tasks.*": {"queue": "cpu"}},
    # A task is acknowledged only when it finishes, and one whose worker died goes back to the
    # queue: the run is resumed from its checkpoint instead of being lost.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # A fresh child process per task returns GPU and CPU memory between runs.
    worker_max_tasks_per_child=1,
)

# No Redis (`make demo` on a bare machine): kombu's filesystem transport, a folder of message
# files that producer and workers share. Set DISTILLERY_BROKER_URL=filesystem:// and, optionally,
# DISTILLERY_BROKER_FOLDER (default .demo/broker).
if os.environ.get("DISTILLERY_BROKER_URL", "").startswith("filesystem://"):
    _folder = Path(
        os.environ.get("DISTILLERY_BROKER_FOLDER")
        or Path(__file__).resolve().parent.parent / ".demo" / "broker"
    )
    for _sub in ("queue", "processed", "control"):
        (_folder / _sub).mkdir(parents=True, exist_ok=True)
    app.conf.broker_transport_options = {
        "data_folder_in": str(_folder / "queue"),
        "data_folder_out": str(_folder / "queue"),
        "processed_folder": str(_folder / "processed"),
        "control_folder": str(_folder / "control"),
        "store_processed": False,
    }
app.autodiscover_tasks()
