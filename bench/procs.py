"""Child processes of the benchmark: the worker (c) and the loops (a, b, d, e).

Each runs in its own process group (so a Ctrl-C in the terminal reaches only
the driver, which then stops them in order) and logs to a file in the run's
temp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from devstack.kafka import REPO_ROOT
from devstack.procs import spawn_detached, stop_group, tail
from processors.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings()`` in a child equal ``settings``."""
    return settings.as_env(os.environ)


def http_get(url: str, timeout: float = 2.0) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return None, ""


class Child:
    """A Python module run as a detached child with the settings' ``OMNI_*`` env.

    ``interpreter`` (default: the bench's own python) runs it, e.g. another venv's.
    """

    def __init__(
        self,
        argv: list[str],
        settings: Settings,
        log_path: Path,
        interpreter: str | Path | None = None,
    ) -> None:
        self.argv = [str(interpreter or sys.executable), *argv]
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("child not started")
        return self.proc.pid

    def start(self) -> Self:
        self.proc = spawn_detached(
            self.argv, self.log_path, cwd=REPO_ROOT, env=settings_env(self.settings)
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise RuntimeError(f"{what} exited early; log tail:\n{tail(self.log_path, 40)}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid, timeout=timeout, proc=self.proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until(
    probe: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> float:
    """Poll ``probe``; returns the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_samples(text: str, name: str) -> dict[str, float]:
    """Samples of ``name`` by their label text (``'agent="ingest"'``; ``''`` when unlabelled)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            series, value = line.rsplit(" ", 1)
            found[series[len(name) :].strip("{}")] = float(value)
    return found


class Worker(Child):
    """``python -m processors worker``, as shipped."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(["-m", "processors", "worker"], settings, log_path)

    def ready(self) -> bool:
        self.check_alive("the worker")
        status, _ = http_get(f"http://127.0.0.1:{self.settings.web_port}/readyz")
        return status == 200

    def metrics(self) -> str:
        self.check_alive("the worker")
        status, text = http_get(f"http://127.0.0.1:{self.settings.metrics_port}/metrics")
        return text if status == 200 else ""

    def processed(self) -> float:
        return metric_sum(self.metrics(), "omni_events_processed_total")
