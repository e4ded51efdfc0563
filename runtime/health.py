"""Every stage's loopback health endpoint and its Prometheus metrics.

The contract every stage core follows: ``core.counters`` is one flat
``dict[str, int]`` (one meaning per key) and ``core.conditions()`` returns
the failing conditions as ``{name: reason}`` (empty means healthy).  A stage
registers its sources once (``count_from``, ``conditions_from``); the health
document, the heartbeat's counters and the ``wanctl_stage_count`` metric are
all rendered from those sources, and a key that two sources define is an
error, not a silent merge.

Besides, a stage reports facts from its own loop: messages it saw (``saw``),
inputs it expects to keep arriving (``expect``), named conditions of the
shell itself (``degrade``/``fail``/``clear``), labelled metrics (rejected
samples by cause, router round trips...) and a ``details`` snapshot.  A
daemon thread serves:

- ``GET /health``: JSON with ``status`` (``ok``/``degraded``/``failing``,
  HTTP 200 for ok and 503 otherwise), ``reasons``, uptime, the last message
  seen and its age, the counters and the stage's ``details``;
- ``GET /metrics``: Prometheus exposition of the stage's own
  ``CollectorRegistry`` (``StageMetrics`` and the counters).

The stage runtime (``runtime.stage.Stage``) builds, starts and stops it.

Every age and uptime is measured on ``time.monotonic()``; wall-clock times
appear only as display fields.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from proto.config import Config, is_loopback_host
from proto.messages import DEGRADED as STEERING, ENABLE, Actuation, Decision, State, Telemetry

log = logging.getLogger("wanctl.health")

OK = "ok"
DEGRADED = "degraded"
FAILING = "failing"
_SEVERITY = {OK: 0, DEGRADED: 1, FAILING: 2}
STAGES = ("bus", "collector", "scorer", "actuator", "logger")
DROP_REASONS = ("malformed", "unknown_kind", "bad_version")  # what a FrameDecoder drops


class StageMetrics:
    """The metric objects of one stage, registered in the stage's own registry.

    Every stage exposes the same names; a stage updates the ones it owns
    (the scorer the per-WAN scores and decisions, the collector the router
    round trips, every stage its bus message counts).  Labelled metrics show
    no series until a stage first sets them.
    """

    def __init__(self, stage: str, registry: CollectorRegistry):
        self.stage = stage
        self.registry = registry
        r = registry
        # scorer, per WAN
        self.confidence = Gauge(
            "wanctl_confidence_score", "Confidence score (0-100) of the last scored sample", ["wan"], registry=r
        )
        self.threshold = Gauge(
            "wanctl_effective_threshold", "Effective steer threshold (base + flap penalty)", ["wan"], registry=r
        )
        self.steering_state = Gauge(
            "wanctl_steering_state",
            "1 while the policy's state is DEGRADED (steering on), 0 while GOOD",
            ["wan", "policy", "driving"],
            registry=r,
        )
        self.decisions = Counter(
            "wanctl_decisions",
            "Decisions emitted, by policy and direction (enable/disable)",
            ["wan", "policy", "driving", "direction"],
            registry=r,
        )
        self.fallback_decisions = Counter(
            "wanctl_fallback_decisions",
            "Decisions made by the Phase 2A fallback because the confidence policy failed on a sample",
            ["wan"],
            registry=r,
        )
        self.flap_penalty_active = Gauge(
            "wanctl_flap_penalty_active", "1 while the flap penalty raises the threshold", ["wan"], registry=r
        )
        self.flap_brake_activations = Counter(
            "wanctl_flap_brake_activations", "Flap penalties started", ["wan"], registry=r
        )
        self.timer_expiries = Counter(
            "wanctl_timer_expiries",
            "Timers that ran to completion (degrade, hold_down, recovery, flap_penalty)",
            ["wan", "timer"],
            registry=r,
        )
        self.timer_resets = Counter(
            "wanctl_timer_resets",
            "Runs cleared before completion (degrade, recovery), including by gaps",
            ["wan", "timer"],
            registry=r,
        )
        self.rejected_samples = Counter(
            "wanctl_rejected_samples", "Telemetry samples rejected, by cause", ["wan", "cause"], registry=r
        )
        # collector / actuator: the router
        self.router_rtt = Histogram(
            "wanctl_router_request_seconds",
            "Round-trip time of RouterOS API commands",
            ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.router_errors = Counter(
            "wanctl_router_errors", "RouterOS API errors (traps, timeouts, socket errors)", ["operation"], registry=r
        )
        self.reconnects = Counter("wanctl_reconnects", "Reconnections, by peer", ["peer"], registry=r)
        self.wan_rtt = Gauge("wanctl_wan_rtt_ms", "Last measured RTT of the WAN path (ms)", ["wan"], registry=r)
        # collector: the rest of each WAN's last sample (NaN while the value is unknown)
        self.baseline_rtt = Gauge("wanctl_wan_baseline_rtt_ms", "Baseline (idle) RTT of the WAN path (ms)", ["wan"],
                                  registry=r)
        self.drops = Gauge("wanctl_wan_drops_per_second", "CAKE drops per second since the previous poll", ["wan"],
                           registry=r)
        self.queue_delay = Gauge("wanctl_wan_queue_delay_ms", "CAKE backlog as time (queued bytes / rate, ms)",
                                 ["wan"], registry=r)
        self.queue_depth = Gauge("wanctl_wan_queue_depth_pct", "CAKE queued packets as % of queue_capacity_packets",
                                 ["wan"], registry=r)
        self.loss = Gauge("wanctl_wan_loss_pct", "Share of the poll's probes that were lost (%)", ["wan"], registry=r)
        # actuator: what each actuation did
        self.actuations = Counter(
            "wanctl_actuations",
            "Actuations by result (applied, already, dry_run, failed)",
            ["wan", "result"],
            registry=r,
        )
        # scorer: shadows against the driving policy
        self.agreement_checks = Counter(
            "wanctl_policy_agreement_checks",
            "State publications at which a shadow policy's state was compared with the driving state",
            ["wan", "policy"],
            registry=r,
        )
        self.agreements = Counter(
            "wanctl_policy_agreements",
            "Of those, the ones where the shadow policy's state equalled the driving state",
            ["wan", "policy"],
            registry=r,
        )
        self.agrees = Gauge(
            "wanctl_policy_agrees", "1 while a shadow policy's state equals the driving state, else 0",
            ["wan", "policy"], registry=r,
        )
        # every stage: the bus
        self.bus_messages = Counter(
            "wanctl_bus_messages",
            "Bus messages by direction (sent/received) and kind",
            ["direction", "kind"],
            registry=r,
        )
        self.dropped_frames = Counter(
            "wanctl_dropped_frames", "Bus frames dropped (undecodable, gap, duplicate...)", ["reason"], registry=r
        )


class Health:
    """The health state and endpoint of one stage; thread-safe."""

    def __init__(self, stage: str, host: str = "127.0.0.1", port: int | None = 0, stale_after_s: float = 5.0,
                 allow_remote: bool = False):
        """``port=None`` keeps the bookkeeping but serves nothing; ``port=0`` binds a free port.

        A host other than loopback needs ``allow_remote`` (``health.allow_remote``): the endpoint has no
        authentication.
        """
        if not allow_remote and not is_loopback_host(host):
            raise ValueError(f"health endpoint of {stage}: host must be a loopback address unless "
                             f"health.allow_remote is true, got {host!r}")
        self.stage = stage
        self.host = host
        self.port = port
        self.stale_after_s = stale_after_s
        self.registry = CollectorRegistry()
        self.metrics = StageMetrics(stage, self.registry)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._started_wall = time.time()
        self._last_kind: str | None = None
        self._last_at: float | None = None
        self._seen_at: dict[str, float] = {}
        self._expected: dict[str, float] = {}
        self._conditions: dict[str, tuple[str, str]] = {}
        self._own: dict[str, int] = {}  # counts made through ``count``
        self._counter_sources: list[tuple[str, Callable[[], Mapping[str, int]]]] = [("stage", lambda: self._own)]
        self._condition_sources: list[tuple[str, Callable[[], Mapping[str, str]]]] = []
        self._details: dict[str, Any] = {}
        self._notes: dict[str, Any] = {}  # details that outlive ``set_details`` (``note``)
        self._wans: dict[str, dict[str, Any]] = {}
        self._fallbacks: dict[str, int] = {}
        self._rejected_synced: dict[str, int] = {}
        self._synced: dict[tuple[str, str], int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        Gauge("wanctl_up_seconds", "Seconds since the stage started", registry=self.registry).set_function(
            lambda: time.monotonic() - self._started
        )
        Gauge(
            "wanctl_health_status", "0 ok, 1 degraded, 2 failing", registry=self.registry
        ).set_function(lambda: _SEVERITY[self.snapshot()["status"]])
        Gauge(
            "wanctl_last_message_age_seconds",
            "Seconds since the stage last saw a message (NaN before the first)",
            registry=self.registry,
        ).set_function(self._last_age)
        self.registry.register(_CountsCollector(self))

    @classmethod
    def from_config(cls, cfg: Config, stage: str, name: str | None = None) -> Health:
        """The stage's endpoint as configured in ``health:``; a port of 0 serves nothing.

        ``name`` is what the health document calls the stage when it differs
        from its config entry (``actuator-noop`` serves on the actuator's port).
        """
        if stage not in STAGES:
            raise ValueError(f"health: unknown stage {stage!r}, expected one of {', '.join(STAGES)}")
        port = getattr(cfg.health, stage)
        return cls(name or stage, cfg.health.host, port or None, cfg.health.stale_after_s, cfg.health.allow_remote)

    @classmethod
    def for_stage(cls, cfg: Config, stage: str, name: str | None = None) -> Health:
        """``from_config(...).start()`` for a stage process: a port it cannot bind is logged, not fatal.

        Steering must not stop because a monitoring port is taken; the stage
        keeps its bookkeeping and ``wanctl-status`` shows it as unreachable.
        """
        health = cls.from_config(cfg, stage, name)
        try:
            return health.start()
        except OSError as error:
            log.error("%s (health.%s in the config); running without a health endpoint", error.strerror, stage)
            health.port = None
            return health

    # --- serving -------------------------------------------------------------

    def start(self) -> Health:
        """Bind and serve in a daemon thread; raises OSError naming the address if it is taken."""
        if self.port is None or self._server is not None:
            return self
        handler = type("HealthRequestHandler", (_HealthRequestHandler,), {"health": self})
        server_class = _IPv6Server if ":" in self.host else _IPv4Server
        try:
            self._server = server_class((self.host, self.port), handler)
        except OSError as error:
            raise OSError(
                error.errno, f"health endpoint of {self.stage}: cannot listen on {self.host}:{self.port}: {error.strerror}"
            ) from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"health-{self.stage}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._server = None
        self._thread = None

    @property
    def url(self) -> str | None:
        if self._server is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> Health:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the stage reports ------------------------------------------------

    def saw(self, kind: str, n: int = 1) -> None:
        """``n`` messages of ``kind`` arrived (from the bus, a router poll, a replay...)."""
        now = time.monotonic()
        with self._lock:
            self._last_kind = kind
            self._last_at = now
            self._seen_at[kind] = now
        self.metrics.bus_messages.labels(direction="received", kind=kind).inc(n)

    def sent(self, kind: str, n: int = 1) -> None:
        self.metrics.bus_messages.labels(direction="sent", kind=kind).inc(n)

    def expect(self, kind: str, max_age_s: float | None = None) -> None:
        """From now on, no ``kind`` for ``max_age_s`` (default ``stale_after_s``) makes the stage degraded.

        The clock starts now, so a stage that just started is not stale yet.
        """
        now = time.monotonic()
        with self._lock:
            self._expected[kind] = self.stale_after_s if max_age_s is None else max_age_s
            self._seen_at.setdefault(kind, now)

    def degrade(self, name: str, reason: str) -> None:
        """Raise (or update) the named condition at ``degraded``; ``reason`` is shown to operators."""
        with self._lock:
            self._conditions[name] = (DEGRADED, reason)

    def fail(self, name: str, reason: str) -> None:
        with self._lock:
            self._conditions[name] = (FAILING, reason)

    def clear(self, name: str) -> None:
        with self._lock:
            self._conditions.pop(name, None)

    # Labelled metrics only: the counters of the health document and the
    # heartbeat come from the stage's sources (``count_from``).

    def rejected(self, cause: str, wan: str = "") -> None:
        self.metrics.rejected_samples.labels(wan=wan, cause=cause).inc()

    def reconnected(self, peer: str) -> None:
        self.metrics.reconnects.labels(peer=peer).inc()

    def router_error(self, operation: str) -> None:
        self.metrics.router_errors.labels(operation=operation).inc()

    def dropped_frame(self, reason: str) -> None:
        self.metrics.dropped_frames.labels(reason=reason).inc()

    def router_request(self, operation: str, seconds: float, error: str | None = None) -> None:
        """One RouterOS API command (or login) took ``seconds``; ``error`` names how it failed, if it did."""
        self.metrics.router_rtt.labels(operation=operation).observe(seconds)
        if error is not None:
            self.router_error(operation)

    def sync_reconnects(self, peer: str, total: int) -> None:
        """Bring the reconnect counter for ``peer`` up to a running ``total`` (e.g. a router link's)."""
        delta = total - self._synced.get(("reconnects", peer), 0)
        if delta > 0:
            self.metrics.reconnects.labels(peer=peer).inc(delta)
            self._synced[("reconnects", peer)] = total

    def sync_dropped(self, totals: dict[str, int], reasons: tuple[str, ...] = DROP_REASONS) -> None:
        """Bring the dropped-frame counters up to running ``totals`` (a ``FrameDecoder``'s), for ``reasons``."""
        for reason in reasons:
            total = totals.get(reason, 0)
            delta = total - self._synced.get(("dropped", reason), 0)
            if delta > 0:
                self.metrics.dropped_frames.labels(reason=reason).inc(delta)
                self._synced[("dropped", reason)] = total

    def count(self, name: str, n: int = 1) -> None:
        """A counter of the stage's own (source ``stage``), e.g. ``decisions_written``."""
        with self._lock:
            self._own[name] = self._own.get(name, 0) + n

    def count_from(self, label: str, source: Mapping[str, int] | Callable[[], Mapping[str, int]]) -> None:
        """Add a flat ``{name: int}`` (or a callable returning one) to the stage's one counter namespace."""
        read = source if callable(source) else (lambda: source)
        with self._lock:
            self._counter_sources.append((label, read))

    def conditions_from(self, label: str, source: Callable[[], Mapping[str, str]], level: str = DEGRADED) -> None:
        """Add ``source() -> {condition: reason}`` (a core's ``conditions``) at ``level``."""
        if level not in (DEGRADED, FAILING):
            raise ValueError(f"health: a condition level is degraded or failing, got {level!r}")
        with self._lock:
            self._condition_sources.append((label, lambda: {n: (level, r) for n, r in source().items()}))

    def counters(self) -> dict[str, int]:
        """The stage's counters: every source's, in one flat namespace; a key defined twice raises ValueError."""
        with self._lock:
            sources = list(self._counter_sources)
        merged: dict[str, int] = {}
        owner: dict[str, str] = {}
        for label, read in sources:
            for name, value in dict(read()).items():
                if name in owner:
                    raise ValueError(f"health of {self.stage}: counter {name!r} is defined by both "
                                     f"{owner[name]!r} and {label!r}; one key must have one meaning")
                owner[name] = label
                merged[name] = int(value)
        return merged

    def set_details(self, details: dict[str, Any]) -> None:
        """Replace the stage's own ``details``; must be JSON-serialisable (``observe_state`` fills ``wans``)."""
        with self._lock:
            self._details = json.loads(json.dumps(details))

    def note(self, key: str, value: Any) -> None:
        """A ``details`` entry the stage's later ``set_details`` calls keep (e.g. what its files are bound to)."""
        with self._lock:
            self._notes[key] = json.loads(json.dumps(value))

    # --- the collector's and the actuator's facts, straight from their messages -----

    def observe_telemetry(self, sample: Telemetry) -> None:
        """A published sample as the WAN's gauges (an unknown value is NaN, so a graph shows a gap)."""
        m, wan = self.metrics, sample.wan
        for gauge, value in ((m.wan_rtt, sample.rtt_ms), (m.baseline_rtt, sample.baseline_rtt_ms),
                             (m.drops, sample.drops_per_sec), (m.queue_delay, sample.queue_delay_ms),
                             (m.queue_depth, sample.queue_depth_pct), (m.loss, sample.loss_pct)):
            if gauge is m.wan_rtt and value is None:
                continue  # the last measured RTT stays (its meaning since the first version)
            gauge.labels(wan=wan).set(math.nan if value is None else value)

    def observe_actuation(self, actuation: Actuation) -> None:
        self.metrics.actuations.labels(wan=actuation.wan, result=actuation.result).inc()

    # --- the scorer's facts, straight from its messages -----------------------

    def observe_agreement(self, wan: str, driving_state: str, shadows: Mapping[str, str]) -> None:
        """Compare each shadow policy's state with the driving one (the scorer calls this per state publication).

        Policy agreement is ``wanctl_policy_agreements / wanctl_policy_agreement_checks``: the share of
        state publications (at least one a second per WAN, and one after every decision) at which the
        shadow's state equalled the driving state, so close to the share of time they agreed.
        """
        m = self.metrics
        for policy, state in shadows.items():
            same = state == driving_state
            m.agreement_checks.labels(wan=wan, policy=policy).inc()
            if same:
                m.agreements.labels(wan=wan, policy=policy).inc()
            m.agrees.labels(wan=wan, policy=policy).set(same)

    def observe_decision(self, d: Decision) -> None:
        """Count a decision the stage emitted (or logged): by policy, direction and fallback."""
        m = self.metrics
        driving = "true" if d.driving else "false"
        direction = "enable" if d.decision == ENABLE else "disable"
        m.decisions.labels(wan=d.wan, policy=d.policy, driving=driving, direction=direction).inc()
        m.steering_state.labels(wan=d.wan, policy=d.policy, driving=driving).set(d.state == STEERING)
        if d.fallback:
            m.fallback_decisions.labels(wan=d.wan).inc()
            with self._lock:
                self._fallbacks[d.wan] = self._fallbacks.get(d.wan, 0) + 1

    def observe_state(self, state: State) -> None:
        """Take a WAN's published ``State`` as its gauges and its ``details["wans"]`` entry."""
        m = self.metrics
        m.confidence.labels(wan=state.wan).set(state.confidence)
        m.threshold.labels(wan=state.wan).set(state.threshold)
        m.flap_penalty_active.labels(wan=state.wan).set(state.flap_penalty)
        with self._lock:
            self._wans[state.wan] = scorer_wan_details(state, self._fallbacks.get(state.wan, 0))

    def sync_rejected(self, totals: dict[str, int], wan: str = "") -> None:
        """Bring the rejected-sample counters up to running ``totals`` by cause (e.g. the engine's)."""
        for cause, total in totals.items():
            delta = total - self._rejected_synced.get(cause, 0)
            if delta > 0:
                self.metrics.rejected_samples.labels(wan=wan, cause=cause).inc(delta)
            self._rejected_synced[cause] = max(total, self._rejected_synced.get(cause, 0))

    # --- reading -------------------------------------------------------------

    @property
    def status(self) -> str:
        """``ok``, ``degraded`` or ``failing``, as ``/health`` would say now (for the heartbeat)."""
        return self.snapshot()["status"]

    def snapshot(self) -> dict[str, Any]:
        """The health document served at ``/health``."""
        now = time.monotonic()
        counters = self.counters()
        with self._lock:
            sources = list(self._condition_sources)
        from_sources = {}
        for _, read in sources:
            from_sources.update(dict(read()))
        with self._lock:
            conditions = {**from_sources, **self._conditions}
            for kind, max_age in self._expected.items():
                age = now - self._seen_at[kind]
                if age > max_age:
                    conditions[f"stale_{kind}"] = (
                        DEGRADED,
                        f"no {kind} for {age:.1f} s (limit {max_age:g} s)",
                    )
            status = max((level for level, _ in conditions.values()), key=_SEVERITY.__getitem__, default=OK)
            last = None
            if self._last_at is not None:
                age = now - self._last_at
                last = {"kind": self._last_kind, "age_s": round(age, 3), "wall": round(time.time() - age, 3)}
            return {
                "stage": self.stage,
                "status": status,
                "reasons": {name: reason for name, (_, reason) in sorted(conditions.items())},
                "uptime_s": round(now - self._started, 3),
                "started_wall": round(self._started_wall, 3),
                "last_message": last,
                "counters": counters,
                "details": {**self._notes, **self._details,
                            **({"wans": json.loads(json.dumps(self._wans))} if self._wans else {})},
            }

    def _last_age(self) -> float:
        with self._lock:
            return math.nan if self._last_at is None else time.monotonic() - self._last_at


class _CountsCollector:
    """``wanctl_stage_count{name=...}``: the stage's counters, rendered from the same sources as ``/health``."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def describe(self):
        return []

    def collect(self):
        family = GaugeMetricFamily("wanctl_stage_count", "The stage's counters (as in /health and its heartbeat)",
                                   labels=["name"])
        for name, value in sorted(self.health.counters().items()):
            family.add_metric([name], value)
        yield family


class _IPv4Server(ThreadingHTTPServer):
    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on a wildcard or
        # non-loopback address without DNS; the name is never used.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port


class _IPv6Server(_IPv4Server):
    address_family = socket.AF_INET6


class _HealthRequestHandler(BaseHTTPRequestHandler):
    health: Health
    server_version = "wanctl-health"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/health":
            doc = self.health.snapshot()
            self._reply(200 if doc["status"] == OK else 503, "application/json", json.dumps(doc).encode())
        elif path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(self.health.registry))
        else:
            self._reply(404, "application/json", b'{"error": "not found: try /health or /metrics"}')

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Scrapes every few seconds would flood the stage's log.
        pass


def scorer_wan_details(state: State, fallbacks: int = 0) -> dict[str, Any]:
    """The scorer's per-WAN ``details`` entry, from the ``State`` it publishes for that WAN."""
    return {
        "state": state.desired,
        "policy": state.policy,
        "confidence": state.confidence,
        "threshold": state.threshold,
        "degrade_remaining_s": state.degrade_remaining_s,
        "hold_down_remaining_s": state.hold_down_remaining_s,
        "recovery_remaining_s": state.recovery_remaining_s,
        "flap_penalty": state.flap_penalty,
        "flap_penalty_remaining_s": state.flap_penalty_remaining_s,
        "decision_seq": state.decision_seq,
        "fallbacks": fallbacks,
    }


def fetch_health(url: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """GET ``url``/health; returns the document (any status code) or raises OSError/ValueError."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        body = error.read()
    doc = json.loads(body)
    if not isinstance(doc, dict) or "status" not in doc:
        raise ValueError(f"{url}/health: not a health document: {body[:80]!r}")
    return doc
