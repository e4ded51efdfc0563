"""``wanctl-routeros-setup``: the RouterOS 7 script (``.rsc``) that prepares a router for the configured WANs.

The script is built as a list of ``SetupCommand`` (menu, verb, properties), so
the same list renders as ``.rsc`` text for ``/import`` and runs as API
sentences (``api_words``) against the simulator in the tests.  What it sets up:

- a ``fib`` routing table per WAN not on ``main`` (``wans[].ping_routing_table``,
  else ``to-<wan>``) and its default route, with a gateway placeholder;
- always-on ``mark-connection`` classifier rules: new connections from the LAN
  that are latency-sensitive (``LATENCY_SENSITIVE``: DSCP and ports) get the
  connection mark ``wanctl-latency``;
- per WAN with a ``rule_comment``, the steering rule, **disabled**, carrying
  exactly that comment: new ``wanctl-latency`` connections from a source in
  the lease list ``wanctl-lease-<wan>`` are re-marked ``wanctl-steer-<wan>``;
  and an always-on ``mark-routing`` rule that routes every packet of a
  ``wanctl-steer-<wan>`` connection by the alternate WAN's table, so a steered
  connection stays steered until it ends and a disabled steering rule moves
  no connection that is already open;
- the lease: the actuator keeps an entry with ``timeout=lease_s`` in
  ``wanctl-lease-<wan>`` while it steers; nothing static is created for it
  (a static entry would never expire);
- an API group with the policies ``read,write,api,test`` and nothing else
  (``test`` is what ``/ping`` needs), the ``router.username`` user in it
  (``wanctl`` when the config says ``admin``: the administrator is never
  moved into that group), allowed only from the wanctl host;
- ``/ip service``: ``api-ssl`` with a certificate placeholder, restricted to
  the wanctl host; plain ``api`` disabled (with ``router.tls: true``) or
  restricted to the wanctl host.

Values the operator must fill in are ``CHANGE-ME-...`` placeholders, which a
router refuses to import as they are.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Optional

import typer

from proto.config import Config, Wan, config_or_exit, require_wans
from routeros.names import lease_list
from runtime import cli

LATENCY_MARK = "wanctl-latency"
API_GROUP = "wanctl"

# The latency-sensitive match: (what, matchers).  One classifier rule each
# (RouterOS ANDs the matchers of a rule; a connection matching any rule is marked).
LATENCY_SENSITIVE: list[tuple[str, dict[str, str]]] = [
    ("DSCP EF (46): voice", {"dscp": "46"}),
    ("DSCP CS5 (40): video, gaming consoles", {"dscp": "40"}),
    ("DSCP CS4 (32): real-time interactive", {"dscp": "32"}),
    ("DSCP CS3 (24): call signalling", {"dscp": "24"}),
    ("SIP over UDP 5060-5061", {"protocol": "udp", "dst-port": "5060-5061"}),
    ("SIP over TCP/TLS 5060-5061", {"protocol": "tcp", "dst-port": "5060-5061"}),
    ("RTP media 10000-20000 (UDP)", {"protocol": "udp", "dst-port": "10000-20000"}),
    ("DNS over UDP 53", {"protocol": "udp", "dst-port": "53"}),
    ("DNS over TCP 53", {"protocol": "tcp", "dst-port": "53"}),
    ("SSH 22", {"protocol": "tcp", "dst-port": "22"}),
    ("games: Xbox Live, PlayStation Network, STUN (UDP 3074, 3478-3480)",
     {"protocol": "udp", "dst-port": "3074,3478-3480"}),
    ("games: Steam and Source engine (UDP 27000-27050)", {"protocol": "udp", "dst-port": "27000-27050"}),
]


@dataclass
class SetupCommand:
    menu: str  # the CLI menu: "/ip firewall mangle"
    verb: str  # "add" or "set"
    props: dict[str, str]
    target: str | None = None  # ``set``: the item (``api-ssl``)
    comment_lines: list[str] = field(default_factory=list)  # printed before the command

    @property
    def api_path(self) -> str:
        return "/" + "/".join(self.menu.strip("/").split())


def routing_table(wan: Wan) -> str:
    """The routing table of a WAN: its ``ping_routing_table``, else ``to-<wan>``."""
    return wan.ping_routing_table or f"to-{wan.name}"


def alternate_of(cfg: Config, wan: Wan) -> Wan | None:
    if wan.alternate is not None:
        return next(w for w in cfg.wans if w.name == wan.alternate)
    return next((w for w in cfg.wans if w.name != wan.name), None)


def placeholder(what: str) -> str:
    return "CHANGE-ME-" + re.sub(r"[^A-Za-z0-9]+", "-", what).strip("-")


def setup_commands(cfg: Config, wanctl_host: str | None = None) -> list[SetupCommand]:
    """Everything the script does, in order."""
    host = f"{wanctl_host}/32" if wanctl_host and "/" not in wanctl_host else (
        wanctl_host or placeholder("wanctl-host-address"))
    out: list[SetupCommand] = []
    first = True
    for wan in cfg.wans:
        table = routing_table(wan)
        if table == "main" or any(routing_table(w) == table for w in cfg.wans[:cfg.wans.index(wan)]):
            continue
        out.append(SetupCommand("/routing table", "add", {"name": table, "fib": "", "comment": f"wanctl: {wan.name}"},
                                comment_lines=["Routing tables: one per WAN not on main, each with its default route."]
                                if first else []))
        out.append(SetupCommand("/ip route", "add", {
            "dst-address": "0.0.0.0/0", "gateway": placeholder(f"gateway-of-{wan.name}"), "routing-table": table,
            "comment": f"wanctl: default route of {wan.name}"},
            comment_lines=[f"Fill in {wan.name}'s gateway (an address, or its interface for PPPoE/LTE)."]))
        first = False
    notes = ["Latency-sensitive connections: marked once, on their first packet (connection-state=new),",
             f"with the connection mark {LATENCY_MARK}.  Add or remove matches to suit your network."]
    for i, (what, match) in enumerate(LATENCY_SENSITIVE):
        out.append(SetupCommand("/ip firewall mangle", "add", {
            "chain": "prerouting", "in-interface-list": "LAN", "connection-state": "new",
            "connection-mark": "no-mark", **match, "action": "mark-connection",
            "new-connection-mark": LATENCY_MARK, "passthrough": "yes", "comment": f"wanctl: latency-sensitive: {what}"},
            comment_lines=notes if i == 0 else []))
    for wan in cfg.wans:
        if not wan.rule_comment:
            continue
        alternate = alternate_of(cfg, wan)
        table = routing_table(alternate) if alternate is not None else placeholder(f"table-of-the-alternate-of-{wan.name}")
        steer_mark = f"wanctl-steer-{wan.name}"
        matchers = {"chain": "prerouting", "in-interface-list": "LAN", "connection-state": "new",
                    "connection-mark": LATENCY_MARK}
        lease = []
        if cfg.actuator.lease_s > 0:
            matchers["src-address-list"] = lease_list(wan.name)
            lease = [f"It requires the lease list {lease_list(wan.name)}: the actuator keeps an entry there with",
                     f"timeout={cfg.actuator.lease_s:g}s while it steers; when no actuator renews it, the entry",
                     "expires and this rule marks nothing (the router stops steering by itself)."]
        out.append(SetupCommand("/ip firewall mangle", "add", {
            **matchers, "action": "mark-connection", "new-connection-mark": steer_mark, "passthrough": "yes",
            "disabled": "yes", "comment": wan.rule_comment},
            comment_lines=[f"{wan.name}'s steering rule: wanctl enables it (steering on) and disables it (off),",
                           "finding it by this exact comment.  Created disabled.", *lease]))
        out.append(SetupCommand("/ip firewall mangle", "add", {
            "chain": "prerouting", "in-interface-list": "LAN", "connection-mark": steer_mark,
            "action": "mark-routing", "new-routing-mark": table, "passthrough": "no",
            "comment": f"wanctl: route steered {wan.name} connections via {alternate.name if alternate else '?'}"},
            comment_lines=["Always on: every packet of a steered connection takes the alternate table, so it",
                           "stays steered until it ends."]))
    out.append(SetupCommand("/user group", "add", {
        "name": API_GROUP, "policy": "read,write,api,test", "comment": "wanctl: API only; test is for /ping"},
        comment_lines=["The API account: read (queues, rules), write (the rules and the lease), api, test (/ping)."]))
    user = cfg.router.username
    user_notes = ["Give wanctl the same password (router.password_env or router.password_file)."]
    if user == "admin":  # never demote the router's own administrator into the API-only group
        user = "wanctl"
        user_notes.append("Your config logs in as admin: set router.username: wanctl to use this account.")
    out.append(SetupCommand("/user", "add", {
        "name": user, "group": API_GROUP, "address": host,
        "password": placeholder("password"), "comment": "wanctl"}, comment_lines=user_notes))
    out.append(SetupCommand("/ip service", "set", {
        "address": host, "certificate": placeholder("certificate-name"), "disabled": "no"}, target="api-ssl",
        comment_lines=["The API over TLS (8729), from the wanctl host only.  Import or create a certificate first",
                       "(/certificate), and set router.tls: true in wanctl."]))
    if cfg.router.tls:
        out.append(SetupCommand("/ip service", "set", {"disabled": "yes"}, target="api"))
    else:
        out.append(SetupCommand("/ip service", "set", {"address": host, "disabled": "no"}, target="api",
                                comment_lines=["Plain API (8728): your config has router.tls: false.  Its password "
                                               "crosses the LAN in clear;", "prefer api-ssl and disable this one."]))
    return out


def _rsc_value(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_.,:/*!-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def render_rsc(cfg: Config, commands: list[SetupCommand], source: str) -> str:
    lines = [
        f"# wanctl: RouterOS 7 setup for {', '.join(w.name for w in cfg.wans) or 'no WAN'}, generated from {source}",
        "# by wanctl-routeros-setup.  Fill in every CHANGE-ME-... value (the router refuses to import them",
        "# as they are), review, then: /import file-name=wanctl.rsc ; and run wanctl-check --config ...",
    ]
    menu = None
    for command in commands:
        if command.comment_lines:
            lines.append("")
            lines += [f"# {line}" for line in command.comment_lines]
        if command.menu != menu:
            if not command.comment_lines:
                lines.append("")
            lines.append(command.menu)
            menu = command.menu
        words = [command.verb]
        if command.target:
            words.append(command.target)
        words += [k if v == "" else f"{k}={_rsc_value(v)}" for k, v in command.props.items()]
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def api_words(command: SetupCommand) -> list[str]:
    """The command as an API sentence (``/ip/firewall/mangle/add =chain=... ...``)."""
    words = [f"{command.api_path}/{command.verb}"]
    if command.target:
        words.append(f"=numbers={command.target}")
    words += [f"={k}={'yes' if v == '' else v}" for k, v in command.props.items()]
    return words


app = cli.app()


@app.command(cls=cli.Command, help="Print the RouterOS 7 script (.rsc) that sets up the router for the configured WANs: routing "
                  "tables, the latency-sensitive classifier and each WAN's steering rule (disabled, with its "
                  "rule_comment and lease list), the API group and user, and /ip service api-ssl.  Fill in the "
                  "CHANGE-ME values, then /import it.  Exits 2 on a bad config.")
def command(config: str = cli.config_option("wanctl.yaml"),
            version: bool = cli.version_option(),
            wanctl_host: Optional[str] = typer.Option(None, "--wanctl-host", metavar="ADDRESS",
                                                      help="address of the host wanctl runs on: the API user and "
                                                           "service accept only it [default: a placeholder]")) -> None:
    cfg = config_or_exit("wanctl-routeros-setup", config, check=lambda c: require_wans(c, "router set-up script"))
    sys.stdout.write(render_rsc(cfg, setup_commands(cfg, wanctl_host), config or "the default config"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
