"""The scorer process: the engine between the bus, the journal and the state file.

Crash safety (SIGKILL at any moment), per sample that yields decisions:

1. the engine decides (in memory only);
2. the state snapshot is written atomically, carrying the new engine state
   *and* the new decisions (``recent``) — this is the commit point;
3. the decisions are appended to the journal and fsync'd;
4. only then are they published.

A kill before 2 loses nothing anyone has seen: the old snapshot restores the
old state and the next samples decide again, with the same seq.  A kill
between 2 and 3 is repaired on restart: decisions in the snapshot's
``recent`` that are newer than the journal's last line are appended first.
So the journal is always a prefix-complete record of every decision the
engine state reflects, and the next seq is ``max(snapshot, journal + 1)``.
Between decisions the snapshot is rewritten every ``persist_interval_s`` so
running timers resume close to where they were.

Replays for the logger come from the journal's last ``JOURNAL_WINDOW`` lines
in memory, or from the journal file for anything older, so the scorer's
memory does not grow with the journal over months of running.
"""

from __future__ import annotations

import logging
import time
import msgspec
import zmq

from bus import sockets
from proto.config import Config, resolve_path
from proto.messages import (
    ENABLE, REPLAY_LIMIT, Decision, ReplayReply, ReplayRequest, State, Telemetry, from_json, to_json,
)
from runtime.health import Health
from runtime.stage import Stage, stage_command
from runtime.storage import DecisionJournal, write_atomic
from scorer.engine import CONFIDENCE, Engine

log = logging.getLogger("wanctl.scorer")

RECENT = 32  # decisions kept in the snapshot for journal repair
JOURNAL_WINDOW = 2 * REPLAY_LIMIT  # journal lines kept in memory for replays; older ones are read from the file
FALLBACK_DEGRADED_S = 60.0  # health stays degraded this long after the confidence policy fails on a sample


class PersistedState(msgspec.Struct):
    """The scorer's state file: the engine snapshot plus its latest decisions."""

    engine: bytes
    recent: list[bytes] = []  # Decision JSON lines, oldest first


class ScorerCore:
    """Engine + journal + state file; no sockets (the loop in ``run`` owns them)."""

    def __init__(self, cfg: Config, *, epoch: int) -> None:
        s = cfg.scorer
        self.cfg = cfg
        self.epoch = epoch
        self.state_path = resolve_path(cfg, s.state_path)
        self.journal = DecisionJournal(resolve_path(cfg, s.journal_path), fsync="always", window=JOURNAL_WINDOW)
        self.tallies = {"journal_repaired": 0, "state_file_errors": 0, "replays_served": 0}
        self.engine, recent = self._load_state()
        for line in recent:  # kill between the snapshot and the journal append
            decision = from_json(line)
            if decision.seq > self.journal.last_seq:
                self.journal.append_decisions([decision])
                self.tallies["journal_repaired"] += 1
        if self.tallies["journal_repaired"]:
            log.warning("journal: restored %d decisions from the state file", self.tallies["journal_repaired"])
        if self.journal.last_seq >= self.engine.next_seq:
            log.warning("journal: last seq %d is ahead of the state file's next seq %d; continuing after it",
                        self.journal.last_seq, self.engine.next_seq)
        self.engine.next_seq = max(self.engine.next_seq, self.journal.last_seq + 1)
        self.dirty = False
        log.info("scorer: next decision seq %d, %d WANs restored, journal %s",
                 self.engine.next_seq, len(self.engine.wans), self.journal.path)

    def _load_state(self) -> tuple[Engine, list[bytes]]:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return Engine(self.cfg.scorer, wans=self.cfg.wans, epoch=self.epoch), []
        try:
            saved = msgspec.msgpack.decode(data, type=PersistedState)
            return Engine.restore(self.cfg.scorer, saved.engine, wans=self.cfg.wans, epoch=self.epoch), saved.recent
        except Exception as error:  # noqa: BLE001 - a bad state file must not stop steering
            self.tallies["state_file_errors"] += 1
            bad = self.state_path.with_name(self.state_path.name + ".bad")
            self.state_path.rename(bad)
            log.error("%s: cannot restore scorer state (%s); moved to %s, starting from GOOD",
                      self.state_path, error, bad)
            return Engine(self.cfg.scorer, wans=self.cfg.wans, epoch=self.epoch), []

    def persist(self) -> None:
        recent = self.journal.recent_lines(RECENT)
        write_atomic(self.state_path, msgspec.msgpack.encode(
            PersistedState(engine=self.engine.export(), recent=recent)))
        self.dirty = False

    def on_telemetry(self, sample: Telemetry) -> list[Decision]:
        """Score one sample; decisions come back already committed and journaled."""
        outcome = self.engine.process(sample)
        if outcome.cause is None:
            self.dirty = True
        decisions = list(outcome.decisions)
        if decisions:
            for d in decisions:  # the envelope is the shell's
                d.source, d.epoch = "scorer", self.epoch
            lines = [to_json(d) for d in decisions]
            recent = self.journal.recent_lines(RECENT) + lines
            write_atomic(self.state_path, msgspec.msgpack.encode(
                PersistedState(engine=self.engine.export(), recent=recent[-RECENT:])))
            self.dirty = False
            self.journal.append_decisions(decisions)
        return decisions

    def replay(self, request: ReplayRequest) -> ReplayReply:
        """Journal lines after a seq (the logger's catch-up)."""
        self.tallies["replays_served"] += 1
        limit = max(1, min(request.limit, REPLAY_LIMIT))
        return ReplayReply(last_seq=self.journal.last_seq, lines=self.journal.lines_after(request.after, limit))

    @property
    def counters(self) -> dict[str, int]:
        """The core's one flat namespace: the engine's counts, rejected samples by cause, the journal's."""
        out = dict(self.engine.counters)
        out.update({f"rejected_{k}": v for k, v in self.engine.rejected.items()})
        out.update(self.tallies)
        out["last_decision_seq"] = self.journal.last_seq
        out["journal_reads_from_file"] = self.journal.reads_from_file
        out["next_seq"] = self.engine.next_seq
        return out

    def conditions(self) -> dict[str, str]:
        """None of its own: the confidence policy's failures are timed by ``EngineMetrics``."""
        return {}

    def close(self) -> None:
        try:
            self.persist()
        finally:
            self.journal.close()


REJECTION_LOG_INTERVAL_S = 60.0  # per cause: at most one line about rejected samples this often


class RejectionLog:
    """Rejected samples in the log: a WARNING the first time a cause is seen, then
    at most one line per cause every ``REJECTION_LOG_INTERVAL_S`` with how many more."""

    def __init__(self) -> None:
        self._logged: dict[str, int] | None = None
        self._at: dict[str, float] = {}

    def note(self, totals: dict[str, int], now: float) -> None:
        if self._logged is None:  # what a restored snapshot counted is old news
            self._logged = dict(totals)
        for cause, total in totals.items():
            logged = self._logged.get(cause, 0)
            if total > logged and now - self._at.get(cause, float("-inf")) >= REJECTION_LOG_INTERVAL_S:
                log.warning("rejected %d telemetry sample(s) as %s (%d in total; see docs/scoring.md, "
                            "validation); at most one such line per cause per %.0f s",
                            total - logged, cause, total, REJECTION_LOG_INTERVAL_S)
                self._logged[cause] = total
                self._at[cause] = now


class EngineMetrics:
    """The engine's facts as the scorer's health document and Prometheus metrics.

    The engine keeps running totals (rejected samples by cause, timer resets,
    hold-down expiries, flap-brake activations) and persists them; the
    counters here are brought up to those totals by their increase since the
    last ``sync``, so their series carry on across a scorer restart.  Degrade
    and recovery expiries come from the confidence policy's own decisions, and
    a flap penalty's expiry from the WAN's state, as this process sees them.
    """

    def __init__(self, health: Health, cfg: Config) -> None:
        self.health = health
        self.cfg = cfg
        self._totals: dict[tuple[str, str], int] = {}
        self._penalty_active: dict[str, bool] = {}
        self._confidence_errors: int | None = None
        self._confidence_error_at: float | None = None
        self.rejections = RejectionLog()

    def decided(self, decision: Decision) -> None:
        self.health.observe_decision(decision)
        if decision.policy == CONFIDENCE and not decision.fallback:
            timer = "degrade" if decision.decision == ENABLE else "recovery"
            self.health.metrics.timer_expiries.labels(wan=decision.wan, timer=timer).inc()

    def _bring_up(self, wan: str, name: str, total: int, counter) -> int:
        """Increase ``counter`` to ``total``; returns by how much the total grew since the last sync."""
        grew = total - self._totals.get((wan, name), 0)
        if grew > 0:
            counter.inc(grew)
        self._totals[(wan, name)] = total
        return max(grew, 0)

    def sync(self, core: ScorerCore, states: list[State], now: float) -> None:
        health, m, engine = self.health, self.health.metrics, core.engine
        health.sync_rejected(engine.rejected)
        active_now = {state.wan: state.flap_penalty_remaining_s is not None for state in states}
        for state in states:
            health.observe_state(state)
        for wan, w in engine.wans.items():
            cp = w.confidence_policy
            self._bring_up(wan, "degrade_resets", cp.degrade_resets, m.timer_resets.labels(wan=wan, timer="degrade"))
            self._bring_up(wan, "recovery_resets", cp.recovery_resets,
                           m.timer_resets.labels(wan=wan, timer="recovery"))
            self._bring_up(wan, "hold_down_expiries", cp.hold_down_expiries,
                           m.timer_expiries.labels(wan=wan, timer="hold_down"))
            started = self._bring_up(wan, "penalties", cp.penalties, m.flap_brake_activations.labels(wan=wan))
            active = active_now.get(wan, False)
            if wan in self._penalty_active:
                # A penalty only starts while none is active, so every one that was
                # running or started since the last sync and is not running now has expired.
                expired = self._penalty_active[wan] + started - active
                if expired > 0:
                    m.timer_expiries.labels(wan=wan, timer="flap_penalty").inc(expired)
            self._penalty_active[wan] = active
        errors = engine.counters["confidence_errors"] + engine.counters["quality_errors"]
        if self._confidence_errors is not None and errors > self._confidence_errors:
            self._confidence_error_at = now
        self._confidence_errors = errors
        if self._confidence_error_at is not None:
            if now - self._confidence_error_at <= FALLBACK_DEGRADED_S:
                health.degrade("confidence_policy", (
                    f"a policy failed on a sample {now - self._confidence_error_at:.0f} s ago "
                    f"({errors} in total); Phase 2A hysteresis decides for it (see the scorer log)"))
            else:
                health.clear("confidence_policy")
                self._confidence_error_at = None
        self.rejections.note(engine.rejected, now)
        s = self.cfg.scorer
        health.set_details({"policy": s.policy, "shadow": s.shadow, "last_decision_seq": core.journal.last_seq,
                            "next_seq": engine.next_seq, "accepted": engine.counters["accepted"]})


def _state_key(state: State) -> tuple:
    return (state.desired, state.decision_seq, state.flap_penalty)


def run(cfg: Config) -> int:
    with Stage(cfg, "scorer") as stage:
        core = ScorerCore(cfg, epoch=stage.epoch)
        stage.on_close("persist the scorer state and close the journal", core.close)
        sub = stage.subscriber([b"telemetry."])
        pub = stage.publisher()
        journal_sock = stage.server_socket(zmq.ROUTER, cfg.bus.journal)
        health = stage.health
        counters = {"decisions_published": 0, "states_published": 0, "bad_replay_requests": 0}
        stage.count_from("core", lambda: core.counters)
        stage.count_from("shell", counters)
        health.conditions_from("core", core.conditions)
        health.expect("telemetry")
        metrics = EngineMetrics(health, cfg)
        state_seq = 0
        published: dict[str, tuple] = {}
        s = cfg.scorer
        now = time.monotonic()
        states_due = now
        persist_due = now + s.persist_interval_s
        metrics.sync(core, core.engine.states(), now)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(journal_sock, zmq.POLLIN)

        def publish_states(force: bool) -> None:
            nonlocal state_seq
            states = core.engine.states()
            for state in states:
                key = _state_key(state)
                if force or published.get(state.wan) != key:
                    state_seq += 1
                    pub.send(msgspec.structs.replace(state, seq=state_seq, epoch=stage.epoch))
                    published[state.wan] = key
                    counters["states_published"] += 1
                    health.sent("state")
            metrics.sync(core, states, time.monotonic())

        while not stage.stopping:
            now = time.monotonic()
            timeout = min(states_due, persist_due, stage.beats.due) - now
            events = dict(poller.poll(max(0, min(100, int(timeout * 1000) + 1))))
            if sub in events:
                received = 0
                for frames in sockets.pending_frames(sub):
                    message = stage.decoder.decode(frames)
                    if not isinstance(message, Telemetry):
                        continue
                    received += 1
                    decisions = core.on_telemetry(message)
                    for decision in decisions:
                        pub.send(decision)
                        counters["decisions_published"] += 1
                        metrics.decided(decision)
                        health.sent("decision")
                    if decisions:
                        publish_states(force=False)
                if received:
                    health.saw("telemetry", received)
            if journal_sock in events:
                for frames in sockets.pending_frames(journal_sock):
                    try:
                        request = msgspec.msgpack.decode(frames[-1], type=ReplayRequest)
                    except Exception:  # noqa: BLE001
                        counters["bad_replay_requests"] += 1
                        continue
                    reply = msgspec.msgpack.encode(core.replay(request))
                    try:
                        journal_sock.send_multipart([frames[0], reply], zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass  # the requester went away; it will ask again
            now = time.monotonic()
            if now >= states_due:
                publish_states(force=True)
                states_due = now + s.state_interval_s
            if now >= persist_due:
                if core.dirty:
                    core.persist()
                persist_due = now + s.persist_interval_s
            if now >= stage.beats.due:
                health.sync_dropped(stage.decoder.counters)
                stage.heartbeat(now)
    log.info("scorer stopped at decision seq %d", core.journal.last_seq)
    return 0


def main(argv: list[str] | None = None) -> None:
    stage_command("scorer", "Score telemetry from the bus; journal, publish and persist decisions.", run, argv=argv)
