"""Validation of touchpoint events and output records against the contract.

:class:`EventValidator` compiles every schema once, each at its newest version.
The happy path (a valid event) parses the value once with orjson and runs two
fastjsonschema functions (envelope, then the payload of its type); jsonschema
is only used when fastjsonschema rejects, to collect *all* errors and explain
each one (:mod:`schemas.messages`).

Both engines get the same ``date-time`` check (:mod:`schemas.formats`) and the
same regex semantics (ECMA 262 ``$`` = end of input, as fastjsonschema does and
as every other language's validator does; Python's ``re`` would also accept a
trailing newline), so they accept exactly the same documents.

After the schemas come the rules JSON Schema is not the place for: a ``customer_id``
starting with ``anon:`` is reserved (the pipeline's anonymous profiles), a
``schema_violation``. Then the bounds JSON Schema cannot express (:mod:`schemas.bounds`):
the key's size, ``occurred_at`` against the clock (``future_event``: at most
``max_future_skew`` seconds ahead of ``now``) and every date against 2000-01-01
and ``occurred_at`` (``date_out_of_range``). ``now`` is the validator's ``clock``
(``time.time`` unless given) or the ``now`` argument of :meth:`EventValidator.check`,
so tests pin it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft7Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from schemas.bounds import (
    DEFAULT_MAX_FUTURE_SKEW_SECONDS,
    EARLIEST_TIME,
    EARLIEST_TIME_TEXT,
    MAX_DATE_AHEAD_SECONDS,
    MAX_DATE_AHEAD_TEXT,
    MAX_KEY_BYTES,
)
from schemas.formats import is_rfc3339_datetime
from schemas.identity import IDENTIFIER_TYPES, identity_key
from schemas.messages import render, show
from schemas.registry import (
    ENVELOPE,
    EVENT_TYPES,
    IDENTIFIED_ENVELOPE,
    KNOWN_EVENT_TYPES,
    RECORD_KINDS,
    RESERVED_CUSTOMER_ID_PREFIX,
    VENDOR,
    load_schema,
    schema_versions,
)

# --- reason codes (the dead-letter ``reason``) ----------------------------
TOO_LARGE = "too_large"
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_TYPE = "unknown_type"
SCHEMA_VIOLATION = "schema_violation"
CHANNEL_MISMATCH = "channel_mismatch"
MISSING_KEY = "missing_key"
KEY_MISMATCH = "key_mismatch"
# deadletter 1-0-1 added these three.
KEY_TOO_LARGE = "key_too_large"
FUTURE_EVENT = "future_event"
DATE_OUT_OF_RANGE = "date_out_of_range"
PROCESSING_ERROR = "processing_error"
# deadletter 1-0-2 added this one: neither customer_id nor identifiers.
UNIDENTIFIED = "unidentified"
#: What :meth:`EventValidator.check` can answer, in the order it checks (an ancient
#: ``occurred_at`` is ``date_out_of_range`` before the clock is asked).
CHECK_REASONS: tuple[str, ...] = (
    TOO_LARGE,
    KEY_TOO_LARGE,
    NOT_JSON,
    NOT_AN_OBJECT,
    UNKNOWN_TYPE,
    SCHEMA_VIOLATION,
    UNIDENTIFIED,
    CHANNEL_MISMATCH,
    MISSING_KEY,
    KEY_MISMATCH,
    FUTURE_EVENT,
    DATE_OUT_OF_RANGE,
)
#: Every dead-letter reason: the check reasons and the worker's own failure.
REJECTION_REASONS: tuple[str, ...] = (*CHECK_REASONS, PROCESSING_ERROR)

RESERVED_ID_ERROR = (
    f"customer_id: ids starting with {RESERVED_CUSTOMER_ID_PREFIX!r} are reserved for anonymous "
    f"profiles (the pipeline names them {RESERVED_CUSTOMER_ID_PREFIX}<type>:<value>) — use "
    "another id"
)

UNIDENTIFIED_ERROR = (
    "customer_id/identifiers: the event names no customer — set customer_id, or identifiers "
    "(msisdn, email, device_id, card_token, loyalty_id) when the channel does not know the "
    "customer id"
)
#: How the key of an event without customer_id is built, for the key messages.
IDENTITY_KEY_RULE = (
    f"<type>:<value> of the first identifier present in the order {', '.join(IDENTIFIER_TYPES)}"
)

DEFAULT_MAX_BYTES = 64 * 1024
#: At most this many errors per rejection (then one line says how many more).
MAX_ERRORS = 50


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message breaks the contract: a reason code and one sentence per problem."""

    reason: str
    errors: tuple[str, ...]


# --- the jsonschema side ---------------------------------------------------
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


@cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(_UNESCAPED_DOLLAR.sub(r"\\Z", pattern))


def _pattern(
    validator: Validator, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


#: Draft 7 with ECMA 262 ``$`` in ``pattern`` (the same as fastjsonschema).
ContractValidator = validators.extend(Draft7Validator, {"pattern": _pattern})


def format_checker() -> FormatChecker:
    """jsonschema's checker for the contract: format assertion on, strict ``date-time``."""
    checker = FormatChecker(formats=())
    checker.checks("date-time")(is_rfc3339_datetime)
    return checker


FAST_FORMATS: dict[str, Callable[[str], bool]] = {"date-time": is_rfc3339_datetime}


class CompiledSchema:
    """One schema version, compiled for both engines."""

    __slots__ = ("fast", "name", "schema", "slow", "version")

    def __init__(self, name: str, version: str, schema: dict[str, Any]) -> None:
        self.name = name
        self.version = version
        self.schema = schema
        ContractValidator.check_schema(schema)
        self.fast: Callable[[Any], Any] = fastjsonschema.compile(
            schema, formats=FAST_FORMATS, use_default=False
        )
        self.slow = ContractValidator(schema, format_checker=format_checker())

    @classmethod
    def newest(cls, name: str, vendor: str = VENDOR) -> CompiledSchema:
        version = schema_versions(vendor, name)[-1]
        return cls(name, version, load_schema(vendor, name, version))

    def is_valid(self, instance: Any) -> bool:
        """fastjsonschema's verdict."""
        try:
            self.fast(instance)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    def explain(
        self, instance: Any, prefix: str = "", root: str = "value"
    ) -> list[tuple[str, str]]:
        """jsonschema's errors as ``(field path, message)``; empty when valid."""
        return render(self.slow.iter_errors(instance), prefix, root)

    def errors(self, instance: Any, prefix: str = "", root: str = "value") -> list[str]:
        """Fast verdict, then the explanation when invalid; empty list when valid."""
        if self.is_valid(instance):
            return []
        explained = [message for _, message in self.explain(instance, prefix, root)]
        return explained or [self._fast_message(instance, prefix, root)]

    def _fast_message(self, instance: Any, prefix: str, root: str) -> str:
        # Only if the engines ever disagree (tests make sure they do not): still say why.
        try:
            self.fast(instance)
        except fastjsonschema.JsonSchemaValueException as exc:
            where = (exc.name or "data").replace("data", prefix or root, 1)
            return f"{where}: {exc.message} (schema {self.name} {self.version})"
        return f"{prefix or root}: rejected by schema {self.name} {self.version}"


def _capped(errors: list[str]) -> tuple[str, ...]:
    if len(errors) <= MAX_ERRORS:
        return tuple(errors)
    more = len(errors) - MAX_ERRORS
    return (
        *errors[:MAX_ERRORS],
        f"value: {more} more errors not shown — fix the ones above and validate again",
    )


class EventValidator:
    """The contract check of the ingest agent and the producer SDK. Build once, share.

    ``check`` is thread-safe (compiled validators hold no state). ``clock`` gives
    "now" (epoch seconds) for the ``future_event`` check; tests pin it.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.envelope = CompiledSchema.newest(ENVELOPE)
        #: The envelope of an event without customer_id (named by its identifiers).
        self.identified = CompiledSchema.newest(IDENTIFIED_ENVELOPE)
        self.payloads: dict[str, CompiledSchema] = {
            event_type: CompiledSchema.newest(spec.schema)
            for event_type, spec in EVENT_TYPES.items()
        }
        self.records: dict[str, CompiledSchema] = {
            kind: CompiledSchema.newest(kind) for kind in RECORD_KINDS
        }
        for envelope in (self.envelope, self.identified):
            envelope_types = envelope.schema["properties"]["type"]["enum"]
            if sorted(envelope_types) != sorted(KNOWN_EVENT_TYPES):
                raise RuntimeError(
                    f"the {envelope.name} schema's type enum {envelope_types} differs from the "
                    f"registry {list(KNOWN_EVENT_TYPES)}"
                )
        # type -> (payload check, allowed channels, customer_id required): the hot path's
        # only lookup.
        self._fast: dict[str, tuple[Callable[[Any], Any], tuple[str, ...] | None, bool]] = {
            event_type: (self.payloads[event_type].fast, spec.channels, spec.customer_id_required)
            for event_type, spec in EVENT_TYPES.items()
        }
        self._fast_envelope = self.envelope.fast
        self._fast_identified = self.identified.fast
        # type -> top-level payload fields that are date-times (scheduled_at): bounded too.
        self._dates: dict[str, tuple[str, ...]] = {}
        for event_type, compiled in self.payloads.items():
            dates = _date_time_fields(compiled.schema)
            if dates:
                self._dates[event_type] = dates

    @property
    def schemas(self) -> dict[str, CompiledSchema]:
        """Every compiled schema by name (envelope, payloads, records)."""
        out = {self.envelope.name: self.envelope, self.identified.name: self.identified}
        out.update({compiled.name: compiled for compiled in self.payloads.values()})
        out.update(self.records)
        return out

    def check(
        self,
        channel: str,
        key: bytes | None,
        value: bytes | None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        now: float | None = None,
        max_future_skew: float = DEFAULT_MAX_FUTURE_SKEW_SECONDS,
    ) -> dict[str, Any] | Rejection:
        """The parsed event when ``value`` on ``touchpoint.<channel>`` with ``key`` is
        valid, else the :class:`Rejection` (reason code and errors) for the dead letter.

        ``now`` (epoch seconds; default: the validator's clock) and ``max_future_skew``
        decide ``future_event``.
        """
        if value is not None and len(value) > max_bytes:
            return Rejection(
                TOO_LARGE,
                (
                    f"value: is {len(value)} bytes, more than the limit of {max_bytes} — send "
                    f"events of at most {max_bytes} bytes "
                    "(split large lists across several events)",
                ),
            )
        if key is not None and len(key) > MAX_KEY_BYTES:
            return Rejection(
                KEY_TOO_LARGE,
                (
                    f"key: is {len(key)} bytes, more than the limit of {MAX_KEY_BYTES} — set "
                    "the Kafka message key to the customer_id (1-128 characters, UTF-8); this "
                    "dead letter is keyed by the key's sha256 instead",
                ),
            )
        if not value:
            return Rejection(
                NOT_JSON,
                (
                    "value: is empty — send one JSON object (UTF-8) per message; a Kafka "
                    "tombstone (null value) is not an event",
                ),
            )
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejection(NOT_JSON, (_not_json(value, exc),))
        if type(event) is not dict:
            return Rejection(
                NOT_AN_OBJECT,
                (
                    f"value: is {_json_kind(event)} — send one JSON object "
                    "(the event envelope) per "
                    "message",
                ),
            )
        # No customer_id member: the event names its customer by identifiers alone.
        identified = "customer_id" not in event
        event_type = event.get("type")
        fast = self._fast.get(event_type) if type(event_type) is str else None
        if fast is None:
            return self._explain(event)
        payload_check, channels, customer_id_required = fast
        if identified and (customer_id_required or "identifiers" not in event):
            return self._explain(event)
        try:
            (self._fast_identified if identified else self._fast_envelope)(event)
            payload_check(event["payload"])
        except fastjsonschema.JsonSchemaValueException:
            return self._explain(event)
        if not identified and event["customer_id"].startswith(RESERVED_CUSTOMER_ID_PREFIX):
            return Rejection(SCHEMA_VIOLATION, (RESERVED_ID_ERROR,))
        if event["channel"] != channel:
            return Rejection(
                CHANNEL_MISMATCH,
                (
                    f"channel: {show(event['channel'])} does not match the topic's channel "
                    f"{show(channel)} — publish the event to touchpoint.{event['channel']}, or set "
                    f"channel to {show(channel)} if this backend is that channel",
                ),
            )
        if channels is not None and channel not in channels:
            allowed = ", ".join(channels)
            return Rejection(
                CHANNEL_MISMATCH,
                (
                    f"type: {event_type} events may only be sent by "
                    f"channel{'s' * (len(channels) > 1)} "
                    f"{allowed}, not by {channel} — publish it from the {allowed} backend to "
                    f"touchpoint.{channels[0]}",
                ),
            )
        if identified:
            return self._check_identity_key(event, key, now, max_future_skew)
        if not key:
            return Rejection(
                MISSING_KEY,
                (
                    f"key: the message has no key — set the Kafka message key to the customer_id "
                    f"({show(event['customer_id'])}, UTF-8) so all of a customer's events share a "
                    "partition and stay in order",
                ),
            )
        if key != event["customer_id"].encode():
            return Rejection(
                KEY_MISMATCH,
                (
                    f"key: {_shown_key(key)} does not equal customer_id "
                    f"{show(event['customer_id'])} — set the "
                    "Kafka message key to the customer_id, encoded as UTF-8",
                ),
            )
        return self._check_dates(event, self._clock() if now is None else now, max_future_skew)

    def _check_identity_key(
        self, event: dict[str, Any], key: bytes | None, now: float | None, max_future_skew: float
    ) -> dict[str, Any] | Rejection:
        """The key rule of an event without customer_id, then its dates."""
        expected = identity_key(event["identifiers"])
        if not key:
            return Rejection(
                MISSING_KEY,
                (
                    f"key: the message has no key — set the Kafka message key to {show(expected)} "
                    f"(UTF-8): an event without customer_id is keyed by {IDENTITY_KEY_RULE}, so "
                    "all of a customer's events share a partition and stay in order",
                ),
            )
        if key != expected.encode():
            return Rejection(
                KEY_MISMATCH,
                (
                    f"key: {_shown_key(key)} does not equal {show(expected)} — an event without "
                    f"customer_id is keyed by {IDENTITY_KEY_RULE}; set the Kafka message key to "
                    f"{show(expected)}, encoded as UTF-8",
                ),
            )
        return self._check_dates(event, self._clock() if now is None else now, max_future_skew)

    def _check_dates(
        self, event: dict[str, Any], now: float, max_future_skew: float
    ) -> dict[str, Any] | Rejection:
        """The event when its dates are within bounds, else why not (schemas.bounds)."""
        text = event["occurred_at"]
        occurred = _epoch(text)
        if occurred < EARLIEST_TIME:
            return Rejection(
                DATE_OUT_OF_RANGE,
                (
                    f"occurred_at: {show(text)} is before {EARLIEST_TIME_TEXT}, the earliest "
                    "time the pipeline accepts — send the time the event really happened "
                    "(a date this old comes from a default value or a clock that was not set)",
                ),
            )
        if occurred > now + max_future_skew:
            return Rejection(
                FUTURE_EVENT,
                (
                    f"occurred_at: {show(text)} is {_ahead(occurred - now)} ahead of the "
                    f"pipeline's clock ({_utc(now)}), more than the {max_future_skew:g} s "
                    "allowed (OMNI_MAX_FUTURE_SKEW_SECONDS) — send the time the event happened, "
                    "from a clock kept in sync (NTP); events cannot come from the future",
                ),
            )
        for name in self._dates.get(event["type"], ()):
            value = event["payload"].get(name)
            if value is None:
                continue
            at = _epoch(value)
            if at < EARLIEST_TIME:
                problem = f"is before {EARLIEST_TIME_TEXT}, the earliest date the pipeline accepts"
            elif at > occurred + MAX_DATE_AHEAD_SECONDS:
                problem = f"is more than {MAX_DATE_AHEAD_TEXT} after occurred_at"
            else:
                continue
            return Rejection(
                DATE_OUT_OF_RANGE,
                (
                    f"payload.{name}: {show(value)} {problem} — send the real date "
                    f"(from {EARLIEST_TIME_TEXT} to {MAX_DATE_AHEAD_TEXT} after occurred_at)",
                ),
            )
        return event

    def _explain(self, event: dict[str, Any]) -> Rejection:
        """The slow path: every error in envelope and payload, and the reason code."""
        identified = "customer_id" not in event
        # Neither customer_id nor identifiers: explained against the envelope with customer_id.
        unnamed = identified and "identifiers" not in event
        envelope = self.identified if identified and not unnamed else self.envelope
        envelope_errors = envelope.explain(event)
        type_errors = [message for path, message in envelope_errors if path == "type"]
        other = [
            message
            for path, message in envelope_errors
            if path != "type" and not (unnamed and path == "customer_id")
        ]
        event_type = event.get("type")
        payload = event.get("payload")
        payload_schema = self.payloads.get(event_type) if type(event_type) is str else None
        if payload_schema is not None and isinstance(payload, dict):
            other += [message for _, message in payload_schema.explain(payload, "payload")]
        if type_errors:
            # One clear sentence about the type, whatever jsonschema said (enum, type, length).
            if "type" not in event:
                type_errors = [
                    "type: required field is missing — set it to one of the known "
                    f"event types: {', '.join(KNOWN_EVENT_TYPES)}"
                ]
            else:
                type_errors = [
                    f"type: {show(event_type)} is not a known event type — use one "
                    f"of: {', '.join(KNOWN_EVENT_TYPES)} (a new type needs its schema "
                    "published first)"
                ]
            if not other and not unnamed:  # unnamed: the missing customer_id is an error too
                return Rejection(UNKNOWN_TYPE, tuple(type_errors))
        customer_id = event.get("customer_id")
        if type(customer_id) is str and customer_id.startswith(RESERVED_CUSTOMER_ID_PREFIX):
            other.append(RESERVED_ID_ERROR)
        if unnamed and not type_errors and not other:
            # Nothing else wrong: say that the event names nobody, in one sentence.
            return Rejection(UNIDENTIFIED, (UNIDENTIFIED_ERROR,))
        if unnamed:
            other.append(
                "customer_id: required field is missing — set customer_id, or identifiers "
                "(msisdn, email, device_id, card_token, loyalty_id) when the channel does not "
                "know the customer id"
            )
        spec = EVENT_TYPES.get(event_type) if type(event_type) is str else None
        if identified and not unnamed and spec is not None and spec.customer_id_required:
            whom = (
                "the customer to forget"
                if event_type == "privacy.erasure_requested"
                else "the customer the identifiers are linked to or unlinked from"
            )
            other.append(
                f"customer_id: required field is missing — {event_type} events name their "
                f"customer by customer_id ({whom}), identifiers alone are not enough: set "
                "customer_id and key the message by it"
            )
        errors = type_errors + other
        if not errors:  # the engines disagree (a bug); still reject, with fastjsonschema's word
            errors = envelope.errors(event)
            if payload_schema is not None and not errors:
                errors = payload_schema.errors(payload, "payload")
        return Rejection(SCHEMA_VIOLATION, _capped(sorted(errors, key=_path_of)))

    def record_errors(self, kind: str, record: Any) -> list[str]:
        """Errors of an output record (``trigger``, ``decision``, ``deadletter``, ``identity``)."""
        compiled = self.records.get(kind)
        if compiled is None:
            raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(RECORD_KINDS)}")
        return compiled.errors(record, root=kind)


def _date_time_fields(schema: dict[str, Any]) -> tuple[str, ...]:
    """The top-level properties of a payload schema that are ``date-time`` strings."""
    return tuple(
        name
        for name, sub in schema.get("properties", {}).items()
        if isinstance(sub, dict) and sub.get("format") == "date-time"
    )


def _epoch(text: str) -> float:
    """A contract date-time (already valid: the schemas checked it) as epoch seconds.

    ``datetime.timestamp`` works through a timedelta, so it never overflows, even for
    9999-12-31T23:59:59-23:59.
    """
    return datetime.fromisoformat(text).timestamp()


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ahead(seconds: float) -> str:
    """A duration a person reads at a glance: 7 min, 3.5 h, 26,000 days."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def _not_json(value: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        bytes(value).decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"value: is not UTF-8 (byte 0x{value[bad.start]:02x} at offset {bad.start} "
            f"cannot be decoded) — encode the JSON as UTF-8, not Latin-1 or another "
            "code page"
        )
    if value[:3] == b"\xef\xbb\xbf":
        return "value: starts with a byte order mark — send UTF-8 JSON without a BOM"
    return (
        f"value: is not valid JSON ({exc}) — send one JSON object (no NaN or Infinity, "
        "double-quoted keys and strings, no trailing commas)"
    )


def _shown_key(key: bytes) -> str:
    try:
        return show(key.decode("utf-8"))
    except UnicodeDecodeError:
        return f"{key[:40]!r} (not UTF-8)"


def _path_of(message: str) -> str:
    return message.split(":", 1)[0]


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array, not an object"
    if isinstance(value, str):
        return "a JSON string, not an object"
    if value is None:
        return "JSON null, not an object"
    if isinstance(value, bool):
        return "a JSON boolean, not an object"
    return "a JSON number, not an object"


@cache
def default_validator() -> EventValidator:
    """One shared validator for :func:`validate_record` (built on first use)."""
    return EventValidator()


def validate_record(kind: str, record: Any) -> list[str]:
    """Errors of an output record against its schema (newest version); [] when valid.

    ``kind`` is ``trigger``, ``decision``, ``deadletter`` or ``identity``; ValueError otherwise.
    """
    return default_validator().record_errors(kind, record)
