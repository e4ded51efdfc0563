"""``wanctl-collector``: poll the router and publish ``telemetry.<wan>`` on the bus."""

from __future__ import annotations

import logging
import time

from proto.config import Config, router_password
from proto.messages import Telemetry
from runtime.health import FAILING
from runtime.stage import Stage, stage_command

log = logging.getLogger("wanctl.collector")


class CollectorHealth:
    """The last samples of every WAN, as health details (conditions come from the core itself)."""

    def __init__(self, collector) -> None:
        self.collector = collector
        self.last: dict[str, Telemetry] = {}

    def details(self) -> dict:
        return {"router": self.collector.link.where, "connected": self.collector.link.connected, "last_samples": {
            wan: {"seq": s.seq, "rtt_ms": s.rtt_ms, "baseline_rtt_ms": s.baseline_rtt_ms,
                  "drops_per_sec": s.drops_per_sec, "queue_depth_pct": s.queue_depth_pct,
                  "steering_active": s.steering_active} for wan, s in self.last.items()}}


def run(cfg: Config, password: str | None) -> int:
    from collector.poller import Collector

    with Stage(cfg, "collector") as stage:
        pub = stage.publisher()
        collector = Collector(cfg, password, epoch=stage.epoch)
        stage.on_close("close the router link", collector.close)
        health = stage.health
        view = CollectorHealth(collector)
        stage.count_from("collector", lambda: collector.counters)
        # The router link failing is failing; a WAN's own problem (a missing queue, say) is degraded.
        health.conditions_from("router", collector.link.conditions, FAILING)
        health.conditions_from("wans", lambda: {k: v for k, v in collector.conditions().items() if k != "router"})
        collector.link.observer = health.router_request
        while not stage.stopping:
            now = time.monotonic()
            for sample in collector.poll_due(now, stop=lambda: stage.stopping):
                pub.send(sample)
                health.sent("telemetry")
                view.last[sample.wan] = sample
                health.observe_telemetry(sample)
                if collector.link.connected:
                    health.saw("router_reply")
            now = time.monotonic()
            if now >= stage.beats.due:
                health.set_details(view.details())
                health.sync_reconnects("router", collector.counters["reconnects"])
                stage.heartbeat(now)
            wait = min(collector.next_due(), stage.beats.due) - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.1))  # short, so SIGTERM is seen within 0.1 s
    log.info("collector stopped after %d samples", pub.counters["published"])
    return 0


def main(argv: list[str] | None = None) -> None:
    stage_command("collector", "Poll every WAN's queue and RTT on the router; publish telemetry.",
                  lambda cfg: run(cfg, router_password(cfg)), needs_router=True, argv=argv)


if __name__ == "__main__":
    main()
