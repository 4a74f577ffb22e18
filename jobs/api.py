"""The agent API: JSON function views under /api/, authenticated by per-agent bearer tokens.

Bodies are validated against jobs/api_schema.py; a malformed body gets 400 with the reason, a bad
token 401, someone else's job 403. CSRF does not apply: agents hold no cookies.
"""

from __future__ import annotations

import io
import json
import re
from functools import wraps
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from jobs import api_schema, benchmarks
from jobs.models import Agent, Artifact, BenchmarkJob, EnrollmentToken, _hash_token

MAX_BODY = 1024 * 1024
TEST_INPUTS = 4  # a handful catches a runtime computing something else; more only costs transfer
CHUNK = 256 * 1024
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def error(status: int, message: str) -> JsonResponse:
    """A JSON error body that says what was wrong and what to do."""
    resp = JsonResponse({"error": message}, status=status)
    if status == 401:
        resp["WWW-Authenticate"] = 'Bearer realm="distillery"'
    return resp


class BadBody(Exception):
    pass


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_body(request: HttpRequest, schema: dict) -> dict:
    """The request's JSON body checked against `schema`; BadBody names the first problem."""
    if len(request.body) > MAX_BODY:
        raise BadBody(f"body is {len(request.body)} bytes; the limit is {MAX_BODY}")
    if not request.body.strip():
        data: object = {}
    else:
        try:
            data = json.loads(request.body, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadBody(f"body is not valid JSON ({exc})") from None
    first = best_match(Draft202012Validator(schema).iter_errors(data))
    if first is not None:
        where = ".".join(str(p) for p in first.absolute_path) or "body"
        raise BadBody(f"{where}: {first.message}")
    return data  # type: ignore[return-value]


def agent_required(view):
    """Authenticate the bearer token; the agent is `request.agent`; every call counts as alive."""

    @csrf_exempt
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "send the agent token as 'Authorization: Bearer dsa_…'")
        agent = Agent.authenticate(token.strip())
        if agent is None:
            return error(
                401,
                "this agent token is unknown or was revoked: register the device again with a "
                "new enrollment token from the Agents page",
            )
        now = timezone.now()
        Agent.objects.filter(pk=agent.pk).update(last_seen=now)
        agent.last_seen = now
        request.agent = agent
        try:
            return view(request, *args, **kwargs)
        except BadBody as exc:
            return error(400, str(exc))

    return wrapper


@csrf_exempt
@require_POST
def register(request: HttpRequest) -> JsonResponse:
    """Exchange an enrollment token (dse_…) for this agent's own token (dsa_…), shown once."""
    try:
        data = parse_body(request, api_schema.REGISTER)
    except BadBody as exc:
        return error(400, str(exc))
    plain = data["enroll_token"].strip()
    enrollment = EnrollmentToken.find_valid(plain)
    if enrollment is None:
        known = EnrollmentToken.objects.filter(token_hash=_hash_token(plain)).first()
        if known is None:
            why = "is not one this server issued"
        elif known.revoked:
            why = "was revoked"
        else:
            why = f"expired at {known.expires:%Y-%m-%d %H:%M} UTC"
        return error(401, f"this enrollment token {why}: create a new one on the Agents page")
    with transaction.atomic():
        EnrollmentToken.objects.filter(pk=enrollment.pk).update(uses=F("uses") + 1)
        agent, token = Agent.issue(
            name=(data.get("name") or "").strip() or f"agent-{enrollment.pk}",
            facts=data.get("facts") or {},
            enrolled_with=enrollment,
            last_seen=timezone.now(),
        )
    return JsonResponse({"agent_id": agent.pk, "token": token}, status=201)


@agent_required
@require_POST
def heartbeat(request: HttpRequest) -> JsonResponse:
    """Liveness, optional new facts, and a longer lease on the job the agent is working on."""
    data = parse_body(request, api_schema.HEARTBEAT)
    agent: Agent = request.agent
    if "facts" in data:
        Agent.objects.filter(pk=agent.pk).update(facts=data["facts"])
    extended = benchmarks.extend_leases(agent, data.get("job_id"))
    return JsonResponse({"ok": True, "leases_extended": extended})


def _samples(job: BenchmarkJob) -> list[tuple[Path, Path]]:
    folder = job.artifact.run.out_dir() / "samples"
    pairs = []
    for inp in sorted(folder.glob("*_input.png")):
        teacher = inp.with_name(inp.name.replace("_input.png", "_teacher.png"))
        if teacher.exists():
            pairs.append((inp, teacher))
    return pairs[:TEST_INPUTS]


@agent_required
@require_POST
def claim(request: HttpRequest) -> HttpResponse:
    """The next job for this agent under a lease, or 204 when none waits."""
    parse_body(request, api_schema.EMPTY)
    job = benchmarks.claim_next(request.agent)
    if job is None:
        return HttpResponse(status=204)
    artifact = job.artifact
    body = {
        "job_id": job.pk,
        "artifact": {
            "id": artifact.pk,
            "kind": artifact.kind,
            "sha256": artifact.sha256,
            "size_bytes": artifact.size_bytes,
            "download_url": reverse("api_artifact_download", args=[artifact.pk]),
            "run_id": artifact.run_id,
        },
        "threads": job.threads or benchmarks.default_threads(request.agent),
        "input_size": job.input_size,
        **benchmarks.bench_plan(),
        "lease_expires": job.lease_expires.isoformat(),
        "lease_seconds": benchmarks.lease_seconds(),
    }
    if _samples(job):
        body["test_inputs_url"] = reverse("api_job_test_inputs", args=[job.pk])
    return JsonResponse(body)


def _held_job(request: HttpRequest, job_id: int) -> BenchmarkJob | JsonResponse:
    """The job if this agent holds it, else the error response to send."""
    agent: Agent = request.agent
    job = BenchmarkJob.objects.select_related("artifact__run").filter(pk=job_id).first()
    if job is None:
        return error(404, f"there is no benchmark job {job_id}")
    if job.claimed_by_id == agent.pk and job.status == BenchmarkJob.Status.CLAIMED:
        return job
    if (job.claimed_by_id and job.claimed_by_id != agent.pk) or (
        job.agent_id and job.agent_id != agent.pk
    ):
        return error(403, f"benchmark job {job_id} belongs to another agent")
    return error(
        409,
        f"benchmark job {job_id} is {job.status} and not held by this agent (its lease may have "
        "run out): claim a new job",
    )


@agent_required
@require_POST
def job_result(request: HttpRequest, job_id: int) -> JsonResponse:
    job = _held_job(request, job_id)
    if isinstance(job, JsonResponse):
        return job
    data = parse_body(request, api_schema.RESULT)
    try:
        rows = benchmarks.record_result(job, request.agent, data)
    except benchmarks.JobStateError as exc:
        return error(409, str(exc))
    return JsonResponse({"ok": True, "results": len(rows)})


@agent_required
@require_POST
def job_failure(request: HttpRequest, job_id: int) -> JsonResponse:
    job = _held_job(request, job_id)
    if isinstance(job, JsonResponse):
        return job
    data = parse_body(request, api_schema.FAILURE)
    try:
        benchmarks.record_failure(job, request.agent, data["reason"], data.get("detail", ""))
    except benchmarks.JobStateError as exc:
        return error(409, str(exc))
    return JsonResponse({"ok": True})


@agent_required
@require_POST
def job_release(request: HttpRequest, job_id: int) -> JsonResponse:
    job = _held_job(request, job_id)
    if isinstance(job, JsonResponse):
        return job
    parse_body(request, api_schema.EMPTY)
    try:
        benchmarks.release(job, request.agent)
    except benchmarks.JobStateError as exc:
        return error(409, str(exc))
    return JsonResponse({"ok": True})


def _as_nchw(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    # The students take any H, W that is a multiple of 8.
    h, w = arr.shape[0] // 8 * 8, arr.shape[1] // 8 * 8
    return np.ascontiguousarray(arr[:h, :w].transpose(2, 0, 1)[None])


@agent_required
@require_GET
def job_test_inputs(request: HttpRequest, job_id: int) -> HttpResponse:
    """A few of the run's test inputs with the teacher's outputs, as an .npz of float32 NCHW."""
    job = _held_job(request, job_id)
    if isinstance(job, JsonResponse):
        return job
    pairs = _samples(job)
    if not pairs:
        return error(404, f"run {job.artifact.run_id} kept no sample images to test with")
    arrays = {}
    for i, (inp, teacher) in enumerate(pairs):
        arrays[f"input_{i:03d}"] = _as_nchw(inp)
        arrays[f"teacher_{i:03d}"] = _as_nchw(teacher)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    resp = HttpResponse(buf.getvalue(), content_type="application/octet-stream")
    resp["Content-Disposition"] = f'attachment; filename="job-{job.pk}-test-inputs.npz"'
    return resp


def _stream(path: Path, start: int, length: int):
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


@agent_required
@require_GET
def artifact_download(request: HttpRequest, artifact_id: int) -> HttpResponse:
    """Stream an artifact to the agent holding a job for it; honours `Range: bytes=N-[M]`."""
    artifact = Artifact.objects.filter(pk=artifact_id).first()
    if artifact is None:
        return error(404, f"there is no artifact {artifact_id}")
    held = BenchmarkJob.objects.filter(
        artifact=artifact, claimed_by=request.agent, status=BenchmarkJob.Status.CLAIMED
    ).exists()
    if not held:
        return error(403, f"this agent holds no claimed job for artifact {artifact_id}")
    media = Path(settings.MEDIA_ROOT).resolve()
    path = (media / artifact.path).resolve()
    if not path.is_relative_to(media) or not path.is_file():
        return error(404, f"the file of artifact {artifact_id} is missing on the server")
    size = path.stat().st_size
    start, end, status = 0, size - 1, 200
    match = RANGE.match(request.headers.get("Range", "").strip())
    if match:  # other Range forms (suffix, multiple ranges) are ignored: the whole file is sent
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        if start >= size or start > end:
            resp = HttpResponse(status=416)
            resp["Content-Range"] = f"bytes */{size}"
            return resp
        status = 206
    length = end - start + 1
    resp = StreamingHttpResponse(
        _stream(path, start, length), status=status, content_type="application/octet-stream"
    )
    resp["Content-Length"] = str(length)
    resp["Accept-Ranges"] = "bytes"
    resp["X-Checksum-SHA256"] = artifact.sha256
    resp["Content-Disposition"] = f'attachment; filename="{path.name}"'
    if status == 206:
        resp["Content-Range"] = f"bytes {start}-{end}/{size}"
    return resp


@require_GET
def openapi(request: HttpRequest) -> JsonResponse:
    """The agent API's OpenAPI 3.1 document."""
    return JsonResponse(api_schema.openapi())
