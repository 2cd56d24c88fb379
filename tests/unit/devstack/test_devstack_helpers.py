"""Pure checks of the devstack helpers: no broker, no Redis, no network."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack import kafka as kafka_mod
from devstack import procs
from devstack.errors import DevstackError
from devstack.kafka import new_cluster_id, render_server_properties, resolve_kafka_jars
from devstack.ports import free_port, port_is_open
from devstack.stack import line, parse_local_bootstrap, parse_redis_url


def test_free_port_is_bindable_and_port_is_open_sees_a_listener() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert port_is_open("127.0.0.1", port)
    assert not port_is_open("127.0.0.1", port)


def test_cluster_id_is_kafka_uuid_format() -> None:
    for _ in range(200):
        cid = new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_server_properties_template_is_fully_substituted(tmp_path: Path) -> None:
    text = render_server_properties(39092, 39093, tmp_path / "data")
    props = dict(ln.split("=", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
    assert "${" not in text
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:39093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:39092"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def _fake_mvn(monkeypatch: pytest.MonkeyPatch, calls: list[list[str]], *, ok: bool) -> None:
    def run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        out = Path(next(a for a in argv if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        out.mkdir(parents=True, exist_ok=True)
        if ok:
            (out / f"kafka_2.13-{kafka_mod.KAFKA_VERSION}.jar").write_bytes(b"jar")
        return subprocess.CompletedProcess(argv, 0 if ok else 1, "", "" if ok else "no network")

    monkeypatch.setattr(kafka_mod.subprocess, "run", run)
    monkeypatch.setattr(kafka_mod, "find_executable", lambda name, hint: "/usr/bin/mvn")


def test_jars_are_resolved_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    _fake_mvn(monkeypatch, calls, ok=True)
    libs = resolve_kafka_jars(tmp_path)
    assert libs == tmp_path / f"kafka-{kafka_mod.KAFKA_VERSION}" / "libs"
    assert resolve_kafka_jars(tmp_path) == libs
    assert len(calls) == 1
    assert calls[0][calls[0].index("-f") + 1] == str(kafka_mod.POM)


def test_half_finished_copy_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = tmp_path / f"kafka-{kafka_mod.KAFKA_VERSION}" / "libs"
    libs.mkdir(parents=True)
    (libs / "partial.jar").write_bytes(b"")  # no marker file: an interrupted copy
    calls: list[list[str]] = []
    _fake_mvn(monkeypatch, calls, ok=True)
    resolve_kafka_jars(tmp_path)
    assert len(calls) == 1
    assert not (libs / "partial.jar").exists()


def test_failed_resolution_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mvn(monkeypatch, [], ok=False)
    with pytest.raises(DevstackError, match="kafka-jars"):
        resolve_kafka_jars(tmp_path)
    assert not (tmp_path / f"kafka-{kafka_mod.KAFKA_VERSION}" / "libs.ok").exists()


def test_pidfile_roundtrip_and_reuse_guard(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    procs.write_pidfile(pidfile, os.getpid())
    assert procs.read_pidfile(pidfile) == os.getpid()
    if procs.start_time(os.getpid()) is not None:  # Linux: a recycled pid is not ours
        pidfile.write_text(f"{os.getpid()} 1\n")
        assert procs.read_pidfile(pidfile) is None
    pidfile.write_text("garbage")
    assert procs.read_pidfile(pidfile) is None
    assert procs.read_pidfile(tmp_path / "missing.pid") is None


def test_stop_group_stops_grandchildren(tmp_path: Path) -> None:
    # A parent that forks a child which ignores nothing: both must go.
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    proc = procs.spawn_detached([sys.executable, "-c", script], tmp_path / "log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and procs.group_alive(proc.pid):
        if (
            "sleep"
            in subprocess.run(
                ["ps", "-o", "cmd=", "-g", str(proc.pid)], capture_output=True, text=True
            ).stdout
        ):
            break
        time.sleep(0.05)
    procs.stop_group(proc.pid, timeout=5, proc=proc)
    assert proc.returncode is not None
    assert not procs.group_alive(proc.pid)


def test_tail_since_offset(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("old run\n")
    start = log.stat().st_size
    with open(log, "a") as handle:
        handle.write("new 1\nnew 2\n")
    assert procs.tail(log, 10, start) == "new 1\nnew 2"
    assert procs.tail(tmp_path / "none.log") == ""


@pytest.mark.parametrize(
    ("bootstrap", "port"),
    [
        ("127.0.0.1:9092", 9092),
        ("localhost:29092", 29092),
        ("broker:9092", None),
        ("127.0.0.1:9092,127.0.0.1:9094", None),
        ("127.0.0.1", None),
    ],
)
def test_parse_local_bootstrap(bootstrap: str, port: int | None) -> None:
    assert parse_local_bootstrap(bootstrap) == port


def test_parse_redis_url() -> None:
    target = parse_redis_url("redis://:p%40ss@127.0.0.1:6380/0")
    assert (target.host, target.port, target.password, target.is_local) == (
        "127.0.0.1",
        6380,
        "p@ss",
        True,
    )
    assert parse_redis_url("redis://cache.internal/0").port == 6379
    assert not parse_redis_url("rediss://127.0.0.1:6379/0").is_local
    with pytest.raises(DevstackError, match="OMNI_REDIS_URL"):
        parse_redis_url("http://127.0.0.1:6379")


def test_status_line_has_no_trailing_gaps() -> None:
    assert line("worker", "skipped", "", "(no worker)") == "worker  skipped    (no worker)"
