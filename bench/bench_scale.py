"""Benchmark: how many WANs one scorer process keeps up with, on realistic traffic.

    .venv/bin/python bench/bench_scale.py [--quick] [--wans 1,100,1000,10000] [--against OLD_TREE]

1. Highest sustained rate per WAN count.  The real ``wanctl-bus`` and
   ``wanctl-scorer`` processes (default config: the quality policy driving,
   Phase 2B and 2A as shadows) receive the realistic mix of
   ``bench_replay.py`` (mostly healthy, congestion episodes of varying
   strength, failed probes), each WAN at 2 Hz of sample time, so decisions
   happen.  The publisher encodes every frame before a step starts and only
   sends during it.  A step offers one rate for a few seconds; it is
   sustained when the scorer received every sample and was done within
   ``CATCH_UP_S`` of the sender.  The highest sustained rate is found by
   bisection (to within ``RESOLUTION``).  A decode-only subscriber on the
   same bus, in the same steps, is the yardstick.
2. Telemetry -> decision latency at 1 WAN (every sample flips the state:
   Phase 2B with instant timers), p50 and p99, next to a raw pyzmq echo
   (PUB -> SUB -> echo process -> PUB -> SUB), measured interleaved in
   blocks of 25 samples so both see the same machine.

``--against OLD_TREE`` also runs a checkout of older code's scorer (with this
environment's interpreter, ``PYTHONPATH=OLD_TREE``), interleaved WAN count by
WAN count, for before/after ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import count_decoded, latency, pct  # noqa: E402
from bus import sockets as bus  # noqa: E402
from proto.messages import Decision, Heartbeat, Telemetry, to_msgpack  # noqa: E402
from tests.supervisor_harness import Stage, load, short_tmp, wait_for, write_config  # noqa: E402

CATCH_UP_S = 0.5
RESOLUTION = 1.08  # bisection stops when hi / lo is below this
CAP = 160_000  # the highest rate offered


class Traffic:
    """The realistic mix of bench_replay.py over many WANs: every WAN at 2 Hz of sample time,
    its own congestion episodes, round-robin over the WANs."""

    def __init__(self, wans: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.names = [f"w{i}" for i in range(wans)]
        self.topics = [f"telemetry.{n}".encode() for n in self.names]
        self.t = [1000.0] * wans
        self.end = [0.0] * wans
        self.strength = [0.0] * wans
        self.baseline = [20.0] * wans
        self.i = 0
        self.seq = 0

    def frames(self, n: int) -> list[list[bytes]]:
        rng = self.rng
        out = []
        count = len(self.names)
        for _ in range(n):
            k = self.i
            self.i = (k + 1) % count
            self.seq += 1
            t = self.t[k] = self.t[k] + 0.5
            if t >= self.end[k] and rng.random() < 0.004:
                self.end[k], self.strength[k] = t + rng.uniform(5, 90), rng.choice([0.3, 0.6, 1.0, 1.5])
            strength = self.strength[k]
            congested = t < self.end[k]
            rtt = round(max(1.0, 20 + rng.gauss(2, 1.5) + (strength * 120 + rng.gauss(0, 15) if congested else 0)), 3)
            self.baseline[k] += 0.002 * (min(rtt, 25.0) - self.baseline[k])
            dropped = max(0, round(strength * 4 + rng.gauss(0, 1))) if congested else 0
            packets = round(min(1000, max(0, strength * 600 + rng.gauss(0, 100)))) if congested else rng.randrange(40)
            sample = Telemetry(wan=self.names[k], seq=self.seq, stream="bench-scale", t=t, wall=1.7e9 + t,
                               rtt_ms=None if rng.random() < 0.002 else rtt, baseline_rtt_ms=self.baseline[k],
                               drops_per_sec=dropped / 0.5, queue_depth_pct=packets / 10.0)
            out.append([self.topics[k], to_msgpack(sample)])
        return out


def decode_sink(config: str, report_ep: str) -> None:
    """A decode-only subscriber on the bus: counts telemetry, reports the count every 20 ms."""
    cfg = load(Path(config))
    ctx = zmq.Context()
    sub = bus.subscriber(ctx, cfg, [b"telemetry.", b"stop"])
    sub.rcvhwm = 100_000
    count_decoded(ctx, sub, report_ep, batch=1000, every_s=0.02, topic=b"telemetry.")


def scorer_stage(config: Path, directory: Path, tree: Path | None):
    if tree is None:
        return Stage("wanctl-scorer", config, directory)
    log = open(directory / "old-scorer.log", "wb")
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "sys.argv[0] = 'wanctl-scorer'; import scorer.process as p; "
            "assert p.__file__.startswith(sys.path[1]), p.__file__; p.main()")
    proc = subprocess.Popen([sys.executable, "-c", code, "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=str(tree))

    class Old:
        name = "old scorer"

        def __init__(self):
            self.proc = proc

        def stop(self, timeout=None, expect=0):
            proc.terminate()
            proc.wait(15)
            log.close()
    return Old()


class Rig:
    """bus + scorer + decode-only sink for one WAN count."""

    def __init__(self, directory: Path, tree: Path | None) -> None:
        self.config = write_config(directory, {"scorer": {}, "bus": {"heartbeat_s": 0.05}})
        cfg = load(self.config)
        self.stages = [Stage("wanctl-bus", self.config, directory)]
        self.stages.append(scorer_stage(self.config, directory, tree))
        self.ctx = zmq.Context()
        self.pub = bus.watched_publisher(self.ctx, cfg)
        self.pub.sndhwm = 0
        self.beats = bus.subscriber(self.ctx, cfg, [b"heartbeat.scorer", b"decision."])
        self.decoder = bus.FrameDecoder()
        self.report = self.ctx.socket(zmq.PULL)
        report_ep = f"ipc://{directory}/report.sock"
        self.report.bind(report_ep)
        self.sink = subprocess.Popen([sys.executable, __file__, "--sink", str(self.config), report_ep])
        self.decisions = 0
        self._scorer = 0
        self._sink = 0
        assert bus.wait_welcome(self.beats, 15)
        assert bus.wait_subscribed(self.pub, b"telemetry.w0", 15, set())
        wait_for(lambda: self.sink_count() is not None and self.scorer_count() is not None, 20, "sink and scorer")

    def scorer_count(self) -> int | None:
        while self.beats.poll(0):
            m = self.decoder.decode(self.beats.recv_multipart())
            if isinstance(m, Heartbeat):
                self._scorer = m.counters.get("received", 0)
            elif isinstance(m, Decision):
                self.decisions += 1
        return self._scorer

    def sink_count(self) -> int | None:
        while self.report.poll(0):
            self._sink = self.report.recv_pyobj()
        return self._sink

    def step(self, frames: list[list[bytes]], rate: float) -> dict:
        """Send ``frames`` at ``rate``/s; when did each receiver catch up (None: not within 3 s)?"""
        base_s, base_k = self.scorer_count(), self.sink_count()
        send = self.pub.send_multipart
        start = time.perf_counter()
        n = len(frames)
        sent = 0
        while sent < n:
            due = min(n, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                send(frames[sent])
                sent += 1
            time.sleep(0.0005)
        done = time.perf_counter()
        achieved = n / (done - start)
        caught = {"scorer": None, "sink": None}
        while time.perf_counter() - done < 3.0 and None in caught.values():
            now = time.perf_counter() - done
            if caught["scorer"] is None and self.scorer_count() - base_s >= n:
                caught["scorer"] = now
            if caught["sink"] is None and self.sink_count() - base_k >= n:
                caught["sink"] = now
            time.sleep(0.01)
        # Let a backlog drain before the next step: until every sample is in, or
        # nothing more arrives for a second (a step over the bus's high-water
        # marks loses samples, which never come).
        last, still_since = self.scorer_count(), time.perf_counter()
        while self.scorer_count() - base_s < n:
            now = time.perf_counter()
            if self._scorer != last:
                last, still_since = self._scorer, now
            elif now - still_since > 1.0:
                break
            assert now - done < 120, "the scorer did not drain its backlog"
            time.sleep(0.02)
        return {"achieved": achieved, **caught}

    def close(self) -> None:
        try:
            self.pub.send_multipart([b"stop", b""])
            self.sink.wait(5)
        except subprocess.TimeoutExpired:
            self.sink.kill()
        for s in (self.pub, self.beats, self.report):
            s.close(0)
        self.ctx.term()
        for stage in reversed(self.stages):
            stage.stop()


def sustained(result: dict, who: str) -> bool:
    return result[who] is not None and result[who] <= CATCH_UP_S


def bisect_rate(rig: Rig, traffic: Traffic, seconds: float, steps: int, log) -> tuple[float, float, list]:
    """The highest sustained rate of the scorer (and the sink's, over the same steps)."""
    rows = []
    lo, hi = 0.0, None
    sink_best = 0.0
    rate = 10_000.0
    for _ in range(steps):
        frames = traffic.frames(int(rate * seconds))
        result = rig.step(frames, rate)
        ok = sustained(result, "scorer")
        if sustained(result, "sink"):
            sink_best = max(sink_best, result["achieved"])
        rows.append((rate, result))
        caught = "" if result["scorer"] is None else f" in {result['scorer']:.2f} s"
        log(f"     offered {rate:>8,.0f}/s (sent {result['achieved']:>8,.0f}/s): scorer "
            f"{'sustained' if ok else 'fell behind'}{caught}, "
            f"decode-only {'sustained' if sustained(result, 'sink') else 'fell behind'}")
        if ok:
            lo = max(lo, result["achieved"] if result["achieved"] < rate else rate)
        else:
            hi = rate if hi is None else min(hi, rate)
        if hi is None:
            if rate >= CAP:
                break
            rate = min(CAP, rate * 2)
        else:
            if lo and hi / lo < RESOLUTION:
                break
            rate = (lo + hi) / 2 if lo else hi / 2
    return lo, sink_best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps, few bisection steps (a smoke test)")
    parser.add_argument("--wans", default="1,100,1000,10000")
    parser.add_argument("--against", type=Path, help="an older checkout's tree: its scorer too, interleaved")
    parser.add_argument("--sink", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        return decode_sink(*args.sink)
    seconds = 1.0 if args.quick else 2.0
    steps = 4 if args.quick else 7
    counts = [int(x) for x in args.wans.split(",")]
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, pyzmq {zmq.__version__}; "
          f"{seconds:g} s per step, sustained = all received, done within {CATCH_UP_S} s of the sender")
    directory = short_tmp("ws")
    trees = [("this tree", None)] + ([("old tree", args.against)] if args.against else [])
    best: dict[tuple[str, int], tuple[float, float, int]] = {}
    try:
        print("\n1. highest sustained rate of one scorer (default config, realistic traffic, WANs at 2 Hz)")
        for wans in counts:
            for label, tree in trees:
                d = directory / f"{label.replace(' ', '-')}-{wans}"
                d.mkdir()
                print(f"   {wans:,} WANs, {label}:")
                traffic = Traffic(wans)
                rig = Rig(d, tree)
                try:
                    warm = traffic.frames(max(2 * wans, 2000))  # every WAN known, its first samples in
                    rig.step(warm, 20_000)
                    lo, sink, _ = bisect_rate(rig, traffic, seconds, steps, print)
                    best[(label, wans)] = (lo, sink, rig.decisions)
                finally:
                    rig.close()
                print(f"   -> scorer {lo:,.0f} samples/s ({lo / 2 / wans:,.2f} x the 2 Hz load), decode-only "
                      f"subscriber >= {sink:,.0f}/s, {best[(label, wans)][2]} decisions seen")
        print("\n   summary (samples/s sustained):")
        for label, _ in trees:
            one = best.get((label, counts[0]), (0, 0, 0))[0]
            for wans in counts:
                lo, sink, dec = best[(label, wans)]
                print(f"   {label:<10} {wans:>6,} WANs: scorer {lo:>8,.0f}  decode-only >= {sink:>8,.0f}  "
                      f"scorer/decode-only {lo / sink if sink else 0:.2f}  vs {counts[0]} WAN(s) "
                      f"{lo / one if one else 0:.2f}  2 Hz load {'kept' if lo >= 2 * wans else 'NOT kept'}")
        if args.against:
            for wans in counts:
                new, old = best[("this tree", wans)][0], best[("old tree", wans)][0]
                print(f"   {wans:>6,} WANs: this tree / old tree = {new / old if old else float('inf'):.2f}")

        n = 100 if args.quick else 400
        (directory / "lat").mkdir()
        os.sync()  # the state files the scale steps wrote are on disk before fsyncs are timed
        pipe, raw = latency(directory / "lat", n)
        pm, p99 = statistics.median(pipe) * 1e3, pct(pipe, 99) * 1e3
        rm, r99 = statistics.median(raw) * 1e3, pct(raw, 99) * 1e3
        print(f"\n2. telemetry -> decision latency, 1 WAN, every sample a decision ({len(pipe)} samples, "
              f"interleaved with {len(raw)} raw echoes)")
        print(f"   pipeline: p50 {pm:.3f} ms, p99 {p99:.3f} ms; raw pyzmq echo: p50 {rm:.3f} ms, p99 {r99:.3f} ms; "
              f"ratio p50 x{pm / rm:.1f}, p99 x{p99 / r99:.1f} (target p99 <= x5)")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
