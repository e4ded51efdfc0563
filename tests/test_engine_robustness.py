"""Flap brake, clock skew, gaps, stream changes, rejected samples, fallback and persistence."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scorer.engine as engine_module
from proto.messages import Telemetry
from scorer.engine import Engine
from tests.scoring import GREEN, RED60, Feed, decide, scorer_config

STEER_NOW = dict(cake_state="RED", rtt_ms=170.0, queue_depth_pct=5.0, drops_per_sec=0.0)
FAST_TOGGLES = dict(shadow=False, confidence={"hold_down_s": 1.0, "sustain_s": 1.0, "recovery_sustain_s": 1.0})


def flapping(feed, cycles, dt=0.5, on=3.0, off=3.0, on_fields=STEER_NOW):
    samples = []
    for _ in range(cycles):
        samples += feed.seconds(on, dt, **on_fields) + feed.seconds(off, dt, **GREEN)
    return samples


# --- flap brake -------------------------------------------------------------


def test_flap_penalty_engages_on_the_toggle_after_max_toggles_and_raises_the_threshold():
    feed = Feed()
    cfg = scorer_config(**FAST_TOGGLES)
    engine = Engine(cfg)
    decisions = decide(engine, flapping(feed, 3, on_fields=RED60))  # 6 toggles, 60-point episodes
    assert len(decisions) == 6
    fifth = decisions[4]
    assert (fifth.threshold, fifth.flap_penalty) == (55, False)  # the penalty shows from the next sample
    assert (decisions[5].threshold, decisions[5].flap_penalty) == (70, True)
    penalty_end = fifth.t + 60.0
    # A 60-point episode cannot steer while the threshold is 70 ...
    more = decide(engine, feed.seconds(penalty_end - feed.t - 2.0, 0.5, **RED60))
    assert more == []
    # ... and steers once the penalty has expired (the run starts at penalty_end).
    (late,) = decide(engine, feed.seconds(4.0, 0.5, **RED60))
    assert late.t == pytest.approx(penalty_end + 1.0)
    assert (late.threshold, late.flap_penalty) == (55, False)


def test_a_severe_episode_still_steers_during_the_penalty():
    feed = Feed()
    engine = Engine(scorer_config(**FAST_TOGGLES))
    decisions = decide(engine, flapping(feed, 3))  # 75-point episodes beat threshold 70
    assert len(decisions) == 6 and decisions[5].flap_penalty


def test_next_penalty_needs_fresh_toggles():
    feed = Feed()
    engine = Engine(scorer_config(**FAST_TOGGLES))
    # Four toggles, then a fifth ENABLE that starts the penalty; stay congested past it.
    decide(engine, flapping(feed, 2) + feed.seconds(80.0, 0.5, **STEER_NOW))
    cp = engine.wans["wan1"].confidence_policy
    first_penalty = cp.penalty_until
    assert first_penalty is not None and feed.t > first_penalty and cp.flap == []
    # The window was emptied when the penalty started: four fresh toggles do not re-engage it ...
    toggles = decide(engine, feed.seconds(3.0, 0.5, **GREEN) + flapping(feed, 1) + feed.seconds(3.0, 0.5, **STEER_NOW))
    assert len(toggles) == 4 and cp.penalty_until == first_penalty
    # ... a fifth does.
    (fifth,) = decide(engine, feed.seconds(3.0, 0.5, **GREEN))
    assert cp.penalty_until == pytest.approx(fifth.t + 60.0)


def test_toggles_during_a_penalty_count_toward_the_next_one():
    feed = Feed()
    engine = Engine(scorer_config(**FAST_TOGGLES))
    decide(engine, flapping(feed, 3))  # toggles 1-5, penalty, toggle 6 recorded in the emptied window
    cp = engine.wans["wan1"].confidence_policy
    assert len(cp.flap) == 1


def test_toggles_older_than_the_window_do_not_count():
    feed = Feed()
    cfg = scorer_config(shadow=False, flap={"window_s": 20.0},
                        confidence={"hold_down_s": 1.0, "sustain_s": 1.0, "recovery_sustain_s": 1.0})
    engine = Engine(cfg)
    # Each cycle lasts 12 s, so at most two toggles ever fall within a 20 s window.
    decide(engine, flapping(feed, 10, on=6.0, off=6.0))
    assert engine.wans["wan1"].confidence_policy.penalty_until is None


def test_disabled_flap_brake_never_engages():
    engine = Engine(scorer_config(shadow=False, flap={"enabled": False},
                                  confidence={"hold_down_s": 1.0, "sustain_s": 1.0, "recovery_sustain_s": 1.0}))
    decisions = decide(engine, flapping(Feed(), 10))
    assert len(decisions) == 20 and not any(d.flap_penalty for d in decisions)


@given(st.lists(st.tuples(st.booleans(), st.floats(min_value=0.5, max_value=40)), min_size=1, max_size=60),
       st.integers(min_value=1, max_value=6))
@settings(max_examples=60, deadline=None)
def test_flap_window_never_exceeds_max_toggles_plus_one(segments, max_toggles):
    """Seed W1: however long and wild the run, the window stays bounded."""
    engine = Engine(scorer_config(shadow=False, flap={"max_toggles": max_toggles, "window_s": 3600.0},
                                  confidence={"hold_down_s": 0.0, "sustain_s": 0.0, "recovery_sustain_s": 0.0}))
    feed = Feed()
    cp = None
    for congested, length in segments:
        for s in feed.seconds(length, 0.5, **(STEER_NOW if congested else GREEN)):
            engine.process(s)
            cp = engine.wans["wan1"].confidence_policy
            assert len(cp.flap) <= max_toggles + 1


# --- clocks -----------------------------------------------------------------


@pytest.mark.parametrize("jump", [3600.0, -3600.0, 7 * 86400.0, -7 * 86400.0])
def test_wall_clock_jumps_change_no_decision(jump):
    def run(jump_at):
        feed = Feed()
        samples = flapping(feed, 4, on=5.0, off=40.0)
        for s in samples:
            if s.seq >= jump_at:
                s.wall += jump
        return [(d.seq, d.t, d.decision, d.sustained_s, d.threshold) for d in decide(Engine(scorer_config()), samples)]

    assert run(jump_at=10**9) == run(jump_at=37) == run(jump_at=200)


# --- gaps and streams -------------------------------------------------------


def test_gap_breaks_the_degrade_run_and_restarts_the_ewma():
    feed = Feed()
    samples = feed.seconds(1.5, 0.5, **STEER_NOW)
    feed.t += 5.5  # 6 s between samples > max_gap_s 5
    samples += feed.seconds(5, 0.5, **STEER_NOW)
    engine = Engine(scorer_config(shadow=False))
    (d,) = decide(engine, samples)
    assert d.t == pytest.approx(1007.0 + 2.0)
    assert engine.counters["gaps"] == 1


def test_a_gap_of_exactly_max_gap_is_not_a_gap():
    feed = Feed()
    samples = feed.seconds(1.5, 0.5, **STEER_NOW)
    feed.t += 4.5  # exactly 5.0 s
    samples += feed.seconds(3, 0.5, **STEER_NOW)
    (d,) = decide(Engine(scorer_config(shadow=False)), samples)
    assert d.t == pytest.approx(1006.0)  # run from 1000.0 continued: decided at the first sample >= 2 s


def test_gap_leaves_hold_down_deadline_alone():
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW)  # ENABLE at 1002.0, hold-down until 1032.0
    feed.t += 20.0
    samples += feed.seconds(30, 0.5, **GREEN)
    _, disable = decide(Engine(scorer_config(shadow=False)), samples)
    assert disable.t == pytest.approx(1035.0)


def test_gap_resets_hysteresis_counters():
    feed = Feed()
    samples = feed.run(1, 0.5, **STEER_NOW)
    feed.t += 10
    samples += feed.run(1, 0.5, **STEER_NOW) + feed.run(1, 0.5, **STEER_NOW)
    (d,) = decide(Engine(scorer_config(policy="hysteresis", shadow=False)), samples)
    assert d.telemetry_seq == 3 and d.sustained_s == 0.5


def test_new_stream_keeps_remaining_hold_down_and_breaks_runs():
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW)  # ENABLE at 1002.0, hold-down until 1032.0
    samples += feed.seconds(8.0, 0.5, **GREEN)  # last old-stream sample at 1010.0 (22 s left)
    reboot = Feed(stream="boot-b", t=5.0)
    reboot.seq = feed.seq
    samples += reboot.seconds(40, 0.5, **GREEN)
    engine = Engine(scorer_config(shadow=False))
    enable, disable = decide(engine, samples)
    assert disable.t == pytest.approx(5.0 + 22.0 + 3.0)
    assert engine.counters["stream_changes"] == 1


def test_new_stream_shifts_flap_penalty_and_window():
    feed = Feed()
    engine = Engine(scorer_config(**FAST_TOGGLES))
    decide(engine, flapping(feed, 3)[:-1])
    cp = engine.wans["wan1"].confidence_policy
    last_t = engine.wans["wan1"].last_t
    left = cp.penalty_until - last_t
    engine.process(Feed(stream="boot-b", t=50.0).sample(**GREEN))
    assert cp.penalty_until == pytest.approx(50.0 + left)


def test_null_rtt_samples_are_ignored_and_do_not_break_runs():
    feed = Feed()
    samples = []
    for _ in range(8):
        samples += feed.run(1, 0.25, **STEER_NOW) + feed.run(1, 0.25, **dict(STEER_NOW, rtt_ms=None))
    engine = Engine(scorer_config(shadow=False))
    (d,) = decide(engine, samples)
    assert d.t == pytest.approx(1002.0)
    assert engine.counters["ignored_null_rtt"] == 8


def test_null_samples_do_not_hide_a_gap():
    feed = Feed()
    samples = feed.seconds(1.5, 0.5, **STEER_NOW) + feed.seconds(6, 0.5, **dict(STEER_NOW, baseline_rtt_ms=None))
    samples += feed.seconds(5, 0.5, **STEER_NOW)
    engine = Engine(scorer_config(shadow=False))
    (d,) = decide(engine, samples)
    assert d.t == pytest.approx(1007.5 + 2.0) and engine.counters["gaps"] == 1


# --- rejected samples -------------------------------------------------------

BAD = [
    ("non_finite", dict(rtt_ms=math.nan)),
    ("non_finite", dict(rtt_ms=math.inf)),
    ("non_finite", dict(baseline_rtt_ms=-math.inf)),
    ("non_finite", dict(drops_per_sec=math.nan)),
    ("non_finite", dict(queue_depth_pct=math.inf)),
    ("non_finite", dict(t=math.nan)),
    ("non_finite", dict(wall=math.inf)),
    ("negative_value", dict(rtt_ms=-1.0)),
    ("negative_value", dict(baseline_rtt_ms=-0.5)),
    ("negative_value", dict(drops_per_sec=-2.0)),
    ("negative_value", dict(queue_depth_pct=-0.1)),
    ("unknown_state", dict(cake_state="PURPLE")),
    ("unknown_state", dict(cake_state="green")),
    ("unknown_state", dict(wan_zone="ORANGE")),
    ("unsupported_version", dict(v=2)),
]


@pytest.mark.parametrize("cause,fields", BAD)
def test_every_rejection_cause_is_counted_and_changes_nothing(cause, fields):
    def run(inject):
        feed = Feed()
        engine = Engine(scorer_config())
        out = []
        for i, s in enumerate(feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(40, 0.5, **GREEN)):
            if inject and i % 3 == 1:
                bad = Telemetry(**{**{f: getattr(s, f) for f in s.__struct_fields__}, **fields,
                                   "t": fields.get("t", s.t - 0.25)})
                outcome = engine.process(bad)
                assert (outcome.decisions, outcome.status, outcome.cause) == ((), "rejected", cause)
            out += engine.process(s).decisions
        return engine, [(d.seq, d.t, d.policy, d.decision) for d in out]

    engine, with_bad = run(True)
    assert with_bad == run(False)[1]
    assert engine.rejected == {cause: 28}


def test_out_of_order_and_duplicate_samples_are_rejected_per_wan_and_stream():
    feed = Feed()
    engine = Engine(scorer_config())
    a1, a2 = feed.run(2, 0.5, **GREEN)
    engine.process(a2)
    assert engine.process(a1).cause == "out_of_order"
    assert engine.process(a2).cause == "out_of_order"
    # Within the 1e-6 s tolerance counts as the same time.
    near = Feed(t=a2.t + 5e-7).sample(**GREEN)
    assert engine.process(near).cause == "out_of_order"
    # Another WAN, or a new stream with an earlier t, is not out of order.
    assert engine.process(Feed("wan2", t=10.0).sample(**GREEN)).status == "scored"
    assert engine.process(Feed(stream="boot-b", t=3.0).sample(**GREEN)).status == "scored"
    assert engine.rejected == {"out_of_order": 3}


@given(st.lists(st.builds(
    dict,
    wan=st.sampled_from(["wan1", "wan2"]),
    stream=st.sampled_from(["a", "b"]),
    t=st.floats(allow_nan=True, allow_infinity=True, width=64),
    wall=st.floats(),
    rtt_ms=st.none() | st.floats(), baseline_rtt_ms=st.none() | st.floats(),
    drops_per_sec=st.none() | st.floats(), queue_depth_pct=st.none() | st.floats(),
    cake_state=st.none() | st.sampled_from(["GREEN", "YELLOW", "SOFT_RED", "RED", "BLUE", ""]),
    wan_zone=st.none() | st.sampled_from(["GREEN", "RED", "SOFT_RED", "x"]),
), max_size=80))
@settings(max_examples=150, deadline=None)
def test_arbitrary_samples_never_raise(rows):
    engine = Engine(scorer_config(confidence={"sustain_s": 0.0}))
    for seq, row in enumerate(rows, 1):
        for d in engine.process(Telemetry(seq=seq, **row)).decisions:
            assert 0 <= d.confidence <= 100


# --- fallback ---------------------------------------------------------------


def test_confidence_failure_falls_back_to_hysteresis_for_the_driving_state(monkeypatch):
    feed = Feed()
    engine = Engine(scorer_config(shadow=False))
    decide(engine, feed.run(3, 0.5, **GREEN))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("scoring failed")

    monkeypatch.setattr(engine_module, "confidence_score", broken)
    out = decide(engine, feed.run(2, 0.5, **STEER_NOW))
    (d,) = out
    assert (d.policy, d.driving, d.fallback, d.decision) == ("hysteresis", True, True, "ENABLE_STEERING")
    assert d.sustained_s == 0.5
    cp = engine.wans["wan1"].confidence_policy
    assert cp.state == "DEGRADED" and cp.hold_down_until == pytest.approx(d.t + 30.0)
    assert cp.flap == [d.t]
    assert engine.counters["fallbacks"] == 2 and engine.desired("wan1") == "DEGRADED"
    # The confidence policy carries on from the state the fallback left.
    monkeypatch.undo()
    assert decide(engine, feed.seconds(20, 0.5, **GREEN)) == []  # still in hold-down


def test_fallback_counts_samples_before_the_failure(monkeypatch):
    feed = Feed()
    engine = Engine(scorer_config(shadow=False, confidence={"sustain_s": 10.0}))
    decide(engine, feed.run(3, 0.5, **STEER_NOW))  # 3 RED samples, no confidence decision yet
    monkeypatch.setattr(engine_module, "confidence_score", lambda *a: 1 / 0)
    (d,) = engine.process(feed.sample(**STEER_NOW)).decisions
    assert d.fallback and d.sustained_s == pytest.approx(1.5)


# --- persistence ------------------------------------------------------------


@pytest.mark.parametrize("cut", [3, 5, 30, 70, 71, 72, 75, 150, 200])
def test_restore_mid_episode_neither_repeats_nor_loses_a_decision(cut):
    rng = random.Random(cut)
    feed = Feed()
    samples = []
    for _ in range(6):
        samples += feed.seconds(rng.choice([2.0, 5.0, 8.0]), 0.5, **rng.choice([STEER_NOW, RED60]))
        samples += feed.seconds(rng.choice([20.0, 35.0, 45.0]), 0.5, **GREEN)
    cfg = scorer_config(**{**FAST_TOGGLES, "shadow": True})
    whole = decide(Engine(cfg), samples)
    first = Engine(cfg)
    before = decide(first, samples[:cut])
    resumed = Engine.restore(cfg, first.export(), epoch=2)
    after = decide(resumed, samples[cut:])
    key = lambda d: (d.seq, d.t, d.policy, d.decision, d.sustained_s, d.threshold, d.flap_penalty)
    assert [key(d) for d in before + after] == [key(d) for d in whole]
    assert all(d.epoch == 0 for d in after)  # decisions leave the engine without an envelope: the shell stamps it
