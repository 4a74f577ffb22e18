"""Distillery's records. The database is the source of truth for run state; the broker only
carries ids."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class Dataset(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        INGESTING = "ingesting"
        READY = "ready"
        FAILED = "failed"

    name = models.CharField(max_length=200, unique=True)
    # Folder on the server holding the images (an uploaded zip is unpacked under MEDIA_ROOT).
    path = models.CharField(max_length=1000)
    paired = models.BooleanField(default=False)  # input/ + target/ made by a teacher elsewhere
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    progress = models.FloatField(default=0.0)  # 0..1 while ingesting
    counts = models.JSONField(default=dict, blank=True)  # {"train": n, "val": n, "test": n}
    skipped = models.JSONField(default=list, blank=True)  # [{"path": ..., "reason": ...}]
    thumbnails = models.JSONField(default=list, blank=True)  # media-relative paths
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Teacher(models.Model):
    name = models.CharField(max_length=200, unique=True)
    # The contract in DESIGN.md: opencv:<op>, onnx:<path>, torchscript:<path>, pairs.
    spec = models.CharField(max_length=1000)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    params = models.BigIntegerField(null=True, blank=True)
    fingerprint = models.CharField(max_length=64, blank=True)
    description = models.TextField(blank=True)
    builtin = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class StudentConfig(models.Model):
    """A named preset or a user's saved config (validated by distill_core.config)."""

    name = models.CharField(max_length=200, unique=True)
    config = models.JSONField(default=dict)  # a DistillConfig.to_dict()
    builtin = models.BooleanField(default=False)
    params = models.BigIntegerField(null=True, blank=True)
    macs_at_256 = models.BigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        EXPORTING = "exporting"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.EXPORTING)

    name = models.CharField(max_length=200, blank=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="runs")
    teacher = models.ForeignKey(Teacher, on_delete=models.PROTECT, related_name="runs")
    preset = models.CharField(max_length=100, blank=True)
    config = models.JSONField(default=dict)  # the full validated DistillConfig, as given
    config_hash = models.CharField(max_length=32, blank=True)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    step = models.IntegerField(default=0)
    total_steps = models.IntegerField(default=0)
    progress = models.FloatField(default=0.0)  # 0..1
    eta_seconds = models.FloatField(null=True, blank=True)
    # What an active run is doing when it is not counting steps, e.g. "preparing teacher outputs
    # 120/1000" (the teacher runs once per image before step 1); empty while training.
    phase = models.CharField(max_length=100, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    attempts = models.IntegerField(default=0)  # times a worker picked it up (re-queues add one)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    summary = models.JSONField(default=dict, blank=True)  # psnr/ssim/params/... from report.json
    report = models.JSONField(default=dict, blank=True)  # report.json as written
    cloned_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="clones"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name or f"run {self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    def out_dir(self):
        """Where this run's artifacts live: MEDIA_ROOT/runs/<id>/."""
        from pathlib import Path

        return Path(settings.MEDIA_ROOT) / "runs" / str(self.pk)


class MetricPoint(models.Model):
    """One logged value of one series (loss terms, total, lr, val_psnr, val_ssim) at a step."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics")
    name = models.CharField(max_length=64)
    step = models.IntegerField()
    value = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["run", "name", "step"])]
        constraints = [
            models.UniqueConstraint(fields=["run", "name", "step"], name="one_value_per_step")
        ]


class Artifact(models.Model):
    class Kind(models.TextChoices):
        ONNX_FP32 = "onnx_fp32"
        ONNX_INT8 = "onnx_int8"
        ONNX_FP16 = "onnx_fp16"
        CHECKPOINT = "checkpoint"
        REPORT = "report"
        SAMPLE = "sample"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    path = models.CharField(max_length=1000)  # relative to MEDIA_ROOT
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    psnr_vs_teacher = models.FloatField(null=True, blank=True)  # dB, test split
    ssim_vs_teacher = models.FloatField(null=True, blank=True)
    latency_ms_p50 = models.FloatField(null=True, blank=True)  # host ORT, 1 thread, 256x256
    extra = models.JSONField(default=dict, blank=True)  # latency table, parity max diff, ...
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["kind"]

    def __str__(self) -> str:
        return f"{self.run} {self.kind}"


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EnrollmentToken(models.Model):
    """Short-lived, shown once; exchanged by an agent for its own bearer token."""

    PREFIX = "dse_"

    name = models.CharField(max_length=200, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    expires = models.DateTimeField()
    revoked = models.BooleanField(default=False)
    uses = models.IntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    @classmethod
    def issue(cls, name: str = "", hours: float = 24) -> tuple[EnrollmentToken, str]:
        """Create a token; returns (record, the plain token, shown once)."""
        plain = cls.PREFIX + secrets.token_urlsafe(24)
        record = cls.objects.create(
            name=name,
            token_hash=_hash_token(plain),
            expires=timezone.now() + timedelta(hours=hours),
        )
        return record, plain

    @classmethod
    def find_valid(cls, plain: str) -> EnrollmentToken | None:
        tok = cls.objects.filter(token_hash=_hash_token(plain)).first()
        if tok is None or tok.revoked or tok.expires <= timezone.now():
            return None
        return tok


class Agent(models.Model):
    PREFIX = "dsa_"

    name = models.CharField(max_length=200)
    token_hash = models.CharField(max_length=64, unique=True)
    facts = models.JSONField(default=dict, blank=True)  # board, cpu, cores, ram, os, arch, ...
    enabled = models.BooleanField(default=True)  # benchmark every new artifact on it
    revoked = models.BooleanField(default=False)
    last_seen = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    enrolled_with = models.ForeignKey(
        EnrollmentToken, null=True, blank=True, on_delete=models.SET_NULL
    )
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @classmethod
    def issue(cls, name: str, facts: dict | None = None, **kwargs) -> tuple[Agent, str]:
        plain = cls.PREFIX + secrets.token_urlsafe(32)
        agent = cls.objects.create(
            name=name, token_hash=_hash_token(plain), facts=facts or {}, **kwargs
        )
        return agent, plain

    @classmethod
    def authenticate(cls, plain: str) -> Agent | None:
        agent = cls.objects.filter(token_hash=_hash_token(plain)).first()
        if agent is None or agent.revoked:
            return None
        return agent


class BenchmarkJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        CLAIMED = "claimed"
        DONE = "done"
        FAILED = "failed"

    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="bench_jobs")
    # Set when the job is meant for one agent; claimed_by is who holds the lease now.
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.CASCADE, related_name="assigned_jobs"
    )
    claimed_by = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="claimed_jobs"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    lease_expires = models.DateTimeField(null=True, blank=True)
    threads = models.JSONField(default=list)  # e.g. [1, 4]
    input_size = models.IntegerField(default=256)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)


class BenchmarkResult(models.Model):
    """What a device measured for one artifact at one thread count and input size."""

    job = models.ForeignKey(BenchmarkJob, on_delete=models.CASCADE, related_name="results")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="results")
    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="bench_results")
    threads = models.IntegerField()
    input_size = models.IntegerField()
    p50_ms = models.FloatField()
    p90_ms = models.FloatField()
    p99_ms = models.FloatField()
    mean_ms = models.FloatField(null=True, blank=True)
    min_ms = models.FloatField(null=True, blank=True)
    max_ms = models.FloatField(null=True, blank=True)
    load_ms = models.FloatField(null=True, blank=True)
    peak_rss_mb = models.FloatField(null=True, blank=True)
    psnr_vs_teacher = models.FloatField(null=True, blank=True)  # on-device outputs vs teacher
    environment = models.JSONField(default=dict, blank=True)  # ORT version, providers, ...
    created = models.DateTimeField(auto_now_add=True)
