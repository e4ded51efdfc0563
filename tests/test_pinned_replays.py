"""Phase 2B and 2A replay byte for byte as before the quality policy (SPEC 5.1-5.7)."""

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

PINNED = Path(__file__).resolve().parent / "pinned"
REPLAY = Path(sys.executable).parent / "wanctl-replay"
TRACES = sorted(p.name[: -len(".jsonl.gz")] for p in PINNED.glob("*.jsonl.gz"))
SETTINGS = {
    "confidence": ["--set", "scorer.policy=confidence", "--set", "scorer.shadow=[hysteresis]"],
    "hysteresis": ["--set", "scorer.policy=hysteresis", "--set", "scorer.shadow=false"],
}


def test_the_pinned_set_is_there():
    assert len(TRACES) == 6


@pytest.mark.parametrize("policy", sorted(SETTINGS))
@pytest.mark.parametrize("name", TRACES)
def test_replay_equals_the_pinned_output(tmp_path, name, policy):
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(gzip.decompress((PINNED / f"{name}.jsonl.gz").read_bytes()))
    config = tmp_path / "wanctl.yaml"
    config.write_text("{}\n")
    done = subprocess.run([str(REPLAY), str(trace), "--config", str(config), *SETTINGS[policy]],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == (PINNED / f"{name}.{policy}.jsonl").read_bytes()
