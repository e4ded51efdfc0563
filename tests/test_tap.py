"""wanctl-tap as a real process on a real bus: JSONL, filters, --count, gaps, Ctrl-C,
and a recorded telemetry trace that wanctl-replay scores exactly as the live scorer did."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from proto.messages import Decision, Heartbeat
from tests.supervisor_harness import (
    BIN, BusClient, Stage, decision_seqs, load, short_tmp, wait_for, write_config,
)
from tests.support import congested, idle


@pytest.fixture
def bus_dir():
    directory = short_tmp()
    config = write_config(directory, {"scorer": {"shadow": True, "flap": {"enabled": False},
                                                 "confidence": {"sustain_s": 0.5, "recovery_sustain_s": 0.5,
                                                                "hold_down_s": 1.0}}})
    stages = [Stage("wanctl-bus", config, directory)]
    yield directory, config, stages
    for stage in stages:
        stage.stop()
    shutil.rmtree(directory, ignore_errors=True)


class Tap:
    def __init__(self, directory, config, *args):
        self.out = directory / f"tap.{time.monotonic_ns()}.out"
        self.err = directory / f"tap.{time.monotonic_ns()}.err"
        self.proc = subprocess.Popen([str(BIN / "wanctl-tap"), "--config", str(config), *args],
                                     stdout=open(self.out, "wb"), stderr=open(self.err, "wb"))
        wait_for(lambda: "connected" in self.err.read_text() or self.proc.poll() is not None, 20,
                 "the tap to connect")
        assert self.proc.poll() is None, self.err.read_text()

    def wait(self, timeout=20):
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def test_json_kind_filter_count_and_gap_report(bus_dir):
    directory, config, _ = bus_dir
    tap = Tap(directory, config, "--json", "--kind", "telemetry", "--count", "3")
    client = BusClient(load(config), [b"nothing"])
    try:
        client.subscribed(b"telemetry.wan1")
        for seq in (1, 2, 5):
            client.send(congested(seq, float(seq)))
            client.send(Heartbeat(stage="x", seq=seq, source="x"))
        assert tap.wait() == 0, tap.err.read_text()
        lines = [json.loads(line) for line in tap.out.read_text().splitlines()]
        assert [(m["kind"], m["seq"]) for m in lines] == [("telemetry", 1), ("telemetry", 2), ("telemetry", 5)]
        assert "gap: telemetry from collector (epoch 0): seq 3..4 missing (2)" in tap.err.read_text()
    finally:
        tap.close()
        client.close()


def test_wan_filter_human_readable(bus_dir):
    directory, config, _ = bus_dir
    tap = Tap(directory, config, "--wan", "wan2", "--count", "1")
    client = BusClient(load(config), [b"nothing"])
    try:
        client.subscribed(b"telemetry.wan1")
        client.send(congested(1, 1.0, wan="wan1"))
        client.send(idle(2, 2.0, wan="wan2"))
        assert tap.wait() == 0, tap.err.read_text()
        out = tap.out.read_text().splitlines()
        assert len(out) == 1 and "telemetry" in out[0] and "wan2" in out[0] and "rtt=12.0ms" in out[0]
    finally:
        tap.close()
        client.close()


def test_ctrl_c_exits_cleanly(bus_dir):
    directory, config, _ = bus_dir
    tap = Tap(directory, config)
    tap.proc.send_signal(signal.SIGINT)
    assert tap.wait(5) == 0
    assert "Traceback" not in tap.err.read_text()


def test_unknown_kind_is_a_usage_error(bus_dir):
    directory, config, _ = bus_dir
    result = subprocess.run([str(BIN / "wanctl-tap"), "--config", str(config), "--kind", "telemetri"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--kind must be one of" in result.stderr


def test_recorded_trace_replays_to_the_live_decisions(bus_dir):
    directory, config, stages = bus_dir
    stages.append(Stage("wanctl-scorer", config, directory))
    tap = Tap(directory, config, "--json", "--kind", "telemetry")
    client = BusClient(load(config), [b"heartbeat.scorer"])
    try:
        client.wait_message(lambda m: isinstance(m, Heartbeat), 20, "the scorer's heartbeat")
        client.subscribed(b"telemetry.wan1")
        seq, t = 0, 100.0
        for episode in range(2):
            for make, n in ((idle, 5), (congested, 8), (idle, 12)):
                for _ in range(n):
                    seq += 1
                    t += 0.2
                    client.send(make(seq, t))
                    time.sleep(0.01)
        wait_for(lambda: len(decision_seqs(directory / "scorer-journal.jsonl")) >= 4, 20, "live decisions")
        wait_for(lambda: len(tap.out.read_text().splitlines()) >= seq, 20, "the tap to record every sample")
        tap.proc.send_signal(signal.SIGINT)
        assert tap.wait(5) == 0
        result = subprocess.run([str(BIN / "wanctl-replay"), str(tap.out), "--config", str(config)],
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr

        def comparable(line):
            d = json.loads(line)
            d.pop("epoch", None)
            return d

        replayed = [comparable(line) for line in result.stdout.splitlines() if line.strip()]
        live = [comparable(line) for line in (directory / "scorer-journal.jsonl").read_bytes().splitlines()]
        assert replayed == live and len(live) >= 4
        assert {d["decision"] for d in live} == {"ENABLE_STEERING", "DISABLE_STEERING"}
    finally:
        tap.close()
        client.close()


def test_decision_lines_have_the_logger_format(bus_dir):
    # A decision printed by --json is exactly a decisions.jsonl line.
    directory, config, _ = bus_dir
    tap = Tap(directory, config, "--json", "--kind", "decision", "--count", "1")
    client = BusClient(load(config), [b"nothing"])
    try:
        d = Decision(seq=1, wan="wan1", t=1.0, wall=2.0, telemetry_seq=3, policy="confidence", driving=True,
                     fallback=False, decision="ENABLE_STEERING", state="DEGRADED", confidence=60, threshold=55,
                     flap_penalty=False, contributors=["RED"], sustained_s=2.0)
        client.subscribed(b"decision.wan1")
        client.send(d)
        assert tap.wait() == 0
        from proto.messages import to_json
        assert tap.out.read_bytes() == to_json(d) + b"\n"
    finally:
        tap.close()
        client.close()
