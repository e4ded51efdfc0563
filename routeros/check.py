"""``wanctl-check``: connect with the config and verify everything the pipeline needs from the router.

One line per check, ``ok`` or ``FAIL`` with the reason; exit 0 when every
check passed, 1 when one failed, 2 on a bad config.  The checks:

- ``login``: the API answers and accepts ``router.username``;
- per WAN ``queue``: exactly one ``/queue/tree`` entry named ``wans[].queue``,
  with a ``max-limit`` (or ``wans[].rate_mbps``), of a ``kind=cake`` type;
- per WAN ``rule``: exactly one mangle rule with the exact ``rule_comment``,
  and with a lease (``actuator.lease_s`` > 0) it requires
  ``src-address-list=wanctl-lease-<wan>``;
- per WAN ``ping``: ``/ping`` through the WAN's routing table (or interface)
  gets at least one reply from each target;
- per WAN ``lease``: the account may write the lease list (an entry for the
  documentation address 192.0.2.1 with a 5 s timeout is added and removed at
  once); skipped with ``--read-only``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import typer

from proto.config import Config, ConfigError, Wan, config_or_exit, require_wans, router_password
from routeros.link import RouterLink, RouterTrap, RouterUnreachable, clip
from routeros.names import ADDRESS_LIST, MANGLE, lease_list
from runtime import cli

PROBE_ADDRESS = "192.0.2.1"  # TEST-NET-1: never a LAN host, so the probe entry steers nothing


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _one(rows: list[dict], key: str, value: str) -> list[dict]:
    return [r for r in rows if r.get(key) == value]


def check_queue(link: RouterLink, wan: Wan) -> Check:
    name = f"{wan.name} queue"
    rows = _one(link.run("/queue/tree/print", f"?=name={wan.queue}"), "name", wan.queue)
    if len(rows) != 1:
        return Check(name, False, f"{len(rows)} /queue/tree entries named {wan.queue!r}, need exactly one")
    row = rows[0]
    limit = str(row.get("max-limit", "0"))
    if limit in ("", "0") and wan.rate_mbps is None:
        return Check(name, False, f"{wan.queue!r} has no max-limit (set one, or wans[].rate_mbps)")
    kind = ""
    qtype = row.get("queue")
    if isinstance(qtype, str):
        types = _one(link.run("/queue/type/print", f"?=name={qtype}"), "name", qtype)
        kind = str(types[0].get("kind", "")) if types else ""
    if kind != "cake":
        return Check(name, False, f"{wan.queue!r} uses queue type {clip(qtype, 60)!r} of kind {kind or '?'!r}, "
                                  "not cake")
    return Check(name, True, f"{wan.queue!r} found, max-limit {limit}, queue type {qtype!r} (cake)")


def check_rule(link: RouterLink, cfg: Config, wan: Wan) -> Check:
    name = f"{wan.name} rule"
    comment = wan.rule_comment
    rows = _one(link.run(f"{MANGLE}/print", f"?=comment={comment}"), "comment", comment)
    if len(rows) != 1:
        ids = ", ".join(clip(r.get(".id"), 20) for r in rows[:10])
        return Check(name, False, f"{len(rows)} mangle rules have the comment {comment!r}"
                                  f"{f' ({ids})' if ids else ''}, need exactly one")
    row = rows[0]
    state = "enabled (steering on)" if row.get("disabled") is False else "disabled (steering off)"
    if cfg.actuator.lease_s > 0 and row.get("src-address-list") != lease_list(wan.name):
        return Check(name, False, f"mangle rule {comment!r} does not require src-address-list="
                                  f"{lease_list(wan.name)} (actuator.lease_s is {cfg.actuator.lease_s:g}): the lease "
                                  "could not stop it; add the matcher, or set actuator.lease_s: 0")
    return Check(name, True, f"one mangle rule {comment!r} ({row.get('.id')}, {row.get('action', '?')}), {state}")


def check_ping(link: RouterLink, cfg: Config, wan: Wan) -> Check:
    via = ([f"=routing-table={wan.ping_routing_table}"] if wan.ping_routing_table else
           [f"=interface={wan.ping_interface}"] if wan.ping_interface else [])
    where = (f"routing table {wan.ping_routing_table}" if wan.ping_routing_table else
             f"interface {wan.ping_interface}" if wan.ping_interface else "the main table (not pinned to the WAN: "
             "set wans[].ping_routing_table or ping_interface)")
    name = f"{wan.name} ping"
    answered = []
    for target in wan.ping_targets or [wan.ping_target]:
        try:
            rows = link.run("/ping", f"=address={target}", "=count=3", "=interval=0.2", *via,
                            timeout=cfg.router.timeout_s + 1.0)
        except RouterTrap as error:
            return Check(name, False, f"/ping {target} through {where} refused: {clip(error)}")
        if not any(r.get("time") or r.get("received") for r in rows if r.get("status") != "timeout"):
            return Check(name, False, f"no reply from {target} through {where} (3 probes)")
        answered.append(target)
    return Check(name, True, f"{', '.join(answered)} answered through {where}")


def check_lease(link: RouterLink, wan: Wan) -> Check:
    name = f"{wan.name} lease"
    listed = lease_list(wan.name)
    try:
        reply = link.run(f"{ADDRESS_LIST}/add", f"=list={listed}", f"=address={PROBE_ADDRESS}", "=timeout=5s",
                         "=comment=wanctl-check write probe")
    except RouterTrap as error:
        return Check(name, False, f"cannot add to the address list {listed!r}: {clip(error)} (the API group needs "
                                  "the write policy)")
    ret = next((r.get("ret") for r in reply if "ret" in r), None)
    if isinstance(ret, str):
        try:
            link.run(f"{ADDRESS_LIST}/remove", f"=.id={ret}")
        except RouterTrap:
            pass  # expires in 5 s anyway
    return Check(name, True, f"address list {listed!r} is writable (probe entry added and removed)")


def run_checks(cfg: Config, *, read_only: bool = False, out=None) -> list[Check]:
    """Every check, each printed to ``out`` (a file) as it completes."""
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        if out is not None:
            print(check.line(), file=out, flush=True)

    try:
        password = router_password(cfg)
    except ConfigError as error:
        report(Check("login", False, f"no router password: {'; '.join(error.problems)}"))
        return checks
    link = RouterLink(cfg, password, role="wanctl-check")
    link.backoff.initial = link.backoff.maximum = 0.0  # one attempt per check; no waiting between
    try:
        if not link.ensure():
            report(Check("login", False, link.last_error or "cannot connect"))
            return checks
        report(Check("login", True, f"{link.where} as {cfg.router.username!r}"))
        for wan in cfg.wans:
            steps = [("queue", lambda w=wan: check_queue(link, w)), ("ping", lambda w=wan: check_ping(link, cfg, w))]
            if wan.rule_comment:
                steps.insert(1, ("rule", lambda w=wan: check_rule(link, cfg, w)))
                if cfg.actuator.lease_s > 0 and not read_only:
                    steps.append(("lease", lambda w=wan: check_lease(link, w)))
            else:
                report(Check(f"{wan.name} rule", True, "no rule_comment: this WAN is never steered"))
            for what, step in steps:
                try:
                    if not link.ensure():
                        raise RouterUnreachable(link.last_error or "not connected")
                    report(step())
                except RouterTrap as error:
                    report(Check(f"{wan.name} {what}", False, f"router refused: {clip(error)}"))
                except RouterUnreachable as error:
                    report(Check(f"{wan.name} {what}", False, f"router unreachable: {clip(error)}"))
    finally:
        link.close()
    return checks


app = cli.app()


@app.command(cls=cli.Command, help="Connect to the router with the config and verify what the pipeline needs: login, each WAN's "
                  "CAKE queue with max-limit, exactly one mangle rule per rule_comment (requiring its lease list), "
                  "/ping through each WAN's routing table, and that the lease list is writable.  One line per "
                  "check (ok or FAIL and why); exits 1 if any check failed, 2 on a bad config.")
def command(config: str = cli.config_option("wanctl.yaml"),
            version: bool = cli.version_option(),
            read_only: bool = typer.Option(False, "--read-only",
                                           help="skip the lease write probe: nothing is written to the router")
            ) -> None:
    cfg = config_or_exit("wanctl-check", config, check=lambda c: require_wans(c, "router check"))
    checks = run_checks(cfg, read_only=read_only, out=sys.stdout)
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} ok, {len(failed)} failed", flush=True)
    raise SystemExit(1 if failed else 0)


def main(argv: Optional[list[str]] = None) -> None:
    app(argv)


if __name__ == "__main__":
    main()
