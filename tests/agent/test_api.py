"""The agent API through Django's test client: auth, ownership, leases, downloads, validation."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone
from PIL import Image

from jobs import benchmarks, urls_api
from jobs.models import (
    Agent,
    Artifact,
    BenchmarkJob,
    BenchmarkResult,
    Dataset,
    EnrollmentToken,
    Run,
    Teacher,
)

pytestmark = pytest.mark.django_db

PAYLOAD = b"not really onnx, but bytes are bytes" * 100
ROW = {"threads": 1, "input_size": 32, "p50_ms": 1.0, "p90_ms": 1.5, "p99_ms": 2.0}


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def artifact(media) -> Artifact:
    dataset = Dataset.objects.create(name="tiny", path=str(media))
    teacher = Teacher.objects.create(name="t", spec="opencv:stylization")
    run = Run.objects.create(dataset=dataset, teacher=teacher, status="succeeded")
    folder = media / "runs" / str(run.pk)
    (folder / "samples").mkdir(parents=True)
    (folder / "student_fp32.onnx").write_bytes(PAYLOAD)
    for i in range(2):
        for role in ("input", "teacher"):
            Image.new("RGB", (36, 20), (i * 50, 10, 200)).save(
                folder / "samples" / f"{i:03d}_{role}.png"
            )
    return Artifact.objects.create(
        run=run,
        kind=Artifact.Kind.ONNX_FP32,
        path=f"runs/{run.pk}/student_fp32.onnx",
        size_bytes=len(PAYLOAD),
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    )


def agent_client(name: str = "pi") -> tuple[Agent, Client]:
    agent, token = Agent.issue(name, facts={"cores": 4})
    return agent, Client(HTTP_AUTHORIZATION=f"Bearer {token}", enforce_csrf_checks=True)


def post(client: Client, url: str, body=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body or {})
    return client.post(url, data=data, content_type="application/json")


def claimed_job(artifact: Artifact, client: Client) -> dict:
    benchmarks.create_open_job(artifact, threads=[1], input_size=32)
    reply = post(client, "/api/jobs/claim")
    assert reply.status_code == 200, reply.content
    return reply.json()


def test_registration_exchanges_an_enrollment_token_for_a_hashed_agent_token():
    record, plain = EnrollmentToken.issue(name="lab")
    client = Client(enforce_csrf_checks=True)

    reply = post(
        client,
        "/api/agents/register",
        {"enroll_token": plain, "name": "pi-1", "facts": {"cores": 4}},
    )

    assert reply.status_code == 201
    body = reply.json()
    agent = Agent.objects.get(pk=body["agent_id"])
    assert body["token"].startswith("dsa_")
    assert agent.token_hash == hashlib.sha256(body["token"].encode()).hexdigest()
    assert body["token"] not in json.dumps(agent.facts) and agent.facts == {"cores": 4}
    assert agent.enrolled_with == record
    record.refresh_from_db()
    assert record.uses == 1


def test_an_expired_enrollment_token_is_refused_with_a_message():
    record, plain = EnrollmentToken.issue()
    EnrollmentToken.objects.filter(pk=record.pk).update(
        expires=timezone.now() - timedelta(minutes=1)
    )

    reply = post(Client(), "/api/agents/register", {"enroll_token": plain, "name": "late"})

    assert reply.status_code == 401
    assert "expired" in reply.json()["error"] and "Agents page" in reply.json()["error"]
    assert not Agent.objects.exists()


def test_a_revoked_or_unknown_enrollment_token_is_refused():
    record, plain = EnrollmentToken.issue()
    EnrollmentToken.objects.filter(pk=record.pk).update(revoked=True)

    revoked = post(Client(), "/api/agents/register", {"enroll_token": plain})
    unknown = post(Client(), "/api/agents/register", {"enroll_token": "dse_nope"})

    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]
    assert unknown.status_code == 401 and "not one this server issued" in unknown.json()["error"]


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer dsa_wrong", "Basic dXNlcjpwdw=="])
def test_a_missing_or_wrong_agent_token_gets_401(header):
    client = Client(HTTP_AUTHORIZATION=header) if header else Client()

    for reply in (post(client, "/api/jobs/claim"), post(client, "/api/agents/heartbeat")):
        assert reply.status_code == 401
        assert reply["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_agent_token_gets_401(artifact):
    agent, client = agent_client()
    Agent.objects.filter(pk=agent.pk).update(revoked=True)

    reply = post(client, "/api/jobs/claim")

    assert reply.status_code == 401
    assert "register the device again" in reply.json()["error"]


def test_a_claim_hands_one_job_to_one_agent_under_a_lease(artifact):
    _, first = agent_client("a")
    _, second = agent_client("b")
    benchmarks.create_open_job(artifact, threads=[1, 4], input_size=64)

    job = post(first, "/api/jobs/claim").json()
    nothing = post(second, "/api/jobs/claim")

    assert nothing.status_code == 204
    assert job["threads"] == [1, 4] and job["input_size"] == 64
    assert job["artifact"]["sha256"] == artifact.sha256
    assert job["warmup"] >= 10 and job["runs"] >= 1
    assert job["artifact"]["download_url"] == f"/api/artifacts/{artifact.pk}/download"
    assert job["test_inputs_url"].endswith("/test-inputs")
    lease = datetime.fromisoformat(job["lease_expires"])
    assert timezone.now() < lease <= timezone.now() + timedelta(seconds=benchmarks.lease_seconds())


def test_a_job_meant_for_one_agent_is_not_given_to_another(artifact):
    mine, _ = agent_client("mine")
    _, other = agent_client("other")
    benchmarks.create_jobs_for_artifact(artifact, [mine])

    assert post(other, "/api/jobs/claim").status_code == 204


def test_creating_jobs_twice_for_the_same_artifact_queues_each_agent_once(artifact):
    agent_client("a")
    agent_client("b")

    first = benchmarks.create_jobs_for_artifact(artifact)
    again = benchmarks.create_jobs_for_artifact(artifact)

    assert len(first) == 2 and again == []
    assert {tuple(j.threads) for j in first} == {(1, 4)}


def test_an_expired_lease_puts_the_job_back_for_another_agent(artifact):
    _, first = agent_client("a")
    second_agent, second = agent_client("b")
    job = claimed_job(artifact, first)
    BenchmarkJob.objects.filter(pk=job["job_id"]).update(
        lease_expires=timezone.now() - timedelta(seconds=1)
    )

    again = post(second, "/api/jobs/claim").json()
    late = post(first, f"/api/jobs/{job['job_id']}/result", {"results": [ROW]})

    assert again["job_id"] == job["job_id"]
    assert BenchmarkJob.objects.get(pk=job["job_id"]).claimed_by == second_agent
    assert late.status_code == 403


def test_a_heartbeat_extends_the_lease_and_updates_facts(artifact):
    agent, client = agent_client()
    job = claimed_job(artifact, client)
    BenchmarkJob.objects.filter(pk=job["job_id"]).update(
        lease_expires=timezone.now() + timedelta(seconds=1)
    )

    reply = post(client, "/api/agents/heartbeat", {"facts": {"cores": 8}, "job_id": job["job_id"]})

    assert reply.status_code == 200 and reply.json()["leases_extended"] == 1
    agent.refresh_from_db()
    assert agent.facts == {"cores": 8} and agent.last_seen is not None
    assert BenchmarkJob.objects.get(pk=job["job_id"]).lease_expires > timezone.now() + timedelta(
        seconds=60
    )


def test_the_download_streams_the_file_with_its_checksum_and_honours_range(artifact):
    _, client = agent_client()
    url = claimed_job(artifact, client)["artifact"]["download_url"]

    whole = client.get(url)
    part = client.get(url, HTTP_RANGE="bytes=100-")
    middle = client.get(url, HTTP_RANGE="bytes=10-19")
    past = client.get(url, HTTP_RANGE=f"bytes={len(PAYLOAD)}-")

    assert whole.status_code == 200 and b"".join(whole.streaming_content) == PAYLOAD
    assert whole["X-Checksum-SHA256"] == artifact.sha256 and whole["Accept-Ranges"] == "bytes"
    assert part.status_code == 206 and b"".join(part.streaming_content) == PAYLOAD[100:]
    assert part["Content-Range"] == f"bytes 100-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
    assert b"".join(middle.streaming_content) == PAYLOAD[10:20]
    assert past.status_code == 416


def test_agent_a_cannot_download_or_report_on_agent_bs_job(artifact):
    _, owner = agent_client("b")
    _, intruder = agent_client("a")
    job = claimed_job(artifact, owner)
    jid = job["job_id"]

    assert intruder.get(job["artifact"]["download_url"]).status_code == 403
    assert intruder.get(f"/api/jobs/{jid}/test-inputs").status_code == 403
    assert post(intruder, f"/api/jobs/{jid}/result", {"results": [ROW]}).status_code == 403
    assert post(intruder, f"/api/jobs/{jid}/failure", {"reason": "other"}).status_code == 403
    assert post(intruder, f"/api/jobs/{jid}/release").status_code == 403
    assert BenchmarkJob.objects.get(pk=jid).status == BenchmarkJob.Status.CLAIMED


def test_test_inputs_are_float32_nchw_pairs_cropped_to_a_multiple_of_eight(artifact):
    _, client = agent_client()
    job = claimed_job(artifact, client)

    reply = client.get(job["test_inputs_url"])

    with np.load(io.BytesIO(reply.content)) as data:
        assert sorted(data.files) == ["input_000", "input_001", "teacher_000", "teacher_001"]
        x = data["input_001"]
    assert x.dtype == np.float32 and x.shape == (1, 3, 16, 32)
    assert np.allclose(x[0, :, 0, 0], [50 / 255, 10 / 255, 200 / 255])


def test_a_result_post_stores_one_row_per_thread_count_and_finishes_the_job(artifact):
    agent, client = agent_client()
    jid = claimed_job(artifact, client)["job_id"]
    rows = [ROW, {**ROW, "threads": 4, "peak_rss_mb": 80.5, "runs": 50, "warmup": 10}]

    reply = post(
        client,
        f"/api/jobs/{jid}/result",
        {"results": rows, "psnr_vs_teacher": 41.5, "environment": {"ort_version": "1.32.0"}},
    )
    again = post(client, f"/api/jobs/{jid}/result", {"results": rows})

    assert reply.status_code == 200 and again.status_code == 409
    job = BenchmarkJob.objects.get(pk=jid)
    assert job.status == BenchmarkJob.Status.DONE and job.finished
    stored = BenchmarkResult.objects.get(job=job, threads=4)
    assert stored.agent == agent and stored.psnr_vs_teacher == 41.5 and stored.peak_rss_mb == 80.5
    assert stored.environment == {"ort_version": "1.32.0", "runs": 50, "warmup": 10}


def test_a_failure_post_marks_the_job_failed_and_shows_on_the_agent(artifact):
    agent, client = agent_client()
    jid = claimed_job(artifact, client)["job_id"]

    reply = post(
        client, f"/api/jobs/{jid}/failure", {"reason": "checksum_mismatch", "detail": "sha differs"}
    )

    assert reply.status_code == 200
    assert BenchmarkJob.objects.get(pk=jid).error == "checksum_mismatch: sha differs"
    agent.refresh_from_db()
    assert "checksum_mismatch" in agent.last_error


def test_a_released_job_can_be_claimed_again(artifact):
    _, client = agent_client()
    jid = claimed_job(artifact, client)["job_id"]

    assert post(client, f"/api/jobs/{jid}/release").status_code == 200
    assert post(client, "/api/jobs/claim").json()["job_id"] == jid


def test_the_openapi_document_is_a_valid_openapi_3_1_schema():
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    reply = Client().get("/api/openapi.json")

    assert reply.status_code == 200
    document = reply.json()
    validate(document, cls=OpenAPIV31SpecValidator)
    assert len(document["paths"]) == len(urls_api.urlpatterns)


MALFORMED = [
    b"{not json",
    b"\xff\xfe",
    b"[]",
    b'"text"',
    b'{"unexpected": 1}',
    b'{"results": NaN}',
]
ENDPOINTS = [
    ("register", "/api/agents/register"),
    ("heartbeat", "/api/agents/heartbeat"),
    ("claim", "/api/jobs/claim"),
    ("result", "/api/jobs/{jid}/result"),
    ("failure", "/api/jobs/{jid}/failure"),
    ("release", "/api/jobs/{jid}/release"),
]
WRONG_SHAPES = {
    "register": [{"enroll_token": 5}, {"enroll_token": "dse_x", "facts": []}],
    "heartbeat": [{"job_id": "one"}, {"facts": "many"}],
    "result": [
        {"results": []},
        {"results": [{**ROW, "p50_ms": "fast"}]},
        {"results": [{**ROW, "threads": 0}]},
        {"results": [ROW], "psnr_vs_teacher": "high"},
        {"results": [{"threads": 1}]},
    ],
    "failure": [{"reason": "bored"}, {}, {"reason": "other", "detail": 3}],
}


@pytest.mark.parametrize("name,url", ENDPOINTS)
def test_every_endpoint_rejects_malformed_bodies_with_400(artifact, name, url):
    _, client = agent_client()
    jid = claimed_job(artifact, client)["job_id"]
    bodies = MALFORMED + [json.dumps(b).encode() for b in WRONG_SHAPES.get(name, [])]

    for body in bodies:
        reply = client.post(url.format(jid=jid), data=body, content_type="application/json")
        assert reply.status_code == 400, (body, reply.content)
        assert reply.json()["error"]
    assert BenchmarkJob.objects.get(pk=jid).status == BenchmarkJob.Status.CLAIMED


def test_the_api_answers_the_wrong_method_with_405_not_500(artifact):
    _, client = agent_client()

    assert client.get("/api/jobs/claim").status_code == 405
    assert post(client, "/api/artifacts/1/download").status_code == 405
    assert client.get("/api/jobs/999/test-inputs").status_code == 404
