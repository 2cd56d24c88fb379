"""CPU and memory of a process, read the same way for every variant.

CPU is user + system time of the whole process (all threads, so librdkafka's
threads count too). Peak RSS is the kernel's high-water mark (``VmHWM``), which
is exact where sampling RSS would miss short peaks.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by ``pid`` (this process if None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    cpu = psutil.Process(pid).cpu_times()
    return float(cpu.user + cpu.system)


def peak_rss_mb(pid: int | None = None) -> float:
    """The process's peak resident set size in MiB (Linux ``VmHWM``; current RSS elsewhere)."""
    status = Path(f"/proc/{pid or os.getpid()}/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # the kernel reports kB
    except OSError:
        pass
    return psutil.Process(pid).memory_info().rss / (1024.0 * 1024.0)
