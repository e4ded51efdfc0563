"""The engine's counters through every way they leave it: ``counters``, ``totals``,
``export``/``restore`` and ``load_wans``; and a quality window that loses several
samples at once (a pause shorter than the gap limit)."""

import msgspec

from proto.config import parse_config
from scorer.engine import Engine, Snapshot
from tests.scoring import CONGESTED, Feed, decide

COUNTER_NAMES = [
    "scored", "ignored_null_rtt", "gaps", "stream_changes", "fallbacks", "confidence_errors", "decisions",
    "quality_errors", "quality_holds_alternate_worse", "quality_holds_alternate_down",
    "quality_holds_alternate_stale", "quality_holds_flap_hold", "quality_steer_backs",
]


def default_engine() -> Engine:
    cfg = parse_config({})
    return Engine(cfg.scorer, wans=cfg.wans)


def busy_engine() -> Engine:
    engine = default_engine()
    feed = Feed()
    decide(engine, feed.seconds(10, 0.5) + feed.seconds(10, 0.5, rtt_ms=None)
           + feed.seconds(20, 0.5, **CONGESTED) + feed.seconds(40, 0.5))
    return engine


def test_every_sample_is_counted_and_the_counters_keep_their_names_and_order():
    engine = busy_engine()
    c = engine.counters
    assert list(c) == ["accepted", *COUNTER_NAMES]
    assert (c["scored"], c["ignored_null_rtt"], c["accepted"]) == (140, 20, 160)
    assert c["decisions"] > 0
    rejected, totals = engine.totals()
    assert list(totals) == COUNTER_NAMES and totals["scored"] == 140


def test_the_counters_survive_export_and_restore_and_keep_counting():
    engine = busy_engine()
    snap = msgspec.msgpack.decode(engine.export(), type=Snapshot)
    assert list(snap.counters) == COUNTER_NAMES and snap.counters["scored"] == 140
    again = Engine.restore(engine.cfg, engine.export(), wans=parse_config({}).wans)
    assert again.counters == engine.counters
    feed = Feed(t=engine.wans["wan1"].last_t + 0.5)
    feed.stream = engine.wans["wan1"].stream
    decide(again, feed.seconds(5, 0.5))
    assert again.counters["scored"] == 150 and again.counters["accepted"] == 170


def test_load_wans_takes_the_counters_of_a_partial_snapshot():
    engine = busy_engine()
    rejected, counters = engine.totals()
    other = default_engine()
    other.load_wans(list(engine.wans.values()), engine.next_seq, rejected, dict(counters))
    assert other.counters == engine.counters
    decide(other, [Feed(wan="wan2").sample()])
    assert other.counters["scored"] == 141


def test_a_pause_drops_several_samples_from_the_quality_window_at_once():
    engine = default_engine()
    feed = Feed()
    decide(engine, feed.seconds(5, 0.5) + feed.seconds(2, 0.5, rtt_ms=100.0))
    q = engine.wans["wan1"].quality
    assert q.bad_kept == 4 and len(q.win_t) == 10
    feed.t += 3.5  # below max_gap_s: no gap, but 8 samples leave the 5 s window together
    decide(engine, [feed.sample()])
    assert q.win_t == [1006.0, 1006.5, 1010.5]
    assert q.win_flag == [1, 1, 2] and q.bad_kept == 2
    assert len(q.win_delay) == len(q.win_rtt) == 3
