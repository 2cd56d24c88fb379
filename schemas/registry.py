"""Where the schemas live, which versions exist, and which event types exist.

Schemas are laid out Iglu-style: ``iglu/<vendor>/<name>/jsonschema/<MODEL-REVISION-ADDITION>``
(files without extension). Versions are SchemaVer: compared as integer tuples,
so ``1-0-10`` is newer than ``1-0-9``.

The registry of event types (which payload schema, which channels may send it)
is Python, here, not a schema: it is routing, not shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

#: Root of the Iglu tree: ``SCHEMA_ROOT / vendor / name / "jsonschema" / version``.
SCHEMA_ROOT: Path = Path(__file__).parent / "iglu"
#: Root of the sample documents:
#:
#: * ``valid/<type>/*.json``: events (the message value; key = customer_id, topic =
#:   touchpoint.<channel>) that must pass;
#: * ``invalid/*.json``: ``{"channel", "key", "value", "reason", "field", "note"}`` with
#:   ``value`` the raw message as a string (null = no value), ``reason`` the expected
#:   code and ``field`` the field an error must name; optional ``value_hex`` (raw bytes
#:   that are not UTF-8) and ``max_bytes`` (a smaller size limit for that sample);
#: * ``records/valid/<kind>/*.json`` and ``records/invalid/<kind>/*.json``
#:   (``{"record", "field", "note"}``) for trigger, decision, deadletter and identity.
SAMPLES_ROOT: Path = Path(__file__).parent / "samples"
#: Our vendor in the Iglu tree.
VENDOR = "com.omnichannel"
FORMAT = "jsonschema"

SchemaVer = tuple[int, int, int]

_SCHEMAVER = re.compile(r"([1-9][0-9]*)-(0|[1-9][0-9]*)-(0|[1-9][0-9]*)", re.ASCII)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)


def parse_schemaver(version: str) -> SchemaVer:
    """``"1-0-2"`` -> ``(1, 0, 2)``; ValueError when it is not MODEL-REVISION-ADDITION."""
    match = _SCHEMAVER.fullmatch(version)
    if match is None:
        raise ValueError(f"{version!r} is not a SchemaVer (MODEL-REVISION-ADDITION, e.g. 1-0-0)")
    model, revision, addition = (int(part) for part in match.groups())
    return model, revision, addition


class SchemaKey(NamedTuple):
    """One schema file: ``iglu:<vendor>/<name>/jsonschema/<version>``."""

    vendor: str
    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"iglu:{self.vendor}/{self.name}/{FORMAT}/{self.version}"

    @property
    def path(self) -> Path:
        return SCHEMA_ROOT / self.vendor / self.name / FORMAT / self.version


def _check_name(kind: str, value: str) -> None:
    if not _SAFE_NAME.fullmatch(value):
        raise ValueError(f"{kind} {value!r} is not a valid Iglu {kind}")


def schema_versions(vendor: str, name: str) -> list[str]:
    """Every published version of a schema, oldest first (SchemaVer order)."""
    _check_name("vendor", vendor)
    _check_name("name", name)
    directory = SCHEMA_ROOT / vendor / name / FORMAT
    if not directory.is_dir():
        return []
    versions = [p.name for p in directory.iterdir() if p.is_file() and _SCHEMAVER.fullmatch(p.name)]
    return sorted(versions, key=parse_schemaver)


def load_schema(vendor: str, name: str, version: str | None = None) -> dict[str, Any]:
    """The schema document; the newest version when ``version`` is None.

    Returns a fresh dict on every call (callers may change it). Raises
    FileNotFoundError when no such schema (or version) is published.
    """
    if version is None:
        versions = schema_versions(vendor, name)
        if not versions:
            raise FileNotFoundError(
                f"no schema iglu:{vendor}/{name}/{FORMAT}/* under {SCHEMA_ROOT}"
            )
        version = versions[-1]
    else:
        _check_name("vendor", vendor)
        _check_name("name", name)
        parse_schemaver(version)
    path = SchemaKey(vendor, name, version).path
    if not path.is_file():
        raise FileNotFoundError(f"no schema {SchemaKey(vendor, name, version).uri} ({path})")
    document = orjson.loads(path.read_bytes())
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a JSON object")
    return document


def iter_schemas() -> Iterator[SchemaKey]:
    """Every schema file in the tree, sorted by vendor, name and SchemaVer."""
    for vendor_dir in sorted(p for p in SCHEMA_ROOT.iterdir() if p.is_dir()):
        for name_dir in sorted(p for p in vendor_dir.iterdir() if p.is_dir()):
            for version in schema_versions(vendor_dir.name, name_dir.name):
                yield SchemaKey(vendor_dir.name, name_dir.name, version)


class EventType(NamedTuple):
    """What the registry knows about one event type."""

    #: Name of the payload schema (``iglu:com.omnichannel/<schema>/jsonschema/*``).
    schema: str
    #: Touchpoint channels that may send it; None = any channel.
    channels: tuple[str, ...] | None
    #: True when the event must name its customer by ``customer_id``: identifiers
    #: alone (schema ``identified_event``) are refused with ``schema_violation``.
    customer_id_required: bool = False


#: type -> (payload schema name, channels allowed to send it or None for any).
EVENT_TYPES: dict[str, EventType] = {
    "profile.updated": EventType("profile_updated", None),
    "consent.updated": EventType("consent_updated", None),
    "offer.accepted": EventType("offer_accepted", None),
    "telco.network_attached": EventType("telco_network_attached", ("telco",)),
    "telco.call_started": EventType("telco_call_started", ("telco",)),
    "atm.withdrawal": EventType("atm_withdrawal", ("atm",)),
    "branch.visit": EventType("branch_visit", ("branch",)),
    "campaign.requested": EventType("campaign_requested", ("crm",)),
    "offer.declined": EventType("offer_declined", None),
    "cart.updated": EventType("cart_updated", ("mobile", "web")),
    "order.placed": EventType("order_placed", None),
    "coupon.issued": EventType("coupon_issued", ("tv", "sms")),
    "coupon.redeemed": EventType("coupon_redeemed", ("pos", "web", "mobile")),
    "page.viewed": EventType("page_viewed", ("web", "mobile")),
    "email.clicked": EventType("email_clicked", ("email",)),
    "hotel.checked_in": EventType("hotel_checked_in", ("hotel",)),
    "appointment.booked": EventType("appointment_booked", ("mobile", "web")),
    "kiosk.checked_in": EventType("kiosk_checked_in", ("kiosk",)),
    "diagnosis.ready": EventType("diagnosis_ready", ("crm",)),
    # Forgetting a customer (README "Erasure and retention"): the CRM asks, nobody else.
    # By customer id only: an erasure must name whom it forgets, not resolve a guess.
    "privacy.erasure_requested": EventType(
        "privacy_erasure_requested", ("crm",), customer_id_required=True
    ),
    # Identity stitching (README "Identifiers"): the CRM links the envelope's identifiers
    # to its customer_id (merge_from: and merges that customer in), or unlinks them.
    "identity.linked": EventType("identity_linked", ("crm",), customer_id_required=True),
    "identity.unlinked": EventType("identity_unlinked", ("crm",), customer_id_required=True),
}

KNOWN_EVENT_TYPES: tuple[str, ...] = tuple(EVENT_TYPES)

JOURNEY_STAGES: tuple[str, ...] = ("awareness", "consideration", "purchase", "service", "loyalty")

#: Name of the envelope schema.
ENVELOPE = "event"
#: Name of the envelope of an event without customer_id (named by its identifiers).
IDENTIFIED_ENVELOPE = "identified_event"
#: Customer ids starting with this are the pipeline's anonymous profiles
#: (``anon:<type>:<value>``): refused in events.
RESERVED_CUSTOMER_ID_PREFIX = "anon:"
#: Output records ``validate_record`` knows: kind = schema name (``identity``: the
#: records of ``identity.log``).
RECORD_KINDS: tuple[str, ...] = ("trigger", "decision", "deadletter", "identity")


def payload_schema_name(event_type: str) -> str:
    """The naming rule for payload schemas: ``telco.call_started`` -> ``telco_call_started``."""
    return event_type.replace(".", "_")
