"""RouterOS side benchmark: the collector and the actuator against ``wanctl-sim``.

The simulator runs as its own process (the machine's other core), the client
code in this one, over loopback TCP and librouteros:

1. one collector poll of one WAN (queue print + /ping count=1 + mangle print):
   wall latency, median and p99, with the sim answering pings at once;
2. one actuation (rule lookup, set, read-back verify): median and p99;
3. how many WANs one collector polls at 2 Hz on one core: N WANs at
   ``interval_s: 0.5`` for a few seconds each, doubling N until the polls fall
   behind; the collector's CPU per poll gives the CPU-bound ceiling.

    .venv/bin/python bench/bench_router.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actuator.rule import Actuator  # noqa: E402
from collector.poller import Collector  # noqa: E402
from proto.config import parse_config  # noqa: E402
from proto.messages import DEGRADED, GOOD  # noqa: E402


def scenario(n: int) -> dict:
    return {"description": f"benchmark: {n} idle WANs", "loop": False, "wans": [
        {"name": f"w{i}", "queue": f"cake-w{i}", "interface": f"ether{i}", "routing_table": f"to-w{i}",
         "ping_target": f"192.0.2.{i % 250 + 1}", "rule_comment": f"steer-w{i}", "base_rtt_ms": 12.0,
         "rate_pps": 1000.0} for i in range(n)]}


class Sim:
    """``wanctl-sim`` in a subprocess on a free port."""

    def __init__(self, n: int, folder: Path, delay_scale: float = 0.0):
        path = folder / f"bench-{n}.yaml"
        path.write_text(yaml.safe_dump(scenario(n)))
        self.proc = subprocess.Popen([sys.executable, "-m", "sim", "--port", "0", "--scenario", str(path),
                                      "--ping-delay-scale", str(delay_scale)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if not match:
            self.stop()
            raise SystemExit(f"wanctl-sim did not start: {line!r}")
        self.port = int(match[1])
        self.n = n

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def config(self, interval_s: float = 0.5):
        return parse_config({
            "router": {"host": None, "port": self.port, "password_env": None, "timeout_s": 3.0},
            "wans": [{"name": f"w{i}", "queue": f"cake-w{i}", "ping_target": f"192.0.2.{i % 250 + 1}",
                      "ping_routing_table": f"to-w{i}", "rule_comment": f"steer-w{i}", "interval_s": interval_s}
                     for i in range(self.n)]})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_poll(sim: Sim, rounds: int) -> tuple[float, float, float]:
    collector = Collector(sim.config(), "admin", epoch=1)
    try:
        collector.poll_due(time.monotonic())  # connect
        times, cpu0 = [], time.process_time()
        for _ in range(rounds):
            start = time.perf_counter()
            collector.poll_due(float("inf"))
            times.append(time.perf_counter() - start)
        cpu = (time.process_time() - cpu0) / rounds
        assert collector.counters["connects"] == 1 and collector.counters["router_errors"] == 0
    finally:
        collector.close()
    return statistics.median(times), percentile(times, 0.99), cpu


def bench_actuation(sim: Sim, rounds: int) -> tuple[float, float]:
    cfg = sim.config()
    actuator = Actuator(cfg, "admin", epoch=1, dry_run=False)
    try:
        times = []
        for i in range(rounds + 1):
            actuator.want("w0", DEGRADED if i % 2 == 0 else GOOD, i)
            start = time.perf_counter()
            [result] = actuator.step(time.monotonic())
            if i:  # the first one also connects
                times.append(time.perf_counter() - start)
            assert result.result == "applied", result
    finally:
        actuator.close()
    return statistics.median(times), percentile(times, 0.99)


def bench_capacity(folder: Path, seconds: float, limit: int) -> list[dict]:
    rows = []
    n = 1
    while n <= limit:
        sim = Sim(n, folder)
        try:
            collector = Collector(sim.config(0.5), "admin", epoch=1)
            collector.poll_due(time.monotonic())  # connect, first round
            samples, late, first, last = 0, [], None, 0.0
            cpu0, sim_cpu0, start = time.process_time(), sim.cpu_s(), time.monotonic()
            while (now := time.monotonic()) - start < seconds:
                due = collector.next_due()
                if due > now:
                    time.sleep(due - now)
                    continue
                late.append(now - due)
                first = now if first is None else first
                last = now
                samples += len(collector.poll_due(now))
            wall = time.monotonic() - start
            cpu = time.process_time() - cpu0
            sim_cpu = sim.cpu_s() - sim_cpu0
            collector.close()
        finally:
            sim.stop()
        # k polls per WAN spread over (k - 1) intervals: k / (span + interval) Hz.
        rate = samples / n / (last - first + 0.5)
        rows.append({"wans": n, "hz_per_wan": rate, "collector_core": cpu / wall, "sim_core": sim_cpu / wall,
                     "cpu_ms_per_poll": 1000 * cpu / max(1, samples), "p99_late_ms": 1000 * percentile(late, 0.99)})
        print(f"  {n:4d} WANs: {rate:4.2f} Hz per WAN, collector {cpu / wall:4.0%} of a core, "
              f"sim {sim_cpu / wall:4.0%}, {1000 * cpu / max(1, samples):.2f} ms CPU per poll", flush=True)
        if rate < 1.95:
            break
        n *= 2
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds = 100 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sim = Sim(1, folder)
        try:
            poll_med, poll_p99, poll_cpu = bench_poll(sim, rounds)
            act_med, act_p99 = bench_actuation(sim, rounds // 2)
        finally:
            sim.stop()
        print(f"collector poll of one WAN (3 commands): median {poll_med * 1000:.2f} ms, "
              f"p99 {poll_p99 * 1000:.2f} ms, {poll_cpu * 1000:.2f} ms CPU ({rounds} polls)")
        print(f"actuation (lookup, set, read-back): median {act_med * 1000:.2f} ms, p99 {act_p99 * 1000:.2f} ms "
              f"({rounds // 2} flips)")
        print("WANs polled at 2 Hz by one collector (interval_s 0.5, pings answered at once):")
        rows = bench_capacity(folder, 2.0 if args.quick else 5.0, 64 if args.quick else 1024)
    kept = [r for r in rows if r["hz_per_wan"] >= 1.95]
    best = kept[-1]["wans"] if kept else 0
    print(f"largest N that kept 2 Hz: {best} WANs; CPU-bound ceiling of one core: "
          f"{int(500 / poll_cpu / 1000)} WANs at {poll_cpu * 1000:.2f} ms CPU per poll")


if __name__ == "__main__":
    main()
