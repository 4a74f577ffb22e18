"""The agent as a real process against a live server over loopback, with real onnxruntime."""

from __future__ import annotations

import re
import signal
import time

import requests
from django.utils import timezone

from jobs import benchmarks
from jobs.models import Agent, BenchmarkJob, BenchmarkResult


def login(server_url: str) -> requests.Session:
    """A browser-like session logged in as a fresh user."""
    from django.contrib.auth.models import User

    User.objects.create_user("ada", password="pw-for-tests-only")
    session = requests.Session()
    page = session.get(f"{server_url}/accounts/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    reply = session.post(
        f"{server_url}/accounts/login/",
        data={"username": "ada", "password": "pw-for-tests-only", "csrfmiddlewaretoken": token},
        headers={"Referer": f"{server_url}/accounts/login/"},
        timeout=30,
    )
    assert reply.ok and "sessionid" in session.cookies, reply.text[:500]
    return session


def test_an_agent_registers_benchmarks_and_the_result_shows_on_the_run_page(live):
    server = live.server()
    run, artifact = live.make_run()
    config = live.register(server.url, "pi-kitchen")
    agent = Agent.objects.get(pk=config["agent_id"])
    assert config["token"].startswith("dsa_")
    assert agent.facts["cores"] and agent.facts["onnxruntime"]
    assert oct((live.root / "home-pi-kitchen" / "agent.json").stat().st_mode & 0o777) == "0o600"
    benchmarks.create_jobs_for_artifact(artifact, threads=[1, 2], input_size=32)

    proc = live.agent("run", "--once", name="pi-kitchen")

    assert proc.returncode == 0, proc.err
    job = BenchmarkJob.objects.get(artifact=artifact)
    assert job.status == BenchmarkJob.Status.DONE, (job.error, proc.err)
    rows = BenchmarkResult.objects.filter(job=job).order_by("threads")
    assert [(r.threads, r.input_size) for r in rows] == [(1, 32), (2, 32)]
    for row in rows:
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.peak_rss_mb > 0 and row.load_ms > 0
        assert row.environment["runs"] == 5 and row.environment["warmup"] == 10
        # The device ran the same model as the teacher images came from: near-identical.
        assert row.psnr_vs_teacher > 40
    page = login(server.url).get(f"{server.url}/runs/{run.pk}/", timeout=30)
    assert page.status_code == 200
    assert "Device benchmarks" in page.text and "pi-kitchen" in page.text
    assert f"{rows[0].p50_ms:,.2f}" in page.text


def test_a_revoked_agent_stops_with_a_message_to_register_again(live):
    server = live.server()
    config = live.register(server.url, "pi-old")
    Agent.objects.filter(pk=config["agent_id"]).update(revoked=True)

    proc = live.agent("run", "--once", name="pi-old")

    assert proc.returncode == 2
    assert "register again" in proc.err


def test_a_tampered_artifact_is_reported_as_a_checksum_failure_and_not_benchmarked(live):
    server = live.server()
    _, artifact = live.make_run(tamper=True)
    _, missing = live.make_run(name="file gone")
    (live.media / missing.path).unlink()
    config = live.register(server.url, "pi-careful")
    benchmarks.create_jobs_for_artifact(artifact, threads=[1], input_size=32)
    benchmarks.create_jobs_for_artifact(missing, threads=[1], input_size=32)

    proc = live.agent("run", "--once", name="pi-careful")

    assert proc.returncode == 0, proc.err
    job = BenchmarkJob.objects.get(artifact=artifact)
    assert job.status == BenchmarkJob.Status.FAILED
    assert job.error.startswith("checksum_mismatch")
    gone = BenchmarkJob.objects.get(artifact=missing)
    assert gone.status == BenchmarkJob.Status.FAILED and gone.error.startswith("download_error")
    assert not BenchmarkResult.objects.filter(job=job).exists()
    assert "download_error" in Agent.objects.get(pk=config["agent_id"]).last_error  # the latest
    cache = live.root / "home-pi-careful" / ".cache" / "distillery-agent"
    assert not list(cache.glob("*.onnx*")), "a file that failed its checksum was kept"


def test_the_agent_resumes_a_download_after_the_server_went_down_mid_transfer(live, relay_to):
    server = live.server()
    relay = relay_to(server)
    _, artifact = live.make_run()
    live.register(relay.url, "pi-patient")
    benchmarks.create_jobs_for_artifact(artifact, threads=[1], input_size=32)
    relay.cut_after(artifact.size_bytes // 2)

    proc = live.agent("run", "--once", name="pi-patient", wait=False)
    assert relay.tripped.wait(120), "the agent never started the download"
    server.stop(signal.SIGKILL)
    time.sleep(1.0)  # the agent meets a dead server and backs off
    server.start()
    out, err = proc.communicate(timeout=240)

    assert proc.returncode == 0, err
    assert re.search(r"resuming download at byte [1-9]\d*", err), err
    assert re.search(r'"GET /api/artifacts/\d+/download HTTP/1.1" 206', server.log.read_text())
    assert BenchmarkJob.objects.get(artifact=artifact).status == BenchmarkJob.Status.DONE


def test_a_job_of_a_killed_agent_goes_back_to_the_queue_and_another_agent_finishes_it(
    live, relay_to
):
    server = live.server(DISTILLERY_AGENT_LEASE_SECONDS="3")
    relay = relay_to(server)
    _, artifact = live.make_run()
    first = live.register(relay.url, "pi-doomed")
    second = live.register(server.url, "pi-spare")
    job = benchmarks.create_open_job(artifact, threads=[1], input_size=32)
    relay.hold_after(1000)

    doomed = live.agent("run", "--once", name="pi-doomed", wait=False)
    assert relay.tripped.wait(120), "the first agent never started the download"
    job.refresh_from_db()
    assert job.status == BenchmarkJob.Status.CLAIMED and job.claimed_by_id == first["agent_id"]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    while BenchmarkJob.objects.get(pk=job.pk).lease_expires > timezone.now():
        time.sleep(0.2)

    spare = live.agent("run", "--once", name="pi-spare")

    assert spare.returncode == 0, spare.err
    job.refresh_from_db()
    assert job.status == BenchmarkJob.Status.DONE
    assert job.claimed_by_id == second["agent_id"]
    assert {r.agent_id for r in job.results.all()} == {second["agent_id"]}


def test_sigterm_mid_job_releases_the_job_and_exits_cleanly(live, relay_to):
    server = live.server()
    relay = relay_to(server)
    _, artifact = live.make_run()
    live.register(relay.url, "pi-polite")
    [job] = benchmarks.create_jobs_for_artifact(artifact, threads=[1], input_size=32)
    relay.hold_after(1000)

    proc = live.agent("run", name="pi-polite", wait=False)
    assert relay.tripped.wait(120), "the agent never started the download"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)

    assert proc.returncode == 0, err
    assert "released back to the queue" in err
    job.refresh_from_db()
    assert job.status == BenchmarkJob.Status.QUEUED and job.claimed_by is None
