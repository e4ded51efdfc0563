"""The scorer process: the engine between the bus, the journal and the state store.

Crash safety (SIGKILL at any moment), per commit (a burst of samples taken
from the socket together):

1. the engine scores every sample of the burst (in memory only);
2. one record goes to the state log (``scorer.store``): the whole new state
   of every WAN that decided (and of its alternate), the next seq, the
   engine's totals and the burst's decisions; one write, one fsync: this is
   the commit point;
3. the decisions are appended to the journal (written, not yet fsync'd);
4. only then are they published, with the ``state.<wan>`` of the WANs that
   changed;
5. the journal is fsync'd.  The record of step 2 already holds the
   decisions, so this second fsync is off the path from sample to decision.

A kill before 2 loses nothing anyone has seen: the older records restore the
old state and the next samples decide again, with the same seq.  A kill
between 2 and 3 is repaired on restart: decisions in the log's records (and
the base's ``recent``) that are newer than the journal's last line are
appended first.  A power loss between 2 and 5 is repaired the same way: the
journal is fsync'd before every compaction, so every decision is in the
journal or in a record after the base.  When the fsync of step 5 fails, the
burst's lines are cut from the journal and its decisions wait in ``pending``
again (recorded already) to be journaled, and published, once more; the
logger takes each seq once.  The next seq is ``max(state, journal + 1)``.

Every ``persist_interval_s`` (when anything was scored since), and whenever
the log outgrows the base (checked after step 5), the store is compacted:
the whole engine as a new base, then an empty log.  The once-a-second
``state.<wan>`` refresh of every WAN is spread over the second, a slice of
WANs per turn of the loop.

When the state file or the journal cannot be written (a full disk, a
read-only directory), the decisions wait in ``pending`` (unpublished, and
no ``state.*`` goes out meanwhile), health is degraded with the reason, and
the commit is tried again every ``persist_interval_s``; no base is written
while they wait, so a kill loses none that the bus has seen (the samples that
made them decide again after a restart, with the same seq).

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
from runtime.binding import bind as bind_to_router
from runtime.health import Health
from runtime.notify import start_notifier
from runtime.stage import Stage, stage_command
from runtime.storage import AppendFailed, DecisionJournal
from scorer.engine import CONFIDENCE, Engine
from scorer.store import PersistedState, StateStore

__all__ = ["PersistedState", "ScorerCore", "EngineMetrics", "run", "main"]

log = logging.getLogger("wanctl.scorer")

RECENT = 32  # decisions kept in the base for journal repair
JOURNAL_WINDOW = 2 * REPLAY_LIMIT  # journal lines kept in memory for replays; older ones are read from the file
FALLBACK_DEGRADED_S = 60.0  # health stays degraded this long after the confidence policy fails on a sample


class ScorerCore:
    """Engine + journal + state store; no sockets (the loop in ``run`` owns them).

    ``score`` takes one sample and returns its decisions, not yet durable;
    ``commit`` makes everything scored since the last commit durable and
    journaled, and returns the names of the WANs that decided;
    ``sync_journal`` fsyncs the journal once they are published.
    ``on_telemetry`` is the three for one sample.
    """

    def __init__(self, cfg: Config, *, epoch: int) -> None:
        s = cfg.scorer
        self.cfg = cfg
        self.epoch = epoch
        self.state_path = resolve_path(cfg, s.state_path)
        self.store = StateStore(self.state_path)
        # The state log's record is the commit point (one fsync per burst of decisions: group
        # commit); the journal follows it and is fsync'd after the burst is published (sync_journal).
        self.journal = DecisionJournal(resolve_path(cfg, s.journal_path), fsync="never", window=JOURNAL_WINDOW)
        self._unsynced: list[Decision] = []  # journaled, published, not fsync'd in the journal yet
        self.tallies = {"journal_repaired": 0, "state_file_errors": 0, "replays_served": 0, "commit_errors": 0,
                        "state_records": 0, "state_compactions": 0, "commits": 0}
        self.alternates = {w.name: w.alternate for w in cfg.wans if w.alternate}
        self.storage_error: str | None = None
        self.pending: list[Decision] = []  # decided, not yet durable and journaled, not published
        self._recorded = 0  # how many of ``pending`` the state log already holds
        self._changed: dict[str, None] = {}  # WANs that decided since the last full commit, in order
        self.engine, recent = self._load_state()
        repaired: dict[int, Decision] = {}
        for line in recent:  # kill between the state record and the journal append
            decision = from_json(line)
            if decision.seq > self.journal.last_seq:
                repaired[decision.seq] = decision  # a decision may stand in the base and in a record
        if repaired:
            decisions = [repaired[seq] for seq in sorted(repaired)]
            try:
                self.journal.append_decisions(decisions)
                self.tallies["journal_repaired"] += len(decisions)
                log.warning("journal: restored %d decisions from the state file", len(decisions))
            except AppendFailed as error:
                # They are in the state already: only the journal (and the bus) still owe them.
                self.pending, self._recorded = decisions, len(decisions)
                self._storage_failed(error)
        if self.journal.last_seq >= self.engine.next_seq:
            log.warning("journal: last seq %d is ahead of the state file's next seq %d; continuing after it",
                        self.journal.last_seq, self.engine.next_seq)
        self.engine.next_seq = max(self.engine.next_seq, self.journal.last_seq + 1)
        self.dirty = False
        if not self.state_path.exists():
            self.persist()  # a base from the start: the log's records always follow one
        log.info("scorer: next decision seq %d, %d WANs restored, journal %s",
                 self.engine.next_seq, len(self.engine.wans), self.journal.path)

    def _fresh(self) -> Engine:
        return Engine(self.cfg.scorer, wans=self.cfg.wans, epoch=self.epoch)

    def _load_state(self) -> tuple[Engine, list[bytes]]:
        store = self.store
        try:
            base = store.read_base()
            engine = self._fresh() if base is None else Engine.restore(
                self.cfg.scorer, base.engine, wans=self.cfg.wans, epoch=self.epoch)
        except Exception as error:  # noqa: BLE001 - a bad state file must not stop steering
            self.tallies["state_file_errors"] += 1
            try:
                bad = store.set_aside()
            except OSError as rename_error:
                bad = f"nowhere ({rename_error})"
            log.error("%s: cannot restore scorer state (%s); moved to %s, starting from GOOD",
                      self.state_path, error, bad)
            return self._fresh(), []
        recent = list(base.recent) if base is not None else []
        records, torn = store.read_log()
        if torn:
            log.warning("%s: cut a torn last record (%d bytes) left by a crash", store.log_path, torn)
        for record in records:
            engine.load_wans(record.wans, record.next_seq, record.rejected, record.counters)
            recent.extend(record.decisions)
        return engine, recent

    def persist(self) -> None:
        """Compact: the whole engine as the new base, then an empty log.

        Never while decisions wait: a base must not hold the effect of a decision the
        journal does not have.  A failure degrades health and is tried again later.
        """
        if self.pending and self.commit() is None:
            return
        if not self.sync_journal():
            return
        try:
            self.store.compact(self.engine.export(), self.journal.recent_lines(RECENT))
        except OSError as error:
            self._storage_failed(error)
            return
        self.storage_error = None
        self.tallies["state_compactions"] += 1
        self.dirty = False

    def score(self, sample: Telemetry) -> list[Decision]:
        """Score one sample; its decisions are durable only after the next ``commit``."""
        outcome = self.engine.process(sample)
        if outcome.cause is None:
            self.dirty = True
        decisions = outcome.decisions
        if not decisions:
            return []
        decisions = list(decisions)
        epoch = self.epoch
        for d in decisions:  # the envelope is the shell's
            d.source, d.epoch = "scorer", epoch
        self.pending.extend(decisions)
        wan = sample.wan
        self._changed[wan] = None
        alternate = self.alternates.get(wan)
        if alternate is not None and alternate in self.engine.wans:
            self._changed[alternate] = None  # its summary is part of this decision
        return decisions

    def commit(self) -> list[str] | None:
        """Make the decisions scored since the last commit durable (one state-log record, one
        fsync), then journal them; returns the WANs that decided, or None when storage failed
        (the decisions wait in ``pending``, unpublished, and health says why)."""
        if not self.pending:
            return []
        engine = self.engine
        try:
            unrecorded = self.pending[self._recorded:]
            if unrecorded:
                rejected, counters = engine.totals()
                self.store.append([engine.wans[name] for name in self._changed], engine.next_seq,
                                  rejected, counters, [to_json(d) for d in unrecorded])
                self._recorded = len(self.pending)
                self.tallies["state_records"] += 1
            self.journal.append_decisions(self.pending)
        except OSError as error:
            self._storage_failed(error)
            return None
        self._unsynced.extend(self.pending)
        self.pending, self._recorded = [], 0
        changed, self._changed = list(self._changed), {}
        self.storage_error = None
        self.tallies["commits"] += 1
        return changed

    def sync_journal(self) -> bool:
        """fsync the journal lines of the bursts committed since the last call (step 5).

        On failure the journal cuts them off again; their decisions, in the state log
        already, wait in ``pending`` to be journaled (and published) once more."""
        try:
            self.journal.sync()
        except OSError as error:
            self.pending, self._recorded = self._unsynced + self.pending, len(self._unsynced) + self._recorded
            self._unsynced = []
            self._storage_failed(error)
            return False
        self._unsynced = []
        return True

    def after_publishing(self) -> None:
        """Step 5, and a compaction when the log has outgrown the base: the work of a
        commit that no published decision has to wait for."""
        if self.sync_journal() and self.store.wants_compaction():
            self.persist()

    def on_telemetry(self, sample: Telemetry) -> list[Decision]:
        """Score one sample; decisions come back committed and journaled ([] when the commit fails),
        then the journal is fsync'd."""
        decisions = self.score(sample)
        if decisions:
            if self.commit() is None:
                return []
            self.after_publishing()
        return decisions

    def _storage_failed(self, error: OSError) -> None:
        self.tallies["commit_errors"] += 1
        reason = str(error) if isinstance(error, AppendFailed) else (
            f"{getattr(error, 'filename', None) or self.state_path}: {error.strerror or error}")
        if reason != self.storage_error:
            log.error("cannot write the scorer's state or journal (%s); %d decisions wait, unpublished, "
                      "and are written when it can be", reason, len(self.pending))
        self.storage_error = reason

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
        """Storage only (the confidence policy's failures are timed by ``EngineMetrics``)."""
        if self.storage_error is None:
            return {}
        return {"storage": f"{self.storage_error}; {len(self.pending)} decisions wait, unpublished, "
                           f"until they can be written"}

    def close(self) -> None:
        try:
            self.commit()
            self.persist()
        finally:
            self.store.close()
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
        """The metrics of the WANs whose ``states`` are published now (not all of them)."""
        health, m, engine = self.health, self.health.metrics, core.engine
        active_now = {state.wan: state.flap_penalty_remaining_s is not None for state in states}
        for state in states:
            health.observe_state(state)
        for state in states:  # the WANs whose state is published now, not all of them
            wan = state.wan
            health.observe_agreement(wan, state.desired, policy_states(engine, wan, engine.shadows))
            cp = engine.wans[wan].confidence_policy
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

    def sync_engine(self, core: ScorerCore, now: float) -> None:
        """What concerns the whole engine (rejections, policy failures, the details, whose
        holds cover every WAN): once per heartbeat, not with every slice of states."""
        health, engine = self.health, core.engine
        health.sync_rejected(engine.rejected)
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
        details = {"policy": s.policy, "shadow": s.shadow, "last_decision_seq": core.journal.last_seq,
                   "next_seq": engine.next_seq, "accepted": engine.counters["accepted"]}
        if engine.quality_running:
            # The quality policy's hold in force per WAN (docs/scoring.md rule 8): None, or why it does not steer.
            details["quality_holds"] = {wan: w.quality.hold for wan, w in engine.wans.items()}
        health.set_details(details)


def policy_states(engine: Engine, wan: str, policies: list[str]) -> dict[str, str]:
    """The state of each of ``policies`` for ``wan`` (the shadows, for the agreement metric)."""
    w = engine.wans[wan]
    held = {"quality": w.quality.state, "confidence": w.confidence_policy.state,
            "hysteresis": w.hysteresis_policy.state}
    return {p: held[p] for p in policies}


def _state_key(state: State) -> tuple:
    return (state.desired, state.decision_seq, state.flap_penalty)


class StateRefresh:
    """The re-publication of every WAN's state once per ``interval_s``, spread over it:
    ``due(now)`` names the WANs whose turn has come (a slice per call), ``next_at`` when
    the next one comes."""

    def __init__(self, engine: Engine, interval_s: float, now: float) -> None:
        self.engine = engine
        self.interval_s = 0.9 * interval_s  # a margin for the loop's own delays
        self.names: list[str] = []
        self.cursor = 0
        self.owed = 0.0
        self.at = now
        self.next_at = now

    def due(self, now: float) -> list[str]:
        wans = self.engine.wans
        n = len(wans)
        if n != len(self.names):
            self.names = list(wans)  # WANs are only ever added, at the end
        if n == 0:
            self.at, self.next_at = now, now + self.interval_s
            return []
        self.owed = min(self.owed + (now - self.at) * n / self.interval_s, float(n))
        self.at = now
        k = int(self.owed)
        if self.owed - k > 1e-9 or k == 0:
            k += 1  # round up: every WAN within its interval, never later
        self.owed -= k
        names, start = self.names, self.cursor
        out = names[start:start + k]
        if len(out) < k:
            out += names[:k - len(out)]
        self.cursor = (start + k) % n
        self.next_at = now + (1.0 - self.owed if self.owed < 1.0 else 0.0) * self.interval_s / n
        return out


def run(cfg: Config) -> int:
    with Stage(cfg, "scorer") as stage:
        stage.health.note("router_binding", bind_to_router(cfg).details())  # before any file is opened
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
        notifier = start_notifier(stage)
        state_seq = 0
        published: dict[str, tuple] = {}
        s = cfg.scorer
        engine = core.engine
        now = time.monotonic()
        refresh = StateRefresh(engine, s.state_interval_s, now)
        persist_due = now + s.persist_interval_s
        metrics.sync(core, engine.states(), now)
        metrics.sync_engine(core, now)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(journal_sock, zmq.POLLIN)
        decode = stage.decoder.decode

        def publish_states(names, force: bool) -> None:
            nonlocal state_seq
            states = []
            for name in names:
                state = engine.state_of(name)
                key = _state_key(state)
                if force or published.get(name) != key:
                    state_seq += 1
                    state.seq, state.epoch = state_seq, stage.epoch
                    pub.send(state)
                    published[name] = key
                    counters["states_published"] += 1
                    health.sent("state")
                states.append(state)
            if states:
                metrics.sync(core, states, time.monotonic())
                notifier.states(states)

        def publish_decisions(decisions: list[Decision], changed: list[str]) -> None:
            for decision in decisions:
                pub.send(decision)
                counters["decisions_published"] += 1
                metrics.decided(decision)
                notifier.decision(decision)
                health.sent("decision")
            publish_states(changed, force=False)

        def commit_and_publish() -> None:
            decisions = core.pending
            changed = core.commit()
            if changed is not None:  # durable now; on a storage failure they wait
                publish_decisions(decisions, changed)
                core.after_publishing()

        while not stage.stopping:
            now = time.monotonic()
            timeout = min(refresh.next_at, persist_due, stage.beats.due) - now
            events = dict(poller.poll(max(0, min(100, int(timeout * 1000) + 1))))
            if sub in events:
                # Group commit: score what the socket holds now, make it durable
                # with one record, and only then publish.
                received = 0
                for frames in sockets.pending_frames(sub):
                    message = decode(frames)
                    if message.__class__ is not Telemetry:
                        continue
                    received += 1
                    core.score(message)
                if received:
                    health.saw("telemetry", received)
                if core.pending and core.storage_error is None:
                    commit_and_publish()  # waiting ones are retried every persist_interval_s
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
            if now >= refresh.next_at:
                names = refresh.due(now)
                if not core.pending:  # no state ahead of a decision that is not durable yet
                    publish_states(names, force=True)
            if now >= persist_due:
                if core.pending:
                    commit_and_publish()
                elif core.dirty:
                    core.persist()
                persist_due = now + s.persist_interval_s
            if now >= stage.beats.due:
                health.sync_dropped(stage.decoder.counters)
                metrics.sync_engine(core, now)
                stage.heartbeat(now)
    log.info("scorer stopped at decision seq %d", core.journal.last_seq)
    return 0


def main(argv: list[str] | None = None) -> None:
    stage_command("scorer", "Score telemetry from the bus; journal, publish and persist decisions.", run, argv=argv)
