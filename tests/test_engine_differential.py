"""The engine against a literal, unoptimised reading of SPEC section 5 on random traces."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto.messages import Telemetry
from scorer.engine import Engine
from tests.reference_scorer import ReferenceScorer
from tests.scoring import scorer_config

FIELDS = ("seq", "wan", "t", "wall", "telemetry_seq", "policy", "driving", "fallback", "decision", "state",
          "confidence", "threshold", "flap_penalty", "contributors", "sustained_s")

configs = st.fixed_dictionaries({
    "policy": st.sampled_from(["confidence", "hysteresis"]),
    "shadow": st.booleans(),
    "max_gap_s": st.sampled_from([1.0, 2.5, 5.0]),
    "confidence": st.fixed_dictionaries({
        "sustain_s": st.sampled_from([0.0, 0.5, 1.0, 2.0]),
        "recovery_sustain_s": st.sampled_from([0.0, 1.0, 3.0]),
        "hold_down_s": st.sampled_from([0.0, 2.0, 5.0, 30.0]),
        "steer_threshold": st.sampled_from([30, 55, 60]),
        "recovery_threshold": st.sampled_from([0, 10, 20]),
    }),
    "recovery": st.fixed_dictionaries({
        "allowed_states": st.sampled_from([["GREEN"], ["GREEN", "YELLOW"]]),
    }),
    "flap": st.fixed_dictionaries({
        "enabled": st.booleans(),
        "window_s": st.sampled_from([10.0, 60.0, 300.0]),
        "max_toggles": st.integers(1, 4),
        "penalty_s": st.sampled_from([5.0, 20.0, 60.0]),
        "penalty_threshold_add": st.sampled_from([0, 15, 50]),
    }),
    "hysteresis": st.fixed_dictionaries({
        "red_samples_required": st.integers(1, 3),
        "green_samples_required": st.integers(1, 6),
    }),
})

level = st.sampled_from([0.0, 0.5, 2.0, 9.0, 55.0, 80.0]) | st.floats(0, 100, allow_nan=False)
rare_junk = st.sampled_from([None] * 12 + [-1.0, math.nan])

calm = st.fixed_dictionaries({
    "rtt": st.sampled_from([20.0, 21.0, 22.0, 29.0]), "drops": st.sampled_from([0.0, 0.0, None]),
    "queue": st.sampled_from([0.0, 1.0, 5.0, None]), "cake_state": st.sampled_from([None, None, "GREEN"]),
})
congested = st.fixed_dictionaries({
    "rtt": st.sampled_from([70.0, 105.0, 140.0, 200.0]), "drops": st.sampled_from([2.0, 9.0, 30.0]),
    "queue": st.sampled_from([55.0, 80.0, 100.0]), "cake_state": st.sampled_from([None, None, "RED", "SOFT_RED"]),
})
anything = st.fixed_dictionaries({
    "rtt": st.sampled_from([21.0, 30.0, 70.0, 140.0]) | st.none() | st.floats(0, 300),
    "drops": st.none() | level,
    "queue": st.none() | level,
    "cake_state": st.sampled_from([None, "GREEN", "YELLOW", "SOFT_RED", "RED", "BAD"]),
})
segment = st.tuples(
    st.one_of(calm, congested, anything),
    st.fixed_dictionaries({
        "wan": st.sampled_from(["wan1", "wan1", "wan2"]),
        "n": st.integers(1, 25),
        "dt": st.sampled_from([0.05, 0.5, 0.5, 1.0, 2.0]),
        "jump": st.sampled_from([0.0] * 8 + [3.0, 7.0, -1.0]),  # a gap, or going backwards
        "new_stream": st.sampled_from([False] * 12 + [True]),
        "base": st.sampled_from([20.0] * 8 + [None]),
        "rising": st.booleans(),
        "wan_zone": st.sampled_from([None] * 6 + ["GREEN", "YELLOW", "SOFT_RED", "RED", "PINK"]),
        "junk": rare_junk,
    }),
).map(lambda pair: {**pair[1], **pair[0]})


def build(segments):
    clocks = {"wan1": [1000.0, "a", 0], "wan2": [500.0, "a", 0]}
    seq = 0
    out = []
    for g in segments:
        clock = clocks[g["wan"]]
        if g["new_stream"]:
            clock[2] += 1
            clock[1] = f"boot-{clock[2]}"
            clock[0] = 10.0 * clock[2]
        clock[0] += g["jump"]
        for i in range(g["n"]):
            seq += 1
            drops = g["drops"]
            if g["rising"] and drops is not None:
                drops = drops + i
            if g["junk"] is not None and i == g["n"] // 2:
                drops = g["junk"]
            out.append(Telemetry(
                wan=g["wan"], seq=seq, stream=clock[1], t=clock[0], wall=1.7e9 + clock[0] + (seq % 7) * 3600,
                rtt_ms=g["rtt"], baseline_rtt_ms=g["base"], drops_per_sec=drops, queue_depth_pct=g["queue"],
                cake_state=g["cake_state"], wan_zone=g["wan_zone"],
            ))
            clock[0] += g["dt"]
    return out


def assert_same_decisions(raw_config, segments):
    cfg = scorer_config(**raw_config)
    engine, reference = Engine(cfg), ReferenceScorer(cfg)
    for sample in build(segments):
        got = [{f: getattr(d, f) for f in FIELDS} for d in engine.process(sample).decisions]
        want = [{f: d[f] for f in FIELDS if f in d} | {"fallback": False} for d in reference.process(sample)]
        assert got == want
    assert engine.rejected == reference.rejected


@given(configs, st.lists(segment, min_size=1, max_size=40))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engine_matches_the_literal_reading(raw_config, segments):
    assert_same_decisions(raw_config, segments)


flappy_configs = st.fixed_dictionaries({
    "policy": st.sampled_from(["confidence", "hysteresis"]),
    "shadow": st.booleans(),
    "confidence": st.fixed_dictionaries({
        "sustain_s": st.sampled_from([0.0, 0.5, 1.0]),
        "recovery_sustain_s": st.sampled_from([0.0, 0.5, 1.0]),
        "hold_down_s": st.sampled_from([0.0, 0.5, 2.0]),
    }),
    "flap": st.fixed_dictionaries({
        "window_s": st.sampled_from([20.0, 60.0, 300.0]),
        "max_toggles": st.integers(1, 3),
        "penalty_s": st.sampled_from([3.0, 10.0, 30.0]),
        "penalty_threshold_add": st.sampled_from([10, 15, 30]),
    }),
    "hysteresis": st.fixed_dictionaries({"green_samples_required": st.integers(1, 3)}),
})
# Episodes of 60 points (RED + queue) and of 75 (RED + severe RTT), and calm.
flappy_segment = st.tuples(
    st.sampled_from([
        dict(cake_state="GREEN", rtt=21.0, queue=1.0),
        dict(cake_state="RED", rtt=30.0, queue=60.0),
        dict(cake_state="RED", rtt=170.0, queue=5.0),
    ]),
    st.integers(1, 8),
).map(lambda pair: {"wan": "wan1", "n": pair[1], "dt": 0.5, "jump": 0.0, "new_stream": False, "base": 20.0,
                    "drops": 0.0, "rising": False, "wan_zone": None, "junk": None, **pair[0]})


@given(flappy_configs, st.lists(flappy_segment, min_size=4, max_size=60))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engine_matches_the_literal_reading_on_flapping_links(raw_config, segments):
    assert_same_decisions(raw_config, segments)
