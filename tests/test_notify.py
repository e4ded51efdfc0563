"""Webhook notifications (runtime.notify) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from proto.config import ConfigError, parse_config
from proto.messages import Decision, State
from runtime.notify import Notifier
from tests.supervisor_harness import BusClient, Stage, load, short_tmp, write_config
from tests.support import INSTANT, congested, idle, wait_for


class Webhook:
    """A local HTTP server that records every POSTed JSON body; ``fail_first`` answers 500 that many times,
    ``hold`` keeps each request waiting until set."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.hold = threading.Event()
        self.hold.set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.hold.wait(10)
                hook.attempts += 1
                if hook.attempts <= hook.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                hook.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Webhook()
    yield h
    h.close()


def notifier(url: str, **notify) -> Notifier:
    cfg = parse_config({"notify": {"webhook_url": url, "backoff_initial_s": 0.05, "backoff_max_s": 0.2,
                                   "timeout_s": 2.0, **notify}})
    return Notifier(cfg).start()


def decision(seq: int, driving: bool = True, decision: str = "ENABLE_STEERING") -> Decision:
    return Decision(seq=seq, wan="wan1", t=1.0, wall=1.0, telemetry_seq=seq, policy="quality", driving=driving,
                    fallback=False, decision=decision,
                    state="DEGRADED" if decision == "ENABLE_STEERING" else "GOOD", confidence=80, threshold=60,
                    flap_penalty=False, contributors=["delay=80.0ms"], sustained_s=2.0)


def state(penalty: bool, wan: str = "wan1") -> State:
    return State(wan=wan, seq=1, desired="DEGRADED", decision_seq=1, confidence=80, threshold=75,
                 flap_penalty=penalty, flap_penalty_remaining_s=300.0 if penalty else None)


def test_config_rules():
    assert parse_config({}).notify.webhook_url is None
    with pytest.raises(ConfigError, match="notify.webhook_url: must be an http:// or https:// URL"):
        parse_config({"notify": {"webhook_url": "hooks.example/x"}})


def test_one_post_per_driving_decision_and_per_flap_brake_activation(hook):
    n = notifier(hook.url)
    try:
        n.decision(decision(1))
        n.decision(decision(2, driving=False))  # a shadow's: not notified
        n.states([state(False)])
        n.states([state(True)])  # the brake engages
        n.states([state(True)])  # still engaged: nothing new
        n.states([state(True, wan="wan2")])  # first sight of wan2: what is known, not an activation
        n.decision(decision(3, decision="DISABLE_STEERING"))
        wait_for(lambda: len(hook.bodies) >= 3, 5, lambda: f"3 posts, got {hook.bodies}")
        time.sleep(0.2)
    finally:
        n.close()
    events = [(b["event"], b.get("seq"), b.get("state")) for b in hook.bodies]
    assert events == [("decision", 1, "DEGRADED"), ("flap_brake", None, "DEGRADED"), ("decision", 3, "GOOD")]
    first = hook.bodies[0]
    assert first["wan"] == "wan1" and first["steering"] is True and first["contributors"] == ["delay=80.0ms"]
    assert first["source"] == "wanctl" and first["router"] == "127.0.0.1:8728"
    assert hook.bodies[1]["flap_penalty_remaining_s"] == 300.0
    assert n.counters["notify_sent"] == 3 and n.counters["notify_failed"] == 0


def test_a_failing_webhook_is_retried_with_backoff():
    hook = Webhook(fail_first=2)
    n = notifier(hook.url, retries=3)
    try:
        n.decision(decision(1))
        wait_for(lambda: hook.bodies, 5, "the post after two failures")
        assert n.conditions() == {}
    finally:
        n.close()
        hook.close()
    assert hook.attempts == 3 and n.counters["notify_retries"] == 2 and n.counters["notify_sent"] == 1


def test_a_dead_webhook_gives_up_and_degrades():
    hook = Webhook(fail_first=100)
    n = notifier(hook.url, retries=2)
    try:
        n.decision(decision(1))
        wait_for(lambda: n.counters["notify_failed"] == 1, 5, "giving up")
        assert hook.attempts == 3
        assert "HTTP 500" in n.conditions()["notify"]
    finally:
        n.close()
        hook.close()


def test_a_hanging_webhook_never_blocks_the_caller_and_the_queue_is_bounded(hook):
    hook.hold.clear()  # every POST hangs until released
    n = notifier(hook.url, queue_size=5)
    try:
        t0 = time.monotonic()
        for seq in range(1, 51):
            n.decision(decision(seq))
        took = time.monotonic() - t0
        assert took < 0.5, f"50 notifications took {took:.3f} s to hand over"
        # One is being sent (held), five wait in the queue, the rest were dropped.
        wait_for(lambda: n.counters["notify_dropped_full"] >= 44, 2, "the bounded queue to drop")
        assert n.counters["notify_queued"] + n.counters["notify_dropped_full"] == 50
        hook.hold.set()
        wait_for(lambda: len(hook.bodies) == n.counters["notify_queued"], 5, "the queued ones sent")
    finally:
        n.close()
    seqs = [b["seq"] for b in hook.bodies]  # in order, each once; the later ones are the dropped ones
    assert seqs == sorted(set(seqs)) and seqs[0] == 1 and len(seqs) == n.counters["notify_queued"]


def test_the_scorer_process_posts_its_driving_decisions(hook):
    """wanctl-scorer with notify.webhook_url, under real telemetry on a real bus."""
    directory = short_tmp()
    config = write_config(directory, {"scorer": INSTANT, "notify": {"webhook_url": hook.url}})
    cfg = load(config)
    stages = [Stage("wanctl-bus", config, directory), Stage("wanctl-scorer", config, directory)]
    client = BusClient(cfg, [b"decision."])
    try:
        client.connected()
        client.subscribed(b"telemetry.")
        for seq in range(1, 40):
            client.send(congested(seq, seq * 0.1) if seq < 20 else idle(seq, seq * 0.1))
            time.sleep(0.01)
        wait_for(lambda: len(hook.bodies) >= 2, 10, lambda: f"two posts, got {hook.bodies}")
        assert [(b["event"], b["decision"]) for b in hook.bodies[:2]] == [
            ("decision", "ENABLE_STEERING"), ("decision", "DISABLE_STEERING")]
    finally:
        client.close()
        for stage in reversed(stages):
            stage.stop()
        shutil.rmtree(directory, ignore_errors=True)
