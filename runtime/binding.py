"""The pipeline's files belong to one router and one WAN set (the scorer's state, journal; the decisions).

The state file, the decision journal and the logger's decision file are bound
to the router (host and port) and the WANs (name, queue, rule comment, sorted
by name) they were written for: a fingerprint of those is kept beside the
state file (``<state_path>.router.json``).  When a stage starts with a config
whose fingerprint differs, the old files are renamed aside with a timestamp
suffix (``scorer-state.msgpack.20261207T212400Z``) and the pipeline starts
fresh (every WAN GOOD, decision seq 1), so a demo's DEGRADED state never
reaches a real router and one decision file never mixes two routers.

Files written before fingerprints existed (state present, no fingerprint) are
adopted as they are: nothing says they belong to another router.

The scorer and the logger both call ``bind`` before they open their files;
an exclusive lock beside the fingerprint makes the first one do the move and
the second one find the fingerprint already current.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proto.config import Config, resolve_path, router_address
from runtime.storage import write_atomic

log = logging.getLogger("wanctl.binding")

SUFFIX = ".router.json"


def describe(cfg: Config) -> dict[str, Any]:
    """What the files are bound to: the router's address and the sorted WANs with their queues and rules."""
    host, port = router_address(cfg)
    wans = sorted(({"name": w.name, "queue": w.queue, "rule_comment": w.rule_comment} for w in cfg.wans),
                  key=lambda w: w["name"])
    return {"router": f"{host}:{port}", "wans": wans}


def fingerprint(described: dict[str, Any]) -> str:
    """A short stable hash of ``describe``'s result (canonical JSON, sha256, 16 hex digits)."""
    canonical = json.dumps(described, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass
class Binding:
    """The outcome of ``bind``: what the files belong to and what, if anything, was moved aside."""

    fingerprint: str
    router: str
    wans: list[str]
    outcome: str  # "new", "same", "adopted", "moved_aside", or "unchecked" (the directory could not be written)
    previous: dict[str, Any] | None = None
    moved: list[str] = field(default_factory=list)
    error: str | None = None

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fingerprint": self.fingerprint, "router": self.router, "wans": self.wans,
                               "outcome": self.outcome}
        if self.previous is not None:
            out["previous"] = self.previous
        if self.moved:
            out["moved_aside"] = self.moved
        if self.error is not None:
            out["error"] = self.error
        return out


def bound_files(cfg: Config) -> list[Path]:
    """The files a router binding covers: the scorer's state and journal, the logger's file and its rotations."""
    decisions = resolve_path(cfg, cfg.logger.path)
    files = [resolve_path(cfg, cfg.scorer.state_path), resolve_path(cfg, cfg.scorer.journal_path), decisions]
    rotated = sorted(decisions.parent.glob(decisions.name + ".[0-9]*")) if decisions.parent.is_dir() else []
    return files + [p for p in rotated if p.name[len(decisions.name) + 1:].isdigit()]


def fingerprint_path(cfg: Config) -> Path:
    state = resolve_path(cfg, cfg.scorer.state_path)
    return state.with_name(state.name + SUFFIX)


def bind(cfg: Config, now_wall: float | None = None) -> Binding:
    """Check the files against the config's router and WANs; move them aside when they belong to others.

    A directory that cannot be written (read-only, full) is no reason to stop
    steering: the files are used as they are, the binding is "unchecked", and
    the stage's own storage health says what is wrong; the next start checks again.
    """
    try:
        return _bind(cfg, now_wall)
    except OSError as error:
        described = describe(cfg)
        reason = f"{getattr(error, 'filename', None) or fingerprint_path(cfg).parent}: {error.strerror or error}"
        log.error("cannot check which router the files belong to (%s); using them as they are", reason)
        return Binding(fingerprint(described), described["router"], [w["name"] for w in described["wans"]],
                       "unchecked", error=reason)


def _bind(cfg: Config, now_wall: float | None) -> Binding:
    described = describe(cfg)
    current = fingerprint(described)
    path = fingerprint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    wan_names = [w["name"] for w in described["wans"]]
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        previous = _read(path)
        existing = [p for p in bound_files(cfg) if p.exists()]
        if previous is not None and previous.get("fingerprint") == current:
            return Binding(current, described["router"], wan_names, "same")
        if previous is None:
            outcome = "adopted" if existing else "new"
            if existing:
                log.warning("%s: no router fingerprint yet; keeping the existing files for %s (WANs %s)",
                            path.parent, described["router"], ", ".join(wan_names) or "-")
            _write(path, current, described)
            return Binding(current, described["router"], wan_names, outcome)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now_wall is None else now_wall))
        moved = []
        for p in existing:
            target = _free_name(p.with_name(f"{p.name}.{stamp}"))
            p.rename(target)
            moved.append(str(target))
        prev = {"fingerprint": previous.get("fingerprint"), "router": previous.get("router"),
                "wans": [w.get("name") for w in previous.get("wans", []) if isinstance(w, dict)]}
        log.warning("the state, journal and decisions in %s were made for router %s (WANs %s), not %s (WANs %s): "
                    "starting fresh; moved aside: %s", path.parent, prev["router"], ", ".join(map(str, prev["wans"])),
                    described["router"], ", ".join(wan_names), ", ".join(moved) or "nothing")
        _write(path, current, described)
        return Binding(current, described["router"], wan_names, "moved_aside", prev, moved)
    finally:
        os.close(lock_fd)  # drops the flock


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.error("%s: unreadable router fingerprint (%s); treating the files as another router's", path, error)
        return {"fingerprint": None, "router": "unknown", "wans": []}
    return doc if isinstance(doc, dict) else {"fingerprint": None, "router": "unknown", "wans": []}


def _write(path: Path, current: str, described: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps({"fingerprint": current, **described}, indent=2, sort_keys=True) + "\n").encode())


def _free_name(target: Path) -> Path:
    n = 1
    candidate = target
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.name}.{n}")
    return candidate
