"""End to end on the real broker and Redis: one customer across identifiers (issue 14).

A telco event with only an MSISDN gets the customer's roaming offer (S5); an anonymous
web cart followed by a login becomes her cart and her reminder (S8); a shared device
does not merge two customers; a replay of the same input yields the same links,
merges and trigger ids; an erasure removes her links and what was merged into her.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from processors.settings import Settings
from processors.topics import ensure_topics
from producers.keys import cart_key, identifier_key, profile_key
from producers.sdk import TouchpointProducer
from producers.simulator import make_event
from schemas import validate_record
from tests.integration.conftest import Provided
from tests.integration.harness import TopicReader, WorkerProcess, make_settings, wait_for
from tests.integration.test_erasure import omni

pytestmark = pytest.mark.integration

#: Short enough for a test, long enough that a cart is not reminded before the login.
CART_ABANDON_SECONDS = 8.0
SHORT = {
    "cart_abandon_after_seconds": CART_ABANDON_SECONDS,
    # Unresolved events wait 1 s, then go to the identifier's anonymous profile.
    "identity_park_seconds": 1.0,
    "identity_shared_device_customers": 2,
}


# One worker for the module: every test uses customers, phones and devices of its own
# (unique ids), and filters what it reads by them.
@pytest.fixture(scope="module")
def id_settings(
    kafka: Provided, redis_service: Provided, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    where = tmp_path_factory.mktemp("identity")
    settings = make_settings(kafka.address, redis_service.address, where / "worker", **SHORT)
    ensure_topics(settings)
    return settings


@pytest.fixture(scope="module")
def id_worker(
    id_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(id_settings, tmp_path_factory.mktemp("identity-log") / "worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def readers(id_settings: Settings) -> Iterator[dict[str, TopicReader]]:
    opened: dict[str, TopicReader] = {}

    class Readers(dict[str, TopicReader]):
        def __missing__(self, topic: str) -> TopicReader:
            reader = opened[topic] = TopicReader(id_settings, topic)
            self[topic] = reader
            return reader

    yield Readers()
    for reader in opened.values():
        reader.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def msisdn() -> str:
    return "+4477009" + str(uuid.uuid4().int)[:5]


def publish(settings: Settings, *events: dict[str, Any]) -> None:
    with TouchpointProducer(settings) as producer:
        for event in events:
            producer.publish(event)


def client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url.get_secret_value())


def identified(channel: str, type_: str, payload: dict[str, Any], **ids: str) -> dict[str, Any]:
    event = make_event("x", channel, type_, payload, identifiers=ids)
    del event["customer_id"]
    return event


def attach(country: str, phone: str) -> dict[str, Any]:
    return identified("telco", "telco.network_attached", {"country": country}, msisdn=phone)


def web_cart(device: str, cart_id: str = "CART-A") -> dict[str, Any]:
    lines = [{"sku": "SKU-1", "qty": 2, "unit_price": 9.5}]
    payload = {"cart_id": cart_id, "items": lines, "currency": "EUR"}
    return identified("web", "cart.updated", payload, device_id=device)


def login(cid: str, **ids: str) -> dict[str, Any]:
    return make_event(cid, "web", "page.viewed", {"url": "/account"}, identifiers=ids)


def link_of(settings: Settings, identifier_type: str, value: str) -> dict[str, Any] | None:
    raw = client(settings).get(identifier_key(identifier_type, value))
    return None if raw is None else orjson.loads(raw)


def identity_log(reader: TopicReader, cid: str) -> list[dict[str, Any]]:
    return [r for r in reader.poll() if r["customer_id"] == cid]


def test_s5_a_telco_event_with_only_an_msisdn_gets_her_roaming_offer(
    id_settings: Settings, id_worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    settings = id_settings
    cid, phone = unique("maria"), msisdn()
    # The network sees her phone before the bank knows it: parked, then resolved.
    early = attach("FR", phone)
    publish(settings, early)
    publish(
        settings,
        make_event(cid, "crm", "profile.updated", {"home_country": "DE"},
                   identifiers={"msisdn": phone}),
    )  # fmt: skip
    link = wait_for(lambda: link_of(settings, "msisdn", phone), 30, "the MSISDN's link")
    assert link["customer_id"] == cid and link["anonymous"] is False
    later = attach("ES", phone)
    publish(settings, later)
    offers = readers[settings.trigger_topic("sms")].wait_for(
        lambda t: t["customer_id"] == cid and t["type"] == "roaming_offer", count=1, timeout=30
    )
    assert validate_record("trigger", offers[0]) == []
    assert offers[0]["source_event_id"] in {early["event_id"], later["event_id"]}
    profile = orjson.loads(client(settings).get(profile_key(cid)) or b"{}")
    assert profile["identifiers"] == {"msisdn": [phone]}
    [linked] = readers[settings.identity_log_topic].wait_for(
        lambda r: r["customer_id"] == cid and r["type"] == "identity.linked"
    )
    assert validate_record("identity", linked) == []


def test_s8_an_anonymous_cart_becomes_her_cart_and_her_reminder_at_login(
    id_settings: Settings, id_worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    settings = id_settings
    cid, device = unique("kim"), unique("laptop")
    redis_client = client(settings)
    publish(settings, web_cart(device))
    anonymous = f"anon:device_id:{device}"
    wait_for(lambda: redis_client.get(cart_key(anonymous)), 30, "the anonymous cart in Redis")
    assert link_of(settings, "device_id", device)["anonymous"] is True  # type: ignore[index]
    publish(settings, login(cid, device_id=device))
    merged = wait_for(lambda: redis_client.get(cart_key(cid)), 30, "her cart after login")
    assert orjson.loads(merged)["cart_id"] == "CART-A"
    wait_for(lambda: redis_client.get(cart_key(anonymous)) is None, 20, "the anonymous cart gone")
    assert link_of(settings, "device_id", device)["customer_id"] == cid  # type: ignore[index]
    log = readers[settings.identity_log_topic].wait_for(
        lambda r: r["customer_id"] == cid, count=2, timeout=20
    )
    assert [r["type"] for r in log] == ["identity.linked", "identity.merged"]
    assert log[1]["merged_from"] == anonymous
    assert all(validate_record("identity", r) == [] for r in log)
    [reminder] = readers[settings.trigger_topic("email")].wait_for(
        lambda t: t["customer_id"] == cid and t["type"] == "cart_reminder", timeout=40
    )
    assert [i["sku"] for i in reminder["payload"]["items"]] == ["SKU-1"]


def test_a_shared_device_does_not_merge_two_customers(
    id_settings: Settings, id_worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    settings = id_settings
    first, second, third = unique("ann"), unique("ben"), unique("cat")
    device = unique("family-tablet")
    redis_client = client(settings)
    for cid in (first, second, third):  # three customers > 2: shared
        publish(settings, login(cid, device_id=device))
        wait_for(lambda c=cid: redis_client.get(profile_key(c)), 30, "the login processed")
    publish(settings, web_cart(device))
    anonymous = f"anon:device_id:{device}"
    wait_for(lambda: redis_client.get(cart_key(anonymous)), 30, "the device's anonymous cart")
    publish(settings, login(first, device_id=device), login(second, device_id=device))
    time.sleep(3)
    assert redis_client.get(cart_key(first)) is None and redis_client.get(cart_key(second)) is None
    assert redis_client.get(cart_key(anonymous)) is not None  # still the device's
    refused = readers[settings.identity_log_topic].wait_for(
        lambda r: r["type"] == "identity.refused" and r["customer_id"] == third
    )
    assert refused[0]["reason"] == "shared_device"
    # No merge of the device's anonymous profile (other tests' merges share the topic).
    merges = [
        r for r in readers[settings.identity_log_topic].poll() if r["merged_from"] == anonymous
    ]
    assert merges == []


def test_a_replay_of_the_same_input_yields_the_same_links_merges_and_trigger_ids(
    id_settings: Settings, id_worker: WorkerProcess, kafka: Provided, redis_service: Provided,
    tmp_path: Path,
) -> None:  # fmt: skip
    cid, other, phone = unique("rita"), unique("old-rita"), msisdn()
    email = f"{other}@x.org"
    profile = make_event(cid, "crm", "profile.updated", {"home_country": "DE"},
                         identifiers={"msisdn": phone})  # fmt: skip
    old_login = login(other, email=email)
    roaming = attach("IT", phone)
    # The CRM merges her old profile into her: its email then resolves to her.
    crm_merge = make_event(cid, "crm", "identity.linked", {"merge_from": other},
                           identifiers={"msisdn": phone})  # fmt: skip

    def run(settings: Settings) -> tuple[list[str], list[str]]:
        publish(settings, profile, old_login)
        wait_for(lambda: link_of(settings, "msisdn", phone), 30, "the MSISDN's link")
        wait_for(lambda: link_of(settings, "email", email), 30, "the email's link")
        publish(settings, roaming)
        publish(settings, crm_merge)
        wait_for(
            lambda: (link_of(settings, "email", email) or {}).get("customer_id") == cid,
            30,
            "the merged profile's email resolving to her",
        )
        log = TopicReader(settings, settings.identity_log_topic)
        sms = TopicReader(settings, settings.trigger_topic("sms"))
        try:
            log.wait_for(lambda r: r["type"] == "identity.linked" and r["identifier"]["type"]
                         == "email" and r["customer_id"] == cid)  # fmt: skip
            sms.wait_for(lambda t: t["customer_id"] == cid)
            time.sleep(1)
            mine = (cid, other)  # the module's other tests share the topic
            ids = sorted(r["record_id"] for r in log.poll() if r["customer_id"] in mine)
            triggers = sorted(t["trigger_id"] for t in sms.poll() if t["customer_id"] == cid)
        finally:
            log.close()
            sms.close()
        return ids, triggers

    first = run(id_settings)
    assert first[0] and first[1]
    # The same input into a fresh pipeline (its own topics, group and state).
    again = make_settings(kafka.address, redis_service.address, tmp_path / "replay", **SHORT)
    ensure_topics(again)
    worker = WorkerProcess(again, tmp_path / "replay.log")
    worker.start()
    try:
        second = run(again)
    finally:
        worker.stop()
    # Links (msisdn, email, the email moved to her), the CRM's merge, the roaming offer.
    assert first == second


def test_an_erasure_removes_her_links_parked_events_and_merged_profiles(
    id_settings: Settings, id_worker: WorkerProcess
) -> None:
    settings = id_settings
    cid, device, phone = unique("ivy"), unique("phone"), msisdn()
    redis_client = client(settings)
    publish(settings, web_cart(device))
    anonymous = f"anon:device_id:{device}"
    wait_for(lambda: redis_client.get(cart_key(anonymous)), 30, "the anonymous cart")
    publish(settings, login(cid, device_id=device, msisdn=phone))
    wait_for(lambda: redis_client.get(cart_key(cid)), 30, "her merged cart")
    publish(settings, make_event(cid, "crm", "privacy.erasure_requested", {"request_id": "R-1"}))
    wait_for(lambda: redis_client.get(profile_key(cid)) is None, 30, "her profile gone")
    wait_for(lambda: link_of(settings, "device_id", device) is None, 30, "the device link gone")
    assert link_of(settings, "msisdn", phone) is None
    assert redis_client.get(cart_key(cid)) is None and redis_client.get(cart_key(anonymous)) is None
    # Her phone no longer resolves to her: a new event waits, then is anonymous.
    publish(settings, attach("FR", phone))
    after = wait_for(lambda: link_of(settings, "msisdn", phone), 30, "the phone's new record")
    assert after["anonymous"] is True and after["customer_id"] == f"anon:msisdn:{phone}"
    assert redis_client.get(profile_key(cid)) is None
    # A rebuild of the read model from the changelogs brings none of her links back.
    redis_client.delete(identifier_key("msisdn", phone))
    omni(settings, "redis", "rebuild")
    assert link_of(settings, "device_id", device) is None
    assert link_of(settings, "msisdn", phone)["anonymous"] is True  # type: ignore[index]
    assert redis_client.get(profile_key(cid)) is None
