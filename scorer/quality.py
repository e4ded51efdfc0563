"""The quality policy (docs/scoring.md), sans-I/O: delay, queue time and probe loss.

Per sample: the excess delay over a baseline that cannot rise while the path
is congested, the queue as time, probe loss and the autorate zone make the
sample *bad*, *good* or neither; a bad sample may also be *severe*.  The
policy steers on a bad sample when the bad share of the last ``window_s`` holds
for ``sustain_s`` (so one good sample does not reset it, one spike never
steers), or sooner when the severe share of the last ``severe_window_s`` holds
(the worse the delay, the less evidence it waits for), recovers after its hold-down when the good share of the last
``recovery_window_s`` is high, caps ENABLEs per hour, and never steers onto an
alternate WAN that is worse, down or unmeasured (steering back when that
happens while steered).
"""

from __future__ import annotations

from bisect import bisect_right as _bisect_right

import msgspec

from proto.config import Quality
from proto.messages import DEGRADED, GOOD, Telemetry
from scorer.flap import TOL, enable_capped, record_enable

QUALITY = "quality"

# Flags of a measured sample in the window.
BAD = 1
GOOD_SAMPLE = 2
LOST = 4
SEVERE = 8

_ZONE_BAD = frozenset(("RED", "SOFT_RED"))

ALTERNATE_WORSE = "alternate_worse"
ALTERNATE_DOWN = "alternate_down"
ALTERNATE_STALE = "alternate_stale"
FLAP_HOLD = "flap_hold"
HOLDS = (ALTERNATE_WORSE, ALTERNATE_DOWN, ALTERNATE_STALE, FLAP_HOLD)


class WanSummary(msgspec.Struct, gc=False):
    """What the engine keeps of every WAN for the alternate check: the last
    ``summary_window_s`` of probe outcomes (RTT in ms, or -1.0 when lost) and
    when the WAN was last measured (an answered or a lost probe)."""

    stream: str | None = None
    t: list[float] = msgspec.field(default_factory=list)
    rtt: list[float] = msgspec.field(default_factory=list)
    last_measured_t: float | None = None

    def add(self, s: Telemetry, window_s: float) -> None:
        if self.stream != s.stream:
            self.stream = s.stream
            self.t.clear()
            self.rtt.clear()
            self.last_measured_t = None
        status = sample_status(s)
        if status == "ok" and s.rtt_ms is not None:
            value = s.rtt_ms
        elif status == "lost":
            value = -1.0
        else:
            return
        self.t.append(s.t)
        self.rtt.append(value)
        self.last_measured_t = s.t
        self.prune(s.t, window_s)

    def prune(self, t: float, window_s: float) -> None:
        cutoff = t - window_s + TOL
        drop = 0
        ts = self.t
        while drop < len(ts) and ts[drop] <= cutoff:
            drop += 1
        if drop:
            del self.t[:drop], self.rtt[:drop]

    def view(self, t: float, window_s: float) -> tuple[float | None, float]:
        """(median RTT of the answered probes, lost percentage) over the window before ``t``."""
        cutoff = t - window_s + TOL
        rtts = [r for x, r in zip(self.t, self.rtt) if x > cutoff and r >= 0.0]
        n = sum(1 for x in self.t if x > cutoff)
        lost = 0.0 if n == 0 else 100.0 * (n - len(rtts)) / n
        return median(rtts), lost


def median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0


def sample_status(s: Telemetry) -> str:
    """``rtt_status``, with SPEC section 3's reading of a null one."""
    if s.rtt_status is not None:
        return s.rtt_status
    return "ok" if s.rtt_ms is not None else "unavailable"


class QualityState(msgspec.Struct):
    """The quality policy of one WAN; also its persisted form.

    The window holds the measured samples of the last
    ``max(window_s, recovery_window_s, severe_window_s)``: their ``t``, flags (BAD, GOOD, LOST, SEVERE),
    excess delay and absolute RTT (-1.0 when the sample has none).
    """

    state: str = GOOD
    win_t: list[float] = msgspec.field(default_factory=list)
    win_flag: list[int] = msgspec.field(default_factory=list)
    win_delay: list[float] = msgspec.field(default_factory=list)
    win_rtt: list[float] = msgspec.field(default_factory=list)
    base: float | None = None  # the baseline in use (frozen from below while congested)
    hold_down_until: float | None = None
    enables: list[float] = msgspec.field(default_factory=list)
    hold: str | None = None  # the hold in force at the last sample, if any
    last_score: int = 0
    last_threshold: int = 0
    last_capped: bool = False
    bad_kept: int = 0  # bad samples in the window (kept in step with it)

    def clear(self) -> None:
        """A new stream: the window's times belong to the old clock."""
        self.bad_kept = 0
        self.win_t.clear()
        self.win_flag.clear()
        self.win_delay.clear()
        self.win_rtt.clear()

    def shift(self, by: float) -> None:
        if self.hold_down_until is not None:
            self.hold_down_until += by
        self.enables = [x + by for x in self.enables]

    def enter(self, q: Quality, state: str, t: float) -> None:
        """Take a decision made at ``t`` (by this policy or by the fallback)."""
        self.state = state
        if state == DEGRADED:
            self.hold_down_until = t + q.hold_down_s
            record_enable(self.enables, t, q.flap.max_enables)
        else:
            self.hold_down_until = None

    def capped(self, q: Quality, t: float) -> bool:
        return enable_capped(self.enables, t, q.flap.window_s, q.flap.max_enables)


class Verdict:
    """What the policy made of one sample (a decision when ``decision`` is set)."""

    __slots__ = ("decision", "score", "threshold", "capped", "contributors", "sustained")

    def __init__(self, decision, score, threshold, capped, contributors, sustained):
        self.decision = decision  # DEGRADED, GOOD or None
        self.score = score
        self.threshold = threshold
        self.capped = capped
        self.contributors = contributors
        self.sustained = sustained


def classify(q: Quality, st: QualityState, s: Telemetry) -> tuple[int | None, float, float]:
    """Rules 1-3 of docs/scoring.md: (flags or None when unmeasured, excess delay, RTT).

    Updates the baseline in use (``st.base``) first.
    """
    congested = st.state == DEGRADED or st.bad_kept > 0
    b = s.baseline_rtt_ms
    if b is not None:
        if congested and st.base is not None:
            if b < st.base:
                st.base = b
        else:
            st.base = b
    status = sample_status(s)
    lost = status == "lost" or (s.loss_pct is not None and s.loss_pct >= q.loss_bad_pct)
    d = None
    if status == "ok" and s.rtt_ms is not None and st.base is not None:
        d = s.rtt_ms - st.base if s.rtt_ms > st.base else 0.0
    qd = s.queue_delay_ms
    if d is None and qd is None and not lost:
        return None, -1.0, -1.0
    zone = s.wan_zone in _ZONE_BAD
    bad = (
        lost
        or (d is not None and d >= q.delay_bad_ms)
        or (qd is not None and qd >= q.queue_bad_ms)
        or (zone and ((d is not None and d >= q.delay_good_ms) or (qd is not None and qd >= q.queue_good_ms)))
    )
    flags = 0
    if bad:
        flags |= BAD
        if (d is not None and d >= q.delay_severe_ms) or (qd is not None and qd >= q.queue_severe_ms):
            flags |= SEVERE
    elif not zone and (d is None or d < q.delay_good_ms) and (qd is None or qd < q.queue_good_ms):
        flags |= GOOD_SAMPLE
    if lost:
        flags |= LOST
    rtt = s.rtt_ms if (status == "ok" and s.rtt_ms is not None) else -1.0
    return flags, (-1.0 if d is None else d), rtt


def step(
    q: Quality, st: QualityState, s: Telemetry,
    alternate: tuple[str | None, float | None, float, float | None] | None,
) -> Verdict | None:
    """One sample of the quality policy (docs/scoring.md, rules 2-8); None when it
    decides nothing (its score, threshold and hold are left in ``st``).

    ``alternate`` is None without a configured alternate, else
    ``(stream, median RTT, lost %, last measured t)`` of the alternate's summary.
    """
    t = s.t
    keep = kept_s(q)
    wt, wf, wd, wr = st.win_t, st.win_flag, st.win_delay, st.win_rtt
    cutoff = t - keep + TOL
    if wt and wt[0] <= cutoff:
        drop = 0
        while drop < len(wt) and wt[drop] <= cutoff:
            st.bad_kept -= wf[drop] & BAD
            drop += 1
        del wt[:drop], wf[:drop], wd[:drop], wr[:drop]
    flags, d, rtt = classify(q, st, s)
    if flags is None:
        return None  # unmeasured: an outage of our view, not of the path; no rule runs
    wt.append(t)
    wf.append(flags)
    wd.append(d)
    wr.append(rtt)
    st.bad_kept += flags & BAD
    if st.state == GOOD and not st.bad_kept:
        # No bad sample in the kept window: score 0, nothing to decide (the common case).
        capped = st.capped(q, t)
        st.hold = None
        st.last_score, st.last_threshold, st.last_capped = 0, 101 if capped else q.steer_share_pct, capped
        return None
    return judge(q, st, s, alternate, flags)


def judge(
    q: Quality, st: QualityState, s: Telemetry,
    alternate: tuple[str | None, float | None, float, float | None] | None, flags: int,
) -> Verdict | None:
    """Rules 4-8 on a measured sample already in the window (with ``flags``),
    when the window holds a bad sample or the policy is steered (the rest of ``step``)."""
    t = s.t
    wt, wf = st.win_t, st.win_flag  # (the delays and RTTs are read for a decision or the alternate check)
    # The steering window.
    cutoff = t - q.window_s + TOL
    # The window's times ascend: its samples after the cutoff are a tail.
    first = _bisect_right(wt, cutoff)
    n = len(wt) - first
    # ``bad_kept`` counts the BAD samples of the whole kept window: the steering
    # window's are those less the bad ones before its cutoff.  Whichever side of
    # the cutoff is shorter is scanned (by default the head: two samples).
    if first <= n:
        n_bad = st.bad_kept
        for f in wf[:first]:
            n_bad -= f & BAD  # 1 or 0
    else:
        n_bad = 0
        for f in wf[first:]:
            n_bad += f & BAD
    # The lost samples of the steering window matter to the alternate check and to a
    # decision's contributors only: counted when one of them needs it.
    n_lost = None
    score = n_bad * 100 // n if n else 0
    enables = st.enables
    if len(enables) >= q.flap.max_enables and t - enables[0] < q.flap.window_s - TOL:  # st.capped(q, t)
        capped, threshold = True, 101
    else:
        capped, threshold = False, q.steer_share_pct

    decision = None
    sustained = 0.0
    hold = None
    good_share = None
    severe_share = None
    if st.state == GOOD:
        # Rule 5: only a bad sample steers; the moderate rule first, then the severe one.
        wants = False
        since = None
        if flags & BAD and n >= q.min_samples and n_bad * 100 >= q.steer_share_pct * n:
            since = _oldest(wt, wf, first, BAD)  # the share is positive: there is one
            wants = t - since >= q.sustain_s - TOL
        if flags & BAD and not wants:
            sfirst = _bisect_right(wt, t - q.severe_window_s + TOL)
            ns = len(wt) - sfirst
            n_sev = _count(wf, sfirst, SEVERE)
            if ns >= q.severe_min_samples and n_sev and n_sev * 100 >= q.severe_share_pct * ns:
                oldest_sev = _oldest(wt, wf, sfirst, SEVERE)
                if t - oldest_sev >= q.severe_sustain_s - TOL:
                    wants = True
                    since = oldest_sev
                    severe_share = n_sev * 100 // ns
        if wants:
            if alternate is not None:
                n_lost = _count(wf, first, LOST)
                hold = _harm_here(q, st, alternate, cutoff, n_lost, n, t)
            if hold is None and capped:
                hold = FLAP_HOLD
            if hold is None:
                decision = DEGRADED
                sustained = t - since
    else:
        if alternate is not None:
            n_lost = _count(wf, first, LOST)
            hold = _harm_here(q, st, alternate, cutoff, n_lost, n, t)
        if hold is not None:
            decision = GOOD  # steer back: the alternate is no better place
        elif st.hold_down_until is None or t >= st.hold_down_until - TOL:
            rfirst = _bisect_right(wt, t - q.recovery_window_s + TOL)
            m = len(wt) - rfirst
            n_good = _count(wf, rfirst, GOOD_SAMPLE)
            if m:
                good_share = n_good * 100 // m
            if m >= q.min_samples and n_good * 100 >= q.recovery_share_pct * m:
                decision = GOOD
                sustained = t - wt[rfirst]
    # Stored only when they change (storing into a Struct costs more than comparing):
    # equal ints and bools, and the same hold, leave the state as it was.
    if st.hold != hold:
        st.hold = hold
    if st.last_score != score:
        st.last_score = score
    if st.last_threshold != threshold:
        st.last_threshold = threshold
    if st.last_capped is not capped:  # (bools: identity, which the interpreter does not need to specialise)
        st.last_capped = capped
    if decision is None:
        return None
    st.enter(q, decision, t)
    why = [f"bad_share={score}%"]
    if severe_share is not None:
        why.append(f"severe_share={severe_share}%")
    p50 = median([dd for x, dd in zip(wt, st.win_delay) if x > cutoff and dd >= 0.0])
    if p50 is not None:
        why.append(f"delay_p50={p50:.1f}ms")
    if s.queue_delay_ms is not None:
        why.append(f"queue_delay={s.queue_delay_ms:.1f}ms")
    if n_lost is None:
        n_lost = _count(wf, first, LOST)
    if n_lost:
        why.append(f"loss={n_lost * 100 // n}%")
    if s.drops_per_sec:
        why.append(f"drops={s.drops_per_sec:.1f}/s")
    if s.wan_zone in _ZONE_BAD:
        why.append(f"WAN_{s.wan_zone}")
    if st.base is not None and s.baseline_rtt_ms is not None and st.base < s.baseline_rtt_ms - TOL:
        why.append(f"baseline_frozen={st.base:.1f}ms")
    if good_share is not None:
        why.append(f"good_share={good_share}%")
    if hold is not None:
        why.append(hold)
    if severe_share is not None:
        # The severe rule decided: its share and its line are the decision's.
        return Verdict(decision, severe_share, q.severe_share_pct, capped, why, sustained)
    return Verdict(decision, score, threshold, capped, why, sustained)


def kept_s(q: Quality) -> float:
    """How long the window keeps a measured sample: the longest of the three windows."""
    return max(q.window_s, q.recovery_window_s, q.severe_window_s)


def _count(flags: list[int], first: int, flag: int) -> int:
    """How many of ``flags[first:]`` have ``flag``."""
    n = 0
    for f in flags[first:]:
        if f & flag:
            n += 1
    return n


def _oldest(times: list[float], flags: list[int], first: int, flag: int) -> float:
    """The time of the first of ``flags[first:]`` with ``flag`` (there must be one)."""
    i = first
    while not flags[i] & flag:
        i += 1
    return times[i]


def _harm_here(q: Quality, st: QualityState, alternate, cutoff: float, n_lost: int, n: int, t: float) -> str | None:
    """Rule 8 with the primary's side from the steering window (after ``cutoff``: ``n``
    samples, ``n_lost`` of them lost)."""
    return harm(q, alternate, _window_rtt(st.win_t, st.win_rtt, cutoff), n_lost * 100.0 / n if n else 0.0, t)


def _window_rtt(wt: list[float], wr: list[float], cutoff: float) -> float | None:
    """The median absolute RTT of the steering window (the primary's side of rule 8)."""
    return median([r for x, r in zip(wt, wr) if x > cutoff and r >= 0.0])


def harm(
    q: Quality, alternate, primary_rtt: float | None, primary_lost: float, t: float,
) -> str | None:
    """The do-no-harm check (rule 8): why steering onto the alternate would hurt, or None."""
    if alternate is None:
        return None
    last = alternate[3]
    if last is None or t - last > q.alternate_stale_s + TOL or alternate[0] is None:
        return ALTERNATE_STALE
    alt_rtt, alt_lost = alternate[1], alternate[2]
    if alt_lost >= q.alternate_down_loss_pct - TOL:
        return ALTERNATE_DOWN
    if alt_rtt is not None and primary_rtt is not None and alt_rtt > primary_rtt + q.alternate_margin_ms + TOL:
        return ALTERNATE_WORSE
    if alt_lost > primary_lost + q.alternate_loss_margin_pct + TOL:
        return ALTERNATE_WORSE
    return None
