"""Benchmark of the live pipeline, with raw pyzmq PUB/SUB on the same machine as the yardstick.

    .venv/bin/python bench/bench_pipeline.py [--quick]

1. Telemetry-to-decision latency through the live bus: a test publisher sends
   samples that each flip the steering state (instant timers), through the
   proxy to the scorer process, which commits the WAN's state record (fsync),
   journals the decision and publishes the decision back through the proxy.  Baseline: a PUB -> SUB ->
   PUB -> SUB echo through a separate process, no proxy, same transport, interleaved in blocks of 25.
2. The highest telemetry rate one scorer process takes without dropping a
   sample (many WANs, idle samples, so no decisions): steps up the rate until
   the scorer's received count falls short of what was sent.  Baseline: the
   same publisher into a bare SUB process that only decodes.
3. CPU and RSS of every stage with the whole pipeline running against the
   simulator at 1 WAN x 2 Hz.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import yaml
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus import sockets as bus  # noqa: E402
from proto.config import parse_config  # noqa: E402
from proto.messages import Decision, Heartbeat, Telemetry, to_msgpack  # noqa: E402
from tests.supervisor_harness import Stage, free_port, short_tmp, wait_for, write_config  # noqa: E402

INSTANT = {"policy": "confidence", "shadow": False, "flap": {"enabled": False},
           "confidence": {"sustain_s": 0, "recovery_sustain_s": 0, "hold_down_s": 0}}


def sample(seq: int, t: float, wan: str, congested: bool) -> Telemetry:
    if congested:
        return Telemetry(wan=wan, seq=seq, stream="bench", t=t, wall=0.0, rtt_ms=212.0, baseline_rtt_ms=12.0,
                         drops_per_sec=30.0, queue_depth_pct=80.0, cake_state="RED")
    return Telemetry(wan=wan, seq=seq, stream="bench", t=t, wall=0.0, rtt_ms=12.0, baseline_rtt_ms=12.0,
                     drops_per_sec=0.0, queue_depth_pct=0.0, cake_state="GREEN")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def load(path: Path):
    return parse_config(yaml.safe_load(path.read_text()), str(path.parent))


# --- raw pyzmq helpers (run as child processes) ---------------------------------


def raw_echo(sub_ep: str, pub_ep: str) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.bind(sub_ep)
    pub = ctx.socket(zmq.PUB)
    pub.bind(pub_ep)
    while True:
        frames = sub.recv_multipart()
        if frames[0] == b"stop":
            return
        pub.send_multipart(frames)


def count_decoded(ctx: zmq.Context, sub: zmq.Socket, report_ep: str, batch: int, every_s: float,
                  topic: bytes = b"") -> None:
    """Decode every frame ``sub`` receives on a topic starting with ``topic`` and PUSH the
    running count to ``report_ep`` every ``every_s``, until a ``stop`` frame arrives."""
    report = ctx.socket(zmq.PUSH)
    report.connect(report_ep)
    decode = msgspec.msgpack.Decoder(Telemetry).decode
    received = 0
    report_due = 0.0
    while True:
        if sub.poll(20):
            for _ in range(batch):
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frames[0] == b"stop":
                    return
                if frames[0].startswith(topic):
                    decode(frames[-1])
                    received += 1
        now = time.monotonic()
        if now >= report_due:
            report_due = now + every_s
            try:
                report.send_pyobj(received, zmq.NOBLOCK)
            except zmq.Again:
                pass


def raw_sink(sub_ep: str, report_ep: str) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 100_000
    sub.subscribe(b"")
    sub.bind(sub_ep)
    count_decoded(ctx, sub, report_ep, batch=100, every_s=0.05)


# --- 1. latency ---------------------------------------------------------------------


def latency(directory: Path, n: int) -> tuple[list[float], list[float]]:
    """``n`` telemetry -> decision round trips through the live bus and scorer, and ``n`` through a
    raw pyzmq echo, interleaved in blocks of 25 so both see the same machine."""
    config = write_config(directory, {"scorer": INSTANT})
    cfg = load(config)
    stages = [Stage("wanctl-bus", config, directory), Stage("wanctl-scorer", config, directory)]
    ctx = zmq.Context()
    pub = bus.watched_publisher(ctx, cfg)
    sub = bus.subscriber(ctx, cfg, [b"decision."])
    decoder = bus.FrameDecoder()
    raw_send, raw_close = latency_raw_setup(directory)
    pipe, raw = [], []
    try:
        assert bus.wait_welcome(sub, 15)
        assert bus.wait_subscribed(pub, b"telemetry.wan1", 15, set())
        seq = 0
        while len(pipe) < n:
            for _ in range(25):
                seq += 1
                frames = [b"telemetry.wan1", to_msgpack(sample(seq, float(seq), "wan1", congested=seq % 2 == 1))]
                sent = time.perf_counter()
                pub.send_multipart(frames)
                took = decision_after(sub, decoder, seq, sent)
                if took is not None:
                    pipe.append(took)
                time.sleep(0.004)
            for _ in range(25):
                got = raw_send()
                if got is not None:
                    raw.append(got)
                time.sleep(0.004)
        return pipe, raw
    finally:
        raw_close()
        pub.close(0)
        sub.close(0)
        ctx.term()
        for stage in reversed(stages):
            stage.stop()


def decision_after(sub: zmq.Socket, decoder: bus.FrameDecoder, telemetry_seq: int, sent: float,
                   timeout_s: float = 5.0) -> float | None:
    """Seconds from ``sent`` until the decision on sample ``telemetry_seq`` arrives on ``sub``
    (None after ``timeout_s``)."""
    deadline = sent + timeout_s
    while time.perf_counter() < deadline:
        if sub.poll(1000):
            frames = sub.recv_multipart()
            arrived = time.perf_counter()  # taken as the raw echo takes it: on arrival, before decoding
            message = decoder.decode(frames)
            if isinstance(message, Decision) and message.telemetry_seq == telemetry_seq:
                return arrived - sent
    return None


def latency_raw_setup(directory: Path):
    """A raw echo process kept up for interleaved measurements: (measure one round trip, close)."""
    a, b = f"ipc://{directory}/ea.sock", f"ipc://{directory}/eb.sock"
    echo = subprocess.Popen([sys.executable, __file__, "--raw-echo", a, b])
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.connect(a)
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(b)
    payload = to_msgpack(sample(1, 1.0, "wan1", True))
    wait_for(lambda: (pub.send_multipart([b"telemetry.wan1", payload]), sub.poll(100))[1], 15, "raw echo")
    while sub.poll(100):
        sub.recv_multipart()

    def measure() -> float | None:
        sent = time.perf_counter()
        pub.send_multipart([b"telemetry.wan1", payload])
        if sub.poll(5000):
            sub.recv_multipart()
            return time.perf_counter() - sent
        return None

    def close() -> None:
        pub.send_multipart([b"stop"])
        try:
            echo.wait(5)
        except subprocess.TimeoutExpired:
            echo.kill()
        pub.close(0)
        sub.close(0)
        ctx.term()

    return measure, close


# --- 2. sustained rate -----------------------------------------------------------------


def paced_send(pub: zmq.Socket, rate: int, seconds: float, wans: int, seq0: int, t0: float) -> int:
    """Send idle samples round-robin over ``wans`` WANs at ``rate``/s; returns how many."""
    start = time.perf_counter()
    sent = 0
    total = int(rate * seconds)
    frames = []
    while sent < total:
        due = int((time.perf_counter() - start) * rate)
        while sent < min(due, total):
            seq = seq0 + sent
            wan = f"w{seq % wans}"
            message = sample(seq, t0 + seq * 0.01, wan, congested=False)
            frames = [f"telemetry.{wan}".encode(), to_msgpack(message)]
            pub.send_multipart(frames)
            sent += 1
        time.sleep(0.001)
    return sent


CATCH_UP_S = 0.5  # a rate is sustained when the receiver is done this soon after the sender


def step_rates(pub, received, rates, seconds, wans):
    """Offer each rate for ``seconds``; stop at the first one the receiver cannot keep up with.

    Rows: (offered rate, sent, received, achieved send rate, catch-up seconds or None).
    """
    out = []
    seq = 1
    for rate in rates:
        before = received()
        start = time.perf_counter()
        sent = paced_send(pub, rate, seconds, wans, seq, 1000.0)
        elapsed = time.perf_counter() - start
        seq += sent
        done = time.perf_counter()
        caught_up = None
        got = 0
        while time.perf_counter() - done < 3.0:
            got = received() - before
            if got >= sent:
                caught_up = time.perf_counter() - done
                break
            time.sleep(0.02)
        out.append((rate, sent, got, sent / elapsed, caught_up))
        if caught_up is None or caught_up > CATCH_UP_S:
            break
    return out


def max_rate_scorer(directory: Path, rates: list[int], seconds: float, wans: int) -> list[tuple[int, int, int, float]]:
    config = write_config(directory, {"scorer": {**INSTANT, "persist_interval_s": 2.0},
                                      "bus": {"heartbeat_s": 0.05}})
    cfg = load(config)
    stages = [Stage("wanctl-bus", config, directory), Stage("wanctl-scorer", config, directory)]
    ctx = zmq.Context()
    pub = bus.watched_publisher(ctx, cfg)
    beats = bus.subscriber(ctx, cfg, [b"heartbeat.scorer"])
    decoder = bus.FrameDecoder()

    def scorer_received(timeout=5.0) -> int:
        """The scorer's received count from its latest heartbeat."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if beats.poll(200):
                while beats.poll(0):
                    m = decoder.decode(beats.recv_multipart())
                    if isinstance(m, Heartbeat):
                        last = m.counters["received"]
                if last is not None:
                    return last
        raise RuntimeError("no heartbeat from the scorer")

    try:
        assert bus.wait_welcome(beats, 15)
        assert bus.wait_subscribed(pub, b"telemetry.w0", 15, set())
        return step_rates(pub, scorer_received, rates, seconds, wans)
    finally:
        pub.close(0)
        beats.close(0)
        ctx.term()
        for stage in reversed(stages):
            stage.stop()


def max_rate_raw(directory: Path, rates: list[int], seconds: float, wans: int) -> list[tuple[int, int, int, float]]:
    a, r = f"ipc://{directory}/rs.sock", f"ipc://{directory}/rr.sock"
    ctx = zmq.Context()
    report = ctx.socket(zmq.PULL)
    report.bind(r)
    sink = subprocess.Popen([sys.executable, __file__, "--raw-sink", a, r])
    pub = ctx.socket(zmq.PUB)
    pub.sndhwm = 100_000
    pub.connect(a)

    def count() -> int:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if report.poll(500):
                last = report.recv_pyobj()
                while report.poll(0):
                    last = report.recv_pyobj()
                return last
        raise RuntimeError("no report from the raw sink")

    try:
        wait_for(lambda: (pub.send_multipart([b"x", to_msgpack(sample(0, 0.0, "w0", False))]), count())[1], 15,
                 "the raw sink")
        out = step_rates(pub, count, rates, seconds, wans)
        pub.send_multipart([b"stop", b""])
        return out
    finally:
        sink.wait(5)
        pub.close(0)
        report.close(0)
        ctx.term()


# --- 3. CPU and RSS per stage ----------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stage_costs(directory: Path, seconds: float) -> dict[str, tuple[float, float]]:
    port = free_port()
    config = write_config(directory, {
        "router": {"port": port},
        "wans": [{"name": "wan1", "queue": "cake-wan1", "ping_target": "1.1.1.1", "ping_routing_table": "main",
                  "rule_comment": "wanctl-steer-wan1", "interval_s": 0.5}],
    })
    sim_log = open(directory / "sim.log", "wb")
    sim = subprocess.Popen([str(Path(sys.executable).parent / "wanctl-sim"), "--port", str(port)],
                           stdout=sim_log, stderr=subprocess.STDOUT)
    stages = {"sim": sim}
    started = []
    try:
        wait_for(lambda: "listening" in (directory / "sim.log").read_text(), 15, "the simulator")
        for name in ("bus", "collector", "scorer", "actuator", "logger"):
            stage = Stage(f"wanctl-{name}", config, directory)
            started.append(stage)
            stages[name] = stage.proc
        time.sleep(5)  # warm up: imports, connections
        cpu0 = {n: proc_cpu_s(p.pid) for n, p in stages.items()}
        time.sleep(seconds)
        costs = {n: ((proc_cpu_s(p.pid) - cpu0[n]) / seconds * 100, proc_rss_mb(p.pid)) for n, p in stages.items()}
        for n, p in stages.items():
            assert p.poll() is None, f"{n} exited"
        return costs
    finally:
        for stage in reversed(started):
            stage.stop()
        sim.terminate()
        sim.wait(10)
        sim_log.close()


# --- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter runs")
    parser.add_argument("--raw-echo", nargs=2)
    parser.add_argument("--raw-sink", nargs=2)
    args = parser.parse_args()
    if args.raw_echo:
        return raw_echo(*args.raw_echo)
    if args.raw_sink:
        return raw_sink(*args.raw_sink)
    n = 100 if args.quick else 400
    seconds = 2.0 if args.quick else 3.0
    rates = [1000, 2000, 5000, 10000, 20000, 40000, 80000]
    wans = 100
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, pyzmq {zmq.__version__}, "
          f"libzmq {zmq.zmq_version()}; transport ipc://")

    directory = short_tmp("wb")
    try:
        (directory / "a").mkdir()
        lat, raw = latency(directory / "a", n)
        pm, p99 = statistics.median(lat) * 1e3, pct(lat, 99) * 1e3
        rm, r99 = statistics.median(raw) * 1e3, pct(raw, 99) * 1e3
        print(f"\n1. telemetry -> decision latency, {len(lat)} of {n} samples answered "
              f"(each decision's state record fsync'd and its journal line written before publishing)")
        print(f"   pipeline (publisher -> bus -> scorer -> bus -> subscriber): median {pm:.3f} ms, p99 {p99:.3f} ms")
        print(f"   raw pyzmq PUB -> SUB -> echo -> PUB -> SUB:                median {rm:.3f} ms, p99 {r99:.3f} ms")
        print(f"   ratio pipeline/raw: median x{pm / rm:.1f}, p99 x{p99 / r99:.1f}")

        (directory / "b").mkdir()
        scorer_rates = max_rate_scorer(directory / "b", rates, seconds, wans)
        raw_rates = max_rate_raw(directory, rates, seconds, wans)

        def best(rows):
            ok = [achieved for rate, sent, got, achieved, caught in rows if caught is not None and caught <= CATCH_UP_S]
            return max(ok) if ok else 0.0

        print(f"\n2. sustained telemetry rate ({wans} WANs, {seconds:g} s per step; sustained = every sample "
              f"received and the receiver done within {CATCH_UP_S} s of the sender)")
        for label, rows in (("scorer (through the bus)", scorer_rates), ("raw PUB -> SUB (decode only)", raw_rates)):
            for rate, sent, got, achieved, caught in rows:
                verdict = "dropped" if caught is None else f"caught up in {caught:.2f} s"
                print(f"   {label:<30} offered {rate:>6}/s (sent {achieved:>7.0f}/s): "
                      f"received {got}/{sent}, {verdict}")
        sb, rb = best(scorer_rates), best(raw_rates)
        print(f"   highest sustained step: scorer {sb:.0f}/s, raw {rb:.0f}/s, ratio scorer/raw {sb / rb if rb else 0:.2f}"
              f" (the top step may be limited by the single-threaded publisher)")

        (directory / "c").mkdir()
        costs = stage_costs(directory / "c", 10.0 if args.quick else 20.0)
        print("\n3. CPU and RSS per stage, 1 WAN x 2 Hz against the simulator")
        for name, (cpu, rss) in costs.items():
            print(f"   {name:<10} CPU {cpu:5.2f} %   RSS {rss:6.1f} MB")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
