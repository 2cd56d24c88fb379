"""``make bench``: preload a workload, measure throughput (a, b, c) and latency; print figures.

    python -m bench.run [--events 200000] [--customers 20000] [--repeat 1]
                        [--rate 500] [--seconds 20] [--variants a,b,c] [--latency a,b,c]

Figures, not a test: nothing here asserts on timing. With ``--repeat 3`` the
variants run interleaved (a b c a b c a b c) so a noisy neighbour hurts all of
them alike, and the tables show medians. Everything started (broker, Redis,
worker, loops) is stopped on exit, Ctrl-C or SIGTERM included.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from bench import report
from bench.latency import LatencyResult, Plan, run_latency
from bench.stack import BenchStack, bench_stack, terminate_as_interrupt
from bench.throughput import RunResult, extra_topics, run_variant
from bench.workload import generate, preload
from processors.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def _variants(text: str) -> list[str]:
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = set(chosen) - {"a", "b", "c"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {sorted(unknown)}; use a, b, c")
    return chosen


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000, help="events in the backlog")
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="throughput runs per variant, interleaved; medians are reported",
    )
    p.add_argument("--variants", type=_variants, default=["a", "b", "c"])
    p.add_argument("--batch", type=int, default=1000, help="max events per batch of the loops")
    p.add_argument("--rate", type=float, default=500.0, help="latency: events per second")
    p.add_argument("--seconds", type=float, default=20.0, help="latency: measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="latency: unrecorded seconds first")
    p.add_argument(
        "--latency",
        type=_variants,
        default=["c", "a", "b"],
        help="variants to measure latency for ('' for none)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and data (debugging)")
    return p.parse_args(argv)


def delete_namespace(settings: Settings) -> None:
    """Drop a finished repetition's topics so later runs meet the same broker."""
    admin = AdminClient(settings.kafka_client_config())
    prefixes = (settings.topic_namespace, settings.app_id)
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefixes)]
    for future in admin.delete_topics(names, operation_timeout=60).values():
        future.result()


def run_throughput(
    stack: BenchStack, args: argparse.Namespace, notes: dict[str, Any]
) -> list[RunResult]:
    runs: list[RunResult] = []
    for repetition in range(args.repeat):
        # A fresh namespace per repetition: the worker's second hop (omni.customer-events)
        # would otherwise already hold the previous run's events.
        settings = stack.settings(f"r{repetition}")
        stack.create_topics(settings, extra_topics(settings))
        workload = generate(args.events, args.customers, args.seed)  # occurred_at = now
        notes["workload"] = {
            "mix": dict(workload.mix),
            "mean_bytes": workload.mean_bytes,
            "customers": workload.customers,
        }
        rate = preload(settings, workload)
        notes["preload_events_per_s"].append(rate)
        say(
            f"repetition {repetition + 1}/{args.repeat}: preloaded {workload.events:,} events "
            f"({rate:,.0f}/s) into {settings.topic_namespace}*"
        )
        for variant in args.variants:
            say(f"  throughput {variant} ...")
            run = run_variant(stack, settings, variant, workload.events, repetition, args.batch)
            say(
                f"  throughput {variant}: {run.events_per_s:,.0f} events/s, "
                f"{run.cpu_us_per_event:.1f} µs CPU/event, startup {run.startup_s:.1f}s"
                + (f", mean batch {run.mean_batch}" if run.mean_batch else "")
            )
            runs.append(run)
        delete_namespace(settings)
    return runs


def run_latencies(stack: BenchStack, args: argparse.Namespace) -> list[LatencyResult]:
    plan = Plan(args.rate, args.seconds, args.warmup)
    results = []
    for variant in args.latency:
        say(f"latency {variant}: {plan.rate:g}/s for {plan.seconds:g}s (+{plan.warmup:g}s warm-up)")
        result = run_latency(stack, variant, plan, args.batch)
        say(
            f"latency {variant}: p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
            f"missing {result.missing}"
        )
        results.append(result)
    return results


def config_of(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    defaults = Settings()
    return {
        "argv": shlex.join(argv),
        "events": args.events,
        "customers": args.customers,
        "repeat": args.repeat,
        "variants": args.variants,
        "batch": args.batch,
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "latency_variants": args.latency,
        "seed": args.seed,
        "partitions": 8,
        "worker_batch_max_events": defaults.batch_max_events,
        "producer_linger_ms": defaults.producer_linger_ms,
        "commit_interval_seconds": defaults.commit_interval_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    terminate_as_interrupt()
    started = datetime.now(UTC)
    notes: dict[str, Any] = {
        "preload_events_per_s": [],
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with bench_stack(keep_workdir=args.keep_workdir) as stack:
            say(f"Kafka {stack.bootstrap}, Redis {stack.redis_url}, workdir {stack.workdir}")
            runs = run_throughput(stack, args, notes)
            latencies = run_latencies(stack, args)
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped")
        return 130
    notes["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result = report.build(config_of(args, argv), started, runs, latencies, notes)
    report.print_report(result)
    report.write(result, args.results_dir)
    say(f"wrote {args.results_dir / 'latest.json'} and latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
