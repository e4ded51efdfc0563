"""Health endpoints, wanctl-status and /metrics of the live pipeline under the repo's supervisord.conf.

One pipeline serves every test in this module (a module fixture); the tests
run in file order and each waits for the condition it checks, with a
deadline.  Every stage gets a free loopback health port from the harness.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from runtime.health import STAGES as HEALTH_STAGES
from proto.messages import Heartbeat
from tests.supervisor_harness import BIN, BusClient, Supervisor, free_port, short_tmp, wait_for
from tests.test_pipeline import SCENARIO, STAGES, driving, pipeline_config

STALE_AFTER_S = 2.0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


class Endpoints:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        host = sup.cfg.health.host
        self.base = {stage: f"http://{host}:{getattr(sup.cfg.health, stage)}" for stage in HEALTH_STAGES}

    def health(self, stage: str) -> tuple[int, dict] | None:
        try:
            code, body = get(f"{self.base[stage]}/health")
        except OSError:
            return None  # not listening (yet)
        return code, json.loads(body)

    def metrics(self, stage: str) -> dict[tuple[str, tuple], float]:
        code, body = get(f"{self.base[stage]}/metrics")
        assert code == 200, body[:200]
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body.decode()) for s in family.samples}

    def all_ok(self) -> dict[str, dict] | None:
        docs = {}
        for stage in HEALTH_STAGES:
            answer = self.health(stage)
            if answer is None or answer[0] != 200 or answer[1]["status"] != "ok":
                return None
            docs[stage] = answer[1]
        return docs

    def describe(self) -> str:
        return json.dumps({stage: self.health(stage) for stage in HEALTH_STAGES}, indent=1)[:4000]


def status(sup: Supervisor, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "wanctl-status"), "--config", str(sup.config_path), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def pipeline():
    directory = short_tmp()
    port = free_port()
    scenario = directory / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    config = {**pipeline_config(port), "health": {"stale_after_s": STALE_AFTER_S}}
    sup = Supervisor(directory, config, sim_args=f"--port {port} --scenario {scenario}")
    try:
        sup.start()
        sup.wait_running(STAGES)
        yield sup, Endpoints(sup)
        assert "FATAL" not in sup.ctl("status"), sup.logs()
    finally:
        sup.cleanup()


def test_the_harness_never_uses_the_default_ports(pipeline):
    sup, _ = pipeline
    ports = [getattr(sup.cfg.health, stage) for stage in HEALTH_STAGES]
    assert len(set(ports)) == len(ports) and not set(ports) & set(range(9461, 9466)), ports


def test_every_stage_answers_ok_once_the_pipeline_runs(pipeline):
    """Each stage, polled on its own deadline, answers ok with what it lives on (a stage that blinks
    degraded for a moment on a loaded machine is asked again, not failed)."""
    sup, endpoints = pipeline

    def ok_with(stage: str, fact) -> dict | None:
        answer = endpoints.health(stage)
        if answer is None or answer[0] != 200 or answer[1]["status"] != "ok":
            return None
        return answer[1] if fact(answer[1]) else None

    facts = {
        "scorer": lambda doc: (doc["last_message"] or {}).get("kind") == "telemetry",
        "actuator": lambda doc: (doc["last_message"] or {}).get("kind") == "state",
        "collector": lambda doc: doc["details"].get("connected") is True,
        "bus": lambda doc: doc["last_message"] is not None and doc["last_message"]["age_s"] < 10,
        "logger": lambda doc: True,
    }
    for stage in HEALTH_STAGES:
        doc = wait_for(lambda s=stage: ok_with(s, facts[s]), 30,
                       lambda s=stage: f"{s}'s /health to say ok\n{endpoints.describe()}", interval=0.2)
        assert doc["stage"] == stage and doc["reasons"] == {} and doc["uptime_s"] > 0, doc
        assert doc["counters"] and all(isinstance(v, int) for v in doc["counters"].values()), doc


def test_heartbeat_and_health_render_the_same_counters(pipeline):
    """For every stage: the heartbeat's counters and /health's are one namespace (same keys), read
    from the same sources (a later /health never shows less than the heartbeat before it)."""
    sup, endpoints = pipeline
    client = BusClient(sup.cfg, [b"heartbeat."])
    try:
        client.connected()
        for stage in HEALTH_STAGES:
            beat = client.wait_message(lambda m, s=stage: isinstance(m, Heartbeat) and m.stage == s, 15,
                                       f"a heartbeat from the {stage}")
            answer = wait_for(lambda s=stage: endpoints.health(s), 10, f"{stage}'s /health")
            counters = answer[1]["counters"]
            assert set(beat.counters) == set(counters), (stage, set(beat.counters) ^ set(counters))
            behind = {k: (v, counters[k]) for k, v in beat.counters.items() if counters[k] < v}
            assert not behind, (stage, behind)
            assert beat.status in ("ok", "degraded", "failing")
    finally:
        client.close()


def test_wanctl_status_lists_every_stage_and_exits_0(pipeline):
    sup, endpoints = pipeline
    result = wait_for(lambda: (r := status(sup, "--json")).returncode == 0 and r, 30,
                      lambda: f"wanctl-status --json to exit 0\n{endpoints.describe()}", interval=0.5)
    report = json.loads(result.stdout)
    assert report["ok"] is True and set(report["stages"]) == set(HEALTH_STAGES)
    assert all(doc["status"] == "ok" for doc in report["stages"].values())
    table = status(sup)
    assert table.returncode in (0, 1)  # a stage may blink between the two calls; the table is what matters
    for stage in HEALTH_STAGES:
        assert any(line.split()[:1] == [stage] for line in table.stdout.splitlines()), table.stdout
    assert "scorer/wan1: " in table.stdout and "confidence" in table.stdout


def test_metrics_are_scraped_and_parsed_after_a_decision(pipeline):
    sup, endpoints = pipeline
    decisions = sup.dir / "var" / "decisions.jsonl"
    wait_for(lambda: driving(decisions), 40, lambda: f"a driving decision in {decisions}\n{sup.logs()}", interval=0.2)
    first = driving(decisions)[0]
    direction = "enable" if first.decision == "ENABLE_STEERING" else "disable"

    def scorer_counted_it():
        m = endpoints.metrics("scorer")
        key = ("wanctl_decisions_total", (("direction", direction), ("driving", "true"),
                                          ("policy", first.policy), ("wan", "wan1")))
        return m.get(key, 0) >= 1 and m

    m = wait_for(scorer_counted_it, 10, "the scorer's decision counter", interval=0.2)
    assert 0 <= m[("wanctl_confidence_score", (("wan", "wan1"),))] <= 100
    assert m[("wanctl_effective_threshold", (("wan", "wan1"),))] >= 55
    assert m[("wanctl_bus_messages_total", (("direction", "received"), ("kind", "telemetry")))] > 0
    assert m[("wanctl_health_status", ())] in (0, 1)
    assert ("wanctl_steering_state", (("driving", "true"), ("policy", first.policy), ("wan", "wan1"))) in m
    assert ("wanctl_timer_resets_total", (("timer", "degrade"), ("wan", "wan1"))) in m
    assert ("wanctl_flap_brake_activations_total", (("wan", "wan1"),)) in m

    collector = endpoints.metrics("collector")
    assert collector[("wanctl_router_request_seconds_count", (("operation", "/ping"),))] > 0
    assert collector[("wanctl_bus_messages_total", (("direction", "sent"), ("kind", "telemetry")))] > 0
    assert ("wanctl_wan_rtt_ms", (("wan", "wan1"),)) in collector
    bus = endpoints.metrics("bus")
    assert bus[("wanctl_bus_messages_total", (("direction", "received"), ("kind", "telemetry")))] > 0
    assert bus[("wanctl_bus_messages_total", (("direction", "sent"), ("kind", "decision")))] > 0
    actuator = endpoints.metrics("actuator")
    assert actuator[("wanctl_router_request_seconds_count", (("operation", "/ip/firewall/mangle/print"),))] > 0

    # The scorer's health carries the WAN's timers, penalty, policy and fallbacks.
    wan = endpoints.health("scorer")[1]["details"]["wans"]["wan1"]
    assert wan["policy"] == "confidence" and wan["state"] in ("GOOD", "DEGRADED") and wan["threshold"] >= 55
    assert {"degrade_remaining_s", "hold_down_remaining_s", "recovery_remaining_s", "flap_penalty",
            "flap_penalty_remaining_s", "fallbacks", "confidence"} <= set(wan)


DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
PROMQL_WORDS = {"sum", "max", "min", "avg", "by", "without", "rate", "increase", "histogram_quantile", "le"}


def dashboard_metrics() -> set[str]:
    """Every series name the shipped Grafana dashboard's queries read."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\b(by|without)\s*\([^)]*\)|\{[^}]*\}|\[[^]]*\]|\"[^\"]*\"", " ", target["expr"])
            names |= {word for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
                      if word not in PROMQL_WORDS and not re.fullmatch(r"[0-9.]+", word)}
    return names


def test_every_dashboard_query_names_a_metric_the_stages_export(pipeline):
    """The dashboard's queries read series the running stages really serve (a renamed metric fails here)."""
    sup, endpoints = pipeline
    wanted = dashboard_metrics()
    assert {"wanctl_wan_baseline_rtt_ms", "wanctl_wan_queue_delay_ms", "wanctl_wan_drops_per_second",
            "wanctl_wan_loss_pct", "wanctl_actuations_total", "wanctl_policy_agreements_total",
            "wanctl_policy_agreement_checks_total"} <= wanted

    def exported() -> set[str]:
        """The series names every stage's /metrics serves or declares (a labelled metric nothing set yet
        is declared by its family: counter ``x`` serves ``x_total``, histogram ``x`` serves ``x_bucket``)."""
        names = set()
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
        for stage in HEALTH_STAGES:
            code, body = get(f"{endpoints.base[stage]}/metrics")
            assert code == 200
            for family in text_string_to_metric_families(body.decode()):
                names |= {s.name for s in family.samples}
                names |= {family.name + suffix for suffix in suffixes.get(family.type, ())}
        return names

    missing = wait_for(lambda: not (wanted - exported()) or None, 40,
                       lambda: f"series for {sorted(wanted - exported())}", interval=0.5)
    assert missing

    # The new series carry values from the real stages.
    collector = endpoints.metrics("collector")
    assert collector[("wanctl_wan_baseline_rtt_ms", (("wan", "wan1"),))] > 0
    actuator = endpoints.metrics("actuator")
    assert sum(v for (name, _), v in actuator.items() if name == "wanctl_actuations_total") >= 1
    scorer = endpoints.metrics("scorer")
    key = (("policy", "hysteresis"), ("wan", "wan1"))
    assert 0 < scorer[("wanctl_policy_agreements_total", key)] <= scorer[("wanctl_policy_agreement_checks_total", key)]


def test_stopping_the_collector_degrades_the_scorer_until_it_is_back(pipeline):
    sup, endpoints = pipeline
    wait_for(lambda: (a := endpoints.health("scorer")) is not None and a[0] == 200, 20, "the scorer to be ok")
    out = sup.ctl("stop", "wanctl:collector")
    try:
        assert "stopped" in out, out

        def scorer_stale():
            answer = endpoints.health("scorer")
            return answer is not None and answer[0] == 503 and answer[1]

        doc = wait_for(scorer_stale, 10 * STALE_AFTER_S, lambda: f"the scorer to turn degraded\n{endpoints.describe()}",
                       interval=0.2)
        assert doc["status"] == "degraded"
        assert doc["reasons"]["stale_telemetry"].startswith("no telemetry for "), doc["reasons"]
        assert f"(limit {STALE_AFTER_S:g} s)" in doc["reasons"]["stale_telemetry"]
        down = status(sup, "--json")
        assert down.returncode == 1
        report = json.loads(down.stdout)
        assert report["stages"]["collector"]["status"] == "unreachable"
        assert report["stages"]["scorer"]["status"] == "degraded"
    finally:
        out = sup.ctl("start", "wanctl:collector")
    assert "started" in out, out
    doc = wait_for(lambda: (a := endpoints.health("scorer")) is not None and a[0] == 200 and a[1], 30,
                   lambda: f"the scorer to be ok again\n{endpoints.describe()}", interval=0.2)
    assert doc["status"] == "ok" and "stale_telemetry" not in doc["reasons"]
    wait_for(lambda: status(sup).returncode == 0, 30, "wanctl-status to exit 0 again", interval=0.5)


def test_the_no_op_actuator_answers_on_the_actuator_port(pipeline):
    sup, endpoints = pipeline
    assert "stopped" in sup.ctl("stop", "wanctl:actuator")
    try:
        assert "started" in sup.ctl("start", "actuator-noop")
        doc = wait_for(lambda: (a := endpoints.health("actuator")) is not None and a[1]["stage"] == "actuator-noop"
                       and a[0] == 200 and a[1]["details"].get("rules") and a[1], 30,
                       lambda: f"actuator-noop's health on the actuator port\n{endpoints.describe()}", interval=0.2)
        assert doc["details"]["dry_run"] is True
        assert doc["details"]["rules"]["wan1"]["result"] == "dry_run"
    finally:
        sup.ctl("stop", "actuator-noop")
        sup.ctl("start", "wanctl:actuator")
    wait_for(lambda: (a := endpoints.health("actuator")) is not None and a[1]["stage"] == "actuator", 30,
             "the live actuator back on its port", interval=0.2)
