"""The RouterOS API server: sessions, login, replies, and faults on demand.

Protocol behaviour reproduced (RouterOS API manual):

- every command is answered, the last reply being ``!done``; a failed command
  gets ``!trap`` (``=message=``, sometimes ``=category=``) and then ``!done``;
- ``/login =name= =password=`` (RouterOS >= 6.43); bad credentials give
  ``!trap =message=invalid user name or password (6)`` then ``!done``, and the
  session stays open; any other command before login gets ``!fatal not logged in``;
- ``!fatal <reason>`` is sent before the router closes a session (``/quit``,
  a fault), never followed by anything;
- an empty print answers ``!empty`` then ``!done`` on RouterOS >= 7.18,
  just ``!done`` before (``empty_reply``);
- ``.tag=x`` in a command is echoed on every reply to it; commands run
  concurrently, and ``/cancel =tag=x`` interrupts one (its reply is
  ``!trap =category=2 =message=interrupted`` then ``!done``);
- ``/ping`` streams one ``!re`` per probe, paced in real time.

Faults (methods of ``SimServer``, also driven by scenario events): cut the
next reply in the middle and close (``cut_next_reply``), stop answering
(``stall``), refuse logins (``refuse_logins``), refuse connections
(``refuse_connections``), drop every session (``drop_sessions``),
``!fatal`` every session (``fatal``), counter reset and reboot.

Hostile modes (``hostile(mode, on)``, or scenario events ``hostile_<mode>``),
a router that answers what the protocol does not expect:
``empty_sentence`` (every reply is an empty sentence), ``bare_fatal_login``
(``!fatal`` with no reason at login), ``trap_numeric`` (every command traps
with ``=message=<digits>``), ``trap_extra`` (traps carry an extra attribute),
``trap_set`` (every ``set`` traps), ``slow_endless`` (prints answer one
``!re`` every 0.5 s and never ``!done``), ``fast_endless`` (the same as fast
as the socket takes it), ``huge_attribute`` (every row gains a 1 MB
attribute), ``ping_digits`` (``/ping`` times of 400 digits), ``negative_queue``
(``queued-packets=-5``), ``huge_counter`` (``dropped`` of 10^400),
``foreign_row`` (a queue print answers another queue's row first).
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time

from sim.router import PingPlan, Router, Trap
from sim.wire import WireError, encode_sentence, format_duration, read_sentence

log = logging.getLogger("sim")

LOGIN_FAILED = "invalid user name or password (6)"
HOSTILE = ("empty_sentence", "bare_fatal_login", "trap_numeric", "trap_extra", "trap_set", "slow_endless",
           "fast_endless", "huge_attribute", "ping_digits", "negative_queue", "huge_counter", "foreign_row")


def _words(row: dict[str, str]) -> list[str]:
    return [f"={k}={v}" for k, v in row.items()]


class Session:
    """One API connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.logged_in = False
        self.closed = False
        self.running: dict[asyncio.Task, str | None] = {}  # command task -> its .tag
        self.cancelled: set[asyncio.Task] = set()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def abort(self) -> None:
        """Close the socket at once (as when the router goes away)."""
        self.closed = True
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()


class SimServer:
    """The asyncio RouterOS API server in front of a ``Router``.

    Use it from a running event loop: ``await start()``, ``await stop()``.
    ``sim.testing.SimRouter`` runs one in a background thread for tests.
    """

    def __init__(self, router: Router, *, host: str = "127.0.0.1", port: int = 8728, username: str = "admin",
                 password: str = "admin", ssl_context: ssl.SSLContext | None = None,
                 empty_reply: bool | None = None, ping_delay_scale: float = 1.0):
        self.router = router
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.ssl_context = ssl_context
        self.empty_reply = router.scenario.empty_reply if empty_reply is None else empty_reply
        self.ping_delay_scale = ping_delay_scale
        self.sessions: set[Session] = set()
        self.stats = {"connections": 0, "logins": 0, "login_failures": 0, "commands": 0, "traps": 0,
                      "replies_cut": 0, "fatals": 0}
        self._server: asyncio.base_events.Server | None = None
        self._timeline_task: asyncio.Task | None = None
        self._stall_until = 0.0
        self._cut: list[str | None] = []
        self._refuse_logins = False
        self._refusing = False
        self._restore_handles: list[asyncio.TimerHandle] = []
        self.hostile_modes: set[str] = set()

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        await self._listen()
        if self.router.scenario.events:
            self._timeline_task = asyncio.get_running_loop().create_task(self._timeline())

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self.ssl_context,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._timeline_task:
            self._timeline_task.cancel()
        for handle in self._restore_handles:
            handle.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop_sessions()
        await asyncio.sleep(0)

    # --- faults ----------------------------------------------------------------

    def stall(self, seconds: float) -> None:
        """Answer nothing for ``seconds`` (``math.inf``: until ``stall(0)``); commands still queue up."""
        self._stall_until = time.monotonic() + seconds if seconds > 0 else 0.0
        log.info("fault: stall %s", "ended" if seconds <= 0 else f"for {seconds:g} s")

    def hostile(self, mode: str, on: bool = True) -> None:
        """Switch a hostile mode (see the module doc) on or off."""
        if mode not in HOSTILE:
            raise ValueError(f"unknown hostile mode {mode!r}")
        (self.hostile_modes.add if on else self.hostile_modes.discard)(mode)
        log.info("fault: hostile %s %s", mode, "on" if on else "off")

    def cut_next_reply(self, command: str | None = None) -> None:
        """The next reply (to ``command``, or to anything) is sent half-way, then the socket closes."""
        self._cut.append(command)
        log.info("fault: the next reply%s will be cut", f" to {command}" if command else "")

    def refuse_logins(self, on: bool = True) -> None:
        """Answer every /login with the invalid-credentials trap while on."""
        self._refuse_logins = on
        log.info("fault: logins %s", "refused" if on else "accepted again")

    async def refuse_connections(self, on: bool = True) -> None:
        """Stop listening (clients get ECONNREFUSED) or listen again on the same port."""
        if on and not self._refusing:
            self._refusing = True
            if self._server is not None:
                self._server.close()
                self._server = None
            log.info("fault: refusing connections on port %d", self.port)
        elif not on and self._refusing:
            await self._listen()
            self._refusing = False
            log.info("fault over: accepting connections on port %d", self.port)

    def drop_sessions(self) -> None:
        """Close every session without a word (a link or power failure)."""
        for session in list(self.sessions):
            session.abort()

    def fatal(self, reason: str = "session terminated on request") -> None:
        """Send ``!fatal <reason>`` to every session and close it."""
        for session in list(self.sessions):
            self._send_fatal(session, reason)

    async def outage(self, seconds: float) -> None:
        """The API is unreachable for ``seconds``: sessions dropped, connections refused."""
        await self.refuse_connections(True)
        self.drop_sessions()
        self._later(seconds, lambda: self.refuse_connections(False))

    async def reboot(self, downtime_s: float = 1.0) -> None:
        """Reboot: sessions dropped, down for ``downtime_s``, then new ids, zeroed counters, rules as saved."""
        log.info("fault: reboot (down %g s)", downtime_s)
        await self.refuse_connections(True)
        self.drop_sessions()
        self.router.reboot()
        self._later(downtime_s, lambda: self.refuse_connections(False))

    def _later(self, seconds: float, make_coro) -> None:
        """Run the coroutine ``make_coro()`` makes after ``seconds`` (cancelled by ``stop``)."""
        loop = asyncio.get_running_loop()

        def run() -> None:
            loop.create_task(make_coro())

        if seconds <= 0:
            run()
        else:
            self._restore_handles.append(loop.call_later(seconds, run))

    async def fault(self, name: str, duration_s: float = 0.0, wan: str | None = None) -> None:
        """Apply a fault by its scenario name."""
        if name == "counter_reset":
            log.info("fault: counter reset%s", f" on {wan}" if wan else "")
            self.router.reset_counters(wan)
        elif name == "reboot":
            await self.reboot(duration_s or 1.0)
        elif name == "outage":
            log.info("fault: API outage for %g s", duration_s)
            await self.outage(duration_s)
        elif name == "stall":
            self.stall(duration_s or math.inf)
        elif name == "close_mid_reply":
            self.cut_next_reply()
        elif name == "fatal":
            log.info("fault: !fatal to every session")
            self.fatal()
        elif name == "refuse_login":
            self.refuse_logins(True)
            if duration_s:
                loop = asyncio.get_running_loop()
                self._restore_handles.append(loop.call_later(duration_s, self.refuse_logins, False))
        elif name.startswith("hostile_") and name[8:] in HOSTILE:
            self.hostile(name[8:], True)
            if duration_s:
                loop = asyncio.get_running_loop()
                self._restore_handles.append(loop.call_later(duration_s, self.hostile, name[8:], False))
        else:
            raise ValueError(f"unknown fault {name!r}")

    async def _timeline(self) -> None:
        scenario = self.router.scenario
        fired: set[tuple[int, int]] = set()
        while True:
            elapsed = self.router.elapsed()
            round_ = int(elapsed // scenario.period) if scenario.loop else 0
            t = scenario.scenario_time(elapsed)
            for i, event in enumerate(scenario.events):
                if (round_, i) not in fired and t >= event.at_s:
                    fired.add((round_, i))
                    try:
                        await self.fault(event.fault, event.duration_s, event.wan)
                    except Exception:  # a fault must never stop the simulator
                        log.exception("scenario event %s failed", event.fault)
            fired = {key for key in fired if key[0] >= round_}
            await asyncio.sleep(0.05)

    # --- sessions --------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(reader, writer)
        self.sessions.add(session)
        self.stats["connections"] += 1
        log.debug("session from %s", session.peer)
        try:
            while not session.closed:
                try:
                    words = await read_sentence(reader)
                except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
                    break
                except WireError as error:
                    self._send_fatal(session, str(error))
                    break
                if words:
                    self._dispatch(session, words)
        finally:
            session.closed = True
            for task in list(session.running):
                task.cancel()
            self.sessions.discard(session)
            transport = writer.transport
            if transport is not None and not transport.is_closing():
                writer.close()

    def _dispatch(self, session: Session, words: list[str]) -> None:
        command, attrs, queries, tag = words[0], {}, [], None
        for word in words[1:]:
            if word.startswith("="):
                key, _, value = word[1:].partition("=")
                attrs[key] = value
            elif word.startswith("?"):
                queries.append(word)
            elif word.startswith(".tag="):
                tag = word[len(".tag="):]
        self.stats["commands"] += 1
        if command == "/login":
            self._spawn(session, self._login(session, attrs, tag), tag)
        elif not session.logged_in:
            self._send_fatal(session, "not logged in")
        elif command == "/quit":
            self._send_fatal(session, "session terminated on request")
        elif command == "/cancel":
            self._spawn(session, self._cancel(session, attrs.get("tag"), tag), tag)
        else:
            self._spawn(session, self._run(session, command, attrs, queries, tag), tag)

    def _spawn(self, session: Session, coro, tag: str | None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        session.running[task] = tag
        task.add_done_callback(lambda t: session.running.pop(t, None))

    def _send_fatal(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        self.stats["fatals"] += 1
        session.writer.write(encode_sentence(["!fatal", reason]))
        session.closed = True
        session.writer.close()

    async def _send(self, session: Session, command: str, tag: str | None, sentences: list[list[str]]) -> None:
        while (wait := self._stall_until - time.monotonic()) > 0:
            await asyncio.sleep(min(wait, 0.05))
        if session.closed:
            return
        suffix = [f".tag={tag}"] if tag is not None else []
        data = b"".join(encode_sentence(s + suffix) for s in sentences)
        for i, wanted in enumerate(self._cut):
            if wanted is None or command == wanted:
                del self._cut[i]
                self.stats["replies_cut"] += 1
                session.writer.write(data[: max(1, len(data) // 2)])
                await asyncio.sleep(0.01)
                session.abort()
                return
        session.writer.write(data)
        try:
            await session.writer.drain()
        except (ConnectionError, OSError):
            session.abort()

    async def _trap(self, session: Session, command: str, tag: str | None, trap: Trap) -> None:
        self.stats["traps"] += 1
        words = ["!trap"] + ([f"=category={trap.category}"] if trap.category is not None else [])
        await self._send(session, command, tag, [words + [f"=message={trap.message}"], ["!done"]])

    async def _login(self, session: Session, attrs: dict[str, str], tag: str | None) -> None:
        if "bare_fatal_login" in self.hostile_modes:
            self.stats["fatals"] += 1
            session.writer.write(encode_sentence(["!fatal"]))
            session.closed = True
            session.writer.close()
            return
        if await self._hostile_reply(session, "/login", tag):
            return
        if "name" not in attrs:
            await self._trap(session, "/login", tag, Trap("missing value(s) of argument(s) name", 1))
            return
        if self._refuse_logins or attrs.get("name") != self.username or attrs.get("password") != self.password:
            self.stats["login_failures"] += 1
            log.info("login refused for %r from %s", attrs.get("name"), session.peer)
            await self._trap(session, "/login", tag, Trap(LOGIN_FAILED))
            return
        session.logged_in = True
        self.stats["logins"] += 1
        await self._send(session, "/login", tag, [["!done"]])

    async def _cancel(self, session: Session, target: str | None, tag: str | None) -> None:
        me = asyncio.current_task()
        for task, task_tag in list(session.running.items()):
            if task is not me and (target is None or task_tag == target):
                session.cancelled.add(task)
                task.cancel()
        await self._send(session, "/cancel", tag, [["!done"]])

    async def _hostile_reply(self, session: Session, command: str, tag: str | None) -> bool:
        """Answer as a hostile mode says; False when no mode applies to this command."""
        modes = self.hostile_modes
        suffix = [f".tag={tag}"] if tag is not None else []
        if "empty_sentence" in modes:
            session.writer.write(b"\x00")
            return True
        if "trap_numeric" in modes or ("trap_set" in modes and command.endswith("/set")):
            self.stats["traps"] += 1
            message = "12345" if "trap_numeric" in modes else "failure: rule is locked"
            extra = ["=extra=1"] if "trap_extra" in modes else []
            await self._send(session, command, tag, [["!trap", f"=message={message}", *extra], ["!done"]])
            return True
        if "trap_extra" in modes:
            self.stats["traps"] += 1
            await self._send(session, command, tag, [["!trap", "=message=odd", "=category=1", "=extra=yes"], ["!done"]])
            return True
        if command.endswith("/print") and ("slow_endless" in modes or "fast_endless" in modes):
            pause = 0.5 if "slow_endless" in modes else 0.0
            n = 0
            while not session.closed:
                session.writer.write(encode_sentence(["!re", f"=.id=*{n:X}", f"=name=endless-{n}"] + suffix))
                n += 1
                try:
                    await session.writer.drain()
                except (ConnectionError, OSError):
                    session.abort()
                    return True
                await asyncio.sleep(pause)
            return True
        return False

    def _hostile_rows(self, command: str, rows: list[dict[str, str]]) -> list[dict[str, str]]:
        modes = self.hostile_modes
        if not modes:
            return rows
        rows = [dict(r) for r in rows]
        for row in rows:
            if "negative_queue" in modes and "queued-packets" in row:
                row["queued-packets"] = "-5"
            if "huge_counter" in modes and "dropped" in row:
                row["dropped"] = "1" + "0" * 400
            if "huge_attribute" in modes:
                row["comment"] = "x" * (1 << 20)
        if "foreign_row" in modes and command == "/queue/tree/print":
            rows.insert(0, {".id": "*FF", "name": "someone-elses-queue", "dropped": "7", "queued-packets": "999",
                            "queued-bytes": "999000", "max-limit": "10M"})
        return rows

    async def _run(self, session: Session, command: str, attrs: dict[str, str], queries: list[str],
                   tag: str | None) -> None:
        try:
            if await self._hostile_reply(session, command, tag):
                return
            if command == "/ping":
                await self._ping(session, self.router.ping_plan(attrs), tag)
                return
            rows, done = self.router.execute(command, attrs, queries)
            rows = self._hostile_rows(command, rows)
            if "count-only" in attrs and rows:
                rows, done = [], rows[0]
            sentences = [["!re", *_words(row)] for row in rows]
            if not rows and not done and command.endswith(("/print", "/getall")) and self.empty_reply:
                sentences.append(["!empty"])
            sentences.append(["!done", *_words(done)])
            await self._send(session, command, tag, sentences)
        except Trap as trap:
            await self._trap(session, command, tag, trap)
        except asyncio.CancelledError:
            if asyncio.current_task() in session.cancelled and not session.closed:
                await self._trap(session, command, tag, Trap("interrupted", 2))
            else:
                raise

    async def _ping(self, session: Session, plan: PingPlan, tag: str | None) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        scale = self.ping_delay_scale
        sent = received = 0
        rtts: list[float] = []
        seq = 0
        while plan.count is None or seq < plan.count:
            await asyncio.sleep(max(0.0, start + seq * plan.interval * scale - loop.time()))
            rtt = plan.traffic.probe(self.router.elapsed())
            if plan.lost:
                rtt = None
            sent += 1
            row: dict[str, str] = {"seq": str(seq), "host": plan.address}
            if rtt is not None and rtt / 1000.0 < plan.interval:
                await asyncio.sleep(rtt / 1000.0 * scale)
                received += 1
                rtts.append(rtt)
                time_text = "9" * 400 if "ping_digits" in self.hostile_modes else format_duration(rtt / 1000.0)
                row.update({"size": str(plan.size), "ttl": str(plan.ttl), "time": time_text})
            else:
                await asyncio.sleep(plan.interval * scale)
                row["status"] = "timeout"
            row.update({"sent": str(sent), "received": str(received),
                        "packet-loss": str(100 * (sent - received) // sent)})
            if rtts:
                row.update({"min-rtt": format_duration(min(rtts) / 1000.0),
                            "avg-rtt": format_duration(sum(rtts) / len(rtts) / 1000.0),
                            "max-rtt": format_duration(max(rtts) / 1000.0)})
            await self._send(session, "/ping", tag, [["!re", *_words(row)]])
            seq += 1
        await self._send(session, "/ping", tag, [["!done"]])
