"""Property: whatever arrives, no rolling 24 h or 7 d window gets more than its cap.

A small simulation of the customer agent: batches of marketing candidates at
increasing clock times (event times up to an hour late), deferred triggers kept as
durable timers and re-checked at their release time, declines and ignores in
between, pruning as it goes, all on top of a random prior history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from processors.domain.contact import (
    DECLINED,
    DEFERRED,
    EMITTED,
    IGNORED,
    SUPPRESSED,
    Candidate,
    ContactPolicy,
    ContactState,
    check_release,
    decide,
    prune,
    record_response,
    record_sent,
)
from processors.domain.policy import DAY
from processors.domain.timers import Timer, pop_due, schedule

HOUR = 3600.0
WEEK = 7 * DAY
START = 1_790_000_000.0
OFFERS = ("roaming", "travel", "savings")
ZONES = (None, "UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Auckland")


@dataclass(frozen=True)
class Batch:
    gap: float
    lateness: float
    zone: str | None
    candidates: list[dict[str, Any]]
    responses: list[tuple[str, str]]
    consent_at_release: bool


candidates = st.fixed_dictionaries(
    {
        "offer_type": st.sampled_from(OFFERS),
        "channel": st.sampled_from(("sms", "push", "email", "mobile")),
        "priority": st.integers(0, 3),
        "value": st.floats(0, 100, allow_nan=False),
        "ttl": st.one_of(st.none(), st.floats(60, 3 * DAY)),
        "cooldown": st.one_of(st.none(), st.sampled_from((HOUR, DAY))),
        "eligible": st.sampled_from((True, True, True, False)),
        "consent_granted": st.sampled_from((True, True, True, False)),
    }
)

batches = st.builds(
    Batch,
    gap=st.one_of(st.floats(0, 2 * HOUR), st.floats(0, 2 * DAY)),
    lateness=st.one_of(st.just(0.0), st.floats(0, HOUR)),
    zone=st.sampled_from(ZONES),
    candidates=st.lists(candidates, min_size=1, max_size=4),
    responses=st.one_of(
        st.just([]),
        st.lists(
            st.tuples(st.sampled_from(OFFERS), st.sampled_from((DECLINED, IGNORED))), max_size=2
        ),
    ),
    consent_at_release=st.sampled_from((True, True, False)),
)

policies = st.builds(
    ContactPolicy,
    frequency_cap_day=st.integers(1, 4),
    frequency_cap_week=st.integers(1, 12),
    release_spread_seconds=st.sampled_from((0, 600, 3600)),
)


def windows_respected(
    history: list[float], new: list[float], length: float, cap: int
) -> tuple[bool, str]:
    """Every window ``[a, a + length)`` holding a new send holds at most ``cap`` sends.

    History may itself break the caps (it is random): windows of history alone are
    not ours to judge. Checking windows that start at a send is enough.
    """
    everything = sorted(history + new)
    for start in everything:
        inside_new = [t for t in new if start <= t < start + length]
        if not inside_new:
            continue
        inside = [t for t in everything if start <= t < start + length]
        if len(inside) > cap:
            return False, f"{len(inside)} sends in [{start}, {start + length}): {inside}"
    return True, ""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=policies,
    history=st.lists(st.floats(0, 10 * DAY), max_size=12),
    past_responses=st.lists(
        st.tuples(st.sampled_from(OFFERS), st.sampled_from((DECLINED, IGNORED)), st.floats(0, 40)),
        max_size=4,
    ),
    run=st.lists(batches, min_size=1, max_size=40),
)
def test_caps_hold_in_every_rolling_window(
    policy: ContactPolicy,
    history: list[float],
    past_responses: list[tuple[str, str, float]],
    run: list[Batch],
) -> None:
    contact = ContactState()
    # A prior history no larger than the week cap (a real one obeys the caps).
    prior = sorted(START - offset for offset in history)[-policy.frequency_cap_week :]
    for at in prior:
        record_sent(contact, "old", at)
    for offer, kind, days_ago in past_responses:
        record_response(contact, offer, kind, START - days_ago * DAY, policy)

    cooldowns: dict[str, float] = {}
    timers: list[dict[str, Any]] = []
    consent_at_release = True
    sent: list[float] = []
    outcomes: dict[str, int] = {}

    def release_due(clock: float) -> None:
        for timer in pop_due(timers, clock):
            cand = Candidate.from_dict(timer.data["candidate"])
            verdict = check_release(contact, cand, timer.due_at, consent_at_release, policy)
            outcomes[verdict.outcome] = outcomes.get(verdict.outcome, 0) + 1
            event(f"release {verdict.outcome} {verdict.reasons}")
            if verdict.sends:
                record_sent(contact, cand.offer_type, timer.due_at, policy)
                sent.append(timer.due_at)

    clock = START
    for number, batch in enumerate(run):
        clock += batch.gap
        release_due(clock)
        consent_at_release = batch.consent_at_release
        event_time = clock - batch.lateness
        for offer, kind in batch.responses:
            record_response(contact, offer, kind, event_time, policy)
        cands = [
            Candidate(
                rule_id=f"rule-{i}",
                trigger_id=f"trigger-{number}-{i}",
                offer_type=spec["offer_type"],
                channel=spec["channel"],
                priority=spec["priority"],
                value=spec["value"],
                expires_at=None if spec["ttl"] is None else event_time + spec["ttl"],
                cooldown_key=None if spec["cooldown"] is None else f"rule-{i}",
                cooldown_seconds=spec["cooldown"],
                eligible=spec["eligible"],
                consent_granted=spec["consent_granted"],
            )
            for i, spec in enumerate(batch.candidates)
        ]
        verdicts = decide(contact, cands, event_time, clock, batch.zone, cooldowns, policy)
        assert len(verdicts) == len(cands)
        assert sum(v.outcome in (EMITTED, DEFERRED) for v in verdicts) <= 1
        for cand, verdict in zip(cands, verdicts, strict=True):
            assert (verdict.outcome == SUPPRESSED) == bool(verdict.reasons)
            assert len(verdict.reasons) <= 1
            outcomes[verdict.outcome] = outcomes.get(verdict.outcome, 0) + 1
            if verdict.outcome == SUPPRESSED:
                event(f"suppressed {verdict.reasons[0]}")
                continue
            if cand.cooldown_key is not None:
                cooldowns[cand.cooldown_key] = max(cooldowns.get(cand.cooldown_key, 0), event_time)
            if verdict.outcome == EMITTED:
                record_sent(contact, cand.offer_type, event_time, policy)
                sent.append(event_time)
            else:
                assert verdict.release_at is not None and verdict.release_at > clock
                payload = {"candidate": cand.to_dict()}
                timer = Timer.new("deferred_trigger", "c1", cand.trigger_id, verdict.release_at)
                assert schedule(timers, Timer(timer.timer_id, timer.kind, timer.due_at, payload))
        prune(contact, clock, policy)
    release_due(float("inf"))

    for length, cap in ((DAY, policy.frequency_cap_day), (WEEK, policy.frequency_cap_week)):
        ok, why = windows_respected(prior, sent, length, cap)
        assert ok, why
    # The record stays bounded.
    assert len(contact.sent) <= 2 * policy.frequency_cap_week + policy.frequency_cap_day
