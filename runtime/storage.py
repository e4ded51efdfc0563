"""Append-only JSONL files of decisions: the scorer's journal and the logger's output.

One line per decision, exactly ``proto.messages.to_json(decision)``.  A line is
written with a single ``write`` and the file is fsync'd by policy, so a crash
can only leave a torn *last* line (or a zero-filled tail after power loss);
``DecisionFile`` cuts it off when it opens the file.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from pathlib import Path

import msgspec

from proto.messages import Decision, from_json, to_json

log = logging.getLogger("wanctl.decisionlog")


def scan_lines(path: Path, visit=None) -> tuple[int, int, int]:
    """Stream a decision file's complete lines; returns (byte length to keep, last seq, bad lines).

    ``visit(seq, line, offset)`` is called for every complete decision line
    (without its newline), in file order.  The length to keep ends after the
    last newline: anything after it is a torn line.  Complete lines that do not
    decode as a Decision are skipped and counted.  The file is read line by
    line, so a long file costs no more memory than its longest line.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0, 0, 0
    keep = offset = last_seq = bad = 0
    with f:
        for raw in f:
            start = offset
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break  # torn: the crash came mid-write
            keep = offset
            line = raw[:-1]
            if not line.strip(b"\0 \t\r"):
                continue
            seq = decision_seq(line)
            if seq is None:
                bad += 1
                continue
            last_seq = max(last_seq, seq)
            if visit is not None:
                visit(seq, line, start)
    return keep, last_seq, bad


def decision_seq(line: bytes) -> int | None:
    """The seq of a decision line, or None when the line is not a decision."""
    try:
        message = from_json(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return message.seq if isinstance(message, Decision) else None


def read_lines(path: Path) -> tuple[list[tuple[int, bytes]], int, int]:
    """Complete decision lines of a file as (seq, line); also the byte length to keep and bad lines."""
    entries: list[tuple[int, bytes]] = []
    keep, _, bad = scan_lines(path, lambda seq, line, offset: entries.append((seq, line)))
    return entries, keep, bad


class DecisionFile:
    """An append-only decision JSONL file with torn-tail repair and an fsync policy.

    ``fsync``: ``always`` (every append), ``interval`` (at most every
    ``fsync_interval_s``, and on close) or ``never`` (the OS decides).
    ``rotate_bytes`` > 0 renames a full file to ``<path>.1`` (shifting older ones)
    between two complete lines, so rotation never loses or splits a line.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: str = "always", fsync_interval_s: float = 1.0,
                 rotate_bytes: int = 0, rotate_keep: int = 5) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.rotate_bytes = rotate_bytes
        self.rotate_keep = rotate_keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep, last_seq, bad = scan_lines(self.path, self._scanned)
        self.repaired_bytes = 0
        if self.path.exists() and self.path.stat().st_size != keep:
            self.repaired_bytes = self.path.stat().st_size - keep
            log.warning("%s: cut a torn last line (%d bytes) left by a crash", self.path, self.repaired_bytes)
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        if bad:
            log.warning("%s: skipped %d lines that are not decisions", self.path, bad)
        self.bad_lines = bad
        self.last_seq = last_seq
        if not last_seq and rotate_bytes:
            self.last_seq = self._last_rotated_seq()
        self._file = open(self.path, "ab", buffering=0)
        self._size = keep
        self._dirty = False
        self._synced_at = time.monotonic()

    def _scanned(self, seq: int, line: bytes, offset: int) -> None:
        """Each complete decision line found on opening (for subclasses that index the file)."""

    def _last_rotated_seq(self) -> int:
        return scan_lines(self.path.with_name(self.path.name + ".1"))[1]

    def append(self, lines: list[bytes], last_seq: int) -> None:
        """Append complete lines (each without newline) in one write, then fsync by policy."""
        if not lines:
            return
        data = b"".join(line + b"\n" for line in lines)
        self._file.write(data)
        self._size += len(data)
        self.last_seq = last_seq
        self._dirty = True
        now = time.monotonic()
        if self.fsync == "always" or (self.fsync == "interval" and now - self._synced_at >= self.fsync_interval_s):
            self.sync()
        if self.rotate_bytes and self._size >= self.rotate_bytes:
            self._rotate()

    def append_decisions(self, decisions: list[Decision]) -> list[bytes]:
        lines = [to_json(d) for d in decisions]
        self.append(lines, decisions[-1].seq if decisions else self.last_seq)
        return lines

    def sync(self) -> None:
        if self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False
        self._synced_at = time.monotonic()

    def maybe_sync(self) -> None:
        """For the ``interval`` policy: call from the stage loop."""
        if self.fsync == "interval" and self._dirty and time.monotonic() - self._synced_at >= self.fsync_interval_s:
            self.sync()

    def _rotate(self) -> None:
        self.sync()
        self._file.close()
        for n in range(self.rotate_keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.rename(self.path.with_name(self.path.name + ".1"))
        fsync_dir(self.path.parent)
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._file.close()


class DecisionJournal(DecisionFile):
    """The scorer's journal: the file, its recent lines in memory, older ones read back on demand.

    Memory stays flat however long the journal grows: at most ``2 * window``
    recent lines are kept, plus a sparse index of (seq, byte offset) that
    never holds more than ``index_max`` entries (when it fills up, every
    other entry is dropped and entries are taken half as often).  A range
    older than the window is read from the file, starting at the nearest
    indexed line at or before it.  The journal never rotates.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: str = "always", window: int = 1000,
                 index_max: int = 4096, index_every: int = 64) -> None:
        if window < 1 or index_max < 2 or index_every < 1:
            raise ValueError(f"journal {path}: window >= 1, index_max >= 2 and index_every >= 1 required, "
                             f"got {window}, {index_max}, {index_every}")
        self.window = window
        self.index_max = index_max
        self.index_every = index_every
        self._recent: list[tuple[int, bytes]] = []  # (seq, line), oldest first, the file's last lines
        self._index: list[tuple[int, int]] = []  # (seq, offset) of every index_every-th line
        self._since_indexed = 0
        self.reads_from_file = 0
        super().__init__(path, fsync=fsync)

    def _scanned(self, seq: int, line: bytes, offset: int) -> None:
        self._remember(seq, line, offset)

    def _remember(self, seq: int, line: bytes, offset: int) -> None:
        recent = self._recent
        recent.append((seq, line))
        if len(recent) > 2 * self.window:
            del recent[:-self.window]  # in batches: amortised O(1) per line
        if not self._index or self._since_indexed >= self.index_every:
            self._index.append((seq, offset))
            self._since_indexed = 1
            if len(self._index) > self.index_max:
                self._index = self._index[::2]  # keeps the first line, so every old range stays reachable
                self.index_every *= 2
        else:
            self._since_indexed += 1

    def append_decisions(self, decisions: list[Decision]) -> list[bytes]:
        offset = self._size
        lines = super().append_decisions(decisions)
        for d, line in zip(decisions, lines):
            self._remember(d.seq, line, offset)
            offset += len(line) + 1
        return lines

    def recent_lines(self, n: int) -> list[bytes]:
        """The last ``n`` lines (at most the window), oldest first."""
        return [line for _, line in self._recent[-n:]] if n > 0 else []

    def lines_after(self, after: int, limit: int) -> list[bytes]:
        """Up to ``limit`` lines with seq > ``after``, in seq order: from memory, or from the file."""
        recent = self._recent
        if limit < 1 or after >= self.last_seq:
            return []
        if recent and after + 1 >= recent[0][0]:
            start = bisect.bisect_right(recent, after, key=lambda entry: entry[0])
            return [line for _, line in recent[start:start + limit]]
        return self._read_after(after, limit)

    def _read_after(self, after: int, limit: int) -> list[bytes]:
        self.reads_from_file += 1
        at = bisect.bisect_right(self._index, after, key=lambda entry: entry[0]) - 1
        offset = self._index[at][1] if at >= 0 else 0
        out: list[bytes] = []
        with open(self.path, "rb") as f:
            f.seek(offset)
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                seq = decision_seq(raw[:-1]) if raw.strip(b"\0 \t\r\n") else None
                if seq is None or seq <= after:
                    continue
                out.append(raw[:-1])
                if len(out) >= limit:
                    break
        return out


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: the file is old or new, never torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
