"""``wanctl-actuator`` / ``wanctl-actuator-noop``: drive each WAN's mangle rule to ``state.<wan>``.

Level-triggered: every ``state.<wan>`` (re-published by the scorer at least
once a second) is handed to the core's ``want``; the core converges the rule,
re-asserts after a restart or a manual change, and reports ``actuation.<wan>``.
"""

from __future__ import annotations

import logging
import time

import zmq

from proto import bus
from proto.config import Config, router_password
from proto.health import Health
from proto.messages import Actuation, State

log = logging.getLogger("wanctl.actuator")


def report_actuation(health: Health, actuation: Actuation, dry_run: bool) -> None:
    """A WAN whose rule cannot be driven makes the stage failing (in a dry run, where it cannot be read:
    degraded) until a later actuation of that WAN succeeds."""
    name = f"{actuation.wan}_rule"
    if actuation.error is None:
        health.clear(name)
    elif dry_run:
        health.degrade(name, actuation.error)
    else:
        health.fail(name, actuation.error)


def run(cfg: Config, password: str | None, *, dry_run: bool, stage: str) -> int:
    from actuator.rule import Actuator

    stop = bus.StopFlag()
    epoch = bus.new_epoch()
    ctx = zmq.Context()
    sub = bus.subscriber(ctx, cfg, [b"state."])
    pub = bus.publisher(ctx, cfg)
    decoder = bus.FrameDecoder()
    beats = bus.Heartbeats(stage, epoch, cfg.bus.heartbeat_s)
    actuator = Actuator(cfg, password, epoch=epoch, dry_run=dry_run)
    known_wans = {w.name for w in cfg.wans}
    counters = {"states_seen": 0, "states_unknown_wan": 0, "actuations_published": 0}
    health = Health.for_stage(cfg, "actuator", name=stage)
    health.expect("state")  # the scorer re-publishes every WAN's state at least once a second
    actuator.link.observer = health.router_request
    last: dict[str, Actuation] = {}
    try:
        while not stop.stopping:
            wait = min(actuator.next_due(), beats.due) - time.monotonic()
            if sub.poll(max(0, min(100, int(wait * 1000) + 1)), zmq.POLLIN):
                for frames in bus.pending_frames(sub):
                    message = decoder.decode(frames)
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
                bus.publish(pub, actuation)
                counters["actuations_published"] += 1
                health.sent("actuation")
                report_actuation(health, actuation, dry_run)
                last[actuation.wan] = actuation
            if now >= beats.due:
                health.sync_dropped(decoder.counters)
                health.sync_reconnects("router", actuator.counters["reconnects"])
                health.set_details({"dry_run": dry_run, "router": actuator.link.where, "rules": {
                    wan: {"desired": a.desired, "observed": a.observed, "result": a.result, "error": a.error,
                          "decision_seq": a.decision_seq} for wan, a in last.items()}})
                beats.maybe_send(pub, now, {**health.flat_counters(), **actuator.counters, **counters,
                                            **decoder.counters}, health.status)
    finally:
        health.stop()
        actuator.close()
        sub.close(cfg.bus.linger_ms)
        pub.close(cfg.bus.linger_ms)
        ctx.term()
    log.info("%s stopped", stage)
    return 0


def _entry(noop: bool) -> None:
    stage = "actuator-noop" if noop else "actuator"

    def start(cfg: Config) -> int:
        dry_run = noop or cfg.actuator.dry_run
        if dry_run:
            log.info("dry run: the mangle rules are read, never written")
        return run(cfg, router_password(cfg), dry_run=dry_run, stage=stage)

    bus.stage_command(stage, "Drive each WAN's mangle rule toward the scorer's desired state.", start,
                      needs_router=True)


def main() -> None:
    _entry(noop=False)


def main_noop() -> None:
    """The no-op twin: same bookkeeping, publishes ``dry_run`` results, never writes."""
    _entry(noop=True)


if __name__ == "__main__":
    main()
