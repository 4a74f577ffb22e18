"""Runs launched through the web form and trained by real Celery workers: on Redis and on the
embedded filesystem broker; cancelled mid-run; resumed after the worker is SIGKILLed; and
completed after Redis restarts and loses its queue."""

from __future__ import annotations

import hashlib

from stack import (
    RedisServer,
    assert_artifacts_match_files,
    filesystem_broker,
    redis_broker,
    steps_lasting,
    wait_until,
)


def steps_recorded(stack, run_id: int) -> list[int]:
    rows = stack.sql(
        "SELECT step FROM jobs_metricpoint WHERE run_id = ? AND name = 'total' ORDER BY step",
        run_id,
    )
    return [r[0] for r in rows]


def test_a_run_launched_from_the_form_trains_on_a_redis_worker_to_three_onnx_files(
    shared_stack,
):
    client = shared_stack.client()
    client.login()

    run_id = client.launch(steps=6)
    final = client.wait_for(run_id, ("succeeded", "failed", "cancelled"))

    assert final["status"] == "succeeded", final["error"]
    rows = assert_artifacts_match_files(shared_stack, run_id)
    int8_id, sha = next((r[0], r[3]) for r in rows if r[1] == "onnx_int8")
    downloaded = client.get(f"/artifacts/{int8_id}/download/")
    assert hashlib.sha256(downloaded.content).hexdigest() == sha
    assert steps_recorded(shared_stack, run_id) == [1, 2, 3, 4, 5, 6]


def test_a_running_job_is_cancelled_within_seconds(shared_stack):
    client = shared_stack.client()
    client.login()
    run_id = client.launch(steps=20000)
    client.wait_for(run_id, ("running",), timeout=120)
    wait_until(lambda: client.status(run_id)["step"] >= 2, 120, "training to start")

    client.cancel(run_id)
    final = client.wait_for(run_id, ("cancelled", "succeeded", "failed"), timeout=15)

    assert final["status"] == "cancelled"
    assert 2 <= final["step"] < 20000
    assert shared_stack.sql("SELECT COUNT(*) FROM jobs_artifact WHERE run_id = ?", run_id) == [(0,)]


def test_the_embedded_filesystem_broker_carries_a_run_to_success(make_stack, tmp_path):
    stack = make_stack(filesystem_broker(tmp_path / "broker"))
    stack.start_worker(wait=False)
    stack.start_web()
    stack.wait_ready("worker")
    client = stack.client()
    client.login()

    run_id = client.launch(steps=4)
    final = client.wait_for(run_id, ("succeeded", "failed", "cancelled"))

    assert final["status"] == "succeeded", final["error"]
    assert_artifacts_match_files(stack, run_id)


def test_a_dead_worker_is_replaced_and_the_run_resumes_from_its_checkpoint(
    make_stack, redis_server
):
    # The checker presumes a worker dead after 5 s without a heartbeat and looks every second.
    stack = make_stack(redis_broker(redis_server.url(2)), DISTILLERY_HEARTBEAT_STALE_SECONDS="5")
    stack.start_worker("worker-1", wait=False)
    stack.start_checker(interval=1)
    stack.start_web()
    stack.wait_ready("worker-1")
    client = stack.client()
    client.login()
    total = steps_lasting(stack, 15)
    run_id = client.launch(steps=total)  # checkpoints every 10 steps
    kill_after = max(12, total // 4)
    wait_until(lambda: client.status(run_id)["step"] >= kill_after, 120, "training to get going")

    stack.kill("worker-1")  # SIGKILL to the worker and its pool child: the machine died
    killed_at = client.status(run_id)["step"]
    stack.start_worker("worker-2")
    final = client.wait_for(run_id, ("succeeded", "failed", "cancelled"), timeout=180)

    assert final["status"] == "succeeded", final["error"]
    assert killed_at < total
    ((attempts, worker),) = stack.sql("SELECT attempts, worker FROM jobs_run WHERE id = ?", run_id)
    assert attempts == 2 and worker.startswith("worker-2-")
    assert f"re-queued runs {run_id}" in stack.log("checker")
    assert steps_recorded(stack, run_id) == list(range(1, total + 1))
    assert_artifacts_match_files(stack, run_id)


def test_a_queued_run_completes_after_a_redis_restart_loses_its_message(make_stack, tmp_path):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    stack = make_stack(redis_broker(redis.url()), DISTILLERY_QUEUED_RESEND_SECONDS="2")
    try:
        stack.start_web()
        stack.start_checker(interval=1)
        client = stack.client()
        client.login()
        run_id = client.launch(steps=4)  # no worker yet: the message waits in Redis
        assert client.status(run_id)["status"] == "queued"

        redis.kill()  # nothing on disk: the queue is gone
        redis.start()
        stack.start_worker()
        final = client.wait_for(run_id, ("succeeded", "failed", "cancelled"))

        assert final["status"] == "succeeded", final["error"]
        assert "sending it again" in stack.log("checker")
        assert_artifacts_match_files(stack, run_id)
    finally:
        stack.stop_all()
        redis.kill()
