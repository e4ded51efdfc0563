"""The collector's core: poll every WAN on the router and make ``Telemetry`` samples.

Per WAN and per ``interval_s``, over one librouteros connection (``RouterLink``):

1. ``/queue/tree/print =.proplist=.id,name,dropped,queued-packets ?=name=<queue>``
   gives the CAKE queue's cumulative ``dropped`` and its ``queued-packets``;
2. ``/ping =address= =count= =interval=`` (pinned to the WAN by routing
   table or interface when configured), or a local ICMP probe, gives the RTT;
3. ``/ip/firewall/mangle/print =.proplist=disabled ?=comment=<rule_comment>``
   gives ``steering_active``.

``drops_per_sec`` is the counter delta over the elapsed monotonic time between
two reads on the same connection of the same queue item.  The first read, the
first after a reconnect (the router may have rebooted meanwhile), a new queue
``.id`` or a counter that went backwards (``reset-counters``, reboot) give
null, never a negative or a cumulative value.  While the router is unreachable
every poll still yields a sample, with nulls, so the scorer sees the outage.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from collector.probe import IcmpProbe
from routeros.link import RouterLink, RouterTrap, RouterUnreachable, parse_duration
from proto.config import Config, Wan, resolve_path
from proto.messages import CAKE_STATES, Telemetry

log = logging.getLogger("wanctl.collector")


def boot_id() -> str:
    """The identity of this host's monotonic clock: the kernel's boot id."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        # Boot time to the second: stable for the life of the process.
        return f"{socket.gethostname()}-boot-{int(time.time() - time.monotonic())}"


class BaselineRtt:
    """Idle RTT of a path: follows a lower RTT quickly, a higher one only slowly."""

    def __init__(self, down_alpha: float, up_alpha: float):
        self.down_alpha = down_alpha
        self.up_alpha = up_alpha
        self.value: float | None = None

    def update(self, rtt_ms: float) -> float:
        if self.value is None:
            self.value = rtt_ms
        else:
            alpha = self.down_alpha if rtt_ms < self.value else self.up_alpha
            self.value += alpha * (rtt_ms - self.value)
        return self.value


@dataclass
class CounterRead:
    generation: int  # RouterLink.generation of the connection it came over
    queue_id: str
    dropped: int
    t: float


@dataclass
class WanPoll:
    """What the collector keeps for one WAN between polls."""

    wan: Wan
    due: float
    baseline: BaselineRtt
    last: CounterRead | None = None
    last_t: float = float("-inf")
    problems: dict[str, str] = field(default_factory=dict)  # what is wrong now, to log changes once
    probe: IcmpProbe | None = None


class Collector:
    """Polls every WAN when due and returns its ``Telemetry``; never raises from ``poll_due``."""

    def __init__(self, cfg: Config, password: str | None, *, epoch: int, stream: str | None = None,
                 clock=time.monotonic, wall=time.time):
        self.cfg = cfg
        self.epoch = epoch
        self.stream = stream if stream is not None else boot_id()
        self.clock = clock
        self.wall = wall
        self.seq = 0
        self.link = RouterLink(cfg, password, clock=clock, role="collector")
        start = clock()
        c = cfg.collector
        self.wans = [WanPoll(wan=w, due=start, baseline=BaselineRtt(c.baseline_down_alpha, c.baseline_up_alpha))
                     for w in cfg.wans]
        self._counters = {"polls": 0, "samples_with_nulls": 0, "router_errors": 0, "missing_queue": 0,
                          "missing_rule": 0, "counter_resets": 0, "ping_lost": 0, "autorate_stale": 0,
                          "internal_errors": 0}

    @property
    def counters(self) -> dict[str, int]:
        link = self.link.counters
        return {**self._counters, "reconnects": max(0, link["connects"] - 1), **link}

    def next_due(self) -> float:
        return min((w.due for w in self.wans), default=self.clock() + 1.0)

    def poll_due(self, now: float) -> list[Telemetry]:
        samples = []
        for w in self.wans:
            if w.due > now:
                continue
            try:
                sample = self._poll(w)
            except Exception:  # a bug must not stop the samples: report an all-null one
                self._counters["internal_errors"] += 1
                log.exception("%s: poll failed", w.wan.name)
                sample = self._sample(w, self.clock())
            samples.append(sample)
            # Keep the cadence; after falling behind (a slow router), restart it from now.
            w.due += w.wan.interval_s
            if w.due <= self.clock():
                w.due = self.clock() + w.wan.interval_s
        return samples

    def close(self) -> None:
        self.link.close()
        for w in self.wans:
            if w.probe is not None:
                w.probe.close()

    # --- one WAN -------------------------------------------------------------

    def _note(self, w: WanPoll, topic: str, problem: str | None) -> None:
        """Log a WAN's problem when it starts and when it ends, not on every poll."""
        before = w.problems.get(topic)
        if problem == before:
            return
        if problem is None:
            w.problems.pop(topic, None)
            log.info("%s: %s ok again", w.wan.name, topic)
        else:
            w.problems[topic] = problem
            log.error("%s: %s", w.wan.name, problem)

    def _poll(self, w: WanPoll) -> Telemetry:
        self._counters["polls"] += 1
        wan = w.wan
        fields: dict = {}
        t: float | None = None
        if self.link.ensure(self.clock()):
            self._note(w, "router", None)
            try:
                t, drops, depth = self._read_queue(w)
                fields.update(drops_per_sec=drops, queue_depth_pct=depth)
                if self.cfg.collector.rtt_probe == "router":
                    fields["rtt_ms"] = self._router_ping(w)
                if wan.rule_comment:
                    fields["steering_active"] = self._read_rule(w)
            except RouterUnreachable as error:
                self._counters["router_errors"] += 1
                self._note(w, "router", f"router unreachable: {error}; samples carry nulls until it is back")
        else:
            self._note(w, "router", f"router unreachable: {self.link.last_error}; samples carry nulls")
        if self.cfg.collector.rtt_probe == "local":
            fields["rtt_ms"] = self._local_ping(w)
        rtt = fields.get("rtt_ms")
        own_baseline = w.baseline.update(rtt) if rtt is not None else w.baseline.value
        baseline, zone = self._autorate(w)
        fields["baseline_rtt_ms"] = baseline if baseline is not None else own_baseline
        fields["wan_zone"] = zone
        return self._sample(w, t if t is not None else self.clock(), **fields)

    def _sample(self, w: WanPoll, t: float, **fields) -> Telemetry:
        t = max(t, w.last_t + 1e-6)  # strictly increasing per WAN, whatever the clock's resolution
        w.last_t = t
        self.seq += 1
        sample = Telemetry(wan=w.wan.name, seq=self.seq, stream=self.stream, t=t, wall=self.wall(),
                           source="collector", epoch=self.epoch, **fields)
        if None in (sample.rtt_ms, sample.drops_per_sec, sample.queue_depth_pct):
            self._counters["samples_with_nulls"] += 1
        return sample

    def _read_queue(self, w: WanPoll) -> tuple[float | None, float | None, float | None]:
        """(time of the read, drops/s, queue depth %); nulls when the queue is not readable."""
        wan = w.wan
        try:
            rows = self.link.run("/queue/tree/print", "=.proplist=.id,name,dropped,queued-packets",
                                 f"?=name={wan.queue}")
        except RouterTrap as error:
            self._counters["router_errors"] += 1
            self._note(w, "queue", f"/queue/tree/print for queue {wan.queue!r} refused: {error}")
            w.last = None
            return None, None, None
        t = self.clock()
        if not rows:
            self._counters["missing_queue"] += 1
            self._note(w, "queue", f"no queue named {wan.queue!r} in /queue/tree (wans[].queue); "
                                   "drops_per_sec and queue_depth_pct are null until it exists")
            w.last = None
            return t, None, None
        row = rows[0]
        try:
            dropped = int(row["dropped"])
            queued = int(row["queued-packets"])
        except (KeyError, TypeError, ValueError):
            self._note(w, "queue", f"queue {wan.queue!r} has no readable dropped/queued-packets: {row}")
            w.last = None
            return t, None, None
        self._note(w, "queue", None)
        read = CounterRead(self.link.generation, str(row.get(".id", "")), dropped, t)
        prev, w.last = w.last, read
        drops = None
        if prev is not None and prev.generation == read.generation and prev.queue_id == read.queue_id:
            if dropped < prev.dropped:
                self._counters["counter_resets"] += 1
                log.info("%s: dropped counter of %r went back from %d to %d: counter reset, rate null",
                         wan.name, wan.queue, prev.dropped, dropped)
            elif t > prev.t:
                drops = (dropped - prev.dropped) / (t - prev.t)
        return t, drops, 100.0 * queued / wan.queue_capacity_packets

    def _router_ping(self, w: WanPoll) -> float | None:
        wan = w.wan
        words = [f"=address={wan.ping_target}", f"=count={wan.ping_count}", f"=interval={wan.ping_interval_s:g}"]
        if wan.ping_routing_table:
            words.append(f"=routing-table={wan.ping_routing_table}")
        if wan.ping_interface:
            words.append(f"=interface={wan.ping_interface}")
        # RouterOS answers each probe within its interval: allow for all of them.
        timeout = self.link.timeout + wan.ping_count * wan.ping_interval_s
        try:
            rows = self.link.run("/ping", *words, timeout=timeout)
        except RouterTrap as error:
            self._counters["router_errors"] += 1
            self._note(w, "ping", f"/ping {wan.ping_target} refused: {error}")
            return None
        rtts = []
        for row in rows:
            if "time" in row and row.get("status") != "timeout":
                try:
                    rtts.append(round(parse_duration(row["time"]) * 1000.0, 3))  # whole microseconds
                except ValueError:
                    self._note(w, "ping", f"/ping reply with an unreadable time {row['time']!r}")
        if not rtts:
            self._counters["ping_lost"] += 1
            return None
        self._note(w, "ping", None)
        return statistics.median(rtts)

    def _local_ping(self, w: WanPoll) -> float | None:
        wan = w.wan
        try:
            if w.probe is None:
                w.probe = IcmpProbe(wan.ping_target)
            rtts = [r for r in (w.probe.rtt_ms(wan.ping_interval_s) for _ in range(wan.ping_count)) if r is not None]
        except OSError as error:
            self._note(w, "ping", f"local ICMP probe to {wan.ping_target} failed: {error}")
            return None
        self._note(w, "ping", None)
        if not rtts:
            self._counters["ping_lost"] += 1
            return None
        return statistics.median(rtts)

    def _read_rule(self, w: WanPoll) -> bool | None:
        wan = w.wan
        try:
            rows = self.link.run("/ip/firewall/mangle/print", "=.proplist=.id,disabled",
                                 f"?=comment={wan.rule_comment}")
        except RouterTrap as error:
            self._note(w, "rule", f"/ip/firewall/mangle/print refused: {error}")
            return None
        if len(rows) != 1:
            self._counters["missing_rule"] += 1
            self._note(w, "rule", f"{len(rows)} mangle rules have the comment {wan.rule_comment!r} "
                                  "(want exactly one); steering_active is null")
            return None
        self._note(w, "rule", None)
        disabled = rows[0].get("disabled")
        return None if not isinstance(disabled, bool) else not disabled

    def _autorate(self, w: WanPoll) -> tuple[float | None, str | None]:
        """(baseline RTT, zone) from the WAN's autorate state file while it is fresh."""
        wan = w.wan
        if not wan.autorate_state_file:
            return None, None
        path = resolve_path(self.cfg, wan.autorate_state_file)
        try:
            age = self.wall() - os.stat(path).st_mtime
            state = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            self._counters["autorate_stale"] += 1
            self._note(w, "autorate", f"autorate state file {str(path)!r} unreadable: {error}")
            return None, None
        if age > self.cfg.collector.autorate_max_age_s:
            self._counters["autorate_stale"] += 1
            self._note(w, "autorate", f"autorate state file {str(path)!r} is {age:.0f} s old "
                                      f"(collector.autorate_max_age_s {self.cfg.collector.autorate_max_age_s:g})")
            return None, None
        self._note(w, "autorate", None)
        baseline = zone = None
        try:
            baseline = float(state["ewma"]["baseline_rtt"])
        except (KeyError, TypeError, ValueError):
            pass
        raw_zone = (state.get("congestion") or {}).get("dl_state") if isinstance(state, dict) else None
        if raw_zone in CAKE_STATES:
            zone = raw_zone
        if baseline is not None and not (baseline >= 0 and baseline < 1e6):
            baseline = None
        return baseline, zone
