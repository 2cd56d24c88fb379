"""Failover to a standby (`python -m bench.chaos --profile failover`, shortened).

Two workers with ``OMNI_STANDBY_REPLICAS=1`` and the shipped session timeout (6 s): the
second joins, works, leaves with SIGTERM, joins again, works, and is SIGKILLed and never
restarted. The first must take over its partitions from its standby copies with nothing
lost, duplicated or unexpected against the oracle (bench/chaos_oracle.py); its own RocksDB,
read after the run, must hold every customer's state as the oracle has it. The pauses
(join, clean leave, SIGKILL) are figures, printed with ``-s``, not asserted.

Fixed seed; the session's broker and its own ``redis-server``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import FAILOVER, figures, run_chaos, write_results
from bench.chaos_faults import MEASURES, SECOND_WORKER_KILL
from devstack.ports import free_port
from devstack.provision import Provided
from devstack.redis import LocalRedis

pytestmark = pytest.mark.integration

#: One leave and one kill; input (~6,300 records at 50/s, ~125 s) outlasts both.
CONFIG = dataclasses.replace(FAILOVER, events=6_000, customers=400, seed=11, max_faults=2)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    with LocalRedis(free_port(), tmp_path / "redis") as server:
        yield server


@pytest.mark.timeout(420)
def test_the_survivor_takes_over_from_its_standbys_and_loses_nothing(
    kafka: Provided, own_redis: LocalRedis, tmp_path: Path
) -> None:
    workdir = tmp_path / "chaos"
    result = run_chaos(CONFIG, kafka.address, own_redis, None, workdir)
    write_results(result, tmp_path / "failover-result")
    print(f"\n{figures(result)}\n(report: {tmp_path / 'failover-result.md'})")

    triggers, states = result["triggers"], result["states"]
    assert result["convergence"]["converged"], result["convergence"]
    assert triggers["lost"] == 0, triggers["lost_examples"]
    assert triggers["duplicates_after_dedup"] == 0, triggers
    assert triggers["unexpected"] == 0, triggers["unexpected_examples"]
    # Read from the survivor's RocksDB alone: it holds the dead worker's partitions now.
    assert states["differing"] == 0 and states["missing"] == 0, states
    assert result["decisions"]["lost"] == 0, result["decisions"]
    assert not result["unexpected_stops"], result["unexpected_stops"]
    redis_vs_state = result["read_model"]["vs_worker_state"]
    assert redis_vs_state["differing"] + redis_vs_state["missing"] == 0, redis_vs_state

    # The kill happened mid-stream and the survivor processed every partition again.
    killed = [m for m in result["measured"] if m["label"] == MEASURES[SECOND_WORKER_KILL][1]]
    assert len(killed) == 1 and killed[0]["during_input"], killed
    assert killed[0]["recovery"] is not None, killed
    # The survivor followed the second worker's partitions as a standby before the kill.
    log = (workdir / "worker-1.log").read_text(errors="replace")
    assert "Starting standby partitions" in log
