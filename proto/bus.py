"""The message bus: endpoints, sockets, CURVE keys, frame decoding, and the proxy.

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
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import msgspec
import zmq

from proto.config import Config, ConfigError, config_or_exit, resolve_path, router_password
from proto.health import Health
from proto.messages import KINDS, SCHEMA_VERSION, Heartbeat, Message, from_msgpack, to_msgpack, topic

log = logging.getLogger("wanctl.bus")

WELCOME = b"bus.welcome"
SERVER_KEY = "server"
CLIENT_KEY = "client"
AUTHORIZED_DIR = "authorized"
_KIND_LABELS = {kind.encode(): kind for kind in KINDS}  # topic kinds the proxy counts by name


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
    """Create the ipc run directory, owner-only (0700)."""
    run_dir = resolve_path(cfg, cfg.bus.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(run_dir, 0o700)
    return run_dir


# --- CURVE --------------------------------------------------------------------


def make_keys(keys_dir: str | os.PathLike) -> Path:
    """Create the server and client key pairs and authorize the client key."""
    import zmq.auth

    keys = Path(keys_dir)
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys, 0o700)
    for name in (SERVER_KEY, CLIENT_KEY):
        if not (keys / f"{name}.key_secret").exists():
            zmq.auth.create_certificates(str(keys), name)
        os.chmod(keys / f"{name}.key_secret", 0o600)
    authorized = keys / AUTHORIZED_DIR
    authorized.mkdir(exist_ok=True, mode=0o700)
    (authorized / f"{CLIENT_KEY}.key").write_bytes((keys / f"{CLIENT_KEY}.key").read_bytes())
    return keys


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


def publish(sock: zmq.Socket, message: Message) -> None:
    """Send one message as ``[topic, msgpack]``; never blocks (drops at the HWM)."""
    try:
        sock.send_multipart([topic(message), to_msgpack(message)], flags=zmq.NOBLOCK)
    except zmq.Again:
        pass


def wait_welcome(sock: zmq.Socket, timeout_s: float) -> bool:
    """Wait (bounded) for the proxy's welcome; other messages that arrive are discarded."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1, zmq.POLLIN):
            frames = sock.recv_multipart()
            if frames and frames[0] == WELCOME:
                return True
    return False


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


# --- stage plumbing -------------------------------------------------------------


class StopFlag:
    """Set by SIGTERM/SIGINT; loops poll with short timeouts and check it."""

    def __init__(self) -> None:
        self.stopping = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum, frame) -> None:
        self.stopping = True


class Heartbeats:
    """``heartbeat.<stage>`` once per ``bus.heartbeat_s`` with the stage's counters."""

    def __init__(self, stage: str, epoch: int, interval_s: float) -> None:
        self.stage = stage
        self.epoch = epoch
        self.interval_s = interval_s
        self.seq = 0
        self.started = time.monotonic()
        self.due = self.started

    def maybe_send(self, sock: zmq.Socket, now: float, counters: dict[str, int], status: str = "ok") -> None:
        if now < self.due:
            return
        self.due = now + self.interval_s
        self.seq += 1
        publish(sock, Heartbeat(
            stage=self.stage, seq=self.seq, status=status, uptime_s=round(now - self.started, 3),
            counters={k: int(v) for k, v in counters.items()}, source=self.stage, epoch=self.epoch,
        ))


def new_epoch() -> int:
    """The start id of this process: wall-clock milliseconds (display and ordering only)."""
    return time.time_ns() // 1_000_000


def setup_logging(stage: str) -> None:
    logging.basicConfig(
        level=os.environ.get("WANCTL_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {stage} %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def pending_frames(sock: zmq.Socket, limit: int = 1000, copy: bool = True):
    """The multipart messages ``sock`` holds right now, at most ``limit`` of them
    (a burst is drained in slices so a loop stays responsive to SIGTERM)."""
    for _ in range(limit):
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return


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


# --- the proxy ------------------------------------------------------------------


def run_proxy(cfg: Config) -> int:
    """Forward XSUB <-> XPUB until SIGTERM; publishes ``heartbeat.bus`` itself."""
    stop = StopFlag()
    ctx = zmq.Context()
    auth = start_authenticator(ctx, cfg)
    xsub = server_socket(ctx, zmq.XSUB, cfg, cfg.bus.publish)
    xpub = _socket(ctx, zmq.XPUB, cfg, server=True)
    xpub.sndhwm = xpub.rcvhwm = 100_000
    xpub.setsockopt(zmq.XPUB_WELCOME_MSG, WELCOME)
    ensure_run_dir(cfg)
    addr = endpoint(cfg, cfg.bus.subscribe)
    if addr.startswith("ipc://"):
        try:
            os.unlink(addr[len("ipc://"):])
        except FileNotFoundError:
            pass
    xpub.bind(addr)
    epoch = new_epoch()
    beats = Heartbeats("bus", epoch, cfg.bus.heartbeat_s)
    counters = {"forwarded": 0, "subscription_events": 0}
    health = Health.for_stage(cfg, "bus")
    by_kind: dict[bytes, list[int]] = {}  # topic kind -> [received, forwarded], flushed per burst
    poller = zmq.Poller()
    poller.register(xsub, zmq.POLLIN)
    poller.register(xpub, zmq.POLLIN)
    log.info("bus up: publishers -> %s, subscribers -> %s, curve=%s, health %s",
             endpoint(cfg, cfg.bus.publish), addr, bool(auth), health.url or "off")
    try:
        while not stop.stopping:
            events = dict(poller.poll(100))
            if xsub in events:
                for frames in pending_frames(xsub, copy=False):
                    kind = frames[0].bytes.split(b".", 1)[0]
                    tally = by_kind.get(kind)
                    if tally is None:
                        tally = by_kind.setdefault(kind if kind in _KIND_LABELS else b"other", [0, 0])
                    tally[0] += 1
                    try:
                        xpub.send_multipart(frames, zmq.NOBLOCK, copy=False)
                        tally[1] += 1
                    except zmq.Again:
                        health.dropped_frame("subscriber_hwm")
                    counters["forwarded"] += 1
                for kind, tally in by_kind.items():
                    if tally[0]:
                        health.saw(_KIND_LABELS.get(kind, "other"), tally[0])
                        health.sent(_KIND_LABELS.get(kind, "other"), tally[1])
                        tally[0] = tally[1] = 0
            if xpub in events:
                for frames in pending_frames(xpub):
                    xsub.send_multipart(frames)
                    counters["subscription_events"] += 1
            now = time.monotonic()
            if now >= beats.due:  # straight to the subscribers: the bus is its own proxy
                beats.maybe_send(xpub, now, {**health.flat_counters(), **counters}, health.status)
    finally:
        health.stop()
        xsub.close(0)
        xpub.close(0)
        if auth is not None:
            auth.stop()
        ctx.term()
    log.info("bus stopped")
    return 0


def stage_command(stage: str, summary: str, start: Callable[[Config], int], *,
                  needs_router: bool = False, argv: list[str] | None = None) -> None:
    """The console script of a stage: ``--config PATH``, what supervisord runs.

    A bad config exits with status 2 before ``start`` opens any socket.
    """
    import typer

    app = typer.Typer(add_completion=False)

    @app.command(help=summary)
    def command(config: str = typer.Option(None, "--config", help="wanctl.yaml")) -> None:
        setup_logging(stage)
        cfg = load_stage_config(config, stage, needs_router=needs_router)
        raise SystemExit(start(cfg))

    app(argv)


def bus_main(argv: list[str] | None = None) -> None:
    stage_command("bus", "Run the XSUB/XPUB proxy every stage connects to.", run_proxy, argv=argv)


def keys_main(argv: list[str] | None = None) -> None:
    import typer

    app = typer.Typer(add_completion=False)

    @app.command()
    def main(keys_dir: str = typer.Argument(..., help="directory for the CURVE keys (bus.keys_dir)")) -> None:
        """Create the CURVE server and client keys used when bus endpoints are tcp://.

        Copy the directory (mode 0700) to every host that runs a stage; a process
        without client.key_secret cannot publish to or read from the bus.
        """
        keys = make_keys(keys_dir)
        print(f"CURVE keys in {keys}: server.key(_secret), client.key(_secret), {AUTHORIZED_DIR}/client.key")

    app(argv)
