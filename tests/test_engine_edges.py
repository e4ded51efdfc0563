"""The scorer's edge checks beyond SPEC 5.1: a forged far-future ``t`` cannot blind
a WAN, and WAN names from the bus cannot grow the engine without bound."""

from __future__ import annotations

import msgspec

from proto.config import Wan, parse_config
from proto.messages import Telemetry
from scorer.engine import (
    BAD_WAN_NAME, IMPLAUSIBLE_T, OUT_OF_ORDER, REJECTED, TOO_MANY_WANS, UNKNOWN_WAN, Engine,
)
from tests.support import congested, idle


def engine(scorer: dict | None = None, wans: list[str] = ()) -> Engine:
    cfg = parse_config({"scorer": {"policy": "confidence", "shadow": False,
                                   "confidence": {"sustain_s": 0, "recovery_sustain_s": 0, "hold_down_s": 0},
                                   "flap": {"enabled": False}, **(scorer or {})}})
    return Engine(cfg.scorer, wans=[Wan(name=n, queue=f"q-{n}") for n in wans])


def test_a_far_future_t_on_the_current_stream_is_rejected_and_changes_nothing():
    e = engine()
    assert e.process(idle(1, 1000.0)).status == "scored"
    before = e.export()
    for t in (1e300, 1000.0 + 86400.0 + 1.0):
        # Both paths: the complete sample the fast path takes, and one with the optional fields.
        for sample in (congested(2, t), msgspec.structs.replace(congested(2, t), loss_pct=0.0)):
            outcome = e.process(sample)
            assert (outcome.status, outcome.cause, outcome.decisions) == (REJECTED, IMPLAUSIBLE_T, ())
    assert e.rejected == {IMPLAUSIBLE_T: 4}
    assert msgspec.msgpack.decode(e.export())["wans"] == msgspec.msgpack.decode(before)["wans"]
    # The real stream carries on: the next real sample steers at once.
    outcome = e.process(congested(3, 1000.5))
    assert outcome.status == "scored" and [d.decision for d in outcome.decisions] == ["ENABLE_STEERING"]
    # A jump of exactly max_t_jump_s is still plausible (a host suspended for a day).
    assert e.process(idle(4, 1000.5 + 86400.0)).status == "scored"


def test_max_t_jump_s_is_configurable_and_a_new_stream_is_not_a_jump():
    e = engine({"max_t_jump_s": 10.0})
    e.process(idle(1, 5.0))
    assert e.process(idle(2, 15.5)).cause == IMPLAUSIBLE_T
    assert e.process(idle(3, 15.0)).status == "scored"
    rebooted = msgspec.structs.replace(idle(4, 1e6), stream="after-reboot")
    assert e.process(rebooted).status == "scored"  # a new clock starts anywhere
    assert e.process(msgspec.structs.replace(rebooted, seq=5)).cause == OUT_OF_ORDER
    assert e.process(msgspec.structs.replace(rebooted, seq=6, t=1e6 + 10.5)).cause == IMPLAUSIBLE_T


def test_with_a_wans_list_only_configured_wans_are_scored():
    e = engine(wans=["wan1", "wan2"])
    assert e.process(congested(1, 1.0, wan="wan2")).status == "scored"
    for i in range(100):
        outcome = e.process(congested(i, 1.0, wan=f"fake{i}"))
        assert (outcome.status, outcome.cause) == (REJECTED, UNKNOWN_WAN)
    assert set(e.wans) == {"wan2"} and e.rejected == {UNKNOWN_WAN: 100}
    assert [s.wan for s in e.states()] == ["wan2"]


def test_without_a_wans_list_names_and_count_are_bounded():
    e = engine({"max_wans": 3})
    for name in ("", "x" * 65, "bad name", "wan/1", "ümlaut", "x" * 1_000_000):
        assert e.process(idle(1, 1.0, wan=name)).cause == BAD_WAN_NAME
    assert e.process(idle(1, 1.0, wan="x" * 64)).status == "scored"
    for name in ("a", "b.c"):
        assert e.process(idle(1, 1.0, wan=name)).status == "scored"
    assert e.process(idle(1, 1.0, wan="d")).cause == TOO_MANY_WANS
    assert e.process(idle(2, 2.0, wan="a")).status == "scored"  # the kept ones carry on
    assert len(e.wans) == 3 and e.rejected == {BAD_WAN_NAME: 6, TOO_MANY_WANS: 1}
    assert parse_config({}).scorer.max_wans == 1024


def test_a_restored_snapshot_keeps_only_what_the_config_allows():
    e = engine()
    for name in ("wan1", "wan2", "fake1", "fake2"):
        e.process(idle(1, 1.0, wan=name))
    data = e.export()
    cfg = parse_config({"scorer": {"policy": "confidence"}}).scorer
    restored = Engine.restore(cfg, data, wans=[Wan(name="wan1", queue="q")])
    assert set(restored.wans) == {"wan1"}
    small = parse_config({"scorer": {"policy": "confidence", "max_wans": 2}}).scorer
    assert list(Engine.restore(small, data).wans) == ["wan1", "wan2"]


def test_the_checks_change_no_decision_on_the_examples_and_pinned_traces():
    """Every recorded trace's decisions with the checks on equal those with them
    effectively off (a huge max_t_jump_s, max_wans): nothing real is rejected."""
    import gzip
    from pathlib import Path

    root = Path(__file__).parent
    traces = sorted((root / "pinned").glob("*.jsonl.gz"))
    assert traces
    for trace in traces:
        samples = [msgspec.json.decode(line, type=Telemetry)
                   for line in gzip.open(trace).read().splitlines() if line.strip()]
        out = []
        for scorer in ({}, {"max_t_jump_s": 1e308, "max_wans": 65536}):
            cfg = parse_config({"scorer": {"policy": "confidence", **scorer}}).scorer
            e = Engine(cfg)
            decisions = [d for s in samples for d in e.process(s).decisions]
            out.append((msgspec.json.encode(decisions), dict(e.rejected)))
        assert out[0] == out[1], trace.name
        assert not {IMPLAUSIBLE_T, TOO_MANY_WANS, BAD_WAN_NAME} & set(out[0][1]), trace.name
