"""``wanctl-bus``: the XSUB/XPUB proxy every stage connects to.

Publishers connect to its XSUB side, subscribers to its XPUB side; the XPUB
sends ``WELCOME`` to every subscriber that connects.  Frames the XPUB cannot
take (a subscriber at its HWM) are counted as ``dropped_subscriber_hwm``,
never as ``forwarded``.  It publishes ``heartbeat.bus`` itself, straight to
its subscribers.
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from bus import sockets
from proto.config import Config
from proto.messages import KINDS
from runtime.stage import Stage, stage_command

log = logging.getLogger("wanctl.bus")

_KIND_LABELS = {kind.encode(): kind for kind in KINDS}  # topic kinds the proxy counts by name


def run_proxy(cfg: Config) -> int:
    """Forward XSUB <-> XPUB until SIGTERM."""
    with Stage(cfg, "bus") as stage:
        health = stage.health
        xsub = stage.server_socket(zmq.XSUB, cfg.bus.publish)
        xpub = stage._own(sockets._socket(stage.ctx, zmq.XPUB, cfg, server=True))
        xpub.sndhwm = xpub.rcvhwm = 100_000
        xpub.setsockopt(zmq.XPUB_WELCOME_MSG, sockets.WELCOME)
        addr = sockets.endpoint(cfg, cfg.bus.subscribe)
        if addr.startswith("ipc://"):
            try:  # a stale socket file from a killed proxy (the lock says no live one uses it)
                os.unlink(addr[len("ipc://"):])
            except FileNotFoundError:
                pass
        xpub.bind(addr)
        beats = sockets.Publisher(xpub)  # the bus is its own proxy: heartbeats go straight to subscribers
        counters = {"forwarded": 0, "dropped_subscriber_hwm": 0, "subscription_events": 0}
        stage.count_from("proxy", counters)
        stage.count_from("heartbeats", beats.counters)
        by_kind: dict[bytes, list[int]] = {}  # topic kind -> [received, forwarded], flushed per burst
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        log.info("bus up: publishers -> %s, subscribers -> %s, curve=%s, health %s",
                 sockets.endpoint(cfg, cfg.bus.publish), addr, bool(stage.auth), health.url or "off")
        while not stage.stopping:
            events = dict(poller.poll(100))
            if xsub in events:
                for frames in sockets.pending_frames(xsub, copy=False):
                    kind = frames[0].bytes.split(b".", 1)[0]
                    tally = by_kind.get(kind)
                    if tally is None:
                        tally = by_kind.setdefault(kind if kind in _KIND_LABELS else b"other", [0, 0])
                    tally[0] += 1
                    try:
                        xpub.send_multipart(frames, zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        counters["dropped_subscriber_hwm"] += 1
                        health.dropped_frame("subscriber_hwm")
                    else:
                        tally[1] += 1
                        counters["forwarded"] += 1
                for kind, tally in by_kind.items():
                    if tally[0]:
                        health.saw(_KIND_LABELS.get(kind, "other"), tally[0])
                        health.sent(_KIND_LABELS.get(kind, "other"), tally[1])
                        tally[0] = tally[1] = 0
            if xpub in events:
                for frames in sockets.pending_frames(xpub):
                    xsub.send_multipart(frames)
                    counters["subscription_events"] += 1
            stage.heartbeat(time.monotonic(), beats.send)
    log.info("bus stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    stage_command("bus", "Run the XSUB/XPUB proxy every stage connects to.", run_proxy, argv=argv)
