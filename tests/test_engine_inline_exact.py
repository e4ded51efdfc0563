"""The engine's inline path (quality driving, a complete sample) against its general path.

A sample with ``rtt_status: "ok"`` and an RTT means the same as one with a null
status (SPEC section 3), but the engine's fast check sends it through the
general path: ``_admit``, the full 2B/2A step and ``quality.step``.  Fed the same
trace both ways, two engines must emit the same decisions and end in the same
persisted state, byte for byte.
"""

import math

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto.config import parse_config
from proto.messages import Telemetry
from scorer.engine import REJECTED, SCORED, Engine, rejection_cause

FIELDS = ("seq", "wan", "t", "wall", "telemetry_seq", "policy", "driving", "fallback", "decision", "state",
          "confidence", "threshold", "flap_penalty", "contributors", "sustained_s")

configs = st.fixed_dictionaries({
    "shadow": st.sampled_from([True, False, ["confidence"], ["hysteresis"]]),
    "max_gap_s": st.sampled_from([1.0, 5.0]),
    "confidence": st.fixed_dictionaries({
        "sustain_s": st.sampled_from([0.0, 1.0, 2.0]),
        "hold_down_s": st.sampled_from([0.0, 2.0, 30.0]),
        "steer_threshold": st.sampled_from([1, 30, 55]),
        "recovery_threshold": st.just(0),
    }),
    "flap": st.fixed_dictionaries({
        "window_s": st.sampled_from([10.0, 300.0]),
        "max_toggles": st.integers(1, 4),
        "penalty_s": st.sampled_from([5.0, 60.0]),
    }),
    "hysteresis": st.fixed_dictionaries({
        "red_samples_required": st.integers(1, 3),
        "green_samples_required": st.integers(1, 6),
    }),
    "quality": st.fixed_dictionaries({
        "window_s": st.sampled_from([1.0, 4.0, 8.0]),
        "recovery_window_s": st.sampled_from([1.0, 5.0]),
        "severe_window_s": st.sampled_from([1.0, 2.0, 9.0]),
        "sustain_s": st.sampled_from([0.0, 2.5]),
        "hold_down_s": st.sampled_from([0.0, 5.0, 20.0]),
        "flap": st.fixed_dictionaries({"max_enables": st.integers(1, 4), "window_s": st.sampled_from([10.0, 60.0])}),
    }),
})

values = st.fixed_dictionaries({
    "rtt": st.sampled_from([21.0, 22.0, 40.0, 64.0, 66.0, 90.0, 150.0, 400.0]),
    "base": st.sampled_from([20.0, 20.0, 18.0, 25.0, 0.0]),
    "drops": st.sampled_from([0.0, 0.0, 0.0, 2.0, 30.0]),
    "queue": st.sampled_from([0.0, 5.0, 20.0, 60.0, 100.0]),
})
segment = st.fixed_dictionaries({
    "wan": st.sampled_from(["wan1", "wan1", "wan2"]),
    "n": st.integers(1, 25),
    "dt": st.sampled_from([0.2, 0.5, 0.5, 1.0]),
    "jump": st.sampled_from([0.0] * 10 + [3.0, 8.0, -1.0]),  # gaps, and samples out of order
    "values": values,
})


def build(segments, explicit_status):
    clocks = {"wan1": 1000.0, "wan2": 1000.25}
    out = []
    for seq, (g, k) in enumerate(((g, k) for g in segments for k in range(g["n"])), 1):
        if k == 0:
            clocks[g["wan"]] += g["jump"]
        t = clocks[g["wan"]]
        v = g["values"]
        out.append(Telemetry(
            wan=g["wan"], seq=seq, stream="boot-a", t=t, wall=1.7e9 + t, rtt_ms=v["rtt"],
            baseline_rtt_ms=v["base"], drops_per_sec=v["drops"], queue_depth_pct=v["queue"],
            rtt_status="ok" if explicit_status else None,
        ))
        clocks[g["wan"]] = t + g["dt"]
    return out


def decisions(outcome):
    return (outcome.status, outcome.cause, [{f: getattr(d, f) for f in FIELDS} for d in outcome.decisions])


@given(configs, st.lists(segment, min_size=1, max_size=30))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_inline_path_matches_the_general_path(scorer, segments):
    cfg = parse_config({"scorer": {"policy": "quality", **scorer}}).scorer
    inline, general = Engine(cfg), Engine(cfg)
    for a, b in zip(build(segments, False), build(segments, True)):
        assert decisions(inline.process(a)) == decisions(general.process(b))
    assert inline.export() == general.export()
    assert inline.counters == general.counters
    assert [msgspec.json.encode(s) for s in inline.states()] == [msgspec.json.encode(s) for s in general.states()]


BAD_NUMBERS = [math.inf, -math.inf, math.nan, -1.0, -0.0, 0.0, 1e308, 1.7e308]


@given(st.sampled_from(["t", "wall", "rtt_ms", "baseline_rtt_ms", "drops_per_sec", "queue_depth_pct"]),
       st.sampled_from(BAD_NUMBERS))
@settings(max_examples=100, deadline=None)
def test_the_fast_check_accepts_exactly_what_admission_accepts(field, value):
    """Every field of an otherwise complete sample, non-finite, negative, a signed
    zero or huge (sums of such values overflow): rejected for its cause, or scored."""
    engine = Engine(parse_config({}).scorer)
    fields = dict(wan="wan1", stream="boot-a", rtt_ms=30.0, baseline_rtt_ms=20.0, drops_per_sec=0.0,
                  queue_depth_pct=5.0)
    for seq in range(1, 4):
        engine.process(Telemetry(seq=seq, t=1000.0 + seq, wall=1.7e9 + seq, **fields))
    s = Telemetry(**{"seq": 4, "t": 1004.0, "wall": 1.7e9 + 4, **fields, field: value})
    outcome = engine.process(s)
    cause = rejection_cause(s)
    if field == "t" and cause is None and not 1003.0 + 1e-6 < value <= 1003.0 + 86400.0 + 1e-6:
        cause = "out_of_order" if value - 1003.0 <= 1e-6 else "implausible_t"
    if cause is None:
        assert outcome.status == SCORED and engine.wans["wan1"].last_t == s.t
    else:
        assert (outcome.status, outcome.cause) == (REJECTED, cause)
        assert engine.rejected == {cause: 1} and engine.wans["wan1"].last_t == 1003.0
