"""The rules watch: a Kubernetes ConfigMap update (a swapped ``..data`` symlink, no
signal) reloads the rules through the same path as SIGHUP."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from processors.app import step_context
from processors.metrics import Metrics
from processors.rulebook import load_ruleset
from processors.runtime import WorkerRuntime, rules_fingerprint
from processors.settings import DEFAULT_RULES_DIR, Settings

EXTRA = """
rules:
  - id: watched_rule
    on: [telco.call_started]
    transition: a call starts
    when: event.payload.call_type == "international"
    trigger:
      type: watched_offer
      channel: sms
      class: marketing
      priority: 5
      cooldown: 1d
      expires_in: 2h
      reason: '"calling " + event.payload.destination_country'
      payload:
        country: event.payload.destination_country
"""


class ConfigMapVolume:
    """A folder laid out as the kubelet's atomic writer does: ``<name> -> ..data/<name>``,
    ``..data -> ..<timestamp>``; an update writes a new timestamped folder, points a
    temporary link at it, renames that over ``..data`` and removes the old folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()

    def publish(self, files: dict[str, str]) -> None:
        self.version += 1
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        target = self.root / f"..2030_01_01_00_00_0{self.version}.000000001"
        target.mkdir()
        for name, text in files.items():
            (target / name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        for link in self.root.iterdir():  # names no longer in the map
            if link.is_symlink() and not link.name.startswith("..") and not link.exists():
                link.unlink()
        if old is not None:
            for path in old.iterdir():
                path.unlink()
            old.rmdir()


def shipped_rules() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(DEFAULT_RULES_DIR.glob("*.yaml"))}


def runtime_over(folder: Path) -> tuple[WorkerRuntime, Any]:
    settings = Settings(rules_dir=str(folder), action_token_key=secrets.token_hex(32))
    ruleset = load_ruleset(folder, settings.rule_delays())
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.ruleset_info.labels(ruleset.ruleset_id).set(1)
    pipeline = SimpleNamespace(
        settings=settings,
        registry=registry,  # for the tests' reads
        metrics=metrics,
        customer=SimpleNamespace(ctx=step_context(settings, ruleset)),
    )
    app: Any = SimpleNamespace(pipeline=pipeline)
    return WorkerRuntime(app), pipeline


def test_configmap_swap_is_seen_and_reloaded(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "rules")
    volume.publish(shipped_rules())
    runtime, pipeline = runtime_over(volume.root)
    first = pipeline.customer.ctx.ruleset
    assert runtime.check_rules() is None  # nothing changed since the load

    volume.publish({**shipped_rules(), "extra.yaml": EXTRA})
    assert runtime.check_rules() is True
    second = pipeline.customer.ctx.ruleset
    assert second.ruleset_id != first.ruleset_id
    assert "watched_rule" in {rule.id for rule in second.rules}
    assert runtime.check_rules() is None  # reloaded once per change

    volume.publish(shipped_rules())  # the extra file leaves the map
    assert runtime.check_rules() is True
    assert pipeline.customer.ctx.ruleset.ruleset_id == first.ruleset_id


def test_bad_update_is_refused_once_and_the_old_set_runs_on(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "rules")
    volume.publish(shipped_rules())
    runtime, pipeline = runtime_over(volume.root)
    running = pipeline.customer.ctx.ruleset
    volume.publish({**shipped_rules(), "bad.yaml": "rules: []\n"})
    assert runtime.check_rules() is False
    assert pipeline.customer.ctx.ruleset is running
    assert runtime.check_rules() is None  # not retried (and logged) every poll
    volume.publish({**shipped_rules(), "extra.yaml": EXTRA})  # fixed
    assert runtime.check_rules() is True
    assert pipeline.customer.ctx.ruleset is not running


def test_the_polling_loop_reloads_without_a_signal(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "rules")
    volume.publish(shipped_rules())
    runtime, pipeline = runtime_over(volume.root)
    first = pipeline.customer.ctx.ruleset.ruleset_id

    async def scenario() -> str:
        watch = asyncio.ensure_future(runtime.watch_rules(interval=0.01))
        await asyncio.sleep(0.05)
        volume.publish({**shipped_rules(), "extra.yaml": EXTRA})
        for _ in range(200):
            await asyncio.sleep(0.01)
            if pipeline.customer.ctx.ruleset.ruleset_id != first:
                break
        watch.cancel()
        ruleset_id: str = pipeline.customer.ctx.ruleset.ruleset_id
        return ruleset_id

    assert asyncio.run(scenario()) != first
    reloads = pipeline.registry.get_sample_value("omni_ruleset_reloads_total", {"result": "ok"})
    assert reloads == 1.0


def test_fingerprint_follows_content_not_the_link(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "rules")
    volume.publish({"a.yaml": EXTRA})
    before = rules_fingerprint(volume.root)
    volume.publish({"a.yaml": EXTRA})  # same content, new folder: no reload needed
    assert rules_fingerprint(volume.root) == before
    volume.publish({"a.yaml": EXTRA.replace("priority: 5", "priority: 6")})
    assert rules_fingerprint(volume.root) != before
    assert rules_fingerprint(tmp_path / "missing") is None  # unreadable now: look again later
