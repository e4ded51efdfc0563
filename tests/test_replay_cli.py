"""wanctl-replay parses an everyday command line itself and leaves the rest to the house CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scorer.replay import _plain_arguments

REPLAY = str(Path(sys.executable).parent / "wanctl-replay")
EXAMPLE = Path(__file__).parent / "examples"


def test_everyday_command_lines_are_parsed_without_the_cli():
    assert _plain_arguments(["t.jsonl", "--config", "c.yaml"]) == (Path("t.jsonl"), Path("c.yaml"), None, False, [], 1)
    assert _plain_arguments(["--config=c.yaml", "--strict", "--set", "a.b=1", "t", "--out", "o", "--set=x=2"]) == (
        Path("t"), Path("c.yaml"), Path("o"), True, ["a.b=1", "x=2"], 1)
    assert _plain_arguments(["t", "--config", "c", "--jobs", "2"]) == (Path("t"), Path("c"), None, False, [], 2)


def test_anything_else_goes_to_the_cli():
    for argv in (["--help"], ["--version"], ["t"], ["--config", "c"], ["t", "u", "--config", "c"],
                 ["t", "--config"], ["t", "--config", "--strict"], ["t", "--config", "c", "--config", "d"],
                 ["t", "--config", "c", "-x"], ["t", "--config", "c", "--strict=1"], ["-", "--config", "c"],
                 ["t", "--config", ""], ["t", "--conf", "c"], ["t", "--config", "c", "--jobs", "0"],
                 ["t", "--config", "c", "--jobs", "x"]):
        assert _plain_arguments(argv) is None, argv


def test_both_paths_give_the_same_replay(tmp_path):
    trace = EXAMPLE / "one_episode" / "trace.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    plain = subprocess.run([REPLAY, str(trace), "--config", str(config)], capture_output=True, timeout=60)
    # "--" sends the command line through the CLI parser.
    parsed = subprocess.run([REPLAY, "--config", str(config), "--", str(trace)], capture_output=True, timeout=60)
    assert plain.returncode == parsed.returncode == 0, (plain.stderr, parsed.stderr)
    assert plain.stdout == parsed.stdout and plain.stdout.count(b"\n") > 0
    assert plain.stderr == parsed.stderr
    missing = subprocess.run([REPLAY, str(tmp_path / "none.jsonl"), "--config", str(config)],
                             capture_output=True, timeout=60)
    assert missing.returncode == 1 and b"cannot read trace" in missing.stderr
