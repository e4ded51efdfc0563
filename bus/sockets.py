"""The message bus as a client sees it: endpoints, sockets, CURVE, publishing, frame decoding.

Every stage *connects* to two stable endpoints of one small proxy process
(``wanctl-bus``): publishers to its XSUB side (``bus.publish``), subscribers to
its XPUB side (``bus.subscribe``).  A frame on the bus is two parts,
``[topic, msgpack]``.  The proxy's XPUB sends ``WELCOME`` to every subscriber
that connects, so a subscriber knows its connection is up without sleeping.

``ipc://`` endpoints live in ``bus.run_dir`` (created with mode 0700).
``tcp://`` endpoints require CURVE: the proxy (and the scorer's journal
socket) are CURVE servers that only accept the client public keys in the
allow-list directory (``bus.clients_dir``, default ``<keys_dir>/authorized``),
one per host; a host holds only its own client secret and the server's
public key.  ``wanctl-keys`` makes them.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq

from proto.config import (
    MAX_CA_BYTES, Config, ConfigError, config_or_exit, read_small_file, require_wans, resolve_path, router_password,
)
from proto.messages import KINDS, SCHEMA_VERSION, Message, from_msgpack, to_msgpack, topic

log = logging.getLogger("wanctl.bus")

WELCOME = b"bus.welcome"
SERVER_KEY = "server"
CLIENT_KEY = "client"
AUTHORIZED_DIR = "authorized"


# --- endpoints ----------------------------------------------------------------


def endpoint(cfg: Config, raw: str) -> str:
    """The concrete endpoint for a configured one: bare ``ipc://name`` lives in run_dir."""
    if raw.startswith("ipc://"):
        path = raw[len("ipc://"):]
        if "/" not in path:
            path = str(resolve_path(cfg, cfg.bus.run_dir) / path)
        elif not os.path.isabs(path):
            path = str(resolve_path(cfg, path))
        if len(path.encode()) > 100:
            raise ConfigError([
                f"bus: ipc path must be at most 100 bytes (the OS limit is ~107), "
                f"got {len(path.encode())} bytes: {path}"
            ])
        return "ipc://" + path
    if raw.startswith("tcp://"):
        host, sep, port = raw[len("tcp://"):].rpartition(":")
        if not sep or not host or "/" in host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
            raise ConfigError([f"bus: tcp endpoint must look like tcp://HOST:PORT (port 1-65535), got {raw[:100]!r}"])
        return raw
    raise ConfigError([f"bus: endpoint must start with ipc:// or tcp://, got {raw!r}"])


def uses_tcp(cfg: Config) -> bool:
    b = cfg.bus
    return any(e.startswith("tcp://") for e in (b.publish, b.subscribe, b.journal))


SERVER_ROLES = frozenset({"bus", "scorer"})  # they bind: the proxy's two sides, the scorer's journal socket
CLIENT_ROLES_EXCLUDED = frozenset({"bus"})  # the proxy connects to nothing


def _key_problem(path: Path, secret: bool) -> str | None:
    """Why ``path`` is not a usable CURVE certificate (None when it is)."""
    import zmq.auth

    try:
        read_small_file(path, 64 * 1024)
        public, secret_key = zmq.auth.load_certificate(str(path))
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    except Exception as error:  # noqa: BLE001 - zmq.auth raises ValueError and others on junk files
        return f"not a CURVE certificate ({str(error)[:80]})"
    if secret and not secret_key:
        return "holds no secret key"
    return None


def clients_dir(cfg: Config) -> Path:
    """The allow-list of client public keys the CURVE servers accept."""
    if cfg.bus.clients_dir:
        return resolve_path(cfg, cfg.bus.clients_dir)
    return _keys_dir(cfg) / AUTHORIZED_DIR


def check_bus(cfg: Config, role: str | None = None) -> None:
    """Raise ConfigError for a bus section a stage cannot run with (before any socket).

    With ``bus.keys_dir`` set (required for tcp://), every stage needs the
    server's public key; a stage that binds (``SERVER_ROLES``) needs the server
    secret and a non-empty allow-list of client public keys, and a stage that
    connects needs its host's client secret.  ``role=None`` checks for both.
    """
    problems = []
    for name in ("publish", "subscribe", "journal"):
        try:
            addr = endpoint(cfg, getattr(cfg.bus, name))
        except ConfigError as error:
            problems += [p.replace("bus:", f"bus.{name}:", 1) for p in error.problems]
            continue
        if addr.startswith("ipc://"):
            parent = Path(addr[len("ipc://"):]).parent
            run_dir = resolve_path(cfg, cfg.bus.run_dir)
            if parent != run_dir and not parent.is_dir():
                problems.append(f"bus.{name}: the directory of the ipc socket does not exist: {parent}")
    run_dir = resolve_path(cfg, cfg.bus.run_dir)
    existing = run_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"bus.run_dir: cannot create or use {run_dir} ({existing} is not a writable directory)")
    if uses_tcp(cfg) and not cfg.bus.keys_dir:
        problems.append(
            "bus.keys_dir: required when an endpoint is tcp:// (CURVE authentication); "
            "make keys with `wanctl-keys DIR`, got null"
        )
    elif cfg.bus.keys_dir:
        keys = _keys_dir(cfg)
        if not keys.is_dir():
            problems.append(f"bus.keys_dir: not a directory: {keys} (run `wanctl-keys {keys}`)")
        else:
            wanted = [(f"{SERVER_KEY}.key", False)]
            if role is None or role in SERVER_ROLES:
                wanted.append((f"{SERVER_KEY}.key_secret", True))
            if role is None or role not in CLIENT_ROLES_EXCLUDED:
                wanted.append((f"{CLIENT_KEY}.key_secret", True))
            for name, secret in wanted:
                why = _key_problem(keys / name, secret)
                if why == "missing":
                    problems.append(f"bus.keys_dir: missing {name} in {keys} (run `wanctl-keys {keys}`)")
                elif why:
                    problems.append(f"bus.keys_dir: {name} in {keys}: {why}")
            if role is None or role in SERVER_ROLES:
                allowed = clients_dir(cfg)
                key = "bus.clients_dir" if cfg.bus.clients_dir else "bus.keys_dir"
                if not allowed.is_dir():
                    problems.append(f"{key}: the allow-list of client keys {allowed} is not a directory "
                                    f"(run `wanctl-keys {keys}`)")
                else:
                    try:
                        ClientAllowList(allowed).reload()
                    except ConfigError as error:
                        problems += [f"{key}: {p}" for p in error.problems]
    if problems:
        raise ConfigError(problems)


def ensure_run_dir(cfg: Config) -> Path:
    """The ipc run directory: created owner-only (0700) when missing; an existing one is never chmodded.

    An existing directory that anyone may write to without the sticky bit
    (anyone could replace the sockets and locks in it) is refused with a
    ``ConfigError``; a shared sticky one (``/tmp``) is used with a warning.
    """
    run_dir = resolve_path(cfg, cfg.bus.run_dir)
    try:
        run_dir.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        mode = run_dir.stat().st_mode
        if mode & 0o002 and not mode & 0o1000:
            raise ConfigError([f"bus.run_dir: {run_dir} is writable by every user and has no sticky bit "
                               f"(mode {mode & 0o7777:o}): anyone could replace the bus sockets and locks; "
                               f"use a directory of wanctl's own"]) from None
        if mode & 0o002:
            log.warning("bus.run_dir %s is shared by every user (mode %o); a directory of wanctl's own "
                        "is safer", run_dir, mode & 0o7777)
        return run_dir
    os.chmod(run_dir, 0o700)  # the one wanctl created, whatever the umask
    return run_dir


# --- CURVE --------------------------------------------------------------------


def _curve_enabled(cfg: Config) -> bool:
    return bool(cfg.bus.keys_dir)


def _keys_dir(cfg: Config) -> Path:
    return resolve_path(cfg, cfg.bus.keys_dir)


REJECT_LOG_INTERVAL_S = 60.0  # at most one WARNING per this many seconds about rejected clients


class ClientAllowList:
    """The CURVE client public keys a server accepts: every ``*.key`` in a
    directory (``wanctl-keys DIR --host NAME`` adds one, deleting it revokes
    that host).  The directory is re-read when it changes, at most once a
    second.  A rejected client is counted and logged at WARNING, at most once
    per ``REJECT_LOG_INTERVAL_S`` (with the count since the last line)."""

    def __init__(self, directory: Path, clock=time.monotonic) -> None:
        self.directory = directory
        self.clock = clock
        self.keys: dict[bytes, str] = {}
        self.counters = {"curve_clients_allowed": 0, "curve_clients_rejected": 0, "curve_allow_list_errors": 0}
        self._stamp: tuple | None = None
        self._checked = float("-inf")
        self._last_log = float("-inf")
        self._unlogged = 0

    def reload(self) -> None:
        """Read the allow-list; ConfigError when it is unusable (no key, a bad key file)."""
        import zmq.auth

        keys: dict[bytes, str] = {}
        problems = []
        for path in sorted(self.directory.glob("*.key")):
            try:
                read_small_file(path, 64 * 1024)
                public, _ = zmq.auth.load_certificate(str(path))
            except Exception as error:  # noqa: BLE001 - zmq.auth raises bare errors on junk files
                problems.append(f"{path.name} in {self.directory} is not a CURVE public key "
                                f"({str(getattr(error, 'strerror', None) or error)[:80]})")
                continue
            keys[public] = path.stem
        if problems:
            raise ConfigError(problems)
        if not keys:
            raise ConfigError([f"no client public key (*.key) in {self.directory}: no client could connect "
                               "(add one with `wanctl-keys DIR --host NAME`)"])
        self.keys = keys
        self._stamp = self._dir_stamp()

    def _dir_stamp(self) -> tuple | None:
        try:
            info = self.directory.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_ino)

    def _maybe_reload(self) -> None:
        now = self.clock()
        if now - self._checked < 1.0:
            return
        self._checked = now
        if self._dir_stamp() != self._stamp:
            try:
                self.reload()
            except ConfigError as error:  # keep the last good list
                self.counters["curve_allow_list_errors"] += 1
                log.error("CURVE allow-list %s: %s; keeping the %d keys read before",
                          self.directory, "; ".join(error.problems), len(self.keys))
                self._stamp = self._dir_stamp()

    def callback(self, domain: str, client_key: bytes) -> bool:
        """The ZAP check (``client_key`` in Z85): True for an allow-listed key."""
        self._maybe_reload()
        if client_key in self.keys:
            self.counters["curve_clients_allowed"] += 1
            return True
        self.counters["curve_clients_rejected"] += 1
        self._unlogged += 1
        now = self.clock()
        if now - self._last_log >= REJECT_LOG_INTERVAL_S:
            log.warning("CURVE: refused %d client connection(s) with a key not in %s (last key %s); "
                        "at most one such line per %.0f s", self._unlogged, self.directory,
                        client_key[:40].decode("ascii", "replace"), REJECT_LOG_INTERVAL_S)
            self._last_log = now
            self._unlogged = 0
        return False


def start_authenticator(ctx: zmq.Context, cfg: Config, role: str | None = None):
    """A ZAP authenticator that accepts only the allow-listed client keys, for a
    stage that binds (None without CURVE, or for a stage that only connects).
    Its ``counters`` are the allow-list's."""
    if not _curve_enabled(cfg) or (role is not None and role not in SERVER_ROLES):
        return None
    from zmq.auth.thread import ThreadAuthenticator

    allow = ClientAllowList(clients_dir(cfg))
    try:
        allow.reload()
    except ConfigError:
        pass  # checked at start-up; a list emptied since refuses every client until fixed
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("wanctl.auth"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=allow)
    auth.counters = allow.counters
    auth.allow_list = allow
    return auth


def _server_curve(sock: zmq.Socket, cfg: Config) -> None:
    import zmq.auth

    public, secret = zmq.auth.load_certificate(str(_keys_dir(cfg) / f"{SERVER_KEY}.key_secret"))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def _client_curve(sock: zmq.Socket, cfg: Config) -> None:
    import zmq.auth

    keys = _keys_dir(cfg)
    public, secret = zmq.auth.load_certificate(str(keys / f"{CLIENT_KEY}.key_secret"))
    server_public, _ = zmq.auth.load_certificate(str(keys / f"{SERVER_KEY}.key"))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


# --- sockets ------------------------------------------------------------------


def _socket(ctx: zmq.Context, kind: int, cfg: Config, *, server: bool) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = cfg.bus.linger_ms
    if _curve_enabled(cfg):
        (_server_curve if server else _client_curve)(sock, cfg)
    return sock


def server_socket(ctx: zmq.Context, kind: int, cfg: Config, raw_endpoint: str, *, hwm: int = 100_000) -> zmq.Socket:
    """A bound socket (the proxy's two sides, the scorer's journal ROUTER)."""
    ensure_run_dir(cfg)
    sock = _socket(ctx, kind, cfg, server=True)
    sock.sndhwm = hwm
    sock.rcvhwm = hwm
    addr = endpoint(cfg, raw_endpoint)
    if addr.startswith("ipc://"):
        try:  # a stale socket file from a killed proxy
            os.unlink(addr[len("ipc://"):])
        except FileNotFoundError:
            pass
    sock.bind(addr)
    return sock


def client_socket(ctx: zmq.Context, kind: int, cfg: Config, raw_endpoint: str, *, hwm: int = 100_000) -> zmq.Socket:
    sock = _socket(ctx, kind, cfg, server=False)
    sock.sndhwm = hwm
    sock.rcvhwm = hwm
    sock.reconnect_ivl = 100
    sock.reconnect_ivl_max = 1000
    sock.connect(endpoint(cfg, raw_endpoint))
    return sock


def publisher(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    """A PUB socket connected to the proxy's XSUB side."""
    return client_socket(ctx, zmq.PUB, cfg, cfg.bus.publish)


def watched_publisher(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    """An XPUB connected to the proxy's XSUB side: publishes like PUB, and sees the
    subscriptions the proxy forwards, so ``wait_subscribed`` can tell when a
    message would reach someone (for tools and tests that must not lose the first one)."""
    return client_socket(ctx, zmq.XPUB, cfg, cfg.bus.publish)


def wait_subscribed(sock: zmq.Socket, topic_: bytes, timeout_s: float, seen: set[bytes]) -> bool:
    """Wait (bounded) until a subscription that matches ``topic_`` reached this XPUB."""
    deadline = time.monotonic() + timeout_s
    while True:
        if any(topic_.startswith(prefix) for prefix in seen):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if sock.poll(int(left * 1000) + 1, zmq.POLLIN):
            frame = sock.recv()
            if frame[:1] == b"\x01":
                seen.add(frame[1:])
            elif frame[:1] == b"\x00":
                seen.discard(frame[1:])


def subscriber(ctx: zmq.Context, cfg: Config, prefixes: list[bytes]) -> zmq.Socket:
    """A SUB socket connected to the proxy's XPUB side, subscribed to prefixes and WELCOME."""
    sock = _socket(ctx, zmq.SUB, cfg, server=False)
    sock.rcvhwm = 100_000
    sock.reconnect_ivl = 100
    sock.reconnect_ivl_max = 1000
    sock.setsockopt(zmq.SUBSCRIBE, WELCOME)
    for prefix in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
    sock.connect(endpoint(cfg, cfg.bus.subscribe))
    return sock


def publish(sock: zmq.Socket, message: Message) -> bool:
    """Send one message as ``[topic, msgpack]``; never blocks: False if it was dropped at the HWM."""
    try:
        sock.send_multipart([topic(message), to_msgpack(message)], flags=zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


class Publisher:
    """A publishing socket that counts what it sent and what it dropped at the HWM."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.socket = sock
        self.counters = {"published": 0, "publish_dropped": 0}

    def send(self, message: Message) -> bool:
        if publish(self.socket, message):
            self.counters["published"] += 1
            return True
        self.counters["publish_dropped"] += 1
        return False


def wait_welcome(sock: zmq.Socket, timeout_s: float) -> bool:
    """Wait (bounded) for the proxy's welcome; other messages that arrive are discarded."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1, zmq.POLLIN):
            frames = sock.recv_multipart()
            if frames and frames[0] == WELCOME:
                return True
    return False


def pending_frames(sock: zmq.Socket, limit: int = 1000, copy: bool = True):
    """The multipart messages ``sock`` holds right now, at most ``limit`` of them
    (a burst is drained in slices so a loop stays responsive to SIGTERM)."""
    for _ in range(limit):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return



# --- decoding -----------------------------------------------------------------


@dataclass
class FrameDecoder:
    """Turns bus frames into messages; anything wrong is counted and dropped, never raised."""

    counters: dict[str, int] = field(default_factory=lambda: {
        "received": 0, "welcome": 0, "malformed": 0, "unknown_kind": 0, "bad_version": 0,
    })

    def decode(self, frames: list[bytes]) -> Message | None:
        if len(frames) == 1 and frames[0] == WELCOME:
            self.counters["welcome"] += 1
            return None
        if len(frames) != 2:
            self.counters["malformed"] += 1
            return None
        payload = frames[1]
        try:
            message = from_msgpack(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.counters[self._classify(payload)] += 1
            return None
        except Exception:  # noqa: BLE001 - a frame must never take a stage down
            self.counters["malformed"] += 1
            return None
        if message.v != SCHEMA_VERSION:
            self.counters["bad_version"] += 1
            return None
        self.counters["received"] += 1
        return message

    @staticmethod
    def _classify(payload: bytes) -> str:
        try:
            raw = msgspec.msgpack.decode(payload)
        except Exception:  # noqa: BLE001
            return "malformed"
        if isinstance(raw, dict):
            if raw.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
                return "bad_version"
            if raw.get("kind") not in KINDS:
                return "unknown_kind"
        return "malformed"


def _shown(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(error: BaseException) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__


def check_tls_ca(cfg: Config) -> None:
    """Raise ConfigError unless ``router.tls_ca`` (when TLS uses it) is a readable CA bundle."""
    r = cfg.router
    if not (r.tls and r.tls_ca):
        return
    shown = _shown(r.tls_ca)
    try:
        data = read_small_file(resolve_path(cfg, r.tls_ca), MAX_CA_BYTES)
        text = data.decode("ascii")
        ssl.create_default_context(cadata=text)
    except UnicodeDecodeError:
        raise ConfigError([f"router.tls_ca: {shown} is not a PEM CA bundle (not ASCII text)"]) from None
    except ssl.SSLError as error:  # before OSError, its base
        raise ConfigError([f"router.tls_ca: {shown} is not a PEM CA bundle: {error.reason or error}"]) from None
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError([f"router.tls_ca: cannot read {shown}: {_reason(error)}"]) from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError([f"router.tls_ca: {shown} is not a PEM CA bundle: no certificate in it"])


def load_stage_config(path: str | None, stage: str, *, needs_router: bool = False) -> Config:
    """Load and check the config, or print the problems and exit 2 (before any socket).

    A stage that talks to the router (``needs_router``) also needs at least one
    WAN and a readable router password.
    """
    def check(cfg: Config) -> None:
        check_bus(cfg, stage)
        if needs_router:
            require_wans(cfg, stage)
            router_password(cfg)
            check_tls_ca(cfg)

    return config_or_exit(f"wanctl-{stage}", path, check=check)
