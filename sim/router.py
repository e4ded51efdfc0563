"""The simulated router's configuration and state, and the commands that read and change it.

Pure state and logic: no sockets.  ``sim.server`` parses sentences and calls
``Router.execute`` (or ``Router.ping_plan`` for the long-running ``/ping``);
tests reach the same object through ``sim.testing.SimRouter``.

Menus, as RouterOS 7 prints them through the API:

- ``/queue/tree``: one CAKE entry per scenario WAN with cumulative ``bytes``,
  ``packets``, ``dropped`` and instantaneous ``queued-packets``,
  ``queued-bytes``, ``rate``, ``packet-rate``, plus one non-CAKE entry;
- ``/queue/type``: a ``kind=cake`` type per WAN;
- ``/ip/firewall/mangle``: the layout ``wanctl-routeros-setup`` generates: a
  classifier rule (``mark-connection`` of new EF connections as
  ``wanctl-latency``), then per WAN that has a ``rule_comment`` its steering
  rule (``mark-connection`` of new latency-sensitive connections from
  ``src-address-list=wanctl-lease-<wan>``, ``disabled`` printed as
  ``true``/``false``) and an always-on ``mark-routing`` rule by that
  connection mark to the alternate WAN's table;
- ``/ip/firewall/address-list``: entries with an optional ``timeout``, which
  expire on the router's clock (printed as the time left, ``dynamic=true``)
  and are lost in a reboot, as RouterOS does with dynamic entries;
- ``/routing/table`` (``main`` and one ``fib`` table per WAN not on main) and
  ``/ip/route`` (a default route per table);
- ``/system/resource``, ``/system/identity``.

``steering_active(comment)`` says whether a steering rule would mark anything
now: enabled, and every address list it requires holds a live entry.

Item ids look like ``*1A``; a reboot renumbers every item.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass

from sim.scenario import Scenario, Traffic, WanScenario
from sim.wire import format_duration


class Trap(Exception):
    """A command failed: the server answers ``!trap =message=...`` (then ``!done``)."""

    def __init__(self, message: str, category: int | None = None):
        super().__init__(message)
        self.message = message
        self.category = category


BOOLS = {"yes": True, "true": True, "no": False, "false": False}

# Properties the router computes; ``set`` refuses them.
READ_ONLY = {".id", "bytes", "packets", "dropped", "queued-packets", "queued-bytes", "rate", "packet-rate",
             "invalid", "dynamic", "kind"}

# Properties computed at print time from the traffic model.
LIVE = {"bytes", "packets", "dropped", "queued-packets", "queued-bytes", "rate", "packet-rate"}

ADDRESS_LIST = "/ip/firewall/address-list"
# Menus that take ``add``, with the properties that identify an entry.
ADDABLE = {ADDRESS_LIST: ("list", "address"), "/routing/table": ("name",),
           "/ip/route": ("dst-address", "gateway", "routing-table")}
MENUS = ("/queue/tree", "/queue/type", "/ip/firewall/mangle", *ADDABLE)

PING_ARGS = {"address", "count", "interval", "size", "ttl", "interface", "routing-table", "src-address",
             "do-not-fragment", "dscp", "arp-ping", "vrf"}


def parse_interval(text: str) -> float:
    """A RouterOS time value given as an argument: ``0.2``, ``200ms``, ``1s500ms``, ``00:00:01``."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if ":" in text:
        h, m, s = (text.split(":") + ["0", "0"])[:3]
        return int(h) * 3600 + int(m) * 60 + float(s)
    total, pos = 0.0, 0
    scale = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    for match in re.finditer(r"(\d+(?:\.\d+)?)(ms|us|w|d|h|m|s)", text):
        if match.start() != pos:
            raise ValueError(text)
        total += float(match[1]) * scale[match[2]]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def _query_key(word: str) -> str | None:
    """The property a query word reads (``?=name=x`` -> ``name``); None for ``?#`` operations."""
    body = word[1:]
    if body.startswith("#"):
        return None
    body = body.lstrip("=<>-")
    return body.partition("=")[0]


def _count(value: float) -> int:
    """A cumulative counter: whole events so far (the epsilon absorbs float summation error)."""
    return int(math.floor(value + 1e-6))


def _same(have: str, want: str) -> bool:
    if have == want:
        return True
    if have in BOOLS and want in BOOLS:
        return BOOLS[have] == BOOLS[want]
    return False


_SI = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}


def _number(text: str) -> float | None:
    """``1500``, ``100M``, ``2.5k`` as numbers (RouterOS rates and sizes); None otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMG]?)", text)
    return float(match[1]) * _SI[match[2]] if match else None


def _compare(have: str, want: str) -> int:
    a, b = _number(have), _number(want)
    if a is None or b is None:
        a, b = have, want  # type: ignore[assignment]
    return (a > b) - (a < b)


def query_matches(item: dict[str, str], queries: list[str]) -> bool:
    """Evaluate API query words against one item (RouterOS API manual, "Queries").

    The stack starts with an unlimited supply of ``true``; an item matches when
    no ``false`` is left on it.  ``?name``, ``?-name``, ``?name=x`` / ``?=name=x``,
    ``?<name=x``, ``?>name=x`` push; ``?#ops`` applies ``!``, ``&``, ``|``,
    ``.`` (duplicate the top) and ``N`` (push a copy of the value N from the top).
    """
    stack: list[bool] = []

    def pop() -> bool:
        return stack.pop() if stack else True

    for word in queries:
        body = word[1:]
        if body.startswith("#"):
            ops, i = body[1:], 0
            while i < len(ops):
                ch = ops[i]
                if ch.isdigit():
                    j = i
                    while j < len(ops) and ops[j].isdigit():
                        j += 1
                    index = int(ops[i:j])
                    stack.append(stack[-1 - index] if index < len(stack) else True)
                    i = j + 1 if j < len(ops) and ops[j] == "." else j
                    continue
                if ch == "!":
                    stack.append(not pop())
                elif ch == "&":
                    b, a = pop(), pop()
                    stack.append(a and b)
                elif ch == "|":
                    b, a = pop(), pop()
                    stack.append(a or b)
                elif ch == ".":
                    top = pop()
                    stack += [top, top]
                else:
                    raise Trap(f"unknown query operation {ch!r} in {word}")
                i += 1
        elif body.startswith("-"):
            stack.append(body[1:] not in item)
        elif body[:1] in ("=", "<", ">"):
            name, sep, value = body[1:].partition("=")
            have = item.get(name)
            if body[0] == "=":
                stack.append(_same(have if have is not None else "", value))
            else:
                sign = 1 if body[0] == ">" else -1
                stack.append(have is not None and _compare(have, value) == sign)
        elif "=" in body:
            name, _, value = body.partition("=")
            have = item.get(name)
            stack.append(_same(have if have is not None else "", value))
        else:
            stack.append(body in item)
    return all(stack)


@dataclass
class PingPlan:
    """What one ``/ping`` will do; the server paces it in real time."""

    traffic: Traffic
    address: str
    count: int | None  # None: until cancelled
    interval: float
    size: int
    ttl: int = 57
    lost: bool = False  # the target does not answer


class Router:
    """The simulated RouterOS 7 box: menus, ids, counters, reboots.

    ``clock`` is the router's notion of time (monotonic seconds); tests may pass
    a fake clock they advance by hand so that counters are exact.
    """

    def __init__(self, scenario: Scenario, *, clock=time.monotonic, seed: int | None = None, bare: bool = False):
        self.scenario = scenario
        self.clock = clock
        self.started = clock()
        self.booted = self.started
        self.rng = random.Random(scenario.seed if seed is None else seed)
        self.traffic = {w.name: Traffic(w, scenario, self.rng) for w in scenario.wans}
        self.reboots = 0
        self._next_id = 1
        self.menus: dict[str, list[dict[str, str]]] = {}
        # Every command that changed something: (command, attributes).  Tests
        # use it to prove that a dry-run actuator never writes.
        self.writes: list[tuple[str, dict[str, str]]] = []
        self.commands = 0
        self.lost_targets: set[str] = set()  # ping addresses whose probes are all lost
        # bare: only the queues, as a router before ``wanctl-routeros-setup``'s script (no routing
        # tables but main, no routes, no mangle rules).
        self.bare = bare
        self._build()

    # --- ids and items -------------------------------------------------------

    def _new_id(self) -> str:
        n = self._next_id
        self._next_id += 1
        return f"*{n:X}"

    def _add(self, path: str, props: dict[str, str]) -> dict[str, str]:
        item = {".id": self._new_id(), **props}
        self.menus.setdefault(path, []).append(item)
        return item

    def _build(self) -> None:
        wans = self.scenario.wans
        for wan in wans:
            self._add("/queue/type", {"name": f"{wan.name}-cake", "kind": "cake", "cake-diffserv": "diffserv4",
                                      "cake-flowmode": "triple-isolate", "cake-nat": "true"})
        self._add("/queue/type", {"name": "default-small", "kind": "pfifo", "pfifo-limit": "10"})
        for wan in wans:
            self._add("/queue/tree", {
                "name": wan.queue, "parent": wan.interface, "packet-mark": "", "limit-at": "0",
                "queue": f"{wan.name}-cake", "priority": "8", "max-limit": wan.max_limit, "burst-limit": "0",
                "burst-threshold": "0", "burst-time": "0s", "bucket-size": "0.1", "invalid": "false",
                "disabled": "false", "_wan": wan.name})
        self._add("/queue/tree", {
            "name": "guest-limit", "parent": "bridge", "packet-mark": "guest", "limit-at": "0",
            "queue": "default-small", "priority": "8", "max-limit": "10M", "burst-limit": "0",
            "burst-threshold": "0", "burst-time": "0s", "bucket-size": "0.1", "invalid": "false",
            "disabled": "false"})
        self._add("/routing/table", {"name": "main", "fib": "true", "dynamic": "true", "disabled": "false"})
        if self.bare:
            return
        for wan in wans:
            if wan.routing_table != "main" and not any(t["name"] == wan.routing_table
                                                       for t in self.items("/routing/table")):
                self._add("/routing/table", {"name": wan.routing_table, "fib": "true", "dynamic": "false",
                                             "disabled": "false"})
            self._add("/ip/route", {"dst-address": "0.0.0.0/0", "gateway": wan.interface,
                                    "routing-table": wan.routing_table, "disabled": "false"})
        self._add("/ip/firewall/mangle", {
            "chain": "prerouting", "action": "mark-connection", "new-connection-mark": "wanctl-latency",
            "passthrough": "true", "connection-state": "new", "in-interface-list": "LAN", "dscp": "46",
            "invalid": "false", "dynamic": "false", "disabled": "false",
            "comment": "wanctl: latency-sensitive: DSCP EF", "_saved_disabled": "false"})
        for wan in wans:
            if not wan.rule_comment:
                continue
            others = [w for w in wans if w.name != wan.name]
            table = others[0].routing_table if others else "to-alternate"
            disabled = "true" if wan.rule_disabled else "false"
            self._add("/ip/firewall/mangle", {
                "chain": "prerouting", "action": "mark-connection", "new-connection-mark": f"wanctl-steer-{wan.name}",
                "passthrough": "true", "connection-mark": "wanctl-latency", "connection-state": "new",
                "in-interface-list": "LAN", "src-address-list": f"wanctl-lease-{wan.name}", "invalid": "false",
                "dynamic": "false", "disabled": disabled, "comment": wan.rule_comment, "_saved_disabled": disabled})
            self._add("/ip/firewall/mangle", {
                "chain": "prerouting", "action": "mark-routing", "new-routing-mark": table, "passthrough": "false",
                "connection-mark": f"wanctl-steer-{wan.name}", "in-interface-list": "LAN", "invalid": "false",
                "dynamic": "false", "disabled": "false", "comment": f"wanctl: route steered {wan.name}",
                "_saved_disabled": "false"})

    def items(self, path: str) -> list[dict[str, str]]:
        return self.menus.get(path, [])

    def find(self, path: str, ref: str) -> dict[str, str]:
        """The item of ``path`` an id (``*1A``) or a name refers to; a trap if none."""
        for item in self.items(path):
            if ref.startswith("*"):
                if item[".id"].upper() == ref.upper():
                    return item
            elif item.get("name") == ref:
                return item
        raise Trap("no such item")

    def rules(self, comment: str) -> list[dict[str, str]]:
        return [r for r in self.items("/ip/firewall/mangle") if r.get("comment") == comment]

    def expire(self) -> None:
        """Drop the address-list entries whose timeout has run out (RouterOS does it on its own clock)."""
        now = self.clock()
        menu = self.menus.get(ADDRESS_LIST)
        if menu:
            menu[:] = [e for e in menu if "_expires" not in e or float(e["_expires"]) > now]

    def address_list(self, name: str) -> list[dict[str, str]]:
        """The live entries of one address list."""
        self.expire()
        return [e for e in self.items(ADDRESS_LIST) if e.get("list") == name]

    def steering_active(self, comment: str) -> bool:
        """Whether the rule with this comment would mark new connections now: it is enabled and the
        address list it requires (``src-address-list``) holds an enabled, unexpired entry."""
        rules = self.rules(comment)
        if len(rules) != 1 or rules[0].get("disabled") != "false":
            return False
        needed = rules[0].get("src-address-list")
        return not needed or any(e.get("disabled") != "true" for e in self.address_list(needed))

    def wan_of_queue(self, item: dict[str, str]) -> Traffic | None:
        name = item.get("_wan")
        return self.traffic.get(name) if name else None

    # --- time ------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds of scenario play so far."""
        return self.clock() - self.started

    # --- faults and state changes a test or a scenario event makes --------------

    def reset_counters(self, wan: str | None = None) -> None:
        for name, traffic in self.traffic.items():
            if wan is None or name == wan:
                traffic.advance(self.elapsed())
                traffic.reset()

    def reboot(self) -> None:
        """New ids for everything, counters zeroed, mangle rules back to their saved state."""
        self.reboots += 1
        self._next_id = 0x100 * (self.reboots + 1) + 1
        # Entries with a timeout are dynamic: a reboot loses them.
        self.menus[ADDRESS_LIST] = [e for e in self.items(ADDRESS_LIST) if "_expires" not in e]
        for items in self.menus.values():
            for item in items:
                item[".id"] = self._new_id()
                if "_saved_disabled" in item:
                    item["disabled"] = item["_saved_disabled"]
        elapsed = self.elapsed()
        for traffic in self.traffic.values():
            traffic.advance(elapsed)
            traffic.reset()
        self.booted = self.clock()

    # --- commands ------------------------------------------------------------

    def _dynamic(self, path: str, item: dict[str, str]) -> dict[str, str]:
        """The item as printed now: hidden keys dropped, live counters filled in."""
        out = {k: v for k, v in item.items() if not k.startswith("_")}
        if path == "/queue/tree":
            traffic = self.wan_of_queue(item)
            if traffic is None:
                out.update({"rate": "0", "packet-rate": "0", "queued-packets": "0", "queued-bytes": "0",
                            "bytes": "0", "packets": "0", "dropped": "0"})
            else:
                elapsed = self.elapsed()
                traffic.advance(elapsed)
                c = traffic.now(elapsed)
                queued = traffic.queued(elapsed)
                pb = traffic.wan.packet_bytes
                out.update({
                    "rate": str(int(c.rate_pps * pb * 8)), "packet-rate": str(int(c.rate_pps)),
                    "queued-packets": str(queued), "queued-bytes": str(queued * pb),
                    "bytes": str(_count(traffic.bytes)), "packets": str(_count(traffic.packets)),
                    "dropped": str(_count(traffic.dropped))})
            # RouterOS prints counters after the configuration properties.
            for key in ("invalid", "disabled", "comment"):
                if key in out:
                    out[key] = out.pop(key)
        elif path == ADDRESS_LIST:
            if "_expires" in item:
                left = max(0.0, float(item["_expires"]) - self.clock())
                out["timeout"] = format_duration(math.ceil(left))
                out["dynamic"] = "true"
            else:
                out["dynamic"] = "false"
            for key in ("dynamic", "disabled", "comment"):
                if key in out:
                    out[key] = out.pop(key)
        elif path == "/ip/firewall/mangle":
            out.setdefault("bytes", "0")
            out.setdefault("packets", "0")
            for key in ("invalid", "dynamic", "disabled", "comment"):
                if key in out:
                    out[key] = out.pop(key)
        return {k: v for k, v in out.items() if v != ""}

    def _system(self, path: str) -> list[dict[str, str]]:
        if path == "/system/resource":
            uptime = format_duration(math.floor(self.clock() - self.booted))
            return [{"uptime": uptime, "version": f"{self.scenario.routeros_version} (stable)",
                     "build-time": "2025-01-01 00:00:00", "free-memory": "201326592",
                     "total-memory": "268435456", "cpu": "x86", "cpu-count": "1", "cpu-load": "3",
                     "architecture-name": "x86_64", "board-name": "wanctl-sim", "platform": "MikroTik"}]
        return [{"name": "wanctl-sim"}]

    def execute(self, command: str, attrs: dict[str, str], queries: list[str]) -> tuple[list[dict[str, str]], dict[str, str]]:
        """Run one non-streaming command: (``!re`` rows, attributes of ``!done``).

        Raises ``Trap`` for anything RouterOS would refuse.
        """
        self.commands += 1
        path, _, verb = command.rpartition("/")
        if path in ("/system/resource", "/system/identity"):
            if verb != "print":
                raise Trap("no such command")
            return self._print(self._system(path), attrs, queries), {}
        if path not in MENUS:
            raise Trap("no such command prefix")
        self.expire()
        if verb in ("print", "getall"):
            items = self.items(path)
            if not any(_query_key(q) in LIVE for q in queries):
                # The query reads configuration only: filter before computing live counters.
                items = [i for i in items if query_matches({k: v for k, v in i.items() if v != ""}, queries)]
            rows = [self._dynamic(path, item) for item in items]
            return self._print(rows, attrs, queries), {}
        if verb == "set":
            self._set(path, attrs)
        elif verb in ("enable", "disable"):
            self._set(path, {**attrs, "disabled": "true" if verb == "disable" else "false"})
        elif verb == "add" and path == "/ip/firewall/mangle":
            ret = self._add_rule(attrs)
            self.writes.append((command, dict(attrs)))
            return [], {"ret": ret}
        elif verb == "add" and path in ADDABLE:
            ret = self._add_entry(path, attrs)
            self.writes.append((command, dict(attrs)))
            return [], {"ret": ret}
        elif verb == "remove" and path in (*ADDABLE, "/ip/firewall/mangle"):
            for item in self._targets(path, attrs):
                self.menus[path].remove(item)
        elif verb in ("reset-counters", "reset-counters-all") and path == "/queue/tree":
            targets = self.items(path) if verb.endswith("-all") else self._targets(path, attrs)
            for item in targets:
                traffic = self.wan_of_queue(item)
                if traffic is not None:
                    self.reset_counters(traffic.wan.name)
        else:
            raise Trap("no such command")
        self.writes.append((command, dict(attrs)))
        return [], {}

    def _print(self, rows: list[dict[str, str]], attrs: dict[str, str], queries: list[str]) -> list[dict[str, str]]:
        rows = [row for row in rows if query_matches(row, queries)]
        if "count-only" in attrs:
            return [{"ret": str(len(rows))}]
        proplist = attrs.get(".proplist")
        if proplist:
            keys = [k for k in proplist.split(",") if k]
            rows = [{k: row[k] for k in keys if k in row} for row in rows]
        return rows

    def _targets(self, path: str, attrs: dict[str, str]) -> list[dict[str, str]]:
        refs = attrs.pop(".id", None)
        if refs is None:
            refs = attrs.pop("numbers", None)
        if refs is None:
            raise Trap("missing value(s) of argument(s) numbers", category=1)
        return [self.find(path, ref) for ref in refs.split(",") if ref]

    def _set(self, path: str, attrs: dict[str, str]) -> None:
        attrs = dict(attrs)
        targets = self._targets(path, attrs)
        if path == ADDRESS_LIST and "timeout" in attrs:
            expires = self._expiry(attrs.pop("timeout"))
            for item in targets:
                item.pop("_expires", None)
                if expires is not None:
                    item["_expires"] = expires
        for key, value in attrs.items():
            if key in READ_ONLY or key.startswith("."):
                raise Trap(f"unknown parameter {key}")
            if key == "disabled" and value not in BOOLS:
                raise Trap(f"value of disabled must be yes or no, got {value}", category=1)
            if key != "comment" and not any(key in item for item in targets):
                raise Trap(f"unknown parameter {key}")
        for item in targets:
            for key, value in attrs.items():
                item[key] = ("true" if BOOLS[value] else "false") if key == "disabled" else value

    def _add_rule(self, attrs: dict[str, str]) -> str:
        if "chain" not in attrs:
            raise Trap("failure: chain not specified", category=1)
        disabled = "true" if BOOLS.get(attrs.get("disabled", "no"), False) else "false"
        props = {k: v for k, v in attrs.items() if k != "disabled" and not k.startswith(".")}
        props.setdefault("action", "accept")
        item = self._add("/ip/firewall/mangle", {**props, "invalid": "false", "dynamic": "false",
                                                 "disabled": disabled, "_saved_disabled": disabled})
        return item[".id"]

    def _expiry(self, timeout: str) -> str | None:
        """The router-clock time an entry given ``timeout=`` expires at (None: no timeout)."""
        if timeout in ("", "none-dynamic", "none-static", "0s", "0"):
            return None
        try:
            seconds = parse_interval(timeout)
        except ValueError:
            raise Trap(f"value of timeout must be a time interval, got {timeout}", category=1) from None
        return repr(self.clock() + seconds)

    def _add_entry(self, path: str, attrs: dict[str, str]) -> str:
        if path == "/ip/route":
            attrs = {"routing-table": "main", **attrs}
        required = ADDABLE[path]
        missing = [k for k in required if not attrs.get(k)]
        if missing:
            raise Trap(f"failure: {missing[0]} not specified", category=1)
        props = {k: v for k, v in attrs.items() if not k.startswith(".") and k not in ("timeout", "disabled")}
        same = [i for i in self.items(path) if all(i.get(k) == props.get(k) for k in required)]
        if same:
            raise Trap("failure: already have such entry" if path == ADDRESS_LIST
                       else "failure: entry already exists", category=1)
        if path == "/ip/route" and props.get("routing-table", "main") not in {
                t["name"] for t in self.items("/routing/table")}:
            raise Trap("input does not match any value of routing-table", category=1)
        disabled = "true" if BOOLS.get(attrs.get("disabled", "no"), False) else "false"
        item = self._add(path, {**props, "disabled": disabled})
        if path == ADDRESS_LIST:
            expires = self._expiry(attrs.get("timeout", ""))
            if expires is not None:
                item["_expires"] = expires
        return item[".id"]

    def ping_plan(self, attrs: dict[str, str]) -> PingPlan:
        """Check ``/ping`` arguments and pick the WAN the probes leave through."""
        self.commands += 1
        for key in attrs:
            if key not in PING_ARGS:
                raise Trap(f"unknown parameter {key}")
        address = attrs.get("address")
        if not address:
            raise Trap("missing value(s) of argument(s) address", category=1)
        try:
            count = int(attrs["count"]) if "count" in attrs else None
            interval = parse_interval(attrs.get("interval", "1s"))
            size = int(attrs.get("size", "56"))
        except ValueError:
            raise Trap("invalid value of count, interval or size", category=1) from None
        if count is not None and count < 1:
            raise Trap("count must be at least 1", category=1)
        if not 0.01 <= interval <= 5.0:
            raise Trap("interval must be between 10ms and 5s", category=1)
        if not self.traffic:
            raise Trap("no route to host")
        return PingPlan(traffic=self._ping_wan(attrs), address=address, count=count, interval=interval, size=size,
                        lost=address in self.lost_targets)

    def _ping_wan(self, attrs: dict[str, str]) -> Traffic:
        wans: list[WanScenario] = [t.wan for t in self.traffic.values()]
        if "interface" in attrs:
            chosen = [w for w in wans if w.interface == attrs["interface"]]
            if not chosen:
                raise Trap("input does not match any value of interface", category=1)
        elif "routing-table" in attrs:
            tables = {t["name"] for t in self.items("/routing/table") if t.get("disabled") != "true"}
            chosen = [w for w in wans if w.routing_table == attrs["routing-table"] and w.routing_table in tables]
            if not chosen:
                raise Trap("input does not match any value of routing-table", category=1)
        else:
            # Unpinned pings follow the main table: the WAN whose target it is,
            # else the one whose table is main, else the first (primary).
            chosen = ([w for w in wans if w.ping_target == attrs["address"]]
                      or [w for w in wans if w.routing_table == "main"] or wans)
        return self.traffic[chosen[0].name]
