"""Changelog bytes and records per customer: the previous layout against the record.

    python -m bench.state_size [--customers 100000] [--templates 400] [--seed 7]

No broker: the customer templates of ``bench.recovery`` (the real ``step`` over a
customer's life, tiers light to very active) and the tier mix its fill uses, key
included. Previous layout: a ``customers`` record (state JSON) and a ``timelines``
record (timeline JSON), two keys. Now: one ``customers`` record
(:func:`bench.recovery.customer_record`, :mod:`processors.domain.record_codec`).
Also times encoding and decoding one record. Writes ``bench/results/state-size.md``
and ``state-size.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from bench.recovery import RESULTS_DIR, TIERS, Template, build_templates, customer_record
from bench.workload import customer_id
from processors.domain.record_codec import decode_record
from processors.settings import Settings
from producers.actions import new_action_token_key


def _percentile(values: list[int], share: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _row(name: str, sizes: list[int], records: int) -> dict[str, Any]:
    return {
        "layout": name,
        "records_per_customer": records,
        "median": statistics.median(sizes),
        "mean": statistics.fmean(sizes),
        "p99": _percentile(sizes, 0.99),
        "max": max(sizes),
    }


def _us(work: list[Any], call: Any) -> float:
    best = float("inf")
    for _ in range(5):  # the best of 5: a shared machine only ever adds time
        started = time.process_time()
        for item in work:
            call(item)
        best = min(best, time.process_time() - started)
    return best / len(work) * 1e6


def measure(customers: int, templates: int, seed: int) -> dict[str, Any]:
    settings = Settings()
    if settings.action_token_key is None:
        settings = settings.model_copy(
            update={"action_token_key": SecretStr(new_action_token_key())}
        )
    by_tier = build_templates(settings, templates, seed)
    rng = random.Random(seed + 1)  # the fill's picks (bench.recovery.fill_changelogs)
    names = [t.name for t in TIERS]
    picks = rng.choices(range(len(names)), weights=[t.share for t in TIERS], k=customers)
    old: list[int] = []
    new: list[int] = []
    tiers: Counter[str] = Counter()
    sample: list[tuple[Template, bytes]] = []
    for index, pick in enumerate(picks):
        template = by_tier[names[pick]][rng.randrange(len(by_tier[names[pick]]))]
        key = customer_id(index).encode()
        # Same length as the template's id: the JSON sizes are the template's.
        old.append(2 * len(key) + len(template.state) + len(template.timeline))
        record = customer_record(template, key)
        new.append(len(key) + len(record))
        tiers[names[pick]] += 1
        if index < 2000:
            sample.append((template, record))
    records = [record for _, record in sample]
    return {
        "config": {"customers": customers, "templates": templates, "seed": seed},
        "tiers": dict(tiers),
        "rows": [_row("previous: state + timeline JSON", old, 2), _row("record (zstd)", new, 1)],
        "median_ratio": statistics.median(new) / statistics.median(old),
        "mean_ratio": statistics.fmean(new) / statistics.fmean(old),
        "encode_us": _us([t for t, _ in sample], lambda t: customer_record(t, t.customer_id)),
        "decode_us": _us(records, decode_record),
        "json_loads_us": _us([t.state for t, _ in sample], orjson.loads),
    }


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "### Changelog bytes per customer (key + value), bench workload",
        "",
        f"`{command}`: {result['config']['customers']:,} customers drawn like "
        f"`bench.recovery`'s fill from {result['config']['templates']} templates "
        "(the real step over each customer's life); no broker.",
        "",
        "| layout | records per customer | median B | mean B | p99 B | max B |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['layout']} | {row['records_per_customer']} | {row['median']:,.0f} "
            f"| {row['mean']:,.0f} | {row['p99']:,} | {row['max']:,} |"
        )
    lines += [
        "",
        f"Record / previous: median {result['median_ratio']:.2f}, mean "
        f"{result['mean_ratio']:.2f} (goal: median <= 0.50). CPU per record (best of 5): "
        f"encode {result['encode_us']:.1f} µs, decode {result['decode_us']:.1f} µs "
        f"(orjson.loads of the state alone: {result['json_loads_us']:.1f} µs).",
        "",
        "Key + value only: each Kafka record also carries the checkpoint header and the "
        "batch's per-record overhead, which one record per customer halves as well.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.state_size", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--templates", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7, help="bench.recovery's default")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    result = measure(args.customers, args.templates, args.seed)
    command = "python -m bench.state_size " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(result, command.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "state-size.md").write_text(text)
    (args.out / "state-size.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
