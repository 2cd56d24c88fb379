"""The checkpoint under SIGKILL: no trigger, decision or state is lost.

The worker is killed (SIGKILL: no shutdown code runs) while it works through a
steady stream of roaming events, once right after it became ready again (while it
drains a backlog in large batches). Every roaming event must still yield its
offer (the oracle: a customer with no home country and three distinct countries
gets three offers, within the daily cap) and its decision, and the customers'
final state must hold every country.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from processors.settings import Settings
from producers.sdk import TouchpointProducer
from producers.simulator import make_event
from tests.integration.forensics import trace_customer
from tests.integration.harness import TopicReader, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

COUNTRIES = ("FR", "ES", "IT", "PT", "NL", "BE", "AT", "PL")


def roaming_events(customers: int, seed: int) -> tuple[list[dict[str, object]], set[str]]:
    """A home country, then three attaches in three foreign countries, customers interleaved.

    The profile goes through the telco topic too, so it is ordered before the attaches.
    Returns the events and the ids of those that must each yield one offer.
    """
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    plans = {f"kill-{tag}-{n}": rng.sample(COUNTRIES, 3) for n in range(customers)}
    events = [make_event(cid, "telco", "profile.updated", {"home_country": "DE"}) for cid in plans]
    for round_ in range(3):
        for cid, countries in plans.items():
            attach = {"country": countries[round_]}
            events.append(make_event(cid, "telco", "telco.network_attached", attach))
    return events, {str(e["event_id"]) for e in events[customers:]}


def lost_customer(events: list[dict[str, object]], lost: set[str]) -> str:
    return next(str(e["customer_id"]) for e in events if e["event_id"] in lost)


def forwarded(settings: Settings, ids: set[str]) -> dict[int, list[int]]:
    """partition -> offsets of the events ``ids`` on the customer-events topic."""
    reader = TopicReader(settings, settings.customer_events_topic)
    found: dict[int, list[int]] = {}
    try:
        for message in reader.raw(5.0):
            value = message.value()
            if value and orjson.loads(value).get("event_id") in ids:
                found.setdefault(message.partition(), []).append(message.offset())
    finally:
        reader.close()
    return found


def test_sigkill_loses_no_trigger_decision_or_state(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader], tmp_path: Path
) -> None:
    events, expected = roaming_events(customers=600, seed=7)
    done = threading.Event()

    def produce() -> None:
        with TouchpointProducer(settings) as producer:
            for index, event in enumerate(events):
                producer.publish(event)
                if index % 20 == 19:
                    producer.flush()
                    time.sleep(0.1)  # about 170 events/s: the kills land mid-stream
        done.set()

    producing = threading.Thread(target=produce, daemon=True)
    producing.start()
    sms = readers[settings.trigger_topic("sms")]
    decisions = readers[settings.decision_topic]
    kills = 0
    # Each kill lands 0.3-1.5 s after the worker became ready again, while it drains the
    # backlog that built up meanwhile in large batches: outputs queued, state pending.
    for delay in (1.5, 0.4, 0.8, 0.3):
        time.sleep(delay)
        worker.kill()
        kills += 1
        time.sleep(2.0)  # a backlog builds up meanwhile
        worker.start()
    producing.join(60)
    assert done.is_set(), "the producer did not finish"

    def offers() -> set[str] | None:
        got = {t["source_event_id"] for t in sms.poll() if t["type"] == "roaming_offer"}
        return got if expected <= got else None

    try:
        wait_for(offers, 120, "an offer for every roaming event")
    except AssertionError:
        got = {t["source_event_id"] for t in sms.records if t["type"] == "roaming_offer"}
        lost = expected - got
        # What the worker decided for the lost ones says where they went.
        decided = Counter(
            f"{d['rule']}:{d['outcome']}:{d.get('reasons')}"
            for d in decisions.poll(1.0)
            if d.get("source_event_id") in lost
        )
        raise AssertionError(
            f"{len(lost)} of {len(expected)} offers lost after {kills} SIGKILLs; "
            f"their decisions: {dict(decided) or 'none'}; on customer-events at "
            f"{forwarded(settings, lost)}; worker:\n{worker.diagnose()}\n"
            + trace_customer(settings, lost_customer(events, lost))
        ) from None
    emitted = {
        d["source_event_id"]
        for d in decisions.poll(1.0)
        if d["rule"] == "roaming_offer" and d["outcome"] == "emitted"
    }
    assert expected <= emitted, f"{len(expected - emitted)} decisions lost"
    # Delivery is at-least-once: duplicates carry the same trigger id.
    by_source: dict[str, set[str]] = {}
    for trigger in sms.records:
        by_source.setdefault(trigger["source_event_id"], set()).add(trigger["trigger_id"])
    assert all(len(ids) == 1 for ids in by_source.values()), "a replay made a new trigger id"

    # Final state: every customer's last attach is its last country (read model = state).
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    last = {
        str(e["customer_id"]): e["payload"]["country"]  # type: ignore[index]
        for e in events
        if e["type"] == "telco.network_attached"
    }

    def converged() -> bool:
        for cid, country in last.items():
            raw = client.get(f"omni:profile:{cid}")
            if raw is None or orjson.loads(raw).get("last_country") != country:
                return False
        return True

    try:
        wait_for(converged, 60, "every profile's last country in Redis")
    except AssertionError as exc:
        wrong = {}
        for cid, country in last.items():
            raw = client.get(f"omni:profile:{cid}")
            got = None if raw is None else orjson.loads(raw).get("last_country")
            if got != country:
                wrong[cid] = f"{got} (expected {country})"
        example = next(iter(wrong))
        raise AssertionError(
            f"{exc}: {len(wrong)} wrong, e.g. {dict(list(wrong.items())[:3])}; "
            f"worker:\n{worker.diagnose()}\n{trace_customer(settings, example)}"
        ) from None
