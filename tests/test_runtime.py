"""The stage runtime: the lock per role, setup that fails cleanly, teardown that runs every step."""

from __future__ import annotations

import json
import logging
import os
import signal
import urllib.request

import pytest
import zmq

from bus import sockets
from proto.config import parse_config
from proto.messages import Heartbeat
from runtime import stage as stage_module
from runtime.stage import AlreadyRunning, RoleLock, Stage
from tests.support import free_port


@pytest.fixture
def cfg(tmp_path):
    run_dir = tmp_path / "run"
    return parse_config({"bus": {"run_dir": str(run_dir)}, "health": {"scorer": free_port()}}, str(tmp_path))


def test_a_role_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    first = RoleLock(tmp_path, "scorer").acquire()
    try:
        with pytest.raises(AlreadyRunning, match=r"another scorer is running \(pid \d+, holding .*scorer\.lock\)"):
            RoleLock(tmp_path, "scorer").acquire()
        assert (tmp_path / "scorer.lock").read_text().strip().isdigit()
    finally:
        first.release()
    RoleLock(tmp_path, "scorer").acquire().release()  # free again once released


def test_the_live_and_the_no_op_actuator_share_one_lock(tmp_path):
    live = RoleLock(tmp_path, "actuator").acquire()
    try:
        with pytest.raises(AlreadyRunning) as refused:
            RoleLock(tmp_path, "actuator-noop").acquire()
        assert refused.value.path == tmp_path / "actuator.lock"
        assert f"another actuator or actuator-noop is running (pid {os.getpid()}" in str(refused.value)
    finally:
        live.release()
    noop = RoleLock(tmp_path, "actuator-noop").acquire()
    try:
        with pytest.raises(AlreadyRunning):
            RoleLock(tmp_path, "actuator").acquire()
    finally:
        noop.release()


def test_a_stage_owns_its_sockets_health_and_lock_and_gives_them_all_back(cfg):
    before = signal.getsignal(signal.SIGTERM)
    with Stage(cfg, "scorer") as stage:
        assert signal.getsignal(signal.SIGTERM) != before
        pub = stage.publisher()
        sub = stage.subscriber([b"heartbeat."])
        url = stage.health.url
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            assert json.load(response)["stage"] == "scorer"
        with pytest.raises(AlreadyRunning):
            Stage(cfg, "scorer").__enter__()
    assert pub.socket.closed and sub.closed and stage.ctx.closed
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=2)
    with Stage(cfg, "scorer"):  # the lock was released
        pass


def test_a_failing_setup_releases_what_it_had_created(cfg, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    contexts = []
    real_context = zmq.Context

    def recording_context(*args, **kwargs):
        contexts.append(real_context(*args, **kwargs))
        return contexts[-1]

    def no_health(*args, **kwargs):
        raise OSError("health endpoint cannot start")

    monkeypatch.setattr(stage_module.zmq, "Context", recording_context)
    monkeypatch.setattr(stage_module.Health, "for_stage", no_health)
    with pytest.raises(OSError, match="health endpoint cannot start"):
        with Stage(cfg, "scorer"):
            pytest.fail("the body must not run after a failed setup")
    assert contexts and contexts[0].closed
    assert signal.getsignal(signal.SIGTERM) == before
    RoleLock(sockets.ensure_run_dir(cfg), "scorer").acquire().release()


def test_every_teardown_step_runs_even_when_one_fails(cfg, caplog):
    ran = []
    with caplog.at_level(logging.ERROR, logger="wanctl.stage"):
        with Stage(cfg, "scorer") as stage:
            pub = stage.publisher()
            stage.on_close("close the core", lambda: ran.append("core"))
            stage.on_close("write the state file", lambda: 1 / 0)
            stage.on_close("flush the journal", lambda: ran.append("journal"))
    assert ran == ["journal", "core"]  # last registered, first run; the failure in between stopped nothing
    assert stage.teardown_errors == 1 and "cannot write the state file" in caplog.text
    assert pub.socket.closed and stage.ctx.closed
    RoleLock(sockets.ensure_run_dir(cfg), "scorer").acquire().release()


def test_the_heartbeat_carries_the_same_counters_as_health(cfg):
    with Stage(cfg, "scorer") as stage:
        core = {"accepted": 3}
        stage.count_from("core", core)
        sent: list[Heartbeat] = []
        assert stage.heartbeat(stage.beats.due, sent.append)
        assert sent[0].counters == stage.health.counters() == stage.health.snapshot()["counters"] == {"accepted": 3}
        assert not stage.heartbeat(stage.beats.due - 0.5, sent.append)  # not due yet


def test_publish_counts_its_own_drops_at_the_hwm(cfg):
    with Stage(cfg, "scorer") as stage:
        sock = stage.ctx.socket(zmq.PUSH)  # nobody connected: every send hits the HWM at once
        stage._own(sock)
        sock.sndhwm = 1
        sock.bind(f"ipc://{sockets.ensure_run_dir(cfg)}/drops.sock")
        pub = sockets.Publisher(sock)
        beat = Heartbeat(stage="scorer", seq=1)
        results = [pub.send(beat) for _ in range(5)]
        assert results == [False] * 5 and pub.counters == {"published": 0, "publish_dropped": 5}
