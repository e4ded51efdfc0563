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


def mixed_trace(tmp_path, wans: int) -> Path:
    """Several WANs with episodes, interleaved, plus every kind of junk line and a sample
    whose WAN only a full decode finds (NaN in a field the light decode cannot skip past)."""
    rng = random.Random(5)
    feeds = [Feed(f"wan{i}") for i in range(1, wans + 1)]
    chunks = []
    for _ in range(4):
        for feed in feeds:
            chunks.append(feed.seconds(rng.choice([3.0, 10.0]), 0.5, **STEER_NOW)
                          + feed.seconds(rng.choice([5.0, 45.0]), 0.5, **GREEN))
    samples = sorted((s for chunk in chunks for s in chunk), key=lambda s: (s.t, s.wan))
    lines = [msgspec.json.encode(s) for s in samples]
    junk = [
        b"not json at all", b"[1, 2, 3]", b"", b'{"kind": "decision", "seq": 1, "wan": "wan2"}',
        b'{"kind": "telemetry", "wan": "wan3"}',
        b'{"kind": "telemetry", "wan": "wan1", "seq": 1, "stream": "boot-a", "t": 1e9, "wall": 1, "rtt_ms": NaN}',
        b'{"kind": "telemetry", "wan": "wan2", "seq": 1, "stream": "boot-a", "t": 1.0, "wall": 1, "rtt_ms": 5}',
        b'{"kind": "telemetry", "wan": "wan9", "seq": 1, "stream": "boot-a", "t": 1.0, "wall": 1, "rtt_ms": 5}',
        b'{"kind": "telemetry", "wan": "bad name!", "seq": 1, "stream": "s", "t": 1.0, "wall": 1, "rtt_ms": 5}',
        b'{"wan": "wan1"',
    ]
    for item in junk:
        lines.insert(rng.randrange(len(lines) // 4, len(lines)), item)
    # Valid JSON only to the standard parser (NaN in a field the sample does not have): the
    # light decode fails, the full decode finds a good sample of wan2 that must be scored
    # by wan2's process, in order.
    at = len(lines) // 2
    odd = json.loads(lines[at])
    odd["extra"] = float("nan")
    lines.insert(at + 1, json.dumps({**odd, "seq": odd["seq"] + 1000, "t": odd["t"] + 0.01}).encode())
    path = tmp_path / f"mixed{wans}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("config_text", [
    "{}\n",
    "scorer:\n  policy: confidence\n  shadow: true\n",
    "scorer:\n  shadow: true\nwans:\n" + "".join(
        f"  - {{name: wan{i}, queue: q{i}, rule_comment: r{i}{', alternate: wan' + str(i % 4 + 1) if i <= 2 else ''}}}\n"
        for i in range(1, 6)),
])
def test_jobs_give_the_same_output_as_one_process(tmp_path, config_text):
    trace = mixed_trace(tmp_path, 5)
    config = tmp_path / "c.yaml"
    config.write_text(config_text)
    one = replay(trace, "--config", config)
    assert one.returncode == 0 and one.stdout.count(b"\n") >= 20, one.stderr
    assert b"line " in one.stderr
    for jobs in ("2", "3"):
        many = replay(trace, "--config", config, "--jobs", jobs)
        assert many.returncode == 0
        assert many.stdout == one.stdout
        assert many.stderr == one.stderr
    out = tmp_path / "out.jsonl"
    assert replay(trace, "--config", config, "--jobs", "2", "--out", out).returncode == 0
    assert out.read_bytes() == one.stdout


def test_jobs_over_max_wans_and_strict_still_give_one_process_output(tmp_path):
    trace = mixed_trace(tmp_path, 5)
    config = tmp_path / "c.yaml"
    config.write_text("scorer:\n  max_wans: 3\n")
    one = replay(trace, "--config", config)
    assert b"too_many_wans" in one.stderr
    many = replay(trace, "--config", config, "--jobs", "2")
    assert (many.returncode, many.stdout, many.stderr) == (one.returncode, one.stdout, one.stderr)
    strict_one = replay(trace, "--config", config, "--strict")
    strict_many = replay(trace, "--config", config, "--strict", "--jobs", "2")
    assert strict_one.returncode == 1
    assert (strict_many.returncode, strict_many.stdout, strict_many.stderr) == (
        strict_one.returncode, strict_one.stdout, strict_one.stderr)
