"""Every model in the admin, read-mostly: state changes go through the pages and the workers."""

from django.contrib import admin

from jobs import models


@admin.register(models.Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "paired", "progress", "counts", "created")
    list_filter = ("status", "paired")
    search_fields = ("name", "path")
    readonly_fields = ("created",)


@admin.register(models.Teacher)
class TeacherAdmin(admin.ModelAdmin):
    list_display = ("name", "spec", "builtin", "size_bytes", "params", "created")
    list_filter = ("builtin",)
    search_fields = ("name", "spec")
    readonly_fields = ("fingerprint", "created")


@admin.register(models.StudentConfig)
class StudentConfigAdmin(admin.ModelAdmin):
    list_display = ("name", "builtin", "params", "macs_at_256")
    list_filter = ("builtin",)
    search_fields = ("name",)


class ArtifactInline(admin.TabularInline):
    model = models.Artifact
    extra = 0
    fields = ("kind", "path", "size_bytes", "sha256", "psnr_vs_teacher", "latency_ms_p50")
    readonly_fields = fields
    can_delete = False


@admin.register(models.Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "progress", "dataset", "teacher", "preset", "created")
    list_filter = ("status", "preset")
    search_fields = ("name", "config_hash", "worker")
    raw_id_fields = ("cloned_from",)
    readonly_fields = ("created", "started", "finished", "heartbeat", "config_hash")
    inlines = [ArtifactInline]


@admin.register(models.MetricPoint)
class MetricPointAdmin(admin.ModelAdmin):
    list_display = ("run", "name", "step", "value")
    list_filter = ("name",)
    raw_id_fields = ("run",)


@admin.register(models.Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ("run", "kind", "size_bytes", "psnr_vs_teacher", "latency_ms_p50", "created")
    list_filter = ("kind",)
    search_fields = ("sha256", "path")
    raw_id_fields = ("run",)


@admin.register(models.EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    """Tokens are issued on the Agents page (the plain token is shown once there)."""

    list_display = ("name", "expires", "revoked", "uses", "created")
    list_filter = ("revoked",)
    readonly_fields = ("token_hash", "uses", "created")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(models.Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("name", "enabled", "revoked", "last_seen", "created")
    list_filter = ("enabled", "revoked")
    search_fields = ("name",)
    readonly_fields = ("token_hash", "last_seen", "created")

    def has_add_permission(self, request) -> bool:
        return False  # agents register themselves with an enrollment token


@admin.register(models.BenchmarkJob)
class BenchmarkJobAdmin(admin.ModelAdmin):
    list_display = ("id", "artifact", "agent", "claimed_by", "status", "lease_expires", "created")
    list_filter = ("status",)
    raw_id_fields = ("artifact", "agent", "claimed_by")


@admin.register(models.BenchmarkResult)
class BenchmarkResultAdmin(admin.ModelAdmin):
    list_display = (
        "artifact",
        "agent",
        "threads",
        "input_size",
        "p50_ms",
        "peak_rss_mb",
        "created",
    )
    list_filter = ("agent", "threads", "input_size")
    raw_id_fields = ("job", "agent", "artifact")
