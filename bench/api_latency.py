"""Latency of the Customer 360 API (``omni api``) under an open-loop load.

    python -m bench.api_latency [--rate 2000] [--seconds 20] [--customers 20000]
                                [--identifier-share 0.3] [--warmup 3] [--profile]

Starts its own Redis (devstack, a free loopback port), writes N customers' read model
with the worker's own ``project()`` (profile, consents, an overdraft, open offers,
coupons, a 20-item timeline) and one msisdn link each, starts ``omni api`` in its own
process, then drives it from a *separate* process with an OPEN-LOOP generator: request
``i`` is due at ``start + i / rate`` whatever happened to the ones before, and its
latency is measured from that due time, not from when it was actually sent, so a
stalled server (or a late generator) shows as latency instead of silently lowering the
rate (no coordinated omission). Mix: ``/customers/{id}`` and, at
``--identifier-share``, ``/identifiers/msisdn/{value}``; ids chosen at random, ids
with ``:``, ``%`` and ``/`` among them. Prints the figures and writes them as JSON
(``bench/results/api-latency.json``); figures, not a test.

``--profile`` runs the API under cProfile and prints its top functions at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import redis

from bench.procstats import cpu_seconds
from devstack.ports import free_port
from devstack.redis import LocalRedis
from processors.domain.model import CustomerState
from processors.domain.read_model import project, timeline_write
from processors.projection import queue_writes
from processors.settings import Settings
from producers.keys import identifier_key

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    print(f"[api-bench] {message}", file=sys.stderr, flush=True)


# --- the read model ---------------------------------------------------------------------------


def customer_id(index: int) -> str:
    # One in ten ids needs escaping (':', '%', '/'), as real composite ids do.
    special = ("", "", "", "", "", "", "", "", "", "org:")[index % 10]
    return f"{special}cust-{index:07d}" + ("%/x" if index % 50 == 0 else "")


def msisdn(index: int) -> str:
    return f"+4477{index:08d}"


def a_customer(index: int, now: float, rng: random.Random) -> CustomerState:
    state = CustomerState.new(customer_id(index))
    state.traits = {
        "home_country": rng.choice(["GB", "DE", "FR", "ES"]),
        "marital_status": rng.choice(["single", "married"]),
        "children": rng.randint(0, 3),
        "language": "en",
        "timezone": "Europe/London",
        "funnel_stage": "consideration",
    }
    state.products = ["current_account", "credit_card"][: rng.randint(1, 2)]
    state.consents = {
        f"{channel}:marketing": {"granted": rng.random() < 0.8, "at": now - 86400}
        for channel in ("sms", "email", "push")
    }
    state.last_seen = {c: now - rng.uniform(0, 86400 * 30) for c in ("mobile", "atm", "web")}
    state.last_country = "GB"
    state.updated_at = now - 60
    if rng.random() < 0.3:
        state.entitlements = {
            "overdraft": {
                "limit": 500,
                "currency": "GBP",
                "offer_id": f"od-{index}",
                "expires_at": now + 86400,
            }
        }
    for n in range(rng.randint(0, 3)):
        state.offers[f"trg-{index}-{n}"] = {
            "offer_type": "roaming_pack",
            "rule": "roaming_offer",
            "channel": "sms",
            "expires_at": now + 3600 * (n + 1),
            "value": 5.0,
        }
    for n in range(rng.randint(0, 2)):
        state.coupons[f"CPN-{index}-{n}"] = {
            "value": 10,
            "currency": "GBP",
            "expires_at": now + 86400 * 7,
            "status": "issued",
            "issued_channel": "tv",
            "redeemed_at": None,
            "redeemed_channel": None,
        }
    return state


def a_timeline(now: float, rng: random.Random) -> list[dict[str, object]]:
    kinds = [("atm", "atm.withdrawal"), ("mobile", "app.opened"), ("web", "page.viewed")]
    items = []
    for n in range(20):
        channel, kind = rng.choice(kinds)
        items.append({"at": now - n * 3600, "channel": channel, "type": kind, "summary": kind})
    return items


def populate(client: redis.Redis, customers: int, now: float) -> int:
    rng = random.Random(7)
    keys = 0
    pipe = client.pipeline(transaction=False)
    for index in range(customers):
        state = a_customer(index, now, rng)
        writes = [*project(state, now), timeline_write(state.customer_id, a_timeline(now, rng))]
        queue_writes(pipe, writes)
        link = {
            "customer_id": state.customer_id,
            "anonymous": False,
            "source": "mobile",
            "linked_at": "2026-12-01T10:00:00.000Z",
        }
        pipe.set(identifier_key("msisdn", msisdn(index)), orjson.dumps(link))
        keys += len(writes) + 1
        if index % 500 == 499:
            pipe.execute()
    pipe.execute()
    return keys


# --- the load generator (its own process) -------------------------------------------------------


def _paths(customers: int, share: float, count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    paths = []
    for _ in range(count):
        index = rng.randrange(customers)
        if rng.random() < share:
            paths.append(("identifiers", f"/identifiers/msisdn/{quote(msisdn(index), safe='')}"))
        else:
            paths.append(("customers", f"/customers/{quote(customer_id(index), safe='')}"))
    return paths


async def _drive(
    base: str, token: str, rate: float, seconds: float, warmup: float, customers: int, share: float
) -> dict[str, Any]:
    import aiohttp

    total = int(rate * (warmup + seconds))
    paths = _paths(customers, share, total, seed=11)
    headers = {"Authorization": f"Bearer {token}"}
    # (kind, due offset, latency seconds, status) per request; -1 = exception.
    results: list[tuple[str, float, float, int]] = []
    # How late each request left the generator (its loop's timer granularity, ~1 ms,
    # and its own CPU): part of every latency above, not the API's doing.
    lateness: list[float] = []
    # A bounded set of keep-alive connections, as a fleet of callers has; a request due
    # while all are busy waits for one, and that wait counts (latency from the due time).
    connector = aiohttp.TCPConnector(limit=64, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        # Open the connections before the clock starts.
        async def warm() -> None:
            async with session.get("/livez") as response:
                await response.read()

        await asyncio.gather(*(warm() for _ in range(16)))
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2
        tasks = []

        async def one(kind: str, path: str, due: float) -> None:
            lateness.append(loop.time() - due)
            try:
                async with session.get(path, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = -1
            results.append((kind, due - start, loop.time() - due, status))

        for i, (kind, path) in enumerate(paths):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(kind, path, due)))
        generator_lag = loop.time() - (start + (total - 1) / rate)
        await asyncio.gather(*tasks)
        ended = loop.time()
    return {
        "results": results,
        "started": start,
        "ended": ended,
        "generator_lag_s": generator_lag,
        "lateness": figures(lateness[int(warmup * rate) :]),
    }


def _load_process(args: tuple[Any, ...], out: Any) -> None:
    import gc
    import traceback

    cpu0 = cpu_seconds()
    # No collector pauses in the generator: they would delay sends and count as the
    # API's latency. What it allocates per request is freed by reference counting.
    gc.disable()
    try:
        done = asyncio.run(_drive(*args))
    except BaseException:
        out.send({"failed": traceback.format_exc()})
        raise
    done["cpu_s"] = cpu_seconds() - cpu0
    out.send(done)
    out.close()


def _server_durations(log_path: Path) -> list[float]:
    """Handler durations (ms) from the API's access log: the time spent inside the server."""
    found = []
    try:
        for line in log_path.read_text(errors="replace").splitlines():
            if "omni.api.access" in line and "ms caller=" in line and " /livez " not in line:
                found.append(float(line.rsplit("ms caller=", 1)[0].rsplit(" ", 1)[1]))
    except OSError:
        pass
    return found


# --- figures --------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def figures(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    ms = 1000.0
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 0.50) * ms,
        "p90_ms": percentile(ordered, 0.90) * ms,
        "p99_ms": percentile(ordered, 0.99) * ms,
        "p999_ms": percentile(ordered, 0.999) * ms,
        "max_ms": (ordered[-1] if ordered else float("nan")) * ms,
        "mean_ms": (statistics.fmean(ordered) if ordered else float("nan")) * ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_latency")
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s (open loop)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds at the rate, not counted"
    )
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--identifier-share", type=float, default=0.3)
    parser.add_argument("--profile", action="store_true", help="run the API under cProfile")
    parser.add_argument("--keep-log", type=Path, default=None, help="copy the API's log here")
    parser.add_argument("--out", type=Path, default=RESULTS / "api-latency.json")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="omni-api-bench-"))
    token = "bench-" + os.urandom(16).hex()  # a fresh one per run, handed to the generator
    api: subprocess.Popen[bytes] | None = None
    try:
        with LocalRedis(free_port(), workdir / "redis") as server:
            client = redis.Redis.from_url(server.url)
            now = time.time()
            t0 = time.monotonic()
            keys = populate(client, args.customers, now)
            say(
                f"wrote {keys:,} keys for {args.customers:,} customers "
                f"in {time.monotonic() - t0:.1f} s"
            )
            port = free_port()
            tokens = {
                "bench": {
                    "sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "scopes": ["customers:read", "identifiers:read"],
                }
            }
            settings = Settings(
                redis_url=server.url,
                api_host="127.0.0.1",
                api_port=port,
                api_tokens=json.dumps(tokens),
            )
            command = [sys.executable, "-m", "processors.tools.cli", "api"]
            if args.profile:
                command = [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    str(workdir / "api.prof"),
                    "-m",
                    "processors.tools.cli",
                    "api",
                ]
            log_path = workdir / "api.log"
            with log_path.open("wb") as log:
                api = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=settings.as_env(os.environ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            import urllib.request

            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            while True:
                try:
                    opener.open(f"{base}/readyz", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or api.poll() is not None:
                        raise SystemExit(
                            f"omni api did not start:\n{log_path.read_text()}"
                        ) from None
                    time.sleep(0.2)
            say(
                f"omni api ready on {base}; driving {args.rate:g} req/s "
                f"for {args.warmup:g}+{args.seconds:g} s"
            )
            api_cpu0 = cpu_seconds(api.pid)
            redis_cpu0 = cpu_seconds(server.pid)
            receiver, sender = multiprocessing.get_context("spawn").Pipe(duplex=False)
            load = multiprocessing.get_context("spawn").Process(
                target=_load_process,
                args=(
                    (
                        base,
                        token,
                        args.rate,
                        args.seconds,
                        args.warmup,
                        args.customers,
                        args.identifier_share,
                    ),
                    sender,
                ),
            )
            load.start()
            sender.close()  # the child's copy is the only one: recv() ends if it dies
            try:
                done = receiver.recv()
            except EOFError:
                raise SystemExit("the load generator died without a report") from None
            load.join()
            if "failed" in done:
                raise SystemExit(f"the load generator failed:\n{done['failed']}")
            api_cpu = cpu_seconds(api.pid) - api_cpu0
            redis_cpu = cpu_seconds(server.pid) - redis_cpu0
            load_avg = os.getloadavg()
    finally:
        if api is not None and api.poll() is None:
            api.send_signal(signal.SIGINT)
            try:
                api.wait(20)
            except subprocess.TimeoutExpired:
                api.kill()
        server_ms = _server_durations(workdir / "api.log")
        if args.keep_log is not None and (workdir / "api.log").exists():
            shutil.copy(workdir / "api.log", args.keep_log)
        if args.profile and (workdir / "api.prof").exists():
            import pstats

            pstats.Stats(str(workdir / "api.prof")).sort_stats("tottime").print_stats(25)
        shutil.rmtree(workdir, ignore_errors=True)

    results = done["results"]
    measured = [r for r in results if r[1] >= args.warmup]
    ok = [r for r in measured if r[3] == 200]
    errors = len(measured) - len(ok)
    wall = done["ended"] - done["started"]
    report: dict[str, Any] = {
        "target_rate": args.rate,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "customers": args.customers,
        "identifier_share": args.identifier_share,
        "requests": len(measured),
        "achieved_rate": len(results) / wall if wall > 0 else 0.0,
        "errors": errors,
        "statuses": {
            str(s): sum(1 for r in measured if r[3] == s) for s in sorted({r[3] for r in measured})
        },
        "all": figures([r[2] for r in measured]),
        "customers_route": figures([r[2] for r in measured if r[0] == "customers"]),
        "identifiers_route": figures([r[2] for r in measured if r[0] == "identifiers"]),
        "generator_lag_ms": done["generator_lag_s"] * 1000,
        "generator_send_lateness": done["lateness"],
        # Inside the API (middleware to response, from its access log; warmup included).
        "server_ms": {
            "p50": percentile(sorted(server_ms), 0.5),
            "p99": percentile(sorted(server_ms), 0.99),
            "max": max(server_ms, default=float("nan")),
        },
        "cpu_share": {
            "api": api_cpu / wall,
            "redis": redis_cpu / wall,
            "load_generator": done["cpu_s"] / wall,
        },
        "loadavg": load_avg,
        "profile": args.profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    a = report["all"]
    print(
        f"target {args.rate:g} req/s, achieved {report['achieved_rate']:.0f} req/s, "
        f"{report['requests']:,} requests measured, {errors} errors\n"
        f"latency from the due time: p50 {a['p50_ms']:.2f} ms, p90 {a['p90_ms']:.2f} ms, "
        f"p99 {a['p99_ms']:.2f} ms, p99.9 {a['p999_ms']:.2f} ms, max {a['max_ms']:.2f} ms\n"
        f"  /customers p99 {report['customers_route']['p99_ms']:.2f} ms, "
        f"/identifiers p99 {report['identifiers_route']['p99_ms']:.2f} ms\n"
        f"inside the API (access log): p50 {report['server_ms']['p50']:.2f} ms, "
        f"p99 {report['server_ms']['p99']:.2f} ms\n"
        f"generator send lateness (included above): "
        f"p50 {report['generator_send_lateness']['p50_ms']:.2f} ms, "
        f"p99 {report['generator_send_lateness']['p99_ms']:.2f} ms\n"
        f"CPU (cores): api {report['cpu_share']['api']:.2f}, "
        f"redis {report['cpu_share']['redis']:.2f}, "
        f"load generator {report['cpu_share']['load_generator']:.2f}; "
        f"load average {load_avg[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
