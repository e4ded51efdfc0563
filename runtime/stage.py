"""One stage process's lifetime: lock, stop flag, ZeroMQ context and sockets, health, heartbeats.

A stage's ``run(cfg)`` is a short loop inside ``with Stage(cfg, "scorer") as stage:``.
Entering takes, in order and each undone on the way out (also when a later step
of the setup fails):

1. the role's exclusive lock ``<bus.run_dir>/<role>.lock`` (``fcntl.flock``,
   the holder's pid written inside): a second bus, collector, scorer, logger
   or actuator refuses to start, naming the holder's pid (``AlreadyRunning``;
   the console script exits 1).  ``actuator`` and ``actuator-noop`` take the
   same ``actuator.lock``, so the live and the no-op actuator never run
   together;
2. the stop flag (SIGTERM/SIGINT);
3. the ZeroMQ context and, with CURVE, its authenticator;
4. the health endpoint (``runtime.health``);
5. the sockets the stage asks for (``publisher``, ``subscriber``, ...).

Teardown runs every step even if an earlier one fails (each failure is
logged).  The counters of a stage form one flat namespace: the sources it
registers with ``count_from`` (its core's ``counters``, the frame decoder's,
the publisher's); ``/health``, ``/metrics`` and the heartbeat all render that
one namespace (``runtime.health``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import zmq

from bus import sockets
from proto.config import Config, ConfigError
from proto.messages import Heartbeat
from runtime.health import Health
from runtime.stop import StopFlag

log = logging.getLogger("wanctl.stage")

ALREADY_RUNNING_EXIT = 1  # a second instance of a role refuses to start with this status
LOCK_ROLES = {"bus": "bus", "collector": "collector", "scorer": "scorer", "logger": "logger",
              "actuator": "actuator", "actuator-noop": "actuator"}


class AlreadyRunning(RuntimeError):
    """Another process holds the role's lock."""

    def __init__(self, role: str, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "a process that has not written its pid yet"
        super().__init__(f"another {role} is running ({holder}, holding {path}); refusing to start a second one")
        self.role = role
        self.path = path
        self.pid = pid


class RoleLock:
    """An exclusive ``flock`` on ``<run_dir>/<role>.lock`` with the holder's pid inside.

    The kernel releases the lock when the holder dies (even by SIGKILL), so a
    stale file never blocks a restart; the file itself is left in place.
    """

    def __init__(self, run_dir: Path, role: str) -> None:
        self.role = role
        self.path = Path(run_dir) / f"{LOCK_ROLES.get(role, role)}.lock"
        self._fd: int | None = None

    def acquire(self) -> RoleLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            raw = os.pread(fd, 32, 0)
            os.close(fd)
            pid = int(raw) if raw.strip().isdigit() else None
            holder_role = "actuator or actuator-noop" if self.path.stem == "actuator" else self.role
            raise AlreadyRunning(holder_role, self.path, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor drops the flock


class Heartbeats:
    """``heartbeat.<stage>`` once per ``bus.heartbeat_s`` with the stage's counters."""

    def __init__(self, stage: str, epoch: int, interval_s: float) -> None:
        self.stage = stage
        self.epoch = epoch
        self.interval_s = interval_s
        self.seq = 0
        self.started = time.monotonic()
        self.due = self.started

    def maybe_send(self, send: Callable[[Heartbeat], object], now: float, counters: dict[str, int],
                   status: str = "ok") -> None:
        if now < self.due:
            return
        self.due = now + self.interval_s
        self.seq += 1
        send(Heartbeat(
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


class Stage:
    """The runtime of one stage process (a context manager; see the module docstring).

    ``role`` names the health endpoint in the config (``health.<role>``) and the
    lock; ``name`` is what the heartbeat and the health document call the stage
    when it differs (``actuator-noop``).
    """

    def __init__(self, cfg: Config, role: str, *, name: str | None = None) -> None:
        self.cfg = cfg
        self.role = role
        self.name = name or role
        self.teardown_errors = 0
        self._stack: ExitStack | None = None
        self._sockets: list[zmq.Socket] = []
        self.pub: sockets.Publisher | None = None
        self.decoder = sockets.FrameDecoder()
        self._decoder_counted = False

    # --- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Stage:
        self._stack = ExitStack()
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _setup(self) -> None:
        cfg = self.cfg
        run_dir = sockets.ensure_run_dir(cfg)
        # The stop flag first: a SIGTERM from here on is a clean stop, and the
        # lock (with our pid in it) tells a supervisor that we are that far.
        self.stop = StopFlag()
        self.on_close("restore the signal handlers", self.stop.restore)
        self.lock = RoleLock(run_dir, self.name).acquire()
        self.on_close("release the lock", self.lock.release)
        self.ctx = zmq.Context()
        self.on_close("terminate the ZeroMQ context", self.ctx.term)
        self.auth = sockets.start_authenticator(self.ctx, cfg, self.role)
        if self.auth is not None:
            self.on_close("stop the CURVE authenticator", self.auth.stop)
        self.on_close("close the sockets", self._close_sockets)
        self.health = Health.for_stage(cfg, self.role, self.name)
        self.on_close("stop the health endpoint", self.health.stop)
        if self.auth is not None:
            self.health.count_from("curve", self.auth.counters)
        self.epoch = new_epoch()
        self.beats = Heartbeats(self.name, self.epoch, cfg.bus.heartbeat_s)

    def on_close(self, what: str, step: Callable[[], object]) -> None:
        """Run ``step`` when the stage stops (last registered, first run); a failure is logged, not fatal."""
        assert self._stack is not None, "on_close outside the stage's with block"

        def guarded() -> None:
            try:
                step()
            except Exception:  # noqa: BLE001 - every other step must still run
                self.teardown_errors += 1
                log.exception("%s: stopping: cannot %s", self.name, what)

        self._stack.callback(guarded)

    def _close_sockets(self) -> None:
        for sock in reversed(self._sockets):
            try:
                sock.close(self.cfg.bus.linger_ms)
            except Exception:  # noqa: BLE001
                self.teardown_errors += 1
                log.exception("%s: stopping: cannot close a socket", self.name)
        self._sockets.clear()

    @property
    def stopping(self) -> bool:
        return self.stop.stopping

    # --- sockets -----------------------------------------------------------------

    def _own(self, sock: zmq.Socket) -> zmq.Socket:
        self._sockets.append(sock)
        return sock

    def publisher(self) -> sockets.Publisher:
        """The stage's PUB socket to the proxy; its sent/dropped counts join the stage's counters."""
        self.pub = sockets.Publisher(self._own(sockets.publisher(self.ctx, self.cfg)))
        self.health.count_from("publisher", self.pub.counters)
        return self.pub

    def subscriber(self, prefixes: list[bytes]) -> zmq.Socket:
        sock = self._own(sockets.subscriber(self.ctx, self.cfg, prefixes))
        if not self._decoder_counted:
            self.health.count_from("frames", self.decoder.counters)
            self._decoder_counted = True
        return sock

    def server_socket(self, kind: int, raw_endpoint: str, **options) -> zmq.Socket:
        return self._own(sockets.server_socket(self.ctx, kind, self.cfg, raw_endpoint, **options))

    def client_socket(self, kind: int, raw_endpoint: str, **options) -> zmq.Socket:
        return self._own(sockets.client_socket(self.ctx, kind, self.cfg, raw_endpoint, **options))

    def close_socket(self, sock: zmq.Socket, linger_ms: int = 0) -> None:
        """Close one of the stage's sockets early (e.g. a request socket given up on)."""
        self._sockets.remove(sock)
        sock.close(linger_ms)

    # --- what the stage tells the others ---------------------------------------------

    def count_from(self, label: str, source) -> None:
        """Add a flat ``dict[str, int]`` (or a callable returning one) to the stage's counters."""
        self.health.count_from(label, source)

    def heartbeat(self, now: float, send: Callable[[Heartbeat], object] | None = None) -> bool:
        """Publish the heartbeat if it is due; True if it was."""
        if now < self.beats.due:
            return False
        if send is None:
            assert self.pub is not None, "a stage without a publisher must say where its heartbeat goes"
            send = self.pub.send
        self.beats.maybe_send(send, now, self.health.counters(), self.health.status)
        return True


def stage_command(stage: str, summary: str, start: Callable[[Config], int], *,
                  needs_router: bool = False, argv: list[str] | None = None) -> None:
    """The console script of a stage: ``--config PATH``, what supervisord runs.

    A bad config exits with status 2 before ``start`` opens any socket (an unsafe
    ``bus.run_dir``, found while the stage sets up, exits 2 too); a second
    instance of the role (its lock is held) exits with status 1, naming the holder.
    """
    import typer

    from runtime import cli

    app = cli.app()

    @app.command(cls=cli.Command, help=summary + " Exits 2 on a bad config, 1 if another instance of this stage holds "
                                "its lock in bus.run_dir.")
    def command(config: str = typer.Option(None, "--config", metavar="PATH",
                                           help="the wanctl config (none: every default)"),
                version: bool = cli.version_option()) -> None:
        setup_logging(stage)
        cfg = sockets.load_stage_config(config, stage, needs_router=needs_router)
        try:
            status = start(cfg)
        except AlreadyRunning as error:
            print(f"wanctl-{stage}: {error}", file=sys.stderr)
            raise SystemExit(ALREADY_RUNNING_EXIT) from None
        except ConfigError as error:  # found on the way up (e.g. an unsafe bus.run_dir)
            for problem in error.problems:
                print(f"wanctl-{stage}: config error: {problem}", file=sys.stderr)
            raise SystemExit(2) from None
        raise SystemExit(status)

    app(argv)
