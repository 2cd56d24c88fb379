"""Pins every Faust and aiokafka internal the worker relies on (processors/faust_adapter.py).

An upgrade that renames, removes or re-signs one of them, or stops calling a hook we
override, fails here rather than in production.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.sensors import Monitor
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from processors import faust_adapter
from processors.app import OmniApp
from processors.faust_adapter import INTERNALS, PINNED, IncompatibleFaust, check_versions
from tests.unit.processors.doubles import unconnected_app

ROOT = Path(__file__).resolve().parents[3]
EVENTS = TP("omni.customer-events", 0)

#: owner.name -> the parameters (name, default) we call or override it with.
SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "Consumer._drain_messages": [("self", None), ("fetcher", None)],
    "Consumer._commit_offsets": [
        ("self", None),
        ("offsets", None),
        ("start_new_transaction", True),
    ],
    "Consumer._new_offset": [("self", None), ("tp", None)],
    "Consumer._new_consumer_thread": [("self", None)],
    "Consumer._seek": [("self", None), ("partition", None), ("offset", None)],
    "AIOKafkaConsumerThread._commit": [("self", None), ("offsets", None)],
    "AIOKafkaConsumerThread._ensure_consumer": [("self", None)],
    "Table._new_store_by_url": [("self", None), ("url", None)],
    "App._new_transport": [("self", None)],
    "Store._db_for_partition": [("self", None), ("partition", None)],
}

#: Hooks we override, and the Faust source that calls each by name: if Faust stops
#: calling one, our override would silently do nothing.
CALLERS: dict[str, tuple[object, str]] = {
    "_drain_messages": (faust_consumer.Fetcher, "consumer._drain_messages(self)"),
    "_commit_offsets": (faust_consumer.Consumer, "self._commit_offsets("),
    "_seek": (faust_consumer.Consumer, "await self._seek(partition, offset)"),
    "_new_offset": (faust_consumer.Consumer, "self._new_offset("),
    "_new_consumer_thread": (faust_consumer.ThreadDelegateConsumer, "self._new_consumer_thread("),
    "_commit": (faust_aiokafka.AIOKafkaConsumerThread, "self.call_thread(self._commit, offsets)"),
    "_new_store_by_url": (faust.tables.base.Collection, "self._new_store_by_url("),
    "_new_transport": (faust.App, "self._new_transport("),
}


def resolve(owner: str) -> Any:
    module, _, name = owner.rpartition(".")
    return getattr(importlib.import_module(module), name)


def parameters(function: Any) -> list[tuple[str, Any]]:
    return [
        (p.name, None if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(function).parameters.values()
    ]


@pytest.fixture()
def app() -> Iterator[OmniApp]:
    with unconnected_app() as app:  # the consumer is built, never started
        yield app


# --- versions ---------------------------------------------------------------------------


def test_the_pins_are_the_pyprojects() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = dict(d.split("==", 1) for d in dependencies if "==" in d)
    assert {name: pinned.get(name) for name in PINNED} == dict(PINNED)


def test_the_installed_versions_are_the_pinned_ones() -> None:
    check_versions()


def test_another_version_is_refused_saying_what_to_do() -> None:
    with pytest.raises(IncompatibleFaust) as refused:
        check_versions(lambda name: "0.16.0" if name == "faust-streaming" else PINNED[name])
    message = str(refused.value)
    assert message.startswith("installed faust-streaming 0.16.0 (pinned: 0.15.3): ")
    assert "make bootstrap" in message and "test_faust_adapter.py" in message


# --- the names ----------------------------------------------------------------------------


BY_KEY = {f"{i.owner.rpartition('.')[2]}.{i.name}": i for i in INTERNALS}


def test_every_internal_is_pinned_here() -> None:
    methods = {key for key in BY_KEY if key in SIGNATURES}
    attributes = {BY_KEY[key].name for key in BY_KEY.keys() - methods}
    assert (methods, attributes) == (set(SIGNATURES), set(ATTRIBUTES))


@pytest.mark.parametrize("key", sorted(SIGNATURES))
def test_method_signature(key: str) -> None:
    internal = BY_KEY[key]
    method = getattr(resolve(internal.owner), internal.name)
    assert parameters(method) == SIGNATURES[key], f"{internal.owner}.{internal.name} changed"


@pytest.mark.parametrize("hook", sorted(CALLERS))
def test_faust_still_calls_the_hook_we_override(hook: str) -> None:
    owner, call = CALLERS[hook]
    assert call in inspect.getsource(owner)  # type: ignore[arg-type]


#: Instance attributes: name -> how to read it off a built (never started) app.
ATTRIBUTES: dict[str, Any] = {
    "_read_offset": lambda app: app.consumer._read_offset,
    "_committed_offset": lambda app: app.consumer._committed_offset,
    "_acked": lambda app: app.consumer._acked,
    "_gap": lambda app: app.consumer._gap[EVENTS],
    "_commit_every": lambda app: app.consumer._commit_every,
    "_n_acked": lambda app: app.consumer._n_acked,
    "_stopped": lambda app: app.consumer._stopped.is_set,
    "_thread": lambda app: app.consumer._thread.seek,
    "thread_loop": lambda app: app.consumer._thread.thread_loop.call_soon_threadsafe,
    "_tp_index": lambda app: app.topics._tp_index,
    "_tp_to_callback_lock": lambda app: app.topics._tp_to_callback_lock.locked,
    "offset_key": lambda app: faust.stores.rocksdb.Store.offset_key,
    "channel.queue": lambda app: app.stream(app.channel()).channel.queue.full,
    "consumer_generation_id": lambda app: app.consumer_generation_id,
    "generation_id": lambda app: Message("t", 0, 0, 0.0, 0, None, b"", b"", None).generation_id,
    "recovery": lambda app: app.tables.recovery.completed.is_set,
    "standby_tps": lambda app: app.tables.recovery.standby_tps.__contains__,
    "stream_inbound_time": lambda app: Monitor().stream_inbound_time,
    "_queues": lambda app: app.flow_control._queues.difference_update,
}


@pytest.mark.parametrize("name", sorted(ATTRIBUTES))
def test_attribute_is_there(app: OmniApp, name: str) -> None:
    ATTRIBUTES[name](app)


def test_the_bookkeeping_has_the_shapes_we_use(app: OmniApp) -> None:
    consumer: Any = app.consumer
    assert isinstance(consumer._read_offset, dict)
    assert isinstance(consumer._committed_offset, dict)
    assert consumer._acked[EVENTS] == []  # a defaultdict of lists
    assert not consumer._gap[EVENTS]  # a defaultdict of interval trees
    consumer._gap[EVENTS].addi(3, 5)
    assert consumer._gap[EVENTS].begin() == 3
    assert isinstance(consumer._n_acked, int)
    assert faust.stores.rocksdb.Store.offset_key == faust_adapter.CHANGELOG_OFFSET_KEY


def test_the_public_names_are_the_private_ones(app: OmniApp) -> None:
    consumer: Any = app.consumer
    assert consumer.read_offsets is consumer._read_offset
    assert consumer.committed_offsets is consumer._committed_offset
    assert consumer.acked_offsets is consumer._acked
    assert consumer.gaps is consumer._gap
    consumer.acks_since_commit = 7
    assert consumer._n_acked == 7
    assert faust_adapter.consumer_generation(app) == app.consumer_generation_id
    assert faust_adapter.recovery_completed(app) is False
    assert faust_adapter.recovery_remaining(app) == 0
    assert faust_adapter.standby_changelog_partitions(app) is app.tables.recovery.standby_tps
    monitor = Monitor()
    faust_adapter.note_stream_inbound(monitor, EVENTS, 12.5)
    assert monitor.stream_inbound_time[EVENTS] == 12.5


def test_our_overrides_are_what_faust_calls(app: OmniApp) -> None:
    consumer: Any = app.consumer
    consumer.committable_offset = lambda tp: 99 if tp == EVENTS else None
    assert consumer._new_offset(EVENTS) == 99
    assert type(consumer._new_consumer_thread()) is consumer.consumer_thread
    assert type(app.transport).__name__ == "BulkDeliveryTransport"
    assert isinstance(app.flow_control, faust_adapter.StreamFlowControl)


def test_faust_still_empties_the_stream_queues_when_recovery_resumes_flow() -> None:
    # What StreamFlowControl corrects: resume() empties every managed queue, and the
    # recovery resumes flow after its seek (a task of its own) has returned.
    from mode.utils.queues import FlowControlEvent

    assert "self.clear()" in inspect.getsource(FlowControlEvent.resume)
    on_recovery_completed = inspect.getsource(faust.tables.recovery.Recovery.on_recovery_completed)
    seek = on_recovery_completed.index("consumer.perform_seek()")
    assert on_recovery_completed.index("self.app.flow_control.resume()") > seek


#: Where a private name may appear: this adapter only.
_ATTRIBUTE_USE = re.compile(r"\.(" + "|".join(re.escape(i.name) for i in INTERNALS) + r")\b")


def test_no_other_module_names_an_internal() -> None:
    offenders = []
    for path in sorted((ROOT / "processors").rglob("*.py")):
        if path.name == "faust_adapter.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _ATTRIBUTE_USE.search(code) and "``" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "use processors.faust_adapter instead:\n" + "\n".join(offenders)
