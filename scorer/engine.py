"""The confidence scorer engine (SPEC section 5), sans-I/O.

Samples go in with their own monotonic ``t``; decisions come out.  Nothing here
reads a clock, opens a socket or writes a file, so the scorer process and
``wanctl-replay`` are two thin shells around the same object and a replay of a
recorded trace reproduces the live decisions exactly.

Every comparison of times uses a tolerance of ``TOL`` seconds: with samples
0.05 s apart and ``sustain_s: 2.0`` the decision comes on the 41st sample of
the run, 2.0 s after its first, whatever the floating-point noise in ``t``.
"""

from __future__ import annotations

import math
from collections import deque

import msgspec

from proto.config import Hysteresis as HysteresisConfig
from proto.config import Scorer
from proto.messages import (
    CAKE_STATES,
    DEGRADED,
    DISABLE,
    ENABLE,
    GOOD,
    SCHEMA_VERSION,
    Decision,
    State,
    Telemetry,
)

TOL = 1e-6

CONFIDENCE = "confidence"
HYSTERESIS = "hysteresis"

# Rejection causes of section 5.1, in the order they are checked.
NON_FINITE = "non_finite"
NEGATIVE = "negative_value"
UNKNOWN_STATE = "unknown_state"
BAD_VERSION = "unsupported_version"
OUT_OF_ORDER = "out_of_order"

_KNOWN_STATES = frozenset(CAKE_STATES)
_isfinite = math.isfinite


def rejection_cause(s: Telemetry) -> str | None:
    """Why a sample must be rejected before it touches any state, or None."""
    if s.v != SCHEMA_VERSION:
        return BAD_VERSION
    if not (_isfinite(s.t) and _isfinite(s.wall)):
        return NON_FINITE
    for value in (s.rtt_ms, s.baseline_rtt_ms, s.drops_per_sec, s.queue_depth_pct):
        if value is not None:
            if not _isfinite(value):
                return NON_FINITE
            if value < 0:
                return NEGATIVE
    if s.cake_state is not None and s.cake_state not in _KNOWN_STATES:
        return UNKNOWN_STATE
    if s.wan_zone is not None and s.wan_zone not in _KNOWN_STATES:
        return UNKNOWN_STATE
    return None


def confidence_score(
    cfg: Scorer,
    state: str,
    rtt_delta: float,
    states: deque,
    drops: deque,
    queues: deque,
    wan_zone: str | None,
) -> tuple[int, list[str]]:
    """The Phase 2B score (section 5.4) and its contributors, from scratch.

    ``states``/``drops``/``queues`` are the histories since the last gap with the
    current sample last (only their last 3, 3 and 2 entries matter).
    """
    c = cfg.confidence
    w = c.weights
    score = 0
    why: list[str] = []
    if state == "RED":
        score += w.red_state
        why.append("RED")
    elif state == "SOFT_RED":
        if len(states) >= 3 and states[-2] == "SOFT_RED" and states[-3] == "SOFT_RED":
            score += w.soft_red_sustained
            why.append("SOFT_RED_sustained")
    elif state == "YELLOW":
        score += w.yellow_state
        why.append("YELLOW")
    if rtt_delta > c.rtt_delta_severe_ms:
        score += w.rtt_delta_severe
        why.append(f"rtt_delta={rtt_delta:.1f}ms(severe)")
    elif rtt_delta > c.rtt_delta_high_ms:
        score += w.rtt_delta_high
        why.append(f"rtt_delta={rtt_delta:.1f}ms(high)")
    if len(drops) >= 3:
        last = drops[-1]
        if last > drops[-3] and last > 0:
            score += w.drops_increasing
            why.append("drops_increasing")
    if len(queues) >= 2 and queues[-1] > c.queue_high_pct and queues[-2] > c.queue_high_pct:
        score += w.queue_high_sustained
        why.append("queue_high_sustained")
    if wan_zone == "RED":
        score += w.wan_red
        why.append("WAN_RED")
    elif wan_zone == "SOFT_RED":
        score += w.wan_soft_red
        why.append("WAN_SOFT_RED")
    return (100 if score > 100 else score), why


class Hysteresis(msgspec.Struct):
    """Phase 2A: N consecutive RED samples steer, M consecutive GREEN recover."""

    state: str = GOOD
    count: int = 0
    first_t: float = 0.0

    def count_sample(self, cake_state: str, t: float) -> None:
        """Count a sample that points away from ``state``; anything else resets."""
        if cake_state != ("RED" if self.state == GOOD else "GREEN"):
            self.count = 0
            return
        if self.count == 0:
            self.first_t = t
        self.count += 1

    def due(self, h: HysteresisConfig) -> bool:
        return self.count >= (h.red_samples_required if self.state == GOOD else h.green_samples_required)

    def step(self, cake_state: str, t: float, h: HysteresisConfig) -> float | None:
        """Count this sample; on a state change return its ``sustained_s``."""
        self.count_sample(cake_state, t)
        if not self.due(h):
            return None
        sustained = t - self.first_t
        self.change(DEGRADED if self.state == GOOD else GOOD)
        return sustained

    def change(self, state: str) -> None:
        self.state = state
        self.count = 0


class ConfidencePolicy(msgspec.Struct):
    """Phase 2B timers and flap brake of one WAN (section 5.5).

    Deadlines and run starts are absolute in the samples' ``t``; ``flap`` holds
    toggle times, pruned before each append and capped at ``max_toggles + 1``.
    """

    state: str = GOOD
    degrade_start: float | None = None
    recovery_start: float | None = None
    hold_down_until: float | None = None
    penalty_until: float | None = None
    flap: list[float] = msgspec.field(default_factory=list)

    def penalty_active(self, t: float) -> bool:
        return self.penalty_until is not None and t < self.penalty_until - TOL

    def step(self, cfg: Scorer, t: float, confidence: int, threshold: int, eligible) -> float | None:
        """Run the timers on one sample; on a state change return ``sustained_s``.

        ``eligible`` is a callable so the recovery test is only evaluated where
        section 5.5 evaluates it (after hold-down).
        """
        c = cfg.confidence
        if self.state == GOOD:
            if confidence < threshold:
                self.degrade_start = None
                return None
            if self.degrade_start is None:
                self.degrade_start = t
            if t - self.degrade_start >= c.sustain_s - TOL:
                sustained = t - self.degrade_start
                self.enter(cfg, DEGRADED, t)
                return sustained
            return None
        if self.hold_down_until is not None and t < self.hold_down_until - TOL:
            return None
        if not eligible():
            self.recovery_start = None
            return None
        if self.recovery_start is None:
            self.recovery_start = t
        if t - self.recovery_start >= c.recovery_sustain_s - TOL:
            sustained = t - self.recovery_start
            self.enter(cfg, GOOD, t)
            return sustained
        return None

    def enter(self, cfg: Scorer, state: str, t: float) -> None:
        """Take a decision made at ``t`` (by this policy or by the fallback)."""
        self.state = state
        self.degrade_start = None
        self.recovery_start = None
        if state == DEGRADED:
            self.hold_down_until = t + cfg.confidence.hold_down_s
        if cfg.flap.enabled:
            self.record_toggle(cfg, t)

    def record_toggle(self, cfg: Scorer, t: float) -> None:
        f = cfg.flap
        flap = self.flap
        cutoff = t - f.window_s + TOL
        drop = 0
        while drop < len(flap) and flap[drop] <= cutoff:
            drop += 1
        if drop:
            del flap[:drop]
        flap.append(t)
        if len(flap) > f.max_toggles + 1:
            del flap[: len(flap) - f.max_toggles - 1]
        if len(flap) > f.max_toggles and not self.penalty_active(t):
            self.penalty_until = t + f.penalty_s
            flap.clear()

    def shift(self, by: float) -> None:
        """Move every absolute time onto a new clock (a new ``stream``)."""
        if self.hold_down_until is not None:
            self.hold_down_until += by
        if self.penalty_until is not None:
            self.penalty_until += by
        self.flap = [x + by for x in self.flap]


class WanScorer(msgspec.Struct):
    """Everything the engine keeps for one WAN; also its persisted form."""

    wan: str
    stream: str | None = None
    last_t: float | None = None  # last accepted sample (ordering, stream shifts)
    last_scored_t: float | None = None  # last scored sample (gap detection)
    ewma: float | None = None
    states: list[str] = msgspec.field(default_factory=list)
    drops: list[float] = msgspec.field(default_factory=list)
    queues: list[float] = msgspec.field(default_factory=list)
    confidence_policy: ConfidencePolicy = msgspec.field(default_factory=ConfidencePolicy)
    hysteresis_policy: Hysteresis = msgspec.field(default_factory=Hysteresis)
    fallback: Hysteresis = msgspec.field(default_factory=Hysteresis)
    decision_seq: int = 0  # last decision that set the driving state
    confidence: int = 0
    threshold: int = 0
    flap_penalty: bool = False
    contributors: list[str] = msgspec.field(default_factory=list)

    def clear_runs(self) -> None:
        """Section 5.2: a gap (or a new stream) breaks every sustained run."""
        self.ewma = None
        self.states.clear()
        self.drops.clear()
        self.queues.clear()
        self.confidence_policy.degrade_start = None
        self.confidence_policy.recovery_start = None
        self.hysteresis_policy.count = 0
        self.fallback.count = 0


class Snapshot(msgspec.Struct):
    """The engine's persisted state (section 5.7)."""

    next_seq: int
    wans: list[WanScorer]
    rejected: dict[str, int] = {}
    counters: dict[str, int] = {}


class Engine:
    """Section 5 over any number of WANs, in arrival order."""

    def __init__(self, cfg: Scorer, *, epoch: int = 0, next_seq: int = 1, source: str = "scorer"):
        self.cfg = cfg
        self.epoch = epoch
        self.source = source
        self.next_seq = next_seq
        self.wans: dict[str, WanScorer] = {}
        self.last_rejection: str | None = None
        self.rejected: dict[str, int] = {}
        self.counters: dict[str, int] = {
            "accepted": 0,
            "scored": 0,
            "ignored_null_rtt": 0,
            "gaps": 0,
            "stream_changes": 0,
            "fallbacks": 0,
            "confidence_errors": 0,
            "decisions": 0,
        }
        self.confidence_running = cfg.policy == CONFIDENCE or cfg.shadow
        self.hysteresis_running = cfg.policy == HYSTERESIS or cfg.shadow

    # --- the one entry point ------------------------------------------------

    def process(self, s: Telemetry) -> list[Decision]:
        """Score one sample; return the decisions it causes (driving first)."""
        cause = rejection_cause(s)
        w = self.wans.get(s.wan)
        if cause is None and w is not None and s.stream == w.stream and s.t - w.last_t <= TOL:
            cause = OUT_OF_ORDER
        self.last_rejection = cause
        if cause is not None:
            self.rejected[cause] = self.rejected.get(cause, 0) + 1
            return []
        counters = self.counters
        counters["accepted"] += 1
        t = s.t
        if w is None:
            w = self.wans[s.wan] = WanScorer(wan=s.wan, stream=s.stream, last_t=t)
            w.threshold = self.cfg.confidence.steer_threshold
        elif s.stream != w.stream:
            # A new clock: keep the time each deadline had left at the old stream's
            # last sample, and treat the change as a gap.
            counters["stream_changes"] += 1
            w.confidence_policy.shift(t - w.last_t)
            w.clear_runs()
            w.stream = s.stream
            w.last_scored_t = None
        w.last_t = t
        rtt, base = s.rtt_ms, s.baseline_rtt_ms
        if rtt is None or base is None:
            counters["ignored_null_rtt"] += 1
            return []
        counters["scored"] += 1
        if w.last_scored_t is not None and t - w.last_scored_t > self.cfg.max_gap_s + TOL:
            counters["gaps"] += 1
            w.clear_runs()
        w.last_scored_t = t
        return self._score(w, s, rtt - base if rtt > base else 0.0)

    # --- scoring ------------------------------------------------------------

    def _assess(self, w: WanScorer, s: Telemetry, rtt_delta: float) -> tuple[str, float, float]:
        """Section 5.3: update the EWMA and histories; return (state, drops, queue)."""
        a = self.cfg.assess
        ewma = rtt_delta if w.ewma is None else w.ewma + a.rtt_ewma_alpha * (rtt_delta - w.ewma)
        w.ewma = ewma
        drops = s.drops_per_sec or 0.0
        queue = s.queue_depth_pct or 0.0
        state = s.cake_state
        if state is None:
            if ewma > a.red_rtt_ms and drops >= a.min_drops_red and queue >= a.min_queue_red_pct:
                state = "RED"
            elif ewma > a.soft_red_rtt_ms:
                state = "SOFT_RED"
            elif ewma > a.yellow_rtt_ms or queue >= a.min_queue_yellow_pct:
                state = "YELLOW"
            else:
                state = "GREEN"
        for history, value, keep in ((w.states, state, 3), (w.drops, drops, 3), (w.queues, queue, 2)):
            history.append(value)
            if len(history) > keep:
                del history[0]
        return state, drops, queue

    def _score(self, w: WanScorer, s: Telemetry, rtt_delta: float) -> list[Decision]:
        cfg = self.cfg
        t = s.t
        state, drops, _ = self._assess(w, s, rtt_delta)
        cp = w.confidence_policy
        if self.confidence_running:
            penalty = cfg.flap.enabled and cp.penalty_active(t)
            threshold = cfg.confidence.steer_threshold + (cfg.flap.penalty_threshold_add if penalty else 0)
        else:
            penalty, threshold = False, cfg.confidence.steer_threshold
        h = cfg.hysteresis
        decisions: list[Decision] = []
        driving_confidence = cfg.policy == CONFIDENCE
        if driving_confidence:
            # Phase 2A counters kept against the driving state, for the fallback.
            fb = w.fallback
            if fb.state != cp.state:
                fb.change(cp.state)
            fb.count_sample(state, t)

        confidence, contributors = 0, []
        try:
            confidence, contributors = confidence_score(
                cfg, state, rtt_delta, w.states, w.drops, w.queues, s.wan_zone
            )
            if self.confidence_running:
                sustained = cp.step(
                    cfg, t, confidence, threshold,
                    lambda: self._recovery_eligible(state, confidence, rtt_delta, drops, s.wan_zone),
                )
                if sustained is not None:
                    decisions.append(
                        self._decision(w, s, CONFIDENCE, driving_confidence, False, cp.state,
                                       confidence, threshold, penalty, contributors, sustained)
                    )
        except Exception:
            self.counters["confidence_errors"] += 1
            if driving_confidence:
                # Phase 2A decides for the driving policy on this sample.
                self.counters["fallbacks"] += 1
                fb = w.fallback
                if fb.due(h):
                    sustained = t - fb.first_t
                    cp.enter(cfg, DEGRADED if fb.state == GOOD else GOOD, t)
                    fb.change(cp.state)
                    decisions.append(
                        self._decision(w, s, HYSTERESIS, True, True, cp.state, confidence,
                                       threshold, penalty, contributors, sustained)
                    )

        if self.hysteresis_running:
            hp = w.hysteresis_policy
            sustained = hp.step(state, t, h)
            if sustained is not None:
                decisions.append(
                    self._decision(w, s, HYSTERESIS, cfg.policy == HYSTERESIS, False, hp.state,
                                   confidence, threshold, penalty, contributors, sustained)
                )

        w.confidence, w.threshold, w.flap_penalty, w.contributors = confidence, threshold, penalty, contributors
        return decisions

    def _recovery_eligible(
        self, state: str, confidence: int, rtt_delta: float, drops: float, wan_zone: str | None
    ) -> bool:
        r = self.cfg.recovery
        return (
            confidence <= self.cfg.confidence.recovery_threshold
            and state in r.allowed_states
            and rtt_delta < r.max_rtt_delta_ms
            and drops < r.max_drops_per_sec
            and (wan_zone is None or wan_zone == "GREEN")
        )

    def _decision(
        self, w: WanScorer, s: Telemetry, policy: str, driving: bool, fallback: bool, state: str,
        confidence: int, threshold: int, penalty: bool, contributors: list[str], sustained: float,
    ) -> Decision:
        seq = self.next_seq
        self.next_seq = seq + 1
        self.counters["decisions"] += 1
        if driving:
            w.decision_seq = seq
        return Decision(
            seq=seq, wan=s.wan, t=s.t, wall=s.wall, telemetry_seq=s.seq, policy=policy,
            driving=driving, fallback=fallback,
            decision=ENABLE if state == DEGRADED else DISABLE, state=state,
            confidence=confidence, threshold=threshold, flap_penalty=penalty,
            contributors=list(contributors), sustained_s=sustained,
            source=self.source, epoch=self.epoch,
        )

    # --- what the process publishes and persists ----------------------------

    def desired(self, wan: str) -> str:
        w = self.wans[wan]
        if self.cfg.policy == CONFIDENCE:
            return w.confidence_policy.state
        return w.hysteresis_policy.state

    def states(self, seq: int = 0) -> list[State]:
        """The desired state of every known WAN, timers as seconds left at its last sample."""
        out = []
        c = self.cfg.confidence
        for name, w in self.wans.items():
            cp = w.confidence_policy
            t = w.last_t

            def left(deadline):
                return None if deadline is None or t >= deadline else deadline - t

            in_degraded = cp.state == DEGRADED
            out.append(State(
                wan=name, seq=seq, desired=self.desired(name), decision_seq=w.decision_seq,
                confidence=w.confidence, threshold=w.threshold, flap_penalty=w.flap_penalty,
                degrade_remaining_s=None if cp.degrade_start is None else max(0.0, cp.degrade_start + c.sustain_s - t),
                hold_down_remaining_s=left(cp.hold_down_until) if in_degraded else None,
                recovery_remaining_s=None if cp.recovery_start is None
                else max(0.0, cp.recovery_start + c.recovery_sustain_s - t),
                flap_penalty_remaining_s=left(cp.penalty_until),
                policy=self.cfg.policy, t=t, source=self.source, epoch=self.epoch,
            ))
        return out

    def export(self) -> bytes:
        """A msgpack snapshot of the whole engine.

        Times are stored as they are, together with each WAN's ``stream`` and
        last ``t``: a deadline's remaining duration is ``deadline - last_t``, and
        ``process`` shifts it onto a new clock if the next sample's stream differs.
        """
        return msgspec.msgpack.encode(
            Snapshot(next_seq=self.next_seq, wans=list(self.wans.values()),
                     rejected=self.rejected, counters=self.counters)
        )

    @classmethod
    def restore(cls, cfg: Scorer, data: bytes, *, epoch: int = 0, source: str = "scorer") -> "Engine":
        snap = msgspec.msgpack.decode(data, type=Snapshot)
        engine = cls(cfg, epoch=epoch, next_seq=snap.next_seq, source=source)
        engine.wans = {w.wan: w for w in snap.wans}
        engine.rejected = dict(snap.rejected)
        engine.counters.update(snap.counters)
        return engine
