"""The actuator's fail-safes against the simulator: the router-side lease, the release on stop,
per-WAN dry run, and an unreachable router as a degraded (not failing) condition."""

from __future__ import annotations

import time

from actuator.rule import Actuator
from proto.config import parse_config
from proto.messages import DEGRADED, GOOD
from tests.simrouter import FakeClock, make_sim, sim  # noqa: F401

RULE1, RULE2 = "wanctl-steer-wan1", "wanctl-steer-wan2"
LEASE1, LEASE2 = "wanctl-lease-wan1", "wanctl-lease-wan2"


def make(router, *, clock=time.monotonic, dry_run=False, wans=(), actuator=None, **actuator_section):
    cfg = router.config(actuator={"drift_check_s": 1.0, "verify_delay_s": 0.0, **actuator_section, **(actuator or {})},
                        router={"timeout_s": 0.5, "connect_timeout_s": 0.5, "backoff_initial_s": 0.1,
                                "backoff_max_s": 0.4}, wans=list(wans))
    return Actuator(cfg, "admin", epoch=1, dry_run=dry_run, clock=clock)


def lease_writes(router, wan):
    return [w for w in router.writes() if w[0].startswith("/ip/firewall/address-list")
            and w[1].get("list", wan) == wan]


def test_the_lease_keeps_steering_alive_and_its_expiry_ends_it(make_sim):
    clock = FakeClock()
    router = make_sim(clock=clock)
    actuator = make(router, clock=clock, lease_s=3.0)
    try:
        actuator.want("wan1", DEGRADED, 1)
        [result] = actuator.step(clock())
        assert result.result == "applied" and router.steering_active(RULE1)
        [entry] = router.address_list(LEASE1)
        assert (entry["address"], entry["timeout"], entry["dynamic"]) == ("0.0.0.0/0", "3s", "true")
        assert actuator.counters["lease_adds"] == 1
        for _ in range(9):  # 9.9 s, three times the lease: renewed every lease_s / 3
            clock.advance(1.1)
            actuator.step(clock())
            assert router.steering_active(RULE1)
        assert actuator.counters["lease_renewals"] >= 8 and actuator.counters["lease_adds"] == 1
        assert actuator.next_due() <= clock() + 1.0 + 1e-9
        # Nobody renews it any more (the actuator is gone): the router ends steering by itself.
        clock.advance(2.9)
        assert router.steering_active(RULE1)
        clock.advance(0.2)
        assert not router.steering_active(RULE1)
        assert router.rule_enabled(RULE1), "the rule itself is untouched: only its lease ended"
        assert router.address_list(LEASE1) == []
        # An actuator that is back adds the lease again: steering resumes.
        actuator.step(clock())
        assert router.steering_active(RULE1) and actuator.counters["lease_adds"] == 2
        # Steering off: the rule is disabled and the lease is no longer renewed.
        actuator.want("wan1", GOOD, 2)
        [result] = actuator.step(clock())
        assert result.result == "applied" and not router.steering_active(RULE1)
        renewals = len(lease_writes(router, LEASE1))
        for _ in range(5):
            clock.advance(1.1)
            actuator.step(clock())
        assert len(lease_writes(router, LEASE1)) == renewals
        assert router.address_list(LEASE1) == []
    finally:
        actuator.close()


def test_a_reboot_loses_the_lease_and_the_actuator_puts_it_back(sim):
    actuator = make(sim, lease_s=3.0)
    try:
        actuator.want("wan1", DEGRADED, 1)
        assert [r.result for r in actuator.step(time.monotonic())] == ["applied"]
        sim.reboot(downtime_s=0.2)
        assert sim.address_list(LEASE1) == [] and not sim.rule_enabled(RULE1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not sim.steering_active(RULE1):
            actuator.step(time.monotonic())
            time.sleep(0.05)
        assert sim.steering_active(RULE1) and len(sim.address_list(LEASE1)) == 1
    finally:
        actuator.close()


def test_a_lease_address_of_the_lan_subnet_is_the_one_renewed(make_sim):
    clock = FakeClock()
    router = make_sim(clock=clock)
    actuator = make(router, clock=clock, lease_s=6.0, lease_address="192.168.88.0/24")
    try:
        actuator.want("wan1", DEGRADED, 1)
        actuator.step(clock())
        for _ in range(3):
            clock.advance(2.1)
            actuator.step(clock())
        [entry] = router.address_list(LEASE1)
        assert entry["address"] == "192.168.88.0/24"
        assert actuator.counters["lease_adds"] == 1 and actuator.counters["lease_renewals"] >= 3
    finally:
        actuator.close()


def test_no_lease_with_lease_s_0(sim):
    actuator = make(sim, lease_s=0)
    try:
        actuator.want("wan1", DEGRADED, 1)
        assert [r.result for r in actuator.step(time.monotonic())] == ["applied"]
        assert lease_writes(sim, LEASE1) == [] and not sim.steering_active(RULE1)
    finally:
        actuator.close()


def test_release_disables_every_live_rule_and_leaves_dry_run_wans_alone(sim):
    sim.set_rule_disabled(RULE2, False)  # wan2 is in dry run and steers by hand: not ours to touch
    actuator = make(sim, wans=[{}, {"dry_run": True}])
    try:
        assert actuator.modes() == {"wan1": "live", "wan2": "dry_run"}
        assert (actuator.counters["wans_live"], actuator.counters["wans_dry_run"]) == (1, 1)
        actuator.want("wan1", DEGRADED, 1)
        actuator.want("wan2", DEGRADED, 1)
        results = {r.wan: r.result for r in actuator.step(time.monotonic())}
        assert results == {"wan1": "applied", "wan2": "dry_run"}
        assert sim.rule_enabled(RULE1)
        started = time.monotonic()
        assert actuator.release(time.monotonic() + 2.0) == 1
        assert time.monotonic() - started < 1.0
        assert not sim.rule_enabled(RULE1) and sim.rule_enabled(RULE2)
        assert actuator.counters["released"] == 1
        assert not any(RULE2 in str(w) or sim.rule(RULE2)[".id"] in str(w) for w in sim.writes())
        assert lease_writes(sim, LEASE2) == []
    finally:
        actuator.close()


def test_release_with_the_router_gone_ends_at_its_deadline(sim):
    actuator = make(sim)
    try:
        actuator.want("wan1", DEGRADED, 1)
        assert [r.result for r in actuator.step(time.monotonic())] == ["applied"]
        sim.stall()  # connected, but nothing answers any more
        started = time.monotonic()
        assert actuator.release(time.monotonic() + 0.7) == 0
        assert time.monotonic() - started < 1.2
        assert actuator.counters["release_failures"] == 2  # both WANs are live
    finally:
        actuator.close()


def test_a_wan_dry_run_overrides_the_actuator_default(sim):
    actuator = make(sim, dry_run=False, wans=[{"dry_run": False}, {}], actuator={"dry_run": True})
    try:
        assert actuator.modes() == {"wan1": "live", "wan2": "dry_run"}
        actuator.want("wan1", DEGRADED, 1)
        actuator.want("wan2", DEGRADED, 1)
        results = {r.wan: r.result for r in actuator.step(time.monotonic())}
        assert results == {"wan1": "applied", "wan2": "dry_run"}
        assert sim.rule_enabled(RULE1) and not sim.rule_enabled(RULE2)
    finally:
        actuator.close()
    noop = make(sim, dry_run=True, wans=[{"dry_run": False}, {}])
    try:
        assert noop.modes() == {"wan1": "dry_run", "wan2": "dry_run"}, "the no-op actuator never writes"
    finally:
        noop.close()


def test_an_unreachable_router_is_a_router_condition_not_a_rule_failure(sim):
    actuator = make(sim)
    try:
        actuator.want("wan1", DEGRADED, 1)
        assert [r.result for r in actuator.step(time.monotonic())] == ["applied"]
        sim.refuse_connections(True)
        sim.drop_sessions()
        actuator.want("wan1", GOOD, 2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not actuator.link.conditions():
            actuator.step(time.monotonic())
            time.sleep(0.05)
        assert "router" in actuator.link.conditions()
        assert actuator.rule_conditions(dry_run=False) == {}, "the shell maps only the link to degraded"
        # A rule that truly cannot be driven (a duplicate comment) is a rule condition again.
        sim.refuse_connections(False)
        sim.add_rule(RULE1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not actuator.rule_conditions(dry_run=False):
            actuator.step(time.monotonic())
            time.sleep(0.05)
        assert "2 mangle rules" in actuator.rule_conditions(dry_run=False)["wan1_rule"]
    finally:
        actuator.close()


def test_lease_config_rules():
    from proto.config import ConfigError

    for bad, text in [({"lease_s": 1.0}, "actuator.lease_s: must be 0 (no lease) or at least 1.5 s"),
                      ({"lease_address": "lan"}, "actuator.lease_address: must be an IPv4 address or subnet"),
                      ({"on_stop": "maybe"}, "actuator.on_stop"),
                      ({"release_timeout_s": 10}, "actuator.release_timeout_s")]:
        try:
            parse_config({"actuator": bad})
        except ConfigError as error:
            assert any(text in p for p in error.problems), error.problems
        else:
            raise AssertionError(f"{bad} was accepted")
    assert parse_config({"wans": [{"name": "w", "queue": "q", "dry_run": True}]}).wans[0].dry_run is True
