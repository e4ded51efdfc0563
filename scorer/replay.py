"""``wanctl-replay``: the scorer engine run offline over a recorded telemetry trace.

Reads JSONL (lines of kind ``telemetry``; other kinds and blank lines are
skipped silently), feeds every sample to the same engine the live scorer runs,
and writes the decisions in the logger's line format, in emission order.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import BinaryIO, Iterable

import msgspec

from proto.config import config_or_exit
from proto.messages import Telemetry
from scorer.engine import Engine

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

    def run(self, lines: Iterable[bytes], out: BinaryIO, strict: bool, err=sys.stderr) -> int:
        """Replay ``lines``; return the exit status (0, or 1 on an invalid line with ``strict``)."""
        engine = self.engine
        process = engine.process
        decode = _decode_telemetry
        decode_error = msgspec.MsgspecError
        encode = msgspec.json.Encoder().encode_into
        buf = bytearray()
        decisions = self.decisions
        number = samples = 0
        status = 0
        for number, line in enumerate(lines, 1):
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
                print(f"line {number}: {bad.cause}: {bad}", file=err)
                if strict:
                    status = EXIT_INVALID_LINE
                    break
                continue
            for decision in outcome.decisions:
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

    def summary(self) -> str:
        c = self.engine.counters
        invalid = sum(self.invalid.values())
        causes = ", ".join(f"{k} {v}" for k, v in sorted(self.invalid.items())) or "none"
        by_policy = ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none"
        return (
            f"replay: {self.lines} lines, {self.samples} samples, {c['scored']} scored, "
            f"{c['ignored_null_rtt']} ignored (null RTT), {invalid} invalid ({causes}), "
            f"{c['gaps']} gaps, {c['stream_changes']} stream changes; "
            f"{sum(self.decisions.values())} decisions ({by_policy})"
        )


def run_replay(trace: Path, config: Path, out: Path | None, strict: bool, sets: list[str]) -> int:
    """The whole command: the exit status of replaying ``trace`` under ``config``."""
    cfg = config_or_exit("wanctl-replay", config, sets)
    try:
        source = trace.open("rb")
    except OSError as error:
        print(f"wanctl-replay: cannot read trace {trace}: {error.strerror}", file=sys.stderr)
        return EXIT_INVALID_LINE
    run = Replay(Engine(cfg.scorer, wans=cfg.wans))
    with source:
        if out is None:
            try:
                code = run.run(source, sys.stdout.buffer, strict)
                sys.stdout.flush()
            except BrokenPipeError:  # e.g. `wanctl-replay ... | head`: the reader has had enough
                # Point stdout at /dev/null so the interpreter's final flush stays quiet.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
        else:
            with out.open("wb") as sink:
                code = run.run(source, sink, strict)
    print(run.summary(), file=sys.stderr)
    return code


def _plain_arguments(argv: list[str]) -> tuple[Path, Path, Path | None, bool, list[str]] | None:
    """The arguments of an everyday command line (TRACE, --config, and --out, --strict,
    --set), or None for anything else (help, --version, a mistake, an unusual
    spelling): the command-line parser takes those.  Parsing the common case
    here saves a replay the parser's start-up."""
    trace = config = out = None
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
        if name not in ("--config", "--out", "--set"):
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
        else:
            return None
    if trace is None or config is None:
        return None
    return Path(trace), Path(config), None if out is None else Path(out), strict, sets


def main() -> None:
    plain = _plain_arguments(sys.argv[1:])
    if plain is None:
        from scorer.replay_cli import app  # help, --version and mistakes: the house CLI

        app()
    else:
        sys.exit(run_replay(*plain))
