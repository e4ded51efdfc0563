"""The collector's core: poll every WAN on the router and make ``Telemetry`` samples.

A *round* polls every WAN that is due, over one connection (``RouterLink``):

1. per WAN, ``/queue/tree/print =.proplist=.id,name,dropped,queued-packets,queued-bytes,max-limit
   ?=name=<queue>`` gives the CAKE queue's cumulative ``dropped``, its backlog
   and its rate (``queue_delay_ms = queued-bytes * 8 / max-limit``, or the
   WAN's ``rate_mbps`` when the queue has no limit);
2. per WAN, ``/ip/firewall/mangle/print ?=comment=<rule_comment>`` gives
   ``steering_active``;
3. one ``/ping`` per WAN and target, all at once (tagged), pinned to the WAN
   by routing table or interface when configured; a probe not answered by
   the end of the round counts as lost, so one WAN's lost probes never hold
   up another WAN's sample.  With several targets the RTT is the median of
   the answering targets, and a probe is lost only when ``min_targets_lost``
   targets (default: all) failed it.

A round has a deadline (nine tenths of the shortest poll interval due): a
router that stalls costs one timed-out command, the link backs off, and the
rest of the round's WANs get samples with ``rtt_status: unavailable`` and
nulls at once.  The stop predicate is honoured between WANs and within 0.1 s
inside any wait.  Values from the router are range-checked at the edge
(finite, non-negative, plausible, the row named as asked); what fails the
check is null and said once.

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
import math
import os
import re
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from collector.probe import IcmpProbe
from routeros.link import Backoff, Command, LinkStopped, RouterLink, RouterTrap, RouterUnreachable, clip, parse_duration
from proto.config import Config, Wan, resolve_path
from proto.messages import CAKE_STATES, Telemetry
from runtime.storage import write_atomic

log = logging.getLogger("wanctl.collector")


def boot_id() -> str:
    """The identity of this host's monotonic clock: the kernel's boot id."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        # Boot time to the second: stable for the life of the process.
        return f"{socket.gethostname()}-boot-{int(time.time() - time.monotonic())}"


MAX_COUNTER = 2**64  # RouterOS counters are 64-bit
MAX_RTT_MS = 60_000.0  # a probe answered after a minute is not an RTT
SEED_SAMPLES = 5  # with no saved baseline, it starts as the minimum of this many first RTTs


def counter_value(value: object) -> int | None:
    """A RouterOS counter or gauge: an int in 0..2**64, else None (negative, huge, text, bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not value.isdigit() or len(value) > 20:
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value < MAX_COUNTER:
        return value
    return None


_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def rate_value(value: object) -> float | None:
    """A RouterOS rate in bits/s (``300000000``, ``300M``, ``2.5k``); None for 0 (no limit) or nonsense."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        rate = float(value)
    elif isinstance(value, str) and len(value) <= 24:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKMG]?)", value.strip())
        if not match:
            return None
        rate = float(match[1]) * _SI[match[2]]
    else:
        return None
    return rate if 0 < rate < 1e13 else None


class BaselineRtt:
    """Idle RTT of a path: follows a lower RTT quickly, a higher one only slowly, and never rises
    while the path is congested.  With no saved value it starts as the minimum of the first RTTs."""

    def __init__(self, down_alpha: float, up_alpha: float, value: float | None = None):
        self.down_alpha = down_alpha
        self.up_alpha = up_alpha
        self.value: float | None = value
        self._seeding = 0 if value is not None else SEED_SAMPLES

    def update(self, rtt_ms: float, congested: bool = False) -> float:
        if self.value is None or self._seeding > 0:
            self.value = rtt_ms if self.value is None else min(self.value, rtt_ms)
            self._seeding = max(0, self._seeding - 1)
        elif rtt_ms < self.value:
            self.value += self.down_alpha * (rtt_ms - self.value)
        elif not congested:
            self.value += self.up_alpha * (rtt_ms - self.value)
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
    targets: list[str] = field(default_factory=list)
    last: CounterRead | None = None
    last_t: float = float("-inf")
    problems: dict[str, str] = field(default_factory=dict)  # what is wrong now, to log changes once
    probes: dict[str, IcmpProbe] = field(default_factory=dict)
    backoff: Backoff | None = None  # after a refused command (!trap), this WAN's commands wait
    quiet_until: float = float("-inf")
    trapped: bool = False  # a command of this round was refused


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


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
        self.state_path = resolve_path(cfg, c.state_path)
        saved = self._load_state()
        self.wans = []
        for w in cfg.wans:
            targets = list(w.ping_targets) or [w.ping_target]
            entry = saved.get(w.name) or {}
            value = entry.get("baseline_rtt_ms") if entry.get("targets") == targets else None
            self.wans.append(WanPoll(wan=w, due=start, targets=targets,
                                     baseline=BaselineRtt(c.baseline_down_alpha, c.baseline_up_alpha, value),
                                     backoff=Backoff(cfg.router.backoff_initial_s, cfg.router.backoff_max_s)))
        self._saved = {w.wan.name: w.baseline.value for w in self.wans}
        self._saved_at = start
        self._counters = {"polls": 0, "rounds": 0, "rounds_cut": 0, "samples_with_nulls": 0, "samples_unavailable": 0,
                          "router_errors": 0, "missing_queue": 0, "foreign_rows": 0, "implausible_values": 0,
                          "missing_rule": 0, "counter_resets": 0, "ping_lost": 0, "probes_cut": 0,
                          "autorate_stale": 0, "state_writes": 0, "state_write_failures": 0, "internal_errors": 0}

    @property
    def counters(self) -> dict[str, int]:
        link = self.link.counters
        return {**self._counters, "reconnects": max(0, link["connects"] - 1), **link}

    def conditions(self) -> dict[str, str]:
        """Failing conditions -> reason: the router link, and every WAN's current problems."""
        out = dict(self.link.conditions())
        for w in self.wans:
            for topic, problem in w.problems.items():
                if topic != "router":
                    out[f"{w.wan.name}_{topic}"] = clip(problem, 300)
        return out

    def next_due(self) -> float:
        return min((w.due for w in self.wans), default=self.clock() + 1.0)

    def poll_due(self, now: float, stop: Callable[[], bool] | None = None) -> list[Telemetry]:
        """One round over the WANs due at ``now``; returns early (with what it has) once ``stop()``."""
        stop = stop or (lambda: False)
        due = [w for w in self.wans if w.due <= now]
        if not due:
            return []
        self._counters["rounds"] += 1
        self.link.stop = stop
        deadline = self.clock() + 0.9 * min(w.wan.interval_s for w in due)
        fields: dict[str, dict] = {}
        times: dict[str, float | None] = {}
        try:
            for w in due:
                if stop():
                    break
                try:
                    times[w.wan.name], fields[w.wan.name] = self._read_router(w, deadline)
                except LinkStopped:
                    break
                except Exception:  # a bug must not stop the samples: report an all-null one
                    self._counters["internal_errors"] += 1
                    log.exception("%s: poll failed", w.wan.name)
                    times[w.wan.name], fields[w.wan.name] = None, {"rtt_status": "unavailable"}
            polled = [w for w in due if w.wan.name in fields]
            if not stop():
                try:
                    self._probe(polled, fields, deadline)
                except LinkStopped:
                    pass
                except Exception:
                    self._counters["internal_errors"] += 1
                    log.exception("probing failed")
        finally:
            self.link.stop = lambda: False
        if len(polled) < len(due):
            self._counters["rounds_cut"] += 1
        samples = []
        for w in polled:
            if w.trapped:  # refused: no more commands for this WAN until its backoff has passed
                w.quiet_until = self.clock() + w.backoff.next()
            elif w.quiet_until <= self.clock() and fields[w.wan.name].get("rtt_status") != "unavailable":
                w.backoff.reset()
            try:
                sample = self._finish(w, times[w.wan.name], fields[w.wan.name])
            except Exception:
                self._counters["internal_errors"] += 1
                log.exception("%s: poll failed", w.wan.name)
                sample = self._sample(w, self.clock(), rtt_status="unavailable")
            samples.append(sample)
            # Keep the cadence; after falling behind (a slow router), restart it from now.
            w.due += w.wan.interval_s
            if w.due <= self.clock():
                w.due = self.clock() + w.wan.interval_s
        self._maybe_save(self.clock())
        return samples

    def close(self) -> None:
        self._maybe_save(self.clock(), force=True)
        self.link.close()
        for w in self.wans:
            for probe in w.probes.values():
                probe.close()
            w.probes.clear()

    # --- baseline state ------------------------------------------------------------

    def _load_state(self) -> dict[str, dict]:
        try:
            raw = json.loads(self.state_path.read_text()[:1_000_000])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("collector state %s unreadable (%s): baselines start afresh", self.state_path, clip(error))
            return {}
        out = {}
        wans = raw.get("wans") if isinstance(raw, dict) else None
        for name, entry in (wans or {}).items() if isinstance(wans, dict) else ():
            if not isinstance(entry, dict):
                continue
            value = entry.get("baseline_rtt_ms")
            targets = entry.get("targets")
            if (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < MAX_RTT_MS
                    and isinstance(targets, list)):
                out[name] = {"baseline_rtt_ms": float(value), "targets": targets}
        return out

    def _maybe_save(self, now: float, force: bool = False) -> None:
        """Write the baselines atomically when they moved, at most every ``collector.state_interval_s``."""
        values = {w.wan.name: w.baseline.value for w in self.wans}
        if values == self._saved or (not force and now - self._saved_at < self.cfg.collector.state_interval_s):
            return
        self._saved_at = now
        state = {"wans": {w.wan.name: {"baseline_rtt_ms": w.baseline.value, "targets": w.targets}
                          for w in self.wans if w.baseline.value is not None}}
        try:
            write_atomic(self.state_path, json.dumps(state).encode())
        except OSError as error:
            self._counters["state_write_failures"] += 1
            log.warning("collector state %s not written: %s", self.state_path, clip(error))
            return
        self._counters["state_writes"] += 1
        self._saved = values

    # --- one WAN -------------------------------------------------------------

    def _note(self, w: WanPoll, topic: str, problem: str | None) -> None:
        """Log a WAN's problem when it starts and when it ends, not on every poll."""
        before = w.problems.get(topic)
        if problem is not None:
            problem = clip(problem, 400)
        if problem == before:
            return
        if problem is None:
            w.problems.pop(topic, None)
            log.info("%s: %s ok again", w.wan.name, topic)
        else:
            w.problems[topic] = problem
            log.error("%s: %s", w.wan.name, problem)

    def _read_router(self, w: WanPoll, deadline: float) -> tuple[float | None, dict]:
        """(time of the queue read, fields) from the queue and the rule; ``rtt_status`` unavailable
        when the router cannot be asked."""
        self._counters["polls"] += 1
        wan = w.wan
        fields: dict = {}
        t: float | None = None
        w.trapped = False
        if self.clock() < w.quiet_until:
            w.last = None
            return None, {"rtt_status": "unavailable"}
        if not self.link.ensure(self.clock(), deadline):
            self._note(w, "router", f"router unreachable: {self.link.last_error}; samples carry nulls")
            w.last = None
            fields["rtt_status"] = "unavailable"
            return None, fields
        self._note(w, "router", None)
        try:
            t, drops, depth, delay = self._read_queue(w, deadline)
            fields.update(drops_per_sec=drops, queue_depth_pct=depth, queue_delay_ms=delay)
            if w.trapped:
                fields["rtt_status"] = "unavailable"
            elif wan.rule_comment:
                fields["steering_active"] = self._read_rule(w, deadline)
        except LinkStopped:
            raise
        except RouterUnreachable as error:
            self._counters["router_errors"] += 1
            w.last = None
            fields = {"rtt_status": "unavailable"}
            self._note(w, "router", f"router unreachable: {error}; samples carry nulls until it is back")
        return t, fields

    def _finish(self, w: WanPoll, t: float | None, fields: dict) -> Telemetry:
        rtt = fields.get("rtt_ms")
        own = w.baseline.value
        if rtt is not None:
            c = self.cfg.collector
            delay = fields.get("queue_delay_ms")
            congested = ((own is not None and rtt - own > c.baseline_freeze_rtt_ms)
                         or (delay is not None and delay > c.baseline_freeze_queue_ms))
            own = w.baseline.update(rtt, congested)
        baseline, zone = self._autorate(w)
        fields["baseline_rtt_ms"] = baseline if baseline is not None else own
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
        if sample.rtt_status == "unavailable":
            self._counters["samples_unavailable"] += 1
        return sample

    def _implausible(self, w: WanPoll, what: str, value: object) -> None:
        self._counters["implausible_values"] += 1
        self._note(w, "values", f"implausible {what} from the router: {clip(value, 60)!r}; reported as null")

    def _read_queue(self, w: WanPoll, deadline: float) -> tuple[float | None, float | None, float | None, float | None]:
        """(time of the read, drops/s, queue depth %, queue delay ms); nulls when not readable."""
        wan = w.wan
        try:
            rows = self.link.run("/queue/tree/print",
                                 "=.proplist=.id,name,dropped,queued-packets,queued-bytes,max-limit",
                                 f"?=name={wan.queue}", deadline=deadline)
        except RouterTrap as error:
            self._counters["router_errors"] += 1
            w.trapped = True
            self._note(w, "queue", f"/queue/tree/print for queue {wan.queue!r} refused: {error}")
            w.last = None
            return None, None, None, None
        t = self.clock()
        mine = [row for row in rows if row.get("name") == wan.queue]
        if len(mine) != len(rows):
            self._counters["foreign_rows"] += len(rows) - len(mine)
        if not mine:
            self._counters["missing_queue"] += 1
            self._note(w, "queue", f"no queue named {wan.queue!r} in /queue/tree (wans[].queue); "
                                   "drops_per_sec and queue_depth_pct are null until it exists")
            w.last = None
            return t, None, None, None
        row = mine[0]
        dropped = counter_value(row.get("dropped"))
        queued = counter_value(row.get("queued-packets"))
        if dropped is None or queued is None:
            self._note(w, "queue", f"queue {wan.queue!r} has no readable dropped/queued-packets: "
                                   f"{clip(row, 200)}")
            if "dropped" in row and dropped is None:
                self._implausible(w, "dropped", row.get("dropped"))
            if "queued-packets" in row and queued is None:
                self._implausible(w, "queued-packets", row.get("queued-packets"))
            w.last = None
            return t, None, None, None
        self._note(w, "queue", None)
        read = CounterRead(self.link.generation, clip(row.get(".id", ""), 40), dropped, t)
        prev, w.last = w.last, read
        drops = None
        if prev is not None and prev.generation == read.generation and prev.queue_id == read.queue_id:
            if dropped < prev.dropped:
                self._counters["counter_resets"] += 1
                log.info("%s: dropped counter of %r went back from %d to %d: counter reset, rate null",
                         wan.name, wan.queue, prev.dropped, dropped)
            elif t > prev.t:
                drops = (dropped - prev.dropped) / (t - prev.t)
        delay = None
        queued_bytes = counter_value(row.get("queued-bytes"))
        rate = rate_value(row.get("max-limit")) or (wan.rate_mbps * 1e6 if wan.rate_mbps else None)
        if queued_bytes is not None and rate is not None:
            delay = queued_bytes * 8 / rate * 1000.0
            if not math.isfinite(delay) or delay > MAX_RTT_MS:
                self._implausible(w, "queued-bytes", queued_bytes)
                delay = None
        return t, drops, 100.0 * queued / wan.queue_capacity_packets, delay

    def _probe(self, polled: list[WanPoll], fields: dict[str, dict], deadline: float) -> None:
        """RTT, rtt_status and loss_pct of every polled WAN the router answered for."""
        live = [w for w in polled if fields[w.wan.name].get("rtt_status") != "unavailable"]
        if self.cfg.collector.rtt_probe == "local":
            for w in polled:
                fields[w.wan.name].pop("rtt_status", None)
                fields[w.wan.name].update(self._local_ping(w, deadline))
            return
        if not live:
            return
        commands, owners = [], []
        left = max(0.0, deadline - self.clock())
        base = time.monotonic()
        for w in live:
            wan = w.wan
            soft = base + min(left, wan.ping_count * wan.ping_interval_s + 0.05)
            for target in w.targets:
                words = ["/ping", f"=address={target}", f"=count={wan.ping_count}",
                         f"=interval={wan.ping_interval_s:g}"]
                if wan.ping_routing_table:
                    words.append(f"=routing-table={wan.ping_routing_table}")
                if wan.ping_interface:
                    words.append(f"=interface={wan.ping_interface}")
                commands.append(Command(words, soft_deadline=soft))
                owners.append((w, target))
        timeout = self.link.timeout + max(w.wan.ping_count * w.wan.ping_interval_s for w in live)
        try:
            replies = self.link.run_many(commands, timeout=timeout, deadline=self.clock() + left + 0.5)
        except LinkStopped:
            raise
        except RouterUnreachable as error:
            self._counters["router_errors"] += 1
            for w in live:
                fields[w.wan.name]["rtt_status"] = "unavailable"
                self._note(w, "router", f"router unreachable: {error}; samples carry nulls until it is back")
            return
        per_wan: dict[str, list] = {}
        for (w, target), reply in zip(owners, replies):
            per_wan.setdefault(w.wan.name, []).append((target, reply))
        for w in live:
            fields[w.wan.name].update(self._combine(w, per_wan[w.wan.name]))

    def _combine(self, w: WanPoll, replies: list) -> dict:
        """One WAN's probe outcome from its targets' replies."""
        wan = w.wan
        need = wan.min_targets_lost or len(w.targets)
        results: list[list[float | None]] = []
        refused = []
        for target, reply in replies:
            if reply.trap is not None:
                refused.append(f"/ping {target} refused: {reply.trap}")
                results.append([None] * wan.ping_count)
                continue
            if reply.cut:
                self._counters["probes_cut"] += 1
            probes: list[float | None] = [None] * wan.ping_count
            for i, row in enumerate(reply.rows[:wan.ping_count]):
                if "time" in row and row.get("status") != "timeout":
                    try:
                        rtt = round(parse_duration(row["time"]) * 1000.0, 3)  # whole microseconds
                    except ValueError:
                        self._implausible(w, "/ping time", row["time"])
                        continue
                    if rtt > MAX_RTT_MS:
                        self._implausible(w, "/ping time", row["time"])
                        continue
                    probes[i] = rtt
            results.append(probes)
        if refused:
            w.trapped = True
        if len(refused) == len(replies):
            self._counters["router_errors"] += 1
            self._note(w, "ping", "; ".join(refused))
            return {"rtt_status": "unavailable"}
        lost = sum(1 for i in range(wan.ping_count) if sum(1 for r in results if r[i] is None) >= need)
        loss_pct = 100.0 * lost / wan.ping_count if wan.ping_count > 1 else None
        answered = [_median([x for x in r if x is not None]) for r in results if any(x is not None for x in r)]
        if lost == wan.ping_count or not answered:
            self._counters["ping_lost"] += 1
            return {"rtt_status": "lost", "loss_pct": loss_pct if wan.ping_count > 1 else None}
        self._note(w, "ping", None)
        return {"rtt_ms": _median(answered), "rtt_status": "ok", "loss_pct": loss_pct}

    def _local_ping(self, w: WanPoll, deadline: float) -> dict:
        wan = w.wan
        results = []
        try:
            for target in w.targets:
                if target not in w.probes:
                    w.probes[target] = IcmpProbe(target, resolve_timeout=min(1.0, wan.interval_s))
            per_probe = min(wan.ping_interval_s, max(0.01, (deadline - self.clock()) / wan.ping_count))
            for _ in range(wan.ping_count):
                results.append([w.probes[t].rtt_ms(per_probe) for t in w.targets])
        except OSError as error:
            self._note(w, "ping", f"local ICMP probe failed: {error}")
            return {"rtt_status": "unavailable"}
        need = wan.min_targets_lost or len(w.targets)
        lost = sum(1 for probe in results if sum(1 for x in probe if x is None) >= need)
        loss_pct = 100.0 * lost / wan.ping_count if wan.ping_count > 1 else None
        self._note(w, "ping", None)
        per_target = [[probe[i] for probe in results if probe[i] is not None] for i in range(len(w.targets))]
        answered = [_median(r) for r in per_target if r]
        if lost == wan.ping_count or not answered:
            self._counters["ping_lost"] += 1
            return {"rtt_status": "lost", "loss_pct": loss_pct}
        return {"rtt_ms": _median(answered), "rtt_status": "ok", "loss_pct": loss_pct}

    def _read_rule(self, w: WanPoll, deadline: float) -> bool | None:
        wan = w.wan
        try:
            rows = self.link.run("/ip/firewall/mangle/print", "=.proplist=.id,comment,disabled",
                                 f"?=comment={wan.rule_comment}", deadline=deadline)
        except RouterTrap as error:
            w.trapped = True
            self._note(w, "rule", f"/ip/firewall/mangle/print refused: {error}")
            return None
        rows = [row for row in rows if row.get("comment") == wan.rule_comment]
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
