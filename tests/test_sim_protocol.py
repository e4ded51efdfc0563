"""The simulator speaks the RouterOS API: checked through librouteros over real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import librouteros
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st
from librouteros.exceptions import ConnectionClosed, FatalError, TrapError
from librouteros.protocol import decode_length as lib_decode_length
from librouteros.protocol import encode_length as lib_encode_length
from librouteros.query import Key, Or

from routeros.link import parse_duration
from sim.scenario import load_scenario, parse_scenario, quiet_scenario, shipped_scenarios
from sim.wire import decode_length, encode_length, format_duration, length_size
from tests.simrouter import make_sim, raw_session, read_reply, sim, wait_for  # noqa: F401

MANGLE = ("ip", "firewall", "mangle")


def connect(sim, **kwargs):
    return librouteros.connect(sim.host, kwargs.pop("username", "admin"), kwargs.pop("password", "admin"),
                               port=sim.port, timeout=kwargs.pop("timeout", 3), **kwargs)


# --- word encoding ---------------------------------------------------------------


@given(st.integers(min_value=0, max_value=0x0FFFFFFF))
def test_length_encoding_agrees_with_librouteros(n):
    ours = encode_length(n)
    assert ours == lib_encode_length(n)
    assert lib_decode_length(ours) == n
    assert length_size(ours[0]) == len(ours)
    assert decode_length(ours) == n


@pytest.mark.parametrize("n,size", [(0, 1), (0x7F, 1), (0x80, 2), (0x3FFF, 2), (0x4000, 3), (0x1FFFFF, 3),
                                    (0x200000, 4), (0xFFFFFFF, 4), (0x10000000, 5), (0xFFFFFFFF, 5)])
def test_every_length_form(n, size):
    encoded = encode_length(n)
    assert len(encoded) == size
    assert length_size(encoded[0]) == size
    assert decode_length(encoded) == n


@pytest.mark.parametrize("length", [127, 128, 16383, 16384, 300_000, 0x200000 + 5])
def test_long_words_round_trip_through_librouteros(sim, length):
    api = connect(sim)
    comment = ("x" * length)
    mangle = api.path(*MANGLE)
    rule_id = mangle.add(chain="prerouting", action="accept", comment=comment)
    rows = list(mangle.select(Key(".id"), Key("comment")).where(Key(".id") == rule_id))
    assert rows == [{".id": rule_id, "comment": comment}]
    api.close()


# --- login ---------------------------------------------------------------------------


def test_login_with_bad_credentials_traps_and_the_session_stays_usable(sim):
    with pytest.raises(TrapError) as error:
        connect(sim, password="wrong")
    assert error.value.message == "invalid user name or password (6)"
    proto = raw_session(sim, login=False)
    proto.writeSentence("/login", "=name=admin", "=password=nope")
    assert read_reply(proto) == [("!trap", ("=message=invalid user name or password (6)",)), ("!done", ())]
    proto.writeSentence("/login", "=name=admin", "=password=admin")
    assert read_reply(proto) == [("!done", ())]
    proto.close()


def test_a_command_before_login_is_fatal(sim):
    proto = raw_session(sim, login=False)
    proto.writeSentence("/queue/tree/print")
    with pytest.raises(FatalError, match="not logged in"):
        proto.readSentence()


# --- replies ----------------------------------------------------------------------------


def test_empty_print_sends_empty_then_done_on_7_18(sim):
    proto = raw_session(sim)
    proto.writeSentence("/ip/firewall/mangle/print", "?comment=nothing-has-this")
    assert read_reply(proto) == [("!empty", ()), ("!done", ())]
    api = connect(sim)
    assert list(api.path(*MANGLE).select(Key(".id")).where(Key("comment") == "nothing")) == []


def test_empty_print_before_7_18_is_just_done(make_sim):
    old = make_sim(empty_reply=False)
    proto = raw_session(old)
    proto.writeSentence("/ip/firewall/mangle/print", "?comment=nothing-has-this")
    assert read_reply(proto) == [("!done", ())]


def test_a_trap_is_followed_by_done_and_the_connection_stays_usable(sim):
    proto = raw_session(sim)
    proto.writeSentence("/ip/firewall/mangle/set", "=.id=*FFFF", "=disabled=yes")
    assert read_reply(proto) == [("!trap", ("=message=no such item",)), ("!done", ())]
    api = connect(sim)
    with pytest.raises(TrapError, match="no such item"):
        api.path(*MANGLE).update(**{".id": "*FFFF", "disabled": True})
    with pytest.raises(TrapError, match="no such command"):
        list(api.rawCmd("/nothing/here/print"))
    assert len(list(api.path("queue", "tree"))) == 3


def test_tag_is_echoed_on_every_reply(sim):
    proto = raw_session(sim)
    proto.writeSentence("/queue/tree/print", "=.proplist=name", ".tag=7")
    reply = read_reply(proto)
    assert [w for w, _ in reply] == ["!re", "!re", "!re", "!done"]
    assert all(words[-1] == ".tag=7" for _, words in reply)
    proto.writeSentence("/ip/firewall/mangle/set", "=.id=*FFFF", "=disabled=yes", ".tag=x")
    assert read_reply(proto) == [("!trap", ("=message=no such item", ".tag=x")), ("!done", (".tag=x",))]


def test_tagged_commands_run_concurrently_and_cancel_interrupts(sim):
    proto = raw_session(sim)
    proto.writeSentence("/ping", "=address=192.0.2.1", ".tag=long")  # no count: pings until cancelled
    proto.writeSentence("/system/identity/print", ".tag=quick")
    seen = []
    while ("!done", (".tag=quick",)) not in seen:
        seen.append(proto.readSentence())
    assert ("!re", ("=name=wanctl-sim", ".tag=quick")) in seen
    proto.writeSentence("/cancel", "=tag=long", ".tag=c")
    rest = read_reply(proto, tag="long")
    assert ("!trap", ("=category=2", "=message=interrupted", ".tag=long")) in rest


def test_proplist_and_queries(sim):
    api = connect(sim)
    tree = api.path("queue", "tree")
    rows = list(tree.select(Key("name"), Key("dropped")).where(Key("name") == "cake-wan2"))
    assert rows == [{"name": "cake-wan2", "dropped": 0}]
    either = list(tree.select(Key("name")).where(Or(Key("name") == "cake-wan1", Key("name") == "guest-limit")))
    assert sorted(r["name"] for r in either) == ["cake-wan1", "guest-limit"]
    not_cake = list(tree.select(Key("name")).where(Key("queue") != "wan1-cake"))
    assert sorted(r["name"] for r in not_cake) == ["cake-wan2", "guest-limit"]
    raw = list(api.rawCmd("/queue/tree/print", "=.proplist=name", "?packet-mark"))
    assert raw == [{"name": "guest-limit"}]
    raw = list(api.rawCmd("/queue/tree/print", "=.proplist=name", "?-packet-mark", "?>max-limit=50M"))
    assert raw == [{"name": "cake-wan1"}, {"name": "cake-wan2"}]
    rules = list(api.path(*MANGLE).select(Key(".id"), Key("disabled")).where(Key("comment") == "wanctl-steer-wan1"))
    assert len(rules) == 1 and rules[0]["disabled"] is True and re.fullmatch(r"\*[0-9A-F]+", rules[0][".id"])


def test_disabled_prints_as_true_false_and_set_accepts_yes_no(sim):
    proto = raw_session(sim)
    proto.writeSentence("/ip/firewall/mangle/print", "=.proplist=disabled", "?comment=wanctl-steer-wan1")
    assert read_reply(proto)[0] == ("!re", ("=disabled=true",))
    rule_id = sim.rule("wanctl-steer-wan1")[".id"]
    proto.writeSentence("/ip/firewall/mangle/set", f"=.id={rule_id}", "=disabled=no")
    assert read_reply(proto) == [("!done", ())]
    assert sim.rule("wanctl-steer-wan1")["disabled"] == "false"
    proto.writeSentence("/ip/firewall/mangle/set", f"=.id={rule_id}", "=disabled=maybe")
    assert read_reply(proto)[0][0] == "!trap"


def test_quit_is_fatal_then_closed(sim):
    api = connect(sim)
    with pytest.raises(FatalError, match="session terminated on request"):
        list(api.rawCmd("/quit"))


# --- queue counters and ping -----------------------------------------------------------


def test_queue_counters_are_cumulative_and_reset_counters_zeroes_them(make_sim):
    from tests.simrouter import FakeClock

    clock = FakeClock()
    router = make_sim(clock=clock)
    router.congest("wan1", drops_per_sec=10, queued_packets=300)
    clock.advance(2.0)
    api = connect(router)
    tree = api.path("queue", "tree")
    row = list(tree.select(Key(".id"), Key("dropped"), Key("packets"), Key("bytes"), Key("queued-packets"),
                           Key("queued-bytes")).where(Key("name") == "cake-wan1"))[0]
    assert row["dropped"] == 20 and row["packets"] == 2000 and row["bytes"] == 2_000_000
    assert row["queued-packets"] == 300 and row["queued-bytes"] == 300_000
    clock.advance(1.0)
    again = list(tree.select(Key("dropped")).where(Key("name") == "cake-wan1"))[0]
    assert again["dropped"] == 30
    tuple(tree("reset-counters", **{".id": row[".id"]}))
    assert list(tree.select(Key("dropped"), Key("packets")).where(Key("name") == "cake-wan1")) == [
        {"dropped": 0, "packets": 0}]


def test_ping_streams_one_reply_per_probe_with_routeros_durations(sim):
    api = connect(sim)
    rows = list(api.rawCmd("/ping", "=address=192.0.2.2", "=count=3", "=interval=0.05"))
    assert [r["seq"] for r in rows] == [0, 1, 2]
    assert [r["sent"] for r in rows] == [1, 2, 3]
    assert all(parse_duration(r["time"]) == pytest.approx(0.020) for r in rows)  # wan2: 20 ms base
    sim.congest("wan1", added_rtt_ms=2.345, loss_pct=0)
    rows = list(api.rawCmd("/ping", "=address=192.0.2.1", "=count=1", "=routing-table=to-wan1"))
    assert rows[0]["time"] == "12ms345us"


def test_lost_probes_are_status_timeout(sim):
    sim.congest("wan1", loss_pct=100)
    api = connect(sim)
    rows = list(api.rawCmd("/ping", "=address=192.0.2.1", "=count=2", "=interval=0.05"))
    assert [r.get("status") for r in rows] == ["timeout", "timeout"]
    assert "time" not in rows[0] and rows[1]["packet-loss"] == 100


def test_ping_rejects_unknown_arguments(sim):
    api = connect(sim)
    with pytest.raises(TrapError, match="unknown parameter"):
        list(api.rawCmd("/ping", "=address=192.0.2.1", "=count=1", "=bogus=1"))
    with pytest.raises(TrapError, match="routing-table"):
        list(api.rawCmd("/ping", "=address=192.0.2.1", "=count=1", "=routing-table=nope"))


def test_durations_format_like_routeros():
    assert format_duration(0.012345) == "12ms345us"
    assert format_duration(1.003) == "1s3ms"
    assert format_duration(0) == "0s"
    assert format_duration(3723) == "1h2m3s"
    for text, seconds in [("12ms345us", 0.012345), ("1s3ms", 1.003), ("2h5m", 7500), ("00:00:01.5", 1.5),
                          ("1d02:03:04", 93784), ("1w2d", 777600), ("750us", 0.00075), ("0s", 0.0)]:
        assert parse_duration(text) == pytest.approx(seconds)
    with pytest.raises(ValueError):
        parse_duration("12 parsecs")


# --- faults ----------------------------------------------------------------------------------


def test_cut_reply_closes_the_connection_mid_sentence(sim):
    api = connect(sim)
    sim.cut_next_reply("/queue/tree/print")
    with pytest.raises(ConnectionClosed):
        list(api.path("queue", "tree"))


def test_stall_makes_reads_time_out(sim):
    api = connect(sim, timeout=0.3)
    sim.stall(1.0)
    with pytest.raises(socket.timeout):
        list(api.path("queue", "tree"))
    time.sleep(1.0)
    assert len(list(connect(sim).path("queue", "tree"))) == 3


def test_refused_logins_and_refused_connections(sim):
    sim.refuse_logins(True)
    with pytest.raises(TrapError, match=r"invalid user name or password \(6\)"):
        connect(sim)
    sim.refuse_logins(False)
    connect(sim).close()
    sim.refuse_connections(True)
    with pytest.raises(ConnectionRefusedError):
        connect(sim)
    sim.refuse_connections(False)
    connect(sim).close()


def test_dropped_sessions_and_fatal(sim):
    api = connect(sim)
    other = connect(sim)
    wait_for(lambda: sim.sessions() == 2)
    sim.drop_sessions()
    with pytest.raises((ConnectionClosed, ConnectionResetError, BrokenPipeError)):
        list(api.path("queue", "tree"))
    third = connect(sim)
    sim.fatal("too many commands")
    with pytest.raises(FatalError, match="too many commands"):
        list(third.path("queue", "tree"))
    del other


def test_reboot_renumbers_zeroes_counters_and_restores_rules(sim):
    api = connect(sim)
    mangle = api.path(*MANGLE)
    before = sim.rule("wanctl-steer-wan1")
    mangle.update(**{".id": before[".id"], "disabled": False})
    queue_before = sim.queue("cake-wan1")
    time.sleep(0.2)
    assert int(sim.queue("cake-wan1")["packets"]) > 0
    sim.reboot(downtime_s=0.5)
    with pytest.raises((ConnectionClosed, ConnectionResetError, BrokenPipeError)):
        list(api.path("queue", "tree"))
    with pytest.raises(ConnectionRefusedError):
        connect(sim)
    fresh = wait_for(lambda: _try_connect(sim), what="the router to come back")
    after = sim.rule("wanctl-steer-wan1")
    assert after[".id"] != before[".id"] and after["disabled"] == "true"
    assert sim.queue("cake-wan1")[".id"] != queue_before[".id"]
    assert int(sim.queue("cake-wan1")["packets"]) < 1000  # counted from zero since the reboot
    with pytest.raises(TrapError, match="no such item"):
        fresh.path(*MANGLE).update(**{".id": before[".id"], "disabled": False})


def _try_connect(sim):
    try:
        return connect(sim)
    except OSError:
        return None


def test_scenario_events_drive_faults(make_sim):
    scenario = parse_scenario({
        "loop": False, "wans": [{"name": "wan1", "queue": "cake-wan1", "rule_comment": "steer"}],
        "events": [{"at_s": 0.3, "fault": "reboot", "duration_s": 0.2}]})
    router = make_sim(scenario)
    first = router.rule("steer")[".id"]
    wait_for(lambda: router.rule("steer")[".id"] != first, what="the scripted reboot")
    wait_for(lambda: _try_connect(router), what="the router to come back")


# --- TLS ----------------------------------------------------------------------------------------


def test_api_ssl_with_a_verified_certificate(make_sim, tmp_path):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    router = make_sim(ssl_context=server_context)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    api = connect(router, ssl_wrapper=lambda s: client.wrap_socket(s, server_hostname="127.0.0.1"))
    assert len(list(api.path("queue", "tree"))) == 3
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(router, ssl_wrapper=lambda s: stranger.wrap_socket(s, server_hostname="127.0.0.1"))


# --- scenarios and the command line ---------------------------------------------------------------


def test_shipped_scenarios_load_and_the_default_congests_early():
    shipped = shipped_scenarios()
    assert {"default", "flapping", "yellow_hover", "outage"} <= set(shipped)
    for path in shipped.values():
        load_scenario(path)
    default = load_scenario(None)
    first = min(e.start_s for w in default.wans for e in w.episodes if e.added_rtt_ms >= 100)
    assert first <= 20
    assert all(w.rule_comment for w in default.wans)


def test_quiet_scenario_is_idle():
    s = quiet_scenario("a", "b")
    assert [w.queue for w in s.wans] == ["cake-a", "cake-b"] and not s.loop and not s.events


def test_wanctl_sim_command_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sim", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        api = librouteros.connect("127.0.0.1", "admin", "admin", port=int(match[1]), timeout=3)
        queues = list(api.path("queue", "tree").select(Key("name"), Key("queue")))
        types = {t["name"]: t["kind"] for t in api.path("queue", "type").select(Key("name"), Key("kind"))}
        assert any(types.get(q["queue"]) == "cake" for q in queues)
        for wan in ("wan1", "wan2"):
            rules = list(api.path(*MANGLE).select(Key(".id")).where(Key("comment") == f"wanctl-steer-{wan}"))
            assert len(rules) == 1
        api.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    listed = subprocess.run([sys.executable, "-m", "sim", "--list"], capture_output=True, text=True, check=True)
    assert "flapping" in listed.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("wans: [{name: a}]\n")
    result = subprocess.run([sys.executable, "-m", "sim", "--scenario", str(bad)], capture_output=True, text=True,
                            env={**os.environ})
    assert result.returncode == 2 and "queue" in result.stderr
