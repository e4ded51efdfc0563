"""The scorer's engine totals as health and Prometheus metrics (EngineMetrics), and the stage health helpers."""

from __future__ import annotations

import logging
import shutil

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proto.config import parse_config
from runtime.health import Health
from scorer.process import EngineMetrics, ScorerCore
from tests.supervisor_harness import load, short_tmp, write_config
from tests.support import congested, idle


def samples(h: Health) -> dict[tuple[str, tuple], float]:
    text = generate_latest(h.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def directory():
    d = short_tmp()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def scorer_config(directory, **scorer):
    return load(write_config(directory, {"scorer": {"policy": "confidence",
        "shadow": False, "flap": {"enabled": True, "max_toggles": 1, "window_s": 100.0, "penalty_s": 5.0},
        "confidence": {"sustain_s": 1.0, "recovery_sustain_s": 0.0, "hold_down_s": 1.0}, **scorer}}))


def feed(core: ScorerCore, metrics: EngineMetrics, make, seq: int, t: float) -> None:
    for decision in core.on_telemetry(make(seq, t)):
        metrics.decided(decision)
    metrics.sync(core, core.engine.states(), now=t)
    metrics.sync_engine(core, now=t)  # the scorer loop does this once per heartbeat


def test_timers_flap_brake_and_rejections_become_metrics(directory):
    core = ScorerCore(scorer_config(directory), epoch=1)
    health = Health("scorer", port=None)
    metrics = EngineMetrics(health, core.cfg)
    # t=0 congested, t=0.5 idle: a degrade run cleared before its 1 s.
    steps = [(congested, 0.0), (idle, 0.5)]
    # ENABLE at 2.0 (run from 1.0), hold-down to 3.0, DISABLE at 3.5: two toggles, the penalty starts.
    steps += [(congested, 1.0), (congested, 1.5), (congested, 2.0), (congested, 2.5), (idle, 3.0), (idle, 3.5)]
    steps += [(idle, 4.0 + 0.5 * i) for i in range(12)]  # the penalty (to 8.5) runs out
    for seq, (make, t) in enumerate(steps, 1):
        feed(core, metrics, make, seq, t)
    feed(core, metrics, idle, len(steps) + 1, 1.0)  # out of order: rejected
    m = samples(health)
    wan = ("wan", "wan1")
    assert m[("wanctl_timer_resets_total", (("timer", "degrade"), wan))] == 1
    assert m[("wanctl_timer_expiries_total", (("timer", "degrade"), wan))] == 1
    assert m[("wanctl_timer_expiries_total", (("timer", "hold_down"), wan))] == 1
    assert m[("wanctl_timer_expiries_total", (("timer", "recovery"), wan))] == 1
    assert m[("wanctl_flap_brake_activations_total", (wan,))] == 1
    assert m[("wanctl_timer_expiries_total", (("timer", "flap_penalty"), wan))] == 1
    assert m[("wanctl_flap_penalty_active", (wan,))] == 0
    assert m[("wanctl_decisions_total", (("direction", "enable"), ("driving", "true"), ("policy", "confidence"),
                                         wan))] == 1
    assert m[("wanctl_rejected_samples_total", (("cause", "out_of_order"), ("wan", "")))] == 1
    doc = health.snapshot()
    assert core.counters["rejected_out_of_order"] == 1
    assert doc["details"]["wans"]["wan1"]["state"] == "GOOD" and doc["details"]["last_decision_seq"] == 2
    core.close()

    # A restarted scorer's counters carry on from the engine's persisted totals (no reset, no double count).
    again = ScorerCore(scorer_config(directory), epoch=2)
    health2 = Health("scorer", port=None)
    metrics2 = EngineMetrics(health2, again.cfg)
    metrics2.sync(again, again.engine.states(), now=0.0)
    metrics2.sync_engine(again, now=0.0)
    m2 = samples(health2)
    assert m2[("wanctl_flap_brake_activations_total", (wan,))] == 1
    assert m2[("wanctl_timer_resets_total", (("timer", "degrade"), wan))] == 1
    assert ("wanctl_timer_expiries_total", (("timer", "flap_penalty"), wan)) not in m2
    again.close()


def test_health_sync_helpers_count_increases_only():
    h = Health("actuator", port=None)
    h.sync_dropped({"malformed": 2, "bad_version": 0, "received": 50})
    h.sync_dropped({"malformed": 3, "bad_version": 1, "received": 60})
    h.sync_reconnects("router", 0)
    h.sync_reconnects("router", 2)
    h.sync_reconnects("router", 2)
    h.router_request("/ip/firewall/mangle/print", 0.004)
    h.router_request("/ip/firewall/mangle/set", 1.2, "timeout")
    m = samples(h)
    assert m[("wanctl_dropped_frames_total", (("reason", "malformed"),))] == 3
    assert m[("wanctl_dropped_frames_total", (("reason", "bad_version"),))] == 1
    assert m[("wanctl_router_request_seconds_count", (("operation", "/ip/firewall/mangle/print"),))] == 1
    assert m[("wanctl_router_errors_total", (("operation", "/ip/firewall/mangle/set"),))] == 1
    assert m[("wanctl_reconnects_total", (("peer", "router"),))] == 2


def test_a_taken_health_port_is_logged_and_the_stage_runs_on(caplog):
    taken = Health("scorer", port=0).start()
    try:
        cfg = parse_config({"health": {"scorer": taken.port}})
        with caplog.at_level(logging.ERROR, logger="wanctl.health"):
            h = Health.for_stage(cfg, "scorer")
        assert h.url is None
        assert f"cannot listen on 127.0.0.1:{taken.port}" in caplog.text and "health.scorer" in caplog.text
        h.saw("telemetry")
        assert h.status == "ok"
        h.stop()
        noop = Health.for_stage(parse_config({"health": {"actuator": 0}}), "actuator", name="actuator-noop")
        assert noop.snapshot()["stage"] == "actuator-noop" and noop.url is None
    finally:
        taken.stop()


def test_the_quality_hold_per_wan_is_in_the_health_details(directory):
    """Do no harm (docs/scoring.md rule 8): a hold shows per WAN in /health's details."""
    cfg = load(write_config(directory, {
        "scorer": {"policy": "quality", "shadow": False},
        "wans": [{"name": "wan1", "queue": "q-wan1", "alternate": "wan2"}, {"name": "wan2", "queue": "q-wan2"}]}))
    core = ScorerCore(cfg, epoch=1)
    health = Health("scorer", port=None)
    metrics = EngineMetrics(health, core.cfg)
    seq = 0
    for i in range(20):  # wan1 congested, wan2 never measured: steering onto it is held
        seq += 1
        feed(core, metrics, congested if i >= 4 else idle, seq, 0.5 * i)
    holds = health.snapshot()["details"]["quality_holds"]
    assert holds == {"wan1": "alternate_stale"}
    for i in range(20, 30):  # wan2 answers, idle: the hold ends (and wan1 steers)
        seq += 2
        feed(core, metrics, lambda s, t: idle(s, t, wan="wan2"), seq - 1, 0.5 * i + 0.1)
        feed(core, metrics, congested, seq, 0.5 * i)
    assert health.snapshot()["details"]["quality_holds"] == {"wan1": None, "wan2": None}
    assert core.engine.desired("wan1") == "DEGRADED"
    core.close()
