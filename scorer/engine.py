"""The scorer engine (SPEC section 5 and docs/scoring.md), sans-I/O.

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
from bisect import bisect_right as _bisect_right

import msgspec

from proto.config import POLICIES, Scorer, Wan
from proto.messages import (
    CAKE_STATES,
    DEGRADED,
    DISABLE,
    ENABLE,
    GOOD,
    SCHEMA_VERSION,
    Decision,
    State,
    RTT_STATUSES,
    Telemetry,
)
from scorer import flap as _flap
from scorer import quality as _quality
from scorer.quality import BAD as _BAD, GOOD_SAMPLE as _GOOD_SAMPLE, QUALITY, SEVERE as _SEVERE
from scorer.quality import QualityState, WanSummary

TOL = 1e-6

CONFIDENCE = "confidence"
HYSTERESIS = "hysteresis"

# Rejection causes of section 5.1, in the order they are checked.
BAD_VERSION = "unsupported_version"
NON_FINITE = "non_finite"
NEGATIVE = "negative_value"
UNKNOWN_STATE = "unknown_state"
OUT_OF_ORDER = "out_of_order"
# Edge checks beyond section 5.1 (docs/scoring.md, section 1), checked after it.
BAD_WAN_NAME = "bad_wan_name"  # empty, longer than MAX_WAN_NAME, or characters outside [A-Za-z0-9_.-]
UNKNOWN_WAN = "unknown_wan"  # a `wans` list is configured and does not name it
TOO_MANY_WANS = "too_many_wans"  # no `wans` list, and max_wans WANs are kept already
IMPLAUSIBLE_T = "implausible_t"  # t jumps more than max_t_jump_s ahead of its stream's last t
MAX_WAN_NAME = 64

# What happened to a sample (``Outcome.status``).
SCORED = "scored"
IGNORED = "ignored"  # accepted, but null RTT or baseline: 2B/2A do not score it (the quality policy sees it)
REJECTED = "rejected"

_KNOWN_STATES = frozenset(CAKE_STATES)
_KNOWN_RTT_STATUSES = frozenset(RTT_STATUSES)
_isfinite = math.isfinite
_INF = math.inf
_NEG_INF = -math.inf
_NONE: tuple = ()


class Outcome:
    """What ``Engine.process`` made of one sample: its decisions (driving first,
    without the envelope: the shell stamps ``source`` and ``epoch``), and
    whether the sample was scored, ignored or rejected (with its cause)."""

    __slots__ = ("decisions", "status", "cause")

    def __init__(self, decisions, status: str, cause: str | None = None):
        self.decisions = decisions
        self.status = status
        self.cause = cause

    def __repr__(self) -> str:
        return f"Outcome({self.status}, cause={self.cause}, decisions={len(self.decisions)})"


_SCORED_NONE = Outcome(_NONE, SCORED)
_IGNORED_NONE = Outcome(_NONE, IGNORED)
_REJECTED = {c: Outcome(_NONE, REJECTED, c) for c in (BAD_VERSION, NON_FINITE, NEGATIVE, UNKNOWN_STATE, OUT_OF_ORDER,
                                                      BAD_WAN_NAME, UNKNOWN_WAN, TOO_MANY_WANS, IMPLAUSIBLE_T)}
_WAN_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_NO_CONTRIBUTORS: list[str] = []
# Histories are trimmed back to 3 entries whenever they grow past this.
_HISTORY_MAX = 16
# The cake state Phase 2A counts in each steering state.
_TOWARD = {GOOD: "RED", DEGRADED: "GREEN"}


def rejection_cause(s: Telemetry) -> str | None:
    """Why a sample must be rejected before it touches any state, or None."""
    if s.v != SCHEMA_VERSION:
        return BAD_VERSION
    if not (_isfinite(s.t) and _isfinite(s.wall)):
        return NON_FINITE
    for value in (s.rtt_ms, s.baseline_rtt_ms, s.drops_per_sec, s.queue_depth_pct, s.queue_delay_ms, s.loss_pct):
        if value is not None:
            if not _isfinite(value):
                return NON_FINITE
            if value < 0:
                return NEGATIVE
    if s.cake_state is not None and s.cake_state not in _KNOWN_STATES:
        return UNKNOWN_STATE
    if s.wan_zone is not None and s.wan_zone not in _KNOWN_STATES:
        return UNKNOWN_STATE
    if s.rtt_status is not None and s.rtt_status not in _KNOWN_RTT_STATUSES:
        return UNKNOWN_STATE
    return None


def wan_name_ok(name: str) -> bool:
    """A WAN name the engine may keep: 1 to ``MAX_WAN_NAME`` of ``[A-Za-z0-9_.-]``."""
    return 0 < len(name) <= MAX_WAN_NAME and _WAN_NAME_CHARS.issuperset(name)


class Params:
    """The scorer config flattened into plain attributes for the per-sample path.

    Slots: an object with 30 or more attributes in its ``__dict__`` no longer
    shares its keys, and every attribute read costs a dict lookup."""

    __slots__ = (
        "cfg", "alpha", "yellow_rtt", "soft_red_rtt", "red_rtt", "min_drops_red", "min_queue_yellow",
        "min_queue_red", "steer", "recovery_threshold", "sustain", "recovery_sustain", "hold_down",
        "delta_high", "delta_severe", "queue_high", "w_red", "w_soft_red", "w_yellow", "w_high", "w_severe",
        "w_drops", "w_queue", "w_wan_red", "w_wan_soft_red", "allowed", "max_recovery_delta",
        "max_recovery_drops", "flap", "window", "max_toggles", "penalty_s", "penalty_add", "red_required",
        "green_required", "max_gap",
    )

    def __init__(self, cfg: Scorer):
        a, c, w, r, f, h = cfg.assess, cfg.confidence, cfg.confidence.weights, cfg.recovery, cfg.flap, cfg.hysteresis
        self.cfg = cfg
        self.alpha = a.rtt_ewma_alpha
        self.yellow_rtt, self.soft_red_rtt, self.red_rtt = a.yellow_rtt_ms, a.soft_red_rtt_ms, a.red_rtt_ms
        self.min_drops_red = a.min_drops_red
        self.min_queue_yellow, self.min_queue_red = a.min_queue_yellow_pct, a.min_queue_red_pct
        self.steer, self.recovery_threshold = c.steer_threshold, c.recovery_threshold
        self.sustain, self.recovery_sustain, self.hold_down = c.sustain_s, c.recovery_sustain_s, c.hold_down_s
        self.delta_high, self.delta_severe, self.queue_high = c.rtt_delta_high_ms, c.rtt_delta_severe_ms, c.queue_high_pct
        self.w_red, self.w_soft_red, self.w_yellow = w.red_state, w.soft_red_sustained, w.yellow_state
        self.w_high, self.w_severe, self.w_drops = w.rtt_delta_high, w.rtt_delta_severe, w.drops_increasing
        self.w_queue, self.w_wan_red, self.w_wan_soft_red = w.queue_high_sustained, w.wan_red, w.wan_soft_red
        self.allowed = frozenset(r.allowed_states)
        self.max_recovery_delta, self.max_recovery_drops = r.max_rtt_delta_ms, r.max_drops_per_sec
        self.flap, self.window, self.max_toggles = f.enabled, f.window_s, f.max_toggles
        self.penalty_s, self.penalty_add = f.penalty_s, f.penalty_threshold_add
        self.red_required, self.green_required = h.red_samples_required, h.green_samples_required
        self.max_gap = cfg.max_gap_s


def confidence_score(
    p: Params,
    state: str,
    rtt_delta: float,
    states: list[str],
    drops: list[float],
    queues: list[float],
    wan_zone: str | None,
    contributors: bool = True,
) -> tuple[int, list[str]]:
    """The Phase 2B score (section 5.4) and its contributors, from scratch.

    ``states``/``drops``/``queues`` are the histories since the last gap with the
    current sample last (only their last 3, 3 and 2 entries matter).  With
    ``contributors`` false the list comes back empty (the score alone: a sample
    that decides nothing needs no contributor strings).
    """
    if not contributors:
        # The score alone: the same conditions in the same order as below.
        score = 0
        if state == "RED":
            score += p.w_red
        elif state == "SOFT_RED":
            if len(states) >= 3 and states[-2] == "SOFT_RED" and states[-3] == "SOFT_RED":
                score += p.w_soft_red
        elif state == "YELLOW":
            score += p.w_yellow
        if rtt_delta > p.delta_severe:
            score += p.w_severe
        elif rtt_delta > p.delta_high:
            score += p.w_high
        if len(drops) >= 3:
            last = drops[-1]
            if last > drops[-3] and last > 0.0:
                score += p.w_drops
        if len(queues) >= 2 and queues[-1] > p.queue_high and queues[-2] > p.queue_high:
            score += p.w_queue
        if wan_zone is not None:
            if wan_zone == "RED":
                score += p.w_wan_red
            elif wan_zone == "SOFT_RED":
                score += p.w_wan_soft_red
        return (100 if score > 100 else score), _NO_CONTRIBUTORS
    score = 0
    why: list[str] = []
    if state == "RED":
        score += p.w_red
        why.append("RED")
    elif state == "SOFT_RED":
        if len(states) >= 3 and states[-2] == "SOFT_RED" and states[-3] == "SOFT_RED":
            score += p.w_soft_red
            why.append("SOFT_RED_sustained")
    elif state == "YELLOW":
        score += p.w_yellow
        why.append("YELLOW")
    if rtt_delta > p.delta_severe:
        score += p.w_severe
        why.append(f"rtt_delta={rtt_delta:.1f}ms(severe)")
    elif rtt_delta > p.delta_high:
        score += p.w_high
        why.append(f"rtt_delta={rtt_delta:.1f}ms(high)")
    if len(drops) >= 3:
        last = drops[-1]
        if last > drops[-3] and last > 0:
            score += p.w_drops
            why.append("drops_increasing")
    if len(queues) >= 2 and queues[-1] > p.queue_high and queues[-2] > p.queue_high:
        score += p.w_queue
        why.append("queue_high_sustained")
    if wan_zone == "RED":
        score += p.w_wan_red
        why.append("WAN_RED")
    elif wan_zone == "SOFT_RED":
        score += p.w_wan_soft_red
        why.append("WAN_SOFT_RED")
    return (100 if score > 100 else score), why


class Hysteresis(msgspec.Struct, gc=False):
    """Phase 2A: N consecutive RED samples steer, M consecutive GREEN recover."""

    state: str = GOOD
    count: int = 0
    first_t: float = 0.0

    def count_sample(self, cake_state: str, t: float) -> None:
        """Count a sample that points away from ``state``; anything else resets."""
        if cake_state != _TOWARD[self.state]:
            self.count = 0
            return
        if self.count == 0:
            self.first_t = t
        self.count += 1

    def due(self, p: Params) -> bool:
        return self.count >= (p.red_required if self.state == GOOD else p.green_required)

    def step(self, cake_state: str, t: float, p: Params) -> float | None:
        """Count this sample; on a state change return its ``sustained_s``."""
        self.count_sample(cake_state, t)
        if not self.due(p):
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
    # What an operator tunes by (seed: "too many resets = bad tuning").
    degrade_resets: int = 0
    recovery_resets: int = 0
    hold_down_expiries: int = 0
    penalties: int = 0

    def penalty_active(self, t: float) -> bool:
        return self.penalty_until is not None and t < self.penalty_until - TOL

    def step(
        self, p: Params, t: float, confidence: int, threshold: int,
        cake_state: str, rtt_delta: float, drops: float, wan_zone: str | None,
    ) -> float | None:
        """Run the timers on one sample; on a state change return ``sustained_s``."""
        if self.state == GOOD:
            if confidence < threshold:
                if self.degrade_start is not None:
                    self.degrade_start = None
                    self.degrade_resets += 1
                return None
            if self.degrade_start is None:
                self.degrade_start = t
            if t - self.degrade_start >= p.sustain - TOL:
                sustained = t - self.degrade_start
                self.enter(p, DEGRADED, t)
                return sustained
            return None
        if self.hold_down_until is not None:
            if t < self.hold_down_until - TOL:
                return None  # hold-down always runs to completion
            self.hold_down_until = None
            self.hold_down_expiries += 1
        eligible = (
            confidence <= p.recovery_threshold
            and cake_state in p.allowed
            and rtt_delta < p.max_recovery_delta
            and drops < p.max_recovery_drops
            and (wan_zone is None or wan_zone == "GREEN")
        )
        if not eligible:
            if self.recovery_start is not None:
                self.recovery_start = None
                self.recovery_resets += 1
            return None
        if self.recovery_start is None:
            self.recovery_start = t
        if t - self.recovery_start >= p.recovery_sustain - TOL:
            sustained = t - self.recovery_start
            self.enter(p, GOOD, t)
            return sustained
        return None

    def enter(self, p: Params, state: str, t: float) -> None:
        """Take a decision made at ``t`` (by this policy or by the fallback)."""
        self.state = state
        self.degrade_start = None
        self.recovery_start = None
        if state == DEGRADED:
            self.hold_down_until = t + p.hold_down
        if p.flap:
            self.record_toggle(p, t)

    def record_toggle(self, p: Params, t: float) -> None:
        """Seed W1: prune before appending, never hold more than max_toggles + 1."""
        deadline = _flap.record_toggle(self.flap, t, p.window, p.max_toggles, self.penalty_until, p.penalty_s)
        if deadline is not None:
            self.penalty_until = deadline
            self.penalties += 1

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
    quality: QualityState = msgspec.field(default_factory=QualityState)
    summary: WanSummary = msgspec.field(default_factory=WanSummary)
    decision_seq: int = 0  # last decision that set the driving state
    last_score: tuple[int, int, bool] = (0, 0, False)  # confidence, threshold, flap_penalty

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
    """Section 5 and the quality policy over any number of WANs, in arrival order.

    ``wans`` (the config's WAN list) only matters for the quality policy's
    alternate check; without it, or without any ``alternate``, the check is off.
    ``epoch``/``source`` only stamp the published states; decisions leave
    ``process`` without their envelope.
    """

    # Slots for what the per-sample path reads (as for ``Params``: with 30 or
    # more attributes in ``__dict__`` every read is a dict lookup); ``__dict__``
    # stays for anything else.
    __slots__ = (
        "cfg", "params", "quality_cfg", "epoch", "source", "next_seq", "wans", "rejected", "_counters",
        "_scored", "alternates", "known_wans", "max_wans", "max_t_jump", "shadows", "driving",
        "driving_confidence", "driving_quality", "confidence_running", "hysteresis_running",
        "quality_running", "flap_running", "_summaries", "_quality_fast", "_quality_keep", "_max_enables",
        "_enable_window", "_max_gap", "_calm_ok", "_calm", "_calm_penalty", "_steer_penalty",
        "_fallback_counts", "__dict__",
    )

    def __init__(self, cfg: Scorer, *, wans: list[Wan] | None = None, epoch: int = 0, next_seq: int = 1,
                 source: str = "scorer"):
        self.cfg = cfg
        self.params = Params(cfg)
        self.quality_cfg = cfg.quality
        self.epoch = epoch
        self.source = source
        self.next_seq = next_seq
        self.wans: dict[str, WanScorer] = {}
        self.rejected: dict[str, int] = {}
        self._counters: dict[str, int] = {
            "scored": 0,
            "ignored_null_rtt": 0,
            "gaps": 0,
            "stream_changes": 0,
            "fallbacks": 0,
            "confidence_errors": 0,
            "decisions": 0,
            "quality_errors": 0,
            "quality_holds_alternate_worse": 0,
            "quality_holds_alternate_down": 0,
            "quality_holds_alternate_stale": 0,
            "quality_holds_flap_hold": 0,
            "quality_steer_backs": 0,
        }
        # The one counter every sample moves, kept out of the dict (see ``_totals``).
        self._scored = 0
        self.alternates = {w.name: w.alternate for w in (wans or []) if w.alternate}
        # WAN bookkeeping: with a configured list only those WANs are scored; otherwise at most max_wans.
        self.known_wans = frozenset(w.name for w in wans) if wans else None
        self.max_wans = cfg.max_wans
        self.max_t_jump = cfg.max_t_jump_s + TOL
        policy = cfg.policy
        if cfg.shadow is True:
            shadows = [x for x in POLICIES if x != policy]
        elif cfg.shadow is False:
            shadows = []
        else:
            shadows = [x for x in POLICIES if x in cfg.shadow and x != policy]
        self.shadows = shadows
        running = {policy, *shadows}
        self.driving = policy
        self.driving_confidence = policy == CONFIDENCE
        self.driving_quality = policy == QUALITY
        self.confidence_running = CONFIDENCE in running
        self.hysteresis_running = HYSTERESIS in running
        self.quality_running = QUALITY in running
        self.flap_running = self.confidence_running and cfg.flap.enabled
        self._summaries = bool(self.alternates) and self.quality_running
        # Constants of process()'s inline path (the quality policy driving).
        self._quality_fast = self.driving_quality
        self._quality_keep = _quality.kept_s(cfg.quality)
        self._max_enables = cfg.quality.flap.max_enables
        self._enable_window = cfg.quality.flap.window_s - TOL
        p = self.params
        self._max_gap = p.max_gap + TOL
        self._calm_ok = p.steer > 0  # a 2B score of 0 stays below the threshold
        self._calm = (0, p.steer, False)
        self._calm_penalty = (0, p.steer + p.penalty_add, True)
        self._steer_penalty = p.steer + p.penalty_add  # 2B's threshold under the flap penalty
        self._fallback_counts = self.driving != HYSTERESIS  # 2A counts for the fallback of another driving policy

    @property
    def counters(self) -> dict[str, int]:
        """What the engine has seen; every accepted sample is scored or ignored."""
        c = self._totals()
        return {"accepted": c["scored"] + c["ignored_null_rtt"], **c}

    def _totals(self) -> dict[str, int]:
        """The counters dict with ``scored`` brought up to date (its place in the dict kept)."""
        self._counters["scored"] = self._scored
        return self._counters

    # --- the one entry point ------------------------------------------------

    def process(self, s: Telemetry) -> Outcome:
        """Score one sample: its decisions (driving first) and what became of it."""
        t = s.t
        rtt, base = s.rtt_ms, s.baseline_rtt_ms  # (pairs: unpacking four builds a tuple)
        drops, queue = s.drops_per_sec, s.queue_depth_pct
        w = self.wans.get(s.wan)
        # The common case, checked cheaply: a complete sample without state
        # strings or the optional fields, of a known WAN on its current stream,
        # in order.  Every number is finite and the four values non-negative
        # (NaN fails every comparison); ``t`` is finite because ``t - last_t``
        # is (``last_t`` is a finite accepted time).  Comparisons allocate no
        # floats, unlike arithmetic.  Anything else takes _admit.
        if (w is not None and s.stream == w.stream and rtt is not None and base is not None
                and drops is not None and queue is not None and s.cake_state is None
                and s.wan_zone is None and s.v == SCHEMA_VERSION and s.rtt_status is None
                and s.queue_delay_ms is None and s.loss_pct is None
                and rtt >= 0.0 and base >= 0.0 and drops >= 0.0 and queue >= 0.0
                and rtt < _INF and base < _INF and drops < _INF and queue < _INF
                and _NEG_INF < s.wall < _INF and TOL < t - w.last_t <= self.max_t_jump):
            inline = self._quality_fast  # the rest of this sample inline (below)
            w.last_t = t
            if self._summaries:
                w.summary.add(s, self.quality_cfg.summary_window_s)
        else:
            inline = False
            w = self._admit(s)
            if w.__class__ is Outcome:
                return w
            drops = drops or 0.0  # null drops or queue count as 0 everywhere
            queue = queue or 0.0
            if self._summaries:
                w.summary.add(s, self.quality_cfg.summary_window_s)
            if rtt is None or base is None:
                # Ignored by 2B/2A (section 5.1); the quality policy judges it by its rtt_status.
                self._counters["ignored_null_rtt"] += 1
                if not self.quality_running:
                    return _IGNORED_NONE
                decisions = self._run_quality(w, s, None)
                return Outcome(self._number(w, decisions), IGNORED) if decisions else _IGNORED_NONE
        self._scored += 1

        # Sections 5.2-5.3 (gap check, EWMA, the sample's state, the histories).
        p = self.params
        last = w.last_scored_t
        if last is not None and t - last > self._max_gap:
            self._counters["gaps"] += 1
            w.clear_runs()
        w.last_scored_t = t
        rtt_delta = rtt - base if rtt > base else 0.0
        ewma = w.ewma
        ewma = rtt_delta if ewma is None else ewma + p.alpha * (rtt_delta - ewma)
        w.ewma = ewma
        state = s.cake_state
        if state is None:
            if ewma > p.red_rtt and drops >= p.min_drops_red and queue >= p.min_queue_red:
                state = "RED"
            elif ewma > p.soft_red_rtt:
                state = "SOFT_RED"
            elif ewma > p.yellow_rtt or queue >= p.min_queue_yellow:
                state = "YELLOW"
            else:
                state = "GREEN"
        states = w.states
        states.append(state)
        w.drops.append(drops)
        w.queues.append(queue)
        if len(states) > _HISTORY_MAX:
            # Section 5.4 looks at the last 3 entries at most; trim in batches.
            del states[:-3], w.drops[:-3], w.queues[:-3]

        if not inline:
            decisions = self._run_2b_2a(w, s, state, rtt_delta, drops)
            if self.quality_running:
                decisions = self._run_quality(w, s, state, decisions)
            if decisions:
                return Outcome(self._number(w, decisions), SCORED)
            return _SCORED_NONE

        # The quality policy driving, on a complete sample without the optional
        # fields: the common cases of _run_2b_2a and quality.step inline, the
        # same steps in the same order (the differential tests hold them to it).
        # A field that keeps its value is not stored again (storing into a
        # Struct costs three times a load): the state ends up the same.
        cp = w.confidence_policy
        q = w.quality
        fb = w.fallback
        hp = w.hysteresis_policy
        if (state == "GREEN" and rtt_delta <= p.delta_high and drops == 0.0 and queue <= p.queue_high
                and cp.state == GOOD and cp.degrade_start is None and fb.count == 0 and fb.state == GOOD
                and q.state == GOOD and hp.count == 0 and hp.state == GOOD and self._calm_ok):
            # Healthy, nothing running: 2B scores 0 below its threshold, 2A counts nothing.
            until = cp.penalty_until
            calm = self._calm_penalty if until is not None and self.flap_running and t < until - TOL else self._calm
            if w.last_score is not calm:
                w.last_score = calm
            decisions = _NONE
        else:
            decisions = self._run_2b_2a(w, s, state, rtt_delta, drops)

        # quality.step up to its common case (rules 1-3: prune, baseline, classify).
        # (``bad`` is the window's bad count, ``q.bad_kept``, kept in a local and stored on change.)
        qc = self.quality_cfg
        wt, wf = q.win_t, q.win_flag
        wd, wr = q.win_delay, q.win_rtt
        bad = q.bad_kept
        cutoff = t - self._quality_keep + TOL
        if wt and wt[0] <= cutoff:
            # The times ascend: the samples at or before the cutoff are a head.
            if len(wt) == 1 or wt[1] > cutoff:
                # One leaves (at a steady cadence, one arrives and one leaves).
                if wf[0] & _BAD:
                    q.bad_kept = bad = bad - 1
                del wt[0], wf[0], wd[0], wr[0]
            else:
                drop = _bisect_right(wt, cutoff)
                for f in wf[:drop]:
                    bad -= f & _BAD
                q.bad_kept = bad
                del wt[:drop], wf[:drop], wd[:drop], wr[:drop]
        qb = q.base
        if (bad > 0 or q.state == DEGRADED) and qb is not None:
            if base < qb:
                q.base = qb = base
        else:
            q.base = qb = base
        d = rtt - qb if rtt > qb else 0.0
        if d >= qc.delay_bad_ms:
            flags = _BAD | _SEVERE if d >= qc.delay_severe_ms else _BAD
            q.bad_kept = bad = bad + 1
        elif d < qc.delay_good_ms:
            flags = _GOOD_SAMPLE
        else:
            flags = 0
        wt.append(t)
        wf.append(flags)
        wd.append(d)
        wr.append(rtt)
        if not bad and q.state == GOOD:
            enables = q.enables
            if len(enables) >= self._max_enables and t - enables[0] < self._enable_window:
                capped, threshold = True, 101
            else:
                capped, threshold = False, qc.steer_share_pct
            if q.last_score or q.last_threshold != threshold or q.last_capped is not capped or q.hold is not None:
                q.hold = None
                q.last_score, q.last_threshold, q.last_capped = 0, threshold, capped
        else:
            decisions = self._run_quality(w, s, state, decisions, flags)
        if decisions:
            return Outcome(self._number(w, decisions), SCORED)
        return _SCORED_NONE

    # --- the named steps ----------------------------------------------------

    def _admit(self, s: Telemetry) -> "WanScorer | Outcome":
        """Sections 5.1-5.2 in full: the WAN to score ``s`` for, or the outcome
        of a rejected sample.  Handles a new WAN and a new stream."""
        cause = rejection_cause(s)
        w = self.wans.get(s.wan)
        t = s.t
        if cause is None:
            if w is None:
                cause = self._wan_cause(s.wan)
            elif s.stream == w.stream:
                if t - w.last_t <= TOL:
                    cause = OUT_OF_ORDER
                elif t - w.last_t > self.max_t_jump:
                    cause = IMPLAUSIBLE_T
        if cause is not None:
            self.rejected[cause] = self.rejected.get(cause, 0) + 1
            return _REJECTED[cause]
        if w is None:
            w = self.wans[s.wan] = WanScorer(wan=s.wan, stream=s.stream, last_t=t,
                                             last_score=(0, self.params.steer, False))
        elif s.stream != w.stream:
            # A new clock: keep the time each deadline had left at the old stream's
            # last sample, and treat the change as a gap.
            self._counters["stream_changes"] += 1
            by = t - w.last_t
            w.confidence_policy.shift(by)
            w.quality.shift(by)
            w.quality.clear()
            w.clear_runs()
            w.stream = s.stream
            w.last_scored_t = None
        w.last_t = t
        return w

    def _wan_cause(self, wan: str) -> str | None:
        """Why a WAN the engine does not keep yet must not be added (None: add it)."""
        if self.known_wans is not None:
            return None if wan in self.known_wans else UNKNOWN_WAN
        if not wan_name_ok(wan):
            return BAD_WAN_NAME
        if len(self.wans) >= self.max_wans:
            return TOO_MANY_WANS
        return None

    def _run_2b_2a(self, w: WanScorer, s: Telemetry, state: str, rtt_delta: float, drops: float) -> list:
        """Sections 5.4-5.6: score, timers, flap brake, hysteresis, the fallback."""
        p = self.params
        t = s.t
        wan_zone = s.wan_zone
        queue_history = w.queues
        queue = queue_history[-1]
        cp = w.confidence_policy
        penalty_until = cp.penalty_until
        if penalty_until is not None and self.flap_running and t < penalty_until - TOL:
            penalty, threshold = True, self._steer_penalty
        else:
            penalty, threshold = False, p.steer
        decisions = _NONE
        fb = w.fallback
        if self._fallback_counts:
            # Phase 2A counters kept against the driving state, for the fallback.
            driving_state = cp.state if self.driving_confidence else w.quality.state
            if fb.state != driving_state:
                fb.change(driving_state)
            # fb.count_sample(state, t) inline (a reset of a count at 0 is no store).
            if state == _TOWARD[fb.state]:
                if not fb.count:
                    fb.first_t = t
                fb.count += 1
            elif fb.count:
                fb.count = 0

        confidence = 0
        scored = False  # the contributors are built for a decision only (_why)
        try:
            # A healthy sample fails every condition of section 5.4 (no state
            # weight, RTT delta not high, no drops, queue not high, no zone):
            # it scores 0 without the call.
            if (state != "GREEN" or wan_zone is not None or rtt_delta > p.delta_high
                    or drops != 0.0 or queue > p.queue_high):
                confidence = confidence_score(
                    p, state, rtt_delta, w.states, w.drops, queue_history, wan_zone, False
                )[0]
                scored = True
            # The step is a no-op, and skipped, when GOOD below the threshold with
            # no run to clear (by far the most common case) and when DEGRADED in
            # its hold-down (the step returns first thing).
            if self.confidence_running:
                if cp.state == GOOD:
                    idle = confidence < threshold and cp.degrade_start is None
                else:
                    until = cp.hold_down_until
                    idle = until is not None and t < until - TOL
                if not idle:
                    sustained = cp.step(p, t, confidence, threshold, state, rtt_delta, drops, wan_zone)
                    if sustained is not None:
                        decisions = [self._decision(s, CONFIDENCE, self.driving_confidence, False, cp.state,
                                                    confidence, threshold, penalty,
                                                    self._why(scored, w, state, rtt_delta, wan_zone), sustained)]
        except Exception:
            self._counters["confidence_errors"] += 1
            if self.driving_confidence:
                # Phase 2A decides for the driving policy on this sample.
                self._counters["fallbacks"] += 1
                if fb.due(p):
                    sustained = t - fb.first_t
                    cp.enter(p, DEGRADED if fb.state == GOOD else GOOD, t)
                    fb.change(cp.state)
                    decisions = [self._decision(s, HYSTERESIS, True, True, cp.state, confidence,
                                                threshold, penalty,
                                                self._why(scored, w, state, rtt_delta, wan_zone), sustained)]

        if self.hysteresis_running:
            hp = w.hysteresis_policy
            sustained = hp.step(state, t, p) if hp.count or state == _TOWARD[hp.state] else None
            if sustained is not None:
                decision = self._decision(s, HYSTERESIS, self.driving == HYSTERESIS, False, hp.state,
                                          confidence, threshold, penalty,
                                          self._why(scored, w, state, rtt_delta, wan_zone), sustained)
                # The driving policy's decision is emitted first.
                if self.driving == HYSTERESIS:
                    decisions = [decision, *decisions]
                else:
                    decisions = [*decisions, decision]
        w.last_score = (confidence, threshold, penalty)
        return decisions

    def _why(self, scored: bool, w: WanScorer, state: str, rtt_delta: float, wan_zone: str | None) -> list[str]:
        """The contributors of this sample's 2B score, for a decision (none when it was not scored)."""
        if not scored:
            return _NO_CONTRIBUTORS
        return confidence_score(self.params, state, rtt_delta, w.states, w.drops, w.queues, wan_zone)[1]

    def _run_quality(self, w: WanScorer, s: Telemetry, state: str | None, decisions=_NONE,
                     flags: int | None = None) -> list:
        """The quality policy (docs/scoring.md) on one accepted sample; with the
        fallback of section 5.6 when it raises while driving.  With ``flags``,
        ``quality.step`` has run up to its common case already (``process``):
        only ``quality.judge`` is left."""
        q = w.quality
        held = q.hold
        try:
            alternate = self._alternate_view(w, s) if self.alternates else None
            if flags is None:
                verdict = _quality.step(self.quality_cfg, q, s, alternate)
            else:
                verdict = _quality.judge(self.quality_cfg, q, s, alternate, flags)
        except Exception:
            self._counters["quality_errors"] += 1
            if not self.driving_quality or state is None:
                return decisions
            # Phase 2A decides for the driving quality policy on this sample.
            self._counters["fallbacks"] += 1
            fb = w.fallback
            if not fb.due(self.params):
                return decisions
            sustained = s.t - fb.first_t
            q.enter(self.quality_cfg, DEGRADED if fb.state == GOOD else GOOD, s.t)
            fb.change(q.state)
            d = self._decision(s, HYSTERESIS, True, True, q.state, q.last_score, q.last_threshold,
                               q.last_capped, [], sustained)
            return [d, *decisions]
        if q.hold is not None and q.hold != held:
            self._counters["quality_holds_" + q.hold] += 1
        if verdict is None:
            return decisions
        if verdict.decision == GOOD and q.hold is not None:
            self._counters["quality_steer_backs"] += 1
        d = self._decision(s, QUALITY, self.driving_quality, False, verdict.decision, verdict.score,
                           verdict.threshold, verdict.capped, verdict.contributors, verdict.sustained)
        if self.driving_quality or not decisions:
            return [d, *decisions]
        # A shadow: after the driving decision, before the other shadows (quality comes first).
        i = 0
        while i < len(decisions) and decisions[i].driving:
            i += 1
        return [*decisions[:i], d, *decisions[i:]]

    def _alternate_view(self, w: WanScorer, s: Telemetry):
        name = self.alternates.get(w.wan)
        if name is None:
            return None
        a = self.wans.get(name)
        if a is None or a.summary.stream != w.summary.stream:
            return (None, None, 0.0, None)
        window = self.quality_cfg.summary_window_s
        rtt, lost = a.summary.view(s.t, window)
        return (a.summary.stream, rtt, lost, a.summary.last_measured_t)

    def _number(self, w: WanScorer, decisions: list) -> list:
        """Number the decisions in emission order, driving first."""
        for d in decisions:
            d.seq = self.next_seq
            self.next_seq += 1
            if d.driving:
                w.decision_seq = d.seq
        self._counters["decisions"] += len(decisions)
        return decisions

    def _decision(
        self, s: Telemetry, policy: str, driving: bool, fallback: bool, state: str,
        confidence: int, threshold: int, penalty: bool, contributors: list[str], sustained: float,
    ) -> Decision:
        """A decision without its number yet (see ``_number``) and without its envelope."""
        return Decision(
            seq=0, wan=s.wan, t=s.t, wall=s.wall, telemetry_seq=s.seq, policy=policy,
            driving=driving, fallback=fallback,
            decision=ENABLE if state == DEGRADED else DISABLE, state=state,
            confidence=confidence, threshold=threshold, flap_penalty=penalty,
            contributors=list(contributors), sustained_s=sustained,
        )

    # --- what the process publishes and persists ----------------------------

    def desired(self, wan: str) -> str:
        w = self.wans[wan]
        if self.driving_quality:
            return w.quality.state
        return w.confidence_policy.state if self.driving_confidence else w.hysteresis_policy.state

    def states(self, seq: int = 0) -> list[State]:
        """The desired state of every known WAN, timers as seconds left at its last sample."""
        return [self.state_of(name, seq) for name in self.wans]

    def state_of(self, name: str, seq: int = 0) -> State:
        """The desired state of one WAN, timers as seconds left at its last sample."""
        w = self.wans[name]
        cp = w.confidence_policy
        t = w.last_t

        def left(deadline):
            return None if deadline is None or t >= deadline else deadline - t

        if self.driving_quality:
            q = w.quality
            qc = self.quality_cfg
            capped = q.capped(qc, t)
            return State(
                wan=name, seq=seq, desired=q.state, decision_seq=w.decision_seq,
                confidence=q.last_score, threshold=q.last_threshold, flap_penalty=capped,
                hold_down_remaining_s=left(q.hold_down_until) if q.state == DEGRADED else None,
                flap_penalty_remaining_s=left(q.enables[0] + qc.flap.window_s) if capped else None,
                policy=self.cfg.policy, t=t, source=self.source, epoch=self.epoch,
            )
        p = self.params
        confidence, threshold, penalty = w.last_score
        return State(
            wan=name, seq=seq, desired=self.desired(name), decision_seq=w.decision_seq,
            confidence=confidence, threshold=threshold, flap_penalty=penalty,
            degrade_remaining_s=None if cp.degrade_start is None else left(cp.degrade_start + p.sustain),
            hold_down_remaining_s=left(cp.hold_down_until) if cp.state == DEGRADED else None,
            recovery_remaining_s=None if cp.recovery_start is None
            else left(cp.recovery_start + p.recovery_sustain),
            flap_penalty_remaining_s=left(cp.penalty_until),
            policy=self.cfg.policy, t=t, source=self.source, epoch=self.epoch,
        )

    def export(self) -> bytes:
        """A msgpack snapshot of the whole engine (section 5.7).

        Times are stored as they are, together with each WAN's ``stream`` and
        last ``t``: a deadline's remaining duration is ``deadline - last_t``, and
        ``process`` shifts it onto a new clock if the next sample's stream differs.
        """
        return msgspec.msgpack.encode(
            Snapshot(next_seq=self.next_seq, wans=list(self.wans.values()),
                     rejected=self.rejected, counters=self._totals())
        )

    @classmethod
    def restore(cls, cfg: Scorer, data: bytes, *, wans: list[Wan] | None = None, epoch: int = 0,
                source: str = "scorer") -> "Engine":
        snap = msgspec.msgpack.decode(data, type=Snapshot)
        engine = cls(cfg, wans=wans, epoch=epoch, next_seq=snap.next_seq, source=source)
        # A snapshot keeps only what the config allows now: configured WANs, or
        # at most max_wans well-named ones (a flood before an upgrade does not survive it).
        if engine.known_wans is not None:
            kept = [w for w in snap.wans if w.wan in engine.known_wans]
        else:
            kept = [w for w in snap.wans if wan_name_ok(w.wan)][:engine.max_wans]
        engine.wans = {w.wan: w for w in kept}
        engine.rejected = dict(snap.rejected)
        engine._counters.update({k: v for k, v in snap.counters.items() if k in engine._counters})
        engine._scored = engine._counters["scored"]
        return engine

    def totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """The running totals a partial snapshot carries: (rejected by cause, counters)."""
        return self.rejected, self._totals()

    def load_wans(self, wans: list[WanScorer], next_seq: int, rejected: dict[str, int],
                  counters: dict[str, int]) -> None:
        """Apply a partial snapshot: whole WANs (replacing or adding), the next seq and the totals.

        Like ``restore``, only the WANs the config allows now are kept.
        """
        for w in wans:
            if w.wan in self.wans or self._wan_cause(w.wan) is None:
                self.wans[w.wan] = w
        self.next_seq = next_seq
        self.rejected = dict(rejected)
        self._counters.update({k: v for k, v in counters.items() if k in self._counters})
        self._scored = self._counters["scored"]
