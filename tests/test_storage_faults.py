"""Appends under faults: short writes, ENOSPC/EIO at any point, failed fsyncs, torn tails.

The file must always read as a prefix of the decisions (every line whole, no
gap, no merged fragment) and, once writes succeed again, as all of them.
The faults are injected through ``DecisionFile``'s two system calls
(``_write``/``_fsync``); the bytes that do reach the file are real writes.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from logger.writer import DecisionLog
from proto.messages import Decision, to_json
from runtime.storage import AppendFailed, DecisionFile, DecisionJournal, read_lines


def decision(seq: int) -> Decision:
    return Decision(seq=seq, wan="wan1", t=float(seq), wall=1.7e9 + seq, telemetry_seq=seq, policy="confidence",
                    driving=True, fallback=False, decision="ENABLE_STEERING" if seq % 2 else "DISABLE_STEERING",
                    state="DEGRADED" if seq % 2 else "GOOD", confidence=60, threshold=55, flap_penalty=False,
                    contributors=["RED"] * (seq % 7), sustained_s=0.0)


class Faults:
    """A scripted ``os.write``/``os.fsync``: each call takes the next step of the plan (then behaves).

    Steps: ``("ok",)``, ``("short", fraction)`` (writes a real prefix and
    returns its length), ``("fail", errno)`` (writes nothing, raises).
    """

    def __init__(self, plan: list[tuple]) -> None:
        self.plan = list(plan)
        self.calls = 0
        self.failures = 0

    def _step(self) -> tuple:
        self.calls += 1
        return self.plan.pop(0) if self.plan else ("ok",)

    def write(self, fd: int, data) -> int:
        step = self._step()
        if step[0] == "fail":
            self.failures += 1
            raise OSError(step[1], os.strerror(step[1]))
        if step[0] == "short" and len(data) > 1:
            return os.write(fd, bytes(data[:max(1, int(len(data) * step[1]))]))
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        step = self._step()
        if step[0] == "fail":
            self.failures += 1
            raise OSError(step[1], os.strerror(step[1]))
        os.fsync(fd)


def faulty(file: DecisionFile, faults: Faults) -> DecisionFile:
    file._write = faults.write
    file._fsync = faults.fsync
    return file


def seqs_of(path: Path) -> list[int]:
    entries, keep, bad = read_lines(path)
    assert bad == 0, f"{path}: {bad} lines that are not decisions"
    assert keep == path.stat().st_size, f"{path}: a torn tail left behind"
    return [seq for seq, _ in entries]


@pytest.fixture
def tmp():
    directory = Path(tempfile.mkdtemp(prefix="wcst", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_short_writes_are_continued(tmp):
    faults = Faults([("short", 0.1), ("short", 0.5), ("short", 0.3)])
    f = faulty(DecisionFile(tmp / "d.jsonl", fsync="never"), faults)
    f.append_decisions([decision(1), decision(2)])
    f.close()
    assert seqs_of(tmp / "d.jsonl") == [1, 2]
    assert f.counters["short_writes"] == 3


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS])
def test_a_failed_write_is_cut_back_and_written_whole_later(tmp, code):
    """The reported loss: a fragment on a full disk merged with the next line.  Now it is cut off."""
    path = tmp / "d.jsonl"
    f = DecisionFile(path, fsync="always")
    f.append_decisions([decision(1)])
    faulty(f, Faults([("short", 0.4), ("fail", code)]))
    with pytest.raises(AppendFailed) as raised:
        f.append_decisions([decision(2)])
    assert raised.value.errno == code and os.strerror(code) in f.error
    assert f.last_seq == 1 and seqs_of(path) == [1]
    f.append_decisions([decision(2)])  # space back: the same line again
    f.append_decisions([decision(3)])
    assert f.error is None
    f.close()
    assert seqs_of(path) == [1, 2, 3]
    assert path.read_bytes() == b"".join(to_json(decision(s)) + b"\n" for s in (1, 2, 3))


def test_a_failed_fsync_undoes_what_it_did_not_make_durable(tmp):
    path = tmp / "d.jsonl"
    f = DecisionFile(path, fsync="interval", fsync_interval_s=3600)
    f.append_decisions([decision(1)])
    f.sync()
    f.append_decisions([decision(2)])
    f.append_decisions([decision(3)])
    faulty(f, Faults([("fail", errno.EIO)]))
    with pytest.raises(AppendFailed):
        f.sync()
    assert f.last_seq == 1 and seqs_of(path) == [1]
    f.append_decisions([decision(2), decision(3)])
    f.close()
    assert seqs_of(path) == [1, 2, 3]


def test_a_file_that_cannot_be_opened_reports_and_opens_later(tmp):
    blocker = tmp / "sub"
    blocker.write_text("a file where the directory should be")
    f = DecisionFile(blocker / "d.jsonl")
    assert f.error and "cannot open" in f.error and f.counters["open_errors"] == 1
    with pytest.raises(AppendFailed):
        f.append_decisions([decision(1)])
    blocker.unlink()
    f.append_decisions([decision(1)])
    f.close()
    assert seqs_of(blocker / "d.jsonl") == [1]


def test_an_append_after_a_late_open_is_refused_when_the_file_holds_more(tmp):
    """A file opened late may hold more than the caller assumed: the append is refused, not duplicated."""
    blocker = tmp / "sub"
    blocker.write_text("not a directory")
    f = DecisionFile(blocker / "d.jsonl")
    assert f.last_seq == 0 and f.error
    blocker.unlink()
    blocker.mkdir()
    (blocker / "d.jsonl").write_bytes(b"".join(to_json(decision(s)) + b"\n" for s in (1, 2)))
    with pytest.raises(AppendFailed, match="holds decisions up to seq 2"):
        f.append_decisions([decision(1)])
    f.append_decisions([decision(3)])
    f.close()
    assert seqs_of(blocker / "d.jsonl") == [1, 2, 3]


def run_plan(directory: Path, n: int, batches: list[int], plan: list[tuple], crashes: list[tuple[int, str]],
             fsync: str) -> None:
    """Append decisions 1..n in batches through the faults, crashing (and tearing the tail) at given steps."""
    path = directory / "d.jsonl"
    faults = Faults(plan)
    f = faulty(DecisionFile(path, fsync=fsync, fsync_interval_s=0.0), faults)
    crash_at = dict(crashes)
    step = 0
    attempts = 0
    while True:
        if f.last_seq == n:
            try:
                f.sync()  # what the OS holds is not durable yet: a failed fsync undoes it
            except AppendFailed:
                pass
            if f.last_seq == n:
                break
        attempts += 1
        assert attempts < 10 * n + 100, "no progress"
        step += 1
        if step in crash_at:  # the process dies here, maybe mid-line: reopen like a restart
            tail = crash_at[step]
            f._close_fd()
            with open(path, "ab") as raw:
                nxt = to_json(decision(f.last_seq + 1))
                raw.write({"torn": nxt[:len(nxt) // 2], "zeros": b"\0" * 64, "none": b""}[tail])
            f = faulty(DecisionFile(path, fsync=fsync, fsync_interval_s=0.0), faults)
            assert seqs_of(path) == list(range(1, f.last_seq + 1))
        size = batches[step % len(batches)]
        first = f.last_seq + 1
        try:
            f.append_decisions([decision(s) for s in range(first, min(n, first + size - 1) + 1)])
        except AppendFailed:
            pass
        # Whatever happened, the file is a prefix of the decisions, each line whole.
        assert seqs_of(path) == list(range(1, f.last_seq + 1))
    f.close()
    assert path.read_bytes() == b"".join(to_json(decision(s)) + b"\n" for s in range(1, n + 1))


step_strategy = st.one_of(
    st.just(("ok",)),
    st.tuples(st.just("short"), st.floats(0.01, 0.99)),
    st.tuples(st.just("fail"), st.sampled_from([errno.ENOSPC, errno.EIO, errno.EDQUOT])),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 25), batches=st.lists(st.integers(1, 4), min_size=1, max_size=5),
       plan=st.lists(step_strategy, max_size=60),
       crashes=st.lists(st.tuples(st.integers(1, 40), st.sampled_from(["torn", "zeros", "none"])), max_size=3),
       fsync=st.sampled_from(["always", "interval", "never"]))
def test_property_the_file_is_always_a_prefix_and_finally_everything(tmp, n, batches, plan, crashes, fsync):
    directory = Path(tempfile.mkdtemp(dir=tmp))
    run_plan(directory, n, batches, plan, crashes, fsync)


def logger_catch_up(journal: DecisionJournal, log: DecisionLog, now: float) -> None:
    """The logger's replay loop without sockets: ask after the last seq, offer each line."""
    for _ in range(100):
        lines = journal.lines_after(log.last_seq, 10)
        if not lines:
            return
        before = log.last_seq
        for line in lines:
            log.offer(decision_seq_of(line), line, now)
        if log.last_seq == before:
            return  # failed or backing off: asked again later


def decision_seq_of(line: bytes) -> int:
    import msgspec
    return msgspec.json.decode(line)["seq"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(full_from=st.integers(1, 30), full_for=st.integers(1, 30),
       plan=st.lists(st.one_of(st.just(("ok",)), st.tuples(st.just("short"), st.floats(0.01, 0.99))), max_size=20))
def test_property_a_full_disk_under_the_logger_loses_nothing(tmp, full_from, full_for, plan):
    """Decisions keep coming while the logger's disk is full for a while: once space is back,
    ``decisions.jsonl`` equals the journal byte for byte."""
    directory = Path(tempfile.mkdtemp(dir=tmp))
    journal = DecisionJournal(directory / "journal.jsonl", fsync="never", window=8, index_max=4, index_every=2)
    faults = Faults(plan)
    full = {"on": False}

    def write(fd, data):
        if full["on"]:
            # Some bytes fit before the disk is full, then nothing does.
            if len(data) > 3 and faults.calls % 2 == 0:
                faults.calls += 1
                return os.write(fd, bytes(data[:len(data) // 3]))
            faults.calls += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return faults.write(fd, data)

    file = DecisionFile(directory / "decisions.jsonl", fsync="always")
    file._write = write
    log = DecisionLog(file)
    now = 0.0
    for seq in range(1, 41):
        now += 0.3
        full["on"] = full_from <= seq < full_from + full_for
        journal.append_decisions([decision(seq)])
        logger_catch_up(journal, log, now)
        assert seqs_of(file.path) == list(range(1, log.last_seq + 1))
        if full["on"]:
            assert log.error and "No space left" in log.error
    full["on"] = False
    for _ in range(20):  # space is back; the backoff runs out
        now += 1.0
        logger_catch_up(journal, log, now)
    file.close()
    journal.close()
    assert log.error is None
    assert file.path.read_bytes() == journal.path.read_bytes()
    assert log.counters["write_failures"] >= 1
