"""Every console script: --version, one help style, and the tap failing fast away from its pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from runtime.cli import version
from runtime.status import format_table
from tests.supervisor_harness import short_tmp, write_config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
ENV = {k: v for k, v in os.environ.items() if k != "WANCTL_CONFIG"}


def run(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=ENV, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_prints_its_version(script):
    result = run(script, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wanctl {version()}\n"
    assert version() != "unknown"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_the_same_help_style(script):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"Usage: {script} [OPTIONS]"), text[:200]
    assert "--version" in text and "--help" in text
    assert "<bool>" not in text, f"a flag shown as taking a value:\n{text}"
    usage = text.splitlines()[0]
    assert "{" not in usage and "}" not in usage, usage
    assert "╭" not in text  # plain text, the same in every script


def test_flags_and_arguments_read_as_such():
    replay = run("wanctl-replay", "--help").stdout
    assert replay.startswith("Usage: wanctl-replay [OPTIONS] TRACE\n")
    assert any(line.split()[:1] == ["--strict"] and "Stop with exit 1" in line for line in replay.splitlines())


def test_the_no_op_actuator_describes_itself():
    live = run("wanctl-actuator", "--help").stdout
    noop = run("wanctl-actuator-noop", "--help").stdout
    assert "Dry run" in noop and "never writing to the router" in noop
    assert "Dry run" not in live and "Drive each WAN's mangle rule" in live


def test_stage_events_keeps_the_listener_protocol(tmp_path):
    """Under typer, wanctl-stage-events still speaks supervisord's listener protocol on stdin/stdout."""
    log = tmp_path / "events.jsonl"
    payload = "processname:scorer groupname:wanctl from_state:RUNNING expected:0 pid:42"
    header = f"ver:3.0 server:supervisor serial:1 pool:stage-events poolserial:1 eventname:PROCESS_STATE_EXITED " \
             f"len:{len(payload)}\n"
    result = subprocess.run([str(BIN / "wanctl-stage-events"), "--log", str(log)], input=header + payload,
                            capture_output=True, text=True, timeout=30, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "READY\nRESULT 2\nOKREADY\n"
    assert '"process": "scorer"' in log.read_text() and '"event": "unexpected_exit"' in log.read_text()


def test_the_tap_away_from_its_pipeline_fails_fast_and_says_why():
    directory = short_tmp()
    try:
        config = write_config(directory, {})
        elsewhere = short_tmp()
        t0 = time.monotonic()
        result = run("wanctl-tap", "--config", str(config), "--connect-timeout", "1", cwd=elsewhere)
        took = time.monotonic() - t0
        assert result.returncode == 1
        assert f"no bus socket at {directory}/run/sub.sock" in result.stderr
        assert "is the pipeline running with this config?" in result.stderr
        assert took < 10, took
        # Without any config, the defaults are relative to the current directory, and it says so.
        t0 = time.monotonic()
        result = run("wanctl-tap", cwd=elsewhere, timeout=30)  # the default deadline
        assert result.returncode == 1 and "no --config" in result.stderr and str(elsewhere) in result.stderr
        assert time.monotonic() - t0 < 15
        elsewhere.rmdir()
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


def test_status_shows_live_or_dry_run_per_wan_and_the_actuators_reason():
    report = {"ok": False, "stages": {"actuator": {
        "stage": "actuator", "status": "degraded", "uptime_s": 12.0,
        "reasons": {"router": "cannot reach 192.0.2.1:8728: timed out"},
        "counters": {}, "last_message": None,
        "details": {"dry_run": False, "modes": {"wan1": "live", "wan2": "dry_run", "wan3": "live"}, "rules": {
            "wan1": {"mode": "live", "desired": "DEGRADED", "observed": None, "result": "failed",
                     "error": "timed out", "decision_seq": 7},
            "wan2": {"mode": "dry_run", "desired": "GOOD", "observed": "GOOD", "result": "dry_run", "error": None,
                     "decision_seq": 3}}}}}}
    text = format_table(report)
    assert "router: cannot reach 192.0.2.1:8728: timed out" in text
    assert "actuator/wan1: live, desired DEGRADED, observed -, failed (decision #7), error: timed out" in text
    assert "actuator/wan2: dry run, desired GOOD, observed GOOD, dry_run (decision #3)" in text
    assert "actuator/wan3: live, desired -, observed -, - (decision #-)" in text  # no actuation yet
