"""The logger process: the scorer's journal into ``logger.path``, exactly once and in order.

Every line it writes comes from the scorer's journal socket (a replay reply),
never from the bus: a ``decision.*`` message only wakes it up, so a forged
one cannot get into the file.  It asks the journal for everything after its
file's last seq when it starts, whenever a decision on the bus is newer than
the file, whenever the scorer's heartbeat reports a later decision than the
file holds, and every few seconds as a backstop.  A request that gets no
answer within ``REPLY_TIMEOUT_S`` (the scorer is down) is abandoned with its
socket and asked again.  When the file cannot be written (a full disk, a
read-only directory) health is degraded with the reason and the same lines
are asked again after a backoff; nothing is lost and nothing is written out
of order.
"""

from __future__ import annotations

import logging
import time

import msgspec
import zmq

from bus import sockets
from logger.writer import DecisionLog
from proto.config import Config, resolve_path
from proto.messages import Decision, Heartbeat, ReplayReply, ReplayRequest, from_json
from runtime.health import Health
from runtime.stage import Stage, stage_command
from runtime.storage import DecisionFile
from runtime.binding import bind as bind_to_router

log = logging.getLogger("wanctl.logger")

REPLY_TIMEOUT_S = 2.0
BACKSTOP_S = 5.0
BEHIND_DEGRADED_S = 10.0  # behind the scorer's journal for longer than this: degraded


def report_progress(health: Health, file: DecisionFile, decisions: DecisionLog, scorer_seq: int,
                    behind_since: float | None, now: float) -> float | None:
    """The file's progress into health: degraded while it stays behind the scorer's journal."""
    health.set_details({"path": str(file.path), "last_seq": decisions.last_seq, "scorer_last_seq": scorer_seq,
                        "held": len(decisions.held), "written": decisions.counters["written"],
                        "storage_error": decisions.error})
    if decisions.error:
        health.degrade("storage", f"{decisions.error}; decisions are kept in the scorer's journal and "
                                  f"written when it can be")
    else:
        health.clear("storage")
    if scorer_seq <= decisions.last_seq:
        health.clear("behind")
        return None
    if behind_since is None:
        return now
    if now - behind_since > BEHIND_DEGRADED_S:
        health.degrade("behind", f"{file.path} holds decisions up to seq {decisions.last_seq} but the scorer "
                                 f"journaled {scorer_seq}, for {now - behind_since:.0f} s")
    return behind_since


def run(cfg: Config) -> int:
    with Stage(cfg, "logger") as stage:
        stage.health.note("router_binding", bind_to_router(cfg).details())  # the scorer's files and this one
        lc = cfg.logger
        file = DecisionFile(resolve_path(cfg, lc.path), fsync=lc.fsync, fsync_interval_s=lc.fsync_interval_s,
                            rotate_bytes=lc.rotate_bytes, rotate_keep=lc.rotate_keep)
        stage.on_close("close the decision file", file.close)
        decisions = DecisionLog(file)
        if file.error:
            log.error("logger: %s; retrying with backoff", file.error)
        else:
            log.info("logger: %s holds decisions up to seq %d", file.path, file.last_seq)
        sub = stage.subscriber([b"decision.", b"heartbeat.scorer"])
        stage.publisher()
        counters = {"replay_requests": 0, "replay_timeouts": 0, "replayed_lines": 0, "bad_replay_lines": 0,
                    "torn_bytes_repaired": file.repaired_bytes, "live_decisions_seen": 0}
        stage.count_from("decisions", decisions.counters)
        stage.count_from("storage", file.counters)
        stage.count_from("replays", counters)
        stage.count_from("file", lambda: {"last_seq": decisions.last_seq})
        asked_at: float | None = None  # monotonic time of the outstanding request
        replay_needed = True
        backstop_due = time.monotonic() + BACKSTOP_S

        def new_dealer() -> zmq.Socket:
            return stage.client_socket(zmq.DEALER, cfg.bus.journal, hwm=10)

        health = stage.health
        health.expect("heartbeat")  # the scorer's, once a second: its absence means the scorer (or the bus) is down
        scorer_seq = 0  # the last decision the scorer's heartbeat says it journaled
        behind_since: float | None = None
        dealer = new_dealer()
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(dealer, zmq.POLLIN)
        while not stage.stopping:
            now = time.monotonic()
            backing_off = decisions.retry_at is not None and now < decisions.retry_at
            if replay_needed and asked_at is None and not backing_off:
                try:
                    dealer.send(msgspec.msgpack.encode(ReplayRequest(after=decisions.last_seq)), zmq.NOBLOCK)
                    counters["replay_requests"] += 1
                    asked_at = now
                    replay_needed = False
                except zmq.Again:
                    pass
            if asked_at is not None and now - asked_at > REPLY_TIMEOUT_S:
                counters["replay_timeouts"] += 1
                health.degrade("journal", f"no reply from the scorer's journal socket {cfg.bus.journal} within "
                                          f"{REPLY_TIMEOUT_S:g} s; asking again")
                poller.unregister(dealer)
                stage.close_socket(dealer)
                dealer = new_dealer()
                poller.register(dealer, zmq.POLLIN)
                asked_at = None
                replay_needed = True
            events = dict(poller.poll(100))
            if sub in events:
                for frames in sockets.pending_frames(sub):
                    message = stage.decoder.decode(frames)
                    if isinstance(message, Decision):
                        # A wake-up only: the line itself comes from the journal.
                        health.saw("decision")
                        counters["live_decisions_seen"] += 1
                        if message.seq > decisions.last_seq:
                            replay_needed = True
                    elif isinstance(message, Heartbeat) and message.stage == "scorer":
                        health.saw("heartbeat")
                        scorer_seq = message.counters.get("last_decision_seq", 0)
                        if scorer_seq > decisions.last_seq:
                            replay_needed = True
            if dealer in events:
                try:
                    reply = msgspec.msgpack.decode(dealer.recv(zmq.NOBLOCK), type=ReplayReply)
                except zmq.Again:
                    reply = None
                except (msgspec.DecodeError, msgspec.ValidationError):
                    counters["bad_replay_lines"] += 1
                    reply = None
                if reply is not None:
                    asked_at = None
                    health.clear("journal")
                    now = time.monotonic()
                    for line in reply.lines:
                        try:
                            decision = from_json(line)
                        except (msgspec.DecodeError, msgspec.ValidationError):
                            counters["bad_replay_lines"] += 1
                            continue
                        if isinstance(decision, Decision):
                            if decisions.offer(decision.seq, line, now):
                                replay_needed = True  # a gap, or a failed write: asked again (after the backoff)
                            counters["replayed_lines"] += 1
                    if reply.lines and reply.last_seq > decisions.last_seq:
                        replay_needed = True  # more pages
            now = time.monotonic()
            if now >= backstop_due:
                replay_needed = True
                backstop_due = now + BACKSTOP_S
            decisions.sync(now)
            if now >= stage.beats.due:
                behind_since = report_progress(health, file, decisions, scorer_seq, behind_since, now)
                health.sync_dropped(stage.decoder.counters)
                stage.heartbeat(now)
    log.info("logger stopped at seq %d", decisions.last_seq)
    return 0


def main(argv: list[str] | None = None) -> None:
    stage_command("logger", "Write every decision exactly once, in seq order, to logger.path.", run, argv=argv)
