"""Detached child processes: spawn, pidfiles, liveness, group stop.

Every service runs in its own session/process group so that stopping it
also stops anything it forked, and so Ctrl-C in the developer's terminal
does not kill it half-way (``down`` stops it cleanly instead).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PROC = Path("/proc")


def spawn_detached(
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new process group, stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # O_APPEND: the child may share the file with its own file logger.
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if gone/unknown."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and ')' : split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (guards pidfiles against pid reuse); None off Linux."""
    fields = _stat_fields(pid)
    # Field 22 of stat = index 19 after "pid (comm)".
    return fields[19] if fields and len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    # A zombie is dead; with a non-reaping PID 1 it may stay listed forever.
    return not (fields and fields[0] in ("Z", "X"))


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of process group ``pgid`` exists."""
    if not _PROC.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            proc.poll()  # reap our own child so it does not linger as a zombie
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop_group(
    pgid: int, *, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """SIGTERM process group ``pgid``, wait up to ``timeout`` s, then SIGKILL it."""
    if not group_alive(pgid):
        if proc is not None:
            proc.poll()
        return
    _signal_group(pgid, signal.SIGTERM)
    if not _wait_group_gone(pgid, timeout, proc):
        _signal_group(pgid, signal.SIGKILL)
        _wait_group_gone(pgid, 10.0, proc)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def write_pidfile(path: Path, pid: int) -> None:
    """Record ``pid`` with its start time so a reused pid is not mistaken for ours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {start_time(pid) or '-'}\n")
    tmp.replace(path)


def read_pidfile(path: Path) -> int | None:
    """The pid in ``path`` if that very process still runs, else None."""
    try:
        parts = path.read_text().split()
        pid = int(parts[0])
        recorded = parts[1] if len(parts) > 1 else "-"
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    current = start_time(pid)
    if recorded != "-" and current is not None and current != recorded:
        return None  # the pid was reused by an unrelated process
    return pid


def tail(path: Path, lines: int = 30, since: int = 0) -> str:
    """Last ``lines`` lines of a log file written after byte ``since`` ('' if none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(since, size - 64 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
