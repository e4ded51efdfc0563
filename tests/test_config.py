"""Seed "config validation": every rule of SPEC section 4, with its key path, rule and value."""

import subprocess
import sys
from pathlib import Path

import pytest

from proto.config import ConfigError, load_config, parse_config

REPLAY = Path(sys.executable).parent / "wanctl-replay"


def problem(raw) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return str(caught.value)


def test_empty_config_is_valid_and_has_the_seed_defaults():
    s = parse_config({}).scorer
    assert (s.policy, s.shadow, s.max_gap_s) == ("quality", True, 5.0)
    assert (s.confidence.steer_threshold, s.confidence.recovery_threshold) == (55, 20)
    assert (s.confidence.sustain_s, s.confidence.recovery_sustain_s, s.confidence.hold_down_s) == (2.0, 3.0, 30.0)
    assert s.confidence.weights.red_state == 50 and s.confidence.weights.wan_soft_red == 12
    assert (s.flap.window_s, s.flap.max_toggles, s.flap.penalty_s, s.flap.penalty_threshold_add) == (300.0, 4, 60.0, 15)
    assert s.recovery.allowed_states == ["GREEN"] and s.recovery.max_drops_per_sec == 0.001
    assert (s.hysteresis.red_samples_required, s.hysteresis.green_samples_required) == (2, 15)
    assert parse_config(None) == parse_config({})


@pytest.mark.parametrize("raw,expected", [
    ({"scorer": {"confidence": {"recovery_threshold": 60}}},
     "scorer.confidence.recovery_threshold: must be less than steer_threshold (55), got 60"),
    ({"scorer": {"confidence": {"recovery_threshold": 55}}},
     "scorer.confidence.recovery_threshold: must be less than steer_threshold (55), got 55"),
    ({"scorer": {"confidence": {"recovery_threshold": -1}}}, "scorer.confidence.recovery_threshold: must be >= 0, got -1"),
    ({"scorer": {"confidence": {"steer_threshold": 101}}}, "scorer.confidence.steer_threshold: must be <= 100, got 101"),
    ({"scorer": {"confidence": {"weights": {"red_state": 101}}}},
     "scorer.confidence.weights.red_state: must be <= 100, got 101"),
    ({"scorer": {"confidence": {"weights": {"wan_red": -5}}}}, "scorer.confidence.weights.wan_red: must be >= 0, got -5"),
    ({"scorer": {"confidence": {"weights": {"yellow_state": 2.5}}}},
     "scorer.confidence.weights.yellow_state: must be of type int, got 2.5"),
    ({"scorer": {"confidence": {"sustain_s": -1}}}, "scorer.confidence.sustain_s: must be >= 0.0, got -1"),
    ({"scorer": {"confidence": {"recovery_sustain_s": -0.5}}},
     "scorer.confidence.recovery_sustain_s: must be >= 0.0, got -0.5"),
    ({"scorer": {"confidence": {"hold_down_s": -30}}}, "scorer.confidence.hold_down_s: must be >= 0.0, got -30"),
    ({"scorer": {"max_gap_s": 0}}, "scorer.max_gap_s: must be > 0.0, got 0"),
    ({"scorer": {"flap": {"window_s": 0}}}, "scorer.flap.window_s: must be > 0.0, got 0"),
    ({"scorer": {"flap": {"penalty_s": -60}}}, "scorer.flap.penalty_s: must be > 0.0, got -60"),
    ({"scorer": {"flap": {"max_toggles": 0}}}, "scorer.flap.max_toggles: must be >= 1, got 0"),
    ({"scorer": {"assess": {"rtt_ewma_alpha": 0}}}, "scorer.assess.rtt_ewma_alpha: must be > 0.0, got 0"),
    ({"scorer": {"assess": {"rtt_ewma_alpha": 1.5}}}, "scorer.assess.rtt_ewma_alpha: must be <= 1.0, got 1.5"),
    ({"scorer": {"assess": {"yellow_rtt_ms": 50}}},
     "scorer.assess.yellow_rtt_ms: must be at most soft_red_rtt_ms (45.0), got 50.0"),
    ({"scorer": {"confidence": {"rtt_delta_high_ms": 120}}},
     "scorer.confidence.rtt_delta_high_ms: must be less than rtt_delta_severe_ms (120.0), got 120.0"),
    ({"scorer": {"hysteresis": {"red_samples_required": 0}}},
     "scorer.hysteresis.red_samples_required: must be >= 1, got 0"),
    ({"scorer": {"hysteresis": {"green_samples_required": 0}}},
     "scorer.hysteresis.green_samples_required: must be >= 1, got 0"),
    ({"scorer": {"recovery": {"allowed_states": []}}}, "scorer.recovery.allowed_states: must name at least one state"),
    ({"scorer": {"recovery": {"allowed_states": ["GREEN", "BLUE"]}}},
     "scorer.recovery.allowed_states[1]: must be one of GREEN, YELLOW, SOFT_RED, RED, got 'BLUE'"),
    ({"scorer": {"policy": "magic"}}, "scorer.policy: invalid value, got 'magic'"),
    ({"scorer": {"max_gap_s": "soon"}}, "scorer.max_gap_s: must be of type float, got 'soon'"),
    ({"scorer": {"confidence": {"sustain": 2}}}, "scorer.confidence.sustain: unknown key"),
    ({"scorer": {"flap": {"enabled": True, "window": 300}}}, "scorer.flap.window: unknown key"),
    ({"phase2b": {}}, "phase2b: unknown key"),
    ({"scorer": {"shadow": ["quality"]}}, "scorer.shadow: must not name the driving policy (quality)"),
    ({"scorer": {"policy": "confidence", "shadow": ["hysteresis", "hysteresis"]}},
     "scorer.shadow: must not repeat a policy"),
    ({"scorer": {"quality": {"delay_good_ms": 50.0}}},
     "scorer.quality.delay_good_ms: must be at most delay_bad_ms (45.0), got 50.0"),
    ({"scorer": {"quality": {"steer_share_pct": 0}}}, "scorer.quality.steer_share_pct: must be >= 1, got 0"),
    ({"scorer": {"quality": {"delay_severe_ms": 40.0}}},
     "scorer.quality.delay_severe_ms: must be at least delay_bad_ms (45.0), got 40.0"),
    ({"scorer": {"quality": {"queue_severe_ms": 44.0}}},
     "scorer.quality.queue_severe_ms: must be at least queue_bad_ms (45.0), got 44.0"),
    ({"scorer": {"quality": {"severe_min_samples": 0}}}, "scorer.quality.severe_min_samples: must be >= 1, got 0"),
    ({"wans": [{"name": "wan1", "queue": "q", "alternate": "wan9"}]},
     "wans[0].alternate: must name another configured WAN, got 'wan9'"),
])
def test_each_rule_is_enforced_with_key_path_rule_and_value(raw, expected):
    assert expected in problem(raw)


def test_all_cross_field_problems_are_reported_together():
    text = problem({"scorer": {"confidence": {"recovery_threshold": 70, "rtt_delta_high_ms": 200},
                               "assess": {"yellow_rtt_ms": 99}}})
    assert len(text.splitlines()) == 3


def test_bounds_are_inclusive_where_the_contract_says_so():
    cfg = parse_config({"scorer": {"confidence": {"steer_threshold": 100, "recovery_threshold": 0, "sustain_s": 0,
                                                   "recovery_sustain_s": 0, "hold_down_s": 0},
                                   "assess": {"rtt_ewma_alpha": 1, "yellow_rtt_ms": 45},
                                   "recovery": {"allowed_states": ["GREEN", "YELLOW", "SOFT_RED", "RED"]}}})
    assert cfg.scorer.confidence.steer_threshold == 100


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scorer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "wanctl.yaml"
    path.write_text("scorer:\n  shadow: false\n")
    cfg = load_config(path, ["scorer.confidence.steer_threshold=60", "scorer.flap.enabled=false"])
    assert cfg.scorer.confidence.steer_threshold == 60 and not cfg.scorer.flap.enabled and not cfg.scorer.shadow
    with pytest.raises(ConfigError, match="scorer.confidence.steer_threshold: must be <= 100, got 600"):
        load_config(path, ["scorer.confidence.steer_threshold=600"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(path, ["scorer.confidence.steer_threshold"])


def test_replay_exits_2_on_a_bad_config_and_names_the_key(tmp_path):
    config = tmp_path / "wanctl.yaml"
    config.write_text("scorer:\n  confidence:\n    recovery_threshold: 60\n")
    trace = tmp_path / "trace.jsonl"
    trace.write_text("")
    done = subprocess.run([str(REPLAY), str(trace), "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "scorer.confidence.recovery_threshold: must be less than steer_threshold (55), got 60" in done.stderr
    assert done.stdout == ""
