"""``wanctl-collector``: poll the router and publish ``telemetry.<wan>`` on the bus."""

from __future__ import annotations

import logging
import time

import zmq

from proto import bus
from proto.config import Config, router_password
from proto.health import Health
from proto.messages import Telemetry

log = logging.getLogger("wanctl.collector")


def report_router(health: Health, collector, raised: set[str], last: dict[str, Telemetry]) -> set[str]:
    """The router link, every WAN's current problems and last sample into health; returns the raised names."""
    link = collector.link
    health.set_details({"router": link.where, "connected": link.connected, "last_samples": {
        wan: {"seq": s.seq, "rtt_ms": s.rtt_ms, "baseline_rtt_ms": s.baseline_rtt_ms,
              "drops_per_sec": s.drops_per_sec, "queue_depth_pct": s.queue_depth_pct,
              "steering_active": s.steering_active} for wan, s in last.items()}})
    health.sync_reconnects("router", collector.counters["reconnects"])
    if link.connected:
        health.clear("router")
    else:
        health.fail("router", f"router {link.where} unreachable: {link.last_error or 'not connected yet'}; "
                                 "samples carry nulls")
    problems = {f"{w.wan.name}_{topic}": problem for w in collector.wans for topic, problem in w.problems.items()
                if topic != "router"}
    for name in raised - problems.keys():
        health.clear(name)
    for name, problem in problems.items():
        health.degrade(name, problem)
    return set(problems)


def run(cfg: Config, password: str | None) -> int:
    from collector.poller import Collector

    stop = bus.StopFlag()
    epoch = bus.new_epoch()
    ctx = zmq.Context()
    pub = bus.publisher(ctx, cfg)
    beats = bus.Heartbeats("collector", epoch, cfg.bus.heartbeat_s)
    collector = Collector(cfg, password, epoch=epoch)
    health = Health.for_stage(cfg, "collector")
    collector.link.observer = health.router_request
    published = 0
    raised: set[str] = set()
    last: dict[str, Telemetry] = {}
    try:
        while not stop.stopping:
            now = time.monotonic()
            for sample in collector.poll_due(now, stop=lambda: stop.stopping):
                bus.publish(pub, sample)
                published += 1
                health.sent("telemetry")
                last[sample.wan] = sample
                if sample.rtt_ms is not None:
                    health.metrics.wan_rtt.labels(wan=sample.wan).set(sample.rtt_ms)
                if collector.link.connected:
                    health.saw("router_reply")
            now = time.monotonic()
            if now >= beats.due:
                raised = report_router(health, collector, raised, last)
                beats.maybe_send(pub, now, {**health.flat_counters(), **collector.counters, "published": published},
                                 health.status)
            wait = min(collector.next_due(), beats.due) - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.1))  # short, so SIGTERM is seen within 0.1 s
    finally:
        health.stop()
        collector.close()
        pub.close(cfg.bus.linger_ms)
        ctx.term()
    log.info("collector stopped after %d samples", published)
    return 0


def main(argv: list[str] | None = None) -> None:
    bus.stage_command("collector", "Poll every WAN's queue and RTT on the router; publish telemetry.",
                      lambda cfg: run(cfg, router_password(cfg)), needs_router=True, argv=argv)


if __name__ == "__main__":
    main()
