"""Dead-letter records: what was wrong, where it came from, and the raw value.

A dead letter must always be producible, whatever the input: librdkafka refuses a
message over the broker's limit (``MSG_SIZE_TOO_LARGE``), and a refused dead
letter would stop its partition. So the record is bounded (:data:`MAX_RECORD_BYTES`,
errors cut, then ``raw`` shortened) and a key over
:data:`schemas.bounds.MAX_KEY_BYTES` is replaced by its hash (:func:`deadletter_key`).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from processors.domain.model import format_time
from schemas.bounds import MAX_KEY_BYTES

PROCESSING_ERROR = "processing_error"

#: A dead letter's value never exceeds this: a quarter of the broker's default
#: ``message.max.bytes`` (1 MiB), leaving room for the key, headers and batch overhead.
MAX_RECORD_BYTES = 256 * 1024
#: The schema's limit on the number of ``errors`` (deadletter 1-0-x).
MAX_ERRORS = 64
#: Errors are cut to this many characters (the schema allows 8192): a sentence, not a
#: payload dump.
ERROR_CHARS = 2000
_CUT = "…"


def deadletter_key(key: bytes | None) -> bytes | None:
    """The dead letter's Kafka key: the original key, or ``sha256:<hex>`` of a key over
    1 KiB (a megabyte key cannot be produced; its hash still groups repeats)."""
    if key is None or len(key) <= MAX_KEY_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_CUT)] + _CUT


def deadletter_record(
    reason: str,
    errors: list[str] | tuple[str, ...],
    topic: str,
    partition: int,
    offset: int,
    raw: bytes | None,
    raw_max_bytes: int,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> bytes:
    """One JSON record for ``touchpoint.deadletter`` (schema ``deadletter``), at most
    ``max_record_bytes`` long whatever the errors and the raw value are."""
    given = [str(error) for error in errors if error]
    kept = [_cut(error, ERROR_CHARS) for error in given[:MAX_ERRORS]]
    if len(given) > MAX_ERRORS:
        more = len(given) - MAX_ERRORS + 1
        kept[-1] = f"value: {more} more errors not shown — fix the ones above, then send again"
    if not kept:  # the schema wants at least one
        kept = [f"value: rejected ({reason}) — see the reason code in the README"]
    text = "" if raw is None else raw[: max(raw_max_bytes, 0)].decode("utf-8", errors="replace")
    record: dict[str, Any] = {
        "reason": reason,
        "errors": kept,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "raw": text,
        "received_at": format_time(time.time()),
    }
    encoded = orjson.dumps(record)
    # Rare (a huge OMNI_DEADLETTER_RAW_MAX_BYTES, or raw full of bytes JSON escapes
    # six-fold): shorten raw, then the longest error, then drop errors, until it fits.
    while len(encoded) > max_record_bytes:
        raw_text: str = record["raw"]
        longest = max(range(len(kept)), key=lambda i: len(kept[i]))
        if raw_text:
            excess = len(encoded) - max_record_bytes
            record["raw"] = raw_text[: max(0, len(raw_text) - excess - len(raw_text) // 8)]
        elif len(kept[longest]) > 200:
            kept[longest] = _cut(kept[longest], len(kept[longest]) // 2)
        elif len(kept) > 1:
            kept.pop()
        else:  # one short error and nothing else left to cut: it fits any sane limit
            break
        encoded = orjson.dumps(record)
    return encoded
