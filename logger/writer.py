"""The logger's exactly-once, in-order rule, without sockets.

The file's last seq is the only state that matters.  A decision with seq
``last + 1`` is appended; an older one is a duplicate and is dropped; a newer
one means decisions are missing, so it is held back and the journal is asked
for everything after ``last``.  Replayed lines go through the same rule, so
live and replayed copies of one decision can arrive in any order and each seq
is still written once.
"""

from __future__ import annotations

from runtime.storage import DecisionFile
from proto.messages import Decision, to_json

HELD_MAX = 10_000


class DecisionLog:
    def __init__(self, file: DecisionFile) -> None:
        self.file = file
        self.held: dict[int, bytes] = {}  # seq -> line, arrived ahead of a gap
        self.counters = {"written": 0, "duplicates": 0, "held": 0, "gaps_seen": 0}

    @property
    def last_seq(self) -> int:
        return self.file.last_seq

    def offer(self, seq: int, line: bytes) -> bool:
        """Take one decision line; returns True when a gap is open (a replay is needed)."""
        last = self.file.last_seq
        if seq <= last or seq in self.held:
            self.counters["duplicates"] += 1
        elif seq == last + 1:
            self._write([(seq, line)])
        else:
            if not self.held:
                self.counters["gaps_seen"] += 1
            if len(self.held) < HELD_MAX:
                self.held[seq] = line
                self.counters["held"] += 1
        return bool(self.held)

    def offer_decision(self, decision: Decision) -> bool:
        return self.offer(decision.seq, to_json(decision))

    def _write(self, first: list[tuple[int, bytes]]) -> None:
        batch = first
        seq = first[-1][0]
        while (line := self.held.pop(seq + 1, None)) is not None:
            seq += 1
            batch.append((seq, line))
        self.file.append([line for _, line in batch], seq)
        self.counters["written"] += len(batch)
