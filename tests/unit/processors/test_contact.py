"""The marketing contact policy: reasons and their order, caps, pauses, quiet hours."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from processors.domain.contact import (
    DECLINED,
    DEFERRED,
    EMITTED,
    IGNORED,
    RELEASED,
    SUPPRESSED,
    Candidate,
    ContactPolicy,
    ContactState,
    Verdict,
    cap_exceeded,
    check_release,
    decide,
    prune,
    quiet_release_at,
    record_accepted,
    record_response,
    record_sent,
    release_spread,
)
from processors.domain.model import parse_time
from processors.domain.policy import DAY
from processors.domain.reasons import (
    ARBITRATION,
    CONSENT,
    COOLDOWN,
    EXPIRED,
    FREQUENCY_CAP,
    PAUSED,
    PROFILE,
    QUIET_HOURS,
)

HOUR = 3600.0
POLICY = ContactPolicy()
#: A Sunday, 12:00 UTC: outside quiet hours in UTC, Berlin and New York.
NOON = parse_time("2026-11-22T12:00:00Z")


def candidate(rule_id: str = "r1", **overrides: Any) -> Candidate:
    fields: dict[str, Any] = {
        "rule_id": rule_id,
        "trigger_id": f"t-{rule_id}",
        "offer_type": f"offer-{rule_id}",
        "channel": "sms",
        "priority": 1,
        "value": 1.0,
        "expires_at": None,
        "cooldown_key": None,
        "cooldown_seconds": None,
        "eligible": True,
        "consent_granted": True,
        **overrides,
    }
    return Candidate(**fields)


def mail(rule_id: str = "r1") -> Candidate:
    return candidate(rule_id, channel="email")


def decide_one(
    contact: ContactState,
    cand: Candidate,
    at: float = NOON,
    *,
    now: float | None = None,
    tz: str | None = "UTC",
    cooldowns: dict[str, float] | None = None,
    policy: ContactPolicy = POLICY,
) -> Verdict:
    [verdict] = decide(contact, [cand], at, at if now is None else now, tz, cooldowns or {}, policy)
    return verdict


def history(*times: float, offer_type: str = "old") -> ContactState:
    contact = ContactState()
    for at in times:
        record_sent(contact, offer_type, at)
    return contact


def suppressed(reason: str) -> tuple[str, tuple[str, ...]]:
    return (SUPPRESSED, (reason,))


def outcome(verdict: Verdict) -> tuple[str, tuple[str, ...]]:
    return (verdict.outcome, verdict.reasons)


class TestOrder:
    """Every check fails for the worst candidate; fixing them one by one shows the order."""

    def worst(self) -> tuple[ContactState, Candidate, dict[str, float]]:
        contact = history(NOON - 3 * HOUR, NOON - 2 * HOUR, NOON - HOUR)
        record_response(contact, "roaming", DECLINED, NOON - 2 * DAY)
        record_response(contact, "roaming", IGNORED, NOON - DAY)
        cand = candidate(
            offer_type="roaming",
            consent_granted=False,
            eligible=False,
            cooldown_key="k",
            cooldown_seconds=30 * DAY,
            expires_at=NOON + HOUR,
        )
        return contact, cand, {"k": NOON - DAY}

    def test_first_failing_check_is_the_only_reason(self) -> None:
        contact, cand, cooldowns = self.worst()
        late = NOON + 10 * HOUR  # 22:00 UTC: quiet hours, and the trigger expires before 08:00
        steps = [
            (cand, CONSENT),
            (replace(cand, consent_granted=True), PROFILE),
            (replace(cand, consent_granted=True, eligible=True), COOLDOWN),
            (replace(cand, consent_granted=True, eligible=True, cooldown_key=None), PAUSED),
            (
                replace(
                    cand, consent_granted=True, eligible=True, cooldown_key=None, offer_type="x"
                ),
                FREQUENCY_CAP,
            ),
        ]
        for variant, reason in steps:
            verdict = decide_one(contact, variant, NOON + 5 * HOUR, cooldowns=cooldowns)
            assert outcome(verdict) == suppressed(reason)
        free = replace(cand, consent_granted=True, eligible=True, cooldown_key=None, offer_type="x")
        assert outcome(decide_one(ContactState(), free, late)) == suppressed(QUIET_HOURS)

    def test_consent_beats_cooldown(self) -> None:
        cand = candidate(consent_granted=False, cooldown_key="k", cooldown_seconds=DAY)
        verdict = decide_one(ContactState(), cand, cooldowns={"k": NOON - HOUR})
        assert verdict.reasons == (CONSENT,)

    def test_emitted_has_no_reasons(self) -> None:
        verdict = decide_one(ContactState(), candidate())
        assert verdict == Verdict("r1", "t-r1", EMITTED, (), None)
        assert verdict.sends

    def test_decide_changes_nothing(self) -> None:
        contact = history(NOON - HOUR)
        before = contact.to_dict()
        decide(contact, [candidate("a"), candidate("b")], NOON, NOON, "UTC", {}, POLICY)
        assert contact.to_dict() == before


class TestCooldown:
    def cand(self) -> Candidate:
        return candidate(cooldown_key="roaming:FR", cooldown_seconds=30 * DAY)

    def test_inside_the_period_is_suppressed(self) -> None:
        verdict = decide_one(ContactState(), self.cand(), cooldowns={"roaming:FR": NOON - DAY})
        assert outcome(verdict) == suppressed(COOLDOWN)

    def test_period_over_is_allowed(self) -> None:
        last = NOON - 30 * DAY
        verdict = decide_one(ContactState(), self.cand(), cooldowns={"roaming:FR": last})
        assert verdict.outcome == EMITTED

    def test_event_older_than_the_last_emission_is_in_cooldown(self) -> None:
        verdict = decide_one(ContactState(), self.cand(), cooldowns={"roaming:FR": NOON + HOUR})
        assert outcome(verdict) == suppressed(COOLDOWN)
        no_period = replace(self.cand(), cooldown_seconds=0.0)
        verdict = decide_one(ContactState(), no_period, cooldowns={"roaming:FR": NOON + 1})
        assert outcome(verdict) == suppressed(COOLDOWN)

    def test_other_keys_and_missing_settings_do_not_apply(self) -> None:
        cooldowns = {"roaming:ES": NOON - HOUR}
        assert decide_one(ContactState(), self.cand(), cooldowns=cooldowns).outcome == EMITTED
        cooldowns = {"roaming:FR": NOON - HOUR}
        no_key = replace(self.cand(), cooldown_key=None)
        no_period = replace(self.cand(), cooldown_seconds=None)
        assert decide_one(ContactState(), no_key, cooldowns=cooldowns).outcome == EMITTED
        assert decide_one(ContactState(), no_period, cooldowns=cooldowns).outcome == EMITTED


class TestFrequencyCap:
    """On email, so quiet hours never interfere."""

    def test_third_in_a_day_allowed_fourth_suppressed(self) -> None:
        contact = history(NOON - 5 * HOUR, NOON - 4 * HOUR)
        assert decide_one(contact, mail(), NOON).outcome == EMITTED
        record_sent(contact, "x", NOON)
        verdict = decide_one(contact, mail(), NOON + HOUR)
        assert outcome(verdict) == suppressed(FREQUENCY_CAP)

    def test_day_window_is_rolling_not_calendar(self) -> None:
        first = parse_time("2026-11-21T23:00:00Z")
        contact = history(first, first + 0.5 * HOUR, first + 0.75 * HOUR)
        # A new calendar day, but only 1.5 h after the first send.
        just_after_midnight = parse_time("2026-11-22T00:30:00Z")
        assert decide_one(contact, mail(), just_after_midnight).reasons == (FREQUENCY_CAP,)
        assert decide_one(contact, mail(), first + DAY - 1).reasons == (FREQUENCY_CAP,)
        # Exactly 24 h after the first send, it has left the window.
        assert decide_one(contact, mail(), first + DAY).outcome == EMITTED

    def test_week_cap_is_exact_and_rolling(self) -> None:
        # 10 sends over 5 days, at most 2 a day: the day cap never binds.
        start = NOON - 6 * DAY
        sends = [start + d * DAY + h * HOUR for d in range(5) for h in (0, 1)]
        contact = history(*sends)
        assert not cap_exceeded(history(*sends[:-1]), NOON)
        assert decide_one(contact, mail(), NOON).reasons == (FREQUENCY_CAP,)
        # The first send leaves the 7 d window at start + 7 d.
        assert decide_one(contact, mail(), start + 7 * DAY - 1).reasons == (FREQUENCY_CAP,)
        assert decide_one(contact, mail(), start + 7 * DAY).outcome == EMITTED

    def test_late_event_cannot_overfill_a_later_window(self) -> None:
        contact = history(NOON + HOUR, NOON + 2 * HOUR, NOON + 3 * HOUR)
        # [NOON, NOON + 24 h) would hold four.
        assert decide_one(contact, mail(), NOON).reasons == (FREQUENCY_CAP,)
        # [NOON - 20 h, NOON + 4 h) would hold four; [NOON - 21 h, NOON + 3 h) holds three.
        assert decide_one(contact, mail(), NOON - 20 * HOUR).reasons == (FREQUENCY_CAP,)
        assert decide_one(contact, mail(), NOON - 21 * HOUR).outcome == EMITTED

    def test_caps_are_knobs(self) -> None:
        policy = ContactPolicy(frequency_cap_day=1)
        contact = history(NOON - HOUR)
        assert decide_one(contact, mail(), policy=policy).reasons == (FREQUENCY_CAP,)
        zero = ContactPolicy(frequency_cap_week=0)
        assert decide_one(ContactState(), mail(), policy=zero).reasons == (FREQUENCY_CAP,)


class TestPause:
    def test_two_declines_within_the_window_pause_for_sixty_days(self) -> None:
        contact = ContactState()
        first, second = NOON - 40 * DAY, NOON - 11 * DAY
        assert not record_response(contact, "roaming", DECLINED, first)
        assert record_response(contact, "roaming", DECLINED, second)
        assert contact.paused_until == {"roaming": second + 60 * DAY}
        cand = candidate(offer_type="roaming")
        assert outcome(decide_one(contact, cand, NOON)) == suppressed(PAUSED)
        assert decide_one(contact, cand, second + 60 * DAY - 1).reasons == (PAUSED,)
        assert decide_one(contact, cand, second + 60 * DAY).outcome == EMITTED
        # Other offer types are not paused.
        assert decide_one(contact, candidate(offer_type="travel"), NOON).outcome == EMITTED

    def test_declined_and_ignored_count_together(self) -> None:
        contact = ContactState()
        record_response(contact, "roaming", IGNORED, NOON - 3 * DAY)
        assert record_response(contact, "roaming", DECLINED, NOON)
        assert contact.paused_until["roaming"] == NOON + 60 * DAY

    def test_responses_further_apart_than_the_window_do_not_pause(self) -> None:
        contact = ContactState()
        record_response(contact, "roaming", DECLINED, NOON - 30 * DAY)
        assert not record_response(contact, "roaming", DECLINED, NOON)
        assert contact.paused_until == {}

    def test_responses_that_paused_are_consumed(self) -> None:
        contact = ContactState()
        record_response(contact, "roaming", DECLINED, NOON)
        record_response(contact, "roaming", DECLINED, NOON + DAY)
        assert contact.responses == {}
        # One more response does not pause again (or extend the pause) on its own.
        assert not record_response(contact, "roaming", IGNORED, NOON + 2 * DAY)
        assert contact.paused_until["roaming"] == NOON + 61 * DAY

    def test_out_of_order_responses(self) -> None:
        contact = ContactState()
        record_response(contact, "roaming", DECLINED, NOON)
        assert record_response(contact, "roaming", DECLINED, NOON - 5 * DAY)
        assert contact.paused_until["roaming"] == NOON + 60 * DAY

    def test_acceptance_breaks_the_streak(self) -> None:
        contact = ContactState()
        record_response(contact, "roaming", DECLINED, NOON)
        record_accepted(contact, "roaming", NOON + HOUR)
        assert not record_response(contact, "roaming", DECLINED, NOON + DAY)

    def test_pause_after_is_a_knob_and_kind_is_checked(self) -> None:
        policy = ContactPolicy(pause_after=1, pause_for=DAY)
        contact = ContactState()
        assert record_response(contact, "roaming", IGNORED, NOON, policy)
        assert contact.paused_until["roaming"] == NOON + DAY
        with pytest.raises(ValueError):
            record_response(contact, "roaming", "accepted", NOON)


def local(iso: str) -> float:
    return parse_time(iso)


class TestQuietHours:
    def test_berlin_evening_is_deferred_to_eight_local_plus_spread(self) -> None:
        at = local("2026-11-22T21:30:00+01:00")  # 20:30 UTC: not quiet in UTC
        cand = candidate()
        verdict = decide_one(ContactState(), cand, at, tz="Europe/Berlin")
        eight = local("2026-11-23T08:00:00+01:00")
        assert verdict.outcome == DEFERRED and verdict.reasons == ()
        assert verdict.release_at == eight + release_spread(cand.trigger_id)
        assert eight <= verdict.release_at < eight + 600
        assert decide_one(ContactState(), cand, at, tz="UTC").outcome == EMITTED

    def test_after_midnight_releases_the_same_morning(self) -> None:
        at = local("2026-11-23T03:00:00+01:00")
        verdict = decide_one(ContactState(), candidate(), at, tz="Europe/Berlin")
        assert verdict.outcome == DEFERRED
        assert verdict.release_at is not None
        assert 0 <= verdict.release_at - local("2026-11-23T08:00:00+01:00") < 600

    @pytest.mark.parametrize(
        ("clock", "quiet"),
        [("20:59:59", False), ("21:00:00", True), ("07:59:59", True), ("08:00:00", False)],
    )
    def test_boundaries(self, clock: str, quiet: bool) -> None:
        at = local(f"2026-11-23T{clock}-05:00")
        verdict = decide_one(ContactState(), candidate(), at, tz="America/New_York")
        assert verdict.outcome == (DEFERRED if quiet else EMITTED)

    @pytest.mark.parametrize(
        ("tz", "evening", "release"),
        [
            # New York springs forward on 2026-03-08: 21:00 EST, released 08:00 EDT.
            ("America/New_York", "2026-03-07T22:00:00-05:00", "2026-03-08T08:00:00-04:00"),
            # ... and falls back on 2026-11-01.
            ("America/New_York", "2026-10-31T22:00:00-04:00", "2026-11-01T08:00:00-05:00"),
            # Berlin springs forward on 2026-03-29 and falls back on 2026-10-25.
            ("Europe/Berlin", "2026-03-28T23:00:00+01:00", "2026-03-29T08:00:00+02:00"),
            ("Europe/Berlin", "2026-10-24T21:30:00+02:00", "2026-10-25T08:00:00+01:00"),
        ],
    )
    def test_across_dst_the_release_is_eight_local(
        self, tz: str, evening: str, release: str
    ) -> None:
        no_spread = ContactPolicy(release_spread_seconds=0)
        verdict = decide_one(ContactState(), candidate(), local(evening), tz=tz, policy=no_spread)
        assert (verdict.outcome, verdict.release_at) == (DEFERRED, local(release))

    def test_only_quiet_channels(self) -> None:
        at = local("2026-11-22T23:00:00Z")
        for channel in ("sms", "push"):
            assert decide_one(ContactState(), candidate(channel=channel), at).outcome == DEFERRED
        for channel in ("email", "mobile"):
            assert decide_one(ContactState(), candidate(channel=channel), at).outcome == EMITTED

    @pytest.mark.parametrize("tz", [None, "", "Not/AZone", "../etc/passwd", "Europe", 42])
    def test_missing_or_invalid_zone_uses_the_default(self, tz: Any) -> None:
        at = local("2026-11-22T21:30:00+01:00")  # quiet in Berlin, not in UTC
        berlin = ContactPolicy(default_timezone="Europe/Berlin")
        assert decide_one(ContactState(), candidate(), at, tz=tz).outcome == EMITTED
        assert decide_one(ContactState(), candidate(), at, tz=tz, policy=berlin).outcome == DEFERRED
        broken = ContactPolicy(default_timezone="Nowhere/Else")
        assert decide_one(ContactState(), candidate(), at, tz=tz, policy=broken).outcome == EMITTED

    def test_judged_at_event_time(self) -> None:
        evening = local("2026-11-22T21:30:00Z")
        processed = local("2026-11-22T20:59:00Z") + HOUR  # event 20:59, processed 21:59
        assert decide_one(ContactState(), candidate(), evening, now=evening).outcome == DEFERRED
        before = local("2026-11-22T20:59:00Z")
        assert decide_one(ContactState(), candidate(), before, now=processed).outcome == EMITTED

    def test_release_already_past_when_processed_is_emitted(self) -> None:
        at = local("2026-11-23T07:50:00Z")
        cand = candidate()
        release = quiet_release_at(cand.trigger_id, at, "UTC")
        assert release is not None
        assert decide_one(ContactState(), cand, at, now=release - 1).outcome == DEFERRED
        assert decide_one(ContactState(), cand, at, now=release).outcome == EMITTED

    def test_trigger_expiring_before_release_is_suppressed(self) -> None:
        at = local("2026-11-22T23:00:00Z")
        cand = candidate()
        release = quiet_release_at(cand.trigger_id, at, "UTC")
        assert release is not None
        for expires_at, expected in [
            (at + HOUR, suppressed(QUIET_HOURS)),
            (release, suppressed(QUIET_HOURS)),
            (release + 1, (DEFERRED, ())),
            (None, (DEFERRED, ())),
        ]:
            verdict = decide_one(ContactState(), replace(cand, expires_at=expires_at), at)
            assert outcome(verdict) == expected
            assert verdict.release_at == (release if expected[0] == DEFERRED else None)

    def test_daytime_quiet_hours_and_none(self) -> None:
        lunch = ContactPolicy(quiet_start="12:00", quiet_end="14:00", release_spread_seconds=0)
        verdict = decide_one(ContactState(), candidate(), NOON + 30 * 60, policy=lunch)
        assert (verdict.outcome, verdict.release_at) == (DEFERRED, NOON + 2 * HOUR)
        assert decide_one(ContactState(), candidate(), NOON - 1, policy=lunch).outcome == EMITTED
        never = ContactPolicy(quiet_start="00:00", quiet_end="00:00")
        night = local("2026-11-22T23:00:00Z")
        assert decide_one(ContactState(), candidate(), night, policy=never).outcome == EMITTED

    def test_bad_clock_times_are_rejected(self) -> None:
        with pytest.raises(ValueError):
            ContactPolicy(quiet_start="9pm")


class TestSpread:
    def test_deterministic_and_within_the_window(self) -> None:
        at = local("2026-11-22T23:00:00Z")
        eight = local("2026-11-23T08:00:00Z")
        releases = []
        for n in range(500):
            first = quiet_release_at(f"trigger-{n}", at, "UTC")
            assert first == quiet_release_at(f"trigger-{n}", at + HOUR, "UTC")
            assert first is not None and eight <= first < eight + 600
            releases.append(first)
        # Spread out, not everyone at 08:00.
        assert len(set(releases)) > 300
        assert max(releases) - min(releases) > 500

    def test_spread_is_a_knob(self) -> None:
        assert release_spread("t", ContactPolicy(release_spread_seconds=0)) == 0
        assert 0 <= release_spread("t", ContactPolicy(release_spread_seconds=60)) < 60


class TestArbitration:
    def verdicts(self, *cands: Candidate, contact: ContactState | None = None) -> list[Verdict]:
        return decide(contact or ContactState(), list(cands), NOON, NOON, "UTC", {}, POLICY)

    def test_highest_priority_wins(self) -> None:
        low, high = candidate("a", priority=1, value=100.0), candidate("b", priority=5)
        assert [outcome(v) for v in self.verdicts(low, high)] == [
            suppressed(ARBITRATION),
            (EMITTED, ()),
        ]

    def test_then_value_then_rule_id(self) -> None:
        a, b = candidate("a", value=1.0), candidate("b", value=2.0)
        assert [v.outcome for v in self.verdicts(a, b)] == [SUPPRESSED, EMITTED]
        a, b = candidate("b"), candidate("a")
        assert [v.outcome for v in self.verdicts(a, b)] == [SUPPRESSED, EMITTED]
        assert [v.outcome for v in self.verdicts(b, a)] == [EMITTED, SUPPRESSED]

    def test_only_candidates_that_passed_the_checks_compete(self) -> None:
        blocked = candidate("a", priority=9, consent_granted=False)
        ok = candidate("b", priority=1)
        assert [outcome(v) for v in self.verdicts(blocked, ok)] == [
            suppressed(CONSENT),
            (EMITTED, ()),
        ]

    def test_deferred_candidates_compete_too(self) -> None:
        night = local("2026-11-22T23:00:00Z")
        sms = candidate("a", priority=5, channel="sms")
        email = candidate("b", priority=1, channel="email")
        verdicts = decide(ContactState(), [sms, email], night, night, "UTC", {}, POLICY)
        assert [outcome(v) for v in verdicts] == [(DEFERRED, ()), suppressed(ARBITRATION)]
        cheap_sms = replace(sms, priority=0)
        verdicts = decide(ContactState(), [cheap_sms, email], night, night, "UTC", {}, POLICY)
        assert [outcome(v) for v in verdicts] == [suppressed(ARBITRATION), (EMITTED, ())]

    def test_losers_do_not_consume_cap(self) -> None:
        contact = ContactState()
        for n in range(3):
            at = NOON + n * HOUR
            cands = [candidate(f"r{i}", priority=i) for i in range(5)]
            verdicts = decide(contact, cands, at, at, "UTC", {}, POLICY)
            assert [v.outcome for v in verdicts].count(EMITTED) == 1
            assert [v.reasons for v in verdicts].count((ARBITRATION,)) == 4
            for cand, verdict in zip(cands, verdicts, strict=True):
                if verdict.sends:
                    record_sent(contact, cand.offer_type, at)
        at = NOON + 3 * HOUR
        verdicts = decide(contact, [candidate("r9")], at, at, "UTC", {}, POLICY)
        assert [v.reasons for v in verdicts] == [(FREQUENCY_CAP,)]

    def test_empty(self) -> None:
        assert self.verdicts() == []


class TestCheckRelease:
    release = local("2026-11-23T08:03:00Z")

    def test_released_then_counted(self) -> None:
        contact = history(self.release - 20 * HOUR, self.release - 10 * HOUR)
        cand = candidate(expires_at=self.release + HOUR)
        verdict = check_release(contact, cand, self.release, True)
        assert verdict == Verdict("r1", "t-r1", RELEASED, (), None) and verdict.sends
        record_sent(contact, cand.offer_type, self.release)
        assert check_release(contact, cand, self.release + 1, True).reasons == (FREQUENCY_CAP,)

    def test_consent_withdrawn_overnight(self) -> None:
        verdict = check_release(ContactState(), candidate(), self.release, False)
        assert outcome(verdict) == suppressed(CONSENT)

    def test_expired(self) -> None:
        cand = candidate(expires_at=self.release)
        assert check_release(ContactState(), cand, self.release, True).reasons == (EXPIRED,)

    def test_caps_filled_overnight(self) -> None:
        # Three emails went out overnight while the SMS waited.
        contact = history(self.release - 9 * HOUR, self.release - 8 * HOUR, self.release - HOUR)
        verdict = check_release(contact, candidate(), self.release, True)
        assert outcome(verdict) == suppressed(FREQUENCY_CAP)

    def test_paused_overnight(self) -> None:
        contact = ContactState()
        record_response(contact, "offer-r1", DECLINED, self.release - 5 * DAY)
        record_response(contact, "offer-r1", DECLINED, self.release - HOUR)
        assert check_release(contact, candidate(), self.release, True).reasons == (PAUSED,)

    def test_consent_is_checked_first(self) -> None:
        contact = history(self.release - 3, self.release - 2, self.release - 1)
        cand = candidate(expires_at=self.release - 1)
        assert check_release(contact, cand, self.release, False).reasons == (CONSENT,)
        assert check_release(contact, cand, self.release, True).reasons == (EXPIRED,)

    def test_candidate_round_trips_through_a_timer_payload(self) -> None:
        cand = candidate(expires_at=NOON, cooldown_key="k", cooldown_seconds=DAY, value=2.5)
        assert Candidate.from_dict(orjson.loads(orjson.dumps(cand.to_dict()))) == cand


class TestState:
    def test_round_trips_through_orjson(self) -> None:
        contact = history(NOON - HOUR, NOON)
        record_response(contact, "roaming", DECLINED, NOON - DAY)
        record_response(contact, "travel", IGNORED, NOON - DAY)
        record_response(contact, "travel", IGNORED, NOON)
        stored = orjson.loads(orjson.dumps(contact.to_dict()))
        assert stored == {
            "sent": [[NOON - HOUR, "old"], [NOON, "old"]],
            "responses": {"roaming": [[NOON - DAY, DECLINED]]},
            "paused_until": {"travel": NOON + 60 * DAY},
        }
        assert ContactState.from_dict(stored) == contact

    def test_from_nothing_is_empty_and_a_copy(self) -> None:
        assert ContactState.from_dict(None) == ContactState()
        assert ContactState.from_dict({}) == ContactState()
        stored: dict[str, Any] = {"sent": [[NOON, "x"]]}
        contact = ContactState.from_dict(stored)
        record_sent(contact, "y", NOON + 1)
        assert stored == {"sent": [[NOON, "x"]]}

    def test_sent_is_kept_sorted(self) -> None:
        contact = history(NOON, NOON - HOUR, NOON - 2 * HOUR)
        assert [at for at, _ in contact.sent] == [NOON - 2 * HOUR, NOON - HOUR, NOON]

    def test_prune_drops_what_no_check_needs(self) -> None:
        contact = history(NOON - 9 * DAY, NOON - 7.5 * DAY, NOON - DAY)
        record_response(contact, "a", DECLINED, NOON - 40 * DAY)
        record_response(contact, "b", DECLINED, NOON - 10 * DAY)
        contact.paused_until = {"old": NOON - 2 * DAY, "recent": NOON - HOUR, "on": NOON + DAY}
        assert prune(contact, NOON)
        assert [at for at, _ in contact.sent] == [NOON - 7.5 * DAY, NOON - DAY]
        assert set(contact.responses) == {"b"}
        assert set(contact.paused_until) == {"recent", "on"}
        assert not prune(contact, NOON)

    def test_record_sent_stays_bounded_even_past_the_caps(self) -> None:
        contact = ContactState()
        for n in range(100):
            record_sent(contact, "x", NOON + n)
        assert len(contact.sent) == 2 * POLICY.frequency_cap_week + POLICY.frequency_cap_day
        assert contact.sent[-1][0] == NOON + 99

    def test_record_sent_drops_history_past_the_week(self) -> None:
        contact = history(NOON - 20 * DAY, NOON - 8.5 * DAY, NOON - 7.5 * DAY)
        record_sent(contact, "x", NOON)
        assert [at for at, _ in contact.sent] == [NOON - 7.5 * DAY, NOON]
