"""The quality policy (docs/scoring.md): the engine against its literal reading, and its properties."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scorer.quality as quality_module
from proto.config import parse_config
from proto.messages import Telemetry
from scorer.engine import Engine
from tests.reference_quality import ReferenceQuality
from tests.scoring import Feed, decide

FIELDS = ("seq", "wan", "t", "wall", "telemetry_seq", "policy", "driving", "fallback", "decision", "state",
          "confidence", "threshold", "flap_penalty", "contributors", "sustained_s")


def config(wans=(), **quality):
    raw = {"scorer": {"policy": "quality", "shadow": False, "quality": quality}}
    if wans:
        raw["wans"] = [{"name": name, "queue": f"q-{name}", **({"alternate": alt} if alt else {})}
                       for name, alt in wans]
    return parse_config(raw)


def engine_for(cfg):
    return Engine(cfg.scorer, wans=cfg.wans)


# --- differential: the engine against the literal reading ----------------------

quality_configs = st.fixed_dictionaries({
    "window_s": st.sampled_from([2.0, 4.0, 6.0]),
    "steer_share_pct": st.sampled_from([50, 60, 100]),
    "min_samples": st.integers(1, 5),
    "sustain_s": st.sampled_from([0.0, 1.0, 2.5]),
    "delay_severe_ms": st.sampled_from([45.0, 120.0, 120.0, 380.0]),  # 140 and 400 at base 20: on the lines
    "queue_severe_ms": st.sampled_from([45.0, 90.0, 120.0]),
    "severe_window_s": st.sampled_from([1.0, 2.0, 6.0]),
    "severe_share_pct": st.sampled_from([50, 60, 100]),
    "severe_min_samples": st.integers(1, 4),
    "severe_sustain_s": st.sampled_from([0.0, 1.0]),
    "hold_down_s": st.sampled_from([0.0, 2.0, 20.0]),
    "recovery_window_s": st.sampled_from([1.0, 5.0]),
    "recovery_share_pct": st.sampled_from([50, 80, 100]),
    "alternate_stale_s": st.sampled_from([2.0, 10.0]),
    "summary_window_s": st.sampled_from([3.0, 10.0]),
    "flap": st.fixed_dictionaries({"max_enables": st.integers(1, 3), "window_s": st.sampled_from([10.0, 60.0])}),
})

sample_values = st.fixed_dictionaries({
    "rtt": st.sampled_from([None, 21.0, 30.0, 55.0, 60.0, 65.0, 70.0, 140.0, 400.0]),  # 60, 65: the lines at base 20
    "base": st.sampled_from([20.0, 20.0, 20.0, None, 15.0, 60.0]),
    "status": st.sampled_from([None, None, "ok", "lost", "unavailable"]),
    "loss": st.sampled_from([None, None, 0.0, 50.0, 100.0]),
    "qdelay": st.sampled_from([None, None, 0.0, 40.0, 41.0, 45.0, 90.0]),
    "zone": st.sampled_from([None, None, None, "GREEN", "SOFT_RED", "RED"]),
    "drops": st.sampled_from([None, 0.0, 130.0]),
})
segment = st.fixed_dictionaries({
    "wan": st.sampled_from(["wan1", "wan1", "wan2"]),
    "n": st.integers(1, 20),
    "dt": st.sampled_from([0.2, 0.5, 0.5, 1.0]),
    "jump": st.sampled_from([0.0] * 8 + [6.0, 15.0, -1.0]),
    "new_stream": st.sampled_from([False] * 15 + [True]),
    "values": sample_values,
})


def build(segments):
    clocks = {"wan1": [1000.0, "a", 0], "wan2": [1000.25, "a", 0]}
    seq = 0
    out = []
    for g in segments:
        clock = clocks[g["wan"]]
        if g["new_stream"]:
            clock[2] += 1
            clock[1] = f"boot-{clock[2]}"
            clock[0] = 10.0 * clock[2]
        clock[0] += g["jump"]
        v = g["values"]
        for _ in range(g["n"]):
            seq += 1
            out.append(Telemetry(
                wan=g["wan"], seq=seq, stream=clock[1], t=clock[0], wall=1.7e9 + clock[0],
                rtt_ms=v["rtt"], baseline_rtt_ms=v["base"], rtt_status=v["status"], loss_pct=v["loss"],
                queue_delay_ms=v["qdelay"], wan_zone=v["zone"], drops_per_sec=v["drops"],
            ))
            clock[0] += g["dt"]
    return out


@given(quality_configs, st.sampled_from([(), (("wan1", "wan2"), ("wan2", None)),
                                          (("wan1", "wan2"), ("wan2", "wan1"))]),
       st.lists(segment, min_size=1, max_size=30))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engine_matches_the_literal_reading(quality, wans, segments):
    cfg = config(wans, **quality)
    engine, reference = engine_for(cfg), ReferenceQuality(cfg.scorer, cfg.wans)
    for sample in build(segments):
        got = [{f: getattr(d, f) for f in FIELDS} for d in engine.process(sample).decisions]
        assert got == reference.process(sample)
    assert engine.rejected == reference.rejected
    for hold, count in reference.holds.items():
        assert engine.counters[f"quality_holds_{hold}"] == count


# --- properties ------------------------------------------------------------------

IDLE = dict(rtt_ms=22.0, baseline_rtt_ms=20.0, drops_per_sec=None, queue_depth_pct=None)


@given(st.sampled_from([0.2, 0.5, 1.0]), st.integers(5, 200),
       st.sampled_from([dict(rtt_ms=2000.0), dict(rtt_ms=None, rtt_status="lost"), dict(loss_pct=100.0),
                        dict(queue_delay_ms=500.0), dict(rtt_ms=500.0, wan_zone="RED")]))
@settings(max_examples=60, deadline=None)
def test_a_single_spike_never_steers(dt, at, spike):
    engine = engine_for(config())
    feed = Feed()
    samples = feed.run(at, dt, **IDLE) + feed.run(1, dt, **{**IDLE, **spike}) + feed.run(60, dt, **IDLE)
    assert decide(engine, samples) == []


@given(st.sampled_from([0.2, 0.5, 1.0]), st.integers(5, 60), st.floats(0.0, 2.0),
       st.lists(st.floats(45.0, 119.9), min_size=1, max_size=11))
@settings(max_examples=80, deadline=None)
def test_a_moderate_burst_of_up_to_2_s_never_steers(dt, at, span, excess):
    """A burst under the severe line whose first and last bad samples are at most 2 s apart
    (the well-managed cable recording's +48-102 ms bursts) is ridden out, at any cadence."""
    n = int(span / dt + 1e-9) + 1
    engine = engine_for(config())
    feed = Feed()
    before = feed.run(at, dt, **IDLE)
    burst = feed.run(n, dt, **IDLE)
    for i, s in enumerate(burst):
        burst[i] = msgspec.structs.replace(s, rtt_ms=20.0 + excess[i % len(excess)])
    after = feed.run(40, dt, **IDLE)
    assert burst[-1].t - burst[0].t <= 2.0 + 1e-6
    assert decide(engine, before + burst + after) == []


@pytest.mark.parametrize("dt", [0.2, 0.5])
def test_severe_delay_steers_after_about_a_second(dt):
    """+130 ms of excess delay steers by the severe rule once its oldest severe sample is 1 s old
    (at a cadence that puts at least 3 samples in its 2 s window)."""
    engine = engine_for(config())
    feed = Feed()
    decide(engine, feed.run(20, dt, **IDLE))
    start = feed.t
    (d,) = decide(engine, feed.run(20, dt, **{**IDLE, "rtt_ms": 150.0}))
    assert d.decision == "ENABLE_STEERING" and d.t - start == pytest.approx(1.0)
    assert d.contributors[1].startswith("severe_share=") and d.confidence >= d.threshold == 60
    assert d.sustained_s == pytest.approx(1.0)


def test_moderate_delay_steers_after_the_sustain():
    engine = engine_for(config())
    feed = Feed()
    decide(engine, feed.run(20, 0.5, **IDLE))
    start = feed.t
    (d,) = decide(engine, feed.run(20, 0.5, **{**IDLE, "rtt_ms": 100.0}))
    assert d.t - start == pytest.approx(2.5) and not any(c.startswith("severe_share=") for c in d.contributors)


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40), st.sampled_from([0.2, 0.5, 1.0])),
                min_size=1, max_size=80),
       st.integers(1, 4), st.sampled_from([30.0, 120.0, 3600.0]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_flap_cap_bounds_toggles_in_every_window(pattern, max_enables, window_s):
    cfg = config(hold_down_s=0.0, sustain_s=0.0, min_samples=1, window_s=1.0, recovery_window_s=0.5,
                 flap={"max_enables": max_enables, "window_s": window_s})
    engine = engine_for(cfg)
    feed = Feed()
    samples = []
    for bad, n, dt in pattern:
        samples += feed.run(n, dt, **{**IDLE, "rtt_ms": 400.0 if bad else 21.0})
    decisions = decide(engine, samples)
    enables = [d.t for d in decisions if d.decision == "ENABLE_STEERING"]
    toggles = [d.t for d in decisions]
    for i, start in enumerate(toggles):
        inside = [x for x in toggles[i:] if x < start + window_s - 1e-6]
        assert len(inside) <= 2 * max_enables + 1
    for i, start in enumerate(enables):
        assert len([x for x in enables[i:] if x < start + window_s - 1e-6]) <= max_enables


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=20),
       st.sampled_from([None, "unavailable"]))
@settings(max_examples=60, deadline=None)
def test_unavailable_samples_change_nothing(pattern, status):
    """Inserting unavailable samples (no RTT, no baseline, no queue) never changes a decision."""
    def run(with_gaps):
        engine = engine_for(config())
        feed = Feed()
        out = []
        for n_bad, n_gap in pattern:
            for s in feed.run(n_bad, 0.5, **{**IDLE, "rtt_ms": 300.0}) + feed.run(10, 0.5, **IDLE):
                out += engine.process(s).decisions
            for s in feed.run(n_gap, 0.5, rtt_ms=None, baseline_rtt_ms=None, rtt_status=status):
                if with_gaps:
                    out += engine.process(s).decisions
        return [(d.t, d.decision) for d in out]

    assert run(True) == run(False)


def test_unavailable_for_minutes_never_steers():
    engine = engine_for(config())
    feed = Feed()
    samples = feed.run(20, 0.5, **IDLE) + feed.run(600, 0.5, rtt_ms=None, rtt_status="unavailable")
    assert decide(engine, samples) == []


# --- steering on each kind of telemetry --------------------------------------------


@pytest.mark.parametrize("fields", [
    dict(rtt_ms=150.0, drops_per_sec=None, queue_depth_pct=None),  # RTT-only
    dict(rtt_ms=None, baseline_rtt_ms=None, queue_delay_ms=80.0),  # queue-only
    dict(rtt_ms=150.0, queue_delay_ms=80.0, drops_per_sec=40.0, queue_depth_pct=30.0),  # both
    dict(rtt_ms=None, rtt_status="lost"),  # a dead primary
    dict(rtt_ms=25.0, loss_pct=60.0),  # heavy loss
])
def test_steers_on_every_kind_of_telemetry_within_3_s(fields):
    engine = engine_for(config())
    feed = Feed()
    decide(engine, feed.run(20, 0.5, **IDLE))
    start = feed.t
    (d,) = decide(engine, feed.run(20, 0.5, **{**IDLE, **fields}))
    assert d.decision == "ENABLE_STEERING" and d.policy == "quality" and d.driving
    assert d.t - start <= 3.0
    assert d.contributors[0].startswith("bad_share=") and d.confidence >= d.threshold == 60


def test_drops_and_queue_depth_alone_never_steer():
    engine = engine_for(config())
    feed = Feed()
    samples = feed.run(200, 0.5, **{**IDLE, "drops_per_sec": 130.0, "queue_depth_pct": 100.0, "rtt_ms": 50.0})
    assert decide(engine, samples) == []


def test_recovers_under_aqm_managed_load_after_the_hold_down():
    engine = engine_for(config())
    feed = Feed()
    (on,) = decide(engine, feed.run(20, 0.5, **{**IDLE, "rtt_ms": 200.0}))
    # The load goes on, managed: +25 ms with CAKE dropping.
    (off,) = decide(engine, feed.run(80, 0.5, **{**IDLE, "rtt_ms": 45.0, "drops_per_sec": 130.0}))
    assert off.decision == "DISABLE_STEERING"
    assert 20.0 <= off.t - on.t <= 20.0 + 5.0 + 1e-6
    assert any(c.startswith("good_share=") for c in off.contributors)


def test_a_rising_baseline_does_not_end_an_episode():
    engine = engine_for(config())
    feed = Feed()
    out = decide(engine, feed.run(10, 0.5, **IDLE))
    base = 20.0
    for _ in range(240):  # the estimator climbs with the load
        base += 1.5
        out += decide(engine, feed.run(1, 0.5, **{**IDLE, "rtt_ms": 400.0, "baseline_rtt_ms": base}))
    assert [d.decision for d in out] == ["ENABLE_STEERING"]
    assert engine.wans["wan1"].quality.base == 21.5  # the first loaded sample's: the path was not congested yet
    assert "baseline_frozen=21.5ms" in out[0].contributors


# --- do no harm ------------------------------------------------------------------

ALT = (("wan1", "wan2"), ("wan2", None))


def interleave(*feeds_and_fields, n, dt=0.5):
    out = []
    for _ in range(n):
        for feed, fields in feeds_and_fields:
            out.append(feed.sample(**fields))
            feed.t += dt
    return out


@pytest.mark.parametrize("alt_fields,hold", [
    (dict(rtt_ms=500.0, baseline_rtt_ms=20.0), "alternate_worse"),
    (dict(rtt_ms=None, rtt_status="lost"), "alternate_down"),
])
def test_never_steers_onto_a_worse_or_dead_alternate(alt_fields, hold):
    engine = engine_for(config(ALT))
    p, a = Feed("wan1"), Feed("wan2", t=1000.1)
    decide(engine, interleave((p, IDLE), (a, IDLE), n=20) + interleave((p, IDLE), (a, {**IDLE, **alt_fields}), n=20))
    out = decide(engine, interleave((p, {**IDLE, "rtt_ms": 300.0}), (a, {**IDLE, **alt_fields}), n=40))
    assert [d for d in out if d.wan == "wan1"] == []
    assert engine.counters[f"quality_holds_{hold}"] == 1
    assert engine.wans["wan1"].quality.hold == hold


def test_never_steers_onto_an_unmeasured_alternate():
    engine = engine_for(config(ALT))
    p = Feed("wan1")
    out = decide(engine, p.run(20, 0.5, **IDLE) + p.run(40, 0.5, **{**IDLE, "rtt_ms": 300.0}))
    assert out == [] and engine.wans["wan1"].quality.hold == "alternate_stale"


def test_steers_back_when_the_alternate_dies_while_steered():
    engine = engine_for(config(ALT))
    p, a = Feed("wan1"), Feed("wan2", t=1000.1)
    decide(engine, interleave((p, IDLE), (a, IDLE), n=20))
    (on,) = decide(engine, interleave((p, {**IDLE, "rtt_ms": 300.0}), (a, IDLE), n=10))
    assert on.decision == "ENABLE_STEERING"
    out = decide(engine, interleave((p, {**IDLE, "rtt_ms": 300.0}), (a, dict(rtt_ms=None, rtt_status="lost")),
                                    n=20))
    back = [d for d in out if d.wan == "wan1"]
    assert back[0].decision == "DISABLE_STEERING"
    assert back[0].contributors[-1] in ("alternate_worse", "alternate_down")  # its loss rises: worse, then down
    assert back[0].t - on.t < 20.0  # inside the hold-down: harm does not wait
    assert engine.counters["quality_steer_backs"] >= 1


def test_without_an_alternate_the_check_is_off():
    engine = engine_for(config())
    p = Feed("wan1")
    (on,) = decide(engine, p.run(20, 0.5, **IDLE) + p.run(20, 0.5, **{**IDLE, "rtt_ms": 300.0}))
    assert on.decision == "ENABLE_STEERING"


# --- fallback, shadows, order ------------------------------------------------------


def test_a_failing_quality_policy_falls_back_to_hysteresis_for_the_driving_state(monkeypatch):
    engine = engine_for(config())
    feed = Feed()
    decide(engine, feed.run(3, 0.5, **IDLE))
    # Both entry points: the engine runs the common case of step inline and judge for the rest.
    monkeypatch.setattr(quality_module, "step", lambda *a: 1 / 0)
    monkeypatch.setattr(quality_module, "judge", lambda *a: 1 / 0)
    (d,) = decide(engine, feed.run(2, 0.5, rtt_ms=170.0, drops_per_sec=8.0, queue_depth_pct=80.0))
    assert (d.policy, d.driving, d.fallback, d.decision) == ("hysteresis", True, True, "ENABLE_STEERING")
    q = engine.wans["wan1"].quality
    assert q.state == "DEGRADED" and q.enables == [d.t] and q.hold_down_until == pytest.approx(d.t + 20.0)
    assert engine.counters["quality_errors"] == 2 and engine.desired("wan1") == "DEGRADED"


def test_shadow_order_is_driving_then_quality_confidence_hysteresis():
    cfg = parse_config({"scorer": {"policy": "hysteresis", "shadow": True,
                                   "hysteresis": {"red_samples_required": 5},
                                   "confidence": {"sustain_s": 2.0},
                                   "quality": {"sustain_s": 2.0, "delay_severe_ms": 1000.0}}})
    engine = Engine(cfg.scorer)
    feed = Feed()
    decide(engine, feed.run(10, 0.5, **IDLE))
    out = decide(engine, feed.run(10, 0.5, rtt_ms=170.0, drops_per_sec=8.0, queue_depth_pct=80.0,
                                  cake_state="RED"))
    same_t = {}
    for d in out:
        same_t.setdefault(d.t, []).append(d.policy)
    assert ["hysteresis", "quality", "confidence"] in same_t.values()
    assert [d.seq for d in out] == sorted(d.seq for d in out)


def test_the_default_config_drives_with_quality_and_shadows_the_others():
    engine = Engine(parse_config({}).scorer)
    assert (engine.driving, engine.shadows) == ("quality", ["confidence", "hysteresis"])


def test_snapshot_restores_the_quality_state():
    cfg = config(ALT)
    engine = engine_for(cfg)
    p, a = Feed("wan1"), Feed("wan2", t=1000.1)
    decide(engine, interleave((p, IDLE), (a, IDLE), n=20) + interleave((p, {**IDLE, "rtt_ms": 300.0}),
                                                                    (a, IDLE), n=10))
    again = Engine.restore(cfg.scorer, engine.export(), wans=cfg.wans)
    assert again.wans["wan1"].quality == engine.wans["wan1"].quality
    assert again.wans["wan2"].summary == engine.wans["wan2"].summary
    assert again.desired("wan1") == "DEGRADED"
