"""``wanctl-actuator`` / ``wanctl-actuator-noop``: drive each WAN's mangle rule to ``state.<wan>``.

Level-triggered: every ``state.<wan>`` (re-published by the scorer at least
once a second) is handed to the core's ``want``; the core converges the rule,
re-asserts after a restart or a manual change, and reports ``actuation.<wan>``.
Both commands take the lock ``<bus.run_dir>/actuator.lock``: the live and the
no-op actuator never run at the same time.
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
        return {"dry_run": self.dry_run, "router": self.actuator.link.where, "rules": {
            wan: {"desired": a.desired, "observed": a.observed, "result": a.result, "error": a.error,
                  "decision_seq": a.decision_seq} for wan, a in self.last.items()}}


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
        # In a dry run a rule that cannot be read is degraded; live, a rule that cannot be driven is failing.
        health.conditions_from("rules", actuator.conditions, DEGRADED if dry_run else FAILING)
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
    log.info("%s stopped", stage)
    return 0


def _entry(noop: bool) -> None:
    stage = "actuator-noop" if noop else "actuator"

    def start(cfg: Config) -> int:
        dry_run = noop or cfg.actuator.dry_run
        if dry_run:
            log.info("dry run: the mangle rules are read, never written")
        return run(cfg, router_password(cfg), dry_run=dry_run, stage=stage)

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
