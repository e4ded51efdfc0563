"""The actuator's core: drive each WAN's steering mangle rule toward the desired state.

Level-triggered and idempotent.  ``want(wan, desired, decision_seq)`` records
the latest desired state (``DEGRADED``: rule enabled, steering on; ``GOOD``:
rule disabled); an unchanged desire does nothing.  ``step(now)`` does what is
due and returns one ``Actuation`` per thing it did:

- a changed desire (or the first one after start, which re-asserts it): find
  the rule by exact comment (none or several: ``failed``, nothing written),
  read it, and if it differs ``set =disabled=`` then read it back; ``applied``
  when the read-back matches, ``already`` when it already did, ``failed``
  (error names the WAN and the rule comment) after ``verify_retries`` extra
  rounds or on a router error, retried with capped exponential backoff;
- every ``drift_check_s``, and right after every reconnect (the router may
  have rebooted and reverted the rule), a read; a rule changed behind our
  back is re-asserted and reported as ``applied``.

The rule is looked up by comment on every apply and check, so ids are always
current after a reconnect or a reboot; a ``no such item`` between the lookup
and the ``set`` makes it look up again.  With ``dry_run`` the router is only
read: every result is ``dry_run`` with the state read back in ``observed``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from routeros.link import Backoff, RouterLink, RouterTrap, RouterUnreachable
from proto.config import Config, Wan
from proto.messages import DEGRADED, GOOD, Actuation

log = logging.getLogger("wanctl.actuator")

MANGLE = "/ip/firewall/mangle"


class RuleError(Exception):
    """The WAN's rule cannot be identified or did not take the new state."""


def observed_state(disabled: bool) -> str:
    return GOOD if disabled else DEGRADED


@dataclass
class RuleDrive:
    """What the actuator keeps for one WAN."""

    wan: Wan
    backoff: Backoff
    desired: str | None = None
    decision_seq: int = 0
    pending: bool = False  # the desire is not yet confirmed on the router
    due: float = math.inf  # when to (re)try the pending desire
    next_check: float = math.inf  # when to look for drift
    rule_id: str | None = None
    observed: str | None = None
    reported_observed: str | None = None  # dry run: what the last result showed


class Actuator:
    def __init__(self, cfg: Config, password: str | None, *, epoch: int, dry_run: bool, clock=time.monotonic):
        self.cfg = cfg
        self.epoch = epoch
        self.dry_run = dry_run
        self.clock = clock
        self.seq = 0
        self.link = RouterLink(cfg, password, clock=clock, role="actuator-noop" if dry_run else "actuator")
        r = cfg.router
        self.wans = {w.name: RuleDrive(wan=w, backoff=Backoff(r.backoff_initial_s, r.backoff_max_s))
                     for w in cfg.wans}
        self._generation = 0
        self._counters = {"wants": 0, "changes": 0, "applied": 0, "already": 0, "dry_run": 0, "failed": 0,
                          "writes": 0, "verify_retries": 0, "drift": 0, "rule_missing": 0, "rule_duplicate": 0,
                          "rule_id_changes": 0, "unknown_wan": 0, "invalid_desired": 0, "internal_errors": 0}

    @property
    def counters(self) -> dict[str, int]:
        link = self.link.counters
        return {**self._counters, "reconnects": max(0, link["connects"] - 1), **link}

    # --- input -------------------------------------------------------------------

    def want(self, wan: str, desired: str, decision_seq: int) -> None:
        drive = self.wans.get(wan)
        if drive is None:
            self._counters["unknown_wan"] += 1
            return
        if desired not in (GOOD, DEGRADED):
            self._counters["invalid_desired"] += 1
            log.error("%s: desired state must be GOOD or DEGRADED, got %r; ignored", wan, desired)
            return
        self._counters["wants"] += 1
        drive.decision_seq = decision_seq
        if desired == drive.desired:
            return
        self._counters["changes"] += 1
        drive.desired = desired
        drive.pending = True
        drive.due = self.clock()
        drive.backoff.reset()

    def next_due(self) -> float:
        times = [d.due if d.pending else d.next_check for d in self.wans.values() if d.desired is not None]
        return min(times, default=self.clock() + self.cfg.actuator.drift_check_s)

    # --- doing -------------------------------------------------------------------

    def step(self, now: float) -> list[Actuation]:
        results: list[Actuation] = []
        try:
            for drive in self.wans.values():
                if drive.desired is None:
                    continue
                if drive.pending and now >= drive.due:
                    results.append(self._apply(drive, now))
                elif not drive.pending and now >= drive.next_check:
                    result = self._check(drive, now)
                    if result is not None:
                        results.append(result)
                # A new connection may be to a rebooted router: look at every rule now.
                if self.link.generation != self._generation:
                    self._generation = self.link.generation
                    for other in self.wans.values():
                        if other is not drive and not other.pending:
                            other.next_check = min(other.next_check, now)
        except Exception:
            self._counters["internal_errors"] += 1
            log.exception("actuator step failed")
        return results

    def close(self) -> None:
        self.link.close()

    def _result(self, drive: RuleDrive, result: str, error: str | None = None) -> Actuation:
        self.seq += 1
        self._counters[result] += 1
        return Actuation(wan=drive.wan.name, seq=self.seq, desired=drive.desired or GOOD, observed=drive.observed,
                         result=result, error=error, decision_seq=drive.decision_seq, source="actuator",
                         epoch=self.epoch)

    def _connect(self, now: float) -> None:
        if not self.link.ensure(now):
            raise RouterUnreachable(self.link.last_error or f"not connected to {self.link.where}")

    def _apply(self, drive: RuleDrive, now: float) -> Actuation:
        wan, comment = drive.wan.name, drive.wan.rule_comment
        try:
            self._connect(now)
            rule_id, disabled = self._find(drive)
            drive.observed = observed_state(disabled)
            if self.dry_run:
                result = "dry_run"
                drive.reported_observed = drive.observed
            elif drive.observed == drive.desired:
                result = "already"
            else:
                self._write(drive, rule_id)
                result = "applied"
                log.info("%s: mangle rule %r %s (steering %s, decision %d)", wan, comment,
                         "enabled" if drive.desired == DEGRADED else "disabled",
                         "on" if drive.desired == DEGRADED else "off", drive.decision_seq)
        except (RuleError, RouterTrap, RouterUnreachable) as error:
            if isinstance(error, RouterUnreachable):
                drive.observed = None
            if self.dry_run:
                # Nothing to retry: a dry run never writes.  Say why nothing could be read.
                drive.pending = False
                drive.next_check = now + self.cfg.actuator.drift_check_s
                drive.reported_observed = drive.observed
                return self._result(drive, "dry_run", self._error_text(drive, error))
            delay = drive.backoff.next()
            drive.due = now + delay
            text = self._error_text(drive, error)
            log.error("%s; retrying in %.1f s", text, delay)
            return self._result(drive, "failed", text)
        drive.pending = False
        drive.backoff.reset()
        drive.next_check = now + self.cfg.actuator.drift_check_s
        return self._result(drive, result)

    def _error_text(self, drive: RuleDrive, error: Exception) -> str:
        wan, comment = drive.wan.name, drive.wan.rule_comment
        if isinstance(error, RuleError):
            return str(error)
        if isinstance(error, RouterTrap):
            return f"{wan}: router refused a command on mangle rule {comment!r}: {error}"
        return f"{wan}: cannot reach the router for mangle rule {comment!r}: {error}"

    def _check(self, drive: RuleDrive, now: float) -> Actuation | None:
        """Look for drift; re-assert (or report, in a dry run) when the rule changed behind our back."""
        try:
            self._connect(now)
            _, disabled = self._find(drive)
        except RouterUnreachable:
            # Nothing to report: the link retries with its own backoff, and a
            # reconnect brings every check forward.
            drive.next_check = max(self.link.next_attempt, now + self.link.backoff.initial)
            return None
        except (RuleError, RouterTrap):
            drive.pending = True
            drive.due = now
            return self._apply(drive, now)
        drive.observed = observed_state(disabled)
        drive.next_check = now + self.cfg.actuator.drift_check_s
        if drive.observed == drive.desired:
            return None
        if self.dry_run:
            if drive.observed == drive.reported_observed:
                return None
            drive.reported_observed = drive.observed
            return self._result(drive, "dry_run")
        self._counters["drift"] += 1
        log.warning("%s: mangle rule %r is %s but the desired state is %s: changed behind our back, re-asserting",
                    drive.wan.name, drive.wan.rule_comment,
                    "enabled" if drive.observed == DEGRADED else "disabled", drive.desired)
        drive.pending = True
        drive.due = now
        return self._apply(drive, now)

    def _find(self, drive: RuleDrive) -> tuple[str, bool]:
        """The id and ``disabled`` of the one rule with the WAN's comment; RuleError if not exactly one."""
        wan, comment = drive.wan.name, drive.wan.rule_comment
        if not comment:
            raise RuleError(f"{wan}: no rule_comment configured (wans[].rule_comment); nothing written")
        rows = self.link.run(f"{MANGLE}/print", "=.proplist=.id,comment,disabled", f"?=comment={comment}")
        if not rows:
            self._counters["rule_missing"] += 1
            raise RuleError(f"{wan}: no mangle rule with comment {comment!r} in {MANGLE}; nothing written")
        if len(rows) > 1:
            self._counters["rule_duplicate"] += 1
            ids = ", ".join(str(r.get(".id")) for r in rows)
            raise RuleError(f"{wan}: {len(rows)} mangle rules have the comment {comment!r} ({ids}); "
                            "refusing to guess, nothing written")
        row = rows[0]
        rule_id, disabled = str(row.get(".id")), row.get("disabled")
        if not isinstance(disabled, bool):
            raise RuleError(f"{wan}: mangle rule {comment!r} ({rule_id}) has no readable disabled flag: {disabled!r}")
        if drive.rule_id is not None and drive.rule_id != rule_id:
            self._counters["rule_id_changes"] += 1
            log.info("%s: mangle rule %r is now %s (was %s)", wan, comment, rule_id, drive.rule_id)
        drive.rule_id = rule_id
        return rule_id, disabled

    def _write(self, drive: RuleDrive, rule_id: str) -> None:
        """``set`` the rule and read it back, up to 1 + verify_retries rounds."""
        want_disabled = drive.desired == GOOD
        rounds = 1 + self.cfg.actuator.verify_retries
        for attempt in range(rounds):
            if attempt:
                self._counters["verify_retries"] += 1
                time.sleep(self.cfg.actuator.verify_delay_s)
            try:
                self._counters["writes"] += 1
                self.link.run(f"{MANGLE}/set", f"=.id={rule_id}", f"=disabled={'yes' if want_disabled else 'no'}")
            except RouterTrap as error:
                if "no such item" not in str(error):
                    raise
                # Renumbered between the lookup and the set (a reboot): look it up again.
                rule_id, _ = self._find(drive)
                continue
            rule_id, disabled = self._find(drive)
            drive.observed = observed_state(disabled)
            if disabled == want_disabled:
                return
        state = "disabled" if drive.observed == GOOD else "enabled"
        raise RuleError(f"{drive.wan.name}: mangle rule {drive.wan.rule_comment!r} still {state} after "
                        f"{rounds} set and read-back rounds; desired {drive.desired}")
