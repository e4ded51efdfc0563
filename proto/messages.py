"""Every message that crosses the bus, as msgspec Structs tagged on ``kind``.

The wire format is msgpack; the same Structs encode to JSON for files and the
tap.  Field names are the JSON names of SPEC section 3.
"""

from __future__ import annotations

from typing import Literal

import msgspec

SCHEMA_VERSION = 1

GOOD = "GOOD"
DEGRADED = "DEGRADED"
ENABLE = "ENABLE_STEERING"
DISABLE = "DISABLE_STEERING"
CAKE_STATES = ("GREEN", "YELLOW", "SOFT_RED", "RED")
RTT_STATUSES = ("ok", "lost", "unavailable")

SteeringState = Literal["GOOD", "DEGRADED"]
Direction = Literal["ENABLE_STEERING", "DISABLE_STEERING"]
ActuationResult = Literal["applied", "already", "dry_run", "failed"]
HealthStatus = Literal["ok", "degraded", "failing"]


class Envelope(msgspec.Struct, tag_field="kind", kw_only=True, gc=False):
    """The base of every bus message: tagged on ``kind``, keyword-only, no GC tracking.

    Each message declares the envelope fields ``v``, ``source`` and ``epoch``
    itself, after its own fields: msgspec encodes fields in declaration order
    (a base class's first), and the JSON lines of decisions are compared byte
    for byte, so their order is part of the format.
    """


class Telemetry(Envelope, tag="telemetry"):
    """One sample of one WAN; ``t`` is the collector host's monotonic clock."""

    wan: str
    seq: int
    stream: str
    t: float
    wall: float
    v: int = SCHEMA_VERSION
    source: str = "collector"
    epoch: int = 0
    rtt_ms: float | None = None
    baseline_rtt_ms: float | None = None
    drops_per_sec: float | None = None
    queue_depth_pct: float | None = None
    wan_zone: str | None = None
    cake_state: str | None = None
    steering_active: bool | None = None
    queue_delay_ms: float | None = None  # the CAKE backlog as time
    rtt_status: str | None = None  # ok | lost | unavailable; null: ok when rtt_ms is set, else unavailable
    loss_pct: float | None = None  # share of the poll's probes that were lost


class Decision(Envelope, tag="decision"):
    """A state change of one policy for one WAN; ``seq`` numbers all decisions."""

    seq: int
    wan: str
    t: float
    wall: float
    telemetry_seq: int
    policy: str
    driving: bool
    fallback: bool
    decision: Direction
    state: SteeringState
    confidence: int
    threshold: int
    flap_penalty: bool
    contributors: list[str]
    sustained_s: float
    v: int = SCHEMA_VERSION
    source: str = "scorer"
    epoch: int = 0


class State(Envelope, tag="state"):
    """The desired steering state of one WAN, re-published at least once a second."""

    wan: str
    seq: int
    desired: SteeringState
    decision_seq: int
    confidence: int
    threshold: int
    flap_penalty: bool
    degrade_remaining_s: float | None = None
    hold_down_remaining_s: float | None = None
    recovery_remaining_s: float | None = None
    flap_penalty_remaining_s: float | None = None
    policy: str = "confidence"
    t: float | None = None
    v: int = SCHEMA_VERSION
    source: str = "scorer"
    epoch: int = 0


class Actuation(Envelope, tag="actuation"):
    """What the actuator did to drive one WAN's mangle rule toward ``desired``."""

    wan: str
    seq: int
    desired: SteeringState
    observed: SteeringState | None
    result: ActuationResult
    error: str | None
    decision_seq: int
    v: int = SCHEMA_VERSION
    source: str = "actuator"
    epoch: int = 0


class Heartbeat(Envelope, tag="heartbeat"):
    """Once a second from every stage: it is alive, and what it has counted."""

    stage: str
    seq: int
    status: HealthStatus = "ok"
    uptime_s: float = 0.0
    counters: dict[str, int] = {}
    v: int = SCHEMA_VERSION
    source: str = ""
    epoch: int = 0


Message = Telemetry | Decision | State | Actuation | Heartbeat
KINDS = ("telemetry", "decision", "state", "actuation", "heartbeat")

_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Message)
_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(Message)


def to_msgpack(message: Message) -> bytes:
    return _msgpack_encoder.encode(message)


def from_msgpack(data: bytes) -> Message:
    """Decode a bus frame; raises msgspec.DecodeError/ValidationError on junk."""
    return _msgpack_decoder.decode(data)


def to_json(message: Message) -> bytes:
    return _json_encoder.encode(message)


def from_json(data: bytes | str) -> Message:
    return _json_decoder.decode(data)


def topic(message: Message) -> bytes:
    """The bus topic: ``<kind>.<wan>`` or ``heartbeat.<stage>``."""
    if isinstance(message, Heartbeat):
        return f"heartbeat.{message.stage}".encode()
    return f"{type(message).__struct_config__.tag}.{message.wan}".encode()


# --- the scorer's journal socket (logger DEALER -> scorer ROUTER), msgpack -----

REPLAY_LIMIT = 500  # decisions per replay reply


class ReplayRequest(msgspec.Struct):
    """Logger -> scorer journal socket (DEALER -> ROUTER), msgpack."""

    after: int
    limit: int = REPLAY_LIMIT


class ReplayReply(msgspec.Struct):
    """Scorer -> logger: journal lines after ``after``, at most ``limit`` of them."""

    last_seq: int  # the journal's last seq: ask again while behind it
    lines: list[bytes]  # Decision JSON lines with seq > after, in seq order
