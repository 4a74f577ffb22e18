"""Pages as alice sees them: runs list, launch form, run page, cancel/retry, downloads, datasets,
teachers."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
from django.test import Client
from django.urls import reverse

from jobs.models import Artifact, Dataset, Run, Teacher


def launch_data(dataset, teacher, **changes) -> dict:
    """A launch-form POST for the tiny preset, as the browser would send it."""
    from jobs.forms import RunForm

    initial = RunForm.initial_for(preset="tiny")
    data = {k: v for k, v in initial.items() if v is not None}
    data.update(dataset=dataset.pk, teacher=teacher.pk, name="from the form")
    data["student"] = json.dumps(data["student"])
    data["extra"] = json.dumps(data.get("extra") or {})
    data.update(changes)
    return data


def queued_messages(broker) -> list[dict]:
    client, prefix = broker
    return [json.loads(raw) for raw in client.lrange(f"{prefix}gpu", 0, -1)]


@pytest.mark.parametrize(
    "name, args",
    [
        ("runs", []),
        ("run_new", []),
        ("run_detail", [1]),
        ("run_status_json", [1]),
        ("artifact_download", [1]),
        ("datasets", []),
        ("dataset_new", []),
        ("dataset_detail", [1]),
        ("teachers", []),
        ("teacher_new", []),
    ],
)
def test_it_requires_login(client, db, name, args):
    url = reverse(name, args=args)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_login_page_logs_alice_in(client, alice):
    assert client.get(reverse("login")).status_code == 200
    response = client.post(
        reverse("login"), {"username": "alice", "password": "correct horse battery"}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("runs")


def test_healthz_answers_without_login(client, db):
    response = client.get(reverse("healthz"))
    assert response.status_code == 200
    assert response.content == b"ok\n"


def test_the_runs_list_shows_progress_and_numbers_with_units(client_alice, make_run, make_artifact):
    run = make_run(Run.Status.RUNNING, step=30, progress=0.3, eta_seconds=125)
    done = make_run(Run.Status.SUCCEEDED, name="done run", summary={"psnr_vs_teacher": 31.234})
    make_artifact(done, Artifact.Kind.ONNX_INT8, b"x" * 2048, latency_ms_p50=12.345)
    html = client_alice.get(reverse("runs")).content.decode()
    assert f'data-status-url="{reverse("run_status_json", args=[run.pk])}"' in html
    assert '<progress max="1" value="0.3"' in html
    assert "30%" in html and "2 min 5 s" in html
    assert "31.23" in html and "2.0" in html and "12.3" in html
    for unit in ("dB", "KB", "ms"):
        assert unit in html


def test_the_launch_form_shows_the_preset_values(client_alice, dataset, teacher):
    response = client_alice.get(reverse("run_new") + "?preset=tiny")
    assert response.status_code == 200
    form = response.context["form"]
    assert form.initial["preset"] == "tiny"
    html = response.content.decode()
    assert 'id="preset-configs"' in html
    assert 'name="loss_pixel_l1"' in html


def test_the_launch_form_creates_a_queued_run(
    client_alice, dataset, teacher, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_alice.post(reverse("run_new"), launch_data(dataset, teacher, steps=3))
    run = Run.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("run_detail", args=[run.pk])
    assert run.status == Run.Status.QUEUED
    assert run.config["steps"] == 3 and run.total_steps == 3
    assert run.created_by.username == "alice"
    # The broker carries the run id only, on the gpu queue.
    [message] = queued_messages(broker)
    assert message["headers"]["task"] == "jobs.tasks.train_run"
    assert message["headers"]["argsrepr"] == f"({run.pk},)"


def test_a_bad_lr_shows_an_inline_error(client_alice, dataset, teacher):
    response = client_alice.post(reverse("run_new"), launch_data(dataset, teacher, lr="5"))
    assert response.status_code == 200
    assert not Run.objects.exists()
    assert "must be greater than 0 and at most 1" in response.context["form"].errors["lr"][0]
    html = response.content.decode()
    field = html[html.index('id="field-lr"') :]
    field = field[: field.index("</div>")]
    assert 'class="error"' in field and "at most 1" in field


def test_a_bad_student_parameter_is_shown_next_to_the_student_field(client_alice, dataset, teacher):
    data = launch_data(dataset, teacher, student='{"no_such_knob": 3}')
    response = client_alice.post(reverse("run_new"), data)
    assert "no_such_knob" in response.context["form"].errors["student"][0]


def test_clone_prefills_the_form_with_the_runs_config(client_alice, make_run):
    run = make_run(Run.Status.SUCCEEDED)
    run.config = {**run.config, "lr": 0.0042, "eval_size": 64}
    run.save()
    response = client_alice.get(reverse("run_new") + f"?clone={run.pk}")
    initial = response.context["form"].initial
    assert initial["lr"] == 0.0042
    assert initial["extra"] == {"eval_size": 64}
    assert f'name="cloned_from" value="{run.pk}"' in response.content.decode()


def test_the_run_page_shows_config_error_and_actions(client_alice, make_run, make_artifact):
    run = make_run(Run.Status.FAILED, error="Training diverged at step 3: loss style is NaN.")
    make_artifact(run, Artifact.Kind.ONNX_FP32, b"fp32", psnr_vs_teacher=28.5)
    html = client_alice.get(reverse("run_detail", args=[run.pk])).content.decode()
    assert "Training diverged at step 3" in html
    assert reverse("run_retry", args=[run.pk]) in html
    assert reverse("run_cancel", args=[run.pk]) not in html
    assert f"?clone={run.pk}" in html
    assert 'id="loss-chart"' in html
    assert reverse("artifact_download", args=[run.artifacts.get().pk]) in html
    assert "&quot;steps&quot;" in html  # the config, pretty-printed


def test_cancel_marks_a_queued_run_cancelled(client_alice, make_run):
    run = make_run(Run.Status.QUEUED)
    response = client_alice.post(reverse("run_cancel", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert run.finished is not None


def test_cancel_asks_a_running_run_to_stop(client_alice, make_run):
    run = make_run(Run.Status.RUNNING)
    client_alice.post(reverse("run_cancel", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING  # the worker moves it to cancelled
    assert run.cancel_requested


def test_cancel_and_retry_are_post_only(client_alice, make_run):
    run = make_run(Run.Status.FAILED)
    assert client_alice.get(reverse("run_cancel", args=[run.pk])).status_code == 405
    assert client_alice.get(reverse("run_retry", args=[run.pk])).status_code == 405


def test_cancel_needs_a_csrf_token(alice, make_run):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    run = make_run(Run.Status.QUEUED)
    assert client.post(reverse("run_cancel", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED


def test_retry_makes_a_new_run_with_the_same_config(
    client_alice, make_run, broker, django_capture_on_commit_callbacks
):
    old = make_run(Run.Status.FAILED, error="worker lost")
    with django_capture_on_commit_callbacks(execute=True):
        response = client_alice.post(reverse("run_retry", args=[old.pk]))
    new = Run.objects.exclude(pk=old.pk).get()
    assert response["Location"] == reverse("run_detail", args=[new.pk])
    assert new.status == Run.Status.QUEUED
    assert new.config == old.config
    assert new.cloned_from == old
    old.refresh_from_db()
    assert old.status == Run.Status.FAILED
    assert [m["headers"]["argsrepr"] for m in queued_messages(broker)] == [f"({new.pk},)"]


def test_a_succeeded_run_cannot_be_retried(client_alice, make_run):
    run = make_run(Run.Status.SUCCEEDED)
    response = client_alice.post(reverse("run_retry", args=[run.pk]), follow=True)
    assert Run.objects.count() == 1
    assert "only failed or cancelled runs can be retried" in response.content.decode()


def test_the_status_json_reports_progress(client_alice, make_run):
    run = make_run(Run.Status.RUNNING, step=12, progress=0.4, eta_seconds=30.0)
    data = client_alice.get(reverse("run_status_json", args=[run.pk])).json()
    assert data["status"] == "running" and data["active"] is True
    assert (data["step"], data["total"], data["progress"]) == (12, run.total_steps, 0.4)
    assert data["eta_seconds"] == 30.0 and data["error"] == ""


def test_download_streams_the_file_with_its_checksum(client_alice, make_run, make_artifact):
    content = bytes(range(256)) * 64
    artifact = make_artifact(make_run(Run.Status.SUCCEEDED), Artifact.Kind.ONNX_INT8, content)
    response = client_alice.get(reverse("artifact_download", args=[artifact.pk]))
    assert response.status_code == 200
    assert response.streaming
    body = b"".join(response.streaming_content)
    assert body == content
    assert response["X-Checksum-SHA256"] == hashlib.sha256(content).hexdigest()
    assert response["Content-Length"] == str(len(content))
    assert "attachment" in response["Content-Disposition"]
    assert f"run{artifact.run_id}-student_int8.onnx" in response["Content-Disposition"]


def test_download_of_a_deleted_file_is_a_404(client_alice, make_run, make_artifact, media_root):
    artifact = make_artifact(make_run(Run.Status.SUCCEEDED))
    (media_root / artifact.path).unlink()
    assert client_alice.get(reverse("artifact_download", args=[artifact.pk])).status_code == 404


def test_download_refuses_paths_outside_media(client_alice, make_run, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    artifact = Artifact.objects.create(
        run=make_run(Run.Status.SUCCEEDED), kind="onnx_fp32", path="../secret.txt", sha256="0"
    )
    assert client_alice.get(reverse("artifact_download", args=[artifact.pk])).status_code == 404


def test_uploading_a_zip_queues_a_dataset(
    client_alice, media_root, broker, django_capture_on_commit_callbacks
):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("cats/cat.png", b"not really a png")
    upload = io.BytesIO(buffer.getvalue())
    upload.name = "cats.zip"
    with django_capture_on_commit_callbacks(execute=True):
        response = client_alice.post(reverse("dataset_new"), {"name": "cats", "archive": upload})
    dataset = Dataset.objects.get(name="cats")
    assert response["Location"] == reverse("dataset_detail", args=[dataset.pk])
    assert dataset.status == Dataset.Status.PENDING
    assert dataset.path.startswith(str(media_root / "uploads"))
    client, prefix = broker
    [raw] = client.lrange(f"{prefix}cpu", 0, -1)
    assert json.loads(raw)["headers"]["argsrepr"] == f"({dataset.pk},)"


def test_the_dataset_page_shows_counts_skipped_files_and_thumbnails(
    client_alice, dataset, media_root
):
    (media_root / "thumbs").mkdir()
    (media_root / "thumbs" / "0.jpg").write_bytes(b"jpeg bytes")
    dataset.skipped = [{"path": "bad/cat.png", "reason": "not a readable image"}]
    dataset.thumbnails = ["thumbs/0.jpg"]
    dataset.save()
    html = client_alice.get(reverse("dataset_detail", args=[dataset.pk])).content.decode()
    assert "7 train · 2 val · 1 test" in html
    assert "bad/cat.png" in html and "not a readable image" in html
    thumb_url = reverse("dataset_thumbnail", args=[dataset.pk, 0])
    assert thumb_url in html
    response = client_alice.get(thumb_url)
    assert b"".join(response.streaming_content) == b"jpeg bytes"


def test_a_builtin_teacher_is_added_from_the_form(client_alice, db):
    response = client_alice.post(
        reverse("teacher_new"), {"name": "pencil", "source": "opencv", "operator": "pencil"}
    )
    assert response.status_code == 302
    teacher = Teacher.objects.get(name="pencil")
    assert teacher.spec == "opencv:pencil" and teacher.fingerprint
    assert "opencv:pencil" in client_alice.get(reverse("teachers")).content.decode()


def test_a_broken_model_upload_shows_the_loaders_error(client_alice, db, media_root):
    upload = io.BytesIO(b"this is not an onnx model")
    upload.name = "teacher.onnx"
    response = client_alice.post(
        reverse("teacher_new"), {"name": "broken", "source": "file", "file": upload}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["file"]
    assert not Teacher.objects.exists()
    assert not list((media_root / "teachers").iterdir())  # the refused file is not kept
