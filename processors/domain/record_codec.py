"""The customer record's bytes: one changelog record per customer, state and timeline.

A customer used to be two records, her state (``customers``, orjson JSON, ~2.4 KB on
the bench workload) and her timeline (``timelines``, ~2.4 KB): two records to write
per batch and to restore per customer, 4.8 KB. Now her ``customers`` record holds
both, compressed (about 1.5 KB; ``bench/results/state-size.md``), so recovery reads
half the records and a third of the bytes.

Formats, told apart by the first byte:

``{`` (legacy)
    The state as orjson JSON, as written before this module. Her timeline is then in
    the ``timelines`` table (:attr:`CustomerRecord.timeline` is None). Still written
    in one rare case: when the compressed record would not fit ``OMNI_MAX_STATE_BYTES``
    (the caps bound the JSON state, so this form always fits).
``0x01`` (v1)
    ``0x01``, the earliest timer due time (little-endian float64; 0.0 = no timer),
    then one zstd frame (content size in its header) of: the state JSON's length
    (little-endian uint32), the state JSON, the timeline JSON (a list, newest first).

The due time is outside the frame so that the timer index is rebuilt after every
rebalance without decompressing a million records. zstd at level 1 without a
dictionary: against level 3 it costs about 2 % in size and is faster; a trained
dictionary would shrink records further but would have to be kept for as long as
any record made with it exists.

Pure functions: no tables, no Kafka. Anything that is not a record raises
:class:`RecordDecodeError` (a ``ValueError``), which the customer step handles like
any failing event: dead-lettered, her state untouched.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any

import orjson
import zstandard

from processors.domain.timers import next_due

LEGACY = ord("{")
V1 = 0x01
_HEADER = struct.Struct("<Bd")
_LENGTH = struct.Struct("<I")
#: zstd level: see the module docstring.
LEVEL = 1
#: A frame that claims more is not ours (the largest real payload is the 512 KiB
#: highest OMNI_MAX_STATE_BYTES plus a 200-entry timeline of at most ~420 KB):
#: refused before zstd allocates what a corrupt header asks for.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
#: A legacy record's timer list when empty: such records are skipped unparsed.
_NO_TIMERS = b'"timers":[]'


class RecordDecodeError(ValueError):
    """The bytes are not a customer record of any known format."""


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    #: The CustomerState as orjson JSON.
    state: bytes
    #: The timeline as a JSON list; None: a legacy record, her timeline (if any) is in
    #: the ``timelines`` table.
    timeline: bytes | None


class _Codecs(threading.local):
    # zstandard's (de)compressors must not be shared between threads: one per thread.
    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=False)
        self.decompressor = zstandard.ZstdDecompressor()


_codecs = _Codecs()


def encode_record(state: bytes, timeline: bytes, due: float | None) -> bytes:
    """The v1 record of ``state`` (JSON) and ``timeline`` (JSON list), whose earliest
    timer is due at ``due`` (None: no timer). The caller checks the size limit."""
    payload = b"".join((_LENGTH.pack(len(state)), state, timeline))
    return _HEADER.pack(V1, due or 0.0) + _codecs.compressor.compress(payload)


def decode_record(value: bytes) -> CustomerRecord:
    """The state and timeline JSON of a stored record (either format)."""
    if not value:
        raise RecordDecodeError("empty customer record")
    kind = value[0]
    if kind == LEGACY:
        return CustomerRecord(value, None)
    if kind != V1:
        raise RecordDecodeError(f"unknown customer record format byte 0x{kind:02x}")
    frame = memoryview(value)[_HEADER.size :]
    try:
        size = zstandard.frame_content_size(frame)
        if not 0 <= size <= MAX_PAYLOAD_BYTES:
            raise RecordDecodeError(f"customer record: bad payload size {size}")
        payload = _codecs.decompressor.decompress(frame)
    except zstandard.ZstdError as exc:
        raise RecordDecodeError(f"customer record: corrupt zstd frame ({exc})") from exc
    if len(payload) < _LENGTH.size:
        raise RecordDecodeError("customer record: truncated payload")
    (length,) = _LENGTH.unpack_from(payload)
    end = _LENGTH.size + length
    if end >= len(payload):  # a state and a non-empty timeline: "[]" at least
        raise RecordDecodeError("customer record: state length past the payload")
    return CustomerRecord(payload[_LENGTH.size : end], payload[end:])


def record_next_due(value: bytes) -> float | None:
    """The earliest timer due time of a stored record, read without decompressing it."""
    if not value:
        raise RecordDecodeError("empty customer record")
    if value[0] == V1:
        if len(value) < _HEADER.size:
            raise RecordDecodeError("customer record: truncated header")
        _, due = _HEADER.unpack_from(value)
        return float(due) if due else None
    if value[0] != LEGACY:
        raise RecordDecodeError(f"unknown customer record format byte 0x{value[0]:02x}")
    if _NO_TIMERS in value:
        return None
    timers: list[dict[str, Any]] = orjson.loads(value).get("timers") or []
    return next_due(timers)
