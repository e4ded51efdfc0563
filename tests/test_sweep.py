"""wanctl-sweep: every variant's decisions are exactly wanctl-replay's with the same settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scorer.sweep import against_loads, variant_name, variants

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).parent / "examples"
REALTRACES = Path(__file__).resolve().parents[1].parent / "shared" / "realtraces"


@pytest.fixture
def tmp(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def replay(trace: Path, config: Path, overrides: list[str]) -> bytes:
    args = [str(BIN / "wanctl-replay"), str(trace), "--config", str(config)]
    for o in overrides:
        args += ["--set", o]
    return subprocess.run(args, capture_output=True, check=True, timeout=60).stdout


@pytest.mark.parametrize("example, sets", [
    ("flap_brake", ["scorer.confidence.sustain_s=1,2", "scorer.flap.max_toggles=2,4", "scorer.shadow=true"]),
    ("fast_cadence", ["scorer.policy=quality,confidence,hysteresis", "scorer.quality.sustain_s=1.5,3"]),
])
def test_each_variant_equals_wanctl_replay(tmp, example, sets):
    trace, config = EXAMPLES / example / "trace.jsonl", EXAMPLES / example / "config.yaml"
    out = tmp / "out"
    args = [str(BIN / "wanctl-sweep"), str(trace), "--config", str(config), "--jobs", "2", "--json",
            "--out-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = variants([(s.split("=")[0], s.split("=", 1)[1].split(",")) for s in sets])
    assert [r["variant"] for r in rows] == expected
    some = 0
    for overrides, row in zip(expected, rows):
        want = replay(trace, config, overrides)
        assert (out / f"{variant_name(overrides)}.jsonl").read_bytes() == want, overrides
        lines = [json.loads(x) for x in want.splitlines()]
        some += len(lines)
        for policy, p in row["policies"].items():
            assert p["decisions"] == sum(1 for d in lines if d["policy"] == policy)
            assert p["episodes"] == sum(1 for d in lines if d["policy"] == policy
                                        and d["decision"] == "ENABLE_STEERING")
    assert some > 0


def test_a_bad_value_exits_2_naming_the_key(tmp):
    trace, config = EXAMPLES / "one_episode" / "trace.jsonl", EXAMPLES / "one_episode" / "config.yaml"
    result = subprocess.run([str(BIN / "wanctl-sweep"), str(trace), "--config", str(config),
                             "--set", "scorer.confidence.sustain_s=1,-3"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "scorer.confidence.sustain_s" in result.stderr


def test_episodes_against_load_windows():
    labels = {"load": [[100.0, 160.0]], "end_t": 400.0}
    # An ENABLE 3 s into the load, DISABLE 6 s after its end; one false steer long after.
    got = against_loads([(103.0, 166.0), (300.0, 310.0)], labels, 400.0)
    assert got == {"false_steers": 1, "missed_loads": 0, "onset_s": [3.0], "recovery_s": [6.0]}
    assert against_loads([], labels, 400.0)["missed_loads"] == 1


@pytest.mark.skipif(not (REALTRACES / "index.json").exists(), reason="realtraces not beside the repository")
def test_labels_from_the_realtraces_index(tmp):
    index = json.loads((REALTRACES / "index.json").read_text())
    name = "flent_wifi_tcp50up__q_at_0.5"
    trace = REALTRACES / index["traces"][name]["file"]
    config = tmp / "c.yaml"
    config.write_text("{}\n")
    result = subprocess.run([str(BIN / "wanctl-sweep"), str(trace), "--config", str(config), "--json",
                             "--labels", str(REALTRACES / "index.json"), "--set", "scorer.quality.sustain_s=2,3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    quality = rows[0]["policies"]["quality"]
    assert quality["missed_loads"] == 0 and quality["false_steers"] == 0 and quality["onset_s"]
