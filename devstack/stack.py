"""``make up`` / ``make down``: the developer's long-lived local stack.

State lives in ``<repo>/.omni/stack`` (gitignored)::

    kafka.pid   kafka/{server.properties,data/,kafka.log}
    kafka.secure  kafka-secure/{tls/,server.properties,data/,kafka.log}  (``up --secure``:
                SASL_SSL + ACLs; tls/ holds the CA, keystore, passwords, env/<principal>.env)
    redis.pid   redis/redis.log     redis.reused  (a Redis we found, never stop)
    worker.pid  worker.log
    action-token.key  (the stack's random OMNI_ACTION_TOKEN_KEY unless one is set; 0600)
    .lock       (serialises concurrent up/down)

A pidfile records pid + kernel start time, so a recycled pid is never
mistaken for ours. Kafka data survives ``down`` (``down --wipe`` clears it).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import re
import shlex
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from devstack.errors import DevstackError
from devstack.kafka import REPO_ROOT, LocalKafka, kafka_answers, wait_kafka_ready
from devstack.kafka_security import (
    ADMIN_PRINCIPAL,
    WORKER_PRINCIPAL,
    BrokerSecurity,
    create_acls,
    env_file_hint,
)
from devstack.ports import port_is_open
from devstack.procs import (
    read_pidfile,
    spawn_detached,
    stop_group,
    tail,
    write_pidfile,
)
from devstack.redis import WORKER_USER, LocalRedis, RedisAccess, redis_answers, url_answers
from producers.config import kafka_client_config

if TYPE_CHECKING:
    from processors.settings import Settings

STATE_DIR = REPO_ROOT / ".omni" / "stack"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
DEFAULT_WORKER_CMD = f"{shlex.quote(sys.executable)} -m processors worker"
KAFKA_READY_TIMEOUT = 120.0
WORKER_STOP_TIMEOUT = 30.0

Say = Callable[[str], None]

#: ``OMNI_STACK_SECURE=1 make up``: services with users, passwords and TLS.
SECURE_ENV = "OMNI_STACK_SECURE"


def secure_stack_requested(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(SECURE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class StackPaths:
    """Every file of the stack, derived from one state dir (tests use a temp one)."""

    root: Path

    @property
    def kafka_pid(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    @property
    def kafka_secure_dir(self) -> Path:
        """The secured broker's work dir: its storage is formatted with SCRAM users, so
        it is never shared with the plaintext broker's."""
        return self.root / "kafka-secure"

    @property
    def kafka_secure(self) -> Path:
        """Present while the broker devstack runs is the secured one."""
        return self.root / "kafka.secure"

    @property
    def redis_pid(self) -> Path:
        return self.root / "redis.pid"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_reused(self) -> Path:
        return self.root / "redis.reused"

    @property
    def worker_pid(self) -> Path:
        return self.root / "worker.pid"

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    @property
    def action_token_key(self) -> Path:
        return self.root / "action-token.key"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def line(component: str, state: str, address: str = "", detail: str = "") -> str:
    """The one status line per component that up/down/status print."""
    fields = [f"{component:<7} {state:<10}", address, detail]
    return " ".join(f for f in fields if f).rstrip()


def parse_local_bootstrap(bootstrap: str) -> int | None:
    """Port of a single loopback bootstrap ("127.0.0.1:9092"), else None (external)."""
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    if len(servers) != 1:
        return None
    host, sep, port = servers[0].rpartition(":")
    if not sep or host not in LOCAL_HOSTS or not port.isdigit():
        return None
    return int(port)


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    password: str | None

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS


def parse_redis_url(url: str) -> RedisTarget:
    """Host, port and password of a redis:// URL (rediss:// counts as external)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise DevstackError(
            f"OMNI_REDIS_URL must be a redis:// URL, got scheme {parts.scheme!r}. "
            "Fix it, e.g. OMNI_REDIS_URL=redis://127.0.0.1:6379/0."
        )
    host = parts.hostname or "127.0.0.1"
    if parts.scheme == "rediss":
        host = f"tls:{host}"  # never "local": we do not run TLS Redis
    password = unquote(parts.password) if parts.password else None
    return RedisTarget(host, parts.port or 6379, password)


@contextlib.contextmanager
def state_lock(paths: StackPaths) -> Iterator[None]:
    # Two `make up` in two terminals must not start two brokers.
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_settings() -> Settings:
    try:
        from processors.settings import Settings
    except ImportError as exc:
        raise DevstackError(
            f"Cannot import processors.settings ({exc}). Run from the repo's venv "
            "(`make bootstrap`, then `.venv/bin/python -m devstack ...`)."
        ) from exc
    # Through Any: without the pydantic mypy plugin, mypy thinks every field is required.
    settings_cls: Any = Settings
    try:
        settings: Settings = settings_cls()
        return settings
    except Exception as exc:  # pydantic ValidationError: a bad OMNI_* value
        raise DevstackError(
            f"The OMNI_* settings are invalid: {exc}\nFix the environment or .env and retry."
        ) from exc


# --- Kafka -------------------------------------------------------------------


def secure_requested(flag: bool | None = None) -> bool:
    """``--secure``, else ``OMNI_STACK_SECURE`` (1/true/yes/on)."""
    return secure_stack_requested() if flag is None else flag


def stack_security(paths: StackPaths) -> BrokerSecurity | None:
    """The secured broker's users and CA while ``up --secure`` runs it, else None."""
    if not paths.kafka_secure.exists():
        return None
    return BrokerSecurity.load(paths.kafka_secure_dir / "tls")


def _running_kafka_port(paths: StackPaths) -> int | None:
    """Client port in the server.properties our running broker was started with."""
    workdir = paths.kafka_secure_dir if paths.kafka_secure.exists() else paths.kafka_dir
    try:
        text = (workdir / "server.properties").read_text()
    except OSError:
        return None
    found = re.search(r"^listeners=(?:PLAINTEXT|SASL_SSL)://[^:]+:(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def up_kafka(
    settings: Settings,
    paths: StackPaths,
    say: Say,
    controller_port: int | None,
    security: BrokerSecurity | None = None,
) -> None:
    """Start (or find) the broker; with ``security`` the secured one (SASL_SSL, ACLs)."""
    bootstrap: str = settings.kafka_bootstrap
    client_config: dict[str, str] = settings.kafka_client_config()
    extra = {k: v for k, v in client_config.items() if k != "bootstrap.servers"}
    port = parse_local_bootstrap(bootstrap)
    if security is not None:
        if port is None:
            raise DevstackError(
                f"`up --secure` starts a local broker, but OMNI_KAFKA_BOOTSTRAP={bootstrap} "
                "is not one loopback address. Unset it or set it to 127.0.0.1:<free port>."
            )
        extra = {
            k: v
            for k, v in kafka_client_config(bootstrap, security.client(ADMIN_PRINCIPAL)).items()
            if k != "bootstrap.servers"
        }
    elif port is None or extra:
        # A remote or SASL cluster: use it as it is, never manage it.
        if not kafka_answers(bootstrap, timeout=10, extra=extra):
            raise DevstackError(
                f"Kafka at OMNI_KAFKA_BOOTSTRAP={bootstrap} does not answer. Start that "
                "cluster, or unset OMNI_KAFKA_BOOTSTRAP to run a local broker on 127.0.0.1:9092."
            )
        say(line("kafka", "external", bootstrap, "(not managed by devstack)"))
        return

    workdir = paths.kafka_dir if security is None else paths.kafka_secure_dir
    pid = read_pidfile(paths.kafka_pid)
    log_path = workdir / "kafka.log"
    if pid is not None:
        if paths.kafka_secure.exists() != (security is not None):
            running, asked = (
                ("secured", "plaintext") if security is None else ("plaintext", "secured")
            )
            raise DevstackError(
                f"Our Kafka (pid {pid}) is the {running} broker, but the {asked} one was asked "
                "for (`up --secure` / OMNI_STACK_SECURE=1 choose). Run `make down` first."
            )
        running_port = _running_kafka_port(paths)
        if running_port is not None and running_port != port:
            raise DevstackError(
                f"Our Kafka (pid {pid}) runs on 127.0.0.1:{running_port}, but "
                f"OMNI_KAFKA_BOOTSTRAP asks for {bootstrap}. Run `make down` first, or "
                f"set OMNI_KAFKA_BOOTSTRAP=127.0.0.1:{running_port}."
            )
        alive_pid = pid

        def still_ours() -> bool:
            return read_pidfile(paths.kafka_pid) == alive_pid

        # It may still be booting (a parallel `up`): wait rather than report it down.
        wait_kafka_ready(
            bootstrap, KAFKA_READY_TIMEOUT, is_alive=still_ours, log_path=log_path, extra=extra
        )
        say(line("kafka", "running", bootstrap, f"pid {pid}"))
        return
    paths.kafka_pid.unlink(missing_ok=True)

    if port_is_open("127.0.0.1", port):
        explicit = "kafka_bootstrap" in settings.model_fields_set
        if explicit and security is None and kafka_answers(bootstrap, timeout=5):
            say(line("kafka", "external", bootstrap, "(already running; not managed)"))
            return
        raise DevstackError(
            f"Port {port} ({bootstrap}) is taken by a process that is not our Kafka. "
            f"Free the port (see `ss -ltnp 'sport = :{port}'`), or set "
            "OMNI_KAFKA_BOOTSTRAP to a Kafka you want to use, or to a free local port "
            "(e.g. OMNI_KAFKA_BOOTSTRAP=127.0.0.1:29092) for devstack to start one there."
        )

    cport = controller_port if controller_port is not None else port + 1
    if port_is_open("127.0.0.1", cport):
        raise DevstackError(
            f"The Kafka controller port 127.0.0.1:{cport} is taken by another process. "
            "Free it or pass `--kafka-controller-port <free port>`."
        )
    kafka = LocalKafka(port, cport, workdir, security=security)
    kafka.start()
    assert kafka.pid is not None
    write_pidfile(paths.kafka_pid, kafka.pid)
    if security is not None:
        paths.kafka_secure.write_text(f"{port}\n")
    try:
        waited = kafka.wait_ready(KAFKA_READY_TIMEOUT)
    except BaseException:
        kafka.stop()
        paths.kafka_pid.unlink(missing_ok=True)
        paths.kafka_secure.unlink(missing_ok=True)
        raise
    shown = "SASL_SSL, ACLs" if security is not None else ""
    say(line("kafka", "started", bootstrap, f"pid {kafka.pid}, ready in {waited:.1f} s {shown}"))


def down_kafka(paths: StackPaths, say: Say) -> None:
    pid = read_pidfile(paths.kafka_pid)
    if pid is None:
        say(line("kafka", "stopped", "", "(was not running)"))
    else:
        stop_group(pid, timeout=20)
        say(line("kafka", "stopped", "", f"pid {pid}"))
    paths.kafka_pid.unlink(missing_ok=True)
    paths.kafka_secure.unlink(missing_ok=True)


# --- Redis -------------------------------------------------------------------


def up_secure_redis(settings: Settings, paths: StackPaths, say: Say) -> dict[str, str]:
    """A local Redis with ACL users and TLS (``devstack.redis.REDIS_USERS``); returns the
    worker's ``OMNI_REDIS_URL`` and ``OMNI_REDIS_CA_FILE``. Each role's are in
    ``<redis dir>/<role>.env``."""
    parts = urlsplit(settings.redis_url.get_secret_value())
    port = parts.port or 6379
    if (parts.hostname or "127.0.0.1") not in LOCAL_HOSTS:
        raise DevstackError(
            f"{SECURE_ENV}=1 starts a local Redis with users and TLS, but OMNI_REDIS_URL "
            f"points at {parts.hostname}. Unset OMNI_REDIS_URL (or point it at 127.0.0.1), "
            f"or unset {SECURE_ENV} to use that Redis as it is."
        )
    shown = f"rediss://127.0.0.1:{port}"
    pid = read_pidfile(paths.redis_pid)
    if pid is not None:
        access = RedisAccess.load(paths.redis_dir)
        if access is None or access.port != port:
            raise DevstackError(
                f"Our redis-server (pid {pid}) was started without users or on another port. "
                f"Run `make down`, then `{SECURE_ENV}=1 make up`."
            )
        worker_env = access.client_env(WORKER_USER.role)
        if not url_answers(worker_env["OMNI_REDIS_URL"], access.ca_file, timeout=3):
            raise DevstackError(
                f"Our redis-server (pid {pid}) does not answer PING on {shown} as "
                f"{WORKER_USER.name}. Look at {paths.redis_dir / 'redis.log'}, then "
                f"`make down && {SECURE_ENV}=1 make up`."
            )
        say(line("redis", "running", shown, f"pid {pid}, users and TLS"))
        return worker_env
    paths.redis_pid.unlink(missing_ok=True)
    if port_is_open("127.0.0.1", port):
        raise DevstackError(
            f"Port {port} is taken; a secured stack never reuses a Redis it did not start. "
            "Free the port or set OMNI_REDIS_URL=redis://127.0.0.1:<free port>/0."
        )
    server = start_redis(LocalRedis(port, paths.redis_dir, secure=True), paths)
    assert server.access is not None
    say(line("redis", "started", shown, f"pid {server.pid}, users and TLS"))
    say(line("redis", "clients", str(paths.redis_dir / "<worker|channel|till>.env")))
    return server.access.client_env(WORKER_USER.role)


def stack_redis_env(role: str, paths: StackPaths | None = None) -> dict[str, str]:
    """``OMNI_REDIS_URL`` and ``OMNI_REDIS_CA_FILE`` of ``role`` for the running secured
    stack's Redis; {} when the stack's Redis has no users."""
    access = RedisAccess.load((paths or StackPaths(STATE_DIR)).redis_dir)
    return {} if access is None else access.client_env(role)


def up_redis(settings: Settings, paths: StackPaths, say: Say) -> None:
    url: str = settings.redis_url.get_secret_value()
    target = parse_redis_url(url)
    shown = f"redis://{target.host}:{target.port}"
    if not target.is_local:
        if not url.startswith("rediss://") and not redis_answers(
            target.host, target.port, target.password, timeout=3
        ):
            raise DevstackError(
                f"Redis at {shown} (OMNI_REDIS_URL) does not answer PING. Start it, "
                "or unset OMNI_REDIS_URL to run a local redis-server on 127.0.0.1:6379."
            )
        say(line("redis", "external", shown, "(not managed by devstack)"))
        return

    pid = read_pidfile(paths.redis_pid)
    if pid is not None:
        if not redis_answers("127.0.0.1", target.port, target.password, timeout=3):
            raise DevstackError(
                f"Our redis-server (pid {pid}) does not answer PING on {shown}. "
                f"Look at {paths.redis_dir / 'redis.log'}, then `make down && make up`."
            )
        say(line("redis", "running", shown, f"pid {pid}"))
        return
    paths.redis_pid.unlink(missing_ok=True)

    if redis_answers("127.0.0.1", target.port, target.password, timeout=2):
        # Someone's Redis (system service, another project): use it, never stop it.
        paths.redis_reused.write_text(f"{target.port}\n")
        say(line("redis", "reused", shown, "(already running; `down` leaves it alone)"))
        return
    paths.redis_reused.unlink(missing_ok=True)
    if port_is_open("127.0.0.1", target.port):
        raise DevstackError(
            f"Port {target.port} is taken by a process that does not answer Redis PING "
            "(with the password from OMNI_REDIS_URL, if any). Free the port, fix the "
            "password in OMNI_REDIS_URL, or set OMNI_REDIS_URL=redis://127.0.0.1:<free port>/0."
        )
    server = start_redis(LocalRedis(target.port, paths.redis_dir, password=target.password), paths)
    say(line("redis", "started", shown, f"pid {server.pid}"))


def start_redis(server: LocalRedis, paths: StackPaths) -> LocalRedis:
    """Start ``server``, record its pid, wait until it answers (stopped again if it never does)."""
    server.start()
    assert server.pid is not None
    write_pidfile(paths.redis_pid, server.pid)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        paths.redis_pid.unlink(missing_ok=True)
        raise
    return server


def down_redis(paths: StackPaths, say: Say) -> None:
    pid = read_pidfile(paths.redis_pid)
    if pid is not None:
        stop_group(pid, timeout=20)
        say(line("redis", "stopped", "", f"pid {pid}"))
    elif paths.redis_reused.exists():
        say(line("redis", "left", "", "(not started by devstack; still running)"))
    else:
        say(line("redis", "stopped", "", "(was not running)"))
    paths.redis_pid.unlink(missing_ok=True)
    paths.redis_reused.unlink(missing_ok=True)


# --- Topics ------------------------------------------------------------------


def up_topics(settings: Settings, say: Say) -> None:
    try:
        # importlib: topics.py is another team's file, optional until wired in.
        ensure_topics = importlib.import_module("processors.topics").ensure_topics
    except (ImportError, AttributeError) as exc:
        say(line("topics", "skipped", "", f"(processors.topics not importable: {exc})"))
        return
    created = ensure_topics(settings)
    total = len(settings.contract_topics())
    say(line("topics", "ready", "", f"{total} contract topics, {len(created)} created"))


# --- Worker ------------------------------------------------------------------


def _health_host(settings: Settings) -> str:
    bind = str(getattr(settings, "web_bind", "") or "")
    # A wildcard bind answers on loopback; a specific address must be asked directly.
    return "127.0.0.1" if bind in ("", "0.0.0.0", "::", "localhost") else bind


def _readyz_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stack_action_token_key(paths: StackPaths) -> str:
    """This stack's action-token key: made once (random, owner-only file), then reused, so
    tokens on triggers still verify after the worker restarts; ``down --wipe`` drops it."""
    from producers.actions import new_action_token_key

    path = paths.action_token_key
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if not key:
        paths.root.mkdir(parents=True, exist_ok=True)
        key = new_action_token_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    return key


def worker_env(settings: Settings, paths: StackPaths) -> dict[str, str]:
    """The worker's environment: ours, plus the stack's own action-token key when neither
    the environment nor .env sets OMNI_ACTION_TOKEN_KEY (the worker refuses to run without
    one; a key set there, good or weak, is the operator's and is left to the worker)."""
    env = dict(os.environ)
    if settings.action_token_key is None:
        env["OMNI_ACTION_TOKEN_KEY"] = stack_action_token_key(paths)
    return env


def up_acls(settings: Settings, security: BrokerSecurity, say: Say) -> None:
    """The ACLs of README "Kafka: authentication and ACLs", created as omni-admin."""
    admin = kafka_client_config(settings.kafka_bootstrap, security.client(ADMIN_PRINCIPAL))
    count = create_acls(admin, settings)
    folder = security.write_env_files(settings.kafka_bootstrap)
    say(line("acls", "ready", "", f"{count} ACL bindings; {env_file_hint(folder)}"))


def as_principal(settings: Settings, security: BrokerSecurity, principal: str) -> Settings:
    """``settings`` whose Kafka clients authenticate as ``principal`` of the secured stack."""
    env = security.client_env(principal, settings.kafka_bootstrap)
    values = {**settings.model_dump(), **{k[len("OMNI_") :].lower(): v for k, v in env.items()}}
    settings_cls: Any = type(settings)
    result: Settings = settings_cls(**values)
    return result


def up_worker(
    settings: Settings,
    paths: StackPaths,
    say: Say,
    worker_cmd: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> None:
    argv = shlex.split(worker_cmd)
    if not argv:
        say(line("worker", "skipped", "", "(--worker-cmd '')"))
        return
    port: int = settings.web_port
    host = _health_host(settings)
    readyz = f"http://{host}:{port}/readyz"

    pid = read_pidfile(paths.worker_pid)
    if pid is None:
        paths.worker_pid.unlink(missing_ok=True)
        if port_is_open(host, port):
            raise DevstackError(
                f"The worker's health port {host}:{port} (OMNI_WEB_PORT) is taken by another "
                "process (an old worker started by hand?). Stop it or set OMNI_WEB_PORT."
            )
        with open(paths.worker_log, "ab") as log:
            log.write(f"\n=== devstack up {time.strftime('%F %T')}: {worker_cmd}\n".encode())
        # Errors shown below come from this run only, not from older ones in the log.
        log_start = paths.worker_log.stat().st_size
        worker_environment = {**worker_env(settings, paths), **(env or {})}
        proc = spawn_detached(argv, paths.worker_log, cwd=REPO_ROOT, env=worker_environment)
        pid = proc.pid
        write_pidfile(paths.worker_pid, pid)
        state = "started"
    else:
        state = "running"
        log_start = 0

    started = time.monotonic()
    while not _readyz_ok(readyz):
        if read_pidfile(paths.worker_pid) != pid:
            paths.worker_pid.unlink(missing_ok=True)
            raise DevstackError(
                f"The worker exited before {readyz} said ready. Last lines of "
                f"{paths.worker_log}:\n{tail(paths.worker_log, 40, log_start)}\n"
                "Fix the error above and run `make up` again."
            )
        if time.monotonic() - started > timeout:
            raise DevstackError(
                f"The worker (pid {pid}) is not ready after {timeout:.0f} s ({readyz} "
                f"is not 200). Last lines of {paths.worker_log}:\n"
                f"{tail(paths.worker_log, 40, log_start)}\n"
                "It is still running: inspect the log, then `make down` (or wait and "
                "`make up` again)."
            )
        time.sleep(0.5)
    waited = time.monotonic() - started
    say(line("worker", state, f"http://{host}:{port}", f"pid {pid}, ready in {waited:.1f} s"))


def down_worker(paths: StackPaths, say: Say) -> None:
    pid = read_pidfile(paths.worker_pid)
    if pid is None:
        say(line("worker", "stopped", "", "(was not running)"))
    else:
        # Before Kafka: the worker commits offsets and flushes Redis on SIGTERM.
        stop_group(pid, timeout=WORKER_STOP_TIMEOUT)
        say(line("worker", "stopped", "", f"pid {pid}"))
    paths.worker_pid.unlink(missing_ok=True)


# --- Commands ----------------------------------------------------------------


def up(
    *,
    worker_cmd: str = DEFAULT_WORKER_CMD,
    worker_timeout: float = 120.0,
    controller_port: int | None = None,
    paths: StackPaths | None = None,
    say: Say = print,
    secure: bool | None = None,
) -> None:
    """Start (or find running) Kafka, Redis, the topics and the worker; idempotent.

    ``secure`` (default: ``OMNI_STACK_SECURE``): the broker speaks SASL_SSL with SCRAM
    users and ACLs (topics and ACLs are made as omni-admin, the worker runs as
    omni-worker), Redis has users and TLS (the worker runs as omni-worker).
    """
    paths = paths or StackPaths(STATE_DIR)
    settings = _load_settings()
    secure = secure_requested(secure)
    with state_lock(paths):
        if not secure:
            up_kafka(settings, paths, say, controller_port)
            up_redis(settings, paths, say)
            up_topics(settings, say)
            up_worker(settings, paths, say, worker_cmd, worker_timeout)
            return
        paths.root.mkdir(parents=True, exist_ok=True)
        security = BrokerSecurity.load_or_create(paths.kafka_secure_dir / "tls")
        up_kafka(settings, paths, say, controller_port, security)
        worker_env = up_secure_redis(settings, paths, say)
        up_topics(as_principal(settings, security, ADMIN_PRINCIPAL), say)
        up_acls(settings, security, say)
        worker_env.update(security.client_env(WORKER_PRINCIPAL, settings.kafka_bootstrap))
        up_worker(settings, paths, say, worker_cmd, worker_timeout, env=worker_env)


def _wipe(paths: StackPaths, say: Say) -> None:
    targets = [paths.kafka_dir, paths.kafka_secure_dir, paths.redis_dir]
    # Triggers go with the Kafka data, so their tokens' key can go too.
    if paths.action_token_key.exists():
        paths.action_token_key.unlink()
        say(line("wiped", "", str(paths.action_token_key)))
    with contextlib.suppress(Exception):
        data_dir = Path(_load_settings().data_dir)
        data_dir = (REPO_ROOT / data_dir).resolve()
        # Only ever delete inside <repo>/.omni: data_dir may point anywhere.
        if data_dir.is_relative_to((REPO_ROOT / ".omni").resolve()):
            targets.append(data_dir)
    for target in targets:
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
            say(line("wiped", "", str(target)))


def down(*, wipe: bool = False, paths: StackPaths | None = None, say: Say = print) -> None:
    """Stop what ``up`` started (worker, Kafka, Redis); idempotent."""
    paths = paths or StackPaths(STATE_DIR)
    with state_lock(paths):
        down_worker(paths, say)
        down_kafka(paths, say)
        down_redis(paths, say)
        if wipe:
            _wipe(paths, say)


def status(*, paths: StackPaths | None = None, say: Say = print) -> bool:
    """Print each component's state; True when Kafka and Redis answer."""
    paths = paths or StackPaths(STATE_DIR)
    settings = _load_settings()
    bootstrap: str = settings.kafka_bootstrap
    security = stack_security(paths)
    config = (
        settings.kafka_client_config()
        if security is None
        else kafka_client_config(bootstrap, security.client(ADMIN_PRINCIPAL))
    )
    extra = {k: v for k, v in config.items() if k != "bootstrap.servers"}
    healthy = True

    pid = read_pidfile(paths.kafka_pid)
    answers = kafka_answers(bootstrap, timeout=3, extra=extra)
    healthy &= answers
    owner = f"pid {pid}" if pid else "not managed by devstack"
    say(line("kafka", "up" if answers else "down", bootstrap, owner if answers or pid else ""))

    target = parse_redis_url(settings.redis_url.get_secret_value())
    pid = read_pidfile(paths.redis_pid)
    access = RedisAccess.load(paths.redis_dir) if pid else None
    if access is not None:  # our secured Redis: asked as the worker, over TLS
        worker_url = access.url_for(WORKER_USER.role)
        answers = url_answers(worker_url, access.ca_file)
        target = RedisTarget(f"tls:{target.host}", access.port, None)
    else:
        answers = target.host.startswith("tls:") or redis_answers(
            target.host, target.port, target.password
        )
    healthy &= answers
    owner = f"pid {pid}" if pid else "not managed by devstack"
    shown = f"redis://{target.host}:{target.port}"
    say(line("redis", "up" if answers else "down", shown, owner if answers or pid else ""))

    pid = read_pidfile(paths.worker_pid)
    host = _health_host(settings)
    port = settings.web_port
    if pid is None:
        say(line("worker", "down", "", "(not started by devstack)"))
    else:
        ready = _readyz_ok(f"http://{host}:{port}/readyz")
        say(
            line(
                "worker",
                "ready" if ready else "not-ready",
                f"http://{host}:{port}",
                f"pid {pid}, log {paths.worker_log}",
            )
        )
    return healthy
