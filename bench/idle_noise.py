"""Benchmark: false steers per day on a long synthetic idle trace, for every policy.

Generates 24 h of one idle WAN at 2 Hz (no load at all) with the noise a real
link shows, then replays it with the default config (quality driving,
confidence and hysteresis as shadows) and counts each policy's ENABLEs: every
one is a false steer.

The noise, per poll, with three probe targets combined as the collector
combines ``ping_targets`` (median RTT of the answering targets; the poll is
``lost`` only when at least two of the three lose their probe):

* path jitter: a few ms around the 20 ms baseline (gamma distributed);
* heavy-tailed RTT spikes on the path (every target sees them): with
  probability 2 % a Pareto spike (alpha 1.5, from 5 ms; clipped at 2 s);
* single lost probes: with probability 0.3 % the whole poll is lost
  (``rtt_status: lost``, ``loss_pct: 100``);
* reflector hiccups: about every 10 minutes one of the three targets
  deprioritises ICMP for 2-8 s (+100-400 ms or lost on that target alone);
* a queue of a few packets: ``queue_delay_ms`` 0-2 ms, ``drops_per_sec`` 0.

    .venv/bin/python bench/idle_noise.py [--hours 24] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec

from proto.messages import Telemetry

CADENCE = 0.5
BASE = 20.0


def write_trace(path: Path, hours: float, seed: int, spike_pct: float = 2.0, loss_pct: float = 0.3) -> dict:
    rng = random.Random(seed)
    enc = msgspec.json.Encoder()
    n = int(hours * 3600 / CADENCE)
    hiccup = (-1, 0.0)  # (target, until t)
    stats = {"samples": n, "spikes": 0, "lost_polls": 0, "hiccups": 0, "spikes_over_45ms": 0}
    buf = bytearray()
    with path.open("wb") as out:
        for seq in range(1, n + 1):
            t = 1000.0 + seq * CADENCE
            if t >= hiccup[1] and rng.random() < CADENCE / 600.0:
                hiccup = (rng.randrange(3), t + rng.uniform(2.0, 8.0))
                stats["hiccups"] += 1
            path_rtt = BASE + rng.gammavariate(2.0, 1.0)
            if rng.random() < spike_pct / 100.0:
                spike = min(2000.0, 5.0 * rng.paretovariate(1.5))
                path_rtt += spike
                stats["spikes"] += 1
                stats["spikes_over_45ms"] += spike >= 45.0
            whole_poll_lost = rng.random() < loss_pct / 100.0
            answers = []
            for target in range(3):
                if whole_poll_lost:
                    continue
                rtt = path_rtt + rng.gammavariate(1.5, 0.3)
                if target == hiccup[0] and t < hiccup[1]:
                    if rng.random() < 0.5:
                        continue  # lost on this target only
                    rtt += rng.uniform(100.0, 400.0)
                answers.append(rtt)
            lost = 3 - len(answers)
            stats["lost_polls"] += lost >= 2
            sample = Telemetry(
                wan="wan1", seq=seq, stream="idle", t=t, wall=1.7e9 + t,
                rtt_ms=None if lost >= 2 else round(statistics.median(answers), 3),
                baseline_rtt_ms=BASE, drops_per_sec=0.0, queue_depth_pct=rng.randrange(5) / 10.0,
                queue_delay_ms=round(rng.uniform(0.0, 2.0), 3),
                rtt_status="lost" if lost >= 2 else "ok", loss_pct=round(100.0 * lost / 3, 3),
            )
            enc.encode_into(sample, buf, len(buf))
            buf += b"\n"
            if len(buf) > 1 << 20:
                out.write(buf)
                buf.clear()
        out.write(buf)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--spike-pct", type=float, default=2.0, help="share of polls with a path spike")
    parser.add_argument("--loss-pct", type=float, default=0.3, help="share of polls lost outright")
    args = parser.parse_args()
    replay = shutil.which("wanctl-replay", path=str(Path(sys.executable).parent))
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "idle.jsonl"
        stats = write_trace(trace, args.hours, args.seed, args.spike_pct, args.loss_pct)
        config = Path(tmp) / "wanctl.yaml"
        config.write_text("{}\n")
        done = subprocess.run([replay, str(trace), "--config", str(config)], capture_output=True, check=True)
    enables: dict[str, int] = {"quality": 0, "confidence": 0, "hysteresis": 0}
    for line in done.stdout.splitlines():
        d = json.loads(line)
        if d["decision"] == "ENABLE_STEERING":
            enables[d["policy"]] = enables.get(d["policy"], 0) + 1
    print(f"idle noise: {args.hours:g} h at {1 / CADENCE:g} Hz, seed {args.seed}, spikes {args.spike_pct:g} %, "
          f"lost polls {args.loss_pct:g} %: {stats['samples']} samples, "
          f"{stats['spikes']} path spikes ({stats['spikes_over_45ms']} >= 45 ms), {stats['lost_polls']} lost polls, "
          f"{stats['hiccups']} reflector hiccups")
    per_day = 24.0 / args.hours
    print("false steers per day: " + ", ".join(f"{k} {v * per_day:g}" for k, v in enables.items()))


if __name__ == "__main__":
    main()
