"""The scorer's journal keeps a bounded window in memory and serves older ranges from the file."""

from __future__ import annotations

import shutil

import pytest

from proto.messages import ReplayRequest
from runtime.storage import DecisionJournal, read_lines
from proto.messages import Decision, from_json
from scorer import process
from scorer.process import ScorerCore
from tests.supervisor_harness import load, short_tmp, write_config
from tests.support import congested, idle


def decision(seq: int) -> Decision:
    return Decision(seq=seq, wan="wan1", t=float(seq), wall=0.0, telemetry_seq=seq, policy="confidence",
                    driving=True, fallback=False, decision="ENABLE_STEERING" if seq % 2 else "DISABLE_STEERING",
                    state="DEGRADED" if seq % 2 else "GOOD", confidence=80, threshold=55, flap_penalty=False,
                    contributors=["RED"], sustained_s=2.0)


def seqs(lines: list[bytes]) -> list[int]:
    return [from_json(line).seq for line in lines]


def expected_after(all_seqs: list[int], after: int, limit: int) -> list[int]:
    return [s for s in all_seqs if s > after][:limit]


def check_every_range(journal: DecisionJournal, all_seqs: list[int]) -> None:
    for after in range(0, all_seqs[-1] + 2):
        for limit in (1, 3, 50):
            assert seqs(journal.lines_after(after, limit)) == expected_after(all_seqs, after, limit), (after, limit)


def test_memory_is_bounded_and_every_range_is_served(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = DecisionJournal(path, fsync="never", window=8, index_max=4, index_every=2)
    try:
        # Appended in batches of one to three, as the scorer does per sample.
        seq = 0
        while seq < 300:
            batch = [decision(seq + i + 1) for i in range(1 + seq % 3)]
            journal.append_decisions(batch)
            seq = batch[-1].seq
            assert len(journal._recent) <= 16 and len(journal._index) <= 4
        all_seqs = list(range(1, seq + 1))
        assert journal.recent_lines(5) == [line for _, line in read_lines(path)[0][-5:]]
        check_every_range(journal, all_seqs)
        assert journal.reads_from_file > 0  # the old ranges came from the file
        reads = journal.reads_from_file
        assert seqs(journal.lines_after(seq - 4, 10)) == all_seqs[-4:]
        assert journal.reads_from_file == reads  # the recent ones from memory
    finally:
        journal.close()


def test_reopened_journal_indexes_the_file_and_cuts_a_torn_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = DecisionJournal(path, fsync="never", window=5, index_max=3, index_every=1)
    journal.append_decisions([decision(s) for s in range(1, 41)])
    journal.close()
    with open(path, "ab") as f:
        f.write(b'{"kind":"decision","seq":41,"wan"')  # killed mid-write
    reopened = DecisionJournal(path, fsync="never", window=5, index_max=3, index_every=1)
    try:
        assert reopened.repaired_bytes > 0 and reopened.last_seq == 40
        assert len(reopened._recent) <= 10 and len(reopened._index) <= 3
        check_every_range(reopened, list(range(1, 41)))
        reopened.append_decisions([decision(41), decision(42)])
        check_every_range(reopened, list(range(1, 43)))
    finally:
        reopened.close()


@pytest.fixture
def cfg():
    directory = short_tmp()
    config = write_config(directory, {"scorer": {
        "shadow": True, "flap": {"enabled": False},
        "confidence": {"sustain_s": 0.5, "recovery_sustain_s": 0.5, "hold_down_s": 0.5},
        "hysteresis": {"red_samples_required": 1, "green_samples_required": 2},
    }})
    yield load(config)
    shutil.rmtree(directory, ignore_errors=True)


def test_scorer_replays_beyond_its_window_from_the_journal_file(cfg, monkeypatch):
    monkeypatch.setattr(process, "JOURNAL_WINDOW", 4)
    core = ScorerCore(cfg, epoch=1)
    seq, t = 0, 0.0
    while core.journal.last_seq < 30:
        for sample in (congested,) * 4 + (idle,) * 6:
            seq += 1
            t += 0.5
            core.on_telemetry(sample(seq, t))
    last = core.journal.last_seq
    assert len(core.journal._recent) <= 8
    pages: list[int] = []
    after = 0
    while True:  # the logger's catch-up from an empty file, three lines a page
        reply = core.replay(ReplayRequest(after=after, limit=3))
        assert reply.last_seq == last
        if not reply.lines:
            break
        pages += seqs(reply.lines)
        after = pages[-1]
    assert pages == list(range(1, last + 1))
    assert core.journal.reads_from_file > 0
    core.close()
    # After a restart the old ranges are still served, from the file.
    restarted = ScorerCore(cfg, epoch=2)
    try:
        assert seqs(restarted.replay(ReplayRequest(after=2, limit=3)).lines) == [3, 4, 5]
        assert restarted.counters["journal_reads_from_file"] == 1
    finally:
        restarted.close()
