"""What the benchmark ran on: CPU, memory, kernel, load, and the versions measured."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any, Sequence

from pailfs.bench.systems import System


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def seaweedfs_version() -> str:
    try:
        from pailfs.server import weed_binary

        out = subprocess.run([weed_binary(), "version"], capture_output=True, text=True, timeout=10).stdout
    except Exception:  # noqa: BLE001 - a description, not a requirement
        return "unknown"
    for line in out.splitlines():
        if line.startswith("version"):
            parts = line.split()
            return f"SeaweedFS {parts[2]}" if len(parts) > 2 else line
    return "unknown"


def describe(systems: Sequence[System], load_before: tuple[float, float, float]) -> dict[str, Any]:
    versions: dict[str, str] = {"seaweedfs": seaweedfs_version(), "python": sys.version.split()[0]}
    for system in systems:
        try:
            versions[system.name] = system.version()
        except Exception:  # noqa: BLE001
            versions[system.name] = "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_bytes": _mem_total(),
        "kernel": platform.release(),
        "os": _os_release(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "versions": versions,
    }


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()
