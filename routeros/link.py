"""The one RouterOS API connection a stage keeps, through librouteros.

librouteros does not reconnect, is not thread-safe, and leaves a connection
unusable after a socket timeout or error (part of a reply may still be in
flight).  ``RouterLink`` owns that: it connects on demand, runs one command at
a time, discards the connection after any error other than a ``!trap``, and
waits with capped exponential backoff before connecting again.  The collector
and the actuator each keep their own ``RouterLink``.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Callable

import librouteros
from librouteros.exceptions import LibRouterosError, MultiTrapError, TrapError

from proto.config import Config, ConfigError, resolve_path, router_address, router_password

log = logging.getLogger("wanctl.routeros")


class _RedactPassword(logging.Filter):
    """librouteros logs every word it sends at DEBUG, the /login password included: mask it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "=password=" in str(record.msg):
            record.msg = re.sub(r"=password=[^'\"]*", "=password=***", str(record.msg))
        return True


logging.getLogger("librouteros").addFilter(_RedactPassword())


class RouterUnreachable(Exception):
    """No usable connection: refused, timed out, closed, !fatal, or login refused."""


class RouterTrap(Exception):
    """The router refused the command (``!trap``); the connection is still good."""


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
    """Seconds in a RouterOS duration: ``12ms345us``, ``1s3ms``, ``2h5m``, ``00:00:01.5``, ``1d02:03:04``."""
    if isinstance(text, (int, float)):
        return float(text)
    text = text.strip()
    total = 0.0
    clock = re.fullmatch(r"(?:(.*?)(?<=[wd]))?(\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    if clock:
        prefix = clock[1] or ""
        total = parse_duration(prefix) if prefix else 0.0
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


class RouterLink:
    """A lazily made librouteros connection with backoff; see the module doc."""

    def __init__(self, cfg: Config, password: str | None, *, clock=time.monotonic, role: str = "wanctl"):
        r = cfg.router
        self.host, self.port = router_address(cfg)
        self.username = r.username
        self.role = role
        self.clock = clock
        self.connect_timeout = r.connect_timeout_s
        self.timeout = r.timeout_s
        self.backoff = Backoff(r.backoff_initial_s, r.backoff_max_s)
        self._password = password
        self._password_error: str | None = None
        if password is None:
            try:
                self._password = router_password(cfg)
            except ConfigError as error:
                self._password_error = str(error)
        self._ssl_wrapper = self._tls_wrapper(cfg) if r.tls else None
        self.api: librouteros.Api | None = None
        self.next_attempt = 0.0
        self.generation = 0  # +1 for every connection made; a new one means "re-read everything"
        self.last_error: str | None = None
        self.counters = {"connects": 0, "connect_failures": 0, "login_failures": 0, "disconnects": 0,
                         "timeouts": 0, "traps": 0}
        # Told about every command and login: (operation, seconds, error kind or None).
        self.observer: Callable[[str, float, str | None], None] | None = None

    def _observe(self, operation: str, started: float, error: str | None) -> None:
        if self.observer is not None:
            self.observer(operation, time.monotonic() - started, error)

    def _tls_wrapper(self, cfg: Config):
        r = cfg.router
        context = ssl.create_default_context(cafile=str(resolve_path(cfg, r.tls_ca)) if r.tls_ca else None)
        if not r.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        host = self.host
        return lambda sock: context.wrap_socket(sock, server_hostname=host)

    @property
    def where(self) -> str:
        return f"{'api-ssl' if self._ssl_wrapper else 'api'} {self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self.api is not None

    def ensure(self, now: float | None = None) -> bool:
        """Connected, connecting now if the backoff allows; False when not."""
        if self.api is not None:
            return True
        now = self.clock() if now is None else now
        if now < self.next_attempt:
            return False
        if self._password is None:
            self._fail(now, f"no router password: {self._password_error}")
            return False
        started = time.monotonic()
        try:
            api = librouteros.connect(self.host, self.username, self._password, port=self.port,
                                      timeout=self.connect_timeout, ssl_wrapper=self._ssl_wrapper)
        except TrapError as error:
            self.counters["login_failures"] += 1
            self._observe("login", started, "refused")
            self._fail(now, f"login as {self.username!r} refused by {self.where}: {error}")
            return False
        except (OSError, LibRouterosError, ValueError) as error:
            self._observe("login", started, "unreachable")
            self._fail(now, f"cannot connect to {self.where}: {_describe(error)}")
            return False
        self._observe("login", started, None)
        sock = api.protocol.transport.sock
        sock.settimeout(self.timeout)
        self.api = api
        self.generation += 1
        self.counters["connects"] += 1
        self.backoff.reset()
        if self.last_error is not None or self.generation == 1:
            log.info("%s: connected to %s as %r", self.role, self.where, self.username)
        self.last_error = None
        return True

    def _fail(self, now: float, reason: str) -> None:
        self.counters["connect_failures"] += 1
        delay = self.backoff.next()
        self.next_attempt = now + delay
        if reason != self.last_error:
            log.warning("%s: %s; retrying in %.2f s (backoff up to %.1f s)", self.role, reason, delay,
                        self.backoff.maximum)
        self.last_error = reason

    def discard(self, reason: str) -> None:
        """Drop the connection (never reused after an error); the next ``ensure`` reconnects."""
        if self.api is None:
            return
        api, self.api = self.api, None
        try:
            api.close()
        except Exception:
            pass
        self.counters["disconnects"] += 1
        self.last_error = reason
        log.warning("%s: connection to %s discarded: %s", self.role, self.where, reason)

    def run(self, command: str, *words: str, timeout: float | None = None) -> list[dict]:
        """Run one command to ``!done``; its ``!re`` rows as dicts.

        Raises ``RouterTrap`` on ``!trap`` (the connection stays) and
        ``RouterUnreachable`` on anything else (the connection is discarded).
        """
        api = self.api
        if api is None:
            raise RouterUnreachable(self.last_error or f"not connected to {self.where}")
        sock = api.protocol.transport.sock
        started = time.monotonic()
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            rows = list(api.rawCmd(command, *words))
            if timeout is not None:
                sock.settimeout(self.timeout)
            self._observe(command, started, None)
            return rows
        except (TrapError, MultiTrapError) as error:
            self.counters["traps"] += 1
            self._observe(command, started, "trap")
            raise RouterTrap(str(error)) from None
        except Exception as error:  # timeout, reset, !fatal, garbage: the connection is unusable now
            timed_out = isinstance(error, (socket.timeout, TimeoutError))
            if timed_out:
                self.counters["timeouts"] += 1
            self._observe(command, started, "timeout" if timed_out else "unreachable")
            reason = f"{command}: {_describe(error)}"
            self.discard(reason)
            raise RouterUnreachable(reason) from None

    def close(self) -> None:
        if self.api is not None:
            try:
                self.api.close()
            except Exception:
                pass
            self.api = None


def _describe(error: BaseException) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
