"""The flap brakes, sans-I/O: one implementation for the engine and ``wanctl-report``.

``record_toggle`` is SPEC section 5.5's window brake of the confidence policy;
``EnableCap`` is the quality policy's hard rolling cap (docs/scoring.md).
Times are the samples' ``t``; every comparison uses the tolerance ``TOL``.
"""

from __future__ import annotations

TOL = 1e-6


def record_toggle(
    toggles: list[float], t: float, window_s: float, max_toggles: int,
    penalty_until: float | None, penalty_s: float,
) -> float | None:
    """Record a toggle at ``t`` in ``toggles`` (mutated); return the new penalty
    deadline when this toggle starts a penalty, else None.

    Drop toggles at or before ``t - window_s``, append, keep at most
    ``max_toggles + 1``; when more than ``max_toggles`` are held and no penalty
    is active at ``t``, the penalty starts (deadline ``t + penalty_s``) and the
    window is emptied.
    """
    cutoff = t - window_s + TOL
    drop = 0
    while drop < len(toggles) and toggles[drop] <= cutoff:
        drop += 1
    del toggles[:drop]
    toggles.append(t)
    if len(toggles) > max_toggles + 1:
        del toggles[: len(toggles) - max_toggles - 1]
    if len(toggles) > max_toggles and not (penalty_until is not None and t < penalty_until - TOL):
        toggles.clear()
        return t + penalty_s
    return None


def enable_capped(enables: list[float], t: float, window_s: float, max_enables: int) -> bool:
    """The quality policy's cap: True when ``max_enables`` ENABLEs already lie
    within the last ``window_s`` before ``t`` (so no ENABLE may happen at ``t``).

    ``enables`` holds at most ``max_enables`` times, oldest first.  In any
    interval of length ``window_s`` at most ``max_enables`` ENABLEs happen, so
    at most ``2 * max_enables + 1`` toggles (each DISABLE follows an ENABLE).
    """
    return len(enables) >= max_enables and t - enables[0] < window_s - TOL


def record_enable(enables: list[float], t: float, max_enables: int) -> None:
    enables.append(t)
    if len(enables) > max_enables:
        del enables[: len(enables) - max_enables]
