"""The calibration traces of the contract replay to exactly the decisions it requires.

Vendored under tests/examples/ (from the contract's examples), with configs that
name the policy explicitly: the default driving policy is now ``quality``.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent / "examples"
REPLAY = Path(sys.executable).parent / "wanctl-replay"

cases = sorted(p.name for p in EXAMPLES.iterdir())


def test_every_example_is_there():
    assert cases == ["fast_cadence", "flap_brake", "one_episode"]


@pytest.mark.parametrize("name", cases)
def test_example_replays_to_expected(name):
    case = EXAMPLES / name
    done = subprocess.run(
        [str(REPLAY), str(case / "trace.jsonl"), "--config", str(case / "config.yaml")],
        capture_output=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    got = [json.loads(line) for line in done.stdout.splitlines()]
    expected = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines() if line.strip()]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for key, value in e.items():
            if key == "sustained_s":
                assert g[key] == pytest.approx(value, abs=1e-6), (e["seq"], key)
            else:
                assert g[key] == value, (e["seq"], key)
