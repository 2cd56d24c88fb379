"""A real Redis server as a local process (no persistence, loopback only)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis as redis_py

from devstack.errors import DevstackError
from devstack.ports import port_is_open
from devstack.procs import spawn_detached, stop_group, tail

_INSTALL_HINT = "Run `make bootstrap` (or `sudo apt-get install redis-server`)."


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary; DevstackError with the fix if missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    # Debian puts it in /usr/bin, but PATH may be trimmed (cron, IDEs).
    for candidate in (Path("/usr/bin/redis-server"), Path("/usr/local/bin/redis-server")):
        if candidate.is_file():
            return str(candidate)
    raise DevstackError(f"`redis-server` was not found on PATH. {_INSTALL_HINT}")


def redis_answers(host: str, port: int, password: str | None = None, timeout: float = 1.0) -> bool:
    """True if a Redis at ``host:port`` answers PING (with ``password`` if given)."""
    client = redis_py.Redis(
        host=host,
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        return bool(client.ping())
    except redis_py.RedisError:
        return False
    finally:
        client.close()


class LocalRedis:
    """``redis-server`` bound to 127.0.0.1, in-memory only, in its own process group."""

    def __init__(self, port: int, workdir: Path, *, password: str | None = None) -> None:
        self.port = port
        self.workdir = Path(workdir)
        self.password = password
        self.log_path = self.workdir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            return
        binary = find_redis_server()
        if port_is_open("127.0.0.1", self.port):
            raise DevstackError(
                f"Cannot start Redis: port 127.0.0.1:{self.port} is already in use by "
                "another process. Stop that process or choose another port."
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            # Dev/test data is disposable: no RDB snapshots, no AOF.
            "--save",
            "",
            "--appendonly",
            "no",
            # Fail writes loudly rather than silently evicting customer state.
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        self._proc = spawn_detached(argv, self.log_path, cwd=self.workdir)

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Block until PING answers; returns seconds waited."""
        proc = self._proc
        if proc is None:
            raise DevstackError("LocalRedis.wait_ready() called before start(); call start().")
        started = time.monotonic()
        while not redis_answers("127.0.0.1", self.port, self.password, timeout=0.5):
            if proc.poll() is not None:
                raise DevstackError(
                    f"redis-server on port {self.port} exited (code {proc.returncode}) while "
                    f"starting. Its log ({self.log_path}) says:\n{tail(self.log_path)}\n"
                    "Fix the cause above and retry."
                )
            if time.monotonic() - started > timeout:
                raise DevstackError(
                    f"Redis on 127.0.0.1:{self.port} did not answer PING within {timeout:.0f} s. "
                    f"Last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM redis-server's process group; SIGKILL after ``timeout`` s."""
        if self._proc is None:
            return
        stop_group(self._proc.pid, timeout=timeout, proc=self._proc)
        self._proc = None

    def __enter__(self) -> LocalRedis:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
