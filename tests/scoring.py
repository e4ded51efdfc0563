"""Telemetry builders for the scorer tests: healthy and congested samples at any cadence."""

from __future__ import annotations

from proto.config import Scorer, parse_config
from proto.messages import Telemetry
from scorer.engine import Engine

BASE_T = 1000.0
WALL_OFFSET = 1_700_000_000.0


def scorer_config(**sections) -> Scorer:
    """A validated scorer section from nested dicts, e.g. scorer_config(shadow=False).

    The Phase 2B/2A tests run those two policies alone: without a ``policy`` the
    confidence policy drives, and ``shadow: true`` (or none) means the other of the two,
    the seed's meaning.  Name ``quality`` (as the policy or in a shadow list) to run it.
    """
    sections.setdefault("policy", "confidence")
    policy = sections["policy"]
    if policy != "quality" and sections.get("shadow", True) is True:
        sections["shadow"] = ["hysteresis" if policy == "confidence" else "confidence"]
    return parse_config({"scorer": sections}).scorer


class Feed:
    """Builds samples for one or more WANs with increasing ``t`` and ``seq``."""

    def __init__(self, wan: str = "wan1", stream: str = "boot-a", t: float = BASE_T, wall_offset: float = WALL_OFFSET):
        self.wan = wan
        self.stream = stream
        self.t = t
        self.wall_offset = wall_offset
        self.seq = 0

    def sample(self, **fields) -> Telemetry:
        self.seq += 1
        values = dict(
            wan=self.wan, seq=self.seq, stream=self.stream, t=self.t, wall=self.t + self.wall_offset,
            rtt_ms=22.0, baseline_rtt_ms=20.0, drops_per_sec=0.0, queue_depth_pct=1.0,
        )
        values.update(fields)
        return Telemetry(**values)

    def run(self, n: int, dt: float, **fields) -> list[Telemetry]:
        """``n`` samples ``dt`` apart, the first at the current ``t``."""
        out = []
        for _ in range(n):
            out.append(self.sample(**fields))
            self.t += dt
        return out

    def seconds(self, duration: float, dt: float, **fields) -> list[Telemetry]:
        """Samples covering ``duration`` seconds at cadence ``dt`` (both ends' first included)."""
        return self.run(int(round(duration / dt)), dt, **fields)


# A congested sample that scores exactly 60 with the default weights once the
# queue history is two deep: RED (50) + queue_high_sustained (10).
RED60 = dict(cake_state="RED", rtt_ms=30.0, queue_depth_pct=60.0, drops_per_sec=0.0)
# A clean GREEN sample: score 0 and recovery-eligible.
GREEN = dict(cake_state="GREEN", rtt_ms=22.0, queue_depth_pct=1.0, drops_per_sec=0.0)
# Heavy congestion judged by the engine itself (no override): RED, severe RTT, drops and queue.
CONGESTED = dict(rtt_ms=170.0, drops_per_sec=8.0, queue_depth_pct=80.0)


def decide(engine: Engine, samples) -> list:
    out = []
    for s in samples:
        out.extend(engine.process(s).decisions)
    return out
