"""The scorer's state on disk: a base snapshot and an append-only log of per-WAN records.

``state_path``
    The base: the whole engine (``Engine.export``) and its latest decisions,
    written atomically (temp file, fsync, rename, directory fsync), with a
    generation number ``gen``.
``state_path`` + ``.log``
    Records appended since the base, each one ``write`` and one ``fsync``:
    the whole state of the WANs that changed, the next decision seq, the
    engine's running totals and the decisions those WANs made.  A record is
    framed by its length and CRC-32, so a record torn by a crash is seen, and
    cut off, when the log is read back.

Loading reads the base, then applies every complete record of its
generation in order: a WAN in a later record replaces its earlier self.
Compaction writes a new base (the whole engine, generation + 1) and then
empties the log; a crash between the two leaves records of the old
generation behind, which the new base already covers and loading skips.
So at any instruction the files hold either the old or the new state of
every WAN, never a torn one, and the cost of a commit is the size of what
changed, not the number of WANs.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import msgspec

from runtime.storage import write_atomic
from scorer.engine import WanScorer

_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload


class PersistedState(msgspec.Struct):
    """The base file: the engine snapshot plus its latest decisions and the log generation."""

    engine: bytes
    recent: list[bytes] = []  # Decision JSON lines, oldest first
    gen: int = 0


class Record(msgspec.Struct, array_like=True):
    """One commit in the log: the changed WANs, the engine totals and the decisions made."""

    gen: int
    next_seq: int
    wans: list[WanScorer]
    rejected: dict[str, int]
    counters: dict[str, int]
    decisions: list[bytes]  # Decision JSON lines, in seq order


_encode_record = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(Record).decode


class Loaded(msgspec.Struct):
    """What ``StateStore.load`` found."""

    base: PersistedState | None
    records: list[Record]
    torn_bytes: int = 0  # cut off the end of the log


class StateStore:
    """The base file and the record log of one scorer."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.log_path = self.path.with_name(self.path.name + ".log")
        self.gen = 0
        self.base_bytes = 0
        self.log_bytes = 0
        self.records_written = 0
        self.compactions = 0
        self._fd: int | None = None

    def read_base(self) -> PersistedState | None:
        """The base file, or None when there is none; raises when it does not decode."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        self.base_bytes = len(data)
        base = msgspec.msgpack.decode(data, type=PersistedState)
        self.gen = base.gen
        return base

    def read_log(self) -> tuple[list[Record], int]:
        """The complete records of the current generation, in order, and how many torn bytes
        follow the last complete one (they are cut off the file)."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            data = b""
        records: list[Record] = []
        at = 0
        end = len(data)
        while at + _HEADER.size <= end:
            size, crc = _HEADER.unpack_from(data, at)
            body = data[at + _HEADER.size:at + _HEADER.size + size]
            if len(body) != size or zlib.crc32(body) != crc:
                break
            try:
                record = _decode_record(body)
            except msgspec.MsgspecError:
                break
            at += _HEADER.size + size
            if record.gen == self.gen:
                records.append(record)
        torn = end - at
        if torn:
            with open(self.log_path, "r+b") as f:
                f.truncate(at)
                f.flush()
                os.fsync(f.fileno())
        self.log_bytes = at
        return records, torn

    def _log_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def append(self, wans: list[WanScorer], next_seq: int, rejected: dict[str, int],
               counters: dict[str, int], decisions: list[bytes]) -> None:
        """One record, one write, one fsync: durable when this returns."""
        body = _encode_record(Record(self.gen, next_seq, wans, rejected, counters, decisions))
        data = _HEADER.pack(len(body), zlib.crc32(body)) + body
        fd = self._log_fd()
        try:
            written = 0
            while written < len(data):  # a short write is continued
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError:
            # Cut back to the last whole record, so the next one never follows a fragment.
            try:
                os.ftruncate(fd, self.log_bytes)
            except OSError:
                pass  # a torn last record is cut off on start as well
            raise
        self.log_bytes += len(data)
        self.records_written += 1

    def compact(self, engine_snapshot: bytes, recent: list[bytes]) -> None:
        """A new base of the next generation, then an empty log."""
        data = msgspec.msgpack.encode(PersistedState(engine=engine_snapshot, recent=recent, gen=self.gen + 1))
        write_atomic(self.path, data)
        self.gen += 1
        self.base_bytes = len(data)
        if self.log_bytes or self.log_path.exists():
            fd = self._log_fd()
            os.ftruncate(fd, 0)
            os.fsync(fd)
        self.log_bytes = 0
        self.compactions += 1

    def wants_compaction(self) -> bool:
        """The log has grown past the base (and at least 1 MiB): rewriting the base is cheaper than keeping it."""
        return self.log_bytes > max(1 << 20, 2 * self.base_bytes)

    def set_aside(self) -> Path:
        """Move a base that does not decode out of the way (its log goes with it)."""
        bad = self.path.with_name(self.path.name + ".bad")
        self.path.rename(bad)
        if self.log_path.exists():
            self.log_path.rename(self.log_path.with_name(self.log_path.name + ".bad"))
        self.gen = 0
        self.base_bytes = 0
        return bad

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
