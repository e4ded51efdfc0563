"""wanctl-routeros-setup's script and wanctl-check, against the simulator.

A bare simulated router (queues only) fails the check; the setup script's
routing tables, routes and mangle rules, sent through the API, make it pass;
a missing queue, a duplicate comment and a failing ping each fail with a
clear line, and the command exits 1.
"""

from __future__ import annotations

import re
import subprocess

import yaml

from routeros.check import run_checks
from routeros.link import RouterLink
from routeros.setup import LATENCY_SENSITIVE, api_words, render_rsc, setup_commands
from sim.scenario import quiet_scenario
from tests.simrouter import make_sim, sim  # noqa: F401
from tests.supervisor_harness import BIN

MODELED = ("/routing/table", "/ip/route", "/ip/firewall/mangle")  # what the simulator has of the script


def apply_setup(router, cfg) -> int:
    """Send the script's commands for the menus the simulator models, through the API; how many."""
    link = RouterLink(cfg, "admin", role="setup-test")
    sent = 0
    try:
        assert link.ensure()
        for command in setup_commands(cfg, "192.168.88.10"):
            if command.api_path in MODELED:
                words = api_words(command)
                link.run(words[0], *words[1:])
                sent += 1
    finally:
        link.close()
    return sent


def lines(checks):
    return [c.line() for c in checks]


def write_config(tmp_path, router, **sections):
    raw = {"router": {"port": router.port, "password_env": None, "timeout_s": 2.0, "connect_timeout_s": 2.0},
           "wans": [{"name": w.name, "queue": w.queue, "ping_target": w.ping_target,
                     "ping_routing_table": w.routing_table, "rule_comment": w.rule_comment}
                    for w in router.scenario.wans]}
    for i, extra in enumerate(sections.pop("wans", [])):
        raw["wans"][i].update(extra)
    raw.update(sections)
    path = tmp_path / "wanctl.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_bare_router_fails_and_the_setup_script_makes_it_pass(make_sim):
    router = make_sim(quiet_scenario("wan1", "wan2"), bare=True)
    cfg = router.config()
    before = run_checks(cfg)
    failed = [c.name for c in before if not c.ok]
    assert failed == ["wan1 rule", "wan1 ping", "wan2 rule", "wan2 ping"], lines(before)
    assert "0 mangle rules have the comment 'wanctl-steer-wan1', need exactly one" in "\n".join(lines(before))
    assert apply_setup(router, cfg) == 2 * 2 + len(LATENCY_SENSITIVE) + 2 * 2
    after = run_checks(cfg)
    assert all(c.ok for c in after), lines(after)
    assert [c.name for c in after] == ["login", "wan1 queue", "wan1 rule", "wan1 ping", "wan1 lease",
                                       "wan2 queue", "wan2 rule", "wan2 ping", "wan2 lease"]
    # The steering rules are created disabled and steer nothing until the actuator enables them and holds the lease.
    assert not router.rule_enabled("wanctl-steer-wan1") and not router.steering_active("wanctl-steer-wan1")
    assert router.address_list("wanctl-lease-wan1") == [], "the write probe removes its entry"
    # The routed-by-mark rule sends wan1's steered connections to wan2's table, always on.
    rule = [r for r in router.call(lambda: list(router.router.items("/ip/firewall/mangle")))
            if r.get("connection-mark") == "wanctl-steer-wan1"][0]
    assert (rule["action"], rule["new-routing-mark"], rule["disabled"]) == ("mark-routing", "to-wan2", "false")


def test_the_script_follows_the_connection_mark_pattern(sim):
    cfg = sim.config()
    text = render_rsc(cfg, setup_commands(cfg, "192.168.88.10"), "wanctl.yaml")
    commands = [line for line in text.splitlines() if line and not line.startswith("#")]
    steer = [c for c in commands if 'comment=wanctl-steer-wan1' in c]
    assert len(steer) == 1, text
    steer = steer[0]
    for word in ("action=mark-connection", "connection-state=new", "connection-mark=wanctl-latency",
                 "new-connection-mark=wanctl-steer-wan1", "src-address-list=wanctl-lease-wan1", "disabled=yes"):
        assert word in steer.split(), (word, steer)
    [route] = [c for c in commands if "connection-mark=wanctl-steer-wan1" in c.split()]
    assert "action=mark-routing" in route and "new-routing-mark=to-wan2" in route
    assert "connection-state" not in route and "disabled" not in route, "steered connections stay steered"
    classifiers = [c for c in commands if "new-connection-mark=wanctl-latency" in c]
    assert len(classifiers) == len(LATENCY_SENSITIVE)
    assert all("connection-state=new" in c and "disabled" not in c for c in classifiers)
    for match in ("dscp=46", "dst-port=5060-5061", "dst-port=53", "dst-port=22", "dst-port=27000-27050"):
        assert any(match in c.split() for c in classifiers), match
    assert "/routing table" in commands and "add name=to-wan1 fib" in " ".join(commands)
    assert re.search(r"add dst-address=0.0.0.0/0 gateway=CHANGE-ME-gateway-of-wan2 routing-table=to-wan2", text)
    [group] = [c for c in commands if c.startswith("add name=wanctl policy=")]
    assert "policy=read,write,api,test" in group.split()
    [user] = [c for c in commands if "group=wanctl" in c]
    assert "address=192.168.88.10/32" in user and "password=CHANGE-ME-password" in user
    [ssl] = [c for c in commands if c.startswith("set api-ssl")]
    assert "certificate=CHANGE-ME-certificate-name" in ssl and "address=192.168.88.10/32" in ssl
    assert "name=admin" not in text, "the administrator account is never moved into the API group"
    assert "add name=wanctl group=wanctl" in text and "set router.username: wanctl" in text


def test_without_a_lease_the_rule_does_not_require_the_list(sim):
    cfg = sim.config(actuator={"lease_s": 0})
    text = render_rsc(cfg, setup_commands(cfg), "wanctl.yaml")
    assert "src-address-list" not in text and "CHANGE-ME-wanctl-host-address" in text


def test_a_missing_queue_a_duplicate_comment_and_a_failing_ping_each_fail_clearly(sim, tmp_path):
    good = write_config(tmp_path, sim)
    ok = subprocess.run([str(BIN / "wanctl-check"), "--config", str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[0].startswith("ok    login: api 127.0.0.1:")
    assert ok.stdout.splitlines()[-1] == "9 ok, 0 failed"

    missing = sim.config(wans=[{"queue": "cake-nowhere"}])
    sim.add_rule("wanctl-steer-wan2")
    sim.lose_target("192.0.2.1")
    out = "\n".join(lines(run_checks(missing)))
    assert "FAIL  wan1 queue: 0 /queue/tree entries named 'cake-nowhere', need exactly one" in out, out
    assert re.search(r"FAIL  wan2 rule: 2 mangle rules have the comment 'wanctl-steer-wan2' \(\*\w+, \*\w+\), "
                     r"need exactly one", out), out
    assert "FAIL  wan1 ping: no reply from 192.0.2.1 through routing table to-wan1 (3 probes)" in out, out
    assert "ok    wan2 ping" in out and "ok    wan1 rule" in out

    bad = subprocess.run([str(BIN / "wanctl-check"), "--config", str(good), "--read-only"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1, bad.stdout
    assert "lease" not in bad.stdout, "--read-only writes nothing"


def test_a_rule_without_the_lease_list_fails_the_check(sim):
    def strip():
        for rule in sim.router.rules("wanctl-steer-wan1"):
            rule.pop("src-address-list")
    sim.call(strip)
    out = "\n".join(lines(run_checks(sim.config())))
    assert "FAIL  wan1 rule: mangle rule 'wanctl-steer-wan1' does not require src-address-list=wanctl-lease-wan1" \
        in out, out
    assert "ok    wan1 rule" in "\n".join(lines(run_checks(sim.config(actuator={"lease_s": 0}))))


def test_refused_login_is_one_failing_line(sim):
    sim.refuse_logins(True)
    checks = run_checks(sim.config())
    assert len(checks) == 1 and not checks[0].ok and checks[0].name == "login", lines(checks)
    assert "refused" in checks[0].detail


def test_the_setup_command_prints_the_script_and_refuses_a_bad_config(sim, tmp_path):
    path = write_config(tmp_path, sim)
    out = subprocess.run([str(BIN / "wanctl-routeros-setup"), "--config", str(path), "--wanctl-host", "10.0.0.5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# wanctl: RouterOS 7 setup for wan1, wan2") and "address=10.0.0.5/32" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("actuator: {lease_s: 1}\nwans: [{name: w, queue: q}]\n")
    out = subprocess.run([str(BIN / "wanctl-routeros-setup"), "--config", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "actuator.lease_s" in out.stderr
