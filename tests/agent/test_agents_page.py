"""The Agents page, enrollment tokens (shown once) and the run page's "benchmark on …" action."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone

from jobs.models import Agent, Artifact, BenchmarkJob, Dataset, EnrollmentToken, Run, Teacher

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(client):
    client.force_login(User.objects.create_user("ada"))
    return client


@pytest.fixture
def run() -> Run:
    dataset = Dataset.objects.create(name="tiny", path="/tmp")
    teacher = Teacher.objects.create(name="t", spec="opencv:stylization")
    run = Run.objects.create(dataset=dataset, teacher=teacher, status="succeeded")
    for kind in (Artifact.Kind.ONNX_FP32, Artifact.Kind.ONNX_INT8, Artifact.Kind.REPORT):
        Artifact.objects.create(run=run, kind=kind, path=f"runs/{run.pk}/{kind}", sha256="0" * 64)
    return run


def test_the_agents_page_shows_online_and_offline_devices_with_facts(browser):
    facts = {"board": "Raspberry Pi 4 Model B Rev 1.4", "cores": 4, "ram_mb": 3794}
    Agent.issue("pi-desk", facts=facts, last_seen=timezone.now())
    Agent.issue("pi-attic", last_seen=timezone.now() - timedelta(hours=2), last_error="job 3: boom")

    page = browser.get("/agents/").content.decode()

    desk = page[page.index('data-agent="pi-desk"') :]
    attic = page[page.index('data-agent="pi-attic"') :]
    assert "online" in desk[:800] and "Raspberry Pi 4 Model B" in desk[:2000]
    assert "offline" in attic[:800] and "job 3: boom" in attic


def test_an_enrollment_token_is_shown_once_and_stored_hashed(browser):
    page = browser.post("/agents/tokens/new/", {"name": "lab", "hours": "2"}).content.decode()

    plain = re.search(r"dse_[\w-]+", page).group(0)
    record = EnrollmentToken.objects.get()
    assert EnrollmentToken.find_valid(plain) == record and plain not in record.token_hash
    assert plain not in browser.get("/agents/").content.decode()
    assert timedelta(hours=1.9) < record.expires - timezone.now() <= timedelta(hours=2)


def test_a_revoked_enrollment_token_no_longer_enrolls(browser):
    record, plain = EnrollmentToken.issue()

    browser.post(f"/agents/tokens/{record.pk}/revoke/")

    assert EnrollmentToken.find_valid(plain) is None


def test_revoking_an_agent_drops_its_queued_jobs(browser, run):
    agent, _ = Agent.issue("pi")
    browser.post(f"/runs/{run.pk}/benchmark/", {"agent": str(agent.pk)})
    assert BenchmarkJob.objects.filter(agent=agent).count() == 2

    browser.post(f"/agents/{agent.pk}/", {"action": "revoke"})

    agent.refresh_from_db()
    assert agent.revoked and not BenchmarkJob.objects.exists()


def test_benchmark_on_all_devices_queues_each_onnx_variant_on_each_enabled_agent(browser, run):
    Agent.issue("a")
    Agent.issue("b")
    Agent.issue("off", enabled=False)

    reply = browser.post(f"/runs/{run.pk}/benchmark/", {"agent": "all"})

    assert reply.status_code == 302
    kinds = sorted(BenchmarkJob.objects.values_list("agent__name", "artifact__kind"))
    assert kinds == [("a", "onnx_fp32"), ("a", "onnx_int8"), ("b", "onnx_fp32"), ("b", "onnx_int8")]


def test_benchmark_on_any_device_queues_open_jobs(browser, run):
    Agent.issue("a")

    browser.post(f"/runs/{run.pk}/benchmark/", {"agent": "any"})

    assert BenchmarkJob.objects.filter(agent__isnull=True).count() == 2


def test_the_management_command_prints_a_token_once_and_lists_without_it():
    out = StringIO()
    call_command("enroll_token", "create", "--name", "cli", "--hours", "1", "--quiet", stdout=out)
    plain = out.getvalue().strip()
    listing = StringIO()
    call_command("enroll_token", "list", stdout=listing)

    assert plain.startswith("dse_") and EnrollmentToken.find_valid(plain)
    assert "cli" in listing.getvalue() and plain not in listing.getvalue()
    call_command("enroll_token", "revoke", str(EnrollmentToken.objects.get().pk), stdout=StringIO())
    assert EnrollmentToken.find_valid(plain) is None
