"""What this device is: board, CPU, cores, RAM, OS, Python and onnxruntime, sent to the server."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path


def _read(path: str) -> str:
    try:
        # Device-tree strings end in a NUL byte.
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""


def board_model() -> str:
    """The board name from the device tree (Raspberry Pi, Jetson), else the DMI product name."""
    return _read("/proc/device-tree/model") or _read("/sys/devices/virtual/dmi/id/product_name")


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it; ARM kernels use other keys than x86 ones."""
    names = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if value and key not in names:
            names[key] = value
    for key in ("model name", "hardware", "cpu model", "processor"):
        value = names.get(key, "")
        if value and not value.isdigit():
            return value
    if "cpu part" in names:
        return f"ARM part {names['cpu part']} (implementer {names.get('cpu implementer', '?')})"
    return platform.processor() or platform.machine()


def ram_mb() -> int | None:
    """Total memory in MiB (MemTotal from /proc/meminfo)."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def os_name() -> str:
    """The distribution's pretty name, else what platform says."""
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def runtime_facts() -> dict:
    """onnxruntime version and the execution providers this build offers."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"onnxruntime": None, "providers": [], "onnxruntime_error": str(exc)}
    return {"onnxruntime": ort.__version__, "providers": list(ort.get_available_providers())}


def collect_facts() -> dict:
    """All facts the Agents page shows, as plain JSON."""
    return {
        "board": board_model(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_mb": ram_mb(),
        "os": os_name(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        **runtime_facts(),
    }
