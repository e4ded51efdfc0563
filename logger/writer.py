"""The logger's exactly-once, in-order rule, without sockets.

The file's last seq is the only state that matters.  Lines come from the
scorer's journal (its replay replies), the one authoritative record: a
decision seen on the bus is never written, it only tells the logger that the
journal has more (see ``logger.main``), so a forged ``decision.*`` message can
at most cause a replay request.

A journal line with seq ``last + 1`` is appended; an older one is a duplicate
and is dropped; a newer one is held back until the lines before it arrive.

When the file cannot be written (a full disk, a read-only directory...), the
batch is not written at all (``runtime.storage`` cuts a failed append back to
the last whole line), ``error`` says why, and nothing is taken until
``retry_at``: the same lines are asked from the journal again then.  No line
is ever written after one that failed.
"""

from __future__ import annotations

from runtime.storage import AppendFailed, DecisionFile

HELD_MAX = 10_000
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0


class DecisionLog:
    def __init__(self, file: DecisionFile) -> None:
        self.file = file
        self.held: dict[int, bytes] = {}  # seq -> line, arrived ahead of a gap
        self.counters = {"written": 0, "duplicates": 0, "held": 0, "gaps_seen": 0, "write_failures": 0}
        self.retry_at: float | None = None  # monotonic time before which nothing is written (after a failure)
        self._backoff_s = RETRY_FIRST_S

    @property
    def last_seq(self) -> int:
        return self.file.last_seq

    @property
    def error(self) -> str | None:
        """Why the file cannot be written (None while it can)."""
        return self.file.error

    def offer(self, seq: int, line: bytes, now: float = 0.0) -> bool:
        """Take one journal line; returns True when a gap is open or a write failed (ask the journal again)."""
        last = self.file.last_seq
        if seq <= last or seq in self.held:
            self.counters["duplicates"] += 1
        elif seq == last + 1:
            if self.retry_at is not None and now < self.retry_at:
                return True  # still backing off after a failed write: asked again later
            self._write([(seq, line)], now)
        else:
            if not self.held:
                self.counters["gaps_seen"] += 1
            if len(self.held) < HELD_MAX:
                self.held[seq] = line
                self.counters["held"] += 1
        return bool(self.held) or self.retry_at is not None

    def _write(self, first: list[tuple[int, bytes]], now: float) -> None:
        batch = first
        seq = first[-1][0]
        while (line := self.held.pop(seq + 1, None)) is not None:
            seq += 1
            batch.append((seq, line))
        try:
            self.file.append([line for _, line in batch], seq)
        except AppendFailed:
            self.counters["write_failures"] += 1
            self.held.clear()  # all of it comes from the journal again, in order
            self.retry_at = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, RETRY_MAX_S)
            return
        self.retry_at = None
        self._backoff_s = RETRY_FIRST_S
        self.counters["written"] += len(batch)

    def sync(self, now: float) -> None:
        """The ``interval`` fsync from the stage loop; a failure undoes the unsynced lines (asked again)."""
        try:
            self.file.maybe_sync()
        except AppendFailed:
            self.counters["write_failures"] += 1
            self.held.clear()
            self.retry_at = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, RETRY_MAX_S)
