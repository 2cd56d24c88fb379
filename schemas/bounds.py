"""Bounds the contract puts on times and keys, beyond what JSON Schema can express.

JSON Schema cannot compare a date with the clock or with another field, so
:class:`schemas.validate.EventValidator` checks these after the schemas, and the
worker's domain clamps to the same bounds (events forwarded before a bound
existed). Together with the schemas' bounds on durations (``valid_hours``: at
most 720 or 8760 hours) they keep every time the pipeline computes within
2000-01-01 .. a few years from now: no date arithmetic can overflow (year 10000)
or go negative (a ``PXAT`` before 1970).
"""

from __future__ import annotations

#: 2000-01-01T00:00:00Z: the earliest ``occurred_at`` (or payload date) accepted. An
#: older date is a default value or a broken clock, never a real touchpoint event.
EARLIEST_TIME = 946_684_800.0
EARLIEST_TIME_TEXT = "2000-01-01T00:00:00Z"

#: ``occurred_at`` may be at most this far ahead of the clock of the worker that
#: validates it (``OMNI_MAX_FUTURE_SKEW_SECONDS``): channel clocks drift a little.
DEFAULT_MAX_FUTURE_SKEW_SECONDS = 300.0

#: A date in a payload (``appointment.booked`` ``scheduled_at``) at most this long
#: after the event's ``occurred_at``: 5 x 366 days.
MAX_DATE_AHEAD_SECONDS = 5 * 366 * 86400.0
MAX_DATE_AHEAD_TEXT = "5 years"

#: The largest Kafka message key accepted (a customer id is at most 128 characters,
#: 512 bytes of UTF-8). The dead letter of a larger key is keyed by the key's hash
#: (``processors.deadletter.deadletter_key``): librdkafka refuses huge keys.
MAX_KEY_BYTES = 1024
