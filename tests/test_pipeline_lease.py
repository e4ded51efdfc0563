"""The fail-safes with the real stages: a clean stop releases the rule; SIGKILL of every stage leaves
the router to end steering by itself when the lease runs out.

Every stage runs as its own process (no supervisord: nothing may restart them
after the kill), against the simulator on a free port of 127.0.0.1 with wan1
congested after a short idle start, so the scorer then wants steering on throughout.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from sim.scenario import quiet_scenario
from sim.testing import SimRouter
from tests.supervisor_harness import Stage, fast_scorer, load, short_tmp, stop_all, wait_for, write_config

RULE = "wanctl-steer-wan1"
LEASE_S = 2.0
SCRIPTS = ["wanctl-bus", "wanctl-scorer", "wanctl-logger", "wanctl-collector"]


def test_a_clean_stop_releases_and_killing_every_stage_ends_steering_within_the_lease():
    directory = short_tmp("wl")
    router = SimRouter(quiet_scenario("wan1")).start()
    stages: list[Stage] = []
    try:
        config = write_config(directory, {
            "router": {"port": router.port, "password_env": None, "timeout_s": 1.0, "connect_timeout_s": 1.0,
                       "backoff_initial_s": 0.1, "backoff_max_s": 0.5},
            "wans": [{"name": "wan1", "queue": "cake-wan1", "ping_target": "192.0.2.1",
                      "ping_routing_table": "to-wan1", "rule_comment": RULE, "interval_s": 0.25}],
            "collector": {"state_path": str(directory / "collector-state.json")},
            "actuator": {"lease_s": LEASE_S, "drift_check_s": 1.0, "on_stop": "release"},
            "scorer": fast_scorer(),
        })
        stages += [Stage(script, config, directory) for script in SCRIPTS]
        actuator = Stage("wanctl-actuator", config, directory)
        stages.append(actuator)

        def logs() -> str:
            return "\n".join(f"--- {s.name}\n{s.output()[-1500:]}" for s in stages)

        # Idle first, so the collector learns the baseline; then congested for the rest of the test.
        wait_for(lambda: (directory / "decisions.jsonl").exists() or "connected" in actuator.output(), 20, logs)
        time.sleep(2.0)
        router.congest("wan1", added_rtt_ms=150, drops_per_sec=25, queued_packets=700)
        wait_for(lambda: router.steering_active(RULE), 40, lambda: f"steering on with its lease\n{logs()}")
        [entry] = router.address_list("wanctl-lease-wan1")
        assert entry["timeout"] in ("1s", "2s"), entry

        # The actuator's health says each WAN's mode; an unreachable router makes it degraded, not ok.
        port = load(config).health.actuator

        def health() -> dict:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    return json.loads(answer.read())
            except urllib.error.HTTPError as error:  # 503 while not ok: the document comes all the same
                with error:
                    return json.loads(error.read())
            except OSError as error:
                return {"status": "unreadable", "error": str(error)}

        doc = wait_for(lambda: (lambda d: d if d.get("details", {}).get("modes") else None)(health()), 10,
                       "the actuator's health details")
        assert doc["details"]["modes"] == {"wan1": "live"} and doc["counters"]["wans_live"] == 1, doc
        router.refuse_connections(True)
        router.drop_sessions()
        doc = wait_for(lambda: (lambda d: d if d["status"] == "degraded" else None)(health()), 10,
                       lambda: f"the actuator degraded while the router is away: {health()}")
        assert "router" in doc["reasons"], doc
        router.refuse_connections(False)
        wait_for(lambda: health()["status"] == "ok" and router.steering_active(RULE), 20,
                 lambda: f"the actuator ok and steering again: {health()}")

        # A clean stop (SIGTERM, as supervisorctl stop) disables the rule before the actuator exits.
        actuator.stop()
        assert not router.rule_enabled(RULE), f"the rule is still enabled after a clean stop\n{actuator.output()}"
        assert "disabled on stop" in actuator.output()

        # A new actuator re-asserts the scorer's desire, with a fresh lease.
        actuator = Stage("wanctl-actuator", config, directory)
        stages.append(actuator)
        wait_for(lambda: router.steering_active(RULE), 20, lambda: f"steering on again\n{logs()}")
        time.sleep(LEASE_S)  # a few renewals: the lease lives on only while the actuator does
        assert router.steering_active(RULE)

        # SIGKILL every stage, the actuator first: nobody releases, nobody renews.
        actuator.kill()
        killed = time.monotonic()
        for stage in stages:
            stage.kill()
        assert router.steering_active(RULE), "the lease outlives the actuator by up to lease_s"
        wait_for(lambda: not router.steering_active(RULE), LEASE_S + 2.0, "the lease to expire")
        released_after = time.monotonic() - killed
        print(f"steering ended {released_after:.2f} s after SIGKILL (lease_s {LEASE_S})")
        assert released_after <= LEASE_S + 0.3, released_after
        assert router.rule_enabled(RULE), "the rule is untouched: the router's lease alone ended steering"
    finally:
        try:
            stop_all([s for s in stages if s.proc.poll() is None])
        finally:
            router.stop()
