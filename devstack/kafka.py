"""A real Apache Kafka broker (KRaft, single node) as a local JVM process.

No Docker: the pinned broker jars come from Maven Central once
(``deploy/kafka/pom.xml`` -> ``.cache/kafka-<version>/libs``) and the broker
runs with the system JDK. Used by ``make up`` and by the test fixtures.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from string import Template
from types import TracebackType
from typing import TYPE_CHECKING, Any

from devstack.errors import DevstackError
from devstack.ports import port_is_open
from devstack.procs import group_alive, spawn_detached, stop_group, tail

if TYPE_CHECKING:
    from devstack.kafka_security import BrokerSecurity

#: Must match <kafka.version> in deploy/kafka/pom.xml.
KAFKA_VERSION = "3.9.2"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"
POM = DEPLOY_DIR / "pom.xml"
SERVER_PROPERTIES_TEMPLATE = DEPLOY_DIR / "server.properties"
LOG4J_PROPERTIES = DEPLOY_DIR / "log4j.properties"
#: Heap of the dev broker; enough for tests and the benchmark, small for laptops.
DEFAULT_HEAP = "768m"
_MARKER_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"


def default_cache_dir() -> Path:
    """Where resolved jars live: ``$OMNI_DEVSTACK_CACHE`` or ``<repo>/.cache`` (gitignored)."""
    return Path(os.environ.get("OMNI_DEVSTACK_CACHE") or REPO_ROOT / ".cache")


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Parallel test sessions and `make up` may resolve at the same moment.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def find_executable(name: str, hint: str) -> str:
    """Absolute path of ``name`` on PATH (or JAVA_HOME for java); DevstackError otherwise."""
    if name == "java" and os.environ.get("JAVA_HOME"):
        candidate = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise DevstackError(f"`{name}` was not found on PATH. {hint}")
    return found


def resolve_kafka_jars(cache_dir: Path | None = None) -> Path:
    """Download the pinned broker jars once; returns the ``libs`` directory.

    A marker file holding the POM's digest is written only after Maven
    succeeded, so an interrupted copy (or a changed POM) is redone.
    """
    base = (cache_dir or default_cache_dir()) / f"kafka-{KAFKA_VERSION}"
    libs = base / "libs"
    marker = base / "libs.ok"
    digest = _pom_digest()

    def complete() -> bool:
        try:
            return marker.read_text().strip() == digest and (libs / _MARKER_JAR).is_file()
        except OSError:
            return False

    if complete():
        return libs
    with _file_lock(base / ".lock"):
        if complete():  # another process finished while we waited for the lock
            return libs
        mvn = find_executable(
            "mvn",
            "Maven downloads the pinned Kafka jars once. Run `make bootstrap` "
            "(or `sudo apt-get install maven`).",
        )
        marker.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        argv = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not (libs / _MARKER_JAR).is_file():
            output = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise DevstackError(
                f"Resolving the Kafka {KAFKA_VERSION} jars with Maven failed "
                f"(exit {result.returncode}). Maven Central must be reachable (or a "
                "mirror configured in ~/.m2/settings.xml); fix that and rerun "
                f"`python -m devstack kafka-jars`.\n$ {' '.join(argv)}\n{output}"
            )
        marker.write_text(digest + "\n")
    return libs


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding.

    Same format as ``kafka.tools.StorageTool random-uuid``; generated here to
    save a JVM start. Like Kafka we avoid a leading '-' (read as a CLI flag).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def render_server_properties(port: int, controller_port: int, log_dirs: Path) -> str:
    """deploy/kafka/server.properties with the ports and data dir filled in."""
    template = Template(SERVER_PROPERTIES_TEMPLATE.read_text())
    return template.substitute(port=port, controller_port=controller_port, log_dirs=str(log_dirs))


def override_properties(text: str, overrides: dict[str, str]) -> str:
    """``text`` (a .properties file) with the lines of ``overrides``' keys replaced in place
    and the other keys appended, so each key appears once."""
    lines, seen = [], set()
    for raw in text.splitlines():
        key = raw.split("=", 1)[0].strip()
        if "=" in raw and not raw.lstrip().startswith("#") and key in overrides:
            lines.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            lines.append(raw)
    added = [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    if added:
        lines += ["", "# --- Secured broker (devstack/kafka_security.py) ---", *added]
    return "\n".join(lines) + "\n"


def _quiet_admin(bootstrap: str, extra: dict[str, str] | None = None) -> Any:
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        # librdkafka backs off up to 10 s between reconnects by default,
        # which would add seconds to every readiness check.
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
        # "Connection refused" while the broker boots is expected, not news.
        "log_level": 0,
        **(extra or {}),
    }
    return AdminClient(config)


def kafka_answers(
    bootstrap: str, timeout: float = 3.0, extra: dict[str, str] | None = None
) -> bool:
    """True if a Kafka broker at ``bootstrap`` returns metadata with at least one broker."""
    try:
        metadata = _quiet_admin(bootstrap, extra).list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(metadata.brokers)


def wait_kafka_ready(
    bootstrap: str,
    timeout: float,
    *,
    is_alive: Callable[[], bool] | None = None,
    log_path: Path | None = None,
    extra: dict[str, str] | None = None,
) -> float:
    """Poll until the broker answers metadata requests; returns the seconds waited.

    ``is_alive`` lets us fail at once (with the log) when the process died
    instead of waiting for the whole timeout.
    """
    started = time.monotonic()
    deadline = started + timeout
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    admin = None
    last_error = "no answer yet"
    while True:
        if is_alive is not None and not is_alive():
            raise DevstackError(
                f"The Kafka broker for {bootstrap} exited while starting. "
                f"Its log{f' ({log_path})' if log_path else ''} says:\n"
                f"{tail(log_path) if log_path else '(no log)'}\n"
                "Fix the cause above (port clash, corrupt data dir: delete it) and retry."
            )
        # Only build the client once the port listens: keeps librdkafka quiet.
        if port_is_open(host or "127.0.0.1", int(port)):
            if admin is None:
                admin = _quiet_admin(bootstrap, extra)
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return time.monotonic() - started
                last_error = "metadata lists no broker yet"
            except Exception as exc:  # KafkaException while the broker boots
                last_error = str(exc)
        if time.monotonic() >= deadline:
            raise DevstackError(
                f"Kafka at {bootstrap} did not become ready within {timeout:.0f} s "
                f"(last error: {last_error}). "
                + (f"Last lines of {log_path}:\n{tail(log_path)}\n" if log_path else "")
                + "Check the log above; a slow machine may need a longer timeout."
            )
        time.sleep(0.2)


class LocalKafka:
    """One KRaft broker+controller JVM bound to 127.0.0.1.

    ``workdir`` holds ``server.properties``, ``data/`` and ``kafka.log``;
    a formatted ``data/`` is reused, so topics survive a restart.
    With ``security`` the client listener is SASL_SSL (SCRAM-SHA-512) with the
    StandardAuthorizer, its users formatted into the storage (devstack/kafka_security.py).
    """

    def __init__(
        self,
        port: int,
        controller_port: int,
        workdir: Path,
        *,
        heap: str = DEFAULT_HEAP,
        cache_dir: Path | None = None,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.security = security
        self.port = port
        self.controller_port = controller_port
        self.workdir = Path(workdir)
        self.heap = heap
        self.cache_dir = cache_dir
        self.data_dir = self.workdir / "data"
        self.properties_path = self.workdir / "server.properties"
        self.log_path = self.workdir / "kafka.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client_config(self, principal: str | None = None) -> dict[str, Any]:
        """librdkafka settings reaching this broker as ``principal`` (the admin by
        default; ignored on a plaintext broker)."""
        from producers.config import kafka_client_config

        if self.security is None:
            return kafka_client_config(self.bootstrap)
        from devstack.kafka_security import ADMIN_PRINCIPAL

        return kafka_client_config(
            self.bootstrap, self.security.client(principal or ADMIN_PRINCIPAL)
        )

    def _java(self) -> str:
        return find_executable(
            "java",
            "Kafka needs a JDK 17+: run `make bootstrap` "
            "(or `sudo apt-get install openjdk-17-jre-headless`).",
        )

    def _format(self, java: str, libs: Path) -> None:
        argv = [
            java,
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            new_cluster_id(),
            "-c",
            str(self.properties_path),
            *(self.security.format_arguments() if self.security is not None else []),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DevstackError(
                f"Formatting the Kafka data dir {self.data_dir} failed (exit "
                f"{result.returncode}). Delete that directory and retry.\n"
                f"{result.stdout}{result.stderr}"
            )

    def start(self) -> None:
        """Resolve jars, format storage on first use, spawn the broker (detached)."""
        if self.is_running():
            return
        libs = resolve_kafka_jars(self.cache_dir)
        java = self._java()
        for port, what in ((self.port, "client"), (self.controller_port, "controller")):
            if port_is_open("127.0.0.1", port):
                raise DevstackError(
                    f"Cannot start Kafka: its {what} port 127.0.0.1:{port} is already in "
                    "use by another process. Stop that process or choose other ports."
                )
        self.workdir.mkdir(parents=True, exist_ok=True)
        properties = render_server_properties(self.port, self.controller_port, self.data_dir)
        if self.security is not None:
            properties = override_properties(
                properties, self.security.server_properties(self.port, self.controller_port)
            )
        self.properties_path.write_text(properties)
        self.properties_path.chmod(0o600)  # the secured broker's holds passwords
        if not (self.data_dir / "meta.properties").is_file():
            self._format(java, libs)
        argv = [
            java,
            f"-Xmx{self.heap}",
            "-Xms256m",
            # Crash loudly instead of limping on when the heap is too small.
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{LOG4J_PROPERTIES}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.properties_path),
        ]
        self._proc = spawn_detached(argv, self.log_path, cwd=self.workdir)

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Block until the broker answers metadata; returns seconds waited."""
        proc = self._proc
        if proc is None:
            raise DevstackError("LocalKafka.wait_ready() called before start(); call start().")
        extra = {k: v for k, v in self.client_config().items() if k != "bootstrap.servers"}
        return wait_kafka_ready(
            self.bootstrap,
            timeout,
            is_alive=lambda: proc.poll() is None,
            log_path=self.log_path,
            extra=extra,
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the broker's process group; SIGKILL after ``timeout`` s."""
        if self._proc is None:
            return
        if group_alive(self._proc.pid) or self._proc.poll() is None:
            stop_group(self._proc.pid, timeout=timeout, proc=self._proc)
        self._proc = None

    def __enter__(self) -> LocalKafka:
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
