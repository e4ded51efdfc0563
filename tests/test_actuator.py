"""The actuator against the simulator, through librouteros: apply, verify, drift, reboot, outage, dry run."""

from __future__ import annotations

import time

import pytest

from actuator.rule import Actuator
from proto.messages import DEGRADED, GOOD
from tests.simrouter import FakeClock, make_sim, sim, wait_for  # noqa: F401

RULE1 = "wanctl-steer-wan1"


def make(router, dry_run=False, clock=time.monotonic, **actuator_section):
    cfg = router.config(actuator={"drift_check_s": 1.0, "verify_delay_s": 0.0, **actuator_section},
                        router={"timeout_s": 0.5, "connect_timeout_s": 0.5, "backoff_initial_s": 0.1,
                                "backoff_max_s": 0.4})
    return Actuator(cfg, "admin", epoch=3, dry_run=dry_run, clock=clock)


def set_writes(router):
    return [w for w in router.writes() if w[0].startswith("/ip/firewall/mangle")]


def until(actuator, predicate, timeout=5.0):
    """Step the actuator until a result satisfies ``predicate``; all results so far."""
    results = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results += actuator.step(time.monotonic())
        if any(predicate(r) for r in results):
            return results
        time.sleep(0.02)
    pytest.fail(f"no matching actuation within {timeout} s; got {results}")


def test_enable_disable_and_verify(sim):
    actuator = make(sim)
    try:
        actuator.want("wan1", DEGRADED, 11)
        [result] = actuator.step(time.monotonic())
        assert (result.wan, result.desired, result.observed, result.result, result.error, result.decision_seq) == (
            "wan1", DEGRADED, DEGRADED, "applied", None, 11)
        assert (result.source, result.epoch, result.seq) == ("actuator", 3, 1)
        assert sim.rule_enabled(RULE1)
        actuator.want("wan1", GOOD, 12)
        [result] = actuator.step(time.monotonic())
        assert (result.result, result.observed, result.seq) == ("applied", GOOD, 2)
        assert not sim.rule_enabled(RULE1)
        assert len(set_writes(sim)) == 2
    finally:
        actuator.close()


def test_an_unchanged_desire_writes_nothing(sim):
    actuator = make(sim)
    try:
        actuator.want("wan1", DEGRADED, 1)
        assert [r.result for r in actuator.step(time.monotonic())] == ["applied"]
        for seq in range(2, 20):
            actuator.want("wan1", DEGRADED, seq)  # the scorer re-publishes state every second
            assert actuator.step(time.monotonic()) == []
        assert len(set_writes(sim)) == 1
        assert actuator.counters["changes"] == 1 and actuator.counters["wants"] == 19
    finally:
        actuator.close()


def test_already_in_the_desired_state(sim):
    actuator = make(sim)
    try:
        actuator.want("wan1", GOOD, 5)  # the rule boots disabled
        [result] = actuator.step(time.monotonic())
        assert (result.result, result.observed) == ("already", GOOD)
        assert set_writes(sim) == []
    finally:
        actuator.close()


def test_a_fresh_actuator_reasserts_the_desired_state(sim):
    sim.set_rule_disabled(RULE1, False)  # left enabled by a previous run
    actuator = make(sim)
    try:
        assert actuator.step(time.monotonic()) == []  # nothing is touched before a desire arrives
        actuator.want("wan1", GOOD, 40)
        [result] = actuator.step(time.monotonic())
        assert result.result == "applied" and not sim.rule_enabled(RULE1)
    finally:
        actuator.close()


def test_missing_rule_fails_clearly_writes_nothing_and_retries(sim):
    sim.remove_rules(RULE1)
    actuator = make(sim)
    try:
        actuator.want("wan1", DEGRADED, 2)
        [result] = actuator.step(time.monotonic())
        assert result.result == "failed" and result.observed is None
        assert "wan1" in result.error and repr(RULE1) in result.error and "no mangle rule" in result.error
        assert actuator.step(time.monotonic()) == []  # backing off
        assert actuator.next_due() > time.monotonic()
        sim.add_rule(RULE1, disabled=True)
        results = until(actuator, lambda r: r.result == "applied")
        assert sim.rule_enabled(RULE1)
        assert [w for w in set_writes(sim) if w[0].endswith("/set")] == [
            ("/ip/firewall/mangle/set", {".id": sim.rule(RULE1)[".id"], "disabled": "no"})]
        assert all(r.decision_seq == 2 for r in results)
    finally:
        actuator.close()


def test_duplicate_comments_are_an_error_not_a_guess(sim):
    sim.add_rule(RULE1, disabled=True)
    actuator = make(sim)
    try:
        actuator.want("wan1", DEGRADED, 3)
        [result] = actuator.step(time.monotonic())
        assert result.result == "failed"
        assert "2 mangle rules have the comment 'wanctl-steer-wan1'" in result.error
        assert "wan1" in result.error
        assert set_writes(sim) == [("/ip/firewall/mangle/add", {})] or all(
            not w[0].endswith("/set") for w in set_writes(sim))
        assert all(r["disabled"] == "true" for r in sim.rules(RULE1))
        assert actuator.counters["rule_duplicate"] == 1
    finally:
        actuator.close()


def test_drift_is_reasserted_and_reported(sim):
    actuator = make(sim)
    try:
        actuator.want("wan1", DEGRADED, 9)
        actuator.step(time.monotonic())
        sim.set_rule_disabled(RULE1, True)  # someone disables it by hand
        results = until(actuator, lambda r: r.result == "applied", timeout=3)
        assert results[-1].decision_seq == 9 and results[-1].observed == DEGRADED
        assert sim.rule_enabled(RULE1)
        assert actuator.counters["drift"] == 1
    finally:
        actuator.close()


def test_reboot_reverts_the_rule_and_the_actuator_reasserts_it(sim):
    actuator = make(sim)
    try:
        actuator.want("wan1", DEGRADED, 4)
        actuator.step(time.monotonic())
        old_id = sim.rule(RULE1)[".id"]
        sim.reboot(downtime_s=0.3)
        assert not sim.rule_enabled(RULE1)  # back to its saved state
        until(actuator, lambda r: r.result == "applied", timeout=5)
        assert sim.rule_enabled(RULE1) and sim.rule(RULE1)[".id"] != old_id
        assert actuator.counters["rule_id_changes"] >= 1
    finally:
        actuator.close()


def test_outage_then_recovery(sim):
    actuator = make(sim)
    try:
        sim.refuse_connections(True)
        actuator.want("wan1", DEGRADED, 6)
        first = actuator.step(time.monotonic())
        assert first[0].result == "failed" and "cannot reach the router" in first[0].error
        assert repr(RULE1) in first[0].error
        # Stepped every 10 ms for 1 s, the backoff (0.1 s doubling to 0.4 s) allows at most 5 attempts.
        failures = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            failures += [r for r in actuator.step(time.monotonic()) if r.result == "failed"]
            time.sleep(0.01)
        assert 1 <= len(failures) <= 5, failures  # backoff, not a busy loop
        assert actuator.counters["connect_failures"] <= 6
        sim.refuse_connections(False)
        until(actuator, lambda r: r.result == "applied", timeout=5)
        assert sim.rule_enabled(RULE1)
    finally:
        actuator.close()


def test_connection_cut_mid_set_is_retried(sim):
    actuator = make(sim)
    try:
        sim.cut_next_reply("/ip/firewall/mangle/set")
        actuator.want("wan1", DEGRADED, 8)
        results = until(actuator, lambda r: r.result in ("applied", "already"), timeout=5)
        assert results[0].result == "failed"
        assert sim.rule_enabled(RULE1)
    finally:
        actuator.close()


def test_renumbering_between_lookup_and_set_is_resolved_again(sim, monkeypatch):
    actuator = make(sim)
    try:
        real_run = actuator.link.run
        renumbered = []

        def run(command, *words, **kwargs):
            if command.endswith("/set") and not renumbered:
                renumbered.append(True)
                sim.call(sim.router.reboot)  # ids change under the actuator's feet, session kept
            return real_run(command, *words, **kwargs)

        monkeypatch.setattr(actuator.link, "run", run)
        actuator.want("wan1", DEGRADED, 1)
        [result] = actuator.step(time.monotonic())
        assert result.result == "applied" and sim.rule_enabled(RULE1)
    finally:
        actuator.close()


def test_a_rule_that_does_not_take_the_write_fails_after_bounded_retries(sim):
    def refuse_disabled_changes():
        original = sim.router._set

        def stubborn(path, attrs):
            attrs = {k: v for k, v in attrs.items() if k != "disabled"}
            if len(attrs) > 1:
                original(path, attrs)
        sim.router._set = stubborn
    sim.call(refuse_disabled_changes)
    actuator = make(sim, verify_retries=2)
    try:
        actuator.want("wan1", DEGRADED, 1)
        [result] = until(actuator, lambda r: True)
        assert result.result == "failed" and "still disabled after 3 set and read-back rounds" in result.error
        assert actuator.counters["verify_retries"] == 2 and actuator.counters["writes"] == 3
    finally:
        actuator.close()


def test_dry_run_never_writes(sim):
    actuator = make(sim, dry_run=True)
    try:
        actuator.want("wan1", DEGRADED, 1)
        actuator.want("wan2", GOOD, 1)
        results = {r.wan: r for r in actuator.step(time.monotonic())}
        assert (results["wan1"].result, results["wan1"].observed) == ("dry_run", GOOD)
        assert (results["wan2"].result, results["wan2"].observed) == ("dry_run", GOOD)
        sim.set_rule_disabled("wanctl-steer-wan2", False)  # an operator enables it: reported once, not written
        reported = until(actuator, lambda r: r.wan == "wan2" and r.observed == DEGRADED, timeout=3)
        time.sleep(1.2)
        reported += actuator.step(time.monotonic())
        assert [(r.wan, r.result, r.observed) for r in reported] == [("wan2", "dry_run", DEGRADED)]
        actuator.want("wan1", GOOD, 2)
        actuator.step(time.monotonic())
        sim.reboot(downtime_s=0.2)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert all(r.result == "dry_run" for r in actuator.step(time.monotonic()))
            time.sleep(0.05)
        assert set_writes(sim) == []
        assert actuator.counters["writes"] == 0
    finally:
        actuator.close()


def test_dry_run_with_the_router_away_reports_without_retrying(sim):
    sim.refuse_connections(True)
    actuator = make(sim, dry_run=True)
    try:
        actuator.want("wan1", DEGRADED, 1)
        [result] = actuator.step(time.monotonic())
        assert result.result == "dry_run" and result.observed is None and "cannot reach" in result.error
        assert actuator.step(time.monotonic()) == []
    finally:
        actuator.close()


def test_step_never_raises_and_bad_input_is_counted(sim, monkeypatch):
    actuator = make(sim)
    try:
        actuator.want("nope", DEGRADED, 1)
        actuator.want("wan1", "SIDEWAYS", 1)
        assert actuator.counters["unknown_wan"] == 1 and actuator.counters["invalid_desired"] == 1

        def broken(drive):
            raise RuntimeError("bug")

        monkeypatch.setattr(actuator, "_find", broken)
        actuator.want("wan1", DEGRADED, 1)
        assert actuator.step(time.monotonic()) == []
        assert actuator.counters["internal_errors"] == 1
    finally:
        actuator.close()


def test_next_due_schedules_work_and_drift_checks(sim):
    clock = FakeClock()
    actuator = make(sim, clock=clock)
    try:
        assert actuator.next_due() == clock() + 1.0  # nothing wanted: just the drift period
        actuator.want("wan1", DEGRADED, 1)
        assert actuator.next_due() == clock()
        actuator.step(clock())
        assert actuator.next_due() == pytest.approx(clock() + 1.0)
        clock.advance(0.5)
        assert actuator.step(clock()) == []
        clock.advance(0.6)
        assert actuator.step(clock()) == []  # checked, no drift
        assert len(set_writes(sim)) == 1
    finally:
        actuator.close()
