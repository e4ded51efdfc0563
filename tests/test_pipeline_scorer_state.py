"""The scorer process's crash order (snapshot -> journal -> publish), without sockets.

A kill is simulated by dropping the ScorerCore object without ``close`` and
editing the files the way a kill at that point would leave them."""

from __future__ import annotations

import shutil

import pytest

from runtime.storage import read_lines
from scorer.process import ScorerCore
from tests.supervisor_harness import load, short_tmp, write_config
from tests.support import congested, idle


@pytest.fixture
def cfg():
    directory = short_tmp()
    config = write_config(directory, {"scorer": {
        "policy": "confidence", "shadow": False, "flap": {"enabled": False},  # Phase 2B's timers
        "confidence": {"sustain_s": 2.0, "recovery_sustain_s": 1.0, "hold_down_s": 3.0},
    }})
    yield load(config)
    shutil.rmtree(directory, ignore_errors=True)


def journal_seqs(core_or_cfg) -> list[int]:
    return [s for s, _ in read_lines(core_or_cfg.journal.path)[0]]


def test_kill_between_snapshot_and_journal_restores_the_decision(cfg):
    core = ScorerCore(cfg, epoch=1)
    for i in range(5):  # t = 0.0 .. 2.0: ENABLE at the 5th sample
        decisions = core.on_telemetry(congested(i + 1, i * 0.5))
    assert [d.seq for d in decisions] == [1]
    # The kill came after the snapshot but before the journal line reached the disk.
    path = core.journal.path
    path.write_bytes(b"")
    restarted = ScorerCore(cfg, epoch=2)
    assert journal_seqs(restarted) == [1]
    assert restarted.counters["journal_repaired"] == 1
    assert restarted.engine.next_seq == 2
    # Still congested: no second ENABLE.
    assert restarted.on_telemetry(congested(6, 2.5)) == []
    assert restarted.engine.states()[0].desired == "DEGRADED"


def test_kill_before_the_snapshot_decides_again_with_the_same_seq(cfg):
    core = ScorerCore(cfg, epoch=1)
    for i in range(4):
        core.on_telemetry(congested(i + 1, i * 0.5))
    core.persist()  # the periodic snapshot at t = 1.5
    # The decision at t = 2.0 is made in memory, then the process dies before the snapshot.
    restarted = ScorerCore(cfg, epoch=2)
    decisions = restarted.on_telemetry(congested(5, 2.0))
    assert [(d.seq, d.decision) for d in decisions] == [(1, "ENABLE_STEERING")]
    assert journal_seqs(restarted) == [1]


def test_running_timers_resume_after_a_restart(cfg):
    core = ScorerCore(cfg, epoch=1)
    for i in range(4):  # a degrade run from t = 0 to 1.5
        core.on_telemetry(congested(i + 1, i * 0.5))
    core.persist()
    restarted = ScorerCore(cfg, epoch=2)
    decisions = restarted.on_telemetry(congested(5, 2.0))  # 2.0 s after the run began, not after the restart
    assert [d.decision for d in decisions] == ["ENABLE_STEERING"]
    # Hold-down (3 s from t = 2.0) also survives a restart.
    restarted.persist()
    again = ScorerCore(cfg, epoch=3)
    for i, t in enumerate((2.5, 3.0, 3.5, 4.0, 4.5)):
        assert again.on_telemetry(idle(6 + i, t)) == []
    state = again.engine.states()[0]
    assert state.desired == "DEGRADED" and state.hold_down_remaining_s == pytest.approx(0.5)


def test_a_journal_ahead_of_the_state_file_moves_the_next_seq(cfg):
    core = ScorerCore(cfg, epoch=1)
    for i in range(5):
        core.on_telemetry(congested(i + 1, i * 0.5))
    state = core.state_path
    state.unlink()  # lost state file: the journal still fixes the numbering
    restarted = ScorerCore(cfg, epoch=2)
    assert restarted.engine.next_seq == 2


def test_a_corrupt_state_file_is_set_aside(cfg):
    core = ScorerCore(cfg, epoch=1)
    core.on_telemetry(congested(1, 0.0))
    core.persist()
    core.state_path.write_bytes(b"\x00not msgpack")
    restarted = ScorerCore(cfg, epoch=2)
    assert restarted.counters["state_file_errors"] == 1
    assert core.state_path.with_name(core.state_path.name + ".bad").exists()


def test_replay_pages_through_the_journal(cfg):
    core = ScorerCore(cfg, epoch=1)
    t = 0.0
    seq = 0
    while core.journal.last_seq < 6:  # ENABLE / DISABLE episodes
        for sample in (congested, ) * 6 + (idle, ) * 10:
            seq += 1
            t += 0.5
            core.on_telemetry(sample(seq, t))
    from proto.messages import ReplayRequest
    reply = core.replay(ReplayRequest(after=2, limit=3))
    assert reply.last_seq == core.journal.last_seq
    assert [int(line.split(b'"seq":')[1].split(b",")[0]) for line in reply.lines] == [3, 4, 5]
    assert core.replay(ReplayRequest(after=core.journal.last_seq)).lines == []
