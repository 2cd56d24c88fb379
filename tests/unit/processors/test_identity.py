"""Identity resolution in the keyed agent, without a broker: the processor's records for
the customer-events topic are fed back to it (headers and keys as sent) until none is
left, so links, parking, anonymous profiles and merges run their whole course.

The pure decisions have their own tests (tests/unit/processors/domain/test_identity.py).
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import orjson

from processors.customer import CustomerProcessor
from processors.domain.identity import IDENTIFY, KIND_HEADER, IdentityRecord
from producers.simulator import make_event
from tests.unit.processors.doubles import Event, Message, customer_processor, stored_state

TOPIC = "omni.customer-events"
PARTITIONS = 4


class Loop:
    """A worker that owns every partition; Kafka's partitioning stood in for by crc32."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.processor: CustomerProcessor = customer_processor(
            tmp_path, partitions=range(PARTITIONS), **overrides
        )
        self.processor.rebuild_due(set(range(PARTITIONS)))
        self.offset = 0
        self.seen = 0  # records of the producer already looped back

    def partition(self, key: bytes) -> int:
        return zlib.crc32(key) % PARTITIONS

    def message(self, key: bytes, value: bytes, kind: str | None) -> Event:
        self.offset += 1
        headers = None if kind is None else [(KIND_HEADER, kind.encode())]
        return Event(
            Message(key, value, self.partition(key), self.offset, timestamp=time.time(),
                    headers=headers)
        )  # fmt: skip

    def publish(self, record: dict[str, Any]) -> None:
        """As ingest forwards it: identified events keyed by identifier, with the header."""
        if "customer_id" in record:
            key, kind = record["customer_id"].encode(), None
        else:
            from schemas.identity import identity_key

            key, kind = identity_key(record["identifiers"]).encode(), IDENTIFY
        self.run([self.message(key, orjson.dumps(record), kind)])

    def run(self, batch: list[Event]) -> None:
        while batch:
            self.processor.process(batch, ack=None)  # type: ignore[arg-type]
            batch = self._fed_back()

    def tick(self, now: float) -> None:
        self.processor.fire_due(now)
        self.run(self._fed_back())

    def _fed_back(self) -> list[Event]:
        producer = self.processor.producer
        new = list(zip(producer.sent, producer.sent_kwargs, strict=True))[self.seen :]  # type: ignore[attr-defined]
        self.seen += len(new)
        out = []
        for args, kwargs in new:
            if args[0] != TOPIC:
                continue
            headers = kwargs.get("headers")
            kind = headers[0][1].decode() if headers else None
            out.append(self.message(args[1], args[2], kind))
        return out

    def sent(self, topic: str) -> list[tuple[bytes, dict[str, Any]]]:
        return [
            (args[1], orjson.loads(args[2]))
            for args in self.processor.producer.sent  # type: ignore[attr-defined]
            if args[0] == topic
        ]

    def state(self, customer: str) -> Any:
        key = customer.encode()
        return stored_state(self.processor.records, key, self.partition(key))

    def identity(self, key: str) -> IdentityRecord | None:
        value = self.processor.identity.records.get(key.encode(), self.partition(key.encode()))
        return None if value is None else IdentityRecord.from_json(value)


def identified(
    channel: str, type_: str, payload: dict[str, Any], **identifiers: str
) -> dict[str, Any]:
    record = make_event("x", channel, type_, payload, identifiers=identifiers)
    del record["customer_id"]
    return record


def login(customer: str, **identifiers: str) -> dict[str, Any]:
    return make_event(customer, "web", "page.viewed", {"url": "/login"}, identifiers=identifiers)


def web_cart(cart_id: str = "K1", **identifiers: str) -> dict[str, Any]:
    items = [{"sku": "S1", "qty": 2, "unit_price": 9.5}]
    return identified(
        "web", "cart.updated", {"cart_id": cart_id, "items": items, "currency": "EUR"},
        **identifiers,
    )  # fmt: skip


def test_an_event_for_a_linked_identifier_goes_to_her_with_her_id(tmp_path: Path) -> None:
    loop = Loop(tmp_path)
    loop.publish(make_event("alice", "crm", "profile.updated", {"home_country": "GB"},
                            identifiers={"msisdn": "+447700900123"}))  # fmt: skip
    attach = identified("telco", "telco.network_attached", {"country": "FR", "network": "Orange"},
                        msisdn="+447700900123")  # fmt: skip
    loop.publish(attach)
    state = loop.state("alice")
    assert state["identifiers"] == {"msisdn": ["+447700900123"]}
    assert state["last_country"] == "FR"  # the attach reached her record
    assert loop.identity("msisdn:+447700900123").customer_id == "alice"  # type: ignore[union-attr]
    [linked] = [r for _, r in loop.sent("identity.log")]
    assert (linked["type"], linked["customer_id"]) == ("identity.linked", "alice")


def test_an_unknown_identifier_parks_then_its_events_follow_the_link(tmp_path: Path) -> None:
    loop = Loop(tmp_path)
    attach = identified("telco", "telco.network_attached", {"country": "ES", "network": "M"},
                        msisdn="+447700900999")  # fmt: skip
    loop.publish(attach)
    record = loop.identity("msisdn:+447700900999")
    assert record is not None and len(record.parked) == 1 and loop.state("bob") is None
    loop.publish(make_event("bob", "crm", "profile.updated", {"home_country": "GB"},
                            identifiers={"msisdn": "+447700900999"}))  # fmt: skip
    assert loop.state("bob")["last_country"] == "ES"
    assert loop.identity("msisdn:+447700900999").parked == []  # type: ignore[union-attr]


def test_parking_expires_into_an_anonymous_profile_that_merges_at_login(tmp_path: Path) -> None:
    loop = Loop(tmp_path, identity_park_seconds=0.0)
    loop.publish(web_cart(device_id="dev-1"))
    loop.tick(time.time() + 1)
    anonymous = loop.state("anon:device_id:dev-1")
    assert anonymous is not None and anonymous["cart"]["cart_id"] == "K1"
    loop.publish(login("carol", device_id="dev-1"))
    carol = loop.state("carol")
    assert carol["cart"]["cart_id"] == "K1"  # the cart built before login is hers
    assert any(t["data"]["rule"] == "cart_reminder" for t in carol["timers"])  # her reminder
    assert loop.state("anon:device_id:dev-1") is None  # tombstoned
    types = [r["type"] for _, r in loop.sent("identity.log")]
    assert types == ["identity.linked", "identity.merged"]


def test_a_shared_device_never_merges(tmp_path: Path) -> None:
    loop = Loop(tmp_path, identity_park_seconds=0.0, identity_shared_device_customers=2)
    for customer in ("d1", "d2", "d3"):
        loop.publish(login(customer, device_id="kiosk-1"))
    record = loop.identity("device_id:kiosk-1")
    assert record is not None and record.shared and record.customer_id is None
    loop.publish(web_cart(device_id="kiosk-1"))
    loop.tick(time.time() + 1)
    assert loop.state("anon:device_id:kiosk-1")["cart"] is not None
    loop.publish(login("d1", device_id="kiosk-1"))
    assert loop.state("d1").get("cart") is None  # no merge
    refusals = [
        r["reason"] for _, r in loop.sent("identity.log") if r["type"] == "identity.refused"
    ]
    # d2 is refused as the device is d1's; d3 makes it shared (3 customers > 2).
    assert refusals == ["linked_to_another_customer", "shared_device"]


def test_two_known_customers_are_not_merged_by_a_learned_link(tmp_path: Path) -> None:
    loop = Loop(tmp_path)
    loop.publish(login("erin", email="shared@example.org"))
    loop.publish(login("fred", email="shared@example.org"))
    assert loop.identity("email:shared@example.org").customer_id == "erin"  # type: ignore[union-attr]
    refused = [r for _, r in loop.sent("identity.log") if r["type"] == "identity.refused"]
    assert [(r["customer_id"], r["reason"]) for r in refused] == [
        ("fred", "linked_to_another_customer")
    ]
    # The CRM may move it, and merge fred into erin.
    loop.publish(make_event("fred", "crm", "identity.linked", {"merge_from": "erin"},
                            identifiers={"email": "shared@example.org"}))  # fmt: skip
    assert loop.identity("email:shared@example.org").customer_id == "fred"  # type: ignore[union-attr]
    assert loop.state("erin") is None
    assert "web" in loop.state("fred")["last_seen"]


def test_unlink_stops_resolution_for_later_events(tmp_path: Path) -> None:
    loop = Loop(tmp_path)
    loop.publish(login("gina", loyalty_id="L-1"))
    loop.publish(make_event("gina", "crm", "identity.unlinked", {},
                            identifiers={"loyalty_id": "L-1"}))  # fmt: skip
    assert loop.identity("loyalty_id:L-1").customer_id is None  # type: ignore[union-attr]
    assert "identifiers" not in loop.state("gina") or not loop.state("gina")["identifiers"]


def test_limits_per_type_and_blocked_values(tmp_path: Path) -> None:
    loop = Loop(tmp_path, identity_limits={"email": 1}, identity_blocked_values=["nobody@x.org"])
    loop.publish(login("hal", email="a@x.org"))
    loop.publish(login("hal", email="b@x.org"))
    loop.publish(login("hal", email="nobody@x.org"))
    loop.publish(login("hal", device_id="d-9"))  # device_id is not in the limits: none allowed
    assert loop.state("hal")["identifiers"] == {"email": ["a@x.org"]}
    reasons = [r["reason"] for _, r in loop.sent("identity.log") if r["type"] == "identity.refused"]
    assert reasons == ["identifier_limit", "identifier_limit"]
    assert loop.processor.metrics.identity_blocked._value.get() == 1


def test_parking_is_bounded_in_count(tmp_path: Path) -> None:
    loop = Loop(tmp_path, identity_park_max_events=2)
    for n in range(3):
        loop.publish(identified("web", "page.viewed", {"url": f"/p{n}"}, device_id="dev-z"))
    assert loop.identity("device_id:dev-z").anonymous  # type: ignore[union-attr]
    assert len(loop.state("anon:device_id:dev-z")["lead"]) == 3  # nothing lost


def test_erasure_removes_her_links_and_what_was_merged_into_her(tmp_path: Path) -> None:
    loop = Loop(tmp_path, identity_park_seconds=0.0)
    loop.publish(web_cart(device_id="dev-e"))
    loop.tick(time.time() + 1)
    loop.publish(login("ivy", device_id="dev-e", email="ivy@x.org"))
    assert loop.state("ivy")["cart"] is not None
    loop.publish(make_event("ivy", "crm", "privacy.erasure_requested", {"request_id": "R1"}))
    assert loop.state("ivy") is None
    assert loop.identity("device_id:dev-e") is None
    assert loop.identity("email:ivy@x.org") is None
    assert loop.state("anon:device_id:dev-e") is None


def test_a_replay_yields_the_same_links_merges_and_trigger_ids(tmp_path: Path) -> None:
    def run(where: Path) -> tuple[list[Any], list[Any]]:
        loop = Loop(where, identity_park_seconds=0.0)
        for record in inputs:
            loop.publish(record)
            loop.tick(time.time() + 1)
        log = sorted(r["record_id"] for _, r in loop.sent("identity.log"))
        triggers = sorted(
            r["trigger_id"] for args in loop.processor.producer.sent  # type: ignore[attr-defined]
            if str(args[0]).startswith("trigger.") for r in [orjson.loads(args[2])]
        )  # fmt: skip
        return log, triggers

    inputs = [
        make_event("jo", "crm", "profile.updated", {"home_country": "GB"},
                   identifiers={"msisdn": "+447700900555"}),
        identified("telco", "telco.network_attached", {"country": "FR", "network": "O"},
                   msisdn="+447700900555"),
        web_cart(device_id="dev-r"),
        login("jo", device_id="dev-r"),
    ]  # fmt: skip
    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert first == second and first[0] and first[1]


def test_a_device_is_shared_only_within_the_window(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    loop = Loop(tmp_path, identity_shared_device_customers=1, identity_shared_device_days=1)
    start = datetime.now(UTC) - timedelta(days=3)
    for n, customer in enumerate(("k1", "k2")):
        record = login(customer, device_id="tablet-1")
        # Two days apart: never two customers within one day.
        record["occurred_at"] = (start + timedelta(days=2 * n)).isoformat().replace("+00:00", "Z")
        loop.publish(record)
    device = loop.identity("device_id:tablet-1")
    assert device is not None and not device.shared and device.customer_id == "k1"


def test_a_resolved_event_links_nothing_else_to_her(tmp_path: Path) -> None:
    # Knowing her phone number must not let anyone link their device to her.
    loop = Loop(tmp_path)
    loop.publish(login("kate", msisdn="+447700900777"))
    attack = identified("telco", "telco.network_attached", {"country": "FR"},
                        msisdn="+447700900777", device_id="attacker-laptop")  # fmt: skip
    loop.publish(attack)
    assert loop.state("kate")["last_country"] == "FR"  # resolved to her...
    assert loop.state("kate")["identifiers"] == {"msisdn": ["+447700900777"]}  # ...linking nothing
    assert loop.identity("device_id:attacker-laptop") is None
