"""The bus with real processes: bad input never stops a stage, CURVE keeps strangers out,
stages stop on SIGTERM within a second, and bad configs exit 2 before any socket."""

from __future__ import annotations

import os
import subprocess
import time

import msgspec
import pytest
import zmq
import zmq.auth

from bus import sockets as bus
from proto.config import ConfigError
from proto.messages import Heartbeat, Telemetry, to_msgpack
from tests.supervisor_harness import (
    BIN, BusClient, Stage, decision_seqs, free_port, load, wait_for, write_config,
)
from tests.support import INSTANT, congested, idle


def start(stages, directory, config, *names):
    for name in names:
        stages.append(Stage(name, config, directory))
    return stages[-len(names):]


def heartbeat_of(client: BusClient, stage: str, timeout: float = 10.0) -> Heartbeat:
    return client.wait_message(lambda m: isinstance(m, Heartbeat) and m.stage == stage, timeout,
                               f"a heartbeat from {stage}")


def test_bad_frames_are_counted_and_dropped_by_every_stage(workdir):
    directory, stages = workdir
    config = write_config(directory, {"scorer": INSTANT})
    cfg = load(config)
    bus_stage, scorer, logger = start(stages, directory, config, "wanctl-bus", "wanctl-scorer", "wanctl-logger")
    client = BusClient(cfg)
    try:
        client.connected()
        heartbeat_of(client, "scorer")
        heartbeat_of(client, "logger")
        junk = [
            [b"telemetry.wan1", os.urandom(64)],
            [b"telemetry.wan1", b""],
            [b"telemetry.wan1"],
            [b"decision.wan1", os.urandom(3), os.urandom(5)],
            [b"telemetry.wan1", msgspec.msgpack.encode({"kind": "telemetry", "v": 2, "wan": "wan1"})],
            [b"telemetry.wan1", to_msgpack(msgspec.structs.replace(congested(1, 1.0), v=7))],
            [b"decision.wan1", msgspec.msgpack.encode({"kind": "opinion", "v": 1})],
            [b"decision.wan1", msgspec.msgpack.encode([1, 2, 3])],
            [b"telemetry.wan1", msgspec.msgpack.encode({"kind": "telemetry", "v": 1, "wan": 5})],
        ]
        for _ in range(20):
            for frames in junk:
                client.send_raw(frames)
            client.send_raw([os.urandom(16), os.urandom(200)])
        # A good sample still steers, and the logger still writes it.
        client.send(congested(1, 1.0))
        client.send(idle(2, 2.0))
        wait_for(lambda: decision_seqs(directory / "decisions.jsonl") == [1, 2], 20, "decisions 1, 2 logged")
        beat = client.wait_message(
            lambda m: isinstance(m, Heartbeat) and m.stage == "scorer" and m.counters.get("malformed", 0) > 0,
            10, "a scorer heartbeat counting malformed frames")
        assert beat.counters["bad_version"] >= 20
        assert beat.counters["unknown_kind"] == 0  # decisions are not the scorer's subscription
        beat = client.wait_message(
            lambda m: isinstance(m, Heartbeat) and m.stage == "logger" and m.counters.get("unknown_kind", 0) > 0,
            10, "a logger heartbeat counting unknown kinds")
        assert beat.counters["malformed"] >= 20
        for stage in (bus_stage, scorer, logger):
            assert stage.proc.poll() is None, f"{stage.name} died:\n{stage.output()}"
    finally:
        client.close()


def test_stages_stop_within_a_second_on_sigterm(workdir):
    directory, stages = workdir
    config = write_config(directory, {"scorer": INSTANT})
    cfg = load(config)
    started = start(stages, directory, config, "wanctl-bus", "wanctl-scorer", "wanctl-logger")
    client = BusClient(cfg)
    try:
        client.connected()
        for name in ("scorer", "logger"):
            heartbeat_of(client, name)
    finally:
        client.close()
    for stage in reversed(started):
        stage.stop(timeout=1.0 + 0.5)  # 0.5 s process slack; fails on a slow stop or a bad exit status


def test_a_second_instance_of_a_stage_refuses_to_start_and_leaves_the_first_alone(workdir):
    directory, stages = workdir
    config = write_config(directory, {"scorer": INSTANT})
    cfg = load(config)
    first = dict(zip(("bus", "scorer", "logger"),
                     start(stages, directory, config, "wanctl-bus", "wanctl-scorer", "wanctl-logger")))
    client = BusClient(cfg)
    try:
        client.connected()
        for name in ("scorer", "logger"):
            heartbeat_of(client, name)
        for name, stage in first.items():
            second = subprocess.run([str(BIN / f"wanctl-{name}"), "--config", str(config)], cwd=str(directory),
                                    capture_output=True, text=True, timeout=30)
            assert second.returncode == 1, (name, second.stderr)
            assert f"another {name} is running (pid {stage.pid}, holding " in second.stderr, second.stderr
            assert f"{name}.lock" in second.stderr, second.stderr
        # The refused instances touched nothing: the first bus still carries the first stages' heartbeats.
        client.seen.clear()
        for name in ("scorer", "logger"):
            heartbeat_of(client, name)
        assert all(stage.proc.poll() is None for stage in first.values())
    finally:
        client.close()


def test_tcp_without_keys_is_a_config_error_before_any_socket(workdir):
    directory, _ = workdir
    port = free_port()
    config = write_config(directory, {"bus": {"publish": f"tcp://127.0.0.1:{port}",
                                              "subscribe": f"tcp://127.0.0.1:{port}"}})
    for script in ("wanctl-bus", "wanctl-scorer", "wanctl-logger"):
        result = subprocess.run([str(BIN / script), "--config", str(config)], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 2, result.stderr
        assert "bus.keys_dir: required when an endpoint is tcp://" in result.stderr
    with pytest.raises(ConfigError):
        bus.check_bus(load(config))


def _tcp_config(directory, keys: bool):
    ports = [free_port() for _ in range(3)]
    raw = {"bus": {"publish": f"tcp://127.0.0.1:{ports[0]}", "subscribe": f"tcp://127.0.0.1:{ports[1]}",
                   "journal": f"tcp://127.0.0.1:{ports[2]}"},
           "scorer": INSTANT}
    if keys:
        raw["bus"]["keys_dir"] = str(directory / "keys")
    return raw, ports


def test_curve_on_tcp_keeps_out_clients_without_the_keys(workdir):
    directory, stages = workdir
    subprocess.run([str(BIN / "wanctl-keys"), str(directory / "keys")], check=True, capture_output=True, timeout=30)
    assert oct((directory / "keys").stat().st_mode & 0o777) == "0o700"
    raw, ports = _tcp_config(directory, keys=True)
    config = write_config(directory, raw)
    cfg = load(config)
    start(stages, directory, config, "wanctl-bus", "wanctl-scorer", "wanctl-logger")

    # A stranger: no keys at all, and another with its own key pair and the (public) server key.
    ctx = zmq.Context()
    plain_sub = ctx.socket(zmq.SUB)
    plain_sub.linger = 0
    plain_sub.subscribe(b"")
    plain_sub.connect(f"tcp://127.0.0.1:{ports[1]}")
    plain_pub = ctx.socket(zmq.PUB)
    plain_pub.linger = 0
    plain_pub.connect(f"tcp://127.0.0.1:{ports[0]}")
    server_public, _ = zmq.auth.load_certificate(str(directory / "keys" / "server.key"))
    rogue_public, rogue_secret = zmq.curve_keypair()
    rogue_sub = ctx.socket(zmq.SUB)
    rogue_sub.linger = 0
    rogue_sub.curve_publickey, rogue_sub.curve_secretkey, rogue_sub.curve_serverkey = (
        rogue_public, rogue_secret, server_public)
    rogue_sub.subscribe(b"")
    rogue_sub.connect(f"tcp://127.0.0.1:{ports[1]}")
    rogue_pub = ctx.socket(zmq.PUB)
    rogue_pub.linger = 0
    rogue_pub.curve_publickey, rogue_pub.curve_secretkey, rogue_pub.curve_serverkey = (
        rogue_public, rogue_secret, server_public)
    rogue_pub.connect(f"tcp://127.0.0.1:{ports[0]}")

    client = BusClient(cfg)  # has the client keys
    try:
        client.connected()
        heartbeat_of(client, "scorer", 15)
        # Strangers try to steer: congested samples that would enable at once.
        deadline = time.monotonic() + 3
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            for sock in (plain_pub, rogue_pub):
                sock.send_multipart([b"telemetry.wan1", to_msgpack(congested(seq, float(seq)))])
            time.sleep(0.05)
        beat = client.wait_message(lambda m: isinstance(m, Heartbeat) and m.stage == "scorer", 5, "scorer heartbeat")
        assert beat.counters["accepted"] == 0, "the scorer scored a sample from a client without the keys"
        assert decision_seqs(directory / "decisions.jsonl") == []
        # The authorized client steers, and its decision reaches the logger over CURVE.
        client.send(congested(1, 1.0))
        wait_for(lambda: decision_seqs(directory / "decisions.jsonl") == [1], 15, "decision 1 logged over CURVE")
        # Strangers saw nothing at all of this traffic (not even heartbeats).
        for sock in (plain_sub, rogue_sub):
            assert sock.poll(500, zmq.POLLIN) == 0, "a client without the keys received bus traffic"
    finally:
        client.close()
        for sock in (plain_sub, plain_pub, rogue_sub, rogue_pub):
            sock.close(0)
        ctx.term()


def test_ipc_run_dir_is_owner_only(workdir):
    directory, stages = workdir
    config = write_config(directory, {})
    start(stages, directory, config, "wanctl-bus")
    run_dir = directory / "run"
    wait_for(lambda: (run_dir / "sub.sock").exists(), 15, "the bus's ipc socket")
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"


def test_frame_decoder_never_raises():
    decoder = bus.FrameDecoder()
    assert decoder.decode([bus.WELCOME]) is None
    assert decoder.decode([b"a", b"\x91\xc1"]) is None
    good = decoder.decode([b"telemetry.wan1", to_msgpack(idle(3, 3.0))])
    assert isinstance(good, Telemetry) and good.seq == 3
    assert decoder.counters["malformed"] == 1 and decoder.counters["welcome"] == 1
