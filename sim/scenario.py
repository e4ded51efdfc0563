"""Scenarios: what the simulated router's WANs go through, as a timeline.

A scenario file is YAML::

    description: one line a person reads in the sim's banner
    loop: true            # replay the timeline every period_s; false: play once, then stay idle
    period_s: 120         # one pass (default: 10 s after the last episode or event ends)
    seed: 1               # jitter, loss and drop noise are drawn from this seed
    routeros_version: 7.18.2   # >= 7.18 answers an empty print with !empty before !done
    wans:
      - name: wan1
        queue: cake-wan1          # the CAKE entry in /queue/tree (queue type kind=cake)
        interface: ether1         # the queue's parent; /ping interface=ether1 pings over this WAN
        routing_table: main       # /ping routing-table=main pings over this WAN
        ping_target: 1.1.1.1      # /ping address=1.1.1.1 (unpinned) picks this WAN
        rule_comment: wanctl-steer-wan1   # a mangle rule with this comment exists
        rule_disabled: true       # its saved (boot) state
        base_rtt_ms: 12           # idle path RTT
        jitter_ms: 0.5            # idle RTT jitter (standard deviation)
        loss_pct: 0               # idle probe loss
        rate_pps: 1500            # offered packets per second through the queue
        packet_bytes: 900
        queued_packets: 2         # idle standing queue
        drop_noise_pct: 20        # +-% noise on the drop rate (0: exact)
        episodes:                 # congestion, added on top of the idle values
          - start_s: 15
            duration_s: 20
            ramp_s: 2             # linear ramp in and out inside the duration
            added_rtt_ms: 140
            drops_per_sec: 25
            queued_packets: 650
            jitter_ms: 8
            loss_pct: 1
    events:                       # router faults on the same timeline
      - {at_s: 100, fault: counter_reset}
      - {at_s: 200, fault: reboot, duration_s: 5}   # API down 5 s, new ids, counters zeroed
      - {at_s: 300, fault: outage, duration_s: 10}  # API refuses connections, sessions dropped
      - {at_s: 400, fault: stall, duration_s: 4}    # API stops answering
      - {at_s: 500, fault: close_mid_reply}         # the next reply is cut and the socket closed
      - {at_s: 600, fault: fatal}                   # !fatal to every session, then close
      - {at_s: 700, fault: refuse_login, duration_s: 5}
      - {at_s: 800, fault: hostile_slow_endless, duration_s: 5}  # hostile_<mode>: see sim.server

Everything the simulator reports is derived from this one description, so the
counters, the queue depth and the ping replies of a WAN always agree.
"""

from __future__ import annotations

import math
import random
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

NonNeg = Annotated[float, msgspec.Meta(ge=0)]
Pct = Annotated[float, msgspec.Meta(ge=0, le=100)]

FAULTS = ("counter_reset", "reboot", "outage", "stall", "close_mid_reply", "fatal", "refuse_login",
          "hostile_empty_sentence", "hostile_bare_fatal_login", "hostile_trap_numeric", "hostile_trap_extra",
          "hostile_trap_set", "hostile_slow_endless", "hostile_fast_endless", "hostile_huge_attribute",
          "hostile_ping_digits", "hostile_negative_queue", "hostile_huge_counter", "hostile_foreign_row")


class Episode(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    start_s: NonNeg
    duration_s: Annotated[float, msgspec.Meta(gt=0)]
    ramp_s: NonNeg = 1.0
    added_rtt_ms: NonNeg = 0.0
    drops_per_sec: NonNeg = 0.0
    queued_packets: NonNeg = 0.0
    jitter_ms: NonNeg = 0.0
    loss_pct: Pct = 0.0

    def level(self, t: float) -> float:
        """0..1: how much of this episode is in effect at scenario time ``t``."""
        into = t - self.start_s
        if into < 0 or into > self.duration_s:
            return 0.0
        ramp = min(self.ramp_s, self.duration_s / 2)
        if ramp <= 0:
            return 1.0
        return max(0.0, min(1.0, into / ramp, (self.duration_s - into) / ramp))


class WanScenario(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    queue: str
    interface: str = "ether1"
    routing_table: str = "main"
    ping_target: str = "1.1.1.1"
    rule_comment: str = ""
    rule_disabled: bool = True
    base_rtt_ms: NonNeg = 10.0
    jitter_ms: NonNeg = 0.0
    loss_pct: Pct = 0.0
    rate_pps: NonNeg = 1000.0
    packet_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1000
    queued_packets: NonNeg = 0.0
    drop_noise_pct: Pct = 0.0
    max_limit: str = "100M"
    episodes: list[Episode] = []


class Event(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    at_s: NonNeg
    fault: Literal["counter_reset", "reboot", "outage", "stall", "close_mid_reply", "fatal", "refuse_login",
                   "hostile_empty_sentence", "hostile_bare_fatal_login", "hostile_trap_numeric", "hostile_trap_extra",
                   "hostile_trap_set", "hostile_slow_endless", "hostile_fast_endless", "hostile_huge_attribute",
                   "hostile_ping_digits", "hostile_negative_queue", "hostile_huge_counter", "hostile_foreign_row"]
    duration_s: NonNeg = 0.0
    wan: str | None = None  # counter_reset: only this WAN's queue


class Scenario(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: str = ""
    loop: bool = True
    period_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    seed: int = 0
    routeros_version: str = "7.18.2"
    wans: list[WanScenario] = []
    events: list[Event] = []

    @property
    def period(self) -> float:
        if self.period_s is not None:
            return self.period_s
        ends = [e.start_s + e.duration_s for w in self.wans for e in w.episodes]
        ends += [e.at_s + e.duration_s for e in self.events]
        return max(ends, default=0.0) + 10.0

    def scenario_time(self, elapsed: float) -> float:
        """Position in the timeline after ``elapsed`` seconds of play."""
        if self.loop:
            return elapsed % self.period
        return elapsed

    @property
    def empty_reply(self) -> bool:
        """Whether this RouterOS version sends ``!empty`` for an empty print (7.18 and later)."""
        parts = [int(p) for p in self.routeros_version.split(".")[:2] if p.isdigit()]
        major, minor = (parts + [0, 0])[:2]
        return (major, minor) >= (7, 18)


class ScenarioError(Exception):
    pass


def parse_scenario(raw: object, origin: str = "scenario") -> Scenario:
    try:
        scenario = msgspec.convert(raw if raw is not None else {}, Scenario)
    except msgspec.ValidationError as error:
        raise ScenarioError(f"{origin}: {error}") from None
    names = [w.name for w in scenario.wans]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{origin}: wans: names must be unique, got {names}")
    queues = [w.queue for w in scenario.wans]
    if len(set(queues)) != len(queues):
        raise ScenarioError(f"{origin}: wans: queue names must be unique, got {queues}")
    for event in scenario.events:
        if event.wan is not None and event.wan not in names:
            raise ScenarioError(f"{origin}: events: unknown wan {event.wan!r}, the scenario has {names}")
    return scenario


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Read a scenario file; ``None`` gives the shipped default scenario."""
    if path is None:
        text = resources.files("sim").joinpath("scenarios/default.yaml").read_text()
        origin = "default scenario"
    else:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ScenarioError(f"{path}: cannot read scenario: {error.strerror}") from None
        origin = str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ScenarioError(f"{origin}: not valid YAML: {error}") from None
    return parse_scenario(raw, origin)


def shipped_scenarios() -> dict[str, Path]:
    """Name -> path of every scenario shipped in ``sim/scenarios``."""
    folder = Path(str(resources.files("sim").joinpath("scenarios")))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def quiet_scenario(*names: str, **wan_overrides) -> Scenario:
    """A scenario for tests: the given WANs, idle, no noise, no events, played once.

    Queue ``cake-<name>``, rule comment ``wanctl-steer-<name>``, interface
    ``ether<i>``, routing table ``to-<name>``; keyword arguments override WAN fields.
    """
    wans = []
    for i, name in enumerate(names or ("wan1",), start=1):
        fields = dict(name=name, queue=f"cake-{name}", interface=f"ether{i}", routing_table=f"to-{name}",
                      ping_target=f"192.0.2.{i}", rule_comment=f"wanctl-steer-{name}", base_rtt_ms=10.0 * i,
                      rate_pps=1000.0, packet_bytes=1000)
        fields.update(wan_overrides)
        wans.append(fields)
    return parse_scenario({"loop": False, "wans": wans}, "quiet scenario")


# --- the traffic a WAN carries at a moment ------------------------------------


class Conditions(msgspec.Struct, kw_only=True):
    """What a WAN looks like at one instant (idle values plus active episodes)."""

    rtt_ms: float
    jitter_ms: float
    loss_pct: float
    drops_per_sec: float
    queued_packets: float
    rate_pps: float


def conditions(wan: WanScenario, t: float, override: dict | None = None) -> Conditions:
    """The WAN's conditions at scenario time ``t``; ``override`` (from a test) adds on top."""
    rtt, jitter, loss = wan.base_rtt_ms, wan.jitter_ms, wan.loss_pct
    drops, queued = 0.0, wan.queued_packets
    for episode in wan.episodes:
        k = episode.level(t)
        if k:
            rtt += k * episode.added_rtt_ms
            jitter += k * episode.jitter_ms
            loss += k * episode.loss_pct
            drops += k * episode.drops_per_sec
            queued += k * episode.queued_packets
    rate = wan.rate_pps
    if override:
        rtt += override.get("added_rtt_ms", 0.0)
        jitter += override.get("jitter_ms", 0.0)
        loss += override.get("loss_pct", 0.0)
        drops += override.get("drops_per_sec", 0.0)
        queued += override.get("queued_packets", 0.0)
        rate = override.get("rate_pps", rate)
    return Conditions(rtt_ms=rtt, jitter_ms=jitter, loss_pct=min(100.0, loss), drops_per_sec=drops,
                      queued_packets=queued, rate_pps=rate)


class Traffic:
    """Cumulative counters of one queue, integrated from the scenario over time.

    ``advance(elapsed)`` integrates the rates up to ``elapsed`` seconds of play
    in steps of at most ``STEP`` seconds, so a counter read at any moment is
    consistent with the drop rate and packet rate the timeline describes.
    """

    STEP = 0.05

    def __init__(self, wan: WanScenario, scenario: Scenario, rng: random.Random):
        self.wan = wan
        self.scenario = scenario
        self.rng = rng
        self.override: dict | None = None
        self.packets = 0.0
        self.bytes = 0.0
        self.dropped = 0.0
        self.elapsed = 0.0  # play time the counters are integrated up to

    def reset(self) -> None:
        self.packets = self.bytes = self.dropped = 0.0

    def now(self, elapsed: float) -> Conditions:
        return conditions(self.wan, self.scenario.scenario_time(elapsed), self.override)

    def advance(self, elapsed: float) -> None:
        while self.elapsed < elapsed:
            dt = min(self.STEP, elapsed - self.elapsed)
            c = self.now(self.elapsed + dt / 2)
            noise = self.wan.drop_noise_pct / 100.0
            drops = c.drops_per_sec * (1.0 + noise * (2 * self.rng.random() - 1)) if noise else c.drops_per_sec
            self.packets += c.rate_pps * dt
            self.bytes += c.rate_pps * dt * self.wan.packet_bytes
            self.dropped += max(0.0, drops) * dt
            self.elapsed += dt

    def probe(self, elapsed: float) -> float | None:
        """One ping probe sent now: its RTT in ms, or None when it is lost."""
        c = self.now(elapsed)
        if c.loss_pct > 0 and self.rng.random() * 100 < c.loss_pct:
            return None
        rtt = c.rtt_ms + (self.rng.gauss(0.0, c.jitter_ms) if c.jitter_ms else 0.0)
        return max(0.05, rtt)

    def queued(self, elapsed: float) -> int:
        return max(0, int(math.floor(self.now(elapsed).queued_packets)))
