"""The logger: torn-line repair, the exactly-once rule, rotation, and SIGKILL of the
logger and the scorer (real processes) while decisions flow."""

from __future__ import annotations

import random
import shutil
import threading
import time

import pytest

from logger.writer import DecisionLog
from runtime.storage import DecisionFile, read_lines
from proto.messages import Decision, to_json
from tests.supervisor_harness import (
    BusClient, Stage, decision_seqs, load, read_jsonl, short_tmp, wait_for, write_config,
)
from tests.support import INSTANT, congested, idle


def decision(seq: int) -> Decision:
    return Decision(seq=seq, wan="wan1", t=float(seq), wall=0.0, telemetry_seq=seq, policy="confidence",
                    driving=True, fallback=False, decision="ENABLE_STEERING" if seq % 2 else "DISABLE_STEERING",
                    state="DEGRADED" if seq % 2 else "GOOD", confidence=60, threshold=55, flap_penalty=False,
                    contributors=["RED"], sustained_s=0.0)


@pytest.fixture
def tmp():
    directory = short_tmp()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_torn_last_line_is_cut_on_open(tmp):
    path = tmp / "d.jsonl"
    good = b"".join(to_json(decision(s)) + b"\n" for s in (1, 2, 3))
    path.write_bytes(good + to_json(decision(4))[:37])
    f = DecisionFile(path)
    assert f.last_seq == 3 and f.repaired_bytes == 37
    f.append_decisions([decision(4)])
    f.close()
    assert [s for s, _ in read_lines(path)[0]] == [1, 2, 3, 4]
    assert path.read_bytes().endswith(b"\n")


def test_zero_filled_tail_after_power_loss_is_cut(tmp):
    path = tmp / "d.jsonl"
    path.write_bytes(to_json(decision(1)) + b"\n" + b"\0" * 100)
    f = DecisionFile(path)
    assert f.last_seq == 1
    f.close()
    assert path.read_bytes() == to_json(decision(1)) + b"\n"


@pytest.mark.parametrize("order", [[1, 2, 3, 4, 5], [1, 3, 2, 5, 4], [5, 4, 3, 2, 1], [1, 1, 2, 2, 5, 3, 3, 4]])
def test_each_seq_written_once_in_order_whatever_the_arrival_order(tmp, order):
    f = DecisionFile(tmp / "d.jsonl", fsync="never")
    log = DecisionLog(f)
    gaps = [log.offer(seq, to_json(decision(seq))) for seq in order]
    f.close()
    assert [s for s, _ in read_lines(tmp / "d.jsonl")[0]] == sorted(set(order))
    assert gaps[-1] is False
    assert log.counters["duplicates"] == len(order) - len(set(order))


def test_rotation_keeps_every_line(tmp):
    path = tmp / "d.jsonl"
    f = DecisionFile(path, rotate_bytes=1000, rotate_keep=50)
    for seq in range(1, 41):
        f.append_decisions([decision(seq)])
    f.close()
    seqs = []
    for p in sorted(tmp.glob("d.jsonl*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0):
        seqs += [s for s, _ in read_lines(p)[0]]
    assert seqs == list(range(1, 41))
    reopened = DecisionFile(path, rotate_bytes=1000)
    assert reopened.last_seq == 40
    reopened.close()


def test_exactly_once_through_sigkills_of_logger_and_scorer(tmp):
    """Decisions flow while the logger and the scorer are SIGKILLed at random moments."""
    config = write_config(tmp, {"scorer": INSTANT, "logger": {"fsync": "interval"}})
    cfg = load(config)
    stages = {name: Stage(f"wanctl-{name}", config, tmp) for name in ("bus", "scorer", "logger")}
    client = BusClient(cfg, [b"heartbeat."])
    stop = threading.Event()

    def feed():
        seq = 0
        t = 0.0
        while not stop.is_set():
            seq += 1
            t += 0.05
            client.send(congested(seq, t) if seq % 2 else idle(seq, t))
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    rng = random.Random(4)
    try:
        client.connected()
        feeder.start()
        wait_for(lambda: len(decision_seqs(tmp / "decisions.jsonl")) > 10, 20, "the first decisions logged")
        for round_ in range(6):
            victims = rng.choice([["logger"], ["scorer"], ["logger", "scorer"]])
            time.sleep(rng.uniform(0.1, 0.8))
            for name in victims:
                stages[name].kill()
            time.sleep(rng.uniform(0.0, 0.5))
            for name in victims:
                stages[name] = Stage(f"wanctl-{name}", config, tmp)
        time.sleep(1.0)
        stop.set()
        feeder.join(5)
        journal = tmp / "scorer-journal.jsonl"

        def caught_up():
            logged, journaled = decision_seqs(tmp / "decisions.jsonl"), decision_seqs(journal)
            return journaled and logged == journaled

        wait_for(caught_up, 30, "the decision file to equal the scorer's journal")
        seqs = decision_seqs(tmp / "decisions.jsonl")
        assert seqs == list(range(1, len(seqs) + 1))
        assert (tmp / "decisions.jsonl").read_bytes() == journal.read_bytes()
        # No restart repeated a decision: each one flips the WAN's state.
        states = [d.state for d in read_jsonl(journal)]
        assert all(a != b for a, b in zip(states, states[1:])), states
    finally:
        stop.set()
        client.close()
        for stage in stages.values():
            stage.stop()
