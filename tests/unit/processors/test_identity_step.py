"""``identity_step``: one identifier's record and its messages, purely."""

from __future__ import annotations

from typing import Any

import orjson

from processors.domain.identity import (
    IDENTIFY,
    LINK,
    TICK,
    UNLINK,
    IdentityMessage,
    IdentityPolicy,
    IdentityRecord,
    identifier_view,
    identity_step,
    link_command,
    unlink_command,
)

KEY = "msisdn:+447700900123"
POLICY = IdentityPolicy(park_seconds=60.0, park_max_events=3, park_max_bytes=1000)


def event(n: int) -> IdentityMessage:
    value = {"event_id": f"e{n}", "type": "telco.network_attached", "payload": {}}
    return IdentityMessage(IDENTIFY, value, 100.0 + n, len(orjson.dumps(value)))


def link(customer: str, *, force: bool = False, event_id: str = "L1") -> IdentityMessage:
    return IdentityMessage(LINK, link_command(customer, "learned", event_id, 50.0, "crm",
                                              force=force), 0.0)  # fmt: skip


def unlink(customer: str, *, erase: bool = False) -> IdentityMessage:
    return IdentityMessage(UNLINK, unlink_command(customer, "U1", 60.0, erase=erase), 0.0)


def step(record: IdentityRecord | None, *messages: IdentityMessage, now: float = 1000.0) -> Any:
    return identity_step(KEY, record, list(messages), POLICY, now)


def test_unknown_events_park_until_a_link_forwards_them_in_order() -> None:
    record, out = step(None, event(1), event(2))
    assert record is not None and [p[1]["event_id"] for p in record.parked] == ["e1", "e2"]
    assert record.park_until == 1060.0 and out.forwards == [] and out.parked == 2
    record, out = step(record, link("c1"))
    assert [(f.key, f.value["event_id"], f.value["customer_id"]) for f in out.forwards] == [
        ("c1", "e1", "c1"),
        ("c1", "e2", "c1"),
    ]
    assert [f.produced_at for f in out.forwards] == [101.0, 102.0]  # latency counts from there
    assert record is not None and record.parked == [] and record.park_until is None


def test_a_tick_before_the_deadline_leaves_them_after_it_they_go_anonymous() -> None:
    record, _ = step(None, event(1))
    record, out = step(record, IdentityMessage(TICK, None, 0.0), now=1059.0)
    assert out.forwards == [] and record is not None and len(record.parked) == 1
    record, out = step(record, IdentityMessage(TICK, None, 0.0), now=1061.0)
    assert [f.key for f in out.forwards] == ["anon:" + KEY]
    assert record is not None and record.anonymous and record.parked == []
    _, out = step(record, event(3))  # later events go straight there
    assert [f.key for f in out.forwards] == ["anon:" + KEY]


def test_parking_is_bounded_in_bytes_too() -> None:
    big = IdentityMessage(IDENTIFY, {"event_id": "big", "payload": {}}, 0.0, 2000)
    record, out = step(None, big)
    assert (
        record is not None and record.anonymous and [f.key for f in out.forwards] == ["anon:" + KEY]
    )


def test_a_link_to_an_anonymous_identifier_merges_it_into_the_customer() -> None:
    record = IdentityRecord(anonymous=True)
    record, out = step(record, link("c1"))
    [merge] = out.forwards
    assert merge.key == "anon:" + KEY and merge.value["type"] == "identity.merge_requested"
    assert merge.value["payload"] == {"into": "c1"} and merge.value["event_id"].startswith("L1")
    assert [r["type"] for r in out.log] == ["identity.linked", "identity.merged"]
    assert record is not None and not record.anonymous and record.customer_id == "c1"


def test_refusals_blocked_reserved_and_another_customer() -> None:
    _, out = identity_step("email:unknown", None, [link("c1")], POLICY, 0.0)
    assert [r["reason"] for r in out.log] == ["blocked_value"]
    _, out = step(None, link("anon:msisdn:+1"))
    assert [r["reason"] for r in out.log] == ["reserved_id"]
    record, _ = step(None, link("c1"))
    record, out = step(record, link("c2"))
    assert record is not None and record.customer_id == "c1"
    assert [r["reason"] for r in out.log] == ["linked_to_another_customer"]
    record, out = step(record, link("c2", force=True))  # the CRM may move it
    assert record is not None and record.customer_id == "c2"


def test_unlink_only_by_the_linked_customer_and_erase_deletes_the_record() -> None:
    record, _ = step(None, link("c1"))
    record, out = step(record, unlink("c2"))
    assert record is not None and record.customer_id == "c1" and out.log == []
    record, out = step(record, unlink("c1"))
    assert record is not None and record.customer_id is None
    assert [r["type"] for r in out.log] == ["identity.unlinked"]
    record, _ = step(record, link("c1"))
    record, out = step(record, unlink("c1", erase=True))
    assert record is None and out.deleted
    assert [(w.key, w.value) for w in out.writes] == [
        ("omni:identifier:msisdn:+447700900123", None)
    ]


def test_the_read_model_key_says_what_the_record_says() -> None:
    record, out = step(None, link("c1"))
    [write] = out.writes
    assert write == identifier_view(KEY, record)  # type: ignore[arg-type]
    assert orjson.loads(write.value or b"") == {
        "customer_id": "c1",
        "anonymous": False,
        "source": "learned",
        "linked_at": "1970-01-01T00:00:50.000Z",
    }
    assert identifier_view(KEY, IdentityRecord()) is None
    anonymous = identifier_view(KEY, IdentityRecord(anonymous=True))
    assert anonymous is not None and orjson.loads(anonymous.value or b"")["anonymous"] is True
    # An id with ':' and '%' is one escaped segment.
    weird = identifier_view("device_id:a:b%", IdentityRecord(customer_id="c"))
    assert weird is not None and weird.key == "omni:identifier:device_id:a%3Ab%25"


def test_the_same_messages_give_the_same_records_and_log_ids() -> None:
    messages = [event(1), link("c1"), event(2), unlink("c1"), event(3)]
    first = step(None, *messages)
    second = step(None, *messages)
    assert first[0] == second[0]
    assert [r["record_id"] for r in first[1].log] == [r["record_id"] for r in second[1].log]
