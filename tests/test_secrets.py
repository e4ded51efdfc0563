"""The router password reaches only the stages that talk to the router: under the
real supervisord.conf, the bus, scorer, logger and simulator environments hold none."""

from __future__ import annotations

from pathlib import Path

from tests.supervisor_harness import Supervisor, fast_scorer, free_port, short_tmp

PASSWORD = "admin"  # the simulator's; the collector must log in with it


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)


def test_only_the_collector_and_actuator_get_the_router_password(monkeypatch):
    monkeypatch.setenv("WANCTL_ROUTER_PASSWORD", PASSWORD)
    directory = short_tmp()
    port = free_port()
    config = {
        "router": {"port": port, "connect_timeout_s": 1.0, "timeout_s": 1.0, "backoff_initial_s": 0.2,
                   "backoff_max_s": 1.0},
        "wans": [{"name": "wan1", "queue": "cake-wan1", "rule_comment": "wanctl-steer-wan1", "interval_s": 0.25}],
        "scorer": fast_scorer(),
    }
    sup = Supervisor(directory, config, sim_args=f"--port {port}")
    try:
        sup.start()
        stages = ["bus", "scorer", "logger", "collector", "actuator"]
        sup.wait_running(stages)
        seen = {}
        for name in stages + ["sim"]:
            pid = sup.pid(name)
            if pid:
                seen[name] = _environ(pid).get("WANCTL_ROUTER_PASSWORD")
        assert seen["collector"] == PASSWORD and seen["actuator"] == PASSWORD
        for name in ("bus", "scorer", "logger"):
            assert seen[name] == "", (name, seen)
        assert seen.get("sim", "") == ""
    finally:
        sup.cleanup()
