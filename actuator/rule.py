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
  verify rounds are scheduled ``verify_delay_s`` apart on the core's clock
  (``next_due``), never slept inside the core;
- each WAN is handled on its own: one WAN failing never delays or aborts
  another; a failure is logged once when it starts and once when it ends;
- every ``drift_check_s``, and right after every reconnect (the router may
  have rebooted and reverted the rule), a read; a rule changed behind our
  back is re-asserted and reported as ``applied``.

The rule is looked up by comment on every apply and check, so ids are always
current after a reconnect or a reboot; a ``no such item`` between the lookup
and the ``set`` makes it look up again.  A WAN in dry run (the no-op actuator,
``actuator.dry_run``, or its own ``wans[].dry_run``) is only read: every result
is ``dry_run`` with the state read back in ``observed``.

The lease (``actuator.lease_s`` > 0): while a live WAN's desired state is
``DEGRADED``, its address-list entry ``wanctl-lease-<wan>`` is renewed (set
``timeout=`` again, or added when missing) before the rule is enabled and then
every ``lease_s / 3``; the steering rule requires that list, so a router no
actuator talks to stops steering new connections within ``lease_s``.
``release(deadline)`` disables every live WAN's rule (a clean stop with
``actuator.on_stop: release``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

from routeros.link import Backoff, RouterLink, RouterTrap, RouterUnreachable, clip
from routeros.names import ADDRESS_LIST, MANGLE, lease_list, routeros_time
from proto.config import Config, Wan
from proto.messages import DEGRADED, GOOD, Actuation

log = logging.getLogger("wanctl.actuator")

class RuleError(Exception):
    """The WAN's rule cannot be identified or did not take the new state."""


def observed_state(disabled: bool) -> str:
    return GOOD if disabled else DEGRADED


@dataclass
class RuleDrive:
    """What the actuator keeps for one WAN."""

    wan: Wan
    backoff: Backoff
    dry_run: bool = False  # this WAN's rule is only read
    desired: str | None = None
    decision_seq: int = 0
    pending: bool = False  # the desire is not yet confirmed on the router
    due: float = math.inf  # when to (re)try the pending desire
    next_check: float = math.inf  # when to look for drift
    rule_id: str | None = None
    observed: str | None = None
    reported_observed: str | None = None  # dry run: what the last result showed
    rounds: int = 0  # set + read-back rounds of the pending desire so far
    renumbered: int = 0  # "no such item" answers to a set in a row
    failure: str | None = None  # the current failure, logged once when it starts
    lease_due: float = math.inf  # when to renew the lease (live and steering only)
    lease_failure: str | None = None  # the current lease failure, logged once when it starts


class Actuator:
    def __init__(self, cfg: Config, password: str | None, *, epoch: int, dry_run: bool, clock=time.monotonic):
        self.cfg = cfg
        self.epoch = epoch
        self.dry_run = dry_run  # the no-op actuator: every WAN in dry run, whatever the config says
        self.clock = clock
        self.seq = 0
        self.link = RouterLink(cfg, password, clock=clock, role="actuator-noop" if dry_run else "actuator")
        r = cfg.router
        self.wans = {w.name: RuleDrive(wan=w, backoff=Backoff(r.backoff_initial_s, r.backoff_max_s),
                                       dry_run=dry_run or (cfg.actuator.dry_run if w.dry_run is None else w.dry_run))
                     for w in cfg.wans}
        self.lease_s = cfg.actuator.lease_s
        self._generation = 0
        self._counters = {"wants": 0, "changes": 0, "applied": 0, "already": 0, "dry_run": 0, "failed": 0,
                          "writes": 0, "verify_retries": 0, "drift": 0, "rule_missing": 0, "rule_duplicate": 0,
                          "rule_id_changes": 0, "rule_foreign": 0, "unknown_wan": 0, "invalid_desired": 0, "internal_errors": 0,
                          "lease_renewals": 0, "lease_adds": 0, "lease_failures": 0, "released": 0,
                          "release_failures": 0}

    @property
    def counters(self) -> dict[str, int]:
        link = self.link.counters
        live = sum(1 for d in self.wans.values() if not d.dry_run)
        return {**self._counters, "reconnects": max(0, link["connects"] - 1), **link,
                "wans_live": live, "wans_dry_run": len(self.wans) - live}

    def modes(self) -> dict[str, str]:
        """Each WAN's mode: ``live`` (its rule is written) or ``dry_run`` (only read)."""
        return {name: "dry_run" if d.dry_run else "live" for name, d in self.wans.items()}

    def _leasing(self, drive: RuleDrive) -> bool:
        return self.lease_s > 0 and not drive.dry_run and drive.desired == DEGRADED and bool(drive.wan.rule_comment)

    # --- input -------------------------------------------------------------------

    def want(self, wan: str, desired: str, decision_seq: int) -> None:
        drive = self.wans.get(wan)
        if drive is None:
            self._counters["unknown_wan"] += 1
            return
        if desired not in (GOOD, DEGRADED):
            self._counters["invalid_desired"] += 1
            if self._counters["invalid_desired"] in (1, 10, 100, 1000) or self._counters["invalid_desired"] % 10000 == 0:
                log.error("%s: desired state must be GOOD or DEGRADED, got %r; ignored (%d so far)", clip(wan, 40),
                          clip(desired, 40), self._counters["invalid_desired"])
            return
        self._counters["wants"] += 1
        drive.decision_seq = decision_seq
        if desired == drive.desired:
            return
        self._counters["changes"] += 1
        drive.desired = desired
        drive.pending = True
        drive.due = self.clock()
        drive.rounds = 0
        drive.backoff.reset()
        if desired != DEGRADED:
            drive.lease_due = math.inf  # left to expire: the rule is being disabled anyway

    def next_due(self) -> float:
        times = [d.due if d.pending else d.next_check for d in self.wans.values() if d.desired is not None]
        times += [d.lease_due for d in self.wans.values() if self._leasing(d)]
        return min(times, default=self.clock() + self.cfg.actuator.drift_check_s)

    # --- doing -------------------------------------------------------------------

    def step(self, now: float) -> list[Actuation]:
        """Do what is due at ``now``; ``next_due()`` says when to call again.  Each WAN is handled on
        its own: one failing (or raising) never delays or aborts another."""
        results: list[Actuation] = []
        for drive in self.wans.values():
            if drive.desired is None:
                continue
            try:
                result = None
                if drive.pending and now >= drive.due:
                    result = self._apply(drive, now)
                elif not drive.pending and now >= drive.next_check:
                    result = self._check(drive, now)
                if result is not None:
                    results.append(result)
                if self._leasing(drive) and not drive.pending and now >= drive.lease_due:
                    self._keep_lease(drive, now)
            except Exception:
                self._counters["internal_errors"] += 1
                log.exception("%s: actuator step failed", drive.wan.name)
                drive.due = now + drive.backoff.next()
            # A new connection may be to a rebooted router: look at every rule now.
            if self.link.generation != self._generation:
                self._generation = self.link.generation
                for other in self.wans.values():
                    if other is not drive and not other.pending:
                        other.next_check = min(other.next_check, now)
        return results

    def conditions(self) -> dict[str, str]:
        """Every condition -> reason: the router link (unreachable), and every WAN whose rule or lease
        cannot be driven for another reason (``rule_conditions``)."""
        return {**self.link.conditions(), **self.rule_conditions(dry_run=False), **self.rule_conditions(dry_run=True)}

    def rule_conditions(self, dry_run: bool) -> dict[str, str]:
        """Every WAN (live ones, or those in dry run) whose rule or lease cannot be driven, for a reason
        other than an unreachable router."""
        out = {}
        unreachable = bool(self.link.conditions())
        for drive in self.wans.values():
            if drive.dry_run != dry_run:
                continue
            if drive.failure is not None and not (unreachable and drive.observed is None):
                out[f"{drive.wan.name}_rule"] = drive.failure
            if drive.lease_failure is not None and not unreachable:
                out[f"{drive.wan.name}_lease"] = drive.lease_failure
        return out

    # --- the lease and the release ------------------------------------------------

    def _keep_lease(self, drive: RuleDrive, now: float) -> None:
        """Renew the WAN's lease; on failure try again soon (the entry outlives a few failures)."""
        try:
            self._connect(now)
            self._renew_lease(drive, now)
        except RouterUnreachable:
            drive.lease_due = max(self.link.next_attempt, now + self.link.backoff.initial)
        except RouterTrap as error:
            self._counters["lease_failures"] += 1
            text = (f"{drive.wan.name}: router refused the lease {lease_list(drive.wan.name)!r} in {ADDRESS_LIST}: "
                    f"{clip(error)}; steering stops when the entry expires")
            if text != drive.lease_failure:
                log.error("%s", text)
            drive.lease_failure = text
            drive.lease_due = now + max(0.2, self.lease_s / 10)

    def _renew_lease(self, drive: RuleDrive, now: float) -> None:
        """Set the entry's ``timeout=lease_s`` again, or add it when it is missing (expired, or a reboot)."""
        name, timeout = lease_list(drive.wan.name), routeros_time(self.lease_s)
        address = self.cfg.actuator.lease_address
        rows = self.link.run(f"{ADDRESS_LIST}/print", "=.proplist=.id,list,address", f"?=list={name}")
        mine = [r for r in rows if r.get("list") == name and _same_network(r.get("address"), address)
                and isinstance(r.get(".id"), str)]
        renewed = False
        if mine:
            try:
                self.link.run(f"{ADDRESS_LIST}/set", f"=.id={mine[0]['.id']}", f"=timeout={timeout}")
                renewed = True
                self._counters["lease_renewals"] += 1
            except RouterTrap as error:
                if "no such item" not in str(error):  # expired between the print and the set: add it
                    raise
        if not renewed:
            self.link.run(f"{ADDRESS_LIST}/add", f"=list={name}", f"=address={address}", f"=timeout={timeout}",
                          "=comment=wanctl lease: steering stops when this entry expires")
            self._counters["lease_adds"] += 1
        if drive.lease_failure is not None:
            log.info("%s: lease %r renewed again", drive.wan.name, name)
        drive.lease_failure = None
        drive.lease_due = now + self.lease_s / 3

    def release(self, deadline: float) -> int:
        """Disable every live WAN's rule before ``deadline`` (this core's clock); how many were disabled.

        A WAN whose rule cannot be reached in time is logged: its lease (if any) ends its steering."""
        released = 0
        for drive in self.wans.values():
            if drive.dry_run or not drive.wan.rule_comment:
                continue
            wan, comment = drive.wan.name, drive.wan.rule_comment
            try:
                if not self.link.ensure(deadline=deadline):
                    raise RouterUnreachable(self.link.last_error or f"not connected to {self.link.where}")
                rule_id, disabled = self._find(drive, deadline)
                if disabled:
                    continue
                self.link.run(f"{MANGLE}/set", f"=.id={rule_id}", "=disabled=yes", deadline=deadline)
                _, disabled = self._find(drive, deadline)
                if not disabled:
                    raise RuleError(f"{wan}: mangle rule {comment!r} still enabled after the release")
            except (RuleError, RouterTrap, RouterUnreachable) as error:
                self._counters["release_failures"] += 1
                lease = f"; the router ends it within lease_s ({self.lease_s:g} s)" if self.lease_s else ""
                log.error("%s: cannot release mangle rule %r on stop: %s%s", wan, comment, clip(error), lease)
                continue
            drive.observed = GOOD
            released += 1
            self._counters["released"] += 1
            log.info("%s: mangle rule %r disabled on stop (steering off; actuator.on_stop: release)", wan, comment)
        return released

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

    def _fail(self, drive: RuleDrive, now: float, error: Exception) -> Actuation:
        """A failed attempt: retried after the WAN's backoff (and the link's), logged once per condition."""
        if isinstance(error, RouterUnreachable):
            drive.observed = None
        drive.rounds = 0
        text = self._error_text(drive, error)
        if drive.dry_run:
            # Nothing to retry: a dry run never writes.  Say why nothing could be read.
            drive.pending = False
            drive.next_check = now + self.cfg.actuator.drift_check_s
            drive.reported_observed = drive.observed
            return self._result(drive, "dry_run", text)
        delay = drive.backoff.next()
        drive.due = max(now + delay, self.link.next_attempt if not self.link.connected else now)
        if text != drive.failure:
            log.error("%s; retrying with backoff (%.1f s now, up to %.1f s)", text, delay, drive.backoff.maximum)
        drive.failure = text
        return self._result(drive, "failed", text)

    def _succeed(self, drive: RuleDrive, now: float, result: str) -> Actuation:
        if drive.failure is not None:
            log.info("%s: mangle rule %r can be driven again", drive.wan.name, clip(drive.wan.rule_comment))
        drive.failure = None
        drive.pending = False
        drive.rounds = 0
        drive.backoff.reset()
        drive.next_check = now + self.cfg.actuator.drift_check_s
        return self._result(drive, result)

    def _apply(self, drive: RuleDrive, now: float) -> Actuation | None:
        """One attempt at the pending desire: a result, or None when a verify round is scheduled."""
        wan, comment = drive.wan.name, drive.wan.rule_comment
        try:
            self._connect(now)
            if self._leasing(drive):
                self._renew_lease(drive, now)  # the rule requires the lease: renew it before enabling
            rule_id, disabled = self._find(drive)
            drive.observed = observed_state(disabled)
            if drive.dry_run:
                drive.reported_observed = drive.observed
                return self._succeed(drive, now, "dry_run")
            if drive.observed == drive.desired:
                return self._succeed(drive, now, "applied" if drive.rounds else "already")
            rounds = 1 + self.cfg.actuator.verify_retries
            if drive.rounds >= rounds:
                state = "disabled" if drive.observed == GOOD else "enabled"
                raise RuleError(f"{wan}: mangle rule {comment!r} still {state} after {rounds} set and read-back "
                                f"rounds; desired {drive.desired}")
            if drive.rounds:
                self._counters["verify_retries"] += 1
            drive.rounds += 1
            while not self._write(drive, rule_id):
                rule_id, _ = self._find(drive)  # renumbered between the lookup and the set (a reboot)
            _, disabled = self._find(drive)
            drive.observed = observed_state(disabled)
            if drive.observed != drive.desired:
                if drive.rounds >= rounds:
                    state = "disabled" if drive.observed == GOOD else "enabled"
                    raise RuleError(f"{wan}: mangle rule {comment!r} still {state} after {rounds} set and "
                                    f"read-back rounds; desired {drive.desired}")
                drive.due = now + self.cfg.actuator.verify_delay_s  # verify again on the clock, no sleep
                return None
            log.info("%s: mangle rule %r %s (steering %s, decision %d)", wan, comment,
                     "enabled" if drive.desired == DEGRADED else "disabled",
                     "on" if drive.desired == DEGRADED else "off", drive.decision_seq)
            return self._succeed(drive, now, "applied")
        except (RuleError, RouterTrap, RouterUnreachable) as error:
            return self._fail(drive, now, error)

    def _error_text(self, drive: RuleDrive, error: Exception) -> str:
        wan, comment = drive.wan.name, clip(drive.wan.rule_comment)
        if isinstance(error, RuleError):
            return clip(error, 400)
        if isinstance(error, RouterTrap):
            return f"{wan}: router refused a command on mangle rule {comment!r}: {clip(error)}"
        return f"{wan}: cannot reach the router for mangle rule {comment!r}: {clip(error)}"

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
            drive.rounds = 0
            return self._apply(drive, now)
        drive.observed = observed_state(disabled)
        drive.next_check = now + self.cfg.actuator.drift_check_s
        if drive.observed == drive.desired:
            return None
        if drive.dry_run:
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
        drive.rounds = 0
        return self._apply(drive, now)

    def _find(self, drive: RuleDrive, deadline: float | None = None) -> tuple[str, bool]:
        """The id and ``disabled`` of the one rule with exactly the WAN's comment; RuleError if not exactly one."""
        wan, comment = drive.wan.name, drive.wan.rule_comment
        if not comment:
            raise RuleError(f"{wan}: no rule_comment configured (wans[].rule_comment); nothing written")
        rows = self.link.run(f"{MANGLE}/print", "=.proplist=.id,comment,disabled", f"?=comment={comment}",
                             deadline=deadline)
        foreign = [r for r in rows if r.get("comment") != comment]
        rows = [r for r in rows if r.get("comment") == comment]
        if foreign:
            self._counters["rule_foreign"] += len(foreign)
        if not rows:
            self._counters["rule_missing"] += 1
            extra = f" (the router answered {len(foreign)} rule(s) with other comments)" if foreign else ""
            raise RuleError(f"{wan}: no mangle rule with comment {comment!r} in {MANGLE}{extra}; nothing written")
        if len(rows) > 1:
            self._counters["rule_duplicate"] += 1
            ids = ", ".join(clip(r.get(".id"), 20) for r in rows[:10])
            raise RuleError(f"{wan}: {len(rows)} mangle rules have the comment {comment!r} ({ids}); "
                            "refusing to guess, nothing written")
        row = rows[0]
        rule_id, disabled = row.get(".id"), row.get("disabled")
        if not isinstance(rule_id, str) or not re.fullmatch(r"\*[0-9A-Fa-f]{1,16}", rule_id):
            raise RuleError(f"{wan}: mangle rule {comment!r} has no usable id: {clip(rule_id, 40)!r}; nothing written")
        if not isinstance(disabled, bool):
            raise RuleError(f"{wan}: mangle rule {comment!r} ({rule_id}) has no readable disabled flag: "
                            f"{clip(disabled, 40)!r}")
        if drive.rule_id is not None and drive.rule_id != rule_id:
            self._counters["rule_id_changes"] += 1
            log.info("%s: mangle rule %r is now %s (was %s)", wan, comment, rule_id, drive.rule_id)
        drive.rule_id = rule_id
        return rule_id, disabled

    def _write(self, drive: RuleDrive, rule_id: str) -> bool:
        """``set`` the rule; False when the id went away meanwhile (look it up again)."""
        want_disabled = drive.desired == GOOD
        self._counters["writes"] += 1
        try:
            self.link.run(f"{MANGLE}/set", f"=.id={rule_id}", f"=disabled={'yes' if want_disabled else 'no'}")
        except RouterTrap as error:
            if "no such item" not in str(error) or drive.renumbered >= 3:
                raise
            drive.renumbered += 1
            return False
        drive.renumbered = 0
        return True


def _same_network(have: object, want: str) -> bool:
    """Whether an address-list entry's address (RouterOS prints ``10.0.0.1`` for ``10.0.0.1/32``) is ours."""
    import ipaddress

    if not isinstance(have, str):
        return False
    try:
        return ipaddress.ip_network(have, strict=False) == ipaddress.ip_network(want, strict=False)
    except ValueError:
        return have == want
