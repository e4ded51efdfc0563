"""Append-only JSONL files of decisions: the scorer's journal and the logger's output.

One line per decision, exactly ``proto.messages.to_json(decision)``.  A line is
written with a single ``write`` and the file is fsync'd by policy, so a crash
can only leave a torn *last* line (or a zero-filled tail after power loss);
``DecisionFile`` cuts it off when it opens the file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import msgspec

from proto.messages import Decision, from_json, to_json

log = logging.getLogger("wanctl.decisionlog")


REPLAY_LIMIT = 500  # decisions per replay reply


class ReplayRequest(msgspec.Struct):
    """Logger -> scorer journal socket (DEALER -> ROUTER), msgpack."""

    after: int
    limit: int = REPLAY_LIMIT


class ReplayReply(msgspec.Struct):
    """Scorer -> logger: journal lines after ``after``, at most ``limit`` of them."""

    last_seq: int  # the journal's last seq: ask again while behind it
    lines: list[bytes]  # Decision JSON lines with seq > after, in seq order


def read_lines(path: Path) -> tuple[list[tuple[int, bytes]], int, int]:
    """Complete decision lines of a file as (seq, line); also the byte length to keep and bad lines.

    The length to keep ends after the last newline: anything after it is a torn
    line.  Complete lines that do not decode as a Decision are skipped and counted.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, 0
    keep = data.rfind(b"\n") + 1
    entries: list[tuple[int, bytes]] = []
    bad = 0
    for line in data[:keep].splitlines():
        if not line.strip(b"\0 \t\r"):
            continue
        try:
            message = from_json(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            bad += 1
            continue
        if isinstance(message, Decision):
            entries.append((message.seq, line))
        else:
            bad += 1
    return entries, keep, bad


class DecisionFile:
    """An append-only decision JSONL file with torn-tail repair and an fsync policy.

    ``fsync``: ``always`` (every append), ``interval`` (at most every
    ``fsync_interval_s``, and on close) or ``never`` (the OS decides).
    ``rotate_bytes`` > 0 renames a full file to ``<path>.1`` (shifting older ones)
    between two complete lines, so rotation never loses or splits a line.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: str = "always", fsync_interval_s: float = 1.0,
                 rotate_bytes: int = 0, rotate_keep: int = 5, keep_entries: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.rotate_bytes = rotate_bytes
        self.rotate_keep = rotate_keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries, keep, bad = read_lines(self.path)
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
        self.last_seq = max((seq for seq, _ in entries), default=0)
        if not entries and rotate_bytes:
            self.last_seq = self._last_rotated_seq()
        self.entries: list[tuple[int, bytes]] | None = entries if keep_entries else None
        self._file = open(self.path, "ab", buffering=0)
        self._size = keep
        self._dirty = False
        self._synced_at = time.monotonic()

    def _last_rotated_seq(self) -> int:
        entries, _, _ = read_lines(self.path.with_name(self.path.name + ".1"))
        return max((seq for seq, _ in entries), default=0)

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
        if self.entries is not None:
            self.entries.extend((d.seq, line) for d, line in zip(decisions, lines))
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
