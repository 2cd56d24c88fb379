"""The short chaos run (``python -m bench.chaos --profile short``) inside ``make test``.

3,000 events of 300 customers in the bench's mix plus duplicates and 5 % poison of
every kind, produced at 50/s while the worker is SIGKILLed twice (once right after
it becomes ready, with a backlog) and Redis is stopped for 5 s; then everything
is scored against the in-process oracle (bench/chaos_oracle.py). No timing is
asserted: the fault recoveries are figures, printed with ``-s``.

It uses the session's broker and its own ``redis-server`` (SIGSTOP must not reach
a Redis other tests or a developer share).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import SHORT, figures, run_chaos, write_results
from devstack.ports import free_port
from devstack.provision import Provided
from devstack.redis import LocalRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    with LocalRedis(free_port(), tmp_path / "redis") as server:
        yield server


# Start-up, 63 s of producing, three faults and their recoveries, convergence, scoring.
@pytest.mark.timeout(480)
def test_short_chaos_run_loses_nothing(
    kafka: Provided, own_redis: LocalRedis, tmp_path: Path
) -> None:
    result = run_chaos(SHORT, kafka.address, own_redis, None, tmp_path / "chaos")
    write_results(result, tmp_path / "chaos-result")  # chaos-result.md: the whole report
    print(f"\n{figures(result)}\n(report: {tmp_path / 'chaos-result.md'})")

    triggers, states, poison = result["triggers"], result["states"], result["poison"]
    assert result["convergence"]["converged"], result["convergence"]
    assert triggers["lost"] == 0, triggers["lost_examples"]
    assert triggers["duplicates_after_dedup"] == 0, triggers
    assert triggers["unexpected"] == 0, triggers["unexpected_examples"]
    assert states["differing"] == 0 and states["missing"] == 0, states
    assert poison["deadlettered"] == poison["sent"], poison["by_kind"]
    assert not poison["valid_deadlettered"], poison["valid_deadlettered"]
    assert not result["unexpected_stops"], result["unexpected_stops"]
    redis_vs_state = result["read_model"]["vs_worker_state"]
    wrong_keys = redis_vs_state["differing"] + redis_vs_state["missing"] + redis_vs_state["extra"]
    assert wrong_keys == 0, redis_vs_state
    assert result["time"]["held"], result["time"]
