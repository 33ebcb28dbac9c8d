"""What the figures were measured on: versions, cores, CPU model."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(server_version: str) -> list[str]:
    """Lines naming the machine and the versions of everything measured."""

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    return [
        f"machine: {os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()}",
        f"python {sys.version.split()[0]}, server {server_version}, redis-py {version('redis')}, "
        f"hiredis {version('hiredis')}, streamcqrs {version('streamcqrs')}",
    ]
