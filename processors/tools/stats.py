"""`omni stats`: live offer performance per rule and channel, from ``omni:stats:<rule>`` (S11).

Each hash field is one partition's whole totals for a channel; summing the
fields gives the rule's totals. Conversion is accepted / emitted; with a control
group (``OMNI_CONTROL_GROUP_SHARE``) the held-out customers' own conversion
(``control_accepted`` / ``suppressed:control_group``) is the baseline, and lift is
the difference.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from processors.domain.read_model import stats_key
from producers.keys import segment_value

Totals = dict[tuple[str, str], dict[str, float]]


def read_stats(client: Any) -> Totals:
    """(rule, channel) -> summed counters over every partition."""
    totals: Totals = defaultdict(lambda: defaultdict(float))
    prefix = stats_key("")
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        rule = segment_value(key.decode()[len(prefix) :])
        for field, value in client.hgetall(key).items():
            channel = field.decode().rsplit("|p", 1)[0]
            for counter, amount in orjson.loads(value).items():
                totals[(rule, channel)][counter] += amount
    return totals


def rates(counters: dict[str, float]) -> dict[str, float | None]:
    emitted = counters.get("emitted", 0.0) + counters.get("released", 0.0)
    held_out = counters.get("suppressed:control_group", 0.0)
    conversion = counters.get("accepted", 0.0) / emitted if emitted else None
    baseline = counters.get("control_accepted", 0.0) / held_out if held_out else None
    lift = None if conversion is None or baseline is None else conversion - baseline
    return {"conversion": conversion, "control_conversion": baseline, "lift": lift}
