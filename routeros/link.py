"""The one RouterOS API connection a stage keeps.

librouteros gives the wire format (words, sentences, the ``ApiProtocol``
writer); this module owns everything around it, because a router is an
untrusted peer:

- **One deadline for the whole reply** of a command, not a timeout per read:
  a reply that never ends (one ``!re`` every 0.5 s) ends at the deadline.
- **A bound on the size** of a reply, in sentences and in bytes, checked before
  a word is read: a fast endless stream or a 1 MB attribute ends at the bound.
- **Every failure is one counted, backed-off link error**: a timeout, a reset,
  ``!fatal`` (bare or not), an empty sentence, an odd ``!trap``, a reply over
  the bound.  The connection is discarded (part of a reply may still be in
  flight) and the next connection waits for capped exponential backoff, which
  is reset only by a command that succeeds, so a router that accepts logins
  and then fails every command cannot make a storm either.
- A ``!trap`` is the router refusing a command: the connection stays.
- Concurrent commands go out tagged (``.tag=``) on the one connection and
  can be cut at their own soft deadline with ``/cancel`` (``run_many``).
- The router's host name is resolved once, with a timeout, never on every poll.
- A stop predicate is looked at every 0.1 s of any wait, so a stage stops
  within a fraction of a second even in the middle of a command.
- librouteros logs every word it sends at DEBUG: the login password is masked
  whatever characters it holds.

``counters`` (flat, one namespace) and ``conditions()`` (failing condition ->
reason) are what a stage reports for its link.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from librouteros.protocol import ApiProtocol, decode_length, determine_length

from proto.config import Config, ConfigError, resolve_path, router_address, router_password

log = logging.getLogger("wanctl.routeros")

SLICE_S = 0.1  # longest blocking wait between looks at the stop predicate
MAX_TEXT = 200  # characters of a router-supplied value that may reach a log line or health


def clip(value: object, limit: int = MAX_TEXT) -> str:
    """``str(value)`` cut to ``limit`` characters, saying how long it was."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # a value whose str() fails is described, not raised
        text = f"<unprintable {type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} chars)"


class _RedactPassword(logging.Filter):
    """librouteros logs each word it sends as ``<--- '=password=...'``: mask everything after the key,
    whatever quotes or characters the password holds."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        if "=password=" in text:
            record.msg = text[: text.index("=password=")] + "=password=***"
            record.args = None
        return True


logging.getLogger("librouteros").addFilter(_RedactPassword())


class RouterUnreachable(Exception):
    """No usable connection: refused, timed out, closed, ``!fatal``, a malformed or oversized reply,
    a refused login, or the stage stopping."""


class RouterTrap(Exception):
    """The router refused the command (``!trap``); the connection is still good."""


class LinkStopped(RouterUnreachable):
    """The stop predicate turned true while waiting for the router."""


class _LinkFault(Exception):
    """Internal: what went wrong on the wire, with the counter it goes to."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


class Backoff:
    """Capped exponential delays: initial, 2x initial, ... up to maximum."""

    def __init__(self, initial: float, maximum: float):
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** min(self.failures, 30)))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(w|d|h|ms|us|ns|m|s)")
_SCALE = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a RouterOS duration: ``12ms345us``, ``1s3ms``, ``2h5m``, ``00:00:01.5``, ``1d02:03:04``.

    ValueError for anything else, for more than 40 characters, and for a result that is not finite.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a RouterOS duration: {text!r}")
    if isinstance(text, (int, float)):
        total = float(text)
    else:
        if len(text) > 40:
            raise ValueError(f"not a RouterOS duration: {clip(text, 40)!r}")
        total = _parse_duration_text(text.strip())
    if not (0.0 <= total < float("inf")):
        raise ValueError(f"not a plausible duration: {clip(text, 40)!r}")
    return total


def _parse_duration_text(text: str) -> float:
    total = 0.0
    clock = re.fullmatch(r"(?:(.*?)(?<=[wd]))?(\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    if clock:
        prefix = clock[1] or ""
        total = _parse_duration_text(prefix) if prefix else 0.0
        return total + int(clock[2]) * 3600 + int(clock[3]) * 60 + float(clock[4])
    pos = 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match[1]) * _SCALE[match[2]]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a RouterOS duration: {text!r}")
    return total


_BOOLS = {"yes": True, "true": True, "no": False, "false": False}


def api_value(value: str) -> int | bool | str:
    """A reply value typed as librouteros types it: a canonical int, a yes/no/true/false bool, else the text."""
    if len(value) <= 30 and value[:1] in "-0123456789" and value:
        try:
            number = int(value)
        except ValueError:
            pass
        else:
            if str(number) == value:
                return number
    return _BOOLS.get(value, value)


def resolve(host: str, timeout: float) -> str:
    """An address for ``host``: itself when it is one, else the first lookup answer within ``timeout``."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    answer: list = []

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
        except Exception as error:  # noqa: BLE001 - handed to the caller
            answer.append(error)

    worker = threading.Thread(target=lookup, name=f"resolve-{host[:32]}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not answer:
        raise OSError(f"resolving {host!r} took longer than {timeout:g} s")
    if isinstance(answer[0], BaseException):
        raise OSError(f"cannot resolve {host!r}: {answer[0]}")
    return answer[0]


class _BoundedTransport:
    """librouteros' transport contract (``read``/``write``/``close``) under a deadline, a byte budget
    and the stop predicate."""

    def __init__(self, sock: socket.socket, stop: Callable[[], bool]):
        self.sock = sock
        self.stop = stop
        self.deadline = float("inf")
        self.budget = 0
        self.received = 0

    def _left(self) -> float:
        if self.stop():
            raise LinkStopped("stopping")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _LinkFault("timeouts", "no complete reply before the deadline")
        return min(left, SLICE_S)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self.sock.settimeout(self._left())
            try:
                sent = self.sock.send(view)
            except (socket.timeout, ssl.SSLWantWriteError):
                continue
            view = view[sent:]

    def read(self, length: int) -> bytes:
        if self.received + length > self.budget:
            raise _LinkFault("oversize_replies", f"reply over the bound of {self.budget} bytes")
        data = bytearray()
        while len(data) < length:
            self.sock.settimeout(self._left())
            try:
                got = self.sock.recv(length - len(data))
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not got:
                raise _LinkFault("disconnects", "connection closed by the router")
            data += got
        self.received += length
        return bytes(data)

    def readable(self, until: float) -> bool:
        """Wait (in slices) until there is something to read or ``until``; False at ``until``."""
        while True:
            if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                return True
            left = min(self._left(), until - time.monotonic())
            if left <= 0:
                return False
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                return True

    def close(self) -> None:
        self.sock.close()


@dataclass
class Reply:
    """One command's outcome inside ``run_many``."""

    rows: list[dict] = field(default_factory=list)
    trap: str | None = None  # the router refused it
    cut: bool = False  # cancelled at its soft deadline; ``rows`` holds what came before
    done: bool = False


@dataclass
class Command:
    words: Sequence[str]  # the command word first
    soft_deadline: float = float("inf")  # /cancel it then and keep what arrived


class RouterLink:
    """A lazily made, bounded connection with backoff; see the module doc."""

    def __init__(self, cfg: Config, password: str | None, *, clock=time.monotonic, role: str = "wanctl",
                 stop: Callable[[], bool] | None = None):
        r = cfg.router
        self.host, self.port = router_address(cfg)
        self.username = r.username
        self.role = role
        self.clock = clock
        self.connect_timeout = r.connect_timeout_s
        self.timeout = r.timeout_s
        self.max_reply_bytes = r.max_reply_bytes
        self.max_reply_sentences = r.max_reply_sentences
        self.backoff = Backoff(r.backoff_initial_s, r.backoff_max_s)
        self.stop: Callable[[], bool] = stop or (lambda: False)
        self._password = password
        self._password_error: str | None = None
        if password is None:
            try:
                self._password = router_password(cfg)
            except ConfigError as error:
                self._password_error = str(error)
        self._tls = self._tls_context(cfg) if r.tls else None
        self._address: str | None = None
        self._protocol: ApiProtocol | None = None
        self._transport: _BoundedTransport | None = None
        self._tags = 0
        self.next_attempt = 0.0
        self.generation = 0  # +1 for every connection made; a new one means "re-read everything"
        self.last_error: str | None = None
        self.counters = {"connects": 0, "connect_failures": 0, "login_failures": 0, "disconnects": 0,
                         "timeouts": 0, "traps": 0, "link_errors": 0, "oversize_replies": 0,
                         "protocol_errors": 0, "commands": 0}
        # Told about every command and login: (operation, seconds, error kind or None).
        self.observer: Callable[[str, float, str | None], None] | None = None

    def _observe(self, operation: str, started: float, error: str | None) -> None:
        if self.observer is not None:
            self.observer(operation, time.monotonic() - started, error)

    def _tls_context(self, cfg: Config) -> ssl.SSLContext:
        r = cfg.router
        context = ssl.create_default_context(cafile=str(resolve_path(cfg, r.tls_ca)) if r.tls_ca else None)
        if not r.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @property
    def where(self) -> str:
        return f"{'api-ssl' if self._tls else 'api'} {self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def conditions(self) -> dict[str, str]:
        """``{"router": reason}`` while there is no usable connection after a failure."""
        if self.connected or self.last_error is None:
            return {}
        return {"router": f"router {self.where} unreachable: {self.last_error}"}

    # --- connecting -------------------------------------------------------------

    def ensure(self, now: float | None = None, deadline: float | None = None) -> bool:
        """Connected, connecting (and logging in) now if the backoff allows; False when not."""
        if self._protocol is not None:
            return True
        now = self.clock() if now is None else now
        if now < self.next_attempt:
            return False
        if self._password is None:
            self._fail(f"no router password: {self._password_error}", "connect_failures")
            return False
        started = time.monotonic()
        limit = started + self.connect_timeout
        if deadline is not None:
            limit = min(limit, started + max(0.0, deadline - self.clock()))
        try:
            self._connect(limit)
        except RouterTrap as error:
            self._observe("login", started, "refused")
            self._drop()
            self._fail(f"login as {self.username!r} refused by {self.where}: {error}", "login_failures")
            return False
        except LinkStopped:
            self._drop()
            return False
        except Exception as error:  # refused, timed out, garbage at login: all one backed-off failure
            self._observe("login", started, "unreachable")
            self._drop()
            self._fail(f"cannot connect to {self.where}: {_describe(error)}", "connect_failures")
            return False
        self._observe("login", started, None)
        self.generation += 1
        self.counters["connects"] += 1
        if self.last_error is not None or self.generation == 1:
            log.info("%s: connected to %s as %r", self.role, self.where, self.username)
        self.last_error = None
        return True

    def _connect(self, limit: float) -> None:
        if self._address is None:
            self._address = resolve(self.host, max(0.01, limit - time.monotonic()))
        family = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect_ex((self._address, self.port))
            while True:
                if self.stop():
                    raise LinkStopped("stopping")
                left = limit - time.monotonic()
                if left <= 0:
                    raise _LinkFault("timeouts", "connect timed out")
                _, ready, _ = select.select([], [sock], [], min(left, SLICE_S))
                if ready:
                    break
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            if self._tls is not None:
                sock.settimeout(max(0.01, limit - time.monotonic()))
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        transport = _BoundedTransport(sock, self.stop)
        self._transport = transport
        self._protocol = ApiProtocol(transport=transport, encoding="utf-8")  # type: ignore[arg-type]
        reply = self._exchange([Command(["/login", f"=name={self.username}", f"=password={self._password}"])],
                               limit)[0]
        if reply.trap is not None:
            raise RouterTrap(reply.trap)

    def _fail(self, reason: str, counter: str) -> None:
        """A failed attempt: counted, and the next one waits for the backoff."""
        self.counters[counter] += 1
        delay = self.backoff.next()
        self.next_attempt = self.clock() + delay
        if reason != self.last_error:
            log.warning("%s: %s; retrying in %.2f s (backoff up to %.1f s)", self.role, clip(reason, 400), delay,
                        self.backoff.maximum)
        self.last_error = reason

    def _drop(self) -> None:
        transport, self._transport, self._protocol = self._transport, None, None
        if transport is not None:
            try:
                transport.close()
            except Exception:
                pass

    def discard(self, reason: str) -> None:
        """Drop the connection after an error (never reused) and start the backoff before the next one."""
        if self._protocol is not None:
            self._drop()
            self.counters["disconnects"] += 1
        self._fail(reason, "link_errors")

    # --- commands ---------------------------------------------------------------

    def run(self, command: str, *words: str, timeout: float | None = None, deadline: float | None = None) -> list[dict]:
        """Run one command to ``!done``; its ``!re`` rows as dicts.

        The whole reply must arrive within ``timeout`` (default ``router.timeout_s``) and before
        ``deadline`` (this link's clock).  Raises ``RouterTrap`` on ``!trap`` (the connection stays)
        and ``RouterUnreachable`` on anything else (a counted link error; connection discarded,
        backoff started).
        """
        reply = self.run_many([Command([command, *words])], timeout=timeout, deadline=deadline)[0]
        if reply.trap is not None:
            raise RouterTrap(reply.trap)
        return reply.rows

    def run_many(self, commands: list[Command], *, timeout: float | None = None,
                 deadline: float | None = None) -> list[Reply]:
        """Run commands concurrently (tagged), each to ``!done`` or cut at its soft deadline; see ``run``."""
        if self._protocol is None:
            raise RouterUnreachable(self.last_error or f"not connected to {self.where}")
        started = time.monotonic()
        limit = started + (self.timeout if timeout is None else timeout)
        if deadline is not None:
            limit = min(limit, started + max(0.0, deadline - self.clock()))
        name = commands[0].words[0] if len(commands) == 1 else f"{len(commands)} commands"
        self.counters["commands"] += len(commands)
        try:
            replies = self._exchange(commands, limit)
        except LinkStopped:
            self._drop()
            raise
        except Exception as error:  # timeout, reset, !fatal, garbage, oversize: the connection is unusable
            kind = error.kind if isinstance(error, _LinkFault) else (
                "timeouts" if isinstance(error, (socket.timeout, TimeoutError)) else "protocol_errors")
            if kind != "disconnects":
                self.counters[kind] += 1
            self._observe(name, started, "timeout" if kind == "timeouts" else "unreachable")
            reason = f"{clip(name, 60)}: {_describe(error)}"
            self.discard(reason)
            raise RouterUnreachable(reason) from None
        traps = sum(1 for r in replies if r.trap is not None)
        self.counters["traps"] += traps
        self._observe(name, started, "trap" if traps else None)
        if not traps:
            self.backoff.reset()
        return replies

    def _exchange(self, commands: list[Command], limit: float) -> list[Reply]:
        protocol, transport = self._protocol, self._transport
        assert protocol is not None and transport is not None
        transport.deadline = limit
        transport.budget = self.max_reply_bytes * len(commands)
        transport.received = 0
        replies: dict[str, Reply] = {}
        soft: dict[str, float] = {}
        order = []
        for command in commands:
            self._tags += 1
            tag = str(self._tags)
            replies[tag] = Reply()
            soft[tag] = command.soft_deadline
            order.append(tag)
            protocol.writeSentence(command.words[0], *command.words[1:], f".tag={tag}")
        cancels: set[str] = set()  # tags of our own /cancel commands
        sentences = 0
        while any(not r.done for r in replies.values()) or cancels:
            waiting = [t for t, r in replies.items() if not r.done and not r.cut]
            next_soft = min((soft[t] for t in waiting), default=float("inf"))
            if next_soft < float("inf") and not transport.readable(next_soft):
                for tag in waiting:
                    if soft[tag] <= time.monotonic():
                        replies[tag].cut = True
                        self._tags += 1
                        cancel = f"c{self._tags}"
                        cancels.add(cancel)
                        protocol.writeSentence("/cancel", f"=tag={tag}", f".tag={cancel}")
                continue
            sentences += 1
            if sentences > self.max_reply_sentences * len(commands):
                raise _LinkFault("oversize_replies",
                                 f"reply over the bound of {self.max_reply_sentences} sentences")
            reply_word, attrs, tag = self._read_sentence(transport)
            if reply_word == "!fatal":
                raise _LinkFault("disconnects", f"!fatal {clip(attrs.get('', ''))}".strip())
            if tag in cancels:
                if reply_word == "!done":
                    cancels.discard(tag)
                continue
            reply = replies.get(tag) if tag is not None else None
            if reply is None or reply.done:
                raise _LinkFault("protocol_errors", f"{reply_word} for no command of ours (tag {clip(tag, 20)!r})")
            if reply_word == "!re":
                reply.rows.append(attrs)
            elif reply_word == "!trap":
                if not reply.cut:
                    message = attrs.get("message", "")
                    reply.trap = clip(message if isinstance(message, str) else str(message)) or "refused"
            elif reply_word == "!done":
                if attrs:
                    reply.rows.append(attrs)
                reply.done = True
            elif reply_word != "!empty":
                raise _LinkFault("protocol_errors", f"unexpected reply word {clip(reply_word, 40)!r}")
        return [replies[t] for t in order]

    def _read_sentence(self, transport: _BoundedTransport) -> tuple[str, dict, str | None]:
        """One sentence: (reply word, attributes, tag).  A bare ``!fatal``'s reason is under key ``''``."""
        words: list[str] = []
        while True:
            first = transport.read(1)
            if first == b"\x00":
                break
            try:
                more = determine_length(first)
            except Exception as error:
                raise _LinkFault("protocol_errors", f"bad word length: {_describe(error)}") from None
            # Read outside the try: a stop, the deadline or a close while the prefix is incomplete
            # stay what they are, not a malformed length.
            length = decode_length(first + transport.read(more))
            words.append(transport.read(length).decode("utf-8", errors="replace"))
        if not words:
            raise _LinkFault("protocol_errors", "an empty sentence")
        reply_word, attrs, tag = words[0], {}, None
        for word in words[1:]:
            if word.startswith(".tag="):
                tag = word[5:]
            elif word.startswith("="):
                key, _, value = word[1:].partition("=")
                attrs[key] = api_value(value)
            elif reply_word == "!fatal":
                attrs[""] = word
        return reply_word, attrs, tag

    def close(self) -> None:
        self._drop()


def _describe(error: BaseException) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(error, _LinkFault):
        return str(error)
    if isinstance(error, UnicodeError):
        return type(error).__name__  # its text would quote the offending characters (of a password)
    text = clip(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
