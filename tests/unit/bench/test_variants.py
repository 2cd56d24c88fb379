"""The bench's framework variants (d) naive Faust and (e) Quix Streams: the pure parts.

The Quix venv's stamp (rebuild exactly when the requirements change, say what
failed), the children's command lines, the slow window, and the per-event work
both variants share with (b).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import quixenv
from bench.loops import Clock
from bench.naive_faust import write_each
from bench.perevent import Consumed, EventWork
from bench.throughput import _wait_processed, loop_argv
from processors.domain.read_model import ReadModelWrite, profile_key
from processors.settings import Settings


def test_stamp_key_follows_the_requirements_and_the_python() -> None:
    key = quixenv.stamp_key(b"quixstreams==3.28.1\n", "3.11.7")
    assert key == quixenv.stamp_key(b"quixstreams==3.28.1\n", "3.11.7")
    assert key != quixenv.stamp_key(b"quixstreams==3.28.2\n", "3.11.7")
    assert key != quixenv.stamp_key(b"quixstreams==3.28.1\n", "3.12.1")


def _fake_build(calls: list[Path]) -> Any:
    def build(venv: Path, _requirements: Path, _python: str) -> None:
        calls.append(venv)
        python = quixenv.venv_python(venv)
        python.parent.mkdir(parents=True, exist_ok=True)
        python.write_text("")

    return build


def test_the_venv_is_built_once_then_again_only_when_the_requirements_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(quixenv, "_build", _fake_build(calls))
    requirements, venv = tmp_path / "req.txt", tmp_path / "venv"
    requirements.write_text("quixstreams==3.28.1\n")
    assert quixenv.ensure_quix_venv(venv, requirements, say=lambda _: None) == venv / "bin/python"
    quixenv.ensure_quix_venv(venv, requirements, say=lambda _: None)
    assert calls == [venv]
    requirements.write_text("quixstreams==3.28.1\norjson==3.11.4\n")
    quixenv.ensure_quix_venv(venv, requirements, say=lambda _: None)
    assert calls == [venv, venv]


def test_a_failed_build_names_the_step_and_leaves_no_stamp(tmp_path: Path) -> None:
    requirements, venv = tmp_path / "req.txt", tmp_path / "venv"
    requirements.write_text("quixstreams==3.28.1\n")
    with pytest.raises(quixenv.QuixEnvError) as caught:
        quixenv.ensure_quix_venv(venv, requirements, python="/bin/false", say=lambda _: None)
    message = str(caught.value)
    assert "could not create the venv" in message
    assert "--variants a,b,c,d" in message
    assert not (venv / quixenv.STAMP_NAME).exists()


def test_framework_variants_get_their_module_the_window_and_a_state_dir(tmp_path: Path) -> None:
    settings = Settings(app_id="omni-bench-x", topic_namespace="bench-x")
    for variant, module in (("d", "bench.naive_faust"), ("e", "bench.quix_loop")):
        argv = loop_argv(variant, settings, tmp_path, 500, 1000, 60.0)
        assert argv[:2] == ["-m", module]
        assert argv[argv.index("--group") + 1] == f"omni-bench-x-{variant}"
        assert argv[argv.index("--window") + 1] == "60.0"
        assert argv[argv.index("--state-dir") + 1] == str(tmp_path / "state")
        assert "--batch" not in argv
    hand = loop_argv("b", settings, tmp_path, 500, 1000)
    assert hand[:3] == ["-m", "bench.loops", "hand"]
    assert hand[hand.index("--window") + 1] == "0.0"


def test_clock_window() -> None:
    clock = Clock(None)
    assert not clock.window_over(0.01)  # not started
    clock.start()
    time.sleep(0.02)
    assert clock.window_over(0.01)
    assert not clock.window_over(0.0)  # 0: no limit
    assert not clock.window_over(60.0)


class FakeWorker:
    """A worker whose counter grows by 100 events per read."""

    def __init__(self) -> None:
        self.count = 0.0

    def processed(self) -> float:
        self.count += 100
        return self.count


def test_the_slow_window_stops_the_worker_wait_with_what_was_processed() -> None:
    ready = time.monotonic()
    first, timed = _wait_processed(FakeWorker(), 10**9, ready, window=0.3)  # type: ignore[arg-type]
    assert first is not None
    assert 0 < timed < 10**9
    assert time.monotonic() - ready >= 0.3
    first, timed = _wait_processed(FakeWorker(), 300, time.monotonic())  # type: ignore[arg-type]
    assert timed == 300


class FakeRedis:
    def __init__(self) -> None:
        self.done: list[tuple[Any, ...]] = []

    async def _record(self, *call: Any) -> None:
        await asyncio.sleep(0)
        self.done.append(call)

    def set(self, key: str, value: bytes, pxat: int | None = None) -> Any:
        return self._record("set", key, value, pxat)

    def hset(self, key: str, field: str, value: bytes) -> Any:
        return self._record("hset", key, field, value)

    def delete(self, key: str) -> Any:
        return self._record("delete", key)


def test_naive_writes_are_one_awaited_command_each_in_order() -> None:
    client = FakeRedis()
    writes = [
        ReadModelWrite("k1", b"v1"),
        ReadModelWrite("k2", None),
        ReadModelWrite("k3", b"v3", expire_at=10.0),
        ReadModelWrite("k4", b"v4", field="f"),
    ]
    asyncio.run(write_each(client, writes))  # type: ignore[arg-type]
    assert client.done == [
        ("set", "k1", b"v1", None),
        ("delete", "k2"),
        ("set", "k3", b"v3", 10_000),
        ("hset", "k4", "f", b"v4"),
    ]


def _consumed(settings: Settings, key: bytes, value: bytes, offset: int = 0) -> Consumed:
    return Consumed(settings.touchpoint_topic("telco"), 0, offset, key, value, time.time())


def test_event_work_folds_state_and_dead_letters_bad_events() -> None:
    settings = Settings()
    work = EventWork(settings)
    profile = orjson.dumps(
        {
            "event_id": "ev-1",
            "type": "profile.updated",
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "channel": "telco",
            "customer_id": "cust-1",
            "payload": {"home_country": "PT", "language": "pt", "timezone": "Europe/Lisbon"},
        }
    )
    first = work.handle(_consumed(settings, b"cust-1", profile), None, None)
    assert first.customer is not None
    assert orjson.loads(first.customer)["customer_id"] == "cust-1"
    assert profile_key("cust-1") in {write.key for write in first.writes}
    assert {output.topic for output in first.outputs} <= set(work.output_topics())

    bad = work.handle(_consumed(settings, b"cust-1", b"{not json", 1), first.customer, None)
    assert [output.topic for output in bad.outputs] == [settings.deadletter_topic]
    assert bad.customer is None and bad.writes == []
    assert work.counts.deadletters == 1
