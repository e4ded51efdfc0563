"""The message bus as a client sees it: endpoints, sockets, CURVE, publishing, frame decoding.

Every stage *connects* to two stable endpoints of one small proxy process
(``wanctl-bus``): publishers to its XSUB side (``bus.publish``), subscribers to
its XPUB side (``bus.subscribe``).  A frame on the bus is two parts,
``[topic, msgpack]``.  The proxy's XPUB sends ``WELCOME`` to every subscriber
that connects, so a subscriber knows its connection is up without sleeping.

``ipc://`` endpoints live in ``bus.run_dir`` (created with mode 0700).
``tcp://`` endpoints require CURVE: the proxy (and the scorer's journal
socket) are CURVE servers that only accept the client keys listed in
``<keys_dir>/authorized``; ``wanctl-keys`` makes them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq

from proto.config import Config, ConfigError, config_or_exit, resolve_path, router_password
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
        return raw
    raise ConfigError([f"bus: endpoint must start with ipc:// or tcp://, got {raw!r}"])


def uses_tcp(cfg: Config) -> bool:
    b = cfg.bus
    return any(e.startswith("tcp://") for e in (b.publish, b.subscribe, b.journal))


def check_bus(cfg: Config) -> None:
    """Raise ConfigError for a bus section a stage cannot run with (before any socket)."""
    problems = []
    for name in ("publish", "subscribe", "journal"):
        try:
            endpoint(cfg, getattr(cfg.bus, name))
        except ConfigError as error:
            problems += [p.replace("bus:", f"bus.{name}:", 1) for p in error.problems]
    if uses_tcp(cfg):
        if not cfg.bus.keys_dir:
            problems.append(
                "bus.keys_dir: required when an endpoint is tcp:// (CURVE authentication); "
                "make keys with `wanctl-keys DIR`, got null"
            )
        else:
            keys = resolve_path(cfg, cfg.bus.keys_dir)
            for name in (f"{SERVER_KEY}.key", f"{CLIENT_KEY}.key_secret"):
                if not (keys / name).is_file():
                    problems.append(f"bus.keys_dir: missing {name} in {keys} (run `wanctl-keys {keys}`)")
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


def start_authenticator(ctx: zmq.Context, cfg: Config):
    """A ZAP authenticator that accepts only the authorized client keys (None without CURVE)."""
    if not _curve_enabled(cfg):
        return None
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=logging.getLogger("wanctl.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=str(_keys_dir(cfg) / AUTHORIZED_DIR))
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


def load_stage_config(path: str | None, stage: str, *, needs_router: bool = False) -> Config:
    """Load and check the config, or print the problems and exit 2 (before any socket).

    A stage that talks to the router (``needs_router``) also needs at least one
    WAN and a readable router password.
    """
    def check(cfg: Config) -> None:
        check_bus(cfg)
        if needs_router:
            if not cfg.wans:
                raise ConfigError([f"wans: the {stage} needs at least one WAN, got []"])
            router_password(cfg)

    return config_or_exit(f"wanctl-{stage}", path, check=check)
