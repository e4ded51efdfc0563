"""wanctl-report against crafted decision logs whose figures are worked out by hand."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = [str(Path(sys.executable).parent / "wanctl-report")]
DAY1 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
DAY2 = 1_700_086_400.0  # 2023-11-15 22:13:20 UTC


def decision(seq, wan, t, policy, direction, confidence, *, wall=None, driving=None, flag=False, fallback=False):
    enable = direction == "enable"
    return {
        "kind": "decision",
        "seq": seq,
        "wan": wan,
        "t": t,
        "wall": DAY1 + t if wall is None else wall,
        "telemetry_seq": seq * 10,
        "policy": policy,
        "driving": (policy == "confidence") if driving is None else driving,
        "fallback": fallback,
        "decision": "ENABLE_STEERING" if enable else "DISABLE_STEERING",
        "state": "DEGRADED" if enable else "GOOD",
        "confidence": confidence,
        "threshold": 70 if flag else 55,
        "flap_penalty": flag,
        "contributors": [],
        "sustained_s": 2.0,
    }


# wan1: one episode both steered (confidence 2 s later, 10 s earlier out), one only confidence,
# one only hysteresis, and confidence steering again at the very last decision;
# wan2 (next UTC day): both steering until the end, confidence 10 s earlier.
CRAFTED = [
    decision(1, "wan1", 100.0, "hysteresis", "enable", 95),
    decision(2, "wan1", 102.0, "confidence", "enable", 85),
    decision(3, "wan1", 140.0, "confidence", "disable", 0),
    decision(4, "wan1", 150.0, "hysteresis", "disable", 5),
    decision(5, "wan1", 500.0, "confidence", "enable", 60),
    decision(6, "wan1", 540.0, "confidence", "disable", 10, flag=True),
    decision(7, "wan1", 1000.0, "hysteresis", "enable", 45),
    decision(8, "wan1", 1020.0, "hysteresis", "disable", 0),
    decision(9, "wan2", 2000.0, "confidence", "enable", 100, wall=DAY2 + 2000.0),
    decision(10, "wan2", 2010.0, "hysteresis", "enable", 100, wall=DAY2 + 2010.0),
    decision(11, "wan1", 2100.0, "confidence", "enable", 70, wall=DAY2 + 2100.0),
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*REPORT, *map(str, args)], capture_output=True, text=True, timeout=120)


def report_json(*args: str) -> dict:
    result = run_report(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_json_figures_match_the_crafted_log(tmp_path):
    r = report_json(write_jsonl(tmp_path / "d.jsonl", CRAFTED))

    assert r["decisions"] == 11
    assert r["malformed_lines"] == 0
    conf, hyst = r["episodes"]["confidence"], r["episodes"]["hysteresis"]
    # 38 + 40 + (2100 - 2000, open) + (2100 - 2100, open)
    assert conf["count"] == 4 and conf["steered_s"] == pytest.approx(178.0)
    assert conf["median_s"] == pytest.approx(39.0) and conf["open_at_end"] == 2
    assert conf["driving"] is True and hyst["driving"] is False
    # 50 + 20 + (2100 - 2010, open)
    assert hyst["count"] == 3 and hyst["steered_s"] == pytest.approx(160.0)
    assert r["decisions_per_day"] == {"2023-11-14": 8, "2023-11-15": 3}
    assert r["confidence_histogram"] == [3, 1, 0, 0, 1, 0, 1, 1, 1, 3]
    assert sum(r["confidence_histogram"]) == r["decisions"]
    assert r["timers"]["degrade_expiries"] == 4 and r["timers"]["recovery_expiries"] == 2
    assert r["timers"]["resets"] is None  # not derivable, and said so

    # The flag at seq 6 cannot come from the default flap rule (2 toggles in 300 s): the
    # replay disagrees, so the count falls back to the flag turning true.
    assert r["flap_brake_activations"] == 1
    assert r["flap_brake"]["counted_by"] == "flag" and r["flap_brake"]["mismatches"] >= 1

    c = r["comparison"]
    assert c["derivable"] is True
    assert (c["both"], c["only_confidence"], c["only_hysteresis"]) == (2, 2, 1)
    assert c["start_offset_s"]["median"] == pytest.approx(-4.0)  # +2 and -10
    assert (c["start_offset_s"]["confidence_earlier"], c["start_offset_s"]["confidence_later"]) == (1, 1)
    assert c["end_offset_s"]["median"] == pytest.approx(-10.0)  # wan2's pair is still open
    # disagreement 72 s on wan1 and 10 s on wan2, over 2000 s each
    assert c["time_agreement_pct"] == pytest.approx(100 * (1 - 82 / 4000), abs=1e-3)
    kinds = [(d["wan"], d["kind"]) for d in c["differences"]]
    assert kinds == [
        ("wan1", "both"),
        ("wan1", "only_confidence"),
        ("wan1", "only_hysteresis"),
        ("wan2", "both"),
        ("wan1", "only_confidence"),
    ]


def test_flap_brake_counts_penalties_the_flag_never_shows(tmp_path):
    # Toggles 0..40: the 5th starts a penalty (60 s) that shows at t=50 only.  Toggles
    # 50..140 start a second one at t=140 that has expired by the next decision (t=250).
    rows, seq = [], 0
    for t, flag in [(0, False), (10, False), (20, False), (30, False), (40, False), (50, True),
                    (110, False), (120, False), (130, False), (140, False), (250, False), (260, False)]:
        seq += 1
        rows.append(decision(seq, "wan1", float(t), "confidence", "enable" if seq % 2 else "disable", 60, flag=flag))
    log = write_jsonl(tmp_path / "d.jsonl", rows)

    r = report_json(log)
    assert r["flap_brake_activations"] == 2
    assert r["flap_brake"]["counted_by"] == "replay"
    assert r["flap_brake"]["flag_onsets"] == 1 and r["flap_brake"]["mismatches"] == 0
    assert "comparison" in r and r["comparison"]["derivable"] is False  # no shadow decisions

    # Under other flap settings the replay contradicts the logged flag: only the flag counts.
    config = tmp_path / "wanctl.yaml"
    config.write_text("scorer:\n  flap:\n    max_toggles: 10\n")
    r = report_json(log, "--config", config)
    assert r["flap_brake_activations"] == 1 and r["flap_brake"]["counted_by"] == "flag"

    text = run_report(log).stdout
    assert "Flap-brake activations: 2" in text and "only 1 show as flap_penalty" in text
    assert "not derivable" in text


def test_fallback_decisions_belong_to_the_confidence_episodes(tmp_path):
    rows = [
        decision(1, "wan1", 10.0, "hysteresis", "enable", 50, driving=True, fallback=True),
        decision(2, "wan1", 11.0, "hysteresis", "enable", 50, driving=False),
        decision(3, "wan1", 60.0, "confidence", "disable", 0),
        decision(4, "wan1", 70.0, "hysteresis", "disable", 0, driving=False),
    ]
    r = report_json(write_jsonl(tmp_path / "d.jsonl", rows))
    assert r["fallback_decisions"] == 1
    assert r["episodes"]["confidence"]["count"] == 1
    assert r["episodes"]["confidence"]["steered_s"] == pytest.approx(50.0)
    assert r["episodes"]["hysteresis"]["steered_s"] == pytest.approx(59.0)
    assert r["timers"]["degrade_expiries"] == 0  # the fallback's ENABLE is no degrade run
    assert r["comparison"]["both"] == 1


def test_malformed_lines_are_counted_and_reported_never_fatal(tmp_path):
    bad_confidence = dict(CRAFTED[0], confidence=150)
    wrong_state = dict(CRAFTED[0], state="GOOD")
    telemetry = {"kind": "telemetry", "wan": "wan1", "seq": 1, "stream": "a", "t": 1.0, "wall": 2.0}
    rows = [CRAFTED[0], "this is not json", "[1, 2]", bad_confidence, "", wrong_state, telemetry, *CRAFTED[1:]]
    log = write_jsonl(tmp_path / "d.jsonl", rows)
    with log.open("a") as f:
        f.write('{"kind": "decision", "seq": 12, "wan"')  # a torn last line

    result = run_report(log, "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["decisions"] == 11 and r["malformed_lines"] == 5 and r["other_kind_lines"] == 1
    assert f"{log}:2: not JSON" in result.stderr
    assert f"{log}:3: not a JSON object" in result.stderr
    assert f"{log}:4:" in result.stderr and "<= 100" in result.stderr
    assert f"{log}:6: decision ENABLE_STEERING must leave state DEGRADED, got GOOD" in result.stderr
    assert f"{log}:{len(rows) + 1}:" in result.stderr
    assert "5 malformed lines skipped" in result.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    result = run_report(tmp_path / "absent.jsonl")
    assert result.returncode == 1
    assert "absent.jsonl" in result.stderr and "Traceback" not in result.stderr


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_with_trace_is_a_png_of_sensible_size(tmp_path):
    log = write_jsonl(tmp_path / "d.jsonl", CRAFTED)
    trace_rows = []
    for i in range(4300):  # a 0.5 s cadence over both WANs' decisions
        t = 90.0 + i * 0.5
        for wan, wall0 in (("wan1", DAY1), ("wan2", DAY2)):
            congested = 100 <= t < 150 or 2000 <= t
            trace_rows.append({
                "kind": "telemetry", "wan": wan, "seq": len(trace_rows) + 1, "stream": "boot-a",
                "t": t, "wall": wall0 + t, "rtt_ms": 20.0 + (140.0 if congested else 2.0), "baseline_rtt_ms": 20.0,
            })
    trace_rows.append({"kind": "heartbeat", "stage": "collector", "seq": 1})
    trace = write_jsonl(tmp_path / "trace.jsonl", trace_rows)
    png = tmp_path / "timeline.png"

    result = run_report(log, "--trace", trace, "--plot", png, "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["trace"]["samples"] == 8600 and r["trace"]["malformed_lines"] == 0
    conf, hyst = r["trace"]["policies"]["confidence"], r["trace"]["policies"]["hysteresis"]
    # congested: t in [100, 150) and t >= 2000 on both WANs = (100 + 480) x 2 samples
    assert conf["congested_samples"] == hyst["congested_samples"] == 1160
    # confidence: wan1 [102, 140) 76, wan1 from 2100 (open: to the trace's end) 280, wan2 from 2000 480
    assert conf["congested_samples_steered"] == 76 + 280 + 480
    # hysteresis: wan1 [100, 150) 100, wan2 from 2010 (open) 460
    assert hyst["congested_samples_steered"] == 100 + 460
    # open episodes run to the trace's end (2239.5 s); disagreement 211.5 s + 10 s over 2 x 2149.5 s
    assert r["comparison"]["time_agreement_pct"] == pytest.approx(100 * (1 - 221.5 / 4299), abs=1e-3)

    width, height = _png_size(png)
    assert 600 <= width <= 4000 and 600 <= height <= 8000
    assert 10_000 < png.stat().st_size < 5_000_000


def test_text_report_answers_the_rollout_questions(tmp_path):
    result = run_report(write_jsonl(tmp_path / "d.jsonl", CRAFTED))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("Steering episodes", "Decisions per day", "Flap-brake activations",
                    "Confidence at decisions", "Timers", "Phase 2B (confidence) vs Phase 2A (hysteresis)"):
        assert heading in out
    assert "wan1 t=102.0: both steered; confidence started 2.0 s later, ended 10.0 s earlier" in out
    assert "wan1 t=1000.0: only hysteresis steered, for 20.0 s" in out


def test_every_pair_of_policies_is_compared_and_the_fallback_follows_the_driving_policy(tmp_path):
    rows = [
        decision(1, "wan1", 100.0, "quality", "enable", 75, driving=True),
        decision(2, "wan1", 101.0, "hysteresis", "enable", 95, driving=False),
        decision(3, "wan1", 102.0, "confidence", "enable", 85, driving=False),
        decision(4, "wan1", 130.0, "quality", "disable", 0, driving=True),
        decision(5, "wan1", 140.0, "confidence", "disable", 0, driving=False),
        decision(6, "wan1", 150.0, "hysteresis", "disable", 5, driving=False),
        decision(7, "wan1", 200.0, "hysteresis", "enable", 50, driving=True, fallback=True),
        decision(8, "wan1", 230.0, "quality", "disable", 0, driving=True),
    ]
    r = report_json(write_jsonl(tmp_path / "d.jsonl", rows))
    assert sorted(r["comparisons"]) == ["confidence_vs_hysteresis", "quality_vs_confidence", "quality_vs_hysteresis"]
    qc = r["comparisons"]["quality_vs_confidence"]
    assert (qc["both"], qc["only_quality"], qc["only_confidence"]) == (1, 1, 0)
    assert qc["start_offset_s"]["quality_earlier"] == 1 and qc["end_offset_s"]["median"] == pytest.approx(-10.0)
    # The fallback decided for the driving quality policy: its second episode.
    assert r["episodes"]["quality"]["count"] == 2 and r["episodes"]["quality"]["steered_s"] == pytest.approx(60.0)
    assert r["episodes"]["hysteresis"]["count"] == 1
    text = run_report(tmp_path / "d.jsonl").stdout
    assert "quality vs Phase 2B (confidence)" in text and "quality vs Phase 2A (hysteresis)" in text
