"""Real processes for pipeline tests: stage subprocesses, bus clients, supervisord.

Every wait has a deadline (``wait_for``); every process started here is
stopped by its owner's ``close``/``stop`` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import yaml
import zmq

from bus import sockets as bus
from proto.config import Config, ConfigError, load_config, parse_config, resolve_path
from runtime.health import STAGES
from proto.messages import Message, from_json
from tests.support import free_port, wait_for  # noqa: F401  (re-exported for the pipeline tests)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def health_ports() -> dict[str, int]:
    """A free loopback port for every stage's health endpoint (never the fixed defaults 9461-9465)."""
    ports: dict[str, int] = {}
    while len(ports) < len(STAGES):
        port = free_port()
        if port not in ports.values():
            ports[STAGES[len(ports)]] = port
    return ports


def short_tmp(prefix: str = "wc") -> Path:
    """A short temp dir under /tmp (ipc paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def fast_scorer(**extra) -> dict:
    """Scorer timings for tests: episodes of a few seconds steer on and off."""
    cfg = {
        "policy": "confidence",  # these timings are Phase 2B's; the quality policy has its own tests
        "shadow": ["hysteresis"],
        "max_gap_s": 5.0,
        "confidence": {"sustain_s": 1.0, "recovery_sustain_s": 1.0, "hold_down_s": 2.0},
        "flap": {"enabled": False},
        "hysteresis": {"green_samples_required": 4},
        "persist_interval_s": 0.5,
        "state_interval_s": 0.5,
    }
    cfg.update(extra)
    return cfg


def write_config(directory: Path, raw: dict, name: str = "wanctl.yaml") -> Path:
    """A config whose paths all live in ``directory``."""
    raw = dict(raw)
    raw.setdefault("bus", {})
    raw["bus"] = {"run_dir": str(directory / "run"), **raw["bus"]}
    raw.setdefault("scorer", {})
    raw["scorer"] = {"state_path": str(directory / "scorer-state.msgpack"),
                     "journal_path": str(directory / "scorer-journal.jsonl"), **raw["scorer"]}
    raw.setdefault("logger", {})
    raw["logger"] = {"path": str(directory / "decisions.jsonl"), **raw["logger"]}
    raw["health"] = {**health_ports(), **raw.get("health", {})}
    path = directory / name
    path.write_text(yaml.safe_dump(raw))
    return path


def load(path: Path) -> Config:
    return parse_config(yaml.safe_load(path.read_text()), str(path.parent))


def decision_seqs(path: Path) -> list[int]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            out.append(msgspec.json.decode(line)["seq"])
    return out


class StageFailed(AssertionError):
    """A stage subprocess exited with an unexpected status or did not stop in time."""


class Stage:
    """One stage (console script) as a real subprocess, output to a file.

    ``stop`` fails (``StageFailed``, with the stage's output) when the stage
    needs a SIGKILL to stop or exits with a status other than ``expect``.
    """

    STOP_TIMEOUT_S = 5.0

    def __init__(self, script: str, config: Path, log_dir: Path, *args: str, env: dict | None = None) -> None:
        self.name = script
        try:
            self.cfg: Config | None = load_config(config)
        except (ConfigError, OSError):
            self.cfg = None  # a stage started on a bad config on purpose: it exits by itself
        self.log_path = log_dir / f"{script}.{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.stop_s: float | None = None  # how long the last stop took
        self.proc = subprocess.Popen(
            [str(BIN / script), "--config", str(config), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            cwd=str(log_dir),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_started(self, timeout: float = 10.0) -> None:
        """Wait until the stage holds its role lock (its pid in a ``*.lock`` of the run dir), or has exited.

        A stage installs its SIGTERM handler before it takes the lock; a SIGTERM
        earlier than that, while the interpreter is still starting, kills it
        with -15 whatever the stage does, so ``stop`` waits for this first.
        """
        if self.cfg is None:
            return
        run_dir = resolve_path(self.cfg, self.cfg.bus.run_dir)
        mine = f"{self.proc.pid}\n"

        def started() -> bool:
            if self.proc.poll() is not None:
                return True
            for lock in run_dir.glob("*.lock"):
                try:
                    if lock.read_text() == mine:
                        return True
                except OSError:
                    pass
            return False

        deadline = time.monotonic() + timeout
        while not started() and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL on purpose (crash tests): its status is not checked."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self, timeout: float | None = None, expect: int | None = 0) -> int:
        """SIGTERM and wait; returns the exit status.

        Fails if the stage is still running after ``timeout`` seconds (it is
        then SIGKILLed) or if it exits with a status other than ``expect``
        (``None`` accepts any; a stage that already exited is checked too).
        """
        timeout = self.STOP_TIMEOUT_S if timeout is None else timeout
        slow = False
        self.wait_started()
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                slow = True
                self.proc.kill()
                self.proc.wait(10)
            self.stop_s = time.monotonic() - t0
        if not self._log.closed:
            self._log.close()
        status = self.proc.returncode
        if slow:
            raise StageFailed(f"{self.name} did not stop within {timeout:g} s of SIGTERM (killed)\n"
                              f"{self.output()[-3000:]}")
        if expect is not None and status != expect:
            raise StageFailed(f"{self.name} exited with status {status}, expected {expect}\n{self.output()[-3000:]}")
        return status


def stop_all(stages) -> None:
    """Stop every stage (each one, even after a failure); then fail with every stage that stopped badly."""
    failures = []
    for stage in reversed(list(stages)):
        try:
            stage.stop()
        except StageFailed as error:
            failures.append(str(error))
    if failures:
        raise StageFailed("\n\n".join(failures))


class BusClient:
    """A test's own publisher and subscriber on the bus."""

    def __init__(self, cfg: Config, prefixes: list[bytes] = (b"",)) -> None:
        self.ctx = zmq.Context()
        self.pub = bus.watched_publisher(self.ctx, cfg)
        self.subscriptions: set[bytes] = set()
        self.sub = bus.subscriber(self.ctx, cfg, list(prefixes))
        self.decoder = bus.FrameDecoder()
        self.seen: list[Message] = []

    def connected(self, timeout: float = 15.0) -> None:
        if not bus.wait_welcome(self.sub, timeout):
            raise AssertionError(f"no welcome from the bus within {timeout}s")

    def subscribed(self, topic: bytes, timeout: float = 15.0) -> None:
        """Wait until something on the bus subscribes to ``topic`` (then a send reaches it)."""
        if not bus.wait_subscribed(self.pub, topic, timeout, self.subscriptions):
            raise AssertionError(f"nobody subscribed to {topic!r} within {timeout}s (seen {self.subscriptions})")

    def send(self, message: Message) -> None:
        bus.publish(self.pub, message)

    def send_raw(self, frames: list[bytes]) -> None:
        self.pub.send_multipart(frames)

    def drain(self, wait_ms: int = 0) -> list[Message]:
        got = []
        if self.sub.poll(wait_ms, zmq.POLLIN):
            for frames in bus.pending_frames(self.sub):
                message = self.decoder.decode(frames)
                if message is not None:
                    got.append(message)
        self.seen.extend(got)
        return got

    def wait_message(self, match, timeout: float, what: str) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.drain(50):
                if match(message):
                    return message
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")

    def close(self) -> None:
        self.pub.close(0)
        self.sub.close(0)
        self.ctx.term()


class Supervisor:
    """The repo's supervisord.conf, run for real in a temp directory.

    The directory gets a copy of ``supervisord.conf`` and a ``.venv`` link to
    this interpreter's environment, so ``%(here)s`` paths resolve as they do in
    the repo; the test supplies ``wanctl.sim.yaml``.  ``sim_args`` replaces the
    sim program's arguments (free port, test scenario).
    """

    def __init__(self, directory: Path, config: dict, *, sim_args: str, scenario: Path | None = None) -> None:
        self.dir = directory
        venv = Path(sys.prefix)
        (directory / ".venv").symlink_to(venv)
        text = (REPO / "supervisord.conf").read_text()
        lines = []
        in_sim = False
        for line in text.splitlines():
            if line.startswith("["):
                in_sim = line.strip() == "[program:sim]"
            if in_sim and line.startswith("command="):
                line = f"command=%(here)s/.venv/bin/wanctl-sim {sim_args}"
            lines.append(line)
        self.conf = directory / "supervisord.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        config = dict(config)  # everything under the directory's var/ (absolute: not moved to var/<config stem>/)
        var = directory / "var"
        config["bus"] = {"run_dir": str(var / "run"), **config.get("bus", {})}
        config["scorer"] = {"state_path": str(var / "scorer-state.msgpack"),
                            "journal_path": str(var / "scorer-journal.jsonl"), **config.get("scorer", {})}
        config["logger"] = {"path": str(var / "decisions.jsonl"), **config.get("logger", {})}
        (directory / "var").mkdir()
        self.config_path = write_config(directory, config, "wanctl.sim.yaml")
        self.cfg = load(self.config_path)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "WANCTL_CONFIG": str(self.config_path), "WANCTL_VAR": str(self.dir / "var")}
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-n", "-c", str(self.conf)], cwd=str(self.dir),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        wait_for(lambda: (self.dir / "var" / "supervisor.sock").exists(), timeout, "supervisord's socket")

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        result = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args], cwd=str(self.dir),
                                capture_output=True, text=True, timeout=timeout)
        return result.stdout + result.stderr

    def status(self) -> dict[str, str]:
        out = {}
        for line in self.ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("wanctl:"):
                out[parts[0].split(":", 1)[1]] = parts[1]
        return out

    def wait_running(self, names: list[str], timeout: float = 60.0) -> None:
        wait_for(lambda: all(self.status().get(n) == "RUNNING" for n in names), timeout,
                 lambda: f"{names} RUNNING under supervisord (now {self.status()})\n{self.logs()}", interval=0.3)

    def pid(self, name: str) -> int:
        out = self.ctl("pid", f"wanctl:{name}").strip()
        return int(out) if out.isdigit() else 0

    def kill(self, name: str) -> int:
        """SIGKILL one stage (supervisord restarts it); returns the killed pid."""
        pid = self.pid(name)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_paths(self) -> list[Path]:
        """The files supervisord writes: its own log and every program's ``stdout_logfile`` (under var/)."""
        return sorted((self.dir / "var").glob("*.log"))

    def logs(self, lines: int = 20) -> str:
        """The last ``lines`` of every log, read now: pass ``sup.logs`` (not ``sup.logs()``) to ``wait_for``."""
        out = []
        for path in self.log_paths():
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out) or f"(no logs under {self.dir / 'var'})"

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def read_jsonl(path: Path) -> list[Message]:
    return [from_json(line) for line in path.read_bytes().splitlines() if line.strip()]
