"""The points of the trade-offs page: one per exported model per device, from the database.

Host points are the latency the run measured on this server (ONNX Runtime, 256×256); device
points are what agents posted. Size and PSNR vs teacher belong to the model file; a device's own
PSNR (its outputs against the teacher's) is used where it posted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from jobs import charts
from jobs.models import Agent, Artifact, BenchmarkResult, Dataset, Run, Teacher

VARIANT_KINDS = {
    "fp32": Artifact.Kind.ONNX_FP32,
    "int8": Artifact.Kind.ONNX_INT8,
    "fp16": Artifact.Kind.ONNX_FP16,
}
HOST = "host"


@dataclass
class Filters:
    """What the page's filter form chose; empty strings and None mean "all"."""

    variant: str = ""
    device: str = ""  # "", "host" or an agent id
    dataset: int | None = None
    teacher: int | None = None
    threads: int = 1
    input_size: int = 256

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filters:
        """Read and check ?variant=&device=&dataset=&teacher=&threads=&input_size=."""
        variant = query.get("variant", "").strip()
        if variant and variant not in VARIANT_KINDS:
            raise ValueError(f"variant={variant!r}: choose fp32, int8 or fp16, or leave it empty")
        device = query.get("device", "").strip()
        if device and device != HOST and not device.isdigit():
            raise ValueError(f"device={device!r}: use 'host' or an agent's number")
        return cls(
            variant=variant,
            device=device,
            dataset=_whole(query, "dataset"),
            teacher=_whole(query, "teacher"),
            threads=_whole(query, "threads") or 1,
            input_size=_whole(query, "input_size") or 256,
        )

    def kinds(self) -> list[str]:
        return [VARIANT_KINDS[self.variant]] if self.variant else list(VARIANT_KINDS.values())

    def run_filter(self, prefix: str) -> dict[str, Any]:
        """ORM filter on the run behind an artifact, reached through `prefix` ("run__"...)."""
        where: dict[str, Any] = {}
        if self.dataset is not None:
            where[f"{prefix}dataset_id"] = self.dataset
        if self.teacher is not None:
            where[f"{prefix}teacher_id"] = self.teacher
        return where


def _whole(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r} is not a whole number")
    return int(raw)


def host_points(filters: Filters, run_url: Callable[[int], str]) -> list[dict[str, Any]]:
    """Every exported model with the latency its run measured on this server."""
    rows = (
        Artifact.objects.filter(kind__in=filters.kinds(), **filters.run_filter("run__"))
        .values(
            "id",
            "kind",
            "size_bytes",
            "psnr_vs_teacher",
            "latency_ms_p50",
            "extra",
            "run_id",
            "run__name",
            "run__teacher_id",
        )
        .order_by("run_id", "kind")
    )
    points = []
    for r in rows:
        latency = r["latency_ms_p50"]
        if filters.threads != 1:
            # The run's report keeps a per-thread-count table: {"4": {"p50": ...}}.
            table = (r["extra"] or {}).get("latency") or {}
            latency = (table.get(str(filters.threads)) or {}).get("p50")
        points.append(
            _point(
                r["id"],
                r["kind"],
                r["run_id"],
                r["run__name"],
                r["size_bytes"],
                latency,
                r["psnr_vs_teacher"],
                run_url,
                teacher=r["run__teacher_id"],
            )
        )
    return points


def device_points(
    filters: Filters, run_url: Callable[[int], str]
) -> dict[int, tuple[str, list[dict[str, Any]]]]:
    """Per agent: its name and one point per model it benchmarked (its latest result)."""
    qs = BenchmarkResult.objects.filter(
        threads=filters.threads,
        input_size=filters.input_size,
        artifact__kind__in=filters.kinds(),
        **filters.run_filter("artifact__run__"),
    )
    if filters.device.isdigit():
        qs = qs.filter(agent_id=int(filters.device))
    rows = qs.values(
        "agent_id",
        "agent__name",
        "artifact_id",
        "artifact__kind",
        "artifact__size_bytes",
        "artifact__psnr_vs_teacher",
        "psnr_vs_teacher",
        "p50_ms",
        "artifact__run_id",
        "artifact__run__name",
    ).order_by("created", "id")
    latest: dict[tuple[int, int], dict] = {}
    for r in rows:
        latest[(r["agent_id"], r["artifact_id"])] = r  # later results replace earlier ones
    out: dict[int, tuple[str, list[dict[str, Any]]]] = {}
    for (agent_id, _), r in latest.items():
        psnr = (
            r["psnr_vs_teacher"]
            if r["psnr_vs_teacher"] is not None
            else r["artifact__psnr_vs_teacher"]
        )
        point = _point(
            r["artifact_id"],
            r["artifact__kind"],
            r["artifact__run_id"],
            r["artifact__run__name"],
            r["artifact__size_bytes"],
            r["p50_ms"],
            psnr,
            run_url,
        )
        out.setdefault(agent_id, (r["agent__name"], []))[1].append(point)
    return out


def _point(artifact_id, kind, run_id, run_name, size, latency, psnr, run_url, teacher=None):
    variant = charts.VARIANT_LABELS.get(kind, kind)
    return {
        "artifact": artifact_id,
        "run": run_id,
        "label": f"#{run_id} {run_name} · {variant}".replace("  ", " "),
        "kind": kind,
        "variant": variant,
        "size": size,
        "latency": latency,
        "psnr": psnr,
        "url": run_url(run_id),
        "teacher": teacher,
    }


def teacher_references(teacher_ids: set[int]) -> list[dict[str, Any]]:
    """Each teacher's file size and the host latency its latest run measured (report.json)."""
    refs = []
    for teacher in Teacher.objects.filter(pk__in=teacher_ids).order_by("name"):
        measured = (
            Run.objects.filter(teacher=teacher, status=Run.Status.SUCCEEDED)
            .order_by("-finished")
            .values_list("summary__teacher_latency_ms_p50", "report__teacher__size_bytes")[:20]
        )
        latency = next((lat for lat, _ in measured if lat is not None), None)
        size = teacher.size_bytes or next((s for _, s in measured if s), None)
        if latency is None:
            continue
        refs.append({"label": teacher.name, "size": size, "latency": latency, "spec": teacher.spec})
    return refs


def tradeoff_charts(filters: Filters, run_url: Callable[[int], str]) -> dict[str, Any]:
    """One chart per device (this server first), each with its Pareto front listed."""
    out: list[dict[str, Any]] = []
    size_note = f"{filters.input_size}×{filters.input_size}"
    threads = f"{filters.threads} thread{'s' if filters.threads != 1 else ''}"
    if filters.device in ("", HOST):
        points = [p for p in host_points(filters, run_url) if p["latency"] is not None]
        teachers = teacher_references({p["teacher"] for p in points})
        out.append(
            _chart("host", "This server", f"ONNX Runtime, {threads}, 256×256", points, teachers)
        )
    if filters.device != HOST:
        for agent_id, (name, points) in sorted(device_points(filters, run_url).items()):
            out.append(
                _chart(f"agent-{agent_id}", name, f"agent, {threads}, {size_note}", points, [])
            )
    return {"filters": asdict(filters), "charts": out}


def _chart(key, title, how, points, teachers) -> dict[str, Any]:
    front = charts.pareto_front(points)
    label = f"latency p50 (ms; {how})"
    return {
        "key": key,
        "title": title,
        "measured": how,
        "count": len(points),
        "front": [points[i] for i in front],
        "teachers": teachers,
        "figure": charts.tradeoff_figure(points, front, teachers, latency_label=label),
    }


def filter_options() -> dict[str, Any]:
    """Choices for the filter form: variants, devices with results, datasets, teachers."""
    agents = Agent.objects.filter(results__isnull=False).distinct().order_by("name")
    return {
        "variants": list(VARIANT_KINDS),
        "devices": [{"value": HOST, "label": "This server"}]
        + [{"value": str(a.pk), "label": a.name} for a in agents.only("id", "name")],
        "datasets": list(Dataset.objects.order_by("name").values("id", "name")),
        "teachers": list(Teacher.objects.order_by("name").values("id", "name")),
    }
