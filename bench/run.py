"""``make bench``: preload a workload, measure throughput (a-e) and latency; print figures.

    python -m bench.run [--events 200000] [--customers 20000] [--repeat 1]
                        [--rates 1000,5000,half] [--seconds 20] [--variants a,b,c,d,e]
                        [--slow-window 60]
                        [--latency c,a,b]
                        [--scaling-workers 1,2,3] [--scaling-rate 400] [--scaling-seconds 60]

Figures, not a test: nothing here asserts on timing. With ``--repeat 3`` the
variants run interleaved (a b c a b c a b c) so a noisy neighbour hurts all of
them alike, and the tables show medians. Latency runs one open-loop run per
(rate, variant), variants interleaved per rate; ``half`` is half of c's median
throughput measured just before. Then the scale-out part (``bench.scaling``: 1, 2, 3
workers at a fixed rate, rebalance pauses, saturation, RSS by partition count),
written to ``scaling.json`` and ``scaling.md``. Everything started (broker, Redis,
worker, loops) is stopped on exit, Ctrl-C or SIGTERM included.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from bench import report, scaling
from bench.latency import LatencyResult, Plan, parse_rates, resolve_rates, run_latency
from bench.quixenv import QuixEnvError, ensure_quix_venv
from bench.stack import BenchStack, bench_stack, terminate_as_interrupt
from bench.throughput import VARIANTS, RunResult, extra_topics, run_variant
from bench.workload import generate, preload
from processors.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def _variants(text: str, known: tuple[str, ...] = tuple(VARIANTS)) -> list[str]:
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = set(chosen) - set(known)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {sorted(unknown)}; use {', '.join(known)}"
        )
    return chosen


def _latency_variants(text: str) -> list[str]:
    # bench.latency starts any variant (d and e through their modules' CLI, like bench.loops).
    return _variants(text, tuple(VARIANTS))


def _rates(text: str) -> list[str]:
    try:
        return parse_rates(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _counts(text: str) -> list[int]:
    try:
        return scaling.parse_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    # The method: a backlog of 1M events, 3 interleaved repetitions.
    p.add_argument("--events", type=int, default=1_000_000, help="events in the backlog")
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="throughput runs per variant, interleaved; medians are reported",
    )
    p.add_argument("--variants", type=_variants, default=list(VARIANTS))
    p.add_argument(
        "--slow-window",
        type=float,
        default=90.0,
        help="throughput: a variant still draining the backlog after this many seconds stops "
        "there and reports events/s over the events it processed ('events timed'); 0 = no limit",
    )
    p.add_argument("--batch", type=int, default=1000, help="max events per batch of the loops")
    p.add_argument(
        "--rates",
        type=_rates,
        default="1000,5000,half",
        help="latency: events per second, comma-separated; 'half' = half of c's median "
        "throughput in this run ('' for none)",
    )
    p.add_argument(
        "--rate", dest="rates", type=_rates, default=argparse.SUPPRESS, help="alias of --rates"
    )
    p.add_argument("--seconds", type=float, default=20.0, help="latency: measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="latency: unrecorded seconds first")
    p.add_argument(
        "--latency",
        type=_latency_variants,
        default=["c", "a", "b"],
        help="variants to measure latency for ('' for none)",
    )
    # Scale-out (bench.scaling): its own results, scaling.json and scaling.md.
    p.add_argument(
        "--scaling-workers",
        type=_counts,
        default=[1, 2, 3],
        help="scale-out: worker counts at a fixed rate ('' for none)",
    )
    p.add_argument("--scaling-rate", type=float, default=400.0, help="scale-out: events/s")
    p.add_argument(
        "--scaling-seconds", type=float, default=60.0, help="scale-out: seconds per worker count"
    )
    p.add_argument(
        "--scaling-saturation",
        type=_counts,
        default=[1, 2],
        help="scale-out: worker counts for max events/s from a backlog ('' for none)",
    )
    p.add_argument(
        "--scaling-rss",
        type=_counts,
        default=[8, 32],
        help="scale-out: partition counts for one worker's RSS ('' for none)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and data (debugging)")
    return p.parse_args(argv)


def delete_namespace(settings: Settings) -> None:
    """Drop a finished repetition's topics so later runs meet the same broker."""
    admin = AdminClient(settings.kafka_client_config())
    # Quix Streams (e) names its changelog topics changelog__<group>--...
    prefixes = (settings.topic_namespace, settings.app_id, f"changelog__{settings.app_id}")
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
        identified_settings = None
        for variant in args.variants:
            say(f"  throughput {variant} ...")
            where = settings
            if variant == "i":
                # Its own namespace, preloaded with the same events, identified.
                where = identified_settings = stack.settings(f"r{repetition}i")
                stack.create_topics(where, extra_topics(where))
                preload(
                    where, generate(args.events, args.customers, args.seed, identified_share=1.0)
                )
            run = run_variant(
                stack, where, variant, workload.events, repetition, args.batch, args.slow_window
            )
            say(
                f"  throughput {variant}: {run.events_per_s:,.0f} events/s "
                f"over {run.events:,} events, "
                f"{run.cpu_us_per_event:.1f} µs CPU/event, startup {run.startup_s:.1f}s"
                + (f", mean batch {run.mean_batch}" if run.mean_batch else "")
            )
            runs.append(run)
        delete_namespace(settings)
        if identified_settings is not None:
            delete_namespace(identified_settings)
    return runs


def run_latencies(
    stack: BenchStack, args: argparse.Namespace, runs: list[RunResult], notes: dict[str, Any]
) -> list[LatencyResult]:
    """One open-loop run per (rate, variant): c a b at the first rate, then the next rate."""
    worker = [run.events_per_s for run in runs if run.variant == "c"]
    rates, skipped = resolve_rates(args.rates, statistics.median(worker) if worker else None)
    notes["latency_rates"] = [{"rate": rate, "label": label} for rate, label in rates]
    notes["latency_notes"] = skipped
    for note in skipped:
        say(note)
    results = []
    for rate, label in rates if args.latency else []:
        plan = Plan(rate, args.seconds, args.warmup)
        for variant in args.latency:
            say(
                f"latency {variant}: {plan.rate:g}/s{' (half of c)' if label else ''} for "
                f"{plan.seconds:g}s (+{plan.warmup:g}s warm-up), {plan.customers:,} customers"
            )
            result = run_latency(stack, variant, plan, args.batch)
            result.rate_label = label
            say(
                f"latency {variant} at {plan.rate:g}/s: p50 {result.p50_ms:.1f} ms, "
                f"p99 {result.p99_ms:.1f} ms, p99.9 {result.p999_ms:.1f} ms, "
                f"missing {result.missing}, send lag max {result.send_lag_max_ms:.0f} ms "
                f"({result.late_sends} late)"
                + (f" SATURATED ({result.saturation})" if result.saturated else "")
                + (f", cut after {result.cut_at_s:g}s" if result.cut_at_s is not None else "")
            )
            results.append(result)
    return results


def run_scaling(
    stack: BenchStack, args: argparse.Namespace, argv: list[str]
) -> dict[str, Any] | None:
    """The scale-out part (bench.scaling) on the same stack, unless every part is off."""
    if not (args.scaling_workers or args.scaling_saturation or args.scaling_rss):
        return None
    options = scaling.Options(
        rate=args.scaling_rate,
        seconds=args.scaling_seconds,
        workers=args.scaling_workers,
        saturation=args.scaling_saturation,
        rss_partitions=args.scaling_rss,
        seed=args.seed,
    )
    command = " ".join(["python -m bench.run", shlex.join(argv)]).strip()
    return scaling.measure(stack, options, command, say)


def config_of(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    defaults = Settings()
    return {
        "argv": shlex.join(argv),
        "events": args.events,
        "customers": args.customers,
        "repeat": args.repeat,
        "variants": args.variants,
        "slow_window_s": args.slow_window,
        "batch": args.batch,
        "rates": args.rates,
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
    if "e" in args.variants:
        try:  # before anything is measured: made once, then reused (a stamp file)
            ensure_quix_venv(say=say)
        except QuixEnvError as error:
            say(str(error))
            return 2
    try:
        with bench_stack(keep_workdir=args.keep_workdir) as stack:
            say(f"Kafka {stack.bootstrap}, Redis {stack.redis_url}, workdir {stack.workdir}")
            runs = run_throughput(stack, args, notes)
            latencies = run_latencies(stack, args, runs, notes)
            scaled = run_scaling(stack, args, argv)
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped")
        return 130
    notes["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result = report.build(config_of(args, argv), started, runs, latencies, notes)
    report.print_report(result)
    report.write(result, args.results_dir)
    say(f"wrote {args.results_dir / 'latest.json'} and latest.md")
    if scaled is not None:
        scaling.write(scaled, args.results_dir)
        say(f"wrote {args.results_dir / 'scaling.json'} and scaling.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
