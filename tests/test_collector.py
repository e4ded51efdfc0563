"""The collector against the simulator, through librouteros: rates, nulls, outages, reconnection."""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import pytest

from collector.poller import BaselineRtt, Collector, boot_id
from proto.messages import Telemetry
from tests.simrouter import FakeClock, make_sim, sim, wait_for  # noqa: F401


def poll(collector: Collector, clock) -> dict[str, Telemetry]:
    """One round: every WAN polled once."""
    samples = collector.poll_due(clock() + 1e9)
    return {s.wan: s for s in samples}


@pytest.fixture
def exact(make_sim):
    """A simulator and a collector sharing one fake clock, so rates are exact."""
    clock = FakeClock()
    router = make_sim(clock=clock, ping_delay_scale=0.0)
    collector = Collector(router.config(), "admin", epoch=7, stream="s1", clock=clock, wall=lambda: 1.7e9)
    yield router, collector, clock
    collector.close()


def test_rates_depth_rtt_and_rule_state(exact):
    router, collector, clock = exact
    router.congest("wan1", drops_per_sec=12.5, queued_packets=640, added_rtt_ms=90)
    first = poll(collector, clock)
    assert first["wan1"].drops_per_sec is None  # the first read has nothing to subtract
    assert first["wan1"].queue_depth_pct == pytest.approx(64.0)
    assert first["wan1"].rtt_ms == pytest.approx(100.0)
    assert first["wan1"].steering_active is False
    clock.advance(2.0)
    second = poll(collector, clock)
    assert second["wan1"].drops_per_sec == pytest.approx(12.5, abs=0.5)
    assert second["wan2"].drops_per_sec == 0.0
    assert second["wan2"].rtt_ms == pytest.approx(20.0)
    router.set_rule_disabled("wanctl-steer-wan1", False)
    clock.advance(1.0)
    third = poll(collector, clock)
    assert third["wan1"].drops_per_sec == pytest.approx(12.5, abs=1.0)
    assert third["wan1"].steering_active is True


def test_envelope_seq_counts_across_wans(exact):
    router, collector, clock = exact
    samples = []
    for _ in range(3):
        samples += collector.poll_due(clock() + 1e9)
        clock.advance(0.5)
    assert [s.seq for s in samples] == [1, 2, 3, 4, 5, 6]
    assert {(s.source, s.epoch, s.stream, s.v) for s in samples} == {("collector", 7, "s1", 1)}
    assert all(s.cake_state is None and s.wan_zone is None for s in samples)
    for wan in ("wan1", "wan2"):
        ts = [s.t for s in samples if s.wan == wan]
        assert ts == sorted(ts) and len(set(ts)) == 3


def test_default_stream_is_the_boot_id(sim):
    collector = Collector(sim.config(), "admin", epoch=1)
    try:
        assert collector.stream == boot_id() and collector.stream
    finally:
        collector.close()


def test_counter_reset_gives_null_never_negative(exact):
    router, collector, clock = exact
    router.congest("wan1", drops_per_sec=10)
    poll(collector, clock)
    clock.advance(3.0)
    assert poll(collector, clock)["wan1"].drops_per_sec == pytest.approx(10.0, abs=0.4)
    router.reset_counters("wan1")
    clock.advance(0.5)
    after = poll(collector, clock)
    assert after["wan1"].drops_per_sec is None
    assert after["wan1"].queue_depth_pct is not None
    assert after["wan2"].drops_per_sec == 0.0
    clock.advance(1.0)
    assert poll(collector, clock)["wan1"].drops_per_sec == pytest.approx(10.0, abs=1.0)
    assert collector.counters["counter_resets"] == 1


def test_missing_queue_is_a_logged_error_for_that_wan_only(make_sim, caplog):
    router = make_sim()
    cfg = router.config(wans=[{"queue": "no-such-queue"}])
    collector = Collector(cfg, "admin", epoch=1)
    try:
        with caplog.at_level(logging.ERROR, logger="wanctl.collector"):
            first = {s.wan: s for s in collector.poll_due(time.monotonic() + 10)}
            second = {s.wan: s for s in collector.poll_due(time.monotonic() + 10)}
        assert first["wan1"].drops_per_sec is None and first["wan1"].queue_depth_pct is None
        assert first["wan1"].rtt_ms is not None  # the ping still works
        assert second["wan2"].queue_depth_pct == 0.0 and second["wan2"].drops_per_sec == 0.0
        errors = [r.getMessage() for r in caplog.records if "no-such-queue" in r.getMessage()]
        assert len(errors) == 1 and errors[0].startswith("wan1: no queue named 'no-such-queue' in /queue/tree")
        assert collector.counters["missing_queue"] == 2
    finally:
        collector.close()


def run_for(collector: Collector, seconds: float) -> list[Telemetry]:
    samples: list[Telemetry] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples += collector.poll_due(time.monotonic())
        time.sleep(max(0.0, min(collector.next_due(), end) - time.monotonic()))
    return samples


def fast_config(router, **router_section):
    return router.config(router={"timeout_s": 0.3, "connect_timeout_s": 0.3, **router_section},
                         wans=[{"interval_s": 0.1, "ping_interval_s": 0.2}, {"interval_s": 0.1, "ping_interval_s": 0.2}])


def test_outage_keeps_samples_coming_with_nulls_then_recovers(sim):
    sim.congest("wan1", drops_per_sec=50)
    collector = Collector(fast_config(sim), "admin", epoch=1)
    try:
        assert any(s.drops_per_sec for s in run_for(collector, 0.5))
        sim.outage(1.0)
        during = run_for(collector, 0.8)
        wan1 = [s for s in during if s.wan == "wan1"]
        assert len(wan1) >= 4  # the cadence holds while the router is away
        assert all(s.rtt_ms is None and s.drops_per_sec is None and s.queue_depth_pct is None
                   and s.steering_active is None for s in wan1[1:])
        after = run_for(collector, 1.5)
        back = [s for s in after if s.wan == "wan1" and s.rtt_ms is not None]
        assert back, "the collector never reconnected"
        assert back[0].drops_per_sec is None  # first read on the new connection
        assert any(s.drops_per_sec and s.drops_per_sec > 0 for s in back[1:])
        assert all(s.drops_per_sec is None or s.drops_per_sec >= 0 for s in during + after)
        assert collector.counters["reconnects"] >= 1
        assert collector.counters["connect_failures"] >= 1
    finally:
        collector.close()


def test_reboot_during_a_run(sim):
    sim.congest("wan1", drops_per_sec=40)
    collector = Collector(fast_config(sim), "admin", epoch=1)
    try:
        run_for(collector, 0.5)
        sim.reboot(downtime_s=0.4)
        samples = run_for(collector, 1.5)
        rates = [s.drops_per_sec for s in samples if s.wan == "wan1" and s.drops_per_sec is not None]
        assert rates and all(r >= 0 and r < 200 for r in rates)  # never the cumulative total
        assert [s for s in samples if s.wan == "wan1"][-1].steering_active is False
    finally:
        collector.close()


@pytest.mark.parametrize("fault", ["stall", "cut", "fatal"])
def test_a_broken_connection_is_discarded_and_replaced(sim, fault):
    collector = Collector(fast_config(sim), "admin", epoch=1)
    try:
        run_for(collector, 0.3)
        if fault == "stall":
            sim.stall(0.6)
        elif fault == "cut":
            sim.cut_next_reply("/queue/tree/print")
        else:
            sim.fatal()
        samples = run_for(collector, 2.0)
        assert any(s.rtt_ms is None for s in samples)
        assert samples[-1].rtt_ms is not None and samples[-1].queue_depth_pct is not None
        counters = collector.counters
        assert counters["disconnects"] >= 1 and counters["reconnects"] >= 1
        if fault == "stall":
            assert counters["timeouts"] >= 1
    finally:
        collector.close()


def test_refused_login_gives_nulls_until_accepted(sim):
    sim.refuse_logins(True)
    collector = Collector(fast_config(sim), "admin", epoch=1)
    try:
        samples = run_for(collector, 0.4)
        assert samples and all(s.rtt_ms is None for s in samples)
        assert collector.counters["login_failures"] >= 1
        sim.refuse_logins(False)
        wait_for(lambda: any(s.rtt_ms is not None for s in run_for(collector, 0.2)), timeout=5)
    finally:
        collector.close()


def test_wrong_password_never_appears_in_errors(sim, caplog):
    collector = Collector(fast_config(sim), "s3cret-pw", epoch=1)
    try:
        with caplog.at_level(logging.DEBUG):
            run_for(collector, 0.3)
        assert collector.counters["login_failures"] >= 1
        assert "s3cret-pw" not in caplog.text
    finally:
        collector.close()


def test_poll_due_never_raises(exact, monkeypatch):
    router, collector, clock = exact

    def broken(w):
        raise RuntimeError("bug")

    monkeypatch.setattr(collector, "_read_queue", broken)
    samples = poll(collector, clock)
    assert set(samples) == {"wan1", "wan2"}
    assert all(s.rtt_ms is None for s in samples.values())
    assert collector.counters["internal_errors"] == 2


def test_next_due_follows_each_wans_interval(exact):
    router, collector, clock = exact
    start = clock()
    assert collector.next_due() == start
    assert len(collector.poll_due(start)) == 2
    assert collector.next_due() == pytest.approx(start + 0.5)
    assert collector.poll_due(start + 0.2) == []


def test_baseline_follows_down_fast_and_up_slowly():
    baseline = BaselineRtt(down_alpha=0.5, up_alpha=0.002)
    assert baseline.update(20.0) == 20.0
    for _ in range(60):  # 30 s of heavy congestion at 2 Hz
        baseline.update(170.0)
    assert baseline.value < 40.0
    for _ in range(10):
        baseline.update(12.0)
    assert baseline.value == pytest.approx(12.0, abs=0.1)


def test_baseline_is_not_dragged_up_by_congestion(exact):
    router, collector, clock = exact
    for _ in range(10):
        poll(collector, clock)
        clock.advance(0.5)
    router.congest("wan1", added_rtt_ms=150)
    for _ in range(20):
        sample = poll(collector, clock)["wan1"]
        clock.advance(0.5)
    assert sample.rtt_ms == pytest.approx(160.0)
    assert sample.baseline_rtt_ms < 20.0


def test_autorate_state_file_gives_baseline_and_zone_while_fresh(make_sim, tmp_path):
    router = make_sim()
    state = tmp_path / "wan1_state.json"
    state.write_text(json.dumps({"ewma": {"baseline_rtt": 23.5}, "congestion": {"dl_state": "SOFT_RED"}}))
    cfg = router.config(wans=[{"autorate_state_file": str(state)}], collector={"autorate_max_age_s": 5})
    collector = Collector(cfg, "admin", epoch=1)
    try:
        fresh = {s.wan: s for s in collector.poll_due(time.monotonic() + 10)}
        assert fresh["wan1"].baseline_rtt_ms == 23.5 and fresh["wan1"].wan_zone == "SOFT_RED"
        assert fresh["wan2"].wan_zone is None and fresh["wan2"].baseline_rtt_ms == pytest.approx(20.0)
        old = time.time() - 60
        os.utime(state, (old, old))
        stale = {s.wan: s for s in collector.poll_due(time.monotonic() + 10)}
        assert stale["wan1"].wan_zone is None
        assert stale["wan1"].baseline_rtt_ms == pytest.approx(10.0)  # its own estimator
        assert collector.counters["autorate_stale"] == 1
    finally:
        collector.close()


def test_local_icmp_probe(make_sim):
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
    except PermissionError:
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        except PermissionError:
            pytest.skip("no ICMP socket allowed for this user")
    router = make_sim()
    cfg = router.config(collector={"rtt_probe": "local"}, wans=[{"ping_target": "127.0.0.1"}])
    collector = Collector(cfg, "admin", epoch=1)
    try:
        sample = {s.wan: s for s in collector.poll_due(time.monotonic() + 10)}["wan1"]
        assert sample.rtt_ms is not None and 0 <= sample.rtt_ms < 100
    finally:
        collector.close()


def test_tls_collector(make_sim, tmp_path):
    import ssl

    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    router = make_sim(ssl_context=server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    collector = Collector(router.config(router={"tls_ca": str(ca_file)}), "admin", epoch=1)
    try:
        assert {s.wan: s for s in collector.poll_due(time.monotonic() + 10)}["wan1"].rtt_ms is not None
    finally:
        collector.close()
    untrusted = Collector(router.config(router={"tls_ca": None}), "admin", epoch=1)
    try:
        assert {s.wan: s for s in untrusted.poll_due(time.monotonic() + 10)}["wan1"].rtt_ms is None
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.link.last_error or "")
    finally:
        untrusted.close()
