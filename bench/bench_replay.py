"""Benchmark: wanctl-replay end to end (decode, score with shadow on, encode).

Generates a telemetry trace with a realistic mix of healthy and congested
periods (two WANs, 0.5 s cadence, congestion episodes of varying strength,
flapping stretches, probe failures) and times the `wanctl-replay` console
script on it as a subprocess, printing samples per second and peak RSS,
and, interleaved run by run, a msgspec decode-only pass over the same trace
(the ceiling of any replay).  The same run on a trace a tenth as long shows
whether memory is flat in length.

Two configs: the default (quality driving, confidence and hysteresis as
shadows), also with ``--jobs 2`` (the two WANs in two processes), and
Phase 2B with the 2A shadow alone (``policy: confidence, shadow:
[hysteresis]``, the seed's default work).  ``--against OLD_TREE``
also times the engine of another checkout (e.g. a copy of an older commit,
run with this environment's interpreter and ``PYTHONPATH=OLD_TREE``) on the
same trace and 2B/2A work, interleaved run by run with this tree's, so both
see the same machine load.  Last, ``wanctl-sweep`` of 8 variants (2 jobs)
against 8 replays with the same settings, on a trace a fifth as long,
interleaved round by round (``--no-sweep`` skips it).

    .venv/bin/python bench/bench_replay.py [--samples 1000000] [--against /tmp/old-wanctl] [--no-sweep]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from proto.messages import Telemetry

TARGET = 250_000
RATIO_TARGET = 0.3  # replay end to end / msgspec decode-only over the same trace


def write_trace(path: Path, samples: int, seed: int = 7) -> None:
    """A two-WAN trace in the collector's own number formats, mostly healthy,
    with congestion episodes of varying strength every few minutes.

    As the collector produces them: RTT in whole microseconds (RouterOS ping
    durations), queue depth from whole packets of a 1000-packet queue, drops
    per second from whole-packet counter deltas over the measured poll
    interval, and a baseline that is an estimator's running value.
    """
    rng = random.Random(seed)
    enc = msgspec.json.Encoder()
    wans = ["wan1", "wan2"]
    episode = {w: (0.0, 0.0) for w in wans}  # (end t, strength)
    baseline = {w: 20.0 for w in wans}
    with path.open("wb") as out:
        buf = bytearray()
        for seq in range(1, samples + 1):
            wan = wans[seq % 2]
            t = 1000.0 + (seq // 2) * 0.5
            end, strength = episode[wan]
            if t >= end and rng.random() < 0.004:
                episode[wan] = (t + rng.uniform(5, 90), rng.choice([0.3, 0.6, 1.0, 1.5]))
                end, strength = episode[wan]
            congested = t < end
            rtt = round(max(1.0, 20 + rng.gauss(2, 1.5) + (strength * 120 + rng.gauss(0, 15) if congested else 0)), 3)
            baseline[wan] += 0.002 * (min(rtt, 25.0) - baseline[wan])
            elapsed = 0.5 + rng.uniform(-0.003, 0.003)
            dropped = max(0, round(strength * 4 + rng.gauss(0, 1))) if congested else 0
            packets = round(min(1000, max(0, strength * 600 + rng.gauss(0, 100)))) if congested else rng.randrange(40)
            sample = Telemetry(
                wan=wan, seq=seq, stream="boot-bench", t=t, wall=1.7e9 + t,
                rtt_ms=None if rng.random() < 0.002 else rtt,
                baseline_rtt_ms=baseline[wan],
                drops_per_sec=dropped / elapsed,
                queue_depth_pct=100.0 * packets / 1000,
            )
            enc.encode_into(sample, buf, len(buf))
            buf += b"\n"
            if len(buf) > 1 << 20:
                out.write(buf)
                buf.clear()
        out.write(buf)


def time_replay(trace: Path, config: Path, tree: Path | None = None, extra: tuple[str, ...] = ()) -> tuple[float, int, int]:
    """(seconds, peak RSS in KiB, decisions) of one replay subprocess (of ``tree``'s code when given);
    ``extra`` are more arguments (``--jobs 2``)."""
    if tree is None:
        command = [shutil.which("wanctl-replay", path=str(Path(sys.executable).parent))]
        env = None
    else:
        # This checkout is installed editable (a finder ahead of PYTHONPATH): drop it for the other tree.
        command = [sys.executable, "-c", (
            "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "sys.argv[0] = 'wanctl-replay'; import scorer.replay as r; "
            "assert r.__file__.startswith(sys.path[1]), r.__file__; r.main()")]
        env = {**os.environ, "PYTHONPATH": str(tree)}
    script = (
        "import resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)\n"
        "dt = time.perf_counter() - t0\n"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.stdout.count(b'\\n'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *command, str(trace), "--config", str(config), *extra],
        capture_output=True, text=True, check=True, env=env, cwd=None if tree is None else str(tree),
    ).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def time_decode(trace: Path) -> float:
    """Seconds of a msgspec decode-only pass over ``trace`` in this process (every line into a Telemetry)."""
    decode = msgspec.json.Decoder(Telemetry).decode
    t0 = time.perf_counter()
    with trace.open("rb") as source:
        for line in source:
            decode(line)
    return time.perf_counter() - t0


SWEEP_SETS = ["scorer.quality.sustain_s=1.5,2", "scorer.quality.steer_share_pct=50,60", "scorer.quality.window_s=4,5"]
SWEEP_TARGET = 2.5  # 8 variants: wanctl-sweep at least this much faster than 8 replays


def time_sweep_against_replays(trace: Path, config: Path, rounds: int) -> None:
    """8 variants: ``wanctl-sweep --jobs 2`` against 8 ``wanctl-replay`` runs, interleaved round by round."""
    bin_dir = Path(sys.executable).parent
    values = [[f"{k}={v}" for v in vs.split(",")] for k, vs in (x.split("=", 1) for x in SWEEP_SETS)]
    combos = [[a, b, c] for a in values[0] for b in values[1] for c in values[2]]
    speedups = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for combo in combos:
            args = [x for o in combo for x in ("--set", o)]
            subprocess.run([str(bin_dir / "wanctl-replay"), str(trace), "--config", str(config), *args],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        replays = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([str(bin_dir / "wanctl-sweep"), str(trace), "--config", str(config), "--jobs", "2",
                        *[x for o in SWEEP_SETS for x in ("--set", o)]],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        swept = time.perf_counter() - t0
        speedups.append(replays / swept)
        print(f"  8 variants over {trace.stat().st_size / 1e6:.0f} MB: 8 replays {replays:.2f} s, "
              f"wanctl-sweep --jobs 2 {swept:.2f} s, speed-up {replays / swept:.2f}")
    print(f"  sweep speed-up median {statistics.median(speedups):.2f} (target {SWEEP_TARGET})")


def report(label: str, n: int, size: int, runs: list) -> list[float]:
    rates = sorted(n / seconds for seconds, _, _ in runs)
    print(
        f"{label}: replay {n:>9,} samples ({size / 1e6:.0f} MB), {len(runs)} runs: "
        f"best {rates[-1]:,.0f} samples/s, median {statistics.median(rates):,.0f}, "
        f"worst {rates[0]:,.0f}; peak RSS {max(r for _, r, _ in runs) / 1024:.1f} MiB, {runs[0][2]} decisions"
    )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="timed replays of each trace (figures: best and median)")
    parser.add_argument("--no-sweep", action="store_true", help="skip wanctl-sweep against 8 replays")
    parser.add_argument("--against", type=Path, help="another checkout's tree to time interleaved (2B/2A work)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        default = tmp / "default.yaml"
        default.write_text("{}\n")
        seed = tmp / "seed.yaml"
        seed.write_text("scorer:\n  policy: confidence\n  shadow: [hysteresis]\n")
        old_seed = tmp / "old-seed.yaml"  # before the quality policy, shadow: true meant hysteresis alone
        old_seed.write_text("scorer:\n  policy: confidence\n  shadow: true\n")
        peak = {}
        rates: list[float] = []
        for n in (args.samples // 10, args.samples):
            trace = tmp / f"trace-{n}.jsonl"
            write_trace(trace, n)
            size = trace.stat().st_size
            runs = {"default (quality + shadows)": [], "default, --jobs 2": [], "2B + 2A shadow": [],
                    "2B + 2A shadow, old tree": []}
            ratios, ratios2 = [], []
            for _ in range(args.runs):
                decode_s = time_decode(trace)
                runs["default (quality + shadows)"].append(time_replay(trace, default))
                ratios.append((n / runs["default (quality + shadows)"][-1][0], n / decode_s))
                runs["default, --jobs 2"].append(time_replay(trace, default, extra=("--jobs", "2")))
                ratios2.append((n / runs["default, --jobs 2"][-1][0], n / decode_s))
                runs["2B + 2A shadow"].append(time_replay(trace, seed))
                if args.against is not None:
                    runs["2B + 2A shadow, old tree"].append(time_replay(trace, old_seed, args.against))
            for label, got in runs.items():
                if got:
                    r = report(label, n, size, got)
                    if label == "default (quality + shadows)":
                        rates = r
                        peak[n] = max(rss for _, rss, _ in got)
            print(f"  decode-only pass (msgspec, interleaved): "
                  f"{', '.join(f'{d:,.0f}' for _, d in ratios)} lines/s; replay (default config) / decode-only: "
                  f"{', '.join(f'{r / d:.3f}' for r, d in ratios)}, median "
                  f"{statistics.median(r / d for r, d in ratios):.3f} (target {RATIO_TARGET})")
            print(f"  replay --jobs 2 (the two WANs in two processes) / decode-only: "
                  f"{', '.join(f'{r / d:.3f}' for r, d in ratios2)}, median "
                  f"{statistics.median(r / d for r, d in ratios2):.3f} (target {RATIO_TARGET})")
            if args.against is not None:
                new = statistics.median(n / s for s, _, _ in runs["2B + 2A shadow"])
                old = statistics.median(n / s for s, _, _ in runs["2B + 2A shadow, old tree"])
                print(f"  2B + 2A shadow: this tree / old tree = {new / old:.3f} (median rates)")
        if not args.no_sweep:
            n = args.samples // 5
            trace = tmp / f"trace-{n}.jsonl"
            write_trace(trace, n)
            print(f"wanctl-sweep of 8 variants ({' '.join(SWEEP_SETS)}) against 8 replays, {n:,} samples:")
            time_sweep_against_replays(trace, default, args.runs)
        small, large = sorted(peak)
        print(f"memory: {peak[small] / 1024:.1f} MiB at {small:,} samples, {peak[large] / 1024:.1f} MiB at {large:,}")
        median = statistics.median(rates)
        print(f"target {TARGET:,} samples/s (default config): median {'met' if median >= TARGET else 'NOT met'} "
              f"({median:,.0f}), best {'met' if rates[-1] >= TARGET else 'NOT met'} ({rates[-1]:,.0f})")


if __name__ == "__main__":
    main()
