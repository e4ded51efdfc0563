"""``wanctl-report``: the rollout questions answered from the decision log.

Reads the logger's ``decisions.jsonl`` (and, with ``--trace``, a telemetry
trace) in one streaming pass each and reports: steering episodes per policy
(count, total and median time steered), decisions per day, flap-brake
activations, the confidence distribution, timer expiries, and every pair of
policies that appear in the log (``quality``, ``confidence`` = Phase 2B,
``hysteresis`` = Phase 2A; driving and shadows alike) against each other.

What the decision log cannot tell is said, not guessed:

- Timer *resets* (a degrade or recovery run cleared before it completed)
  leave no decision, so they are not derivable here; the scorer's
  ``wanctl_timer_resets_total`` metric counts them live.
- Flap-brake activations: every decision carries the confidence policy's
  ``flap_penalty`` flag at its sample, but a penalty that starts and expires
  between two decisions of its WAN never shows in it (SPEC 5.5: a penalty
  that a decision starts shows from the next sample on).  So the report
  replays the flap-brake rule (``scorer.flap``, the scorer's own
  implementation) over the confidence policy's toggles (its decisions and,
  when it drives, the fallback's), checked against the flag of every
  confidence and hysteresis decision, with the ``scorer.flap`` settings of
  ``--config`` (defaults otherwise) and checks the replay against the flag of
  every logged decision.  When all agree, the replayed count is reported
  (``counted_by: replay``); when any disagrees (other flap settings, a clock
  restart, an edited log), the count falls back to the flag turning from
  false to true between consecutive decisions of a WAN (``counted_by:
  flag``), a lower bound, and the report says so.
- Episodes are split by policy; the fallback's decisions (``fallback: true``)
  belong to the driving policy's episodes (the policy of the last driving
  non-fallback decision; confidence before any), since they are applied to its
  state.  An episode still open at the end is counted up to the last
  decision's ``t``; ``t`` running backwards (a new monotonic clock) makes the
  length of an episode that spans it unknown: it is counted but not timed.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional

import msgspec
import typer

from runtime import cli

from proto.config import Flap, config_or_exit
from proto.messages import DEGRADED, DISABLE, ENABLE, GOOD
from scorer.flap import record_toggle

QUALITY = "quality"
CONFIDENCE = "confidence"
HYSTERESIS = "hysteresis"
POLICIES = (QUALITY, CONFIDENCE, HYSTERESIS)
PHASE = {QUALITY: "quality", CONFIDENCE: "Phase 2B", HYSTERESIS: "Phase 2A"}
HISTOGRAM_EDGES = list(range(0, 101, 10))
TOLERANCE_S = 1e-6  # SPEC 5: every comparison of times
MAX_SHOWN_PROBLEMS = 20  # malformed lines printed one by one; the rest only counted
PLOT_POINTS = 4000  # per WAN and series, after max-pooling


class DecisionLine(msgspec.Struct, kw_only=True):
    """The fields of a decision line the report uses; the others are ignored."""

    kind: Literal["decision"]
    seq: int
    wan: str
    t: float
    policy: Literal["quality", "confidence", "hysteresis"]
    driving: bool
    decision: Literal["ENABLE_STEERING", "DISABLE_STEERING"]
    state: Literal["DEGRADED", "GOOD"]
    confidence: Annotated[int, msgspec.Meta(ge=0, le=100)]
    wall: Optional[float] = None
    fallback: bool = False
    threshold: Optional[int] = None
    flap_penalty: bool = False
    telemetry_seq: Optional[int] = None
    sustained_s: Optional[float] = None


class TraceLine(msgspec.Struct, kw_only=True):
    """The fields of a telemetry line the report uses."""

    kind: Literal["telemetry"]
    wan: str
    t: float
    wall: float
    stream: str
    rtt_ms: Optional[float] = None
    baseline_rtt_ms: Optional[float] = None


WALL_MIN = 0.0  # 1970-01-01
WALL_MAX = 253402300799.0  # 9999-12-31 23:59:59 UTC, the last second a datetime can show


def _wall_ok(wall: float) -> bool:
    """A wall clock time the report can show as a date (a finite 1e308 cannot)."""
    return math.isfinite(wall) and WALL_MIN <= wall <= WALL_MAX


_decision_decoder = msgspec.json.Decoder(DecisionLine)
_trace_decoder = msgspec.json.Decoder(TraceLine)
_any_decoder = msgspec.json.Decoder()


@dataclass
class Episode:
    wan: str
    policy: str
    start_t: float
    start_wall: Optional[float]
    start_seq: int
    end_t: Optional[float] = None
    end_wall: Optional[float] = None

    def length(self, last_t: float) -> Optional[float]:
        """Seconds steered (open: up to ``last_t``); None when ``t`` restarted in between."""
        end = self.end_t if self.end_t is not None else last_t
        return end - self.start_t if end >= self.start_t else None


@dataclass
class LineProblems:
    """Malformed lines of one file: all counted, the first few kept for stderr."""

    name: str
    count: int = 0
    shown: list[str] = field(default_factory=list)

    def add(self, lineno: int, reason: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_SHOWN_PROBLEMS:
            self.shown.append(f"{self.name}:{lineno}: {reason}")

    def write(self, stream: Any) -> None:
        for line in self.shown:
            print(line, file=stream)
        if self.count > len(self.shown):
            print(f"{self.name}: ... and {self.count - len(self.shown)} more malformed lines", file=stream)
        if self.count:
            print(f"{self.name}: {self.count} malformed lines skipped", file=stream)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield lineno, line


def _reject_reason(line: bytes, error: Exception, kind: str) -> Optional[str]:
    """Why a line failed to decode, or None when it is a line of another kind (skipped silently)."""
    try:
        obj = _any_decoder.decode(line)
    except msgspec.DecodeError:
        return "not JSON"
    if not isinstance(obj, dict):
        return f"not a JSON object, got {type(obj).__name__}"
    if obj.get("kind") not in (None, kind):
        return None
    return str(error)


class FlapBrakeReplay:
    """SPEC 5.5's flap brake run over one WAN's confidence-policy toggles (times only)."""

    def __init__(self, flap: Flap):
        self.flap = flap
        self.toggles: list[float] = []
        self.deadline: Optional[float] = None
        self.started_t: Optional[float] = None
        self.activations = 0
        self.mismatches = 0
        self.last_t: Optional[float] = None

    def check(self, t: float, logged: bool) -> None:
        """Compare a decision's logged flag with the replayed penalty at its sample."""
        started_here = self.started_t is not None and abs(t - self.started_t) <= TOLERANCE_S
        active = self.deadline is not None and t < self.deadline - TOLERANCE_S and not started_here
        if active != logged:
            self.mismatches += 1

    def toggle(self, t: float) -> None:
        f = self.flap
        if not f.enabled:
            return
        if self.last_t is not None and t < self.last_t:
            # A new monotonic clock: the scorer shifts its deadlines, the log has no stream to do so.
            self.toggles.clear()
            self.deadline = None
        self.last_t = t
        deadline = record_toggle(self.toggles, t, f.window_s, f.max_toggles, self.deadline, f.penalty_s)
        if deadline is not None:
            self.deadline = deadline
            self.started_t = t
            self.activations += 1


class MaxPool:
    """A bounded (x, y) series: adjacent points merge (keeping the larger y) when it gets too long."""

    def __init__(self, limit: int = PLOT_POINTS):
        self.limit = limit
        self.width = 1
        self.points: list[tuple[float, float]] = []
        self._pending: Optional[tuple[float, float]] = None
        self._pending_n = 0

    def add(self, x: float, y: float) -> None:
        if self._pending is None:
            self._pending = (x, y)
        elif y > self._pending[1]:
            self._pending = (self._pending[0], y)
        self._pending_n += 1
        if self._pending_n >= self.width:
            self.points.append(self._pending)
            self._pending, self._pending_n = None, 0
            if len(self.points) >= 2 * self.limit:
                self.points = [
                    (a[0], max(a[1], b[1])) for a, b in zip(self.points[0::2], self.points[1::2])
                ]
                self.width *= 2

    def series(self) -> list[tuple[float, float]]:
        return self.points + ([self._pending] if self._pending is not None else [])


class DecisionLog:
    """Everything the report needs from one streaming pass over the decision log."""

    def __init__(self, flap: Flap):
        self.flap = flap
        self.problems = LineProblems("decisions")
        self.decisions = 0
        self.other_kinds = 0
        self.by_policy: Counter[str] = Counter()
        self.by_direction: Counter[tuple[str, str]] = Counter()
        self.driving: dict[str, set[bool]] = defaultdict(set)
        self.fallbacks = 0
        self.fallback_by_direction: Counter[str] = Counter()
        self.per_day: Counter[str] = Counter()
        self.histogram = [0] * 10
        self.first_t: Optional[float] = None
        self.last_t: Optional[float] = None
        self.first_wall: Optional[float] = None
        self.last_wall: Optional[float] = None
        self.last_seq: Optional[int] = None
        self.seq_gaps = 0
        self.seq_missing = 0
        self.seq_backwards = 0
        self.clock_restarts = 0
        self.episodes: dict[str, list[Episode]] = {p: [] for p in POLICIES}
        self.open: dict[tuple[str, str], Episode] = {}
        self.unpaired_enables: Counter[str] = Counter()
        self.unpaired_disables: Counter[str] = Counter()
        self.penalty_flag: dict[str, bool] = {}
        self.penalty_onsets: Counter[str] = Counter()
        self.flap_replay: dict[str, FlapBrakeReplay] = {}
        self.driving_policy = CONFIDENCE
        self.wan_last_t: dict[str, float] = {}
        self.timeline: dict[str, list[DecisionLine]] = defaultdict(list)

    def read(self, path: Path) -> None:
        self.problems.name = str(path)
        for lineno, line in _lines(path):
            try:
                d = _decision_decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                reason = _reject_reason(line, error, "decision")
                if reason is None:
                    self.other_kinds += 1
                else:
                    self.problems.add(lineno, reason)
                continue
            reason = self._inconsistency(d)
            if reason:
                self.problems.add(lineno, reason)
                continue
            self.add(d)

    @staticmethod
    def _inconsistency(d: DecisionLine) -> Optional[str]:
        if not math.isfinite(d.t):
            return f"t must be finite, got {d.t}"
        if d.wall is not None and not _wall_ok(d.wall):
            return f"wall must be a finite time between {WALL_MIN:g} and {WALL_MAX:g} (s since 1970), got {d.wall}"
        expected = DEGRADED if d.decision == ENABLE else GOOD
        if d.state != expected:
            return f"decision {d.decision} must leave state {expected}, got {d.state}"
        if d.fallback and not (d.policy == HYSTERESIS and d.driving):
            return "a fallback decision must have policy hysteresis and driving true"
        return None

    def add(self, d: DecisionLine) -> None:
        self.decisions += 1
        if d.driving and not d.fallback:
            self.driving_policy = d.policy
        policy = self.driving_policy if d.fallback else d.policy  # the fallback decides for the driving policy
        self.by_policy[d.policy] += 1
        self.by_direction[(policy, d.decision)] += 1
        if d.fallback:
            self.fallbacks += 1
            self.fallback_by_direction[d.decision] += 1
        else:
            self.driving[d.policy].add(d.driving)
        if self.last_seq is not None:
            if d.seq <= self.last_seq:
                self.seq_backwards += 1
            elif d.seq > self.last_seq + 1:
                self.seq_gaps += 1
                self.seq_missing += d.seq - self.last_seq - 1
        self.last_seq = d.seq if self.last_seq is None else max(self.last_seq, d.seq)
        if d.wan in self.wan_last_t and d.t < self.wan_last_t[d.wan] - TOLERANCE_S:
            self.clock_restarts += 1
        self.wan_last_t[d.wan] = d.t
        if self.first_t is None:
            self.first_t = d.t
        self.last_t = d.t
        if d.wall is not None:
            self.first_wall = d.wall if self.first_wall is None else self.first_wall
            self.last_wall = d.wall
            self.per_day[datetime.fromtimestamp(d.wall, timezone.utc).strftime("%Y-%m-%d")] += 1
        else:
            self.per_day["unknown"] += 1
        self.histogram[min(d.confidence // 10, 9)] += 1
        self.timeline[d.wan].append(d)

        # Episodes of this policy on this WAN.
        key = (d.wan, policy)
        if d.decision == ENABLE:
            if key in self.open:
                self.unpaired_enables[policy] += 1
            else:
                episode = Episode(d.wan, policy, d.t, d.wall, d.seq)
                self.open[key] = episode
                self.episodes[policy].append(episode)
        else:
            episode = self.open.pop(key, None)
            if episode is None:
                self.unpaired_disables[policy] += 1
            else:
                episode.end_t, episode.end_wall = d.t, d.wall

        # Flap brake: the flag as logged, and the rule replayed over the toggles.
        if d.policy != QUALITY:
            was = self.penalty_flag.get(d.wan, False)
            if d.flap_penalty and not was:
                self.penalty_onsets[d.wan] += 1
            self.penalty_flag[d.wan] = d.flap_penalty
        replay = self.flap_replay.setdefault(d.wan, FlapBrakeReplay(self.flap))
        if d.policy != QUALITY:  # a quality decision's flag is its own ENABLE cap
            replay.check(d.t, d.flap_penalty)
        if policy == CONFIDENCE:
            replay.toggle(d.t)

    def flap_brake(self) -> dict[str, Any]:
        """Activations per WAN, by replay when it agrees with every logged flag, else by the flag."""
        mismatches = sum(r.mismatches for r in self.flap_replay.values())
        replayed = {wan: r.activations for wan, r in sorted(self.flap_replay.items())}
        onsets = {wan: self.penalty_onsets[wan] for wan in sorted(self.flap_replay)}
        by_replay = mismatches == 0 and self.clock_restarts == 0
        f = self.flap
        return {
            "activations": sum((replayed if by_replay else onsets).values()),
            "counted_by": "replay" if by_replay else "flag",
            "per_wan": replayed if by_replay else onsets,
            "replayed": sum(replayed.values()),
            "flag_onsets": sum(onsets.values()),
            "mismatches": mismatches,
            "replayed_with": {
                "enabled": f.enabled,
                "window_s": f.window_s,
                "max_toggles": f.max_toggles,
                "penalty_s": f.penalty_s,
            },
        }

    # --- derived figures -------------------------------------------------------

    def intervals(self, policy: str, wan: str) -> list[tuple[float, float, bool]]:
        """The timed steering intervals (start, end, still open) of one policy on one WAN, in order."""
        out = []
        for e in self.episodes[policy]:
            if e.wan == wan and e.length(self.last_t) is not None:
                is_open = e.end_t is None
                out.append((e.start_t, self.last_t if is_open else e.end_t, is_open))
        return out

    def episode_summary(self, policy: str) -> dict[str, Any]:
        episodes = self.episodes[policy]
        timed = [x for x in (e.length(self.last_t) for e in episodes) if x is not None]
        closed = [e.length(self.last_t) for e in episodes if e.end_t is not None]
        closed = [x for x in closed if x is not None]
        enables = self.by_direction[(policy, ENABLE)]
        disables = self.by_direction[(policy, DISABLE)]
        driving = self.driving.get(policy, set())
        return {
            "count": len(episodes),
            "steered_s": round(sum(timed), 6),
            "median_s": round(statistics.median(closed), 6) if closed else None,
            "longest_s": round(max(closed), 6) if closed else None,
            "open_at_end": sum(1 for e in episodes if e.end_t is None),
            "untimed": len(episodes) - len(timed),
            "unpaired_enables": self.unpaired_enables[policy],
            "unpaired_disables": self.unpaired_disables[policy],
            "decisions": {"enable": enables, "disable": disables},
            "driving": None if not driving else (next(iter(driving)) if len(driving) == 1 else "mixed"),
        }


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def present_policies(log: DecisionLog) -> list[str]:
    """The policies with decisions in the log (the fallback's count for the driving policy)."""
    return [p for p in POLICIES if log.episodes[p] or log.by_policy[p]
            or (p == log.driving_policy and log.fallbacks)]


def compare_policies(log: DecisionLog, spans: dict[str, tuple[float, float]],
                     a: str = CONFIDENCE, b: str = HYSTERESIS) -> dict[str, Any]:
    """Policy ``a`` against policy ``b`` on every WAN both have decisions for.

    Episodes overlap in time or they do not: an ``a`` episode overlapping at least one
    ``b`` episode is "both"; its start offset is a's start minus the first overlapping b
    start (negative: a steered earlier), its end offset a's end minus the last
    overlapping b end (when both ended).  Time agreement is the share of the span in
    which both policies were in the same state (both assumed GOOD before the first
    decision).  Keys name the policies: ``only_<a>``, ``<a>_earlier``, ...
    """
    present = present_policies(log)
    if a not in present or b not in present:
        return {
            "derivable": False,
            "policies": [a, b],
            "reason": "the log holds decisions of "
            + (" and ".join(present) if present else "no policy")
            + f" only: run the scorer with scorer.shadow: true to record both {a} and {b}",
        }
    wans = sorted({e.wan for p in (a, b) for e in log.episodes[p]} | set(spans))
    both = only_2b = only_2a = 0
    start_offsets: list[float] = []
    end_offsets: list[float] = []
    differences: list[dict[str, Any]] = []
    span_total = disagree_total = 0.0
    for wan in wans:
        # The decisions' time range, widened to the trace's when there is one; an episode
        # still open at the last decision lasts to the end of that range.
        span = (log.first_t, log.last_t)
        if wan in spans:
            span = (min(span[0], spans[wan][0]), max(span[1], spans[wan][1]))
        b_list = sorted((x[0], span[1] if x[2] else x[1], x[2]) for x in log.intervals(a, wan))
        a_list = sorted((x[0], span[1] if x[2] else x[1], x[2]) for x in log.intervals(b, wan))
        matched_a: set[int] = set()
        overlap = 0.0
        j = 0  # a policy's episodes on a WAN are disjoint, so one sweep finds every overlap
        for eb in b_list:
            while j < len(a_list) and a_list[j][1] < eb[0]:
                j += 1
            hits = []
            k = j
            while k < len(a_list) and a_list[k][0] <= eb[1]:
                hits.append(k)
                overlap += _overlap(a_list[k], eb)
                k += 1
            if not hits:
                only_2b += 1
                differences.append({"wan": wan, "kind": f"only_{a}", "start_t": eb[0], "length_s": eb[1] - eb[0]})
                continue
            both += 1
            matched_a.update(hits)
            first, last = a_list[hits[0]], a_list[hits[-1]]
            start = eb[0] - first[0]
            start_offsets.append(start)
            end = None if eb[2] or last[2] else eb[1] - last[1]
            if end is not None:
                end_offsets.append(end)
            if abs(start) > TOLERANCE_S or (end is not None and abs(end) > TOLERANCE_S) or len(hits) > 1:
                differences.append(
                    {
                        "wan": wan,
                        "kind": "both",
                        "start_t": eb[0],
                        "start_offset_s": round(start, 6),
                        "end_offset_s": None if end is None else round(end, 6),
                        f"{b}_episodes": len(hits),
                    }
                )
        for i, ea in enumerate(a_list):
            if i not in matched_a:
                only_2a += 1
                differences.append({"wan": wan, "kind": f"only_{b}", "start_t": ea[0], "length_s": ea[1] - ea[0]})
        length = span[1] - span[0]
        if length > 0:
            steered_b = sum(x[1] - x[0] for x in b_list)
            steered_a = sum(x[1] - x[0] for x in a_list)
            span_total += length
            disagree_total += steered_a + steered_b - 2 * overlap
    differences.sort(key=lambda x: (x["start_t"], x["wan"]))

    def _median(values: list[float]) -> Optional[float]:
        return round(statistics.median(values), 6) if values else None

    return {
        "derivable": True,
        "policies": [a, b],
        "episodes": {
            a: len(log.episodes[a]),
            b: len(log.episodes[b]),
        },
        "both": both,
        f"only_{a}": only_2b,
        f"only_{b}": only_2a,
        "time_agreement_pct": round(100 * (1 - disagree_total / span_total), 3) if span_total > 0 else None,
        "span_s": round(span_total, 6),
        "start_offset_s": {
            "median": _median(start_offsets),
            f"{a}_earlier": sum(1 for x in start_offsets if x < -TOLERANCE_S),
            f"{a}_later": sum(1 for x in start_offsets if x > TOLERANCE_S),
            "same": sum(1 for x in start_offsets if abs(x) <= TOLERANCE_S),
        },
        "end_offset_s": {
            "median": _median(end_offsets),
            f"{a}_earlier": sum(1 for x in end_offsets if x < -TOLERANCE_S),
            f"{a}_later": sum(1 for x in end_offsets if x > TOLERANCE_S),
            "same": sum(1 for x in end_offsets if abs(x) <= TOLERANCE_S),
        },
        "differences": differences,
    }


class Trace:
    """Per-WAN facts from one streaming pass over a telemetry trace, judged against the episodes."""

    def __init__(self, log: DecisionLog, congested_ms: float):
        self.log = log
        self.congested_ms = congested_ms
        self.problems = LineProblems("trace")
        self.samples = 0
        self.unmeasured = 0
        self.other_kinds = 0
        self.spans: dict[str, tuple[float, float]] = {}
        self.rtt_delta: dict[str, MaxPool] = defaultdict(MaxPool)
        self._starts: dict[tuple[str, str], list[float]] = {}
        self._intervals: dict[tuple[str, str], list[tuple[float, float, bool]]] = {}
        # per policy: [samples steered, sum of rtt_delta steered, congested samples, congested steered]
        self.by_policy: dict[str, list[float]] = {p: [0, 0.0, 0, 0] for p in POLICIES}
        self.measured = 0
        self.delta_sum = 0.0

    def _steering(self, policy: str, wan: str, t: float) -> bool:
        key = (wan, policy)
        if key not in self._intervals:
            self._intervals[key] = self.log.intervals(policy, wan)
            self._starts[key] = [x[0] for x in self._intervals[key]]
        i = bisect.bisect_right(self._starts[key], t) - 1
        # An episode still open at the last decision goes on to the end of the trace.
        return i >= 0 and (t < self._intervals[key][i][1] or self._intervals[key][i][2])

    def read(self, path: Path) -> None:
        self.problems.name = str(path)
        for lineno, line in _lines(path):
            try:
                s = _trace_decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                reason = _reject_reason(line, error, "telemetry")
                if reason is None:
                    self.other_kinds += 1
                else:
                    self.problems.add(lineno, reason)
                continue
            if not (math.isfinite(s.t) and _wall_ok(s.wall)):
                self.problems.add(lineno, f"t must be finite and wall a finite time between {WALL_MIN:g} and "
                                          f"{WALL_MAX:g} (s since 1970), got t={s.t} wall={s.wall}")
                continue
            self.samples += 1
            first = self.spans.get(s.wan, (s.t, s.t))[0]
            self.spans[s.wan] = (first, s.t)
            if s.rtt_ms is None or s.baseline_rtt_ms is None or not (
                math.isfinite(s.rtt_ms) and math.isfinite(s.baseline_rtt_ms)
            ):
                self.unmeasured += 1
                continue
            delta = max(0.0, s.rtt_ms - s.baseline_rtt_ms)
            self.rtt_delta[s.wan].add(s.wall, delta)
            self.measured += 1
            self.delta_sum += delta
            congested = delta > self.congested_ms
            for policy in POLICIES:
                figures = self.by_policy[policy]
                if self._steering(policy, s.wan, s.t):
                    figures[0] += 1
                    figures[1] += delta
                    figures[3] += congested
                figures[2] += congested

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "samples": self.samples,
            "unmeasured_samples": self.unmeasured,
            "mean_rtt_delta_ms": round(self.delta_sum / self.measured, 3) if self.measured else None,
            "congested_above_ms": self.congested_ms,
            "policies": {},
        }
        for policy, (steered, delta_sum, congested, covered) in self.by_policy.items():
            out["policies"][policy] = {
                "samples_steered": steered,
                "mean_rtt_delta_steered_ms": round(delta_sum / steered, 3) if steered else None,
                "congested_samples": congested,
                "congested_samples_steered": covered,
                "congested_steered_pct": round(100 * covered / congested, 3) if congested else None,
            }
        return out


def build_report(log: DecisionLog, trace: Optional[Trace]) -> dict[str, Any]:
    flap = log.flap_brake()
    conf = log.by_direction
    report: dict[str, Any] = {
        "decisions": log.decisions,
        "malformed_lines": log.problems.count,
        "other_kind_lines": log.other_kinds,
        "period": {
            "first_t": log.first_t,
            "last_t": log.last_t,
            "first_wall": log.first_wall,
            "last_wall": log.last_wall,
        },
        "decisions_by_policy": {p: log.by_policy[p] for p in POLICIES},
        "fallback_decisions": log.fallbacks,
        "decisions_per_day": dict(sorted(log.per_day.items())),
        "episodes": {p: log.episode_summary(p) for p in POLICIES},
        "flap_brake_activations": flap["activations"],
        "flap_brake": flap,
        "confidence_histogram": log.histogram,
        "confidence_histogram_edges": HISTOGRAM_EDGES,
        "timers": {
            "degrade_expiries": conf[(CONFIDENCE, ENABLE)] - log.fallback_by_direction[ENABLE],
            "recovery_expiries": conf[(CONFIDENCE, DISABLE)] - log.fallback_by_direction[DISABLE],
            "hold_down_expiries_at_least": conf[(CONFIDENCE, DISABLE)],
            "hysteresis_red_counts_completed": conf[(HYSTERESIS, ENABLE)],
            "hysteresis_green_counts_completed": conf[(HYSTERESIS, DISABLE)],
            "resets": None,
            "resets_note": "not derivable from decisions: a cleared run emits none; "
            "see the scorer's wanctl_timer_resets_total metric",
        },
        "seq": {"gaps": log.seq_gaps, "missing": log.seq_missing, "not_increasing": log.seq_backwards},
        "clock_restarts": log.clock_restarts,
        "comparison": compare_policies(log, trace.spans if trace else {}),
        "comparisons": {f"{a}_vs_{b}": compare_policies(log, trace.spans if trace else {}, a, b)
                        for i, a in enumerate(present_policies(log))
                        for b in present_policies(log)[i + 1:]},
    }
    if trace is not None:
        report["trace"] = trace.summary()
        report["trace"]["malformed_lines"] = trace.problems.count
    return report


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s >= 3600:
        return f"{sign}{s / 3600:.1f} h"
    if s >= 60:
        return f"{sign}{s / 60:.1f} min"
    return f"{sign}{s:.1f} s"


def _label(policy: str) -> str:
    return policy if PHASE[policy] == policy else f"{PHASE[policy]} ({policy})"


def _relative(offset: Optional[float]) -> str:
    """An offset of one policy against another, in words."""
    if offset is None:
        return "- (still steering at the end)"
    if abs(offset) <= TOLERANCE_S:
        return "at the same time"
    return f"{_duration(abs(offset))} {'earlier' if offset < 0 else 'later'}"


def _when(wall: Optional[float]) -> str:
    if wall is None:
        return "?"
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_text(report: dict[str, Any], log: DecisionLog) -> str:
    out: list[str] = []
    p = report["period"]
    out.append(f"Decisions: {report['decisions']}  ({_when(p['first_wall'])} .. {_when(p['last_wall'])},"
               f" {_duration((p['last_t'] or 0) - (p['first_t'] or 0))} of t)")
    out.append("  by policy: " + ", ".join(f"{k} {v}" for k, v in report["decisions_by_policy"].items())
               + f"; fallback {report['fallback_decisions']}")
    if report["malformed_lines"]:
        out.append(f"  malformed lines skipped: {report['malformed_lines']} (listed on stderr)")
    seq = report["seq"]
    if seq["gaps"] or seq["not_increasing"]:
        out.append(f"  WARNING: decision seq has {seq['gaps']} gaps ({seq['missing']} decisions missing) and "
                   f"{seq['not_increasing']} non-increasing entries: the log is incomplete or was edited")
    if report["clock_restarts"]:
        out.append(f"  note: t ran backwards {report['clock_restarts']} times (new monotonic clock); "
                   "episodes spanning it are counted but not timed")
    out.append("")
    out.append("Steering episodes (an episode open at the end counts up to the last decision's t)")
    out.append(f"  {'policy':<34} {'episodes':>8} {'steered':>10} {'median':>10} {'longest':>10} {'open':>5}")
    for policy, e in report["episodes"].items():
        role = {True: "driving", False: "shadow", None: "absent", "mixed": "mixed"}[e["driving"]]
        out.append(f"  {policy + ' (' + PHASE[policy] + ', ' + role + ')':<34} {e['count']:>8} "
                   f"{_duration(e['steered_s']):>10} {_duration(e['median_s']):>10} "
                   f"{_duration(e['longest_s']):>10} {e['open_at_end']:>5}")
        if e["unpaired_enables"] or e["unpaired_disables"] or e["untimed"]:
            out.append(f"    anomalies: {e['unpaired_enables']} ENABLE while already steering, "
                       f"{e['unpaired_disables']} DISABLE with no open episode (began before the log), "
                       f"{e['untimed']} untimed (clock restart)")
    out.append("")
    out.append("Decisions per day (UTC, by wall clock)")
    for day, n in report["decisions_per_day"].items():
        out.append(f"  {day}  {n}")
    out.append("")
    fb = report["flap_brake"]
    w = fb["replayed_with"]
    rule = (f"window {w['window_s']:g} s, max_toggles {w['max_toggles']}, penalty {w['penalty_s']:g} s"
            if w["enabled"] else "flap brake disabled")
    if fb["counted_by"] == "replay":
        out.append(f"Flap-brake activations: {fb['activations']} (the flap rule replayed over the confidence "
                   f"toggles, {rule}; agrees with every logged flap_penalty)")
        if fb["flag_onsets"] != fb["activations"]:
            out.append(f"  only {fb['flag_onsets']} show as flap_penalty turning true: the others started and "
                       "expired between two decisions")
    else:
        out.append(f"Flap-brake activations: at least {fb['activations']} (flap_penalty turning true between "
                   "decisions of a WAN)")
        out.append(f"  the flap rule replayed with {rule} disagrees with {fb['mismatches']} logged flags"
                   + (" and t restarted" if report["clock_restarts"] else "")
                   + ": pass the scorer's --config for an exact count")
    out.append("")
    out.append("Confidence at decisions (one count per decision line)")
    hist = report["confidence_histogram"]
    peak = max(hist) or 1
    for i, n in enumerate(hist):
        hi = "100]" if i == 9 else f"{(i + 1) * 10:>3})"
        out.append(f"  [{i * 10:>2},{hi} {n:>7}  {'#' * round(40 * n / peak)}")
    out.append("")
    t = report["timers"]
    out.append("Timers (from decisions)")
    out.append(f"  confidence: degrade runs completed {t['degrade_expiries']}, recovery runs completed "
               f"{t['recovery_expiries']}, hold-downs run out at least {t['hold_down_expiries_at_least']}")
    out.append(f"  hysteresis: RED counts completed {t['hysteresis_red_counts_completed']}, GREEN counts completed "
               f"{t['hysteresis_green_counts_completed']}")
    out.append(f"  resets: {t['resets_note']}")
    out.append("")
    pairs = list(report["comparisons"].values()) or [report["comparison"]]
    for c in pairs:
        a, b = c["policies"]
        out.append(f"{_label(a)} vs {_label(b)}")
        if not c["derivable"]:
            out.append(f"  not derivable: {c['reason']}")
            continue
        out.append(f"  episodes: {a} {c['episodes'][a]}, {b} {c['episodes'][b]}; "
                   f"overlapping {c['both']}, only {a} {c[f'only_{a}']}, only {b} {c[f'only_{b}']}")
        if c["time_agreement_pct"] is not None:
            out.append(f"  same state {c['time_agreement_pct']:.2f}% of {_duration(c['span_s'])}")
        so, eo = c["start_offset_s"], c["end_offset_s"]
        out.append(f"  start: {a} earlier {so[f'{a}_earlier']}, later {so[f'{a}_later']}, "
                   f"same {so['same']}; median: {_relative(so['median'])}")
        out.append(f"  end:   {a} earlier {eo[f'{a}_earlier']}, later {eo[f'{a}_later']}, "
                   f"same {eo['same']}; median: {_relative(eo['median'])}")
        diffs = c["differences"]
        if diffs:
            out.append(f"  where they differ ({len(diffs)}" + (", first 20" if len(diffs) > 20 else "") + "):")
        for d in diffs[:20]:
            if d["kind"] == "both":
                out.append(f"    {d['wan']} t={d['start_t']:.1f}: both steered; {a} started "
                           f"{_relative(d['start_offset_s'])}, ended {_relative(d['end_offset_s'])}"
                           + (f", over {d[f'{b}_episodes']} {b} episodes" if d[f"{b}_episodes"] > 1 else ""))
            else:
                who = a if d["kind"] == f"only_{a}" else b
                out.append(f"    {d['wan']} t={d['start_t']:.1f}: only {who} steered, for {_duration(d['length_s'])}")
        out.append("")
    if "trace" in report:
        tr = report["trace"]
        out.append("")
        out.append(f"Trace: {tr['samples']} samples ({tr['unmeasured_samples']} without RTT), "
                   f"mean RTT delta {tr['mean_rtt_delta_ms']} ms")
        for policy, f in tr["policies"].items():
            out.append(f"  {policy}: steered {f['samples_steered']} samples (mean RTT delta "
                       f"{f['mean_rtt_delta_steered_ms']} ms); congested samples (> {tr['congested_above_ms']:g} ms) "
                       f"steered {f['congested_samples_steered']}/{f['congested_samples']}"
                       + (f" = {f['congested_steered_pct']:.1f}%" if f["congested_steered_pct"] is not None else ""))
    return "\n".join(out)


def plot_timeline(log: DecisionLog, trace: Optional[Trace], path: Path, max_wans: int = 4) -> None:
    """One panel set per WAN: confidence and threshold, both policies' states, RTT delta."""
    try:
        import matplotlib
    except ImportError:
        print("wanctl-report: --plot needs matplotlib, which is not installed: "
              "pip install 'wanctl[plot]' (or: pip install matplotlib)", file=sys.stderr)
        raise SystemExit(1) from None

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    wans = sorted(set(log.timeline) | (set(trace.spans) if trace else set()))[:max_wans] or ["(none)"]
    rows = 3 if trace is not None else 2
    fig, axes = plt.subplots(rows * len(wans), 1, figsize=(12, 2.6 * rows * len(wans)), sharex=True, squeeze=False)
    axes = axes[:, 0]

    def when(wall: Optional[float]) -> datetime:
        return datetime.fromtimestamp(wall or 0.0, timezone.utc)

    start_wall, end_wall = log.first_wall, log.last_wall
    if trace is not None:
        series = [s.series() for s in trace.rtt_delta.values() if s.series()]
        start_wall = min([x for x in [start_wall, *(s[0][0] for s in series)] if x is not None], default=None)
        end_wall = max([x for x in [end_wall, *(s[-1][0] for s in series)] if x is not None], default=None)
    for n, wan in enumerate(wans):
        ax_conf, ax_state = axes[rows * n], axes[rows * n + 1]
        decisions = [d for d in log.timeline.get(wan, []) if d.wall is not None]
        if decisions:
            ax_conf.plot([when(d.wall) for d in decisions], [d.confidence for d in decisions], "o",
                         markersize=3, label="confidence at decision")
            with_threshold = [d for d in decisions if d.threshold is not None]
            if with_threshold:
                ax_conf.step([when(d.wall) for d in with_threshold], [d.threshold for d in with_threshold],
                             where="post", color="tab:red", label="effective threshold")
        ax_conf.set_ylim(-5, 105)
        ax_conf.set_ylabel("score")
        ax_conf.set_title(f"{wan}")
        ax_conf.legend(loc="upper right", fontsize="small")
        for offset, policy in enumerate(POLICIES):
            xs: list[datetime] = [when(start_wall)]
            ys: list[float] = [0]
            for e in log.episodes[policy]:
                if e.wan != wan or e.start_wall is None:
                    continue
                stop = e.end_wall if e.end_t is not None else end_wall
                xs += [when(e.start_wall), when(e.start_wall), when(stop), when(stop)]
                ys += [0, 1, 1, 0]
            if log.by_policy[policy] or (policy == CONFIDENCE and log.fallbacks):
                xs.append(when(end_wall))
                ys.append(ys[-1])
                ax_state.plot(xs, [y * 0.8 + offset for y in ys], label=f"{policy} ({PHASE[policy]})")
        ax_state.set_yticks([0, 0.8, 1, 1.8], ["GOOD", "DEGRADED", "GOOD", "DEGRADED"], fontsize="small")
        ax_state.set_ylim(-0.2, 2.0)
        ax_state.set_ylabel("steering")
        ax_state.legend(loc="upper right", fontsize="small")
        if trace is not None:
            ax_rtt = axes[rows * n + 2]
            series = trace.rtt_delta[wan].series() if wan in trace.rtt_delta else []
            if series:
                ax_rtt.plot([when(x) for x, _ in series], [y for _, y in series], linewidth=0.7,
                            label="RTT delta (max per point)")
                ax_rtt.legend(loc="upper right", fontsize="small")
            ax_rtt.set_ylabel("RTT delta ms")
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("time (UTC)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


app = cli.app(help=__doc__)


@app.command(cls=cli.Command)
def report(
    decisions: Path = typer.Argument(..., help="the logger's decisions.jsonl"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="telemetry JSONL recorded alongside"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a timeline PNG here"),
    json_output: bool = typer.Option(False, "--json", help="print one JSON object instead of text"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="the scorer's wanctl.yaml (flap settings, congestion bound); defaults otherwise"
    ),
    version: bool = cli.version_option(),
) -> None:
    """Episodes, decisions per day, flap brake, confidence, and Phase 2B vs 2A."""
    cfg = config_or_exit("wanctl-report", config)
    log = DecisionLog(cfg.scorer.flap)
    try:
        log.read(decisions)
        tr = None
        if trace is not None:
            tr = Trace(log, cfg.scorer.confidence.rtt_delta_high_ms)
            tr.read(trace)
    except OSError as error:
        print(f"wanctl-report: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        raise typer.Exit(1) from None
    log.problems.write(sys.stderr)
    if tr is not None:
        tr.problems.write(sys.stderr)
    result = build_report(log, tr)
    if plot is not None:
        plot_timeline(log, tr, plot)
        result["plot"] = str(plot)
    if json_output:
        print(json.dumps(result))
    else:
        print(format_text(result, log))
        if plot is not None:
            print(f"\nTimeline written to {plot}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
