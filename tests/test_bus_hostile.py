"""Hostile bus input: the frame decoder under fuzz, and per-host CURVE client keys
(an allow-list on the bus host, each host holding only its own secret) over real
tcp on loopback with a real wanctl-bus."""

from __future__ import annotations

import subprocess
import time

import msgspec
import pytest
import zmq
import zmq.auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import keys as bus_keys
from bus import sockets as bus
from proto.config import ConfigError
from proto.messages import Heartbeat, Telemetry, to_msgpack
from tests.supervisor_harness import BIN, BusClient, Stage, free_port, load, write_config
from tests.support import idle, wait_for

# --- the frame decoder -------------------------------------------------------------

_COUNTED = ("received", "welcome", "malformed", "unknown_kind", "bad_version")

_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
              st.floats(), st.text(max_size=10), st.binary(max_size=10),
              st.sampled_from(["telemetry", "decision", "state", "actuation", "heartbeat", "wan1", "kind", "v"])),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.sampled_from(["kind", "v", "wan", "seq", "t", "stream", "wall",
                                                                "stage", "counters", "x"]), children, max_size=6)),
    max_leaves=30)


def _deep(depth: int, kind: str) -> bytes:
    """msgpack nested ``depth`` levels, built without recursion (array or map headers)."""
    if kind == "array":
        return b"\xdd" + (1).to_bytes(4, "big") + (b"\x91" * depth) + b"\xc0"
    return b"\x81\xa1k" * depth + b"\xc0"


_FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _decode_counts(frames) -> None:
    decoder = bus.FrameDecoder()
    before = sum(decoder.counters[c] for c in _COUNTED)
    message = decoder.decode(frames)
    assert sum(decoder.counters[c] for c in _COUNTED) == before + 1  # every frame counted exactly once
    assert message is None or decoder.counters["received"] == 1


@_FUZZ
@given(frames=st.lists(st.binary(max_size=200), max_size=4))
def test_fuzz_random_frames_are_counted_never_raised(frames):
    _decode_counts(frames)


@_FUZZ
@given(value=_values, topic=st.binary(max_size=20))
def test_fuzz_msgpack_of_wrong_shapes_is_counted_never_raised(value, topic):
    _decode_counts([topic, msgspec.msgpack.encode(value)])
    if isinstance(value, dict):  # the right kind with wrong fields, too
        for kind in ("telemetry", "heartbeat"):
            _decode_counts([topic, msgspec.msgpack.encode({**value, "kind": kind, "v": 1})])


def test_huge_and_deep_frames_are_dropped_as_malformed():
    decoder = bus.FrameDecoder()
    for depth in (1000, 100_000, 1_000_000):
        for kind in ("array", "map"):
            assert decoder.decode([b"telemetry.wan1", _deep(depth, kind)]) is None
    huge = msgspec.msgpack.encode({"kind": "telemetry", "v": 1, "x": b"\0" * (50 << 20)})
    assert decoder.decode([b"telemetry.wan1", huge]) is None
    assert decoder.decode([b"telemetry.wan1", b"\xdd\xff\xff\xff\xff"]) is None  # a 4-G-entry array header
    assert decoder.counters["received"] == 0
    assert decoder.counters["malformed"] + decoder.counters["unknown_kind"] == 8


# --- per-host CURVE keys -------------------------------------------------------------


def test_wanctl_keys_makes_a_bundle_per_host_with_only_its_own_secret(tmp_path):
    keys = tmp_path / "keys"
    result = subprocess.run([str(BIN / "wanctl-keys"), str(keys), "--host", "edge-1"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    bundle = keys / "hosts" / "edge-1"
    assert sorted(p.name for p in bundle.iterdir()) == ["client.key", "client.key_secret", "server.key"]
    assert oct(bundle.stat().st_mode & 0o777) == "0o700"
    assert oct((bundle / "client.key_secret").stat().st_mode & 0o777) == "0o600"
    assert zmq.auth.load_certificate(str(bundle / "server.key"))[1] is None  # public only
    assert (keys / "authorized" / "edge-1.key").read_bytes() == (bundle / "client.key").read_bytes()
    assert sorted(p.name for p in (keys / "authorized").iterdir()) == ["client.key", "edge-1.key"]
    # Its own pair differs from every other host's and from the bus host's.
    bus_keys.make_host_keys(keys, "edge-2")
    pairs = {zmq.auth.load_certificate(str(p))[0] for p in (keys / "authorized").glob("*.key")}
    assert len(pairs) == 3
    assert bus_keys.revoke_host(keys, "edge-2") and not (keys / "authorized" / "edge-2.key").exists()
    bad = subprocess.run([str(BIN / "wanctl-keys"), str(keys), "--host", "../x"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "host name must be" in bad.stdout


def _tcp_bus(directory, keys_dir):
    ports = [free_port() for _ in range(3)]
    return {"bus": {"publish": f"tcp://127.0.0.1:{ports[0]}", "subscribe": f"tcp://127.0.0.1:{ports[1]}",
                    "journal": f"tcp://127.0.0.1:{ports[2]}", "keys_dir": str(keys_dir),
                    "heartbeat_s": 0.2}}


def test_a_stage_host_needs_only_its_own_secret_and_the_bus_needs_the_allow_list(tmp_path):
    keys = tmp_path / "keys"
    bundle = bus_keys.make_host_keys(keys, "edge-1")
    edge = load(write_config(tmp_path, _tcp_bus(tmp_path, bundle), "edge.yaml"))
    for role in ("collector", "actuator", "logger", "tap"):
        bus.check_bus(edge, role)  # no server secret there, and none needed
    with pytest.raises(ConfigError, match=r"missing server.key_secret"):
        bus.check_bus(edge, "bus")
    home = load(write_config(tmp_path, _tcp_bus(tmp_path, keys), "home.yaml"))
    bus.check_bus(home, "bus")
    bus.check_bus(home, "scorer")
    for name in ("client.key", "edge-1.key"):
        (keys / "authorized" / name).unlink()
    with pytest.raises(ConfigError, match=r"no client public key \(\*\.key\)"):
        bus.check_bus(home, "bus")
    (keys / "authorized" / "junk.key").write_bytes(b"\xff" * 100)
    with pytest.raises(ConfigError, match=r"junk.key .* is not a CURVE public key"):
        bus.check_bus(home, "bus")
    # keys_dir with ipc endpoints: checked the same way, before any socket (no traceback later).
    broken = load(write_config(tmp_path, {"bus": {"keys_dir": str(tmp_path / "nokeys")}}, "ipc.yaml"))
    with pytest.raises(ConfigError, match=r"bus.keys_dir: not a directory"):
        bus.check_bus(broken, "scorer")


def test_endpoints_and_run_dir_a_stage_could_not_bind_are_config_errors(tmp_path):
    cfg = load(write_config(tmp_path, {"bus": {"publish": f"ipc://{tmp_path}/nowhere/pub.sock"}}))
    with pytest.raises(ConfigError, match=r"bus.publish: the directory of the ipc socket does not exist"):
        bus.check_bus(cfg, "bus")
    for bad in ("tcp://127.0.0.1:99999", "tcp://127.0.0.1", "tcp://:5", "tcp://a/b:5"):
        cfg = load(write_config(tmp_path, {"bus": {"subscribe": bad, "keys_dir": None}}))
        with pytest.raises(ConfigError, match=r"bus.subscribe: tcp endpoint must look like tcp://HOST:PORT"):
            bus.check_bus(cfg, "bus")
    (tmp_path / "afile").write_text("")
    cfg = load(write_config(tmp_path, {"bus": {"run_dir": str(tmp_path / "afile" / "run")}}))
    with pytest.raises(ConfigError, match=r"bus.run_dir: cannot create or use"):
        bus.check_bus(cfg, "bus")


def test_allowed_host_gets_messages_and_an_unlisted_one_gets_none_and_is_counted(workdir):
    directory, stages = workdir
    keys = directory / "keys"
    bus_keys.make_keys(keys)
    alpha = bus_keys.make_host_keys(keys, "alpha")
    beta = bus_keys.make_host_keys(keys, "beta")
    bus_keys.revoke_host(keys, "beta")  # beta holds a well-formed pair that is not on the list
    raw = _tcp_bus(directory, keys)
    bus_stage = Stage("wanctl-bus", write_config(directory, raw, "bus.yaml"), directory)
    stages.append(bus_stage)
    alpha_cfg = load(write_config(directory, {**raw, "bus": {**raw["bus"], "keys_dir": str(alpha)}}, "alpha.yaml"))
    beta_cfg = load(write_config(directory, {**raw, "bus": {**raw["bus"], "keys_dir": str(beta)}}, "beta.yaml"))
    home_cfg = load(write_config(directory, raw, "home.yaml"))
    good = BusClient(alpha_cfg)
    rogue = BusClient(beta_cfg)
    watcher = BusClient(home_cfg, prefixes=[b"heartbeat.bus"])
    try:
        good.connected()
        watcher.connected()
        good.subscribed(b"telemetry.wan1")
        rogue.send(idle(99, 99.0))
        good.send(idle(1, 1.0))
        got = wait_for(lambda: [m for m in good.drain(100) if isinstance(m, Telemetry)], 10, "alpha's own sample")
        assert [m.seq for m in got] == [1]  # alpha gets messages; beta's never reached the bus
        assert not bus.wait_welcome(rogue.sub, 1.0), "an unlisted client was let in"

        def rejected() -> int:
            beats = [m for m in watcher.drain(100) if isinstance(m, Heartbeat) and m.stage == "bus"]
            return beats[-1].counters.get("curve_clients_rejected", 0) if beats else 0

        count = wait_for(rejected, 10, "the bus counting rejected CURVE clients")
        assert count >= 2  # beta's publisher and subscriber, at least once each
    finally:
        for client in (good, rogue, watcher):
            client.close()
    bus_stage.stop()
    lines = [line for line in bus_stage.output().splitlines() if "CURVE: refused" in line]
    assert len(lines) == 1 and "WARNING" in lines[0], bus_stage.output()[-2000:]  # rate-limited: one line


def test_the_allow_list_follows_its_directory_and_logs_rejections_rate_limited(tmp_path, caplog):
    keys = tmp_path / "keys"
    bus_keys.make_keys(keys)
    now = [100.0]
    allow = bus.ClientAllowList(keys / "authorized", clock=lambda: now[0])
    allow.reload()
    edge = bus_keys.make_host_keys(keys, "edge-1")
    edge_key = zmq.auth.load_certificate(str(edge / "client.key"))[0]
    home_key = zmq.auth.load_certificate(str(keys / "client.key"))[0]
    assert allow.callback("*", home_key)
    now[0] += 1.5  # the directory changed: read again on the next connection a second on
    assert allow.callback("*", edge_key)
    bus_keys.revoke_host(keys, "edge-1")
    now[0] += 1.5
    with caplog.at_level("WARNING", logger="wanctl.bus"):
        for _ in range(50):
            assert not allow.callback("*", edge_key)
        now[0] += 61
        assert not allow.callback("*", edge_key)
    lines = [r for r in caplog.records if "CURVE: refused" in r.getMessage()]
    assert [r.levelname for r in lines] == ["WARNING", "WARNING"]
    assert "refused 1 client" in lines[0].getMessage() and "refused 50 client" in lines[1].getMessage()
    assert allow.counters == {"curve_clients_allowed": 2, "curve_clients_rejected": 51, "curve_allow_list_errors": 0}
    # A junk file dropped into the list later keeps the last good list (and says so).
    (keys / "authorized" / "junk.key").write_bytes(b"\xff")
    now[0] += 1.5
    assert allow.callback("*", home_key) and allow.counters["curve_allow_list_errors"] == 1


def test_keys_dir_with_ipc_endpoints_and_junk_keys_exits_2_before_any_socket(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("server.key", "server.key_secret", "client.key_secret"):
        (keys / name).write_bytes(b"not a certificate\xff")
    (keys / "authorized").mkdir()
    config = write_config(tmp_path, {"bus": {"keys_dir": str(keys)}, "health": {"scorer": 0, "bus": 0}})
    for script in ("wanctl-bus", "wanctl-scorer"):
        result = subprocess.run([str(BIN / script), "--config", str(config)], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"{script}: config error: bus.keys_dir: server.key in {keys}: not a CURVE certificate" in result.stderr
    assert not (tmp_path / "run").exists()  # no socket, not even the run directory
