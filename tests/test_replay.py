"""wanctl-replay as a user runs it: a subprocess over trace files."""

import json
import random
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from tests.scoring import GREEN, Feed

REPLAY = Path(sys.executable).parent / "wanctl-replay"
STEER_NOW = dict(cake_state=None, rtt_ms=170.0, queue_depth_pct=80.0, drops_per_sec=8.0)


def replay(*args, timeout=120):
    return subprocess.run([str(REPLAY), *map(str, args)], capture_output=True, timeout=timeout)


@pytest.fixture
def clean_trace(tmp_path):
    rng = random.Random(3)
    feeds = [Feed("wan1"), Feed("wan2")]
    lines = []
    for _ in range(5):
        for feed in feeds:
            chunk = feed.seconds(rng.choice([3.0, 10.0]), 0.5, **STEER_NOW) + feed.seconds(45.0, 0.5, **GREEN)
            lines += [msgspec.json.encode(s) for s in chunk]
    path = tmp_path / "clean.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "wanctl.yaml"
    path.write_text("scorer:\n  policy: confidence\n  shadow: [hysteresis]\n")
    return path


def test_same_trace_twice_gives_byte_identical_output(clean_trace, config):
    first, second = replay(clean_trace, "--config", config), replay(clean_trace, "--config", config)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and first.stdout.count(b"\n") >= 10
    for line in first.stdout.splitlines():
        d = json.loads(line)
        assert d["kind"] == "decision" and set(d) >= {
            "seq", "wan", "t", "wall", "telemetry_seq", "policy", "driving", "fallback", "decision",
            "state", "confidence", "threshold", "flap_penalty", "contributors", "sustained_s"}


def test_junk_lines_give_the_same_decisions_as_the_clean_trace(clean_trace, config, tmp_path):
    lines = clean_trace.read_bytes().splitlines()
    junk = [
        b"not json at all", b"[1, 2, 3]", b"42", b'"a string"', b"", b"   ",
        b'{"kind": "decision", "seq": 1}',
        b'{"kind": "heartbeat", "stage": "collector", "seq": 3}',
        b'{"kind": "telemetry", "wan": "wan1"}',
        b'{"kind": "telemetry", "wan": "wan1", "seq": 1, "stream": "boot-a", "t": "soon", "wall": 1}',
        b'{"kind": "telemetry", "wan": "wan1", "seq": 1, "stream": "boot-a", "t": 1e9, "wall": 1, "rtt_ms": NaN}',
        b'{"kind": "telemetry", "wan": "wan1", "seq": 1, "stream": "boot-a", "t": 1e9, "wall": 1, "rtt_ms": -4}',
        b'{"kind": "telemetry", "wan": "wan2", "seq": 1, "stream": "boot-a", "t": 1.0, "wall": 1, "rtt_ms": 5}',
        b'{"kind": "telemetry", "wan": "wan1", "seq": 1, "stream": "boot-a", "t": 1e9, "wall": 1, "cake_state": "BLUE"}',
        b'{"wan": "wan1"',
    ]
    rng = random.Random(9)
    dirty = list(lines)
    for item in junk:
        dirty.insert(rng.randrange(len(lines) // 3, len(dirty)), item)
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(b"\n".join(dirty) + b"\n")
    clean, noisy = replay(clean_trace, "--config", config), replay(path, "--config", config)
    assert noisy.returncode == 0
    assert noisy.stdout == clean.stdout
    err = noisy.stderr.decode()
    for cause in ("not_json", "not_object", "bad_telemetry", "non_finite", "negative_value", "out_of_order",
                  "unknown_state"):
        assert f": {cause}:" in err
    # Every invalid line is reported with its number; blank and other-kind lines are silent.
    reported = [line for line in err.splitlines() if line.startswith("line ")]
    assert len(reported) == len(junk) - 4
    assert "invalid" in err.splitlines()[-1]


def test_strict_stops_at_the_first_invalid_line(clean_trace, config, tmp_path):
    lines = clean_trace.read_bytes().splitlines()
    path = tmp_path / "strict.jsonl"
    path.write_bytes(b"\n".join(lines[:5] + [b"{oops"] + lines[5:]) + b"\n")
    done = replay(path, "--config", config, "--strict")
    assert done.returncode == 1
    assert b"line 6: not_json" in done.stderr
    assert replay(clean_trace, "--config", config, "--strict").returncode == 0


def test_out_writes_the_decisions_to_a_file(clean_trace, config, tmp_path):
    out = tmp_path / "decisions.jsonl"
    done = replay(clean_trace, "--config", config, "--out", out)
    assert done.returncode == 0 and done.stdout == b""
    assert out.read_bytes() == replay(clean_trace, "--config", config).stdout


def test_set_overrides_change_the_decisions(clean_trace, config):
    base = replay(clean_trace, "--config", config).stdout.splitlines()
    stricter = replay(clean_trace, "--config", config, "--set", "scorer.shadow=false",
                      "--set", "scorer.confidence.sustain_s=5").stdout.splitlines()
    assert all(json.loads(line)["policy"] == "confidence" for line in stricter)
    assert len(stricter) < len(base)
    bad = replay(clean_trace, "--config", config, "--set", "scorer.flap.max_toggles=0")
    assert bad.returncode == 2 and b"scorer.flap.max_toggles: must be >= 1, got 0" in bad.stderr


def test_trace_with_missing_optional_fields_and_unknown_fields(tmp_path, config):
    rows = [{"wan": "w", "seq": i, "stream": "s", "t": 100 + i * 0.5, "wall": 0, "rtt_ms": 200, "baseline_rtt_ms": 20,
             "cake_state": "RED", "future_field": {"x": 1}} for i in range(10)]
    path = tmp_path / "minimal.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    done = replay(path, "--config", config)
    assert done.returncode == 0, done.stderr
    decisions = [json.loads(line) for line in done.stdout.splitlines()]
    assert [d["policy"] for d in decisions] == ["hysteresis", "confidence"]


def test_missing_trace_file_is_a_clear_error(config, tmp_path):
    done = replay(tmp_path / "nope.jsonl", "--config", config)
    assert done.returncode == 1 and b"cannot read trace" in done.stderr
