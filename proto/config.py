"""The wanctl.yaml configuration: msgspec Structs with the defaults of SPEC section 4.

``load_config`` turns any problem into a ``ConfigError`` whose lines each name
the key path, the rule and the value, e.g.
``scorer.confidence.recovery_threshold: must be less than steer_threshold (55), got 60``.
Stage entry points catch it and exit with status 2 before opening any socket.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import msgspec
import yaml

from proto.messages import CAKE_STATES

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
Weight = Annotated[int, msgspec.Meta(ge=0, le=100)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
Count = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
CakeState = Literal["GREEN", "YELLOW", "SOFT_RED", "RED"]


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# --- scorer -----------------------------------------------------------------


class Assess(Section):
    rtt_ewma_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.3
    yellow_rtt_ms: NonNegative = 15.0
    soft_red_rtt_ms: NonNegative = 45.0
    red_rtt_ms: NonNegative = 15.0
    min_drops_red: NonNegative = 1.0
    min_queue_yellow_pct: NonNegative = 10.0
    min_queue_red_pct: NonNegative = 50.0


class Weights(Section):
    red_state: Weight = 50
    soft_red_sustained: Weight = 25
    yellow_state: Weight = 10
    rtt_delta_high: Weight = 15
    rtt_delta_severe: Weight = 25
    drops_increasing: Weight = 10
    queue_high_sustained: Weight = 10
    wan_red: Weight = 25
    wan_soft_red: Weight = 12


class Confidence(Section):
    steer_threshold: Percent = 55
    recovery_threshold: Percent = 20
    sustain_s: NonNegative = 2.0
    recovery_sustain_s: NonNegative = 3.0
    hold_down_s: NonNegative = 30.0
    rtt_delta_high_ms: NonNegative = 80.0
    rtt_delta_severe_ms: NonNegative = 120.0
    queue_high_pct: NonNegative = 50.0
    weights: Weights = msgspec.field(default_factory=Weights)


class Recovery(Section):
    allowed_states: list[CakeState] = msgspec.field(default_factory=lambda: ["GREEN"])
    max_rtt_delta_ms: NonNegative = 10.0
    max_drops_per_sec: NonNegative = 0.001


class Flap(Section):
    enabled: bool = True
    window_s: Positive = 300.0
    max_toggles: Count = 4
    penalty_s: Positive = 60.0
    penalty_threshold_add: Annotated[int, msgspec.Meta(ge=0)] = 15


class Hysteresis(Section):
    red_samples_required: Count = 2
    green_samples_required: Count = 15


PolicyName = Literal["quality", "confidence", "hysteresis"]
POLICIES: tuple[str, ...] = ("quality", "confidence", "hysteresis")  # also the shadows' emission order


class QualityFlap(Section):
    """The quality policy's flap brake: at most ``max_enables`` ENABLEs in any ``window_s``."""

    max_enables: Count = 4
    window_s: Positive = 3600.0


class Quality(Section):
    """The quality policy (docs/scoring.md has every rule)."""

    window_s: Positive = 4.0  # the steering window: bad share over the last window_s
    steer_share_pct: Annotated[int, msgspec.Meta(ge=1, le=100)] = 60  # bad share that steers
    min_samples: Count = 4  # measured samples the window needs before it can steer
    sustain_s: NonNegative = 2.5  # the oldest bad sample of the window is at least this old
    delay_bad_ms: NonNegative = 45.0  # excess delay that makes a sample bad
    delay_good_ms: NonNegative = 40.0  # excess delay below which a sample is good
    queue_bad_ms: NonNegative = 45.0  # queue delay that makes a sample bad
    queue_good_ms: NonNegative = 40.0  # queue delay below which a sample is good
    # The severe rule: less evidence when the delay is severe.
    delay_severe_ms: NonNegative = 120.0  # excess delay that makes a sample severe
    queue_severe_ms: NonNegative = 120.0  # queue delay that makes a sample severe
    severe_window_s: Positive = 2.0  # the severe window: severe share of the last severe_window_s
    severe_share_pct: Annotated[int, msgspec.Meta(ge=1, le=100)] = 60  # severe share that steers
    severe_min_samples: Count = 3  # measured samples the severe window needs
    severe_sustain_s: NonNegative = 1.0  # the oldest severe sample of that window is at least this old
    loss_bad_pct: Annotated[float, msgspec.Meta(gt=0, le=100)] = 50.0  # a poll losing this share of probes is lost
    hold_down_s: NonNegative = 20.0  # steered at least this long before recovery is judged
    recovery_window_s: Positive = 5.0  # the recovery window
    recovery_share_pct: Annotated[int, msgspec.Meta(ge=1, le=100)] = 80  # good share that recovers
    summary_window_s: Positive = 10.0  # per-WAN summary for the alternate check
    alternate_stale_s: Positive = 10.0  # an alternate unmeasured this long is stale
    alternate_down_loss_pct: Annotated[float, msgspec.Meta(gt=0, le=100)] = 50.0  # summary loss that means down
    alternate_margin_ms: NonNegative = 0.0  # the alternate is worse when its RTT p50 exceeds the primary's by more
    alternate_loss_margin_pct: Annotated[float, msgspec.Meta(ge=0, le=100)] = 20.0  # ... or its loss by more
    flap: QualityFlap = msgspec.field(default_factory=QualityFlap)


class Scorer(Section):
    policy: PolicyName = "quality"
    shadow: bool | list[PolicyName] = True
    max_gap_s: Positive = 5.0
    # Edge checks (docs/scoring.md, validation): a sample whose t jumps further
    # ahead of its stream's last t is rejected as implausible_t; without a `wans`
    # list at most max_wans WANs are kept (with `wans`, only those are scored).
    max_t_jump_s: Positive = 86400.0
    max_wans: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 1024
    assess: Assess = msgspec.field(default_factory=Assess)
    confidence: Confidence = msgspec.field(default_factory=Confidence)
    recovery: Recovery = msgspec.field(default_factory=Recovery)
    flap: Flap = msgspec.field(default_factory=Flap)
    hysteresis: Hysteresis = msgspec.field(default_factory=Hysteresis)
    quality: Quality = msgspec.field(default_factory=Quality)
    # Process settings (not used by the engine itself).
    state_path: str = "var/scorer-state.msgpack"
    journal_path: str = "var/scorer-journal.jsonl"
    persist_interval_s: Positive = 2.0
    state_interval_s: Positive = 1.0


# --- bus --------------------------------------------------------------------


class Bus(Section):
    """Endpoints of the XSUB/XPUB proxy and the scorer's journal-replay socket.

    ``ipc://`` paths are relative to ``run_dir`` when they hold no slash.
    ``tcp://`` endpoints require CURVE keys in ``keys_dir``.
    """

    run_dir: str = "var/run"
    publish: str = "ipc://pub.sock"  # publishers connect here (proxy XSUB side)
    subscribe: str = "ipc://sub.sock"  # subscribers connect here (proxy XPUB side)
    journal: str = "ipc://journal.sock"  # the scorer's ROUTER for replays
    keys_dir: str | None = None
    clients_dir: str | None = None  # allow-listed client public keys (default: <keys_dir>/authorized)
    linger_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 100  # stops never wait longer on unsent frames
    heartbeat_s: Positive = 1.0


# --- router, wans -----------------------------------------------------------


class Router(Section):
    """How to reach the RouterOS API (``/ip service`` api 8728, api-ssl 8729).

    With no ``host`` the built-in simulator is meant: 127.0.0.1 on ``port``
    (or 8728), user admin, password admin unless ``password_env`` names a set
    variable or ``password_file`` is given.  ``timeout_s`` bounds the whole
    reply of every command, ``max_reply_bytes`` and ``max_reply_sentences``
    its size; after any timeout, socket error or malformed or oversized reply
    the connection is discarded and a new one is made with exponential backoff
    from ``backoff_initial_s`` up to ``backoff_max_s`` (reset only by a command
    that succeeds).
    """

    host: str | None = None
    port: Port | None = None  # default 8728, or 8729 with tls
    username: str = "admin"
    password_env: str | None = "WANCTL_ROUTER_PASSWORD"
    password_file: str | None = None
    tls: bool = False  # api-ssl
    tls_ca: str | None = None  # CA bundle that signed the router's certificate (default: system CAs)
    tls_verify: bool = True  # verify the certificate and the host name
    connect_timeout_s: Positive = 3.0
    timeout_s: Positive = 3.0
    backoff_initial_s: Positive = 0.5
    backoff_max_s: Positive = 30.0
    max_reply_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 262144  # per command
    max_reply_sentences: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000  # per command


class Wan(Section):
    """One WAN: its CAKE queue in ``/queue/tree``, how to ping over it, its steering rule."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    queue: str  # exact name of the CAKE entry in /queue/tree
    queue_capacity_packets: Annotated[int, msgspec.Meta(ge=1)] = 1000  # 100 % queue depth
    ping_target: str = "1.1.1.1"
    ping_targets: list[str] = msgspec.field(default_factory=list)  # several probe targets (replaces ping_target)
    min_targets_lost: Annotated[int, msgspec.Meta(ge=1)] | None = None  # a probe is lost when this many targets fail (default: all)
    ping_count: Count = 1  # /ping count= (RouterOS pings forever without it)
    ping_interval_s: Annotated[float, msgspec.Meta(ge=0.01, le=5.0)] = 1.0  # /ping interval=; a probe unanswered within it is lost
    ping_routing_table: str | None = None  # /ping routing-table= : pin the probe to this WAN
    ping_interface: str | None = None  # /ping interface= : pin the probe to this WAN
    rule_comment: str = ""  # exact comment of the mangle rule that steers this WAN's traffic away
    interval_s: Positive = 0.5  # poll period
    autorate_state_file: str | None = None  # baseline RTT and wan_zone from autorate
    rate_mbps: Annotated[float, msgspec.Meta(gt=0, le=1e6)] | None = None  # queue rate when its max-limit is unset
    alternate: str | None = None  # the WAN this WAN's steered traffic goes to (the quality policy's do-no-harm check)
    dry_run: bool | None = None  # this WAN only: true never writes its rule, false drives it; null: actuator.dry_run


class Collector(Section):
    """Telemetry polling.  Baseline RTT: an estimator that moves toward a lower
    RTT with ``baseline_down_alpha`` and toward a higher one with only
    ``baseline_up_alpha`` per sample, so congestion does not drag it up; or the
    WAN's autorate state file (``ewma.baseline_rtt``, ``congestion.dl_state``)
    when it is younger than ``autorate_max_age_s``."""

    rtt_probe: Literal["router", "local"] = "router"  # router: /ping on the router; local: ICMP from this host
    baseline_down_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    baseline_up_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.002
    autorate_max_age_s: Positive = 10.0
    # The own baseline survives restarts in this file and stands still (does not rise) while the
    # path is congested: RTT more than baseline_freeze_rtt_ms over it, or queue delay above
    # baseline_freeze_queue_ms.
    state_path: str = "var/collector-state.json"
    state_interval_s: Positive = 60.0
    baseline_freeze_rtt_ms: Positive = 20.0
    baseline_freeze_queue_ms: Positive = 5.0


class Actuator(Section):
    """Driving each WAN's mangle rule toward the desired state.

    ``dry_run`` is the default of every WAN (``wans[].dry_run`` overrides it).
    ``on_stop``: ``release`` disables every live WAN's rule on a clean stop
    (within ``release_timeout_s``), ``keep`` leaves it as it is.  ``lease_s``:
    while a live WAN steers, the actuator keeps the router's address-list entry
    ``wanctl-lease-<wan>`` (``lease_address``) alive with ``timeout=lease_s``,
    renewed every ``lease_s / 3``; the steering rule requires that list, so when
    no actuator renews it the router stops steering new connections by itself.
    ``lease_s: 0`` turns the lease off (for a rule without ``src-address-list``).
    """

    dry_run: bool = False  # read, report dry_run, never write
    verify_retries: Annotated[int, msgspec.Meta(ge=0)] = 3  # extra set+read-back rounds before `failed`
    verify_delay_s: NonNegative = 0.05  # pause before each retry
    drift_check_s: Positive = 10.0  # re-read every rule this often; re-assert if changed behind our back
    on_stop: Literal["release", "keep"] = "release"  # a clean stop disables every live WAN's rule, or keeps it
    release_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=4.0)] = 2.0  # deadline of the release on stop
    lease_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 60.0  # router-side dead-man lease; 0: none
    lease_address: str = "0.0.0.0/0"  # the lease entry's address: 0.0.0.0/0, or the LAN subnet


class Logger(Section):
    path: str = "var/decisions.jsonl"
    fsync: Literal["always", "interval", "never"] = "always"
    fsync_interval_s: Positive = 1.0
    rotate_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: never rotate
    rotate_keep: Annotated[int, msgspec.Meta(ge=1)] = 5


class Health(Section):
    """Each stage's HTTP endpoint: GET /health (JSON) and GET /metrics (Prometheus).

    A port of 0 disables that stage's endpoint.  ``host`` is a loopback address
    unless ``allow_remote`` is true: the endpoints have no authentication and
    no TLS, so anyone who can reach them reads the pipeline's state (the
    router's address, WAN names, rule comments, decisions); bind them to a
    management address and firewall them.
    """

    host: str = "127.0.0.1"
    allow_remote: bool = False  # true: host may be any address (e.g. 0.0.0.0 for a remote Prometheus)
    bus: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9461
    collector: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9462
    scorer: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9463
    actuator: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    logger: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9465
    stale_after_s: Positive = 5.0  # no expected input for this long: degraded


class Notify(Section):
    """Webhook notifications from the scorer: one JSON POST per driving decision and per flap-brake
    activation, sent from a background thread through a bounded queue (a full queue drops, never waits),
    each retried with exponential backoff from ``backoff_initial_s`` up to ``backoff_max_s``."""

    webhook_url: str | None = None  # http:// or https://; unset: no notifications
    timeout_s: Positive = 5.0  # per POST
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5  # after the first attempt
    backoff_initial_s: Positive = 1.0
    backoff_max_s: Positive = 60.0
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100


class Config(Section):
    scorer: Scorer = msgspec.field(default_factory=Scorer)
    bus: Bus = msgspec.field(default_factory=Bus)
    router: Router = msgspec.field(default_factory=Router)
    wans: list[Wan] = msgspec.field(default_factory=list)
    collector: Collector = msgspec.field(default_factory=Collector)
    actuator: Actuator = msgspec.field(default_factory=Actuator)
    logger: Logger = msgspec.field(default_factory=Logger)
    health: Health = msgspec.field(default_factory=Health)
    notify: Notify = msgspec.field(default_factory=Notify)
    # Directory relative paths in the file resolve against (the file's own).
    base_dir: str = "."


MAX_PROBLEM_CHARS = 300  # each problem line is cut to this (a config is never echoed whole)


def _cap(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """``text`` on one printable line of at most ``limit`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 15] + " ...(truncated)"


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is one line per problem, each at most
    ``MAX_PROBLEM_CHARS`` long and encodable as UTF-8."""

    def __init__(self, problems: list[str]):
        self.problems = [_cap(str(p)) for p in problems] or ["(top level): invalid config"]
        super().__init__("\n".join(self.problems))


# --- loading ----------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]+)`")
_EXPECTED = re.compile(r"^Expected `(?P<type>[^`]+)`(?P<rule>.*?)(?:, got `(?P<got>[^`]+)`)?$")


def _lookup(raw: Any, path: str) -> Any:
    """The raw value at a msgspec path like ``.scorer.wans[0].name``."""
    if not path:
        return None
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        try:
            raw = raw[key] if key else raw[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _describe(error: msgspec.ValidationError, raw: Any) -> str:
    match = _AT.match(str(error))
    msg, path = match["msg"], match["path"] or ""
    unknown = _UNKNOWN.match(msg)
    if unknown:
        key = (path + "." + unknown["key"]).lstrip(".")
        return f"{key}: unknown key"
    dotted = path.lstrip(".") or "(top level)"
    expected = _EXPECTED.match(msg)
    if expected:
        rule = expected["rule"].strip()
        if rule:
            msg = f"must be {rule}" if rule[0] in "<>=" else f"must be {expected['type']} {rule}"
        else:
            msg = f"must be of type {expected['type']}"
    elif msg.startswith("Invalid enum value"):
        msg = "must be one of " + ", ".join(CAKE_STATES) if "allowed_states" in path else "invalid value"
    elif msg.startswith("Object missing required field"):
        missing = re.search(r"`([^`]+)`", msg)
        key = (path + "." + missing[1]).lstrip(".") if missing else dotted
        return f"{key}: required key is missing"
    return f"{dotted}: {msg}, got {_value_text(_lookup(raw, path))}"


def _value_text(value: Any, limit: int = 80) -> str:
    """A bounded ``repr`` of a config value for an error message."""
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'} of {len(value)} entries"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cross_field_problems(cfg: Config) -> list[str]:
    problems: list[str] = []
    s = cfg.scorer
    c = s.confidence
    if not c.recovery_threshold < c.steer_threshold:
        problems.append(
            "scorer.confidence.recovery_threshold: must be less than steer_threshold "
            f"({c.steer_threshold}), got {c.recovery_threshold}"
        )
    if not s.assess.yellow_rtt_ms <= s.assess.soft_red_rtt_ms:
        problems.append(
            "scorer.assess.yellow_rtt_ms: must be at most soft_red_rtt_ms "
            f"({s.assess.soft_red_rtt_ms}), got {s.assess.yellow_rtt_ms}"
        )
    if not c.rtt_delta_high_ms < c.rtt_delta_severe_ms:
        problems.append(
            "scorer.confidence.rtt_delta_high_ms: must be less than rtt_delta_severe_ms "
            f"({c.rtt_delta_severe_ms}), got {c.rtt_delta_high_ms}"
        )
    if not s.recovery.allowed_states:
        problems.append("scorer.recovery.allowed_states: must name at least one state, got []")
    if len(set(s.recovery.allowed_states)) != len(s.recovery.allowed_states):
        problems.append(
            f"scorer.recovery.allowed_states: must not repeat a state, got {s.recovery.allowed_states}"
        )
    if isinstance(s.shadow, list):
        for name in s.shadow:
            if name == s.policy:
                problems.append(f"scorer.shadow: must not name the driving policy ({s.policy}), got {s.shadow}")
        if len(set(s.shadow)) != len(s.shadow):
            problems.append(f"scorer.shadow: must not repeat a policy, got {s.shadow}")
    q = s.quality
    if not q.delay_good_ms <= q.delay_bad_ms:
        problems.append(f"scorer.quality.delay_good_ms: must be at most delay_bad_ms ({q.delay_bad_ms}), "
                        f"got {q.delay_good_ms}")
    if not q.queue_good_ms <= q.queue_bad_ms:
        problems.append(f"scorer.quality.queue_good_ms: must be at most queue_bad_ms ({q.queue_bad_ms}), "
                        f"got {q.queue_good_ms}")
    if not q.delay_bad_ms <= q.delay_severe_ms:
        problems.append(f"scorer.quality.delay_severe_ms: must be at least delay_bad_ms ({q.delay_bad_ms}), "
                        f"got {q.delay_severe_ms}")
    if not q.queue_bad_ms <= q.queue_severe_ms:
        problems.append(f"scorer.quality.queue_severe_ms: must be at least queue_bad_ms ({q.queue_bad_ms}), "
                        f"got {q.queue_severe_ms}")
    names = [w.name for w in cfg.wans]
    for i, wan in enumerate(cfg.wans):
        if wan.alternate is not None and (wan.alternate == wan.name or wan.alternate not in names):
            problems.append(f"wans[{i}].alternate: must name another configured WAN, got {wan.alternate!r}")
    lease_s = cfg.actuator.lease_s
    if 0 < lease_s < 1.5:
        problems.append(f"actuator.lease_s: must be 0 (no lease) or at least 1.5 s, got {lease_s}")
    try:
        lease_v4 = ipaddress.ip_network(cfg.actuator.lease_address, strict=False).version == 4
    except ValueError:
        lease_v4 = False
    if not lease_v4:
        problems.append(f"actuator.lease_address: must be an IPv4 address or subnet, got {cfg.actuator.lease_address!r}")
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(f"wans[{i}].name: must be unique, got {name!r} twice")
    comments = [w.rule_comment for w in cfg.wans if w.rule_comment]
    for i, wan in enumerate(cfg.wans):
        if wan.rule_comment and comments.count(wan.rule_comment) > 1:
            problems.append(f"wans[{i}].rule_comment: must be unique per WAN, got {wan.rule_comment!r}")
    for i, wan in enumerate(cfg.wans):
        targets = wan.ping_targets or [wan.ping_target]
        if len(targets) > 16 or any(not t or len(t) > 253 for t in targets):
            problems.append(f"wans[{i}].ping_targets: must be 1 to 16 host names or addresses, got {len(targets)}")
        if wan.min_targets_lost is not None and wan.min_targets_lost > len(targets):
            problems.append(f"wans[{i}].min_targets_lost: must be at most the number of ping targets "
                            f"({len(targets)}), got {wan.min_targets_lost}")
    if cfg.router.backoff_initial_s > cfg.router.backoff_max_s:
        problems.append(
            f"router.backoff_initial_s: must be at most backoff_max_s ({cfg.router.backoff_max_s}), "
            f"got {cfg.router.backoff_initial_s}"
        )
    url = cfg.notify.webhook_url
    if url is not None and not re.match(r"^https?://[^/\s]+", url):
        problems.append(f"notify.webhook_url: must be an http:// or https:// URL, got {url!r}")
    if cfg.notify.backoff_initial_s > cfg.notify.backoff_max_s:
        problems.append(f"notify.backoff_initial_s: must be at most backoff_max_s ({cfg.notify.backoff_max_s}), "
                        f"got {cfg.notify.backoff_initial_s}")
    if not cfg.health.allow_remote and not is_loopback_host(cfg.health.host):
        problems.append(
            f"health.host: must be a loopback address (127.0.0.1, ::1 or localhost) unless "
            f"health.allow_remote is true, got {cfg.health.host!r}"
        )
    return problems


# Paths in a config: (key path, value, what the path must be).
_FILE, _DIR = "file", "directory"


def _config_paths(cfg: Config) -> list[tuple[str, str | None, str]]:
    paths = [
        ("scorer.state_path", cfg.scorer.state_path, _FILE),
        ("scorer.journal_path", cfg.scorer.journal_path, _FILE),
        ("bus.run_dir", cfg.bus.run_dir, _DIR),
        ("bus.keys_dir", cfg.bus.keys_dir, _DIR),
        ("bus.clients_dir", cfg.bus.clients_dir, _DIR),
        ("router.password_file", cfg.router.password_file, _FILE),
        ("router.tls_ca", cfg.router.tls_ca, _FILE),
        ("collector.state_path", cfg.collector.state_path, _FILE),
        ("logger.path", cfg.logger.path, _FILE),
    ]
    paths += [(f"wans[{i}].autorate_state_file", w.autorate_state_file, _FILE) for i, w in enumerate(cfg.wans)]
    return paths


def _path_problems(cfg: Config) -> list[str]:
    """Paths the OS could not take: empty, a NUL byte, too long, ``~user`` of no user."""
    problems = []
    for key, value, _ in _config_paths(cfg):
        if value is None:
            continue
        if not value:
            problems.append(f"{key}: must be a non-empty path, got ''")
        elif "\0" in value:
            problems.append(f"{key}: must not contain a NUL byte, got {_value_text(value)}")
        elif len(value.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
            problems.append(f"{key}: must be at most {MAX_PATH_BYTES} bytes long, got {len(value)} characters")
        elif value.startswith("~"):
            try:
                Path(value).expanduser()
            except RuntimeError:
                problems.append(f"{key}: names a home directory that does not exist, got {_value_text(value)}")
    return problems


def _filesystem_problems(cfg: Config) -> list[str]:
    """Paths that exist as the wrong kind of thing (a directory or a device where a file is expected)."""
    problems = []
    for key, value, kind in _config_paths(cfg):
        if value is None:
            continue
        try:
            p = resolve_path(cfg, value)
            info = p.stat()
        except FileNotFoundError:
            continue
        except (OSError, ValueError, RuntimeError) as error:
            if isinstance(error, NotADirectoryError):
                problems.append(f"{key}: a parent of {_value_text(value)} is not a directory")
            elif not isinstance(error, OSError) or error.errno not in (None, 0):
                problems.append(f"{key}: cannot use {_value_text(value)}: {_os_reason(error)}")
            continue
        if kind == _FILE and stat.S_ISDIR(info.st_mode):
            problems.append(f"{key}: must be a file, got the directory {_value_text(value)}")
        elif kind == _FILE and not stat.S_ISREG(info.st_mode):
            problems.append(f"{key}: must be a regular file, got {_value_text(value)} (a device, FIFO or socket)")
        elif kind == _DIR and not stat.S_ISDIR(info.st_mode):
            problems.append(f"{key}: must be a directory, got {_value_text(value)} which is not one")
    return problems


MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is refused unread
MAX_DEPTH = 32  # nesting of mappings and lists in a config
MAX_NODES = 20_000  # values in a config, aliases expanded
MAX_ALIASES = 100  # YAML alias uses (*name) in a config
MAX_PATH_BYTES = 4096
MAX_PASSWORD_BYTES = 4096  # router.password_file
MAX_CA_BYTES = 4 << 20  # router.tls_ca


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses deep nesting and many aliases while it
    composes, before anything recursive or exponential can run."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name)", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml_load(text: str, where: str) -> Any:
    """Parse one YAML document with ``_Loader``; any problem is a ConfigError."""
    loader = None
    try:
        loader = _Loader(text)
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError([f"{where}: not valid YAML: {_yaml_problem(error)}"]) from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as error:
        raise ConfigError([f"{where}: not valid YAML: {type(error).__name__}: {error}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What a YAML error says, and where, on one line (never a snippet of the file)."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{' '.join(filter(None, [error.context, error.problem])) or 'invalid'}{where}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _check_tree(raw: Any) -> None:
    """Raise ConfigError unless ``raw`` is a tree a config can be: string keys,
    strings UTF-8 can encode, finite numbers, at most ``MAX_DEPTH`` deep and ``MAX_NODES``
    values counting each alias use again (so an alias bomb stops here)."""
    stack: list[tuple[Any, str, int]] = [(raw, "", 0)]
    nodes = 0
    while stack:
        value, path, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError([f"(top level): must have at most {MAX_NODES} values (aliases expanded)"])
        if depth > MAX_DEPTH:
            raise ConfigError([f"{path or '(top level)'}: must be nested at most {MAX_DEPTH} levels deep"])
        if isinstance(value, str):
            _check_text(value, path or "(top level)")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError([f"{path or '(top level)'}: must be a finite number, got {value!r}"])
        elif isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    where = path or "(top level)"
                    raise ConfigError([f"{where}: keys must be strings, got {type(key).__name__} key "
                                       f"{_value_text(key)}"])
                _check_text(key, f"{path}.{key!a}".lstrip(".") if path else f"{key!a}")
                stack.append((child, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, (list, tuple, set, frozenset)):
            for i, child in enumerate(value):
                stack.append((child, f"{path}[{i}]", depth + 1))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConfigError([f"{path}: must be valid Unicode text, got a lone surrogate "
                           f"{text[error.start]!a} at character {error.start}"]) from None


def parse_config(raw: Any, base_dir: str = ".") -> Config:
    """Validate an already-parsed YAML document (``None`` counts as ``{}``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): must be a mapping, got {type(raw).__name__}"])
    if "base_dir" in raw:
        raise ConfigError(["base_dir: unknown key"])
    _check_tree(raw)
    try:
        cfg = msgspec.convert({**raw, "base_dir": base_dir}, Config)
    except msgspec.ValidationError as error:
        raise ConfigError([_describe(error, raw)]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        raise ConfigError([f"(top level): cannot be read as a config: {type(error).__name__}: {error}"]) from None
    problems = _cross_field_problems(cfg) + _path_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def read_small_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or OSError.

    Opened non-blocking (a FIFO never blocks), checked to be a regular file
    with ``fstat`` (not a directory, a device like ``/dev/zero``, a socket),
    and read with a cap, so no file can hang or exhaust the reader.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise OSError(0, f"is {kind}")
        if info.st_size > limit:
            raise OSError(0, f"is larger than {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(0, f"is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _os_reason(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Read and validate ``wanctl.yaml``; ``None`` gives the all-defaults config.

    ``overrides`` are ``key.path=value`` assignments applied before validation.
    Every problem, whatever the file holds (binary, deeply nested, an alias
    bomb, a FIFO), is a ``ConfigError`` with bounded lines.
    """
    if path is None:
        raw: dict = {}
        for assignment in overrides:
            apply_override(raw, assignment)
        return parse_config(raw, ".")
    shown = str(path)[:200]
    try:
        path = Path(path)
        data = read_small_file(path, MAX_CONFIG_BYTES)
        base_dir = str(path.resolve().parent)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError([f"{shown}: cannot read config: {_os_reason(error)}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([f"{shown}: must be UTF-8 text, got byte 0x{data[error.start]:02x} "
                           f"at offset {error.start}"]) from None
    raw = _yaml_load(text, shown)
    if overrides:
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError([f"(top level): must be a mapping, got {type(raw).__name__}"])
        for assignment in overrides:
            apply_override(raw, assignment)
    cfg = _per_config_var(parse_config(raw, base_dir), path)
    problems = _filesystem_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


# The files a config's pipeline writes, with the built-in defaults under var/.
_VAR_PATHS = (("scorer", "state_path"), ("scorer", "journal_path"), ("bus", "run_dir"), ("logger", "path"))


def var_dir(path: str | os.PathLike) -> str:
    """The default directory for what the pipeline of the config at ``path``
    writes: ``var/<config file stem>`` (``var/wanctl.sim`` for
    ``wanctl.sim.yaml``), relative to the config file's directory."""
    return f"var/{Path(path).stem}"


def _per_config_var(cfg: Config, path: Path) -> Config:
    """Put the built-in ``var/...`` paths (omitted, or written out as in the
    example) under ``var/<config stem>/``, so two configs (the simulator's and
    a real router's) never share a state file, a journal or a decision log."""
    defaults = Config()
    sections = {}
    for section, key in _VAR_PATHS:
        default = getattr(getattr(defaults, section), key)
        if getattr(getattr(cfg, section), key) == default:
            moved = f"{var_dir(path)}/{default.removeprefix('var/')}"
            sections.setdefault(section, {})[key] = moved
    replaced = {name: msgspec.structs.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return msgspec.structs.replace(cfg, **replaced)


def config_or_exit(prog: str, path: str | os.PathLike | None, overrides: list[str] = (),
                   check: Callable[[Config], None] | None = None) -> Config:
    """``load_config`` (and ``check``) for a command line: on a problem, print
    each as ``<prog>: config error: ...`` and exit with status 2."""
    try:
        cfg = load_config(path, overrides)
        if check is not None:
            check(cfg)
    except ConfigError as error:
        for problem in error.problems:
            print(f"{prog}: config error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg


def require_wans(cfg: Config, who: str) -> None:
    """A command that works on the WANs (a stage that talks to the router, the router set-up
    script and check) needs at least one."""
    if not cfg.wans:
        raise ConfigError([f"wans: the {who} needs at least one WAN, got []"])


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a raw config mapping."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError([f"{assignment}: override must look like key.path=value"])
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"{key}: {part} is not a section"])
        node = child
    node[leaf] = _yaml_load(value, key.strip())


def resolve_path(cfg: Config, path: str) -> Path:
    """A path from the config, relative ones taken from the config file's directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(cfg.base_dir) / p


def router_address(cfg: Config) -> tuple[str, int]:
    """Host and port of the RouterOS API; no host means the built-in simulator on 127.0.0.1."""
    r = cfg.router
    return (r.host or "127.0.0.1", r.port or (8729 if r.tls else 8728))


def router_password(cfg: Config) -> str:
    """The router password from the file or environment variable the config names.

    With no ``router.host`` (the built-in simulator) and neither set, it is
    ``admin``, the simulator's default.  The password never lives in the YAML
    and is never put in an error message.
    """
    r = cfg.router
    if r.password_file:
        shown = _value_text(r.password_file)
        try:
            data = read_small_file(resolve_path(cfg, r.password_file), MAX_PASSWORD_BYTES)
        except (OSError, ValueError, RuntimeError) as error:
            raise ConfigError([f"router.password_file: cannot read {shown}: {_os_reason(error)}"]) from None
        try:
            password = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError([f"router.password_file: {shown} must hold UTF-8 text (it is binary)"]) from None
        if not password or any(ord(c) < 32 or ord(c) == 127 for c in password):
            raise ConfigError([f"router.password_file: {shown} must hold one line of printable text "
                               "(empty, or control characters found)"])
        return password
    if r.password_env:
        value = os.environ.get(r.password_env)
        if value is not None:
            return value
    if r.host is None:
        return "admin"
    if r.password_env:
        raise ConfigError(
            ["router.password_env: no router password: set the environment variable "
             f"{r.password_env!r} or router.password_file"]
        )
    raise ConfigError(["router.password_env: no router password: name a variable in router.password_env "
                       "or a file in router.password_file"])


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (the health endpoints serve nowhere else)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_cake_state(value: str) -> bool:
    return value in CAKE_STATES
