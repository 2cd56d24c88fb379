"""The chaos run's pure parts: the generator, the oracle and its scores, the fault plan."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import chaos_oracle as oc
from bench.chaos import customer_views, stop_excerpt
from bench.chaos_faults import (
    FAILOVER,
    FAULT_KINDS,
    FULL,
    KILL_AFTER_READY,
    REDIS_STOP,
    SECOND_WORKER_KILL,
    SECOND_WORKER_PAUSE_TERM,
    SECOND_WORKER_TERM,
    SHORT,
    WORKER_KILL,
    OffsetSample,
    incarnation_report,
    longest_stall,
    plan_faults,
    recovered,
)
from bench.chaos_workload import (
    DUPLICATE,
    HUGE_KEY_BYTES,
    OPTIONAL_POISON_KINDS,
    POISON_KINDS,
    VALID,
    generate,
    poison_count,
    poison_kinds_for,
)
from processors.domain.step import step
from processors.settings import Settings
from schemas import EventValidator, Rejection

START = 1_700_000_000.0


def small(seed: int = 7, start: float = START) -> Any:
    return generate(2_000, 100, seed, start, 100.0, kinds=POISON_KINDS + OPTIONAL_POISON_KINDS)


# --- the generator ------------------------------------------------------------------------------


def test_same_seed_and_start_same_bytes_other_seed_other_bytes() -> None:
    a, b, c = small(), small(), small(seed=8)
    assert [(r.channel, r.key, r.value, r.kind) for r in a.records] == [
        (r.channel, r.key, r.value, r.kind) for r in b.records
    ]
    assert [r.value for r in a.records] != [r.value for r in c.records]


def test_counts_poison_share_and_every_kind() -> None:
    workload = generate(10_000, 500, 3, START, 100.0)
    kinds = Counter(r.kind for r in workload.records)
    assert kinds[VALID] == 10_000
    assert kinds[DUPLICATE] == 50
    poison = sum(n for k, n in kinds.items() if k not in (VALID, DUPLICATE))
    assert poison == poison_count(10_000, 0.05)
    assert poison / (poison + 10_000) == pytest.approx(0.05, abs=0.001)
    assert set(POISON_KINDS) <= set(kinds)
    assert not set(OPTIONAL_POISON_KINDS) & set(kinds)  # not by default
    assert len(POISON_KINDS) >= 8
    # A 1 MB key costs the broker a megabyte: a few, not hundreds.
    assert 1 <= kinds["huge_key"] <= poison // 1000 + 1
    assert len(workload.customers) == 500
    assert {r.customer for r in workload.records if r.kind == VALID} == set(workload.customers)


def test_every_customer_starts_with_a_telco_home_profile() -> None:
    workload = small()
    first = workload.records[: len(workload.customers)]
    assert all(r.kind == VALID and r.channel == "telco" for r in first)
    assert all(b'"home_country"' in (r.value or b"") for r in first)


def test_occurred_at_is_the_planned_send_time() -> None:
    workload = small()
    for record in workload.records[:50]:
        if record.kind == VALID:
            event = orjson.loads(record.value or b"")
            assert oc_time(event["occurred_at"]) == pytest.approx(workload.send_at(record.index))


def oc_time(text: str) -> float:
    from processors.domain.model import parse_time

    return parse_time(text)


def test_valid_events_and_duplicates_pass_the_contract_check() -> None:
    # A start near now: the validator dead-letters events far in the future or past.
    import time

    workload = generate(1_500, 100, 5, time.time(), 100.0)
    validator = EventValidator()
    for record in workload.records:
        if record.kind in (VALID, DUPLICATE):
            result = validator.check(record.channel, record.key, record.value)
            assert not isinstance(result, Rejection), (record, result)


@pytest.mark.parametrize(
    "kind",
    [
        "not_json",
        "not_an_object",
        "unknown_type",
        "schema_violation",
        "channel_mismatch",
        "key_mismatch",
        "missing_key",
        "too_large",
    ],
)
def test_contract_poison_is_rejected_by_the_validator(kind: str) -> None:
    workload = small()
    validator = EventValidator()
    records = [r for r in workload.records if r.kind == kind]
    assert records
    for record in records:
        assert isinstance(validator.check(record.channel, record.key, record.value), Rejection)


def test_poison_shapes() -> None:
    workload = small()
    by_kind = {r.kind: r for r in workload.records}
    assert by_kind["missing_key"].key is None
    assert len(by_kind["huge_key"].key or b"") == HUGE_KEY_BYTES
    assert len(by_kind["too_large"].value or b"") > 64 * 1024
    assert b"9999-12-31T00:00:00Z" in (by_kind["future_coupon"].value or b"")
    assert b'"valid_hours":8760' in (by_kind["future_coupon"].value or b"")
    assert b"2099-" in (by_kind["future_consent"].value or b"")
    assert b"1900-" in (by_kind["ancient_coupon"].value or b"")
    colon = orjson.loads(by_kind["colon_id"].value or b"")
    assert ":" in colon["customer_id"] and by_kind["colon_id"].key == colon["customer_id"].encode()
    mismatch = orjson.loads(by_kind["key_mismatch"].value or b"")
    assert by_kind["key_mismatch"].key != colon["customer_id"].encode()
    assert (by_kind["key_mismatch"].key or b"").decode() != mismatch["customer_id"]
    assert (
        by_kind["channel_mismatch"].channel
        != orjson.loads(by_kind["channel_mismatch"].value or b"")["channel"]
    )


def test_poison_kinds_cover_every_kind_and_need_enough_records() -> None:
    kinds = poison_kinds_for(30, POISON_KINDS, random.Random(1))
    assert len(kinds) == 30 and set(kinds) == set(POISON_KINDS)
    with pytest.raises(ValueError, match="cannot cover"):
        poison_kinds_for(5, POISON_KINDS, random.Random(1))


# --- the oracle ---------------------------------------------------------------------------------


def _settings() -> Settings:
    return Settings(
        max_event_age_seconds=86_400.0, quiet_hours_start="00:00", quiet_hours_end="00:00"
    )


def _ctx() -> Any:
    from processors.app import step_context
    from processors.rulebook import load_ruleset

    settings = _settings()
    return step_context(settings, load_ruleset(Path(settings.rules_dir), settings.rule_delays()))


def _forwarded(workload: Any) -> list[oc.Forwarded]:
    """The valid records (and duplicates) in produce order, as if one partition held them;
    identified events as the identity step forwards them (customer id set, her key)."""
    out = []
    for r in workload.records:
        if r.kind not in (VALID, DUPLICATE):
            continue
        value = r.value or b""
        event = orjson.loads(value)
        if "customer_id" not in event:
            value = orjson.dumps({**event, "customer_id": r.customer})
        out.append(oc.Forwarded(0, r.index, r.customer.encode(), value))
    return out


def test_some_telco_events_name_the_customer_by_msisdn_only() -> None:
    workload = generate(600, 40, 2, START, 100.0)
    identified = [r for r in workload.valid if r.key and r.key.startswith(b"msisdn:")]
    assert identified and all(r.channel == "telco" for r in identified)
    for record in identified:
        event = orjson.loads(record.value or b"")
        assert "customer_id" not in event
        assert record.key == f"msisdn:{event['identifiers']['msisdn']}".encode()
    homes = [orjson.loads(r.value or b"") for r in workload.valid[:40]]
    assert all(h["type"] == "profile.updated" and h["identifiers"]["msisdn"] for h in homes)


def test_customer_order_keeps_the_first_copy_and_names_the_rest() -> None:
    workload = generate(600, 40, 2, START, 100.0)
    valid_ids = {r.event_id: r.customer for r in workload.records if r.kind == VALID}
    forwarded = _forwarded(workload)
    foreign = orjson.dumps({"event_id": "px-colon_id-1", "customer_id": "x:y"})
    order, other = oc.customer_order(
        [*forwarded, oc.Forwarded(0, 10**6, b"x:y", foreign)], valid_ids
    )
    assert sum(len(v) for v in order.values()) == 600
    assert other == Counter({"copies": workload.kinds[DUPLICATE], "foreign": 1})
    ranks = {
        r.event_id: (f"{r.channel}|{r.key!r}", r.index)
        for r in workload.records
        if r.kind == VALID
    }
    assert oc.ingest_order_violations(order, ranks) == []
    swapped = {c: list(reversed(v)) for c, v in order.items()}
    assert oc.ingest_order_violations(swapped, ranks)


def test_oracle_one_event_per_call_equals_the_workers_batches() -> None:
    # The worker steps a customer's events in batches with one `now` per batch; the
    # oracle one event at a time with now = occurred_at + 1 s. With time made
    # irrelevant they must agree on everything but the processing-time fields.
    workload = generate(800, 30, 4, START, 100.0)
    valid_ids = {r.event_id: r.customer for r in workload.records if r.kind == VALID}
    order, _ = oc.customer_order(_forwarded(workload), valid_ids)
    ctx = _ctx()
    end = START + 3_600.0
    oracle = oc.run_oracle(order, ctx, end)
    assert oracle.events == 800 and oracle.timers_due == 0
    assert oracle.triggers and oracle.decisions
    from processors.domain.model import Event

    for customer, records in order.items():
        events = [Event.from_record(orjson.loads(r.value), 0.0) for r in records]
        half = len(events) // 2
        state, first = step(None, events[:half], ctx, events[half - 1].occurred_at + 30, [])
        state, second = step(state, events[half:], ctx, events[-1].occurred_at + 30, first.timeline)
        stored = orjson.loads(orjson.dumps(state))
        assert oc.state_diff(oracle.states[customer], stored) == []
        assert second.timeline == oracle.timelines[customer]
        for out in (first, second):
            for trigger in out.triggers:
                assert (
                    oc.without(trigger.to_record(), ["created_at"])
                    == oracle.triggers[trigger.trigger_id]
                )


# --- scores -------------------------------------------------------------------------------------


def _trigger(
    tid: str, event: str = "e1", rule: str = "roaming_offer", **extra: Any
) -> dict[str, Any]:
    return {
        "trigger_id": tid,
        "rule": rule,
        "customer_id": "c1",
        "source_event_id": event,
        "type": rule,
        "payload": {"country": "FR"},
        "created_at": "2026-01-01T00:00:00.000Z",
        **extra,
    }


def test_score_triggers() -> None:
    expected = {
        t["trigger_id"]: oc.without(t, ["created_at"])
        for t in (_trigger("t1", "e1"), _trigger("t2", "e2"), _trigger("t3", "e3"))
    }
    received = [
        _trigger("t1", "e1"),
        {**_trigger("t1", "e1"), "created_at": "2026-01-01T00:00:09.000Z"},  # a replayed copy
        _trigger("t2", "e2", payload={"country": "DE"}),  # other content
        _trigger("t9", "e3"),  # a second id for the offer t3 was (t3 itself lost)
        _trigger("t8", "e8"),
    ]
    score = oc.score_triggers(expected, received)
    assert score.lost == ["t3"]
    assert score.unexpected == ["t8", "t9"]
    assert score.duplicates_raw == 1
    assert score.duplicates_after_dedup == 0  # t9 is one id per offer: unexpected, not a dup
    assert score.content_differs == ["t2"]
    assert (score.records, score.distinct, score.expected) == (5, 4, 3)
    twice = oc.score_triggers(expected, [_trigger("t1", "e1"), _trigger("t1b", "e1")])
    assert twice.duplicates_after_dedup == 1
    conflicting = oc.score_triggers(
        expected, [_trigger("t1", "e1"), _trigger("t1", "e1", payload={"country": "ES"})]
    )
    assert conflicting.duplicates_after_dedup == 1


def test_score_decisions() -> None:
    d = {"decision_id": "d1", "outcome": "emitted", "reasons": [], "decided_at": "x"}
    expected = {"d1": oc.without(d, ["decided_at"]), "d2": {"decision_id": "d2"}}
    score = oc.score_decisions(
        expected,
        [d, {**d, "decided_at": "y"}, {**d, "outcome": "suppressed"}, {"decision_id": "d3"}],
    )
    assert score.lost == ["d2"] and score.unexpected == ["d3"] and score.differing == ["d1"]


def test_score_states_ignores_processing_time_only() -> None:
    base = {"customer_id": "c1", "seen_ids": [1, 2], "seen_days": [20000, 20000], "traits": {}}
    same_but_day = {**base, "seen_days": [20001, 20001]}
    other = {**base, "traits": {"home_country": "FR"}}
    score = oc.score_states(
        {"c1": base, "c2": base, "c3": base}, {"c1": same_but_day, "c2": other, "x:y": base}
    )
    assert score.differing == {"c2": ["traits"]}
    assert score.missing == ["c3"] and score.extra == ["x:y"]
    assert score.wrong == 2


def test_score_read_model() -> None:
    expectation = oc.ReadModelExpectation(
        strings={"omni:profile:c1": {"a": 1}, "omni:profile:c2": {"a": 2}, "omni:cart:c1": None},
        hashes={"omni:stats:r": {"sms|p0": {"emitted": 1.0}, "sms|p1": {"emitted": 2.0}}},
    )
    score = oc.score_read_model(
        expectation,
        strings={
            "omni:profile:c1": b'{"a":1}',
            "omni:profile:c2": b'{"a":3}',
            "omni:cart:c1": b"{}",
        },
        hashes={"omni:stats:r": {"sms|p0": b'{"emitted":1.0}', "sms|p9": b"{}"}},
        present=[
            "omni:profile:c1",
            "omni:profile:c2",
            "omni:cart:c1",
            "omni:stats:r",
            "omni:profile:x:y",
            "omni:coupon:C1:claim",
        ],
    )
    assert score.differing == ["omni:profile:c2"]
    assert score.missing == ["omni:stats:r sms|p1"]
    assert score.extra == ["omni:cart:c1", "omni:profile:x:y", "omni:stats:r sms|p9"]


def test_score_poison_counts_each_source_once() -> None:
    sources: dict[oc.Source, str] = {
        ("t.atm", 0, 1): "key_mismatch",
        ("t.atm", 0, 2): "huge_key",
        ("t.atm", 0, 3): "valid",
        ("t.tv", 1, 7): "future_coupon",
    }
    letters = [
        {"reason": "key_mismatch", "source": {"topic": "t.atm", "partition": 0, "offset": 1}},
        {"reason": "key_mismatch", "source": {"topic": "t.atm", "partition": 0, "offset": 1}},
        {"reason": "processing_error", "source": {"topic": "t.atm", "partition": 0, "offset": 3}},
        {"reason": "", "source": {"topic": "t.tv", "partition": 1, "offset": 7}},
        {"reason": "not_json", "source": {"topic": "t.web", "partition": 0, "offset": 0}},
    ]
    score = oc.score_poison(sources, letters)
    assert score.sent == {"key_mismatch": 1, "huge_key": 1, "future_coupon": 1}
    assert score.deadlettered == {"key_mismatch": 1, "huge_key": 0, "future_coupon": 0}
    assert score.valid_deadlettered == {"processing_error": 1}
    assert score.unknown_deadletters == 1
    assert score.share == pytest.approx(1 / 3)


def test_percentiles_nearest_rank() -> None:
    assert oc.percentiles([]) == {"n": 0, "p50": None, "p95": None, "max": None}
    values = [float(v) for v in range(1, 21)]
    assert oc.percentiles(values) == {"n": 20, "p50": 10.0, "p95": 19.0, "max": 20.0}


# --- faults -------------------------------------------------------------------------------------


def test_fault_plan_is_seeded_and_complete() -> None:
    plan = plan_faults(FULL, 7, session_timeout=10.0)
    assert plan == plan_faults(FULL, 7, session_timeout=10.0)
    assert plan != plan_faults(FULL, 8, session_timeout=10.0)
    # Every kind but the failover profile's clean leave (the full run has a SIGTERM leave).
    assert set(FAULT_KINDS) - {SECOND_WORKER_TERM} == {f.kind for f in plan}
    assert all(20.0 <= f.gap <= 60.0 for f in plan)
    assert sum(f.kind in (WORKER_KILL, KILL_AFTER_READY) for f in plan) >= 6
    pause = next(f for f in plan if f.kind == SECOND_WORKER_PAUSE_TERM)
    assert pause.params["pause"] > 10.0
    after_ready = [f for f in plan if f.kind == KILL_AFTER_READY]
    assert all(0.3 <= f.params["after_ready"] <= 2.0 for f in after_ready)


def test_failover_plan_leaves_once_then_kills_the_second_worker_three_times() -> None:
    plan = plan_faults(FAILOVER, 7, 6.0)
    assert [f.kind for f in plan] == [SECOND_WORKER_TERM] + [SECOND_WORKER_KILL] * 3
    assert all(12.0 <= f.params["work"] <= 18.0 for f in plan)
    # The test's run: one leave, one kill.
    short = plan_faults(FAILOVER, 7, 6.0, allowed=(SECOND_WORKER_TERM, SECOND_WORKER_KILL))
    assert len(short) == 4


def _sample(at: float, committed: dict[tuple[str, int], int], high: int = 100) -> OffsetSample:
    return OffsetSample(at, committed, {tp: high for tp in committed})


def test_longest_stall_is_the_longest_a_waiting_partition_did_not_commit() -> None:
    a, b = ("t", 0), ("t", 1)
    samples = [
        _sample(0.0, {a: 1, b: 1}),
        _sample(1.0, {a: 2, b: 1}),
        _sample(2.0, {a: 3, b: 1}),
        _sample(7.5, {a: 3, b: 1}),
        _sample(8.0, {a: 4, b: 2}),  # b stood still from 0.0 to 8.0, a from 2.0 to 8.0
        _sample(9.0, {a: 5, b: 3}),
    ]
    assert longest_stall(samples, 0.0, 10.0) == 8.0
    assert longest_stall(samples, 1.5, 10.0) == 6.0, "only the window counts"
    assert longest_stall([], 0.0, 1.0) == 0.0


def test_a_partition_with_nothing_to_do_is_not_stalled() -> None:
    a = ("t", 0)
    samples = [_sample(t, {a: 100}) for t in (0.0, 5.0, 10.0)]
    assert longest_stall(samples, 0.0, 10.0) == 0.0


def test_short_plan_only_allowed_kinds() -> None:
    plan = plan_faults(SHORT, 7, 60.0, allowed=(WORKER_KILL, KILL_AFTER_READY, REDIS_STOP))
    assert [f.kind for f in plan] == [WORKER_KILL, KILL_AFTER_READY, REDIS_STOP]
    assert plan_faults(FULL, 7, 60.0, allowed=(REDIS_STOP,))[0].params["stopped"] == 45.0


def test_offsets_pending_lag_and_recovery() -> None:
    sample = OffsetSample(
        0.0,
        committed={("a", 0): 5, ("a", 1): -1, ("a", 2): -1, ("a", 3): 9},
        high={("a", 0): 8, ("a", 1): 0, ("a", 2): 4, ("a", 3): 9},
    )
    # An empty partition without a commit has no lag; one with messages has them all.
    assert sample.pending() == {("a", 0): 5, ("a", 2): -1}
    assert sample.lag() == 3 + 4
    later = OffsetSample(1.0, {("a", 0): 6, ("a", 2): -1}, {})
    assert not recovered(sample.pending(), later)
    assert recovered(sample.pending(), OffsetSample(2.0, {("a", 0): 6, ("a", 2): 1}, {}))


# --- what an unexpected stop reports -----------------------------------------------------------


def _info(n: int, pid: int = 1) -> list[str]:
    return [f"[2026-12-02 16:24:20,000] [{pid}] [INFO] [^--Fetcher]: line {i}" for i in range(n)]


CRASHED_START = [
    "===== chaos: worker-1 start #2 at 1796229394.06",
    *_info(50),
    "[2026-12-02 16:24:20,100] [1] [ERROR] [^---CheckpointConsumerThread]: Crashed reason=X",
    "Traceback (most recent call last):",
    '  File "/x/aiokafka/consumer/group_coordinator.py", line 1133, in _do_commit_offsets',
    "    raise first_error",
    "aiokafka.errors.FencedInstanceIdError: [Error 82] FencedInstanceIdError",
    *_info(300),
    "Traceback (most recent call last):",
    '  File "/x/asyncio/base_events.py", line 519, in _check_closed',
    "    raise RuntimeError('Event loop is closed')",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/x/mode/threads.py", line 202, in crash',
    "RuntimeError: Event loop is closed",
    *_info(20),
    "[2026-12-02 16:24:25,552] [1] [INFO] [^Worker]: Closing event loop",
    "[2026-12-02 16:24:25,553] [1] [CRITICAL] [^Worker]: We experienced a crash! Reraising...",
]


def _worker_log(tmp_path: Path) -> Path:
    log = tmp_path / "worker-1.log"
    lines = [
        "",
        "===== chaos: worker-1 start #1 at 1796229386.53",
        *_info(30),
        "[2026-12-02 16:20:00,000] [0] [ERROR] an error of the first start",
        "",
        *CRASHED_START,
        "",
        "===== chaos: worker-1 start #3 at 1796229399.11",
        *_info(10, pid=3),
    ]
    log.write_text("\n".join(lines) + "\n")
    return log


def test_stop_report_has_the_starts_errors_and_tracebacks_not_just_its_tail(
    tmp_path: Path,
) -> None:
    report = incarnation_report(_worker_log(tmp_path), start=2, tail_lines=3)
    lines = report.splitlines()
    assert lines[0] == "===== chaos: worker-1 start #2 at 1796229394.06"
    # The cause, 300 lines before the end, with its whole traceback.
    at = lines.index("Traceback (most recent call last):")
    assert lines[at - 1].endswith("Crashed reason=X")
    assert lines[at + 3] == (
        "aiokafka.errors.FencedInstanceIdError: [Error 82] FencedInstanceIdError"
    )
    # The chained traceback of the shutdown is one block, up to its exception.
    assert "During handling of the above exception, another exception occurred:" in lines
    assert "RuntimeError: Event loop is closed" in lines
    assert lines[-1].endswith("We experienced a crash! Reraising...")
    assert lines[-3].endswith("line 19")  # the last lines follow, without the blank one
    assert not any("line 100" in line for line in lines)  # INFO lines between are not kept
    # Nothing of the other starts.
    assert "an error of the first start" not in report
    assert "start #3" not in report
    assert len(report) < 3_000


def test_stop_report_defaults_to_the_last_start_and_survives_no_markers(tmp_path: Path) -> None:
    log = _worker_log(tmp_path)
    assert incarnation_report(log).splitlines()[0].startswith("===== chaos: worker-1 start #3")
    plain = tmp_path / "plain.log"
    plain.write_text("\n".join(CRASHED_START[1:]) + "\n")
    assert "FencedInstanceIdError: [Error 82]" in incarnation_report(plain)
    assert incarnation_report(tmp_path / "missing.log") == "(no log)"


def test_stop_report_is_bounded_and_keeps_the_traceback_over_error_floods(
    tmp_path: Path,
) -> None:
    flood = [f"[2026-12-02 16:24:21,000] [1] [ERROR] Unable connect to {i}" for i in range(3000)]
    log = tmp_path / "flood.log"
    log.write_text("\n".join([*flood[:1500], *CRASHED_START[51:56], *flood[1500:]]) + "\n")
    report = incarnation_report(log, max_chars=4_000)
    assert len(report) <= 4_100
    assert "FencedInstanceIdError: [Error 82]" in report
    assert "Unable connect to 0" in report  # the first errors stay
    assert "Unable connect to 2999" in report  # so does the end


def test_markdown_excerpt_keeps_the_beginning_and_the_end() -> None:
    report = "\n".join(f"l{i}" for i in range(200))
    excerpt = stop_excerpt(report, head=5, tail=2)
    assert excerpt == ["l0", "l1", "l2", "l3", "l4", "[... 193 lines ...]", "l198", "l199"]
    assert stop_excerpt("a\nb") == ["a", "b"]


def test_the_final_state_is_read_from_either_record_format() -> None:
    from processors.domain.record_codec import encode_record

    new_state, old_state = {"customer_id": "a", "timers": []}, {"customer_id": "b"}
    line = [{"type": "x"}]
    customers = {
        (0, b"a"): encode_record(orjson.dumps(new_state), orjson.dumps(line), None),
        (1, b"b"): orjson.dumps(old_state),  # a record of the previous layout
        (1, b"c"): orjson.dumps({"customer_id": "c"}),  # ... without a timeline
    }
    timelines = {(1, b"b"): orjson.dumps(line)}
    states, lines = customer_views(customers, timelines)
    assert states == {"a": new_state, "b": old_state, "c": {"customer_id": "c"}}
    assert lines == {"a": line, "b": line}
