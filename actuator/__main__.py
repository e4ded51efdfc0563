"""``wanctl-actuator`` / ``wanctl-actuator-noop``: drive each WAN's mangle rule to ``state.<wan>``.

Level-triggered: every ``state.<wan>`` (re-published by the scorer at least
once a second) is handed to the core's ``want``; the core converges the rule,
re-asserts after a restart or a manual change, and reports ``actuation.<wan>``.
Both commands take the lock ``<bus.run_dir>/actuator.lock``: the live and the
no-op actuator never run at the same time.

Health: degraded while the router cannot be reached; failing while a live
WAN's rule cannot be driven (degraded for a WAN in dry run).  The details say
each WAN's mode (``modes``: ``live`` or ``dry_run``), the heartbeat counts
them (``wans_live``, ``wans_dry_run``).  On a clean stop with
``actuator.on_stop: release`` every live WAN's rule is disabled before exit,
within ``actuator.release_timeout_s``.
"""

from __future__ import annotations

import logging
import time

import zmq

from bus import sockets
from proto.config import Config, router_password
from proto.messages import Actuation, State
from runtime.health import DEGRADED, FAILING
from runtime.stage import Stage, stage_command

log = logging.getLogger("wanctl.actuator")


class ActuatorHealth:
    """The last actuation of every WAN, as health details (conditions come from the core itself)."""

    def __init__(self, actuator, dry_run: bool) -> None:
        self.actuator = actuator
        self.dry_run = dry_run
        self.last: dict[str, Actuation] = {}

    def details(self) -> dict:
        modes = self.actuator.modes()
        return {"dry_run": self.dry_run or all(m == "dry_run" for m in modes.values()), "modes": modes, "router": self.actuator.link.where,
                "router_connected": self.actuator.link.connected,
                "on_stop": self.actuator.cfg.actuator.on_stop, "lease_s": self.actuator.lease_s, "rules": {
                    wan: {"mode": modes.get(wan), "desired": a.desired, "observed": a.observed, "result": a.result,
                          "error": a.error, "decision_seq": a.decision_seq} for wan, a in self.last.items()}}


def run(cfg: Config, password: str | None, *, dry_run: bool, stage: str) -> int:
    from actuator.rule import Actuator

    with Stage(cfg, "actuator", name=stage) as rt:
        sub = rt.subscriber([b"state."])
        pub = rt.publisher()
        actuator = Actuator(cfg, password, epoch=rt.epoch, dry_run=dry_run)
        rt.on_close("close the router link", actuator.close)
        health = rt.health
        view = ActuatorHealth(actuator, dry_run)
        known_wans = {w.name for w in cfg.wans}
        counters = {"states_seen": 0, "states_unknown_wan": 0, "actuations_published": 0}
        rt.count_from("actuator", lambda: actuator.counters)
        rt.count_from("shell", counters)
        # An unreachable router is degraded (the router's lease and the last state hold meanwhile); a
        # live rule that cannot be driven is failing, a dry-run one that cannot be read degraded.
        health.conditions_from("router", actuator.link.conditions, DEGRADED)
        health.conditions_from("rules", lambda: actuator.rule_conditions(dry_run=False), FAILING)
        health.conditions_from("dry_run_rules", lambda: actuator.rule_conditions(dry_run=True), DEGRADED)
        health.expect("state")  # the scorer re-publishes every WAN's state at least once a second
        actuator.link.observer = health.router_request
        while not rt.stopping:
            wait = min(actuator.next_due(), rt.beats.due) - time.monotonic()
            if sub.poll(max(0, min(100, int(wait * 1000) + 1)), zmq.POLLIN):
                for frames in sockets.pending_frames(sub):
                    message = rt.decoder.decode(frames)
                    if not isinstance(message, State):
                        continue
                    health.saw("state")
                    if message.wan not in known_wans:
                        counters["states_unknown_wan"] += 1
                        continue
                    counters["states_seen"] += 1
                    actuator.want(message.wan, message.desired, message.decision_seq)
            now = time.monotonic()
            for actuation in actuator.step(now):
                pub.send(actuation)
                counters["actuations_published"] += 1
                health.sent("actuation")
                health.observe_actuation(actuation)
                view.last[actuation.wan] = actuation
            if now >= rt.beats.due:
                health.sync_dropped(rt.decoder.counters)
                health.sync_reconnects("router", actuator.counters["reconnects"])
                health.set_details(view.details())
                rt.heartbeat(now)
        if cfg.actuator.on_stop == "release":
            actuator.release(time.monotonic() + cfg.actuator.release_timeout_s)
    log.info("%s stopped", stage)
    return 0


def _entry(noop: bool) -> None:
    stage = "actuator-noop" if noop else "actuator"

    def start(cfg: Config) -> int:
        dry = [w.name for w in cfg.wans if noop or (cfg.actuator.dry_run if w.dry_run is None else w.dry_run)]
        if dry:
            log.info("dry run for %s: their mangle rules are read, never written", ", ".join(dry))
        return run(cfg, router_password(cfg), dry_run=noop, stage=stage)

    summary = ("Dry run: follow the scorer's desired state for each WAN, read its mangle rule and publish "
               "dry_run actuations, never writing to the router (takes the actuator's lock: never runs beside "
               "wanctl-actuator)." if noop else
               "Drive each WAN's mangle rule toward the scorer's desired state (read only with actuator.dry_run).")
    stage_command(stage, summary, start, needs_router=True)


def main() -> None:
    _entry(noop=False)


def main_noop() -> None:
    """The no-op twin: same bookkeeping, publishes ``dry_run`` results, never writes."""
    _entry(noop=True)


if __name__ == "__main__":
    main()
