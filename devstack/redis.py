"""A real Redis server as a local process (no persistence, loopback only).

``secure=True`` starts it the way production should run it: the default user off,
one ACL user per role (:data:`REDIS_USERS`) with a random password per stack, and
TLS only (a throwaway CA per stack, made with ``openssl``). The passwords and the
CA stay in the work dir (mode 0600), with one ``<role>.env`` file per role holding
``OMNI_REDIS_URL`` and ``OMNI_REDIS_CA_FILE`` for that role's clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RedisUser:
    """One ACL user of the secured Redis: who uses it and what it may do."""

    role: str
    name: str
    #: ACL rules after ``on``, the password and ``resetkeys resetchannels -@all``.
    rules: str


#: Commands every role needs to connect: PING (health, readiness) and SELECT (a /db
#: in the URL). AUTH and HELLO need no grant.
_CONNECT = "+ping +select"
#: Reading the read model, as channels do (ATM, call centre): values, hashes, expiries.
_READ = "+get +mget +hget +hmget +hgetall +exists +ttl +pttl"

#: The worker writes the read model (processors/projection.py: MSET, SET PXAT, HSET, DEL
#: in pipelines), ``omni redis rebuild`` does the same, ``omni stats`` SCANs and HGETALLs
#: ``omni:stats:*``, the demo GETs and TTLs. Nothing outside ``omni:*``, no admin.
WORKER_USER = RedisUser(
    "worker", "omni-worker", f"~omni:* {_CONNECT} {_READ} +set +mset +hset +del +scan"
)
#: Channels read the read model and write nothing (``%R~``: read-only keys).
CHANNEL_USER = RedisUser("channel", "omni-channel", f"%R~omni:* {_CONNECT} {_READ}")
#: A till reads like a channel and claims coupons (S7, ``producers/claims.py``): SET on
#: ``omni:coupon:*:claim`` keys only. An ACL cannot require SET's NX flag, so a till's
#: user could overwrite a claim; it cannot write anything else.
TILL_USER = RedisUser(
    "till", "omni-till", f"%R~omni:* ~omni:coupon:*:claim {_CONNECT} {_READ} +set"
)
#: The Customer 360 API (``omni api``, processors/api/): GET and MGET of ``omni:*`` keys and
#: PING (/readyz), nothing else; read-only keys like a channel's.
API_USER = RedisUser("api", "omni-api", f"%R~omni:* {_CONNECT} +get +mget")
REDIS_USERS: tuple[RedisUser, ...] = (WORKER_USER, CHANNEL_USER, TILL_USER, API_USER)


def acl_file_text(passwords: dict[str, str]) -> str:
    """The ACL file for ``--aclfile``: default user off, one line per role (password
    as its SHA-256, so the file holds no secret)."""
    lines = ["user default off resetkeys resetchannels -@all"]
    for user in REDIS_USERS:
        digest = hashlib.sha256(passwords[user.role].encode()).hexdigest()
        lines.append(f"user {user.name} on #{digest} resetkeys resetchannels -@all {user.rules}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RedisAccess:
    """How each role reaches a secured local Redis: its URL and the CA file."""

    port: int
    passwords: dict[str, str]
    ca_file: Path | None

    def url_for(self, role: str) -> str:
        user = next((u for u in REDIS_USERS if u.role == role), None)
        if user is None:
            known = ", ".join(u.role for u in REDIS_USERS)
            raise DevstackError(f"No Redis user for role {role!r}: use one of {known}.")
        scheme = "rediss" if self.ca_file is not None else "redis"
        password = quote(self.passwords[role], safe="")
        return f"{scheme}://{user.name}:{password}@127.0.0.1:{self.port}/0"

    def client_env(self, role: str) -> dict[str, str]:
        """``OMNI_REDIS_URL`` (and ``OMNI_REDIS_CA_FILE``) for ``role``'s clients."""
        env = {"OMNI_REDIS_URL": self.url_for(role)}
        if self.ca_file is not None:
            env["OMNI_REDIS_CA_FILE"] = str(self.ca_file)
        return env

    def save(self, workdir: Path) -> None:
        record = {
            "port": self.port,
            "passwords": self.passwords,
            "ca_file": None if self.ca_file is None else str(self.ca_file),
        }
        _write_private(workdir / ACCESS_FILE, json.dumps(record, indent=2) + "\n")
        for user in REDIS_USERS:
            lines = "".join(f"{k}={v}\n" for k, v in self.client_env(user.role).items())
            _write_private(workdir / f"{user.role}.env", lines)

    @classmethod
    def load(cls, workdir: Path) -> RedisAccess | None:
        """The access a secured Redis in ``workdir`` was started with; None if it was not."""
        try:
            record = json.loads((Path(workdir) / ACCESS_FILE).read_text())
        except (OSError, ValueError):
            return None
        ca_file = record.get("ca_file")
        return cls(int(record["port"]), dict(record["passwords"]), ca_file and Path(ca_file))


#: In a secured Redis's work dir: every role's password and the CA (mode 0600).
ACCESS_FILE = "access.json"


def _write_private(path: Path, text: str) -> None:
    # Created 0600 (not chmod after): the passwords are never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost it signed;
    returns (CA certificate, server certificate, server key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DevstackError(
            "`openssl` was not found on PATH; a secured Redis needs it to make its TLS "
            "certificates. Install it (`sudo apt-get install openssl`) or start the "
            "stack without OMNI_STACK_SECURE."
        )
    directory.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    crt, key, csr = directory / "redis.crt", directory / "redis.key", directory / "redis.csr"
    extensions = directory / "redis.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec_key, "-keyout", str(ca_key), "-out", str(ca_crt),
         "-days", "30", "-subj", "/CN=omni devstack Redis CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec_key, "-keyout", str(key), "-out", str(csr),
         "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(crt), "-days", "30", "-extfile", str(extensions)],
    ]  # fmt: skip
    for argv in commands:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DevstackError(
                f"openssl failed making the Redis TLS files ({' '.join(argv[1:3])}): "
                f"{done.stderr.strip()}\nCheck that openssl works, or start the stack "
                "without OMNI_STACK_SECURE."
            )
    for private in (ca_key, key):
        private.chmod(0o600)
    return ca_crt, crt, key


def url_answers(url: str, ca_file: str | Path | None = None, timeout: float = 1.0) -> bool:
    """True if the Redis at ``url`` (user, password, TLS with ``ca_file``) answers PING."""
    options: dict[str, object] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if ca_file is not None:
        options["ssl_ca_certs"] = str(ca_file)
    return _answers(redis_py.Redis.from_url(url, **options))


def redis_answers(host: str, port: int, password: str | None = None, timeout: float = 1.0) -> bool:
    """True if a Redis at ``host:port`` answers PING (with ``password`` if given)."""
    client = redis_py.Redis(
        host=host,
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return _answers(client)


def _answers(client: redis_py.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis_py.RedisError:
        return False
    finally:
        client.close()


class LocalRedis:
    """``redis-server`` bound to 127.0.0.1, in-memory only, in its own process group.

    ``secure``: ACL users (:data:`REDIS_USERS`, random passwords), the default user
    off; ``tls`` (default: as ``secure``): TLS only, on ``port``, with a CA made for
    this server (``ca_file``). ``url`` is then the worker's; ``access`` has every role's.
    """

    def __init__(
        self,
        port: int,
        workdir: Path,
        *,
        password: str | None = None,
        secure: bool = False,
        tls: bool | None = None,
    ) -> None:
        if secure and password:
            raise DevstackError(
                "LocalRedis(secure=True) makes its own users and passwords; drop password=."
            )
        self.port = port
        self.workdir = Path(workdir)
        self.password = password
        self.secure = secure
        self.tls = secure if tls is None else tls
        self.log_path = self.workdir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.access: RedisAccess | None = None

    @property
    def url(self) -> str:
        """The URL the worker uses (its ACL user when secured)."""
        if self.access is not None:
            return self.access.url_for(WORKER_USER.role)
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    @property
    def ca_file(self) -> Path | None:
        """The CA that signed this server's certificate (TLS only)."""
        return self.workdir / "tls" / "ca.crt" if self.tls else None

    def url_for(self, role: str) -> str:
        if self.access is None:
            raise DevstackError(
                "This Redis has no users (start it with LocalRedis(..., secure=True)); "
                "use .url instead."
            )
        return self.access.url_for(role)

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
        argv += self._secure_arguments()
        self._proc = spawn_detached(argv, self.log_path, cwd=self.workdir)

    def _secure_arguments(self) -> list[str]:
        """Writes this start's ACL file, access and TLS files; the server's arguments."""
        argv: list[str] = []
        if self.tls:
            ca_crt, crt, key = make_tls_files(self.workdir / "tls")
            # Clients prove who they are with their ACL password, not a certificate.
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(crt)]
            argv += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(ca_crt)]
            argv += ["--tls-auth-clients", "no"]
        if not self.secure:
            # A dir once used by a secured Redis: its access must not describe this one.
            for stale in (ACCESS_FILE, *(f"{user.role}.env" for user in REDIS_USERS)):
                (self.workdir / stale).unlink(missing_ok=True)
            return argv
        passwords = {user.role: secrets.token_urlsafe(24) for user in REDIS_USERS}
        acl_path = self.workdir / "users.acl"
        _write_private(acl_path, acl_file_text(passwords))
        argv += ["--aclfile", str(acl_path)]
        self.access = RedisAccess(self.port, passwords, self.ca_file)
        self.access.save(self.workdir)
        return argv

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Block until PING answers; returns seconds waited."""
        proc = self._proc
        if proc is None:
            raise DevstackError("LocalRedis.wait_ready() called before start(); call start().")
        started = time.monotonic()
        while not url_answers(self.url, self.ca_file, timeout=0.5):
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
