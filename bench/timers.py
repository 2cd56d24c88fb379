"""Timer lag under load: how late a rule timer's trigger arrives after its due time.

    python -m bench.timers [--rate 1000] [--seconds 40] [--delay 5] [--cart-every 20]

Starts its own broker, Redis and the worker (cart_abandon_after = ``--delay``),
sends the bench workload open-loop at ``--rate`` events/s with a fresh cart for
every ``--cart-every``-th event (each schedules a cart reminder), and consumes
``trigger.email``: lag = reminder arrival - (cart event's send time + delay).
Figures, not a test; written to ``bench/results/timers.json``.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer
from hdrh.histogram import HdrHistogram

from bench.procs import Worker, metric_samples, wait_until
from bench.stack import bench_stack
from bench.workload import generate, rfc3339_now
from processors.settings import Settings
from producers.sdk import PRODUCER_CONFIG

RESULTS = Path(__file__).resolve().parent / "results" / "timers.json"


def cart_message(customer: str) -> tuple[str, bytes, bytes]:
    event = {
        "event_id": f"cart-{uuid.uuid4().hex}",
        "type": "cart.updated",
        "occurred_at": rfc3339_now(),
        "channel": "web",
        "customer_id": customer,
        "payload": {
            "cart_id": "C1",
            "items": [{"sku": "SKU-1", "qty": 1, "unit_price": 9.5}],
            "currency": "EUR",
        },
    }
    return "web", customer.encode(), orjson.dumps(event)


class ReminderProbe(threading.Thread):
    def __init__(self, settings: Settings, due: dict[str, float]) -> None:
        super().__init__(daemon=True)
        self.due = due
        self.lags_ms: list[float] = []
        self.stop = threading.Event()
        self.consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"timer-probe-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.subscribe([settings.trigger_topic("email")])

    def run(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(500, timeout=0.1):
                if message.error() is not None:
                    continue
                arrived = time.time()
                trigger = orjson.loads(message.value() or b"{}")
                due = self.due.get(trigger.get("source_event_id", ""))
                if trigger.get("type") == "cart_reminder" and due is not None:
                    self.lags_ms.append((arrived - due) * 1000.0)
        self.consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timers", description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--delay", type=float, default=5.0)
    parser.add_argument("--cart-every", type=int, default=20)
    parser.add_argument("--customers", type=int, default=20_000)
    args = parser.parse_args(argv)
    total = int(args.rate * args.seconds)
    workload = generate(total, args.customers)
    with bench_stack() as stack:
        settings = stack.settings("timers", cart_abandon_after_seconds=args.delay)
        stack.create_topics(settings, [])
        worker = Worker(settings, stack.scratch("timers") / "worker.log").start()
        try:
            wait_until(worker.ready, 120, "the worker to be ready")
            producer = Producer(
                {**settings.kafka_client_config(), **PRODUCER_CONFIG, "linger.ms": 5}
            )
            due: dict[str, float] = {}
            probe = ReminderProbe(settings, due)
            probe.start()
            started = time.monotonic()
            for n, (channel, key, value) in enumerate(workload.messages):
                target = started + n / args.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if n % args.cart_every == 0:
                    _, cart_key, cart_value = cart_message(f"cart-{n}")
                    due[orjson.loads(cart_value)["event_id"]] = time.time() + args.delay
                    producer.produce(settings.touchpoint_topic("web"), cart_value, cart_key)
                producer.produce(settings.touchpoint_topic(channel), value, key)
                producer.poll(0)
            producer.flush(30)
            del producer  # let librdkafka go before the broker stops
            deadline = time.monotonic() + args.delay + 30
            while len(probe.lags_ms) < len(due) and time.monotonic() < deadline:
                time.sleep(0.5)
            probe.stop.set()
            probe.join(5)
            fired = metric_samples(worker.metrics(), "omni_timers_fired_total")
        finally:
            worker.stop()
    histogram = HdrHistogram(1, 600_000, 3)
    for lag in probe.lags_ms:
        histogram.record_value(max(1, int(lag)))
    result: dict[str, Any] = {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "delay_s": args.delay,
        "carts": len(due),
        "reminders": len(probe.lags_ms),
        "timers_fired": fired.get("", 0.0),
        "lag_ms": {
            "p50": histogram.get_value_at_percentile(50),
            "p99": histogram.get_value_at_percentile(99),
            "max": histogram.get_max_value(),
        },
        "note": "lag = reminder consumed on trigger.email - (cart sent + delay); includes the "
        "tick interval (0.5 s), the send and the consumer",
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
