"""Append-only JSONL files of decisions: the scorer's journal and the logger's output.

One line per decision, exactly ``proto.messages.to_json(decision)``.  Every
append is whole or undone:

- the bytes go out through a loop on ``os.write`` (which may write less than
  asked) and the file is fsync'd by policy;
- when a write or an fsync fails (``ENOSPC``, ``EIO``, a read-only file
  system...), the file is truncated back to the end of its last whole line
  before anything else is written, the error is kept in ``error`` and raised
  as ``AppendFailed``, and ``last_seq`` stays where it was.  The caller tries
  again later with the same lines: no later line is ever written after one
  that failed, and a fragment can never be merged with the next line;
- a crash can only leave a torn *last* line (or a zero-filled tail after
  power loss); ``DecisionFile`` cuts it off when it opens the file.

A file that cannot be opened (a read-only or missing directory, a full disk
when its torn tail must be cut) does not raise: ``error`` says why, and the
next ``append`` opens it again first.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import time
from pathlib import Path

import msgspec

from proto.messages import Decision, from_json, to_json

log = logging.getLogger("wanctl.decisionlog")


class AppendFailed(OSError):
    """An append (or opening the file for one) failed; the file still ends with its last whole line."""


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

    ``error`` is None while the file is healthy, else the reason of the last
    failed open, append or fsync; ``counters`` counts them.  With the
    ``interval``/``never`` policies a failed fsync also undoes the lines
    appended since the last good one (``last_seq`` goes back with them): the
    kernel may already have dropped them, so they are written again.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: str = "always", fsync_interval_s: float = 1.0,
                 rotate_bytes: int = 0, rotate_keep: int = 5) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.rotate_bytes = rotate_bytes
        self.rotate_keep = rotate_keep
        self.repaired_bytes = 0
        self.bad_lines = 0
        self.last_seq = 0
        self.error: str | None = None
        self.counters = {"append_errors": 0, "open_errors": 0, "fsync_errors": 0, "short_writes": 0}
        self._fd: int | None = None
        self._size = 0
        self._synced = (0, 0)  # (size, last_seq) at the last good fsync
        self._dirty = False
        self._synced_at = time.monotonic()
        try:
            self._open()
        except AppendFailed:
            pass  # ``error`` says why; the next append tries again

    # The two system calls an append makes; a test may replace them on an instance.
    _write = staticmethod(os.write)
    _fsync = staticmethod(os.fsync)

    def _failed(self, what: str, error: OSError, counter: str) -> AppendFailed:
        reason = f"{self.path}: cannot {what}: {os.strerror(error.errno) if error.errno else error}"
        if self.error != reason:
            log.error("%s; decisions wait until it can be written", reason)
        self.error = reason
        self.counters[counter] += 1
        failed = AppendFailed(error.errno or errno.EIO, reason)
        failed.__cause__ = error
        return failed

    def _open(self) -> None:
        """Scan the file, cut a torn tail, open it for appending; AppendFailed if any step fails."""
        self._reset_index()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keep, last_seq, bad = scan_lines(self.path, self._scanned)
            size = self.path.stat().st_size if self.path.exists() else 0
            if size != keep:
                log.warning("%s: cut a torn last line (%d bytes) left by a crash or a failed write",
                            self.path, size - keep)
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
                    f.flush()
                    os.fsync(f.fileno())
                self.repaired_bytes += size - keep
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            self._reset_index()
            raise self._failed("open it", error, "open_errors") from error
        if bad and bad != self.bad_lines:
            log.warning("%s: skipped %d lines that are not decisions", self.path, bad)
        self.bad_lines = bad
        self.last_seq = last_seq
        if not last_seq and self.rotate_bytes:
            self.last_seq = self._last_rotated_seq()
        self._fd = fd
        self._size = keep
        self._synced = (keep, self.last_seq)
        self._dirty = False
        self._synced_at = time.monotonic()
        self.error = None

    def _reset_index(self) -> None:
        """Forget what a previous scan indexed (for subclasses that index the file)."""

    def _scanned(self, seq: int, line: bytes, offset: int) -> None:
        """Each complete decision line found on opening (for subclasses that index the file)."""

    def _last_rotated_seq(self) -> int:
        return scan_lines(self.path.with_name(self.path.name + ".1"))[1]

    def _undo(self, size: int) -> None:
        """Cut the file back to ``size`` (the end of a whole line); if that fails too, reopen before the next write."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            log.exception("%s: cannot cut a failed write back to %d bytes; the file is reopened (and its "
                          "torn tail cut) before the next append", self.path, size)
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def append(self, lines: list[bytes], last_seq: int) -> None:
        """Append complete lines (each without newline), then fsync by policy; all of them or none.

        Raises ``AppendFailed`` (the file cut back to its last whole line, ``error`` set).
        """
        if not lines:
            return
        if self._fd is None:
            before = self.last_seq
            self._open()
            if self.last_seq != before:  # the caller decided on a last seq the file does not have
                raise AppendFailed(errno.EAGAIN, f"{self.path}: reopened, it holds decisions up to seq "
                                                 f"{self.last_seq}, not {before}; nothing appended")
        data = b"".join(line + b"\n" for line in lines)
        start = self._size
        view = memoryview(data)
        try:
            while view:
                n = self._write(self._fd, view)
                if n <= 0:
                    raise OSError(errno.EIO, "write returned 0")
                if n < len(view):
                    self.counters["short_writes"] += 1
                view = view[n:]
        except OSError as error:
            self._undo(start)
            raise self._failed("append", error, "append_errors") from error
        self._size = start + len(data)
        previous_seq, self.last_seq = self.last_seq, last_seq
        self._dirty = True
        now = time.monotonic()
        if self.fsync == "always" or (self.fsync == "interval" and now - self._synced_at >= self.fsync_interval_s):
            try:
                self.sync()
            except AppendFailed:
                if self.fsync == "always":
                    self.last_seq = previous_seq
                raise
        self.error = None
        if self.rotate_bytes and self._size >= self.rotate_bytes:
            self._rotate()

    def append_decisions(self, decisions: list[Decision]) -> list[bytes]:
        lines = [to_json(d) for d in decisions]
        self.append(lines, decisions[-1].seq if decisions else self.last_seq)
        return lines

    def sync(self) -> None:
        """fsync what was appended; on failure everything since the last good fsync is cut off (AppendFailed)."""
        if self._dirty and self._fd is not None:
            try:
                self._fsync(self._fd)
            except OSError as error:
                size, seq = self._synced
                self._undo(size)
                self._size, self.last_seq = size, seq
                self._dirty = False
                raise self._failed("fsync", error, "fsync_errors") from error
            self._dirty = False
        self._synced = (self._size, self.last_seq)
        self._synced_at = time.monotonic()

    def maybe_sync(self) -> None:
        """For the ``interval`` policy: call from the stage loop."""
        if self.fsync == "interval" and self._dirty and time.monotonic() - self._synced_at >= self.fsync_interval_s:
            self.sync()

    def _rotate(self) -> None:
        """Rename the full file away between two whole lines; a failure is logged and tried again later."""
        try:
            self.sync()
            for n in range(self.rotate_keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.rename(self.path.with_name(self.path.name + ".1"))
            fsync_dir(self.path.parent)
        except OSError as error:
            log.error("%s: cannot rotate (%s); it grows on until it can", self.path, error)
            return
        self._close_fd()
        last_seq = self.last_seq
        self._size = 0
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            self._failed("open it after rotation", error, "open_errors")
            return  # the next append opens it (and finds the last seq in the rotated file)
        self._fd = fd
        self._synced = (0, last_seq)

    def close(self) -> None:
        try:
            if self._fd is not None:
                self.sync()
        finally:
            self._close_fd()


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
        self.index_every = self._index_every_first = index_every
        self._recent: list[tuple[int, bytes]] = []  # (seq, line), oldest first, the file's last lines
        self._index: list[tuple[int, int]] = []  # (seq, offset) of every index_every-th line
        self._since_indexed = 0
        self.reads_from_file = 0
        super().__init__(path, fsync=fsync)

    def _reset_index(self) -> None:
        self._recent.clear()
        self._index.clear()
        self._since_indexed = 0
        self.index_every = self._index_every_first

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

    def sync(self) -> None:
        """As ``DecisionFile.sync``; lines a failed fsync cut off leave the memory too."""
        try:
            super().sync()
        except AppendFailed:
            kept = self.last_seq
            self._recent = [entry for entry in self._recent if entry[0] <= kept]
            self._index = [entry for entry in self._index if entry[0] <= kept]
            raise

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
    """Temp file, fsync, rename, fsync the directory: the file is old or new, never torn.

    On failure (a full disk, a read-only directory) the OSError is raised, the
    old file is left as it was and the temp file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
