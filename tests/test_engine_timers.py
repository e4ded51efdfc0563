"""Section 5.5/5.6 timers in seconds of ``t``: sustain, hold-down, recovery, hysteresis, shadow."""

import pytest

from scorer.engine import Engine
from tests.scoring import GREEN, Feed, decide, scorer_config

# Scores 75 from its first sample (RED 50 + severe RTT 25), whatever the history.
STEER_NOW = dict(cake_state="RED", rtt_ms=170.0, queue_depth_pct=5.0, drops_per_sec=0.0)


def episode(dt, healthy_s=10.0, congested_s=40.0, recovered_s=60.0, cfg=None):
    feed = Feed()
    samples = feed.seconds(healthy_s, dt, **GREEN) + feed.seconds(congested_s, dt, **STEER_NOW)
    samples += feed.seconds(recovered_s, dt, **GREEN)
    return decide(Engine(cfg or scorer_config(shadow=False)), samples)


@pytest.mark.parametrize("dt", [0.05, 0.5, 2.0])
def test_same_seconds_give_same_decision_times_at_any_cadence(dt):
    # Durations that are whole multiples of every cadence tested.
    decisions = episode(dt, cfg=scorer_config(shadow=False, confidence={"recovery_sustain_s": 4.0}))
    assert [(d.decision, d.t) for d in decisions] == [
        ("ENABLE_STEERING", pytest.approx(1012.0, abs=1e-6)),
        ("DISABLE_STEERING", pytest.approx(1054.0, abs=1e-6)),
    ]
    assert [d.sustained_s for d in decisions] == [pytest.approx(2.0, abs=1e-6), pytest.approx(4.0, abs=1e-6)]


def test_a_run_decides_at_the_first_sample_at_or_past_its_duration():
    # 2 s cadence, 3 s recovery: 1050 starts the run, 1052 is 2 s in, 1054 is 4 s in.
    (_, disable) = episode(2.0)
    assert (disable.t, disable.sustained_s) == (1054.0, 4.0)


def test_fast_cadence_decides_on_the_41st_sample_of_the_run():
    feed = Feed()
    samples = feed.run(40, 0.05, **STEER_NOW)
    engine = Engine(scorer_config(shadow=False))
    assert decide(engine, samples) == []
    (decision,) = engine.process(feed.sample(**STEER_NOW)).decisions
    assert decision.telemetry_seq == 41


def test_zero_sustain_decides_on_the_first_sample():
    feed = Feed()
    engine = Engine(scorer_config(shadow=False, confidence={"sustain_s": 0}))
    (d,) = engine.process(feed.sample(**STEER_NOW)).decisions
    assert (d.decision, d.sustained_s) == ("ENABLE_STEERING", 0.0)


def test_confidence_below_threshold_clears_the_degrade_run():
    feed = Feed()
    samples = feed.seconds(1.5, 0.5, **STEER_NOW) + feed.run(1, 0.5, **GREEN) + feed.seconds(10, 0.5, **STEER_NOW)
    (d,) = decide(Engine(scorer_config(shadow=False)), samples)
    assert d.t == pytest.approx(1002.0 + 2.0)  # the run restarted at 1002.0


def test_hold_down_runs_to_completion():
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(60, 0.5, **GREEN)
    enable, disable = decide(Engine(scorer_config(shadow=False)), samples)
    assert enable.t == pytest.approx(1002.0)
    # Eligible from 1002.5 on, but recovery may only start when hold-down ends at 1032.
    assert disable.t == pytest.approx(1032.0 + 3.0)
    assert disable.sustained_s == pytest.approx(3.0)


def test_recovery_needs_its_full_run_and_one_ineligible_sample_resets_it():
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(40, 0.5, **GREEN)  # up to 1042.5
    samples += feed.run(1, 0.5, cake_state="YELLOW")  # 1042.5: ineligible (state not allowed)
    samples += feed.seconds(10, 0.5, **GREEN)
    _, disable = decide(Engine(scorer_config(shadow=False)), samples)
    # Hold-down ends at 1032.0, so the YELLOW at 1042.5 is after a complete recovery.
    assert disable.t == pytest.approx(1035.0)
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(31.5, 0.5, **GREEN)  # to 1034.0
    samples += feed.run(1, 0.5, rtt_ms=35.0, cake_state="GREEN")  # 1034.0: rtt delta 15 >= 10
    samples += feed.seconds(10, 0.5, **GREEN)  # eligible again from 1034.5
    _, disable = decide(Engine(scorer_config(shadow=False)), samples)
    assert disable.t == pytest.approx(1034.5 + 3.0)


@pytest.mark.parametrize("ineligible", [
    dict(GREEN, drops_per_sec=0.5),
    dict(GREEN, wan_zone="YELLOW"),
    dict(GREEN, rtt_ms=30.0),
    dict(GREEN, cake_state="YELLOW"),
])
def test_each_recovery_condition_blocks_recovery(ineligible):
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(60, 0.5, **ineligible)
    decisions = decide(Engine(scorer_config(shadow=False)), samples)
    assert [d.decision for d in decisions] == ["ENABLE_STEERING"]


def test_allowed_states_lets_yellow_recover_when_configured():
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(60, 0.5, **dict(GREEN, cake_state="YELLOW"))
    assert len(decide(Engine(scorer_config(shadow=False)), samples)) == 1
    cfg = scorer_config(shadow=False, recovery={"allowed_states": ["GREEN", "YELLOW"]})
    enable, disable = decide(Engine(cfg), samples)
    assert disable.t == pytest.approx(1035.0) and disable.confidence == 10


def test_recovery_treats_null_drops_as_zero():
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(60, 0.5, **dict(GREEN, drops_per_sec=None))
    assert len(decide(Engine(scorer_config(shadow=False)), samples)) == 2


def test_hysteresis_counts_samples_and_reports_sustained_from_first_counted():
    cfg = scorer_config(policy="hysteresis", shadow=False)
    feed = Feed()
    samples = feed.run(1, 0.5, **STEER_NOW) + feed.run(1, 0.5, **GREEN) + feed.run(2, 0.5, **STEER_NOW)
    samples += feed.run(14, 0.5, **GREEN) + feed.run(1, 0.5, cake_state="YELLOW") + feed.run(15, 0.5, **GREEN)
    enable, disable = decide(Engine(cfg), samples)
    assert (enable.policy, enable.driving, enable.t, enable.sustained_s) == ("hysteresis", True, 1001.5, 0.5)
    assert disable.t == pytest.approx(1009.5 + 7.0) and disable.sustained_s == pytest.approx(7.0)
    # The confidence policy is not running: its base threshold and no penalty are reported.
    assert (enable.threshold, enable.flap_penalty) == (55, False)


def test_driving_decision_is_emitted_before_the_shadow_one_on_the_same_sample():
    feed = Feed()
    samples = feed.run(2, 0.5, **STEER_NOW)
    for policy, first in (("confidence", "confidence"), ("hysteresis", "hysteresis")):
        cfg = scorer_config(policy=policy, shadow=True, confidence={"sustain_s": 0.5})
        d1, d2 = decide(Engine(cfg), samples)
        assert (d1.policy, d1.driving, d2.driving) == (first, True, False)
        assert (d1.seq, d2.seq) == (1, 2)
        assert d1.t == d2.t == 1000.5


def test_shadow_hysteresis_keeps_its_own_state():
    feed = Feed()
    samples = feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(10, 0.5, **GREEN)
    decisions = decide(Engine(scorer_config()), samples)
    assert [(d.policy, d.decision) for d in decisions] == [
        ("hysteresis", "ENABLE_STEERING"), ("confidence", "ENABLE_STEERING"), ("hysteresis", "DISABLE_STEERING"),
    ]
    assert [d.driving for d in decisions] == [False, True, False]
    assert [d.seq for d in decisions] == [1, 2, 3]


def test_decision_seq_counts_across_wans():
    a, b = Feed("wan1"), Feed("wan2")
    engine = Engine(scorer_config(shadow=False))
    out = []
    for sa, sb in zip(a.seconds(3, 0.5, **STEER_NOW), b.seconds(3, 0.5, **STEER_NOW)):
        out += [*engine.process(sa).decisions, *engine.process(sb).decisions]
    assert [(d.wan, d.seq) for d in out] == [("wan1", 1), ("wan2", 2)]


def test_state_reports_desired_state_and_timers():
    feed = Feed()
    engine = Engine(scorer_config(shadow=False))
    decide(engine, feed.seconds(2.5, 0.5, **STEER_NOW))
    (state,) = engine.states()
    assert state.desired == "DEGRADED" and state.decision_seq == 1
    assert state.hold_down_remaining_s == pytest.approx(30.0 - 0.0)
    assert state.confidence == 75 and state.threshold == 55


def test_timer_expiries_resets_and_penalties_are_counted_per_wan():
    feed = Feed()
    samples = feed.seconds(1.0, 0.5, **STEER_NOW) + feed.run(1, 0.5, **GREEN)  # degrade run reset
    samples += feed.seconds(2.5, 0.5, **STEER_NOW) + feed.seconds(31.0, 0.5, **GREEN)
    samples += feed.run(1, 0.5, cake_state="YELLOW") + feed.seconds(5.0, 0.5, **GREEN)  # recovery reset
    engine = Engine(scorer_config(shadow=False))
    assert len(decide(engine, samples)) == 2
    cp = engine.wans["wan1"].confidence_policy
    assert (cp.degrade_resets, cp.recovery_resets, cp.hold_down_expiries, cp.penalties) == (1, 1, 1, 0)
