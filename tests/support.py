"""What every real-process test needs: waiting with deadlines, free ports, telemetry samples."""

from __future__ import annotations

import socket
import time
from typing import Callable, TypeVar

from proto.messages import Telemetry

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 5.0, what: str | Callable[[], str] = "",
             interval: float = 0.02) -> T:
    """Poll ``condition()`` until it returns something truthy and return that;
    fail naming ``what`` once ``timeout`` seconds have passed.

    ``what`` may be a callable: it is called only at the failure, so the
    message shows the content as it is then (a log, a file, a status), not
    as it was when the wait began.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            message = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message or condition}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- samples -------------------------------------------------------------------


def congested(seq: int, t: float, wan: str = "wan1") -> Telemetry:
    return Telemetry(wan=wan, seq=seq, stream="test", t=t, wall=time.time(), rtt_ms=212.0,
                     baseline_rtt_ms=12.0, drops_per_sec=30.0, queue_depth_pct=80.0, cake_state="RED")


def idle(seq: int, t: float, wan: str = "wan1") -> Telemetry:
    return Telemetry(wan=wan, seq=seq, stream="test", t=t, wall=time.time(), rtt_ms=12.0,
                     baseline_rtt_ms=12.0, drops_per_sec=0.0, queue_depth_pct=0.0, cake_state="GREEN")


INSTANT = {  # every congested sample enables, every idle one disables
    "policy": "confidence",
    "shadow": False,
    "confidence": {"sustain_s": 0, "recovery_sustain_s": 0, "hold_down_s": 0},
    "flap": {"enabled": False},
}
