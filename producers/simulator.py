"""Channel simulators for the demo: the stories (S1, S5, one customer across identifiers,
S2...), plus background traffic.

Story customers have readable ids (``alice-s1-<run>``, ``maria-s5-<run>``); background
customers are ``bg-<n>``. One simulated backend has a bug now and then, so the
demo shows dead letters too.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import Producer

from producers.config import ProducerTarget
from producers.sdk import PRODUCER_CONFIG, TouchpointProducer
from schemas import identity_key

#: Story customers get this run's tag, so a second demo against the same stack plays the
#: stories afresh instead of hitting the first run's cooldowns and dedup.
RUN_TAG = os.environ.get("OMNI_DEMO_RUN") or uuid.uuid4().hex[:4]


def story_customer(name: str) -> str:
    return f"{name}-{RUN_TAG}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def make_event(
    customer_id: str, channel: str, type_: str, payload: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "occurred_at": now_iso(),
        "channel": channel,
        "customer_id": customer_id,
        "payload": payload,
        **extra,
    }


def story_s1(customer: str = story_customer("alice-s1")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S1: overdraft accepted in the app, honoured at the ATM, visible to the branch."""
    yield (
        "profile",
        make_event(
            customer, "crm", "profile.updated", {"home_country": "GB", "preferred_channel": "push"}
        ),
    )
    yield (
        "accepts a 500 GBP overdraft in the app",
        make_event(
            customer,
            "mobile",
            "offer.accepted",
            {
                "offer_id": "OD-2026-11",
                "offer_type": "overdraft",
                "limit": 500,
                "currency": "GBP",
                "valid_hours": 72,
            },
            device={"id": "iphone-7f3a", "kind": "phone"},
            journey_stage="purchase",
        ),
    )
    yield (
        "withdraws cash at an ATM",
        make_event(
            customer,
            "atm",
            "atm.withdrawal",
            {
                "amount": 400,
                "currency": "GBP",
                "country": "GB",
                "atm_id": "ATM-LDN-042",
                "location_type": "street",
            },
        ),
    )
    yield (
        "walks into a branch: the advisor gets her history",
        make_event(customer, "branch", "branch.visit", {"branch_id": "LDN-CITY-1"}),
    )


def story_s5(customer: str = story_customer("maria-s5")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S5: a phone seen in a new country gets a roaming offer, once per country."""

    def attached(country: str) -> dict[str, Any]:
        return make_event(
            customer,
            "telco",
            "telco.network_attached",
            {"country": country, "network": f"{country}-MOBILE"},
        )

    yield (
        "profile",
        make_event(
            customer, "crm", "profile.updated", {"home_country": "ES", "preferred_channel": "sms"}
        ),
    )
    yield "phone on the home network", attached("ES")
    yield (
        "calls France",
        make_event(
            customer,
            "telco",
            "telco.call_started",
            {"destination_country": "FR", "call_type": "international"},
        ),
    )
    yield "lands in France: roaming offer", attached("FR")
    yield "still in France: nothing new", attached("FR")
    yield "home again", attached("ES")
    yield "back in France within 30 days: cooldown", attached("FR")
    yield (
        "withdraws SMS marketing consent on the web",
        make_event(
            customer,
            "web",
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": False},
        ),
    )
    yield "lands in Italy: no offer, no consent", attached("IT")


def story_s2(customer: str = story_customer("tom-s2")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S2: a second foreign-airport withdrawal (another ATM) brings the travel card offer."""

    def airport_atm(atm_id: str, country: str) -> dict[str, Any]:
        payload = {
            "amount": 100,
            "currency": "EUR",
            "country": country,
            "atm_id": atm_id,
            "location_type": "airport",
        }
        return make_event(customer, "atm", "atm.withdrawal", payload)

    yield (
        "profile",
        make_event(
            customer, "crm", "profile.updated", {"home_country": "GB", "preferred_channel": "email"}
        ),
    )
    yield "withdraws at Madrid airport", airport_atm("MAD-T4-07", "ES")
    yield "withdraws at Lisbon airport: travel card offer", airport_atm("LIS-T1-02", "PT")


def story_s3(
    married: str = story_customer("john-s3"), single: str = story_customer("ana-s3")
) -> Iterator[tuple[str, dict[str, Any]]]:
    """S3: a wedding campaign reaches the single customer, never the married father of two."""
    yield (
        "john's profile: married, 2 children",
        make_event(
            married,
            "crm",
            "profile.updated",
            {"marital_status": "married", "children": 2, "preferred_channel": "email"},
        ),
    )
    yield (
        "ana's profile: single",
        make_event(
            single,
            "crm",
            "profile.updated",
            {"marital_status": "single", "preferred_channel": "push"},
        ),
    )
    for customer in (married, single):
        caption = (
            "wedding campaign: suppressed (profile)"
            if customer == married
            else ("wedding campaign: sent on her preferred channel")
        )
        yield (
            caption,
            make_event(
                customer,
                "crm",
                "campaign.requested",
                {"campaign_id": "WED-2026", "offer_type": "wedding"},
            ),
        )


def story_s4(customer: str = story_customer("maria-s5")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S4: a long-distance call gets the plan offer by SMS before it connects."""
    yield (
        "starts an international call: plan offer by SMS",
        make_event(
            customer,
            "telco",
            "telco.call_started",
            {"destination_country": "US", "call_type": "international"},
        ),
    )


def story_s6(customer: str = story_customer("lee-s6")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S6/S9: one-tap responses are tracked; an unsubscribe holds on every channel."""
    yield "profile", make_event(customer, "crm", "profile.updated", {"home_country": "DE"})
    yield (
        "long-distance call: offer with accept/decline/unsubscribe",
        make_event(
            customer,
            "telco",
            "telco.call_started",
            {"destination_country": "CA", "call_type": "long_distance"},
        ),
    )
    yield (
        "taps unsubscribe on the SMS",
        make_event(
            customer,
            "sms",
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": False},
        ),
    )
    yield (
        "arrives in France: no offer (consent)",
        make_event(customer, "telco", "telco.network_attached", {"country": "FR"}),
    )


def story_s8(customer: str = story_customer("kim-s8")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S8: a cart loaded on the phone is on the laptop; unordered, it gets a nudge later."""
    items = [
        {"sku": "SHOES-42", "qty": 1, "unit_price": 89.0},
        {"sku": "SOCKS-3", "qty": 2, "unit_price": 6.5},
    ]
    yield (
        "loads a cart on the phone (omni:cart in Redis)",
        make_event(
            customer,
            "mobile",
            "cart.updated",
            {"cart_id": "CART-7", "items": items, "currency": "EUR"},
        ),
    )
    yield (
        "looks at it again on the laptop: no order, so a reminder follows",
        make_event(customer, "web", "page.viewed", {"url": "/cart", "category": "cart"}),
    )


def story_s7(customer: str = story_customer("joe-s7")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S7: a TV-ad coupon by SMS, redeemed in the store; a second redemption is refused."""
    yield (
        "claims the TV-ad coupon by SMS",
        make_event(
            customer,
            "sms",
            "coupon.issued",
            {"coupon_id": f"TV-CPN-{RUN_TAG}", "value": 10, "currency": "EUR", "valid_hours": 48},
        ),
    )
    yield (
        "redeems it at the till",
        make_event(
            customer,
            "pos",
            "coupon.redeemed",
            {"coupon_id": f"TV-CPN-{RUN_TAG}", "store_id": "STORE-3"},
        ),
    )
    yield (
        "tries again online: refused",
        make_event(customer, "web", "coupon.redeemed", {"coupon_id": f"TV-CPN-{RUN_TAG}"}),
    )


def story_s10(customer: str = story_customer("lia-s10")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S10: interactions build a lead score; crossing 50 hands the lead to sales."""
    for page in ("/loans", "/loans/rates", "/loans/calculator", "/mortgages", "/contact"):
        yield f"views {page}", make_event(customer, "web", "page.viewed", {"url": page})
    yield (
        "clicks the newsletter",
        make_event(customer, "email", "email.clicked", {"campaign_id": "NEWS-11"}),
    )
    yield (
        "loads a loan application cart: qualified lead",
        make_event(
            customer,
            "web",
            "cart.updated",
            {
                "cart_id": "LOAN-1",
                "items": [{"sku": "LOAN", "qty": 1, "unit_price": 0}],
                "currency": "EUR",
            },
        ),
    )


def story_s12(customer: str = story_customer("guest-s12")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S12: the chain remembers room type, requests and TV favourites at every property."""
    yield (
        "preferences on file",
        make_event(
            customer,
            "hotel",
            "profile.updated",
            {
                "room_type": "king_non_smoking",
                "requests": ["extra_pillows"],
                "tv_favourites": ["bbc_news"],
            },
        ),
    )
    yield (
        "checks in in Paris: the room is ready",
        make_event(customer, "hotel", "hotel.checked_in", {"property_id": "PAR-1"}),
    )


def story_s13(customer: str = story_customer("pat-s13")) -> Iterator[tuple[str, dict[str, Any]]]:
    """S13: booking, reminder, kiosk ticket, diagnosis, claim: each step knows the last."""
    soon = (datetime.now(UTC) + timedelta(days=1, seconds=30)).isoformat(timespec="seconds")
    yield (
        "books a cardiology appointment on the phone",
        make_event(
            customer,
            "mobile",
            "appointment.booked",
            {"appointment_id": "APT-1", "department": "cardiology", "scheduled_at": soon},
        ),
    )
    yield (
        "checks in at the kiosk: queue ticket on the phone",
        make_event(customer, "kiosk", "kiosk.checked_in", {"appointment_id": "APT-1"}),
    )
    yield (
        "diagnosis ready: email, then the insurance claim prompt",
        make_event(
            customer, "crm", "diagnosis.ready", {"appointment_id": "APT-1", "report_id": "REP-1"}
        ),
    )


def story_identity(
    customer: str = story_customer("nora-id"),
) -> Iterator[tuple[str, dict[str, Any]]]:
    """One customer across identifiers: the telco knows her phone, the web her laptop."""
    suffix = str(zlib.crc32(customer.encode()) % 10**6).zfill(6)
    phone, laptop = f"+4477009{suffix}", f"laptop-{customer}"

    def identified(channel: str, type_: str, payload: dict[str, Any], **ids: str) -> dict[str, Any]:
        event = make_event(customer, channel, type_, payload, identifiers=ids)
        del event["customer_id"]  # the channel does not know who she is
        return event

    yield (
        "the bank's profile names her phone number",
        make_event(
            customer, "crm", "profile.updated", {"home_country": "GB"},
            identifiers={"msisdn": phone},
        ),
    )  # fmt: skip
    lines = [{"sku": "BOOTS-38", "qty": 1, "unit_price": 89.0}]
    yield (
        "an anonymous visitor fills a cart on a laptop",
        identified("web", "cart.updated", {"cart_id": "CART-N", "items": lines,
                                           "currency": "GBP"}, device_id=laptop),
    )  # fmt: skip
    yield (
        "the network sees only her phone, in Portugal: roaming offer",
        identified("telco", "telco.network_attached", {"country": "PT", "network": "PT-MOBILE"},
                   msisdn=phone),
    )  # fmt: skip
    yield (
        "she logs in on the laptop: the cart is hers",
        make_event(customer, "web", "page.viewed", {"url": "/account"},
                   identifiers={"device_id": laptop}),
    )  # fmt: skip


STORIES = (
    story_s1,
    story_s5,
    story_identity,
    story_s2,
    story_s3,
    story_s4,
    story_s6,
    story_s8,
    story_s7,
    story_s10,
    story_s12,
    story_s13,
)

BACKGROUND_CHANNELS = ("mobile", "web", "atm", "telco", "crm")
COUNTRIES = ("DE", "FR", "ES", "IT", "NL", "PT", "GB", "US")


def background_event(rng: random.Random, customers: int) -> dict[str, Any]:
    customer = f"bg-{rng.randrange(customers)}"
    kind = rng.random()
    if kind < 0.4:
        return make_event(
            customer, "telco", "telco.network_attached", {"country": rng.choice(COUNTRIES)}
        )
    if kind < 0.6:
        return make_event(
            customer,
            "atm",
            "atm.withdrawal",
            {
                "amount": rng.randrange(20, 400),
                "currency": "EUR",
                "country": rng.choice(COUNTRIES),
                "atm_id": f"ATM-{rng.randrange(1000)}",
                "location_type": rng.choice(("airport", "street", "mall", "branch")),
            },
        )
    if kind < 0.8:
        return make_event(
            customer,
            rng.choice(("crm", "web")),
            "profile.updated",
            {"home_country": rng.choice(COUNTRIES)},
        )
    if kind < 0.9:
        return make_event(
            customer,
            "mobile",
            "offer.accepted",
            {
                "offer_id": f"OD-{rng.randrange(10**6)}",
                "offer_type": "overdraft",
                "limit": rng.choice((100, 250, 500)),
                "currency": "EUR",
            },
        )
    return make_event(
        customer,
        rng.choice(BACKGROUND_CHANNELS),
        "consent.updated",
        {
            "channel": rng.choice(("sms", "email", "push")),
            "purpose": "marketing",
            "granted": rng.random() < 0.7,
        },
    )


def buggy_backend_messages(settings: ProducerTarget) -> list[tuple[str, bytes | None, bytes]]:
    """What a backend with bugs sends: each lands on the dead-letter topic with a reason."""
    good = make_event("bug-1", "web", "profile.updated", {"language": "en"})
    return [
        (settings.touchpoint_topic("web"), b"bug-1", b"{not json"),
        (
            settings.touchpoint_topic("web"),
            b"bug-1",
            orjson.dumps({**good, "occurred_at": "yesterday"}),
        ),
        (settings.touchpoint_topic("mobile"), b"bug-1", orjson.dumps(good)),  # channel mismatch
        (settings.touchpoint_topic("web"), b"someone-else", orjson.dumps(good)),  # key mismatch
    ]


def run_simulation(
    settings: ProducerTarget,
    *,
    customers: int = 200,
    rate: float = 20.0,
    seconds: float = 0.0,
    story_pause: float = 1.5,
    printer: Any = print,
    stop: threading.Event | None = None,
) -> None:
    """Play the stories, then background traffic until ``seconds`` pass (0 = forever)
    or ``stop`` is set; the producer is flushed and closed either way."""
    stop = stop or threading.Event()
    rng = random.Random(7)
    with TouchpointProducer(settings) as producer:
        for story in STORIES:
            for caption, event in story():
                if stop.is_set():
                    return
                producer.publish(event)
                producer.flush()
                who = event.get("customer_id") or identity_key(event["identifiers"])
                printer(f"{who}: {caption}")
                time.sleep(story_pause)
        raw = Producer({**settings.kafka_client_config(), **PRODUCER_CONFIG})
        for topic, key, value in buggy_backend_messages(settings):
            raw.produce(topic, value, key)
        raw.flush(10)
        printer("a buggy backend sent 4 bad messages")
        started = time.monotonic()
        interval = 1.0 / rate if rate > 0 else 1.0
        while (seconds <= 0 or time.monotonic() - started < seconds) and not stop.is_set():
            producer.publish(background_event(rng, customers))
            time.sleep(interval)
