"""The benchmark workload: valid events from many customers, and a fast preloader.

Every customer first gets a ``profile.updated`` with ``home_country`` (so the
roaming rule can fire), published by the telco (it knows the SIM's home
network). That channel matters: Kafka orders a key's messages only within one
partition of one topic, and a consumer draining a backlog reads whole
partition chunks in no set order, so a home profile on ``touchpoint.crm``
could be processed after all of the customer's network attaches (then no
variant would see roaming, or some would and some would not). On
``touchpoint.telco`` it precedes them in every variant.

Then the rest of the events are drawn from a mix that
looks like a bank + telco day: mostly network attaches, calls and ATM
withdrawals, some profile and consent changes, a few accepted overdrafts.
About a quarter of network attaches are abroad, so S5 fires (or is suppressed
by cooldown or a withdrawn consent) and S1 fires on every accepted overdraft.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Producer

from processors.settings import Settings

HOME_COUNTRIES = ("GB", "ES", "DE", "FR", "IT", "NL", "PT", "IE")
TRAVEL_COUNTRIES = (
    "FR",
    "DE",
    "ES",
    "IT",
    "NL",
    "PT",
    "US",
    "GR",
    "TR",
    "CH",
    "AT",
    "BE",
    "IE",
    "PL",
    "SE",
    "DK",
    "NO",
    "HR",
    "MA",
    "TH",
    "GB",
    "MX",
    "JP",
    "CA",
)
CURRENCY = {
    "GB": "GBP",
    "US": "USD",
    "CH": "CHF",
    "PL": "PLN",
    "SE": "SEK",
    "DK": "DKK",
    "NO": "NOK",
    "TR": "TRY",
    "MA": "MAD",
    "TH": "THB",
    "MX": "MXN",
    "JP": "JPY",
    "CA": "CAD",
}
TIMEZONES = {
    "GB": "Europe/London",
    "ES": "Europe/Madrid",
    "DE": "Europe/Berlin",
    "FR": "Europe/Paris",
    "IT": "Europe/Rome",
    "NL": "Europe/Amsterdam",
    "PT": "Europe/Lisbon",
    "IE": "Europe/Dublin",
}
LANGUAGES = {
    "GB": "en-GB",
    "ES": "es-ES",
    "DE": "de-DE",
    "FR": "fr-FR",
    "IT": "it-IT",
    "NL": "nl-NL",
    "PT": "pt-PT",
    "IE": "en-IE",
}
PRODUCTS = (
    "current_account",
    "savings",
    "credit_card",
    "mortgage",
    "mobile_plan",
    "roaming_pack",
    "insurance",
)

#: (channel, payload) for one event of a type, for a customer with a home country.
Builder = Callable[[random.Random, str], tuple[str, dict[str, Any]]]


def currency_of(country: str) -> str:
    return CURRENCY.get(country, "EUR")


def home_country(customer_index: int) -> str:
    return HOME_COUNTRIES[customer_index % len(HOME_COUNTRIES)]


def customer_id(customer_index: int) -> str:
    return f"cust-{customer_index:07d}"


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _abroad(rng: random.Random, home: str) -> str:
    while True:
        country = rng.choice(TRAVEL_COUNTRIES)
        if country != home:
            return country


def network_attached(rng: random.Random, home: str) -> tuple[str, dict[str, Any]]:
    country = home if rng.random() < 0.75 else _abroad(rng, home)
    return "telco", {"country": country, "network": f"{country}-{rng.randrange(1, 4)}"}


def call_started(rng: random.Random, home: str) -> tuple[str, dict[str, Any]]:
    if rng.random() < 0.8:
        return "telco", {
            "destination_country": home,
            "call_type": rng.choice(("local", "long_distance")),
        }
    return "telco", {"destination_country": _abroad(rng, home), "call_type": "international"}


def atm_withdrawal(rng: random.Random, home: str) -> tuple[str, dict[str, Any]]:
    country = home if rng.random() < 0.9 else _abroad(rng, home)
    return "atm", {
        "amount": rng.choice((20, 40, 50, 60, 100, 150, 200, 300)),
        "currency": currency_of(country),
        "country": country,
        "atm_id": f"ATM-{country}-{rng.randrange(5000):04d}",
        "location_type": rng.choice(("street", "street", "branch", "mall", "airport", "other")),
    }


def profile_change(rng: random.Random, home: str) -> tuple[str, dict[str, Any]]:
    field_name = rng.choice(
        (
            "language",
            "preferred_channel",
            "products_add",
            "products_remove",
            "marital_status",
            "children",
            "timezone",
        )
    )
    value: Any = {
        "language": LANGUAGES[home],
        "preferred_channel": rng.choice(("sms", "email", "push")),
        "products_add": rng.sample(PRODUCTS, rng.randrange(1, 3)),
        "products_remove": [rng.choice(PRODUCTS)],
        "marital_status": rng.choice(("single", "married", "divorced", "widowed")),
        "children": rng.randrange(0, 4),
        "timezone": TIMEZONES[home],
    }[field_name]
    return rng.choice(("crm", "web", "mobile", "branch", "callcenter")), {field_name: value}


def consent_change(rng: random.Random, home: str) -> tuple[str, dict[str, Any]]:
    return rng.choice(("mobile", "web", "email", "sms", "callcenter", "branch")), {
        "channel": rng.choice(("sms", "sms", "email", "push", "phone")),
        "purpose": "marketing" if rng.random() < 0.8 else "service",
        "granted": rng.random() < 0.85,
    }


def overdraft_accepted(rng: random.Random, home: str) -> tuple[str, dict[str, Any]]:
    return rng.choice(("mobile", "mobile", "web", "branch", "callcenter")), {
        "offer_id": f"OD-{rng.randrange(10**6):06d}",
        "offer_type": "overdraft",
        "limit": rng.choice((100, 250, 500, 1000)),
        "currency": currency_of(home),
        "valid_hours": rng.choice((24, 48, 72)),
    }


#: Share of the events after each customer's first profile, by type.
MIX: tuple[tuple[str, float, Builder], ...] = (
    ("telco.network_attached", 0.30, network_attached),
    ("telco.call_started", 0.17, call_started),
    ("atm.withdrawal", 0.20, atm_withdrawal),
    ("profile.updated", 0.10, profile_change),
    ("consent.updated", 0.13, consent_change),
    ("offer.accepted", 0.10, overdraft_accepted),
)


@dataclass
class Workload:
    """Messages as (channel, key, value); profiles first (one per customer)."""

    messages: list[tuple[str, bytes, bytes]]
    customers: int
    mix: Counter[str] = field(default_factory=Counter)

    @property
    def events(self) -> int:
        return len(self.messages)

    @property
    def mean_bytes(self) -> float:
        return sum(len(value) for _, _, value in self.messages) / max(1, self.events)


def _record(
    event_id: str,
    type_: str,
    channel: str,
    customer: str,
    occurred_at: str,
    payload: dict[str, Any],
    rng: random.Random,
) -> bytes:
    event: dict[str, Any] = {
        "event_id": event_id,
        "type": type_,
        "occurred_at": occurred_at,
        "channel": channel,
        "customer_id": customer,
        "payload": payload,
    }
    # Optional envelope fields, as some channels send them.
    if channel in ("mobile", "telco") and rng.random() < 0.5:
        event["device"] = {"id": f"dev-{customer}", "kind": "phone"}
    if rng.random() < 0.2:
        event["journey_stage"] = rng.choice(
            ("awareness", "consideration", "purchase", "service", "loyalty")
        )
    return orjson.dumps(event)


def bench_msisdn(index: int) -> str:
    return f"+4470{index:08d}"


def identified(value: bytes, index: int) -> tuple[bytes, bytes]:
    """The event as a channel that knows only the customer's phone sends it: no
    ``customer_id``, ``identifiers.msisdn``, keyed ``msisdn:<phone>``."""
    event = orjson.loads(value)
    del event["customer_id"]
    event["identifiers"] = {"msisdn": bench_msisdn(index)}
    return f"msisdn:{bench_msisdn(index)}".encode(), orjson.dumps(event)


def generate(
    events: int, customers: int, seed: int = 7, identified_share: float = 0.0
) -> Workload:
    """``events`` valid events (the first ``customers`` of them are home profiles).

    ``identified_share``: the share of the other events sent with only the customer's
    MSISDN (resolved by the identity step; her home profile links it first).
    """
    customers = max(1, min(customers, events))
    rng = random.Random(seed)
    # Its own generator: the identified run holds the same events as the plain one.
    identify = random.Random(seed + 1)
    names, weights, builders = zip(*((n, w, b) for n, w, b in MIX), strict=True)
    workload = Workload([], customers)
    for index in range(customers):
        home, customer = home_country(index), customer_id(index)
        payload = {"home_country": home, "language": LANGUAGES[home], "timezone": TIMEZONES[home]}
        value = _record(
            f"ev-{index:09d}", "profile.updated", "telco", customer, rfc3339_now(), payload, rng
        )
        if identified_share:
            event = orjson.loads(value)
            event["identifiers"] = {"msisdn": bench_msisdn(index)}
            value = orjson.dumps(event)
        workload.messages.append(("telco", customer.encode(), value))
        workload.mix["profile.updated (home)"] += 1
    picks = rng.choices(range(len(names)), weights=weights, k=events - customers)
    for offset, pick in enumerate(picks, start=customers):
        index = rng.randrange(customers)
        customer = customer_id(index)
        channel, payload = builders[pick](rng, home_country(index))
        value = _record(
            f"ev-{offset:09d}", names[pick], channel, customer, rfc3339_now(), payload, rng
        )
        key = customer.encode()
        if identified_share and identify.random() < identified_share:
            key, value = identified(value, index)
        workload.messages.append((channel, key, value))
        workload.mix[names[pick]] += 1
    return workload


#: Fast bulk loading; the contract settings (murmur2, idempotent, lz4) plus big batches.
PRELOAD_CONFIG: dict[str, Any] = {
    "partitioner": "murmur2_random",
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
}


def produce_all(producer: Producer, messages: Iterable[tuple[str, bytes, bytes]]) -> None:
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(0.05)


def preload(settings: Settings, workload: Workload) -> float:
    """Publish the workload to ``touchpoint.<channel>``; returns events/s of the load.

    No validation here (the events are valid by construction and the variants
    check it): the preload is setup, not what we measure.
    """
    producer = Producer({**settings.kafka_client_config(), **PRELOAD_CONFIG})
    topic = {channel: name for name, channel in settings.touchpoint_topics.items()}
    started = time.monotonic()
    profiles = workload.customers
    # Profiles first and flushed, so in each topic they precede the customer's other events.
    produce_all(producer, ((topic[c], k, v) for c, k, v in workload.messages[:profiles]))
    producer.flush(60)
    produce_all(producer, ((topic[c], k, v) for c, k, v in workload.messages[profiles:]))
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"preload: {remaining} events not delivered within 120 s")
    return workload.events / (time.monotonic() - started)
