"""Template filters for numbers with units: durations, sizes, percentages."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """Seconds as '42 s', '3 min 20 s' or '2 h 5 min'; an em dash when unknown."""
    if seconds is None:
        return "—"
    s = max(0, round(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


@register.filter
def filesize(size_bytes: int | None) -> str:
    """Bytes as KB (below 10 MB) or MB, with the unit."""
    if size_bytes is None:
        return "—"
    if size_bytes < 10 * 1024 * 1024:
        return f"{size_bytes / 1024:,.1f} KB"
    return f"{size_bytes / 1024 / 1024:,.1f} MB"


@register.filter
def percent(fraction: float | None) -> str:
    """0..1 as a whole percentage."""
    if fraction is None:
        return "—"
    return f"{100 * float(fraction):.0f}%"


@register.filter
def number(value: float | None, digits: int = 2) -> str:
    """A float with `digits` decimals; an em dash when missing."""
    if value is None:
        return "—"
    return f"{float(value):,.{int(digits)}f}"


@register.filter
def artifact_kind(kind: str) -> str:
    """'onnx_int8' as 'ONNX int8'."""
    fmt, _, variant = kind.partition("_")
    return f"{fmt.upper()} {variant}" if fmt == "onnx" and variant else kind
