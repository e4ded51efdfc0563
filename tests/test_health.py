"""The health endpoint library, wanctl-status and the sample alert rules, over real HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proto.config import ConfigError, load_config, parse_config
from runtime.health import Health, scorer_wan_details
from proto.messages import State
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
STATUS = [str(Path(sys.executable).parent / "wanctl-status")]


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def health_of(h: Health) -> tuple[int, dict]:
    code, _, body = get(f"{h.url}/health")
    return code, json.loads(body)


@pytest.fixture
def health():
    h = Health("scorer", port=0).start()
    try:
        yield h
    finally:
        h.stop()


def test_fresh_stage_is_ok_with_uptime_and_no_last_message(health):
    code, doc = health_of(health)
    assert code == 200
    assert doc["stage"] == "scorer" and doc["status"] == "ok" and doc["reasons"] == {}
    assert doc["uptime_s"] >= 0 and doc["last_message"] is None
    assert doc["counters"] == {}


def test_stale_expected_input_degrades_and_recovers(health):
    health.expect("telemetry", max_age_s=0.3)
    health.saw("telemetry")
    code, doc = health_of(health)
    assert code == 200 and doc["last_message"]["kind"] == "telemetry"
    assert 0 <= doc["last_message"]["age_s"] < 10

    # No telemetry any more: degraded, with the reason an operator can act on.
    code, doc = wait_for(lambda: (r := health_of(health))[0] == 503 and r, 15, "the health endpoint to say 503")
    assert doc["status"] == "degraded"
    assert re.fullmatch(r"no telemetry for \d+\.\d s \(limit 0\.3 s\)", doc["reasons"]["stale_telemetry"])

    health.saw("telemetry")
    code, doc = health_of(health)
    assert code == 200 and doc["status"] == "ok" and "stale_telemetry" not in doc["reasons"]


def test_named_conditions_take_the_worst_level(health):
    health.degrade("router", "router 127.0.0.1:8728 unreachable: connection refused")
    health.fail("rule", "mangle rule comment 'wanctl-steer' matches 2 rules")
    code, doc = health_of(health)
    assert code == 503 and doc["status"] == "failing"
    assert set(doc["reasons"]) == {"router", "rule"}
    health.clear("rule")
    assert health_of(health)[1]["status"] == "degraded"
    health.clear("router")
    assert health_of(health)[0] == 200


def test_counters_and_details_are_served(health):
    health.rejected("non_finite", "wan1")
    health.rejected("non_finite", "wan1")
    health.rejected("out_of_order", "wan2")
    health.reconnected("router")
    health.router_error("queue_print")
    health.dropped_frame("undecodable")
    health.count("decisions_written", 3)
    state = State(wan="wan1", seq=7, desired="DEGRADED", decision_seq=4, confidence=80, threshold=70,
                  flap_penalty=True, hold_down_remaining_s=12.5, flap_penalty_remaining_s=40.0, t=100.0)
    health.set_details({"wans": {"wan1": scorer_wan_details(state, fallbacks=1)}})

    core_counts = {"accepted": 5, "rejected_non_finite": 2}
    health.count_from("core", core_counts)
    core_counts["accepted"] += 1  # a source is read when the document is rendered

    _, doc = health_of(health)
    assert doc["counters"] == {"decisions_written": 3, "accepted": 6, "rejected_non_finite": 2}
    value = health.registry.get_sample_value
    assert value("wanctl_rejected_samples_total", {"wan": "wan1", "cause": "non_finite"}) == 2
    assert value("wanctl_reconnects_total", {"peer": "router"}) == 1
    assert value("wanctl_router_errors_total", {"operation": "queue_print"}) == 1
    assert value("wanctl_dropped_frames_total", {"reason": "undecodable"}) == 1
    assert value("wanctl_stage_count", {"name": "accepted"}) == 6
    wan1 = doc["details"]["wans"]["wan1"]
    assert wan1["state"] == "DEGRADED" and wan1["threshold"] == 70 and wan1["hold_down_remaining_s"] == 12.5
    assert wan1["flap_penalty"] is True and wan1["flap_penalty_remaining_s"] == 40.0 and wan1["fallbacks"] == 1
    assert health.counters() == doc["counters"]


def test_a_counter_defined_by_two_sources_is_an_error_not_a_merge(health):
    health.count_from("core", {"router_errors": 1})
    health.count_from("link", {"router_errors": 6})
    with pytest.raises(ValueError, match="'router_errors' is defined by both 'core' and 'link'"):
        health.counters()


def test_conditions_from_a_core_are_rendered_at_their_level(health):
    conditions = {}
    health.conditions_from("rules", lambda: conditions, "failing")
    assert health_of(health)[0] == 200
    conditions["wan1_rule"] = "no mangle rule with comment 'wanctl:wan1'"
    code, doc = health_of(health)
    assert code == 503 and doc["status"] == "failing"
    assert doc["reasons"] == {"wan1_rule": "no mangle rule with comment 'wanctl:wan1'"}
    conditions.clear()
    assert health_of(health)[1]["status"] == "ok"


def test_scorer_facts_from_its_messages(health):
    from proto.messages import Decision

    def decision(direction, policy="confidence", fallback=False):
        enable = direction == "enable"
        return Decision(seq=1, wan="wan1", t=1.0, wall=2.0, telemetry_seq=1, policy=policy,
                        driving=policy == "confidence" or fallback, fallback=fallback,
                        decision="ENABLE_STEERING" if enable else "DISABLE_STEERING",
                        state="DEGRADED" if enable else "GOOD", confidence=60, threshold=55, flap_penalty=False,
                        contributors=[], sustained_s=2.0)

    health.observe_decision(decision("enable"))
    health.observe_decision(decision("enable", "hysteresis", fallback=True))
    health.observe_state(State(wan="wan1", seq=1, desired="DEGRADED", decision_seq=1, confidence=60,
                               threshold=55, flap_penalty=False, hold_down_remaining_s=29.5))
    health.sync_rejected({"non_finite": 2})
    health.sync_rejected({"non_finite": 3, "out_of_order": 1})
    health.set_details({"journal": "var/scorer-journal.jsonl"})

    _, doc = health_of(health)
    assert doc["details"]["wans"]["wan1"]["fallbacks"] == 1
    assert doc["details"]["wans"]["wan1"]["hold_down_remaining_s"] == 29.5
    assert doc["details"]["journal"] == "var/scorer-journal.jsonl"
    value = health.registry.get_sample_value
    conf = {"wan": "wan1", "policy": "confidence", "driving": "true"}
    assert value("wanctl_decisions_total", {**conf, "direction": "enable"}) == 1
    assert value("wanctl_fallback_decisions_total", {"wan": "wan1"}) == 1
    assert value("wanctl_steering_state", conf) == 1
    assert value("wanctl_confidence_score", {"wan": "wan1"}) == 60
    assert value("wanctl_rejected_samples_total", {"wan": "", "cause": "non_finite"}) == 3
    assert value("wanctl_rejected_samples_total", {"wan": "", "cause": "out_of_order"}) == 1


def test_metrics_are_prometheus_exposition(health):
    m = health.metrics
    m.confidence.labels(wan="wan1").set(72)
    m.steering_state.labels(wan="wan1", policy="confidence", driving="true").set(1)
    m.decisions.labels(wan="wan1", policy="confidence", driving="true", direction="enable").inc()
    m.flap_brake_activations.labels(wan="wan1").inc()
    m.router_rtt.labels(operation="queue_print").observe(0.012)
    health.rejected("negative_rtt", "wan1")
    health.saw("telemetry", 5)
    health.degrade("test", "held degraded by the test")

    code, headers, body = get(f"{health.url}/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("wanctl_confidence_score", (("wan", "wan1"),))] == 72
    assert samples[("wanctl_steering_state", (("driving", "true"), ("policy", "confidence"), ("wan", "wan1")))] == 1
    key = (("direction", "enable"), ("driving", "true"), ("policy", "confidence"), ("wan", "wan1"))
    assert samples[("wanctl_decisions_total", key)] == 1
    assert samples[("wanctl_flap_brake_activations_total", (("wan", "wan1"),))] == 1
    assert samples[("wanctl_rejected_samples_total", (("cause", "negative_rtt"), ("wan", "wan1")))] == 1
    assert samples[("wanctl_bus_messages_total", (("direction", "received"), ("kind", "telemetry")))] == 5
    assert samples[("wanctl_router_request_seconds_count", (("operation", "queue_print"),))] == 1
    assert samples[("wanctl_health_status", ())] == 1
    assert samples[("wanctl_up_seconds", ())] >= 0
    assert 0 <= samples[("wanctl_last_message_age_seconds", ())] < 60


def test_unknown_path_is_404(health):
    code, _, body = get(f"{health.url}/nope")
    assert code == 404 and b"/health" in body


def test_port_in_use_and_non_loopback_are_clear_errors(health):
    with pytest.raises(OSError, match=rf"health endpoint of logger: cannot listen on 127.0.0.1:{health.port}"):
        Health("logger", port=health.port).start()
    with pytest.raises(ValueError, match="must be a loopback address unless health.allow_remote is true, "
                                         "got '0.0.0.0'"):
        Health("logger", host="0.0.0.0")
    with pytest.raises(ConfigError, match="health.host: must be a loopback address .* unless health.allow_remote"):
        parse_config({"health": {"host": "192.0.2.1"}})


def test_allow_remote_serves_on_any_address():
    """``health.allow_remote: true`` lets the endpoint bind a wildcard (a Prometheus on another host scrapes it)."""
    cfg = parse_config({"health": {"host": "0.0.0.0", "allow_remote": True, "scorer": free_port()}})
    h = Health.from_config(cfg, "scorer").start()
    try:
        code, _, body = get(f"http://127.0.0.1:{h.port}/metrics")  # the wildcard answers on loopback too
        assert code == 200 and b"wanctl_health_status" in body
        assert h._server.socket.getsockname()[0] == "0.0.0.0"
    finally:
        h.stop()


def test_telemetry_actuation_and_agreement_metrics():
    from proto.messages import Actuation, Telemetry

    h = Health("collector", port=None)
    h.observe_telemetry(Telemetry(wan="wan1", seq=1, stream="s", t=1.0, wall=0.0, rtt_ms=40.0, baseline_rtt_ms=12.0,
                                  drops_per_sec=3.5, queue_depth_pct=20.0, queue_delay_ms=18.0, loss_pct=None))
    h.observe_actuation(Actuation(wan="wan1", seq=1, desired="DEGRADED", observed="DEGRADED", result="applied", error=None,
                                  decision_seq=1))
    h.observe_actuation(Actuation(wan="wan1", seq=2, desired="DEGRADED", observed="DEGRADED", result="already", error=None,
                                  decision_seq=1))
    for shadow_state in ("DEGRADED", "GOOD", "GOOD", "GOOD"):
        h.observe_agreement("wan1", "GOOD", {"hysteresis": shadow_state})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(h.registry).decode()) for s in f.samples}
    wan = (("wan", "wan1"),)
    assert samples[("wanctl_wan_baseline_rtt_ms", wan)] == 12.0
    assert samples[("wanctl_wan_drops_per_second", wan)] == 3.5
    assert samples[("wanctl_wan_queue_delay_ms", wan)] == 18.0
    assert samples[("wanctl_wan_queue_depth_pct", wan)] == 20.0
    assert samples[("wanctl_wan_loss_pct", wan)] != samples[("wanctl_wan_loss_pct", wan)]  # NaN: unknown
    assert samples[("wanctl_actuations_total", (("result", "applied"), ("wan", "wan1")))] == 1
    assert samples[("wanctl_actuations_total", (("result", "already"), ("wan", "wan1")))] == 1
    key = (("policy", "hysteresis"), ("wan", "wan1"))
    assert samples[("wanctl_policy_agreements_total", key)] / samples[("wanctl_policy_agreement_checks_total", key)] \
        == 0.75
    assert samples[("wanctl_policy_agrees", key)] == 1


def test_config_port_zero_serves_nothing():
    cfg = parse_config({"health": {"collector": 0}})
    h = Health.from_config(cfg, "collector").start()
    h.saw("telemetry")  # bookkeeping still works
    assert h.url is None and h.snapshot()["last_message"]["kind"] == "telemetry"
    h.stop()


def _status_config(tmp_path: Path, ports: dict[str, int]) -> Path:
    health = {stage: 0 for stage in ("bus", "collector", "scorer", "actuator", "logger")} | ports
    path = tmp_path / "wanctl.yaml"
    path.write_text(yaml.safe_dump({"health": health}))
    return path


def test_wanctl_status_table_json_and_exit_code(tmp_path):
    scorer = Health("scorer", port=0).start()
    logger = Health("logger", port=0).start()
    try:
        state = State(wan="wan1", seq=1, desired="GOOD", decision_seq=0, confidence=10, threshold=55,
                      flap_penalty=False)
        scorer.set_details({"wans": {"wan1": scorer_wan_details(state)}})
        config = _status_config(tmp_path, {"scorer": scorer.port, "logger": logger.port})
        ok = subprocess.run([*STATUS, "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert re.search(r"^scorer\s+ok\b", ok.stdout, re.M) and "scorer/wan1: GOOD by confidence" in ok.stdout

        logger.expect("decision", max_age_s=0.01)
        wait_for(lambda: logger.snapshot()["status"] == "degraded", 15, "the logger to turn degraded")
        down = free_port()
        config = _status_config(tmp_path, {"scorer": scorer.port, "logger": logger.port, "actuator": down})
        bad = subprocess.run([*STATUS, "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1
        assert re.search(r"^logger\s+degraded\b.*no decision for", bad.stdout, re.M)
        assert re.search(rf"^actuator\s+unreachable\b.*127\.0\.0\.1:{down}/health", bad.stdout, re.M)

        as_json = subprocess.run([*STATUS, "--config", str(config), "--json"], capture_output=True, text=True,
                                 timeout=60)
        assert as_json.returncode == 1
        doc = json.loads(as_json.stdout)
        assert doc["ok"] is False
        assert {k: v["status"] for k, v in doc["stages"].items()} == {
            "scorer": "ok", "actuator": "unreachable", "logger": "degraded"}
    finally:
        scorer.stop()
        logger.stop()


def test_wanctl_status_bad_config_exits_2(tmp_path):
    config = tmp_path / "wanctl.yaml"
    config.write_text("health:\n  scorer: 70000\n")
    result = subprocess.run([*STATUS, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "health.scorer" in result.stderr


def test_alert_rules_use_only_metrics_the_stages_expose():
    rules = yaml.safe_load((ROOT / "alerts" / "wanctl.rules.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert {"WanctlFlapBrakeActivated", "WanctlStageDown", "WanctlFallbackToPhase2A"} <= set(alerts)
    h = Health("scorer", port=None)
    h.metrics.flap_brake_activations.labels(wan="wan1").inc()
    h.metrics.fallback_decisions.labels(wan="wan1").inc()
    h.rejected("non_finite", "wan1")
    h.metrics.actuations.labels(wan="wan1", result="failed").inc()
    exposed = {s.name for f in text_string_to_metric_families(generate_latest(h.registry).decode()) for s in f.samples}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"} and rule["annotations"]["summary"]
        for metric in re.findall(r"\b(wanctl_\w+)", rule["expr"]):
            assert metric in exposed, f"{name} uses {metric}, which no stage exposes"
    assert load_config(None).health.scorer == 9463
