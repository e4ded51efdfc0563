"""``wanctl-replay``: the scorer engine run offline over a recorded telemetry trace.

Reads JSONL (lines of kind ``telemetry``; other kinds and blank lines are
skipped silently), feeds every sample to the same engine the live scorer runs,
and writes the decisions in the logger's line format, in emission order.

With ``--jobs N`` the WANs are split over N processes (WANs linked by
``alternate`` stay together: the quality policy reads the alternate's
samples).  Each process reads the whole trace, takes each line's WAN from a
light decode and scores only its own WANs; the decisions are then merged in
trace order and numbered as one engine numbers them, so the output is the
same byte for byte.  A trace with more WANs than ``scorer.max_wans`` is
replayed again in one process (which WANs are refused depends on the order
of all of them); ``--strict`` always runs in one process.
"""

from __future__ import annotations

import heapq
import json
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import msgspec

from proto.config import Config, config_or_exit
from proto.messages import Decision, Telemetry
from scorer.engine import TOO_MANY_WANS, Engine

EXIT_INVALID_LINE = 1

_REJECTION_TEXT = {
    "non_finite": "a number is not finite",
    "negative_value": "a negative RTT, baseline, drop rate, queue depth, queue delay or loss",
    "unknown_state": "cake_state or wan_zone is not GREEN, YELLOW, SOFT_RED or RED, or rtt_status is not ok, lost or unavailable",
    "unsupported_version": "schema version is not 1",
    "out_of_order": "t is not after the previous sample of this WAN and stream",
    "implausible_t": "t is more than scorer.max_t_jump_s after the previous sample of this WAN and stream",
    "unknown_wan": "the WAN is not in the config's wans list",
    "bad_wan_name": "the WAN name is empty, over 64 characters, or not [A-Za-z0-9_.-]",
    "too_many_wans": "scorer.max_wans WANs are kept already",
}


class InvalidLine(Exception):
    def __init__(self, cause: str, detail: str):
        self.cause = cause
        super().__init__(detail)


_decode_telemetry = msgspec.json.Decoder(Telemetry).decode


def parse_odd_line(line: bytes) -> Telemetry | None:
    """The slow path for a line the fast decoder refused: say why, or skip it.

    Uses the standard parser, which also reads NaN and Infinity, so such a
    sample reaches validation and is counted as non-finite.
    """
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except ValueError as error:
        raise InvalidLine("not_json", f"not JSON ({error})") from None
    if not isinstance(obj, dict):
        raise InvalidLine("not_object", f"not a JSON object (a {type(obj).__name__})")
    kind = obj.get("kind", "telemetry")
    if kind != "telemetry":
        return None
    try:
        return msgspec.convert(obj, Telemetry)
    except msgspec.ValidationError as error:
        raise InvalidLine("bad_telemetry", f"telemetry does not decode: {error}") from None


class Replay:
    """Counts what a replay read, skipped and decided; feeds the engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.lines = 0
        self.samples = 0
        self.invalid: dict[str, int] = {}
        self.decisions: dict[str, int] = {}
        self.record = None  # a part of a parallel replay: record(line number, decision) instead of writing

    def report(self, number: int, text: str, err) -> None:
        print(f"line {number}: {text}", file=err)

    def run(self, lines: Iterable[tuple[int, bytes]], out: BinaryIO, strict: bool, err=sys.stderr) -> int:
        """Replay the numbered ``lines``; return the exit status (0, or 1 on an invalid line with ``strict``)."""
        engine = self.engine
        process = engine.process
        decode = _decode_telemetry
        decode_error = msgspec.MsgspecError
        encode = msgspec.json.Encoder().encode_into
        record = self.record
        buf = bytearray()
        decisions = self.decisions
        number = samples = 0
        status = 0
        for number, line in lines:
            try:
                try:
                    sample = decode(line)
                except decode_error:
                    sample = parse_odd_line(line)
                    if sample is None:
                        continue
                samples += 1
                outcome = process(sample)
                cause = outcome.cause
                if cause is not None:
                    raise InvalidLine(cause, f"rejected: {_REJECTION_TEXT.get(cause, cause)}")
            except InvalidLine as bad:
                self.invalid[bad.cause] = self.invalid.get(bad.cause, 0) + 1
                self.report(number, f"{bad.cause}: {bad}", err)
                if strict:
                    status = EXIT_INVALID_LINE
                    break
                continue
            for decision in outcome.decisions:
                if record is not None:
                    record(number, decision)
                    decisions[decision.policy] = decisions.get(decision.policy, 0) + 1
                    continue
                # The envelope, stamped here as the scorer process stamps it live:
                # source "scorer" and epoch 0, the Decision defaults (a replay has no epoch of its own).
                encode(decision, buf, len(buf))
                buf += b"\n"
                decisions[decision.policy] = decisions.get(decision.policy, 0) + 1
                if len(buf) > 1 << 16:
                    out.write(buf)
                    buf.clear()
        self.lines, self.samples = number, samples
        out.write(buf)
        return status

    def summary(self, counters: dict[str, int] | None = None) -> str:
        c = self.engine.counters if counters is None else counters
        invalid = sum(self.invalid.values())
        causes = ", ".join(f"{k} {v}" for k, v in sorted(self.invalid.items())) or "none"
        by_policy = ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none"
        return (
            f"replay: {self.lines} lines, {self.samples} samples, {c['scored']} scored, "
            f"{c['ignored_null_rtt']} ignored (null RTT), {invalid} invalid ({causes}), "
            f"{c['gaps']} gaps, {c['stream_changes']} stream changes; "
            f"{sum(self.decisions.values())} decisions ({by_policy})"
        )


def run_replay(trace: Path, config: Path, out: Path | None, strict: bool, sets: list[str], jobs: int = 1) -> int:
    """The whole command: the exit status of replaying ``trace`` under ``config``."""
    cfg = config_or_exit("wanctl-replay", config, sets)
    try:
        source = trace.open("rb")
    except OSError as error:
        print(f"wanctl-replay: cannot read trace {trace}: {error.strerror}", file=sys.stderr)
        return EXIT_INVALID_LINE
    with source:
        if jobs > 1 and not strict and trace.is_file():
            code = _to_out(out, lambda sink: _run_parallel(trace, cfg, jobs, sink))
        else:
            code = _to_out(out, lambda sink: _run_one(source, cfg, sink, strict))
    return 0 if code is None else code


def _run_one(source: BinaryIO, cfg: Config, out: BinaryIO, strict: bool) -> int:
    """Replay ``source`` in this process; the summary goes to stderr."""
    run = Replay(Engine(cfg.scorer, wans=cfg.wans))
    code = run.run(enumerate(source, 1), out, strict)
    print(run.summary(), file=sys.stderr)
    return code


def _to_out(out: Path | None, write) -> int | None:
    """``write(sink)`` into ``out`` or stdout; None when stdout's reader went away."""
    if out is not None:
        with out.open("wb") as sink:
            return write(sink)
    try:
        code = write(sys.stdout.buffer)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # e.g. `wanctl-replay ... | head`: the reader has had enough
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return None


# --- several processes ----------------------------------------------------------


class _WanOf(msgspec.Struct):
    wan: str


_decode_wan = msgspec.json.Decoder(_WanOf).decode
_FRAME = struct.Struct("<I")
_DECISION, _ERROR = 0, 1


def part_of(cfg: Config, jobs: int):
    """The part (0 .. jobs - 1) that scores a WAN: WANs linked by ``alternate`` share one,
    and the groups take the parts in turn in the order they first appear in the trace
    (every part reads every line, so all of them make the same choices)."""
    group: dict[str, str] = {w.name: w.name for w in cfg.wans}
    parts: dict[str, int] = {}

    def root(name: str) -> str:
        while group[name] != name:
            name = group[name]
        return name

    for w in cfg.wans:
        if w.alternate in group:
            a, b = root(w.name), root(w.alternate)
            group[max(a, b)] = min(a, b)

    def part(name: str) -> int:
        key = root(name) if name in group else name
        got = parts.get(key)
        if got is None:
            got = parts[key] = len(parts) % jobs
        return got

    return part


def _own_lines(source: Iterable[bytes], me: int, part, seen: dict) -> Iterator[tuple[int, bytes]]:
    """The numbered lines of part ``me``: those of its WANs, and (part 0) what is no sample.

    A line's WAN comes from a decode of that one field.  A line where even that
    fails is read in full here: the owner of its WAN scores it, part 0 reports
    it when it is invalid; a line of another kind is nobody's."""
    mine: dict[str, bool] = {}
    decode_wan = _decode_wan
    decode_error = msgspec.MsgspecError
    number = 0
    for number, line in enumerate(source, 1):
        try:
            wan = decode_wan(line).wan
        except decode_error:
            try:
                try:
                    sample = _decode_telemetry(line)
                except decode_error:
                    sample = parse_odd_line(line)
            except InvalidLine:
                if me == 0:
                    yield number, line
                continue
            if sample is not None and part(sample.wan) == me:
                yield number, line
            continue
        own = mine.get(wan)
        if own is None:
            own = mine[wan] = part(wan) == me
        if own:
            yield number, line
    seen["lines"] = number


class _Part(Replay):
    """One process of a parallel replay: decisions and reports go to ``spool`` with their line."""

    def __init__(self, engine: Engine, spool: BinaryIO):
        super().__init__(engine)
        self.spool = spool
        self.encode = msgspec.msgpack.Encoder().encode
        self.record = self._record

    def _write(self, item) -> None:
        data = self.encode(item)
        self.spool.write(_FRAME.pack(len(data)) + data)

    def _record(self, number: int, decision: Decision) -> None:
        self._write((number, _DECISION, decision))

    def report(self, number: int, text: str, err) -> None:
        self._write((number, _ERROR, text))


def _replay_part(trace: str, cfg: Config, jobs: int, me: int, spool: str) -> dict:
    engine = Engine(cfg.scorer, wans=cfg.wans)
    seen = {"lines": 0}
    with open(trace, "rb") as source, open(spool, "wb") as sink:
        part = _Part(engine, sink)
        part.run(_own_lines(source, me, part_of(cfg, jobs), seen), sink, False)
    return {"lines": seen["lines"], "samples": part.samples, "invalid": part.invalid, "decisions": part.decisions,
            "counters": engine.counters, "wans": len(engine.wans),
            "refused": engine.rejected.get(TOO_MANY_WANS, 0)}


def _spooled(path: str) -> Iterator[tuple[int, int, object]]:
    decode = msgspec.msgpack.Decoder(tuple[int, int, Decision | str]).decode
    with open(path, "rb") as f:
        while header := f.read(_FRAME.size):
            yield decode(f.read(_FRAME.unpack(header)[0]))


def _run_parallel(trace: Path, cfg: Config, jobs: int, out: BinaryIO) -> int:
    """Replay in ``jobs`` processes, one part of the WANs each; the same output as one process."""
    import multiprocessing

    with tempfile.TemporaryDirectory(prefix="wanctl-replay-") as tmp:
        spools = [str(Path(tmp) / f"part{k}") for k in range(jobs)]
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.starmap(_replay_part, [(str(trace), cfg, jobs, k, spools[k]) for k in range(jobs)])
        if sum(p["wans"] for p in parts) > cfg.scorer.max_wans or any(p["refused"] for p in parts):
            # Which WANs are refused depends on the order of all of them: one process decides.
            with trace.open("rb") as source:
                return _run_one(source, cfg, out, False)
        encode = msgspec.json.Encoder().encode_into
        buf = bytearray()
        seq = Engine(cfg.scorer).next_seq
        # Each part's spool is in line order, and a line belongs to one part: the merge is trace order.
        for number, kind, item in heapq.merge(*map(_spooled, spools), key=lambda entry: entry[0]):
            if kind == _ERROR:
                print(f"line {number}: {item}", file=sys.stderr)
                continue
            item.seq = seq
            seq += 1
            encode(item, buf, len(buf))
            buf += b"\n"
            if len(buf) > 1 << 16:
                out.write(buf)
                buf.clear()
        out.write(buf)
    total = Replay(Engine(cfg.scorer))
    total.lines = max(p["lines"] for p in parts)
    counters: dict[str, int] = {}
    for p in parts:
        total.samples += p["samples"]
        for into, add in ((total.invalid, p["invalid"]), (total.decisions, p["decisions"]), (counters, p["counters"])):
            for key, value in add.items():
                into[key] = into.get(key, 0) + value
    print(total.summary(counters), file=sys.stderr)
    return 0


def _plain_arguments(argv: list[str]) -> tuple[Path, Path, Path | None, bool, list[str], int] | None:
    """The arguments of an everyday command line (TRACE, --config, and --out, --strict,
    --set, --jobs), or None for anything else (help, --version, a mistake, an unusual
    spelling): the command-line parser takes those.  Parsing the common case
    here saves a replay the parser's start-up."""
    trace = config = out = jobs = None
    strict = False
    sets: list[str] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-"):
            if trace is not None or not arg:
                return None
            trace = arg
            continue
        name, eq, value = arg.partition("=")
        if name == "--strict" and not eq:
            strict = True
            continue
        if name not in ("--config", "--out", "--set", "--jobs"):
            return None
        if not eq:
            value = next(args, "")
        if not value or value.startswith("-"):
            return None
        if name == "--set":
            sets.append(value)
        elif name == "--config" and config is None:
            config = value
        elif name == "--out" and out is None:
            out = value
        elif name == "--jobs" and jobs is None and value.isdigit() and int(value) >= 1:
            jobs = int(value)
        else:
            return None
    if trace is None or config is None:
        return None
    return Path(trace), Path(config), None if out is None else Path(out), strict, sets, jobs or 1


def main() -> None:
    plain = _plain_arguments(sys.argv[1:])
    if plain is None:
        from scorer.replay_cli import app  # help, --version and mistakes: the house CLI

        app()
    else:
        sys.exit(run_replay(*plain))
