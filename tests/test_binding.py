"""The scorer's state, journal and the decision file belong to one router and WAN set (runtime.binding)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from runtime.binding import bind, describe, fingerprint, fingerprint_path
from runtime.health import fetch_health
from scorer.process import ScorerCore
from tests.supervisor_harness import Stage, load, short_tmp, write_config
from tests.support import congested, wait_for

WANS = [{"name": "wan1", "queue": "cake-wan1", "rule_comment": "wanctl: steer wan1"},
        {"name": "wan2", "queue": "cake-wan2", "rule_comment": "wanctl: steer wan2"}]
STEER_FAST = {"policy": "confidence", "shadow": False, "flap": {"enabled": False},
              "confidence": {"sustain_s": 2.0, "recovery_sustain_s": 1.0, "hold_down_s": 3.0}}


@pytest.fixture
def directory():
    d = short_tmp()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def config(directory, router: dict | None = None, wans=WANS):
    path = directory / "wanctl.yaml"
    if path.exists():  # keep the health ports of the first write
        raw = yaml.safe_load(path.read_text())
        raw["router"], raw["wans"] = router or {}, wans
        path.write_text(yaml.safe_dump(raw))
    else:
        write_config(directory, {"router": router or {}, "wans": wans, "scorer": STEER_FAST})
    return load(path)


def degraded_core(cfg) -> ScorerCore:
    core = ScorerCore(cfg, epoch=1)
    for i in range(5):
        core.on_telemetry(congested(i + 1, i * 0.5))
    assert core.engine.states()[0].desired == "DEGRADED"
    core.close()
    return core


def test_the_fingerprint_covers_router_address_and_sorted_wans(directory):
    a = describe(config(directory, {"host": "192.0.2.1"}))
    assert a["router"] == "192.0.2.1:8728"
    assert [w["name"] for w in a["wans"]] == ["wan1", "wan2"]
    reordered = describe(config(directory, {"host": "192.0.2.1"}, wans=list(reversed(WANS))))
    assert fingerprint(a) == fingerprint(reordered)  # order in the file does not matter
    other_port = describe(config(directory, {"host": "192.0.2.1", "port": 8729}))
    other_rule = describe(config(directory, {"host": "192.0.2.1"},
                                 wans=[WANS[0], {**WANS[1], "rule_comment": "other"}]))
    other_queue = describe(config(directory, {"host": "192.0.2.1"}, wans=[WANS[0], {**WANS[1], "queue": "q"}]))
    assert len({fingerprint(d) for d in (a, other_port, other_rule, other_queue)}) == 4


def test_same_router_keeps_the_state(directory):
    cfg = config(directory)
    assert bind(cfg).outcome == "new"
    degraded_core(cfg)
    binding = bind(cfg)
    assert binding.outcome == "same" and not binding.moved
    assert ScorerCore(cfg, epoch=2).engine.states()[0].desired == "DEGRADED"


def test_files_without_a_fingerprint_are_adopted(directory):
    cfg = config(directory)
    degraded_core(cfg)  # written before fingerprints existed
    assert bind(cfg).outcome == "adopted"
    assert json.loads(fingerprint_path(cfg).read_text())["router"] == "127.0.0.1:8728"
    assert ScorerCore(cfg, epoch=2).engine.states()[0].desired == "DEGRADED"


def test_another_router_starts_fresh_and_moves_the_old_files_aside(directory):
    demo = config(directory)
    bind(demo)
    degraded_core(demo)
    decisions = directory / "decisions.jsonl"
    decisions.write_text('{"seq": 1}\n')
    (directory / "decisions.jsonl.1").write_text('{"seq": 0}\n')  # a rotated file goes with it
    real = config(directory, {"host": "192.0.2.1"})
    binding = bind(real, now_wall=1_800_000_000)
    assert binding.outcome == "moved_aside"
    assert binding.previous["router"] == "127.0.0.1:8728"
    stamp = "20270115T080000Z"
    assert sorted(p.name for p in directory.iterdir() if stamp in p.name) == [
        f"decisions.jsonl.1.{stamp}", f"decisions.jsonl.{stamp}",
        f"scorer-journal.jsonl.{stamp}", f"scorer-state.msgpack.{stamp}"]
    assert not decisions.exists()
    core = ScorerCore(real, epoch=2)
    assert core.engine.states() == []  # nothing restored: every WAN starts GOOD with its first sample
    assert core.engine.next_seq == 1 and core.journal.last_seq == 0
    # A WAN set change is a different binding too; the second move does not overwrite the first.
    core.close()
    binding = bind(config(directory, {"host": "192.0.2.1"}, wans=WANS[:1]), now_wall=1_800_000_000)
    assert binding.outcome == "moved_aside"
    assert any(name.endswith(f"{stamp}.2") for name in binding.moved)


def test_the_scorer_process_says_what_it_moved_aside(directory):
    cfg = config(directory)
    bind(cfg)
    degraded_core(cfg)
    cfg = config(directory, {"host": "127.0.0.2", "port": 18728})  # no stage connects to it: the scorer never does
    stage = Stage("wanctl-scorer", directory / "wanctl.yaml", directory)
    try:
        url = f"http://127.0.0.1:{cfg.health.scorer}"
        # The endpoint is up a moment before the scorer notes its binding: wait for the detail.
        doc = wait_for(lambda: (d := _health(url)) and "router_binding" in d.get("details", {}) and d,
                       timeout=10, what="the router binding in the scorer's health details")
        binding = doc["details"]["router_binding"]
        assert binding["outcome"] == "moved_aside"
        assert binding["router"] == "127.0.0.2:18728" and binding["previous"]["router"] == "127.0.0.1:8728"
        assert any("scorer-state.msgpack." in p for p in binding["moved_aside"])
    finally:
        stage.stop()
    assert "starting fresh; moved aside" in stage.output()


def _health(url):
    try:
        return fetch_health(url, 0.5)
    except OSError:
        return None
