"""How long wanctl-report takes over a month of decisions and a long telemetry trace.

Writes synthetic files to a temporary directory: 30 days of decisions for two
WANs with both policies (an episode every ~20 minutes, so ~17,000 decisions),
and a telemetry trace at 0.5 s cadence for both WANs (one day by default;
``--trace-hours`` to change).  Prints the time of each phase and the rates.

    .venv/bin/python bench/bench_report.py [--trace-hours 24] [--days 30]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report.report import DecisionLog, Trace, build_report, plot_timeline  # noqa: E402
from proto.config import load_config  # noqa: E402

WALL0 = 1_700_000_000.0
T0 = 1000.0


def write_decisions(path: Path, days: int, rng: random.Random) -> list[tuple[str, float, float]]:
    """Returns the congestion episodes (wan, start, end) in t."""
    episodes = []
    rows = []
    for wan in ("wan1", "wan2"):
        t = T0
        while t < T0 + days * 86400:
            t += rng.uniform(300, 2100)
            length = rng.uniform(40, 600)
            episodes.append((wan, t, t + length))
            rows.append((t + 1.0, wan, "hysteresis", "ENABLE_STEERING", 90))
            rows.append((t + 2.0, wan, "confidence", "ENABLE_STEERING", 85))
            rows.append((t + length + 3.0, wan, "confidence", "DISABLE_STEERING", 0))
            rows.append((t + length + 7.5, wan, "hysteresis", "DISABLE_STEERING", 0))
            t += length + 10
    rows.sort()
    with path.open("w") as f:
        for seq, (t, wan, policy, decision, confidence) in enumerate(rows, 1):
            f.write(json.dumps({
                "kind": "decision", "seq": seq, "wan": wan, "t": t, "wall": WALL0 + t, "telemetry_seq": seq,
                "policy": policy, "driving": policy == "confidence", "fallback": False, "decision": decision,
                "state": "DEGRADED" if decision == "ENABLE_STEERING" else "GOOD", "confidence": confidence,
                "threshold": 55, "flap_penalty": False, "contributors": ["RED"], "sustained_s": 2.0,
            }) + "\n")
    return episodes


def write_trace(path: Path, hours: float, episodes: list[tuple[str, float, float]], rng: random.Random) -> int:
    by_wan = {w: [(s, e) for x, s, e in episodes if x == w] for w in ("wan1", "wan2")}
    n = 0
    with path.open("w") as f:
        i = {w: 0 for w in by_wan}
        t = T0
        while t < T0 + hours * 3600:
            for wan, spans in by_wan.items():
                while i[wan] < len(spans) and spans[i[wan]][1] < t:
                    i[wan] += 1
                congested = i[wan] < len(spans) and spans[i[wan]][0] <= t
                n += 1
                f.write(json.dumps({
                    "kind": "telemetry", "v": 1, "source": "collector", "epoch": 1, "seq": n, "wan": wan,
                    "stream": "boot-a", "t": t, "wall": WALL0 + t,
                    "rtt_ms": 20.0 + (130.0 if congested else 2.0) + rng.random(), "baseline_rtt_ms": 20.0,
                    "drops_per_sec": 0.0, "queue_depth_pct": 1.0, "wan_zone": None, "cake_state": None,
                    "steering_active": None,
                }) + "\n")
            t += 0.5
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--trace-hours", type=float, default=24.0)
    args = parser.parse_args()
    rng = random.Random(5)
    cfg = load_config(None)
    with tempfile.TemporaryDirectory(prefix="wanctl-bench-") as tmp:
        decisions, trace = Path(tmp) / "decisions.jsonl", Path(tmp) / "trace.jsonl"
        episodes = write_decisions(decisions, args.days, rng)
        samples = write_trace(trace, args.trace_hours, episodes, rng)

        start = time.perf_counter()
        log = DecisionLog(cfg.scorer.flap)
        log.read(decisions)
        read_s = time.perf_counter() - start

        start = time.perf_counter()
        tr = Trace(log, cfg.scorer.confidence.rtt_delta_high_ms)
        tr.read(trace)
        trace_s = time.perf_counter() - start

        start = time.perf_counter()
        report = build_report(log, tr)
        build_s = time.perf_counter() - start

        start = time.perf_counter()
        plot_timeline(log, tr, Path(tmp) / "timeline.png")
        plot_s = time.perf_counter() - start

        mb = decisions.stat().st_size / 1e6
        print(f"decisions: {log.decisions} lines ({mb:.1f} MB, {args.days} days) read in {read_s:.2f} s "
              f"= {log.decisions / read_s:,.0f} lines/s")
        print(f"trace: {samples} samples ({trace.stat().st_size / 1e6:.0f} MB, {args.trace_hours:g} h x 2 WANs) "
              f"read in {trace_s:.2f} s = {samples / trace_s:,.0f} lines/s "
              f"(a 30-day trace: ~{30 * 24 / args.trace_hours * trace_s:.0f} s)")
        print(f"report built in {build_s:.2f} s; plot in {plot_s:.2f} s")
        c = report["comparison"]
        print(f"episodes: confidence {report['episodes']['confidence']['count']}, "
              f"hysteresis {report['episodes']['hysteresis']['count']}, time agreement {c['time_agreement_pct']}%")


if __name__ == "__main__":
    main()
