"""No lost decision and no crash loop, with real processes on a real bus: a forged decision on the
bus never reaches decisions.jsonl; a full disk (a small tmpfs) under the scorer and the logger
degrades their health, publishes nothing undurable, restarts nothing, and once space is back the
file equals the journal; bus.run_dir is never chmodded and an unsafe one is refused."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from proto.messages import Decision
from tests.supervisor_harness import (
    BIN, BusClient, Stage, decision_seqs, load, read_jsonl, short_tmp, stop_all, wait_for, write_config,
)
from tests.support import INSTANT, congested, idle


@pytest.fixture
def workdir():
    directory = short_tmp()
    stages: list[Stage] = []
    mounts: list[Path] = []
    yield directory, stages, mounts
    try:
        stop_all(stages)
    finally:
        for mount in mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(directory, ignore_errors=True)


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Feeder:
    """Telemetry that makes the INSTANT scorer decide on every sample (congested, idle, ...)."""

    def __init__(self, client: BusClient) -> None:
        self.client = client
        self.seq = 0

    def send(self, n: int, pause: float = 0.03) -> None:
        for _ in range(n):
            self.seq += 1
            self.client.send(congested(self.seq, self.seq * 0.1) if self.seq % 2 else idle(self.seq, self.seq * 0.1))
            time.sleep(pause)


def test_a_forged_decision_on_the_bus_is_never_written(workdir):
    directory, stages, _ = workdir
    config = write_config(directory, {"scorer": INSTANT})
    cfg = load(config)
    stages += [Stage(f"wanctl-{name}", config, directory) for name in ("bus", "scorer", "logger")]
    client = BusClient(cfg, [b"decision."])
    try:
        client.connected()
        client.subscribed(b"telemetry.")
        feed = Feeder(client)
        feed.send(6)
        logged = directory / "decisions.jsonl"
        journal = directory / "scorer-journal.jsonl"
        wait_for(lambda: decision_seqs(logged) == [1, 2, 3, 4, 5, 6], 20, lambda: f"seqs 1-6 logged: "
                 f"{decision_seqs(logged)}")
        real = read_jsonl(journal)[-1]
        forged = Decision(seq=7, wan="wan1", t=real.t + 0.1, wall=1e308, telemetry_seq=99, policy=real.policy,
                          driving=True, fallback=False, decision="ENABLE_STEERING", state="DEGRADED",
                          confidence=100, threshold=55, flap_penalty=False, contributors=["forged"],
                          sustained_s=0.0, source="scorer", epoch=real.epoch)
        seen = health(cfg.health.logger)[1]["counters"]["live_decisions_seen"]
        wait_for(lambda: health(cfg.health.logger)[1]["counters"]["live_decisions_seen"] > seen or client.send(forged),
                 10, "the logger to see the forged decision")
        time.sleep(1.0)  # it asked the journal, which has no seq 7
        assert decision_seqs(logged) == [1, 2, 3, 4, 5, 6]
        feed.send(2)  # the real seqs 7 and 8
        wait_for(lambda: decision_seqs(journal) == list(range(1, 9)) and logged.read_bytes() == journal.read_bytes(),
                 20, lambda: f"the file to equal the journal: {decision_seqs(logged)} / {decision_seqs(journal)}")
        assert b"forged" not in logged.read_bytes() and b"1e308" not in logged.read_bytes()
        report = subprocess.run([str(BIN / "wanctl-report"), str(logged), "--json"], capture_output=True,
                                text=True, timeout=60)
        assert report.returncode == 0 and json.loads(report.stdout)["decisions"] == 8, report.stderr
    finally:
        client.close()


def mount_tmpfs(path: Path, mounts: list[Path], size: str = "256k") -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    mounts.append(path)


def fill(disk: Path) -> Path:
    """Take every free block of ``disk``; returns the filler (delete it to give the space back)."""
    filler = disk / "filler"
    chunk = b"\xff" * 4096
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
    for small in (1024, 256, 16, 1):
        with open(filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\xff" * small)
            except OSError:
                pass
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_loses_no_decision_and_restarts_nothing(workdir):
    directory, stages, mounts = workdir
    scorer_disk, logger_disk = directory / "sdisk", directory / "ldisk"
    mount_tmpfs(scorer_disk, mounts)
    mount_tmpfs(logger_disk, mounts)
    config = write_config(directory, {
        "scorer": {**INSTANT, "state_path": str(scorer_disk / "state.msgpack"),
                   "journal_path": str(scorer_disk / "journal.jsonl"), "persist_interval_s": 0.5},
        "logger": {"path": str(logger_disk / "decisions.jsonl")},
    })
    cfg = load(config)
    stages += [Stage(f"wanctl-{name}", config, directory) for name in ("bus", "scorer", "logger")]
    bus_, scorer, logger = stages
    logged, journal = logger_disk / "decisions.jsonl", scorer_disk / "journal.jsonl"
    client = BusClient(cfg, [b"decision."])
    try:
        client.connected()
        client.subscribed(b"telemetry.")
        feed = Feeder(client)
        feed.send(4)
        wait_for(lambda: decision_seqs(logged) == [1, 2, 3, 4], 20, "the first decisions logged")

        # The logger's disk fills up: decisions go on into the journal; the file stays whole lines.
        logger_filler = fill(logger_disk)
        for _ in range(40):
            feed.send(2)
            if health(cfg.health.logger)[1]["counters"].get("write_failures"):
                break
        status, doc = wait_for(lambda: (lambda h: h if "storage" in h[1]["reasons"] else None)(
            health(cfg.health.logger)), 10, "the logger to report its full disk")
        assert status == 503 and "No space left on device" in doc["reasons"]["storage"]
        on_disk = decision_seqs(logged)
        assert on_disk == list(range(1, len(on_disk) + 1)) and logged.read_bytes().endswith(b"\n")
        assert decision_seqs(journal)[-1] > on_disk[-1]

        # The scorer's disk fills up too: it decides, publishes nothing it could not write, stays up.
        scorer_filler = fill(scorer_disk)
        journaled = decision_seqs(journal)[-1]
        client.drain(200)
        seen_before = len(client.seen)
        feed.send(6)
        status, doc = wait_for(lambda: (lambda h: h if "storage" in h[1]["reasons"] else None)(
            health(cfg.health.scorer)), 10, "the scorer to report its full disk")
        assert status == 503 and "decisions wait" in doc["reasons"]["storage"]
        time.sleep(1.0)
        client.drain(200)
        assert len(client.seen) == seen_before, "a decision was published before it was durable"
        assert decision_seqs(journal)[-1] == journaled

        # Space is back: everything decided meanwhile is journaled, published and logged, once.
        scorer_filler.unlink()
        logger_filler.unlink()
        wait_for(lambda: decision_seqs(journal)[-1] == journaled + 6 and logged.read_bytes() == journal.read_bytes(),
                 30, lambda: f"the file to equal the journal: {decision_seqs(logged)} / {decision_seqs(journal)}")
        seqs = decision_seqs(logged)
        assert seqs == list(range(1, len(seqs) + 1))
        states = [d.state for d in read_jsonl(journal)]
        assert all(a != b for a, b in zip(states, states[1:])), states
        wait_for(lambda: health(cfg.health.scorer)[1]["reasons"].get("storage") is None, 10, "scorer storage ok")
        wait_for(lambda: health(cfg.health.logger)[1]["reasons"].get("storage") is None, 10, "logger storage ok")
        client.drain(500)
        published = sorted(m.seq for m in client.seen if isinstance(m, Decision) and m.seq > journaled)
        assert published == list(range(journaled + 1, journaled + 7))
        assert all(stage.proc.poll() is None for stage in (bus_, scorer, logger)), "a stage exited"
    finally:
        client.close()


@pytest.mark.parametrize("mode, refused", [(0o1777, False), (0o777, True)])
def test_an_existing_run_dir_is_never_chmodded_and_an_unsafe_one_refused(workdir, mode, refused):
    directory, stages, _ = workdir
    run_dir = directory / "shared"
    run_dir.mkdir()
    os.chmod(run_dir, mode)
    config = write_config(directory, {"bus": {"run_dir": str(run_dir)}})
    stage = Stage("wanctl-bus", config, directory)
    if refused:
        assert stage.proc.wait(30) == 2
        output = stage.output()
        assert "bus.run_dir" in output and "sticky" in output and "Traceback" not in output
    else:
        stages.append(stage)
        wait_for(lambda: (run_dir / "sub.sock").exists(), 15, "the bus's ipc socket")
        assert "shared by every user" in stage.output()
    assert run_dir.stat().st_mode & 0o7777 == mode


def test_report_counts_a_wall_time_no_date_can_show_instead_of_crashing(workdir):
    directory, _, _ = workdir
    good = Decision(seq=1, wan="wan1", t=1.0, wall=1.7e9, telemetry_seq=1, policy="confidence", driving=True,
                    fallback=False, decision="ENABLE_STEERING", state="DEGRADED", confidence=90, threshold=55,
                    flap_penalty=False, contributors=[], sustained_s=0.0)
    from proto.messages import to_json
    lines = [to_json(good)] + [to_json(Decision(**{**{f: getattr(good, f) for f in good.__struct_fields__},
                                                   "seq": 2, "wall": wall})) for wall in (1e308, -1e300)]
    path = directory / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for args in ((), ("--json",)):
        result = subprocess.run([str(BIN / "wanctl-report"), str(path), *args], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert f"{path}:2: wall must be a finite time" in result.stderr
        assert "2 malformed lines skipped" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_read_only_state_directory_degrades_the_scorer_instead_of_crash_looping(workdir):
    directory, stages, mounts = workdir
    disk = directory / "sdisk"
    mount_tmpfs(disk, mounts)
    config = write_config(directory, {"scorer": {**INSTANT, "state_path": str(disk / "state.msgpack"),
                                                 "journal_path": str(disk / "journal.jsonl"),
                                                 "persist_interval_s": 0.5}})
    cfg = load(config)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    stages += [Stage(f"wanctl-{name}", config, directory) for name in ("bus", "scorer", "logger")]
    scorer = stages[1]
    client = BusClient(cfg, [b"decision."])
    try:
        client.connected()
        client.subscribed(b"telemetry.")
        feed = Feeder(client)
        feed.send(4)
        status, doc = wait_for(lambda: (lambda h: h if "storage" in h[1]["reasons"] else None)(
            health(cfg.health.scorer)), 15, "the scorer to report its read-only directory")
        assert status == 503 and "Read-only file system" in doc["reasons"]["storage"]
        client.drain(300)
        assert not [m for m in client.seen if isinstance(m, Decision)]
        assert scorer.proc.poll() is None
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        logged = directory / "decisions.jsonl"
        wait_for(lambda: decision_seqs(logged) == [1, 2, 3, 4] and logged.read_bytes() == (disk / "journal.jsonl")
                 .read_bytes(), 20, lambda: f"decisions 1-4 once writable: {decision_seqs(logged)}")
        wait_for(lambda: health(cfg.health.scorer)[1]["reasons"].get("storage") is None, 10, "scorer storage ok")
    finally:
        client.close()
