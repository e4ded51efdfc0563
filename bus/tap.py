"""``wanctl-tap``: print what passes on the bus.

Human-readable lines by default, JSONL with ``--json`` (so
``wanctl-tap --json --kind telemetry > trace.jsonl`` records a trace that
``wanctl-replay`` scores exactly as the live scorer did).  Gaps and repeats in
any source's seq are reported on stderr, so stdout stays clean JSONL.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime

import typer
import zmq

from bus import sockets
from proto.messages import KINDS, Actuation, Decision, Heartbeat, Message, State, Telemetry, to_json
from runtime import cli
from runtime.stop import StopFlag

app = cli.app()
CONNECT_TIMEOUT_S = 5.0


class SeqWatch:
    """Per (kind, source, epoch) expected seq; reports gaps and repeats.

    Decision seqs continue across scorer restarts, so decisions are keyed
    without the epoch.
    """

    def __init__(self) -> None:
        self.last: dict[tuple, int] = {}

    def check(self, message: Message) -> str | None:
        kind = type(message).__struct_config__.tag
        source = message.source
        key = (kind, source) if isinstance(message, Decision) else (kind, source, message.epoch)
        prev = self.last.get(key)
        self.last[key] = message.seq if prev is None else max(prev, message.seq)
        if prev is None:
            return None
        where = f"{kind} from {source}" + ("" if isinstance(message, Decision) else f" (epoch {message.epoch})")
        if message.seq > prev + 1:
            missing = message.seq - prev - 1
            span = f"seq {prev + 1}" if missing == 1 else f"seq {prev + 1}..{message.seq - 1}"
            return f"gap: {where}: {span} missing ({missing})"
        if message.seq <= prev:
            return f"repeat: {where}: seq {message.seq} after {prev}"
        return None


def _f(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def human(message: Message) -> str:
    """One readable line per message."""
    clock = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    if isinstance(message, Telemetry):
        steering = {None: "?", True: "on", False: "off"}[message.steering_active]
        probe = "" if message.rtt_status in (None, "ok") else f"({message.rtt_status})"
        loss = "" if not message.loss_pct else f" loss={_f(message.loss_pct, '%', 0)}"
        return (f"{clock} telemetry  {message.wan:<8} #{message.seq} rtt={_f(message.rtt_ms, 'ms')}{probe} "
                f"base={_f(message.baseline_rtt_ms, 'ms')}{loss} drops={_f(message.drops_per_sec, '/s')} "
                f"queue={_f(message.queue_depth_pct, '%')}/{_f(message.queue_delay_ms, 'ms')} "
                f"zone={message.wan_zone or '-'} steering={steering}")
    if isinstance(message, Decision):
        role = "driving" if message.driving else "shadow"
        if message.fallback:
            role += ",fallback"
        return (f"{clock} DECISION   {message.wan:<8} #{message.seq} {message.decision} -> {message.state} "
                f"confidence={message.confidence} threshold={message.threshold}"
                f"{' flap_penalty' if message.flap_penalty else ''} sustained={message.sustained_s:.2f}s "
                f"{message.policy}({role}) [{', '.join(message.contributors)}]")
    if isinstance(message, State):
        timers = []
        for name, value in (("degrade", message.degrade_remaining_s), ("hold_down", message.hold_down_remaining_s),
                            ("recovery", message.recovery_remaining_s),
                            ("flap_penalty", message.flap_penalty_remaining_s)):
            if value is not None:
                timers.append(f"{name}={value:.1f}s")
        return (f"{clock} state      {message.wan:<8} desired={message.desired} decision=#{message.decision_seq} "
                f"confidence={message.confidence} threshold={message.threshold} {' '.join(timers)}").rstrip()
    if isinstance(message, Actuation):
        error = f" error={message.error}" if message.error else ""
        return (f"{clock} actuation  {message.wan:<8} desired={message.desired} observed={message.observed or '?'} "
                f"{message.result} decision=#{message.decision_seq}{error}")
    if isinstance(message, Heartbeat):
        counters = " ".join(f"{k}={v}" for k, v in sorted(message.counters.items()))
        return f"{clock} heartbeat  {message.stage:<8} {message.status} up={message.uptime_s:.0f}s {counters}"
    return f"{clock} {message!r}"


@app.command(cls=cli.Command)
def main(
    config: str = cli.config_option("the pipeline's config (bus endpoints and keys); relative paths in it "
                                    "resolve against its directory"),
    json: bool = typer.Option(False, "--json", help="print JSONL (the messages' JSON form)"),
    kind: list[str] = typer.Option(None, "--kind", metavar="KIND", help=f"only these kinds ({', '.join(KINDS)}); repeatable"),
    wan: list[str] = typer.Option(None, "--wan", metavar="WAN", help="only these WANs (leaves out heartbeats, which have no WAN); repeatable"),
    count: int = typer.Option(0, "--count", min=0, metavar="N", help="exit after printing this many messages (0: no limit)"),
    connect_timeout: float = typer.Option(CONNECT_TIMEOUT_S, "--connect-timeout", min=0, metavar="SECONDS",
                                          help="exit 1 if the bus does not answer within this many seconds "
                                               "(0: keep waiting)"),
    version: bool = cli.version_option(),
) -> None:
    """Connect to the bus and print every message that passes, one per line."""
    kinds = list(kind or [])
    for k in kinds:
        if k not in KINDS:
            print(f"wanctl-tap: --kind must be one of {', '.join(KINDS)}, got {k!r}", file=sys.stderr)
            raise typer.Exit(2)
    cfg = sockets.load_stage_config(config, "tap")
    wans = set(wan or [])
    stop = StopFlag()
    ctx = zmq.Context()
    # Subscribe by kind only: seqs count across WANs, so WAN filtering is local.
    sub = sockets.subscriber(ctx, cfg, [f"{k}.".encode() for k in kinds] or [b""])
    decoder = sockets.FrameDecoder()
    seqs = SeqWatch()
    printed = 0
    connected = False
    started = time.monotonic()
    where = sockets.endpoint(cfg, cfg.bus.subscribe)
    ipc_path = where[len("ipc://"):] if where.startswith("ipc://") else None
    out = sys.stdout
    try:
        while not stop.stopping and (count == 0 or printed < count):
            if not sub.poll(100, zmq.POLLIN):
                if not connected and connect_timeout and time.monotonic() - started > connect_timeout:
                    print(f"wanctl-tap: {not_connected(where, ipc_path, config, connect_timeout)}", file=sys.stderr)
                    raise typer.Exit(1)
                continue
            for frames in sockets.pending_frames(sub):
                if count and printed >= count:
                    break
                if frames == [sockets.WELCOME]:
                    if not connected:
                        print(f"wanctl-tap: connected to {sockets.endpoint(cfg, cfg.bus.subscribe)}", file=sys.stderr)
                    connected = True
                    continue
                connected = True
                message = decoder.decode(frames)
                if message is None:
                    continue
                note = seqs.check(message)
                if note:
                    print(f"wanctl-tap: {note}", file=sys.stderr, flush=True)
                if wans and (isinstance(message, Heartbeat) or message.wan not in wans):
                    continue
                out.write(to_json(message).decode() if json else human(message))
                out.write("\n")
                printed += 1
            out.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        sub.close(0)
        ctx.term()
    dropped = {k: v for k, v in decoder.counters.items() if k not in ("received", "welcome") and v}
    if dropped:
        print(f"wanctl-tap: dropped frames: {dropped}", file=sys.stderr)


def not_connected(where: str, ipc_path: str | None, config: str | None, waited_s: float) -> str:
    """Why the tap got no answer from the bus, for an operator."""
    if ipc_path is not None and not os.path.exists(ipc_path):
        origin = (f"relative paths in {config} resolve against {os.path.dirname(os.path.abspath(config))}"
                  if config else f"no --config (nor $WANCTL_CONFIG): the defaults, relative to {os.getcwd()}")
        return (f"no bus socket at {ipc_path} after {waited_s:g}s: is the pipeline running with this config? "
                f"({origin})")
    return f"no answer from the bus at {where} within {waited_s:g}s"


def run() -> None:
    app()
