"""A channel backend installs the contract package alone and publishes with it.

A fresh virtualenv gets only ``pip install ./contract`` (a real, non-editable
wheel): the worker's packages and dependencies must be missing there, and the SDK
and ``python -m producers publish`` must validate and deliver events to the
session's broker. pip's cache is used, so after the first run this takes seconds
plus the venv (about 30 s in all on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from devstack.provision import Provided
from processors.settings import Settings
from processors.topics import ensure_topics
from producers.simulator import make_event
from schemas import SAMPLES_ROOT, iter_schemas
from tests.integration.harness import ROOT, TopicReader, make_settings

pytestmark = pytest.mark.integration

#: Imports only the worker's install has: the contract must not pull them in.
WORKER_ONLY = ("faust", "processors", "rocksdict", "pydantic_settings", "cel", "typer", "bench")

#: Run in the contract venv: the SDK publishes one event and refuses a bad one; one-tap
#: tokens and coupon claims import. Prints what the test checks.
SDK_SCRIPT = """
import json, sys, time
from producers.actions import ActionTokenKeys, action_token, verify_action_token
from producers.config import ProducerSettings
from producers.sdk import CouponClaims, EventRejected, TouchpointProducer
from schemas import SAMPLES_ROOT, iter_schemas

good, bad = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"schemas": len(list(iter_schemas())),
       "samples": sum(1 for p in SAMPLES_ROOT.rglob("*") if p.is_file())}
with TouchpointProducer(ProducerSettings.from_env()) as producer:
    producer.publish(good)
    try:
        producer.check(bad)
    except EventRejected as rejected:
        out["rejected"] = rejected.reason
out["delivered"] = producer.delivered
keys = ActionTokenKeys.from_env()  # the worker's OMNI_ACTION_TOKEN_KEY, as a backend reads it
token = action_token(keys.current, "t1", "c1", "accept", time.time() + 60)
out["token"] = verify_action_token(keys, token, "t1", "c1", time.time())
out["claims"] = CouponClaims.__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def contract_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding only the contract package (and its deps)."""
    venv = tmp_path_factory.mktemp("contract-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "./contract"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


@pytest.fixture
def target(kafka: Provided, tmp_path: Path) -> Settings:
    """Topics in a fresh namespace on the session broker (no Redis, no worker needed)."""
    settings = make_settings(kafka.address, "redis://127.0.0.1:1/0", tmp_path / "unused")
    ensure_topics(settings)
    return settings


def clean_env(**omni: str) -> dict[str, str]:
    """This environment without the dev venv's traces, plus ``omni`` as OMNI_* variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("OMNI_")
    }
    return {**env, **{f"OMNI_{name.upper()}": value for name, value in omni.items()}}


def run_in_venv(
    python: Path, args: list[str], cwd: Path, env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    # -I and a working directory outside the checkout: only the venv's site-packages
    # are importable, never the repository's folders.
    return subprocess.run(
        [str(python), "-I", *args], cwd=cwd, env=env, input=stdin, capture_output=True, timeout=120
    )


def test_the_worker_is_not_installed_with_the_contract(
    contract_python: Path, tmp_path: Path
) -> None:
    for module in WORKER_ONLY:
        done = run_in_venv(contract_python, ["-c", f"import {module}"], tmp_path, clean_env())
        assert done.returncode != 0, f"{module} imports in the contract-only venv"
        assert b"ModuleNotFoundError" in done.stderr, done.stderr


def test_the_contract_alone_validates_and_publishes(
    contract_python: Path, target: Settings, tmp_path: Path
) -> None:
    key = target.action_token_key
    assert key is not None
    env = clean_env(
        kafka_bootstrap=target.kafka_bootstrap,
        topic_namespace=target.topic_namespace,
        action_token_key=key.get_secret_value(),
    )
    good = make_event("alone-1", "branch", "branch.visit", {"branch_id": "b1"})
    bad = make_event("alone-2", "web", "page.viewed", {"category": "no url"})
    done = run_in_venv(
        contract_python,
        ["-c", SDK_SCRIPT, json.dumps(good), json.dumps(bad)],
        tmp_path,
        env,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["rejected"] == "schema_violation"
    assert out["delivered"] == 1
    assert out["token"] == "accept" and out["claims"] == "CouponClaims"
    # The wheel carries every schema and sample (schema files have no suffix).
    assert out["schemas"] == len(list(iter_schemas()))
    assert out["samples"] == sum(1 for p in SAMPLES_ROOT.rglob("*") if p.is_file())

    # The documented command, from stdin: the good line goes out, the bad one is reported.
    cli_event = make_event("alone-3", "web", "page.viewed", {"url": "https://shop.example/a"})
    lines = orjson.dumps(cli_event) + b"\n" + orjson.dumps(bad) + b"\n"
    cli = run_in_venv(
        contract_python, ["-m", "producers", "publish", "--file", "-"], tmp_path, env, lines
    )
    assert cli.returncode == 1, cli.stderr.decode()
    report = cli.stderr.decode()
    assert "line 2: schema_violation: " in report
    assert "accepted: 1  rejected: 1" in report

    for channel, event in (("branch", good), ("web", cli_event)):
        reader = TopicReader(target, target.touchpoint_topic(channel))
        try:
            (record,) = reader.wait_for(lambda r, e=event: r["event_id"] == e["event_id"])
            assert record == event
            assert reader.keys[reader.records.index(record)] == event["customer_id"].encode()
        finally:
            reader.close()
