"""The whole pipeline under the repo's supervisord.conf, against wanctl-sim on a free port.

A fast scenario (a 2.5 s congestion episode every 7 s) and fast scorer timings
keep the runs short.  Every wait has a deadline; supervisord (and with it
every stage) is shut down and the temp dir removed after each test module.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import librouteros
import msgspec
import pytest
import yaml

from proto.messages import Actuation, Decision, Heartbeat, State, to_msgpack
from tests.supervisor_harness import (
    BIN, BusClient, Supervisor, decision_seqs, fast_scorer, free_port, read_jsonl, short_tmp, wait_for,
)
from tests.support import congested

STAGES = ["bus", "sim", "collector", "scorer", "actuator", "logger"]
COMMENT = "wanctl-steer-wan1"

SCENARIO = {
    "description": "test: a 2.5 s congestion episode on wan1 every 7 s",
    "loop": True,
    "period_s": 7,
    "seed": 3,
    "wans": [{
        "name": "wan1", "queue": "cake-wan1", "interface": "ether1", "routing_table": "main",
        "ping_target": "1.1.1.1", "rule_comment": COMMENT, "rule_disabled": True,
        "base_rtt_ms": 10, "jitter_ms": 0.3, "rate_pps": 1000, "packet_bytes": 900, "queued_packets": 2,
        "drop_noise_pct": 0,
        "episodes": [{"start_s": 1.0, "duration_s": 2.5, "ramp_s": 0.2, "added_rtt_ms": 150,
                      "drops_per_sec": 25, "queued_packets": 700}],
    }],
}


def pipeline_config(port: int) -> dict:
    return {
        "router": {"port": port, "connect_timeout_s": 1.0, "timeout_s": 1.0, "backoff_initial_s": 0.2,
                   "backoff_max_s": 1.0},
        "wans": [{"name": "wan1", "queue": "cake-wan1", "queue_capacity_packets": 1000, "ping_target": "1.1.1.1",
                  "ping_routing_table": "main", "rule_comment": COMMENT, "interval_s": 0.25}],
        "actuator": {"drift_check_s": 1.0},
        "scorer": fast_scorer(),
    }


class Router:
    """Reads the steering rule through the RouterOS API, as an operator would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.api = None

    def rule_enabled(self) -> bool | None:
        try:
            if self.api is None:
                self.api = librouteros.connect("127.0.0.1", "admin", "admin", port=self.port, timeout=2)
            rules = [r for r in self.api("/ip/firewall/mangle/print") if r.get("comment") == COMMENT]
            return (not rules[0]["disabled"]) if len(rules) == 1 else None
        except Exception:  # noqa: BLE001 - the sim restarts in the fault test
            self.close()
            return None

    def set_enabled(self, enabled: bool) -> None:
        if self.api is None:
            self.api = librouteros.connect("127.0.0.1", "admin", "admin", port=self.port, timeout=2)
        rules = [r for r in self.api("/ip/firewall/mangle/print") if r.get("comment") == COMMENT]
        tuple(self.api("/ip/firewall/mangle/set", **{".id": rules[0][".id"], "disabled": not enabled}))

    def close(self) -> None:
        if self.api is not None:
            try:
                self.api.close()
            except Exception:  # noqa: BLE001
                pass
            self.api = None


def start_pipeline():
    directory = short_tmp()
    port = free_port()
    scenario = directory / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    sup = Supervisor(directory, pipeline_config(port), sim_args=f"--port {port} --scenario {scenario}")
    sup.start()
    try:
        sup.wait_running(STAGES)
    except AssertionError:
        sup.cleanup()
        raise
    return sup, Router(port)


def driving(path) -> list[Decision]:
    if not path.exists():
        return []
    return [d for d in read_jsonl(path) if d.driving]


@pytest.fixture(scope="module")
def pipeline():
    sup, router = start_pipeline()
    yield sup, router
    router.close()
    try:
        assert "FATAL" not in sup.ctl("status"), sup.logs()
    finally:
        sup.cleanup()


def test_end_to_end_steering_follows_the_scenario(pipeline):
    sup, router = pipeline
    decisions = sup.dir / "var" / "decisions.jsonl"
    client = BusClient(sup.cfg, [b"actuation."])
    seen_enabled = False
    try:
        client.connected()

        def enable_and_disable():
            nonlocal seen_enabled
            seen_enabled = seen_enabled or router.rule_enabled() is True
            kinds = [d.decision for d in driving(decisions)]
            return "ENABLE_STEERING" in kinds and "DISABLE_STEERING" in kinds[kinds.index("ENABLE_STEERING"):]

        wait_for(enable_and_disable, 45, lambda: f"ENABLE then DISABLE in {decisions}\n{sup.logs()}", interval=0.1)
        actuations = [m for m in client.drain(0) + client.seen if isinstance(m, Actuation)]
        applied = [(a.desired, a.observed) for a in actuations if a.result == "applied"]
        assert ("DEGRADED", "DEGRADED") in applied, actuations
        assert ("GOOD", "GOOD") in applied[applied.index(("DEGRADED", "DEGRADED")):], actuations
        assert seen_enabled, "the simulator's rule was never seen enabled"
        # After the DISABLE the rule is disabled again (before the next episode's ENABLE, or later).
        last = driving(decisions)[-1]
        wait_for(lambda: router.rule_enabled() == (driving(decisions)[-1].state == "DEGRADED"), 10,
                 f"the rule to match the last decision (#{last.seq})")
        # The logger and the journal agree.
        wait_for(lambda: decisions.read_bytes() == (sup.dir / "var" / "scorer-journal.jsonl").read_bytes(), 10,
                 "decisions.jsonl to equal the scorer's journal")
    finally:
        client.close()


def test_bad_input_on_the_bus_stops_no_stage(pipeline):
    sup, router = pipeline
    pids = {name: sup.pid(name) for name in STAGES}
    decisions = sup.dir / "var" / "decisions.jsonl"
    before = len(decision_seqs(decisions))
    client = BusClient(sup.cfg, [b"heartbeat."])
    rng = random.Random(7)
    try:
        client.connected()
        client.subscribed(b"telemetry.wan1")
        client.subscribed(b"state.wan1")
        for _ in range(200):
            topic = rng.choice([b"telemetry.wan1", b"state.wan1", b"decision.wan1", b"heartbeat.x", b"", b"\xff"])
            client.send_raw([topic, os.urandom(rng.randint(0, 300))])
            client.send_raw([topic, to_msgpack(msgspec.structs.replace(congested(1, 1.0), v=2))])
            client.send_raw([topic, msgspec.msgpack.encode({"kind": "mystery", "v": 1, "wan": "wan1"})])
            client.send_raw([topic])
            client.send_raw([os.urandom(8), os.urandom(8), os.urandom(8)])
        state_v2 = State(wan="wan1", seq=1, desired="DEGRADED", decision_seq=10**6, confidence=100, threshold=55,
                         flap_penalty=False, v=2)
        for _ in range(20):
            client.send_raw([b"state.wan1", to_msgpack(state_v2)])
        # Every stage still counts, heartbeats and keeps its pid; decisions keep coming.
        for stage in ("scorer", "actuator", "logger"):
            beat = client.wait_message(
                lambda m, s=stage: isinstance(m, Heartbeat) and m.stage == s and m.counters.get("malformed", 0) > 0,
                15, f"a {stage} heartbeat counting malformed frames")
            assert beat.counters["bad_version"] > 0, (stage, beat.counters)
        wait_for(lambda: len(decision_seqs(decisions)) >= before + 2, 30, "two more decisions after the junk")
        assert {name: sup.pid(name) for name in STAGES} == pids, sup.logs()
    finally:
        client.close()


def test_dry_run_swap_leaves_the_rule_alone(pipeline):
    sup, router = pipeline
    decisions = sup.dir / "var" / "decisions.jsonl"
    out = sup.ctl("stop", "wanctl:actuator")
    assert "stopped" in out, out
    out = sup.ctl("start", "actuator-noop")
    assert "started" in out, out
    client = BusClient(sup.cfg, [b"actuation."])
    try:
        client.connected()
        rule = wait_for(lambda: router.rule_enabled() is not None and [router.rule_enabled()], 10,
                        "reading the rule")[0]
        count = len(driving(decisions))
        kinds_after = set()

        def two_decisions_with_the_rule_untouched():
            state = router.rule_enabled()
            assert state in (rule, None), "the rule changed under the no-op actuator"
            kinds_after.update(d.decision for d in driving(decisions)[count:])
            return len(kinds_after) == 2

        wait_for(two_decisions_with_the_rule_untouched, 40, "an ENABLE and a DISABLE under the no-op actuator",
                 interval=0.1)
        results = {m.result for m in client.drain(200) + client.seen if isinstance(m, Actuation)}
        assert "dry_run" in results and "applied" not in results, results
    finally:
        client.close()
        sup.ctl("stop", "actuator-noop")
        sup.ctl("start", "wanctl:actuator")


def test_a_manual_change_on_the_router_is_reverted(pipeline):
    """The rule turned on by hand during a GOOD stretch goes back off with no new decision in between:
    the actuator's drift check did it, not the next episode's decisions."""
    sup, router = pipeline
    decisions = sup.dir / "var" / "decisions.jsonl"
    sup.wait_running(["actuator"])
    client = BusClient(sup.cfg, [b"actuation."])
    try:
        client.connected()
        for attempt in range(3):  # a new episode's ENABLE may race the revert; then try on the next GOOD stretch
            # Right after a DISABLE: the rest of the GOOD stretch (about 4 s) is left for the revert.
            count = len(driving(decisions))
            wait_for(lambda: len(driving(decisions)) > count and driving(decisions)[-1].state == "GOOD"
                     and router.rule_enabled() is False, 30, lambda: f"a fresh GOOD stretch in {decisions}")
            good = driving(decisions)[-1]
            client.drain(0)
            client.seen.clear()
            router.set_enabled(True)
            assert router.rule_enabled() is True
            wait_for(lambda: router.rule_enabled() is False, 10,
                     lambda: f"the actuator to turn the rule back off (last decision #{driving(decisions)[-1].seq})")
            if driving(decisions)[-1].seq != good.seq:
                continue  # the next episode's decisions came first: not a proof
            reverted = client.wait_message(
                lambda m: isinstance(m, Actuation) and m.result == "applied" and m.desired == "GOOD"
                and m.decision_seq == good.seq, 5, f"the applied actuation for decision #{good.seq}")
            assert reverted.observed == "GOOD"
            return
        pytest.fail("every manual change raced a new decision; the revert was never shown alone")
    finally:
        client.close()


@pytest.mark.parametrize("script, holder", [("wanctl-actuator-noop", "actuator"), ("wanctl-actuator", "actuator"),
                                            ("wanctl-collector", "collector"), ("wanctl-bus", "bus")])
def test_a_second_instance_refuses_to_start_naming_the_holder(pipeline, script, holder):
    """The no-op actuator cannot start beside the live one (one lock, ``actuator.lock``), nor any stage twice."""
    sup, router = pipeline
    sup.wait_running([holder])
    pid = sup.pid(holder)
    result = subprocess.run([str(BIN / script), "--config", str(sup.config_path)], cwd=str(sup.dir),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    role = "actuator or actuator-noop" if holder == "actuator" else holder
    assert f"another {role} is running (pid {pid}, holding " in result.stderr, result.stderr
    assert f"{holder}.lock" in result.stderr, result.stderr
    assert sup.pid(holder) == pid and sup.status()[holder] == "RUNNING"


def test_every_stage_stops_within_a_second_on_sigterm(pipeline):
    sup, router = pipeline
    sup.wait_running(STAGES)
    for name in ("collector", "actuator", "scorer", "logger", "bus"):
        pid = sup.pid(name)
        assert pid, name
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or "zombie" in _proc_state(pid), 5, f"{name} to exit")
        assert time.monotonic() - t0 < 1.5, f"{name} took {time.monotonic() - t0:.2f} s to stop"  # 0.5 s slack
    sup.wait_running(STAGES)  # supervisord starts them again


def _proc_state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/status").read()
    except OSError:
        return "zombie"


def test_sigkill_every_stage_repeatedly_loses_and_repeats_nothing():
    sup, router = start_pipeline()
    var = sup.dir / "var"
    rng = random.Random(11)
    client = None
    try:
        wait_for(lambda: len(driving(var / "decisions.jsonl")) >= 1, 30, lambda: f"the first decision\n{sup.logs()}")
        victims = ["bus", "collector", "scorer", "actuator", "logger"] * 2
        rng.shuffle(victims)
        killed = []
        for name in victims:
            time.sleep(rng.uniform(0.3, 1.8))
            killed.append((name, sup.kill(name)))
        assert all(pid for _, pid in killed), killed
        sup.wait_running(STAGES, timeout=60)
        # One more full episode after the last kill.
        count = len(decision_seqs(var / "decisions.jsonl"))
        wait_for(lambda: {d.decision for d in driving(var / "decisions.jsonl")[count:]} >= {"ENABLE_STEERING"},
                 40, lambda: f"an ENABLE after the kills\n{sup.logs()}")

        journal = var / "scorer-journal.jsonl"
        wait_for(lambda: (var / "decisions.jsonl").read_bytes() == journal.read_bytes(), 30,
                 lambda: f"decisions.jsonl to equal the scorer's journal\n{sup.logs()}")
        seqs = decision_seqs(var / "decisions.jsonl")
        assert seqs == list(range(1, len(seqs) + 1))
        # No restart repeated or skipped a decision: each policy's decisions alternate.
        for policy in ("confidence", "hysteresis"):
            states = [d.state for d in read_jsonl(journal) if d.policy == policy and not d.fallback]
            assert all(a != b for a, b in zip(states, states[1:])), (policy, states)
        # The rule converges to the scorer's desired state.
        client = BusClient(sup.cfg, [b"state.wan1"])
        client.connected()

        def rule_matches_desired():
            states = [m for m in client.drain(100) if isinstance(m, State)]
            if states:
                rule_matches_desired.desired = states[-1].desired
            desired = getattr(rule_matches_desired, "desired", None)
            return desired is not None and router.rule_enabled() is (desired == "DEGRADED")

        wait_for(rule_matches_desired, 20, "the rule to match the scorer's desired state")
        events = (var / "stage-events.jsonl").read_text().splitlines()
        reported = {yaml.safe_load(line)["process"] for line in events}
        assert reported >= {"bus", "collector", "scorer", "actuator", "logger"}, events
    finally:
        if client is not None:
            client.close()
        router.close()
        sup.cleanup()
