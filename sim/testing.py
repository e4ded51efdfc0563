"""Run the simulator inside a test process, in a background thread.

``SimRouter`` starts a ``SimServer`` on its own event loop in a daemon thread,
on an ephemeral port of 127.0.0.1 by default, and gives the test thread a
thread-safe handle to it::

    from sim.testing import SimRouter
    from sim.scenario import quiet_scenario

    with SimRouter(quiet_scenario("wan1", "wan2")) as sim:
        cfg = sim.config()                      # a proto Config pointing at it
        ...                                     # talk to sim.host:sim.port with librouteros
        sim.rule("wanctl-steer-wan1")           # the mangle rule as stored: {'.id': '*5', 'disabled': 'true', ...}
        sim.set_rule_disabled("wanctl-steer-wan1", False)   # change it behind the client's back
        sim.congest("wan1", added_rtt_ms=150, drops_per_sec=20, queued_packets=700)
        sim.reboot(downtime_s=0.5)              # and every other fault of SimServer
        sim.steering_active("wanctl-steer-wan1")  # rule enabled and its lease entry alive
        sim.address_list("wanctl-lease-wan1")   # the lease entries, with the time left

Every method runs on the simulator's loop and waits for it, so a test sees the
effect before its next line.  ``writes()`` lists every command that changed
something on the router (a dry-run actuator must leave it empty).

Out-of-process users (a pipeline test running ``wanctl-sim``) read the rule
through the RouterOS API itself with librouteros and inject faults with
scenario events.
"""

from __future__ import annotations

import asyncio
import copy
import math
import shutil
import ssl
import tempfile
import threading
import time
from typing import Any, Callable

from sim.router import Router
from sim.scenario import Scenario, quiet_scenario
from sim.server import SimServer


class SimRouter:
    def __init__(self, scenario: Scenario | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 username: str = "admin", password: str = "admin", ssl_context: ssl.SSLContext | None = None,
                 empty_reply: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 ping_delay_scale: float = 1.0, bare: bool = False):
        self.scenario = scenario if scenario is not None else quiet_scenario("wan1")
        self.username = username
        self.password = password
        self.tls = ssl_context is not None
        self.router = Router(self.scenario, clock=clock, bare=bare)
        self.server = SimServer(self.router, host=host, port=port, username=username, password=password,
                                ssl_context=ssl_context, empty_reply=empty_reply, ping_delay_scale=ping_delay_scale)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wanctl-sim", daemon=True)
        self._started = False
        self._state_dir: str | None = None

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> "SimRouter":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        self._started = True
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            if self._state_dir is not None:
                shutil.rmtree(self._state_dir, ignore_errors=True)

    def __enter__(self) -> "SimRouter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    # --- running things on the simulator's loop ---------------------------------

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` on the simulator's loop; await it if it is a coroutine."""
        async def run():
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # --- inspecting ------------------------------------------------------------

    def rules(self, comment: str) -> list[dict[str, str]]:
        """Copies of the mangle rules with exactly this comment."""
        return self.call(lambda: copy.deepcopy(self.router.rules(comment)))

    def rule(self, comment: str) -> dict[str, str]:
        rules = self.rules(comment)
        assert len(rules) == 1, f"expected one mangle rule with comment {comment!r}, found {len(rules)}"
        return rules[0]

    def rule_enabled(self, comment: str) -> bool:
        return self.rule(comment)["disabled"] == "false"

    def queue(self, name: str) -> dict[str, str]:
        """The /queue/tree entry as a print would show it now."""
        def read():
            item = self.router.find("/queue/tree", name)
            return self.router._dynamic("/queue/tree", item)
        return self.call(read)

    def steering_active(self, comment: str) -> bool:
        """Whether the rule would steer new connections now (enabled, and its lease entry alive)."""
        return self.call(self.router.steering_active, comment)

    def address_list(self, name: str) -> list[dict[str, str]]:
        """The live entries of an address list, as printed now (``timeout`` is the time left)."""
        return self.call(lambda: [self.router._dynamic("/ip/firewall/address-list", e)
                                  for e in self.router.address_list(name)])

    def writes(self) -> list[tuple[str, dict[str, str]]]:
        return self.call(lambda: list(self.router.writes))

    @property
    def stats(self) -> dict[str, int]:
        return self.call(lambda: dict(self.server.stats))

    def sessions(self) -> int:
        return self.call(lambda: len(self.server.sessions))

    # --- changing the router behind the client's back ------------------------------

    def set_rule_disabled(self, comment: str, disabled: bool) -> None:
        def change():
            for rule in self.router.rules(comment):
                rule["disabled"] = "true" if disabled else "false"
        self.call(change)

    def add_rule(self, comment: str, disabled: bool = True) -> str:
        return self.call(self.router._add_rule, {"chain": "prerouting", "action": "mark-routing",
                                                 "new-routing-mark": "to-alternate", "comment": comment,
                                                 "disabled": "yes" if disabled else "no"})

    def remove_rules(self, comment: str) -> None:
        def remove():
            menu = self.router.menus["/ip/firewall/mangle"]
            menu[:] = [r for r in menu if r.get("comment") != comment]
        self.call(remove)

    def congest(self, wan: str, **override: float) -> None:
        """Add congestion to a WAN until ``calm``: added_rtt_ms, drops_per_sec, queued_packets,
        jitter_ms, loss_pct, rate_pps (absolute)."""
        def apply():
            traffic = self.router.traffic[wan]
            traffic.advance(self.router.elapsed())
            traffic.override = dict(override)
        self.call(apply)

    def calm(self, wan: str) -> None:
        def apply():
            traffic = self.router.traffic[wan]
            traffic.advance(self.router.elapsed())
            traffic.override = None
        self.call(apply)

    # --- faults -------------------------------------------------------------------

    def reset_counters(self, wan: str | None = None) -> None:
        self.call(self.router.reset_counters, wan)

    def reboot(self, downtime_s: float = 0.5) -> None:
        self.call(self.server.reboot, downtime_s)

    def outage(self, seconds: float) -> None:
        self.call(self.server.outage, seconds)

    def stall(self, seconds: float = math.inf) -> None:
        self.call(self.server.stall, seconds)

    def cut_next_reply(self, command: str | None = None) -> None:
        self.call(self.server.cut_next_reply, command)

    def refuse_logins(self, on: bool = True) -> None:
        self.call(self.server.refuse_logins, on)

    def refuse_connections(self, on: bool = True) -> None:
        self.call(self.server.refuse_connections, on)

    def drop_sessions(self) -> None:
        self.call(self.server.drop_sessions)

    def hostile(self, mode: str, on: bool = True) -> None:
        self.call(self.server.hostile, mode, on)

    def lose_target(self, address: str, on: bool = True) -> None:
        """Every probe to ``address`` is lost (a reflector that stopped answering) while on."""
        def apply():
            (self.router.lost_targets.add if on else self.router.lost_targets.discard)(address)
        self.call(apply)

    def fatal(self, reason: str = "session terminated on request") -> None:
        self.call(self.server.fatal, reason)

    # --- configuration for the client side -------------------------------------------

    def config(self, **sections: Any):
        """A validated ``proto.config.Config`` whose router and WANs point at this simulator.

        ``sections`` are raw config sections merged over the generated ones
        (e.g. ``collector={"baseline_up_alpha": 0.01}``, ``actuator={...}``);
        ``wans`` entries are merged by position.
        """
        from proto.config import parse_config

        wans = [{"name": w.name, "queue": w.queue, "ping_target": w.ping_target,
                 "ping_routing_table": w.routing_table, "rule_comment": w.rule_comment,
                 "queue_capacity_packets": 1000, "interval_s": 0.5} for w in self.scenario.wans]
        for i, extra in enumerate(sections.pop("wans", [])):
            wans[i].update(extra)
        # No host: the built-in simulator (127.0.0.1, password admin unless the env/file says otherwise).
        router = {"host": None if self.host == "127.0.0.1" else self.host, "port": self.port,
                  "username": self.username, "password_env": None,
                  "tls": self.tls, "timeout_s": 2.0, "connect_timeout_s": 2.0,
                  "backoff_initial_s": 0.05, "backoff_max_s": 0.5}
        router.update(sections.pop("router", {}))
        # The collector's baselines go to a folder of this simulator's own, not to the working directory.
        if self._state_dir is None:
            self._state_dir = tempfile.mkdtemp(prefix="wanctl-sim-state-")
        sections["collector"] = {"state_path": f"{self._state_dir}/collector-state.json",
                                 **sections.get("collector", {})}
        return parse_config({"router": router, "wans": wans, **sections})
