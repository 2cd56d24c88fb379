"""`make demo`: bring the stack up, play stories S1 and S5, and show what happens live.

Shows triggers as channels receive them (with their reasons), every decision
(emitted or suppressed, and why), dead letters, the ATM's view in Redis, and
counters. Ctrl-C stops the simulator and whatever this demo started.
``OMNI_DEMO_SECONDS`` ends it by itself (used in CI).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import Consumer
from pydantic import ValidationError
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from processors.settings import TRIGGER_CHANNELS, Settings
from producers.simulator import run_simulation, story_customer

ALICE = story_customer("alice-s1")


def stack_ready(settings: Settings) -> bool:
    try:
        url = f"http://127.0.0.1:{settings.web_port}/readyz"
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class DemoView:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.triggers: deque[dict[str, Any]] = deque(maxlen=12)
        self.decisions: deque[dict[str, Any]] = deque(maxlen=10)
        self.deadletters: deque[dict[str, Any]] = deque(maxlen=5)
        self.story_log: deque[str] = deque(maxlen=12)
        self.counts: Counter[str] = Counter()
        self.redis = settings.redis_client()

    def consume(self, stop: threading.Event) -> None:
        settings = self.settings
        consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"omni-demo-{uuid.uuid4().hex}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
            }
        )
        trigger_topics = {settings.trigger_topic(c) for c in TRIGGER_CHANNELS}
        consumer.subscribe([*trigger_topics, settings.decision_topic, settings.deadletter_topic])
        try:
            while not stop.is_set():
                for message in consumer.consume(200, timeout=0.2):
                    if message.error() is not None:
                        continue
                    record = orjson.loads(message.value() or b"{}")
                    topic = message.topic()
                    if topic in trigger_topics:
                        self.triggers.appendleft(record)
                        self.counts[f"trigger {record['type']}"] += 1
                    elif topic == settings.decision_topic:
                        self.decisions.appendleft(record)
                        self.counts[f"decision {record['outcome']}"] += 1
                    else:
                        self.deadletters.appendleft(record)
                        self.counts[f"dead letter {record['reason']}"] += 1
        finally:
            consumer.close()

    def render(self) -> Group:
        triggers = Table(
            "channel", "type", "customer", "reason", title="Triggers (newest first)", expand=True
        )
        for t in self.triggers:
            triggers.add_row(t["channel"], t["type"], t["customer_id"], t["reason"])
        decisions = Table(
            "rule", "customer", "outcome", "reasons", title="decision.log", expand=True
        )
        for d in self.decisions:
            decisions.add_row(d["rule"], d["customer_id"], d["outcome"], ", ".join(d["reasons"]))
        letters = Table("reason", "source", "first error", title="Dead letters", expand=True)
        for r in self.deadletters:
            letters.add_row(r["reason"], r["source"]["topic"], (r["errors"] or [""])[0][:90])
        atm: bytes | None = self.redis.get(f"omni:entitlement:{ALICE}:overdraft")
        ttl = self.redis.ttl(f"omni:entitlement:{ALICE}:overdraft")
        atm_view = (
            f"ATM sees for {ALICE}: {atm.decode()} (TTL {ttl}s)"
            if atm
            else f"ATM sees no overdraft for {ALICE} yet"
        )
        counters = "  ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        s = self.settings
        where = (
            f"metrics http://127.0.0.1:{s.metrics_port}/metrics  ready "
            f"http://127.0.0.1:{s.web_port}/readyz  Kafka {s.kafka_bootstrap}"
        )
        return Group(
            Panel("\n".join(self.story_log) or "starting…", title="Stories S1 and S5"),
            triggers,
            decisions,
            letters,
            Panel(f"{atm_view}\n{counters}\n{where}", title="Read model and counters"),
        )


#: Short journey delays for a stack the demo starts (an already running one keeps its own).
DEMO_DELAYS = {
    "OMNI_CART_ABANDON_AFTER_SECONDS": "20",
    "OMNI_COUPON_REMINDER_BEFORE_SECONDS": "172780",
}


class BadDemoSetting(ValueError):
    """A setting the demo cannot run with; the message says what is wrong and what to do."""


def demo_seconds(environ: Mapping[str, str]) -> float:
    """``OMNI_DEMO_SECONDS``: how long to run, 0 (or unset) = until Ctrl-C."""
    raw = environ.get("OMNI_DEMO_SECONDS")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise BadDemoSetting(
            f"OMNI_DEMO_SECONDS={raw!r} is not a number of seconds. Set it to how long the "
            "demo should run (OMNI_DEMO_SECONDS=60 make demo), or unset it to run until Ctrl-C."
        )
    return seconds


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as bad:
        problems = "; ".join(
            f"OMNI_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in bad.errors()
        )
        raise BadDemoSetting(
            f"Invalid settings: {problems}. Fix or unset these variables (or their lines in "
            '.env); README "Settings" lists them.'
        ) from None


def devstack(command: str) -> int:
    return subprocess.run([sys.executable, "-m", "devstack", command]).returncode


def main() -> int:
    # Every setting is checked before anything starts: a bad one stops the demo here,
    # with a message, instead of as a traceback with the stack left running.
    try:
        seconds = demo_seconds(os.environ)
        settings = load_settings()
    except BadDemoSetting as bad:
        print(f"make demo: {bad}", file=sys.stderr)
        return 2
    # Journeys need time to pass; the demo's own stack waits seconds, not a day.
    for name, delay in DEMO_DELAYS.items():
        os.environ.setdefault(name, delay)
    started_stack = False
    try:
        if not stack_ready(settings):
            print(
                "Starting the stack (Kafka, Redis, worker)… the first run resolves the Kafka jars."
            )
            # Set before `up`: a failed or interrupted `up` may have started part of it.
            started_stack = True
            if devstack("up") != 0:
                print("The stack did not start; see the messages above and .omni/stack/*.log")
                return 1
        from devstack.stack import secure_stack_requested, stack_redis_env

        if secure_stack_requested():
            # The secured stack's Redis has users: the demo reads the ATM's view as the
            # ATM does, with the read-only channel user.
            os.environ.update(stack_redis_env("channel"))
            settings = load_settings()
        play(settings, seconds)
    except KeyboardInterrupt:
        pass
    finally:
        if started_stack:
            print("Stopping what the demo started…")
            devstack("down")
    return 0


def play(settings: Settings, seconds: float) -> None:
    """Stories and the live view until ``seconds`` pass (0: until Ctrl-C); the simulator's
    producer and the demo's consumer are stopped on any way out."""
    view = DemoView(settings)
    stop = threading.Event()
    consumer = threading.Thread(target=view.consume, args=(stop,), daemon=True)
    simulator = threading.Thread(
        target=run_simulation,
        args=(settings,),
        kwargs={
            "seconds": max(seconds - 20, 5) if seconds else 0,
            "printer": view.story_log.append,
            "stop": stop,
        },
        daemon=True,
    )
    try:
        consumer.start()
        time.sleep(2)  # let the demo consumer join before the stories start
        simulator.start()
        started = time.monotonic()
        with Live(view.render(), refresh_per_second=4, screen=False) as live:
            while not seconds or time.monotonic() - started < seconds:
                time.sleep(0.25)
                live.update(view.render())
    finally:
        stop.set()
        if simulator.is_alive():
            simulator.join(15)  # its producer flushes and closes before the broker stops
        if consumer.is_alive():
            consumer.join(5)


if __name__ == "__main__":
    sys.exit(main())
