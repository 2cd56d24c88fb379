"""Dead-letter records: what was wrong, where it came from, and the raw value."""

from __future__ import annotations

import time
from typing import Any

import orjson

from processors.domain.model import format_time

PROCESSING_ERROR = "processing_error"


def deadletter_record(
    reason: str,
    errors: list[str] | tuple[str, ...],
    topic: str,
    partition: int,
    offset: int,
    raw: bytes | None,
    raw_max_bytes: int,
) -> bytes:
    """One JSON record for ``touchpoint.deadletter`` (schema ``deadletter``)."""
    text = "" if raw is None else raw[:raw_max_bytes].decode("utf-8", errors="replace")
    record: dict[str, Any] = {
        "reason": reason,
        "errors": list(errors),
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "raw": text,
        "received_at": format_time(time.time()),
    }
    return orjson.dumps(record)
