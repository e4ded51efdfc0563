"""Test helpers for the RouterOS simulator (reused by the pipeline tests).

Fixtures (import them into a test module: ``from tests.simrouter import sim, make_sim``):

- ``sim``: a ``sim.testing.SimRouter`` playing ``quiet_scenario("wan1", "wan2")``
  (idle WANs, no noise) in a background thread on a free port of 127.0.0.1;
  ``sim.host``/``sim.port`` to connect, ``sim.config()`` for a ``Config``
  pointing at it, ``sim.rule(comment)`` to read a mangle rule, and one method
  per fault (``reboot``, ``stall``, ``cut_next_reply``, ``refuse_logins``,
  ``refuse_connections``, ``drop_sessions``, ``fatal``, ``reset_counters``,
  ``outage``, ``congest``/``calm``).  Stopped after the test.
- ``make_sim(scenario=None, **kwargs)``: the same with any ``SimRouter``
  arguments (a scenario, TLS context, ``clock=FakeClock()``, ``empty_reply``).

Helpers: ``FakeClock`` (a monotonic clock a test advances by hand; give the
same one to the simulator and to the collector and rates come out exact),
``wait_for(condition, timeout)`` (poll with a deadline, never a bare sleep),
and ``raw_session``/``read_reply`` to speak the wire protocol through
librouteros' own ``ApiProtocol`` where its high-level API would hide a detail
(``!empty``, ``.tag``).
"""

from __future__ import annotations

import socket

import pytest
from librouteros.connections import SocketTransport
from librouteros.protocol import ApiProtocol

from sim.scenario import quiet_scenario
from sim.testing import SimRouter
from tests.support import wait_for  # noqa: F401  (re-exported for the router tests)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def make_sim():
    started: list[SimRouter] = []

    def make(scenario=None, **kwargs) -> SimRouter:
        router = SimRouter(scenario if scenario is not None else quiet_scenario("wan1", "wan2"), **kwargs)
        router.start()
        started.append(router)
        return router

    yield make
    for router in started:
        router.stop()


@pytest.fixture
def sim(make_sim) -> SimRouter:
    return make_sim()


def raw_session(sim: SimRouter, login: bool = True, timeout: float = 3.0) -> ApiProtocol:
    """A bare librouteros protocol object on a new connection (logged in unless told not to)."""
    sock = socket.create_connection((sim.host, sim.port), timeout=timeout)
    proto = ApiProtocol(transport=SocketTransport(sock=sock), encoding="utf-8")
    if login:
        proto.writeSentence("/login", "=name=admin", "=password=admin")
        assert read_reply(proto) == [("!done", ())]
    return proto


def read_reply(proto: ApiProtocol, tag: str | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """Sentences up to and including ``!done`` (of ``tag``, when given)."""
    sentences = []
    while True:
        word, words = proto.readSentence()
        sentences.append((word, words))
        if word == "!done" and (tag is None or f".tag={tag}" in words):
            return sentences
