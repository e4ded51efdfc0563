"""``wanctl-collector``: poll the router and publish ``telemetry.<wan>`` on the bus."""

from __future__ import annotations

import logging
import sys
import time

import zmq

from proto import bus
from proto.config import Config, ConfigError, router_password

log = logging.getLogger("wanctl.collector")


def run(cfg: Config, password: str | None) -> int:
    from collector.poller import Collector

    stop = bus.StopFlag()
    epoch = bus.new_epoch()
    ctx = zmq.Context()
    pub = bus.publisher(ctx, cfg)
    beats = bus.Heartbeats("collector", epoch, cfg.bus.heartbeat_s)
    collector = Collector(cfg, password, epoch=epoch)
    published = 0
    try:
        while not stop.stopping:
            now = time.monotonic()
            for sample in collector.poll_due(now):
                bus.publish(pub, sample)
                published += 1
            now = time.monotonic()
            beats.maybe_send(pub, now, {**collector.counters, "published": published})
            wait = min(collector.next_due(), beats.due) - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.1))  # short, so SIGTERM is seen within 0.1 s
    finally:
        collector.close()
        pub.close(cfg.bus.linger_ms)
        ctx.term()
    log.info("collector stopped after %d samples", published)
    return 0


def main(argv: list[str] | None = None) -> None:
    import typer

    app = typer.Typer(add_completion=False)

    @app.command()
    def _main(config: str = typer.Option(None, "--config", help="wanctl.yaml")) -> None:
        """Poll every WAN's queue and RTT on the router; publish telemetry."""
        bus.setup_logging("collector")
        cfg = bus.load_stage_config(config, "collector")
        try:
            if not cfg.wans:
                raise ConfigError(["wans: the collector needs at least one WAN, got []"])
            password = router_password(cfg)
        except ConfigError as error:
            for problem in error.problems:
                print(f"wanctl-collector: config error: {problem}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise SystemExit(run(cfg, password))

    app(argv)


if __name__ == "__main__":
    main()
