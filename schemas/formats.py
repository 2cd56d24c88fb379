"""The ``date-time`` format both validators use, so they accept exactly the same strings.

The contract's date-time is RFC 3339 ``date-time`` with

* an upper-case ``T`` and, for UTC, an upper-case ``Z`` (RFC 3339 allows lower
  case, but Python 3.11's ``datetime.fromisoformat``, which the worker uses,
  does not);
* a UTC offset, always (``Z`` or ``+hh:mm`` / ``-hh:mm``; ``+hhmm`` is not RFC 3339);
* seconds, always; a fraction of a second of at most 9 digits;
* a real calendar date (no 2026-02-30, no year 0) and no leap second (``:60``).

Neither library's own check is enough: fastjsonschema's built-in date-time
regex accepts ``+0100`` and 2026-02-30, and jsonschema's (rfc3339-validator)
accepts a trailing newline and lower case. So both get :func:`is_rfc3339_datetime`:
a strict full match (the same as the schemas' ``pattern``), then
``datetime.fromisoformat`` (C, fast) for the calendar (2026-02-30, year 0).
What it accepts, the worker can parse.
"""

from __future__ import annotations

import re
from datetime import datetime

_SHAPE = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])",
    re.ASCII,
)
_match_shape = _SHAPE.fullmatch
_from_iso = datetime.fromisoformat
_LOCAL_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?", re.ASCII
)
_LOOSE_SHAPE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)

DATE_TIME_EXAMPLES = '"2026-01-01T10:00:00Z" or "2026-01-01T11:00:00.250+01:00"'


def is_rfc3339_datetime(value: object) -> bool:
    """True for a contract date-time string; True for non-strings (``type`` checks those)."""
    if not isinstance(value, str):
        return True
    if _match_shape(value) is None:
        return False
    try:
        _from_iso(value)  # the calendar: day of that month, leap years, year 0
    except ValueError:
        return False
    return True


def date_time_problem(value: str) -> str:
    """What is wrong with a string that is not a contract date-time, in a few words."""
    if _LOCAL_DATE_TIME.fullmatch(value):
        return "has no UTC offset"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if _LOOSE_SHAPE.fullmatch(value):
        return "is not a real date and time (check month, day, hour, offset and fraction digits)"
    if _LOOSE_SHAPE.fullmatch(value.upper()):
        return "uses a lower-case 't' or 'z'"
    if re.fullmatch(r".*[+-][0-9]{4}", value, re.ASCII):
        return "has an offset without a colon (use +hh:mm)"
    return "is not an RFC 3339 date-time"
