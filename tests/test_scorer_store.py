"""The scorer's state store (base + per-WAN record log) and its group commit, down to a SIGKILL mid-burst."""

from __future__ import annotations

import shutil
import time

import pytest

from proto.messages import Heartbeat
from runtime.storage import read_lines
from scorer.process import ScorerCore, StateRefresh
from scorer.store import StateStore
from tests.supervisor_harness import BusClient, Stage, load, short_tmp, stop_all, write_config
from tests.support import congested, idle, wait_for

INSTANT_2B = {  # every congested sample enables, every idle one disables
    "policy": "confidence", "shadow": False, "flap": {"enabled": False},
    "confidence": {"sustain_s": 0, "recovery_sustain_s": 0, "hold_down_s": 0},
}


@pytest.fixture
def directory():
    d = short_tmp()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def journal(cfg) -> list:
    from proto.messages import from_json
    return [from_json(line) for _, line in read_lines(cfg_path(cfg))[0]]


def cfg_path(cfg):
    from proto.config import resolve_path
    return resolve_path(cfg, cfg.scorer.journal_path)


def test_a_commit_writes_only_the_wans_that_decided(directory):
    cfg = load(write_config(directory, {"scorer": INSTANT_2B}))
    core = ScorerCore(cfg, epoch=1)
    for i in range(200):  # 200 idle WANs: no decision, nothing logged
        core.on_telemetry(idle(i + 1, 1.0, wan=f"w{i}"))
    assert core.store.log_bytes == 0
    core.persist()  # the periodic compaction
    core.on_telemetry(congested(1000, 1.5, wan="w7"))
    one = core.store.log_bytes
    core.on_telemetry(congested(1001, 1.5, wan="w8"))
    assert 0 < one and core.store.log_bytes == pytest.approx(2 * one, rel=0.1)
    # A burst: several samples scored, one record (one fsync) for all of them.
    before = core.tallies["state_records"]
    for i in range(10, 20):
        core.score(congested(2000 + i, 2.0, wan=f"w{i}"))
    changed = core.commit()
    assert changed == [f"w{i}" for i in range(10, 20)]
    assert core.tallies["state_records"] == before + 1
    restarted = ScorerCore(cfg, epoch=2)
    for i in range(200):
        expected = "DEGRADED" if i in (7, 8) or 10 <= i < 20 else "GOOD"
        assert restarted.engine.desired(f"w{i}") == expected, i


def test_a_torn_record_is_cut_and_an_old_generation_skipped(directory):
    cfg = load(write_config(directory, {"scorer": INSTANT_2B}))
    core = ScorerCore(cfg, epoch=1)
    core.on_telemetry(congested(1, 1.0, wan="a"))
    core.on_telemetry(congested(2, 1.0, wan="b"))
    log_path = core.store.log_path
    data = log_path.read_bytes()
    log_path.write_bytes(data + data[:7])  # a record torn by the kill
    restarted = ScorerCore(cfg, epoch=2)
    assert log_path.stat().st_size == len(data)
    assert [restarted.engine.desired(w) for w in ("a", "b")] == ["DEGRADED", "DEGRADED"]
    # A kill between the new base and the emptied log: the old records are older than the base.
    restarted.on_telemetry(idle(3, 2.0, wan="a"))
    stale = log_path.read_bytes()
    restarted.persist()
    log_path.write_bytes(stale)
    again = ScorerCore(cfg, epoch=3)
    assert again.store.gen == restarted.store.gen
    assert [again.engine.desired(w) for w in ("a", "b")] == ["GOOD", "DEGRADED"]
    assert [d.seq for d in journal(cfg)] == [1, 2, 3]


def test_compaction_when_the_log_outgrows_the_base(directory):
    cfg = load(write_config(directory, {"scorer": INSTANT_2B}))
    core = ScorerCore(cfg, epoch=1)
    t = 1.0
    while core.tallies["state_compactions"] < 2:
        t += 0.5
        for make in (congested, idle):
            core.on_telemetry(make(int(t * 10), t, wan="a"))
            t += 0.5
    assert core.store.log_bytes <= max(1 << 20, 2 * core.store.base_bytes)
    restarted = ScorerCore(cfg, epoch=2)
    assert restarted.engine.next_seq == core.engine.next_seq
    assert [d.seq for d in journal(cfg)] == list(range(1, core.engine.next_seq))


def test_the_state_refresh_covers_every_wan_once_per_interval():
    class Fake:
        wans = {f"w{i}": None for i in range(1000)}
    refresh = StateRefresh(Fake(), 1.0, now=0.0)
    seen: list[str] = []
    now = 0.0
    calls = 0
    while now < 1.0:
        seen += refresh.due(now)
        calls += 1
        now = max(refresh.next_at, now + 0.002)
    assert calls > 100  # spread over the second, not one burst
    assert set(seen) == set(Fake.wans)
    assert len(seen) <= 1000 + calls


def test_sigkill_during_a_burst_across_many_wans_restores_every_wan_and_the_journal_once(directory):
    wans = [f"wan{i:03d}" for i in range(300)]
    config = write_config(directory, {"scorer": {**INSTANT_2B, "persist_interval_s": 0.3}})
    cfg = load(config)
    stages = [Stage("wanctl-bus", config, directory), Stage("wanctl-scorer", config, directory)]
    client = BusClient(cfg)
    try:
        client.connected()
        client.wait_message(lambda m: isinstance(m, Heartbeat) and m.stage == "scorer", 15,
                            "a scorer heartbeat")
        seq = 0
        sent = 0
        # Every sample flips its WAN: 300 WANs x 12 samples, every one a decision.
        for round_ in range(12):
            make = congested if round_ % 2 == 0 else idle
            for wan in wans:
                seq += 1
                client.send(make(seq, 1.0 + round_ * 0.5, wan=wan))
                sent += 1
            if round_ == 3:
                wait_for(lambda: len(read_lines(cfg_path(cfg))[0]) > 300, 20, "decisions journaled")
                stages.pop().kill()  # mid-burst: the socket still holds samples, more are on the way
        logged = journal(cfg)
        assert 300 < len(logged) < sent, len(logged)
    finally:
        client.close()
        stop_all(stages)
    # What a restart finds: the journal exactly once, every WAN in the state of its last decision.
    core = ScorerCore(cfg, epoch=2)
    logged = journal(cfg)
    assert [d.seq for d in logged] == list(range(1, len(logged) + 1))
    assert core.engine.next_seq == len(logged) + 1
    last = {}
    for d in logged:
        last[d.wan] = d.state
    assert set(last) <= set(core.engine.wans)
    assert {w: core.engine.desired(w) for w in last} == last
    # Decisions restored, none repeated: the next sample of each WAN decides only if it flips the state.
    core.close()
    stages = [Stage("wanctl-bus", config, directory), Stage("wanctl-scorer", config, directory)]
    client = BusClient(cfg)
    try:
        client.connected()
        client.wait_message(lambda m: isinstance(m, Heartbeat) and m.stage == "scorer", 15,
                            "a scorer heartbeat after the restart")
        time.sleep(0.2)
        for i, wan in enumerate(last):
            same = congested if last[wan] == "DEGRADED" else idle
            client.send(same(100_000 + i, 100.0, wan=wan))
        flip = next(iter(last))
        client.send((idle if last[flip] == "DEGRADED" else congested)(200_000, 101.0, wan=flip))
        wait_for(lambda: len(journal(cfg)) == len(logged) + 1, 20, "the one flip journaled")
        time.sleep(0.5)
        after = journal(cfg)
        assert [d.seq for d in after] == list(range(1, len(logged) + 2))
        assert after[-1].wan == flip
    finally:
        client.close()
        stop_all(stages)


def test_a_failed_journal_fsync_after_publishing_journals_the_burst_again_without_a_gap(directory):
    """The journal is fsync'd after a burst is published; when that fsync fails the
    burst's lines are cut off (file and memory) and its decisions, in the state log
    already, wait to be journaled once more: the journal never skips a seq."""
    cfg = load(write_config(directory, {"scorer": INSTANT_2B}))
    core = ScorerCore(cfg, epoch=1)
    core.on_telemetry(congested(1, 1.0, wan="a"))  # seq 1, fsync'd
    records = core.tallies["state_records"]
    core.score(idle(2, 2.0, wan="a"))
    core.score(congested(3, 3.0, wan="a"))
    assert core.commit() == ["a"]  # durable in the state log, in the journal file, not fsync'd there
    assert core.tallies["state_records"] == records + 1
    assert core.journal.last_seq == 3

    def failing(fd):
        raise OSError(5, "Input/output error")

    core.journal._fsync = failing
    assert core.sync_journal() is False
    assert core.journal.last_seq == 1 and [d.seq for d in journal(cfg)] == [1]
    assert core.journal.lines_after(0, 10) == core.journal.recent_lines(10) and len(core.journal.recent_lines(10)) == 1
    assert [d.seq for d in core.pending] == [2, 3] and core.storage_error
    core.journal._fsync = __import__("os").fsync
    assert core.commit() == []  # journaled again; the state log is not written twice
    assert core.tallies["state_records"] == records + 1
    assert core.sync_journal() is True
    core.on_telemetry(idle(4, 4.0, wan="a"))
    assert [d.seq for d in journal(cfg)] == [1, 2, 3, 4]
    assert core.storage_error is None
