"""Every console script answers --help and a usage error as typer should, and
(with WANCTL_TEST_FLOORS=1, in the venv `make test-floors` builds) the
installed dependencies are exactly the floors in constraints/floors.txt.

The --help check is what catches a typer that does not fit the installed
click: such a pair imports and runs commands, and fails only when it prints
usage (TypeError from make_metavar, KeyError 'ctx')."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def floors() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_prints_its_help(script):
    result = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage:" in result.stdout or "usage:" in result.stdout, result.stdout


def test_a_usage_error_is_exit_2_with_a_message():
    result = subprocess.run([str(BIN / "wanctl-replay"), "--no-such-option"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "No such option" in result.stderr


@pytest.mark.skipif(os.environ.get("WANCTL_TEST_FLOORS") != "1",
                    reason="the floors venv only (make test-floors sets WANCTL_TEST_FLOORS=1)")
def test_the_installed_dependencies_are_the_floors():
    installed = {name: metadata.version(name) for name in floors()}
    assert installed == floors()


def test_the_floors_are_the_lower_bounds_in_pyproject():
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = {}
    for requirement in requirements:
        name, _, rest = requirement.partition(">=")
        lower[name.strip().lower()] = rest.split(",")[0].strip()
    pins = {name.lower(): version for name, version in floors().items()}
    assert {name: pins.get(name) for name in lower} == lower
