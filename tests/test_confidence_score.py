"""Seed S2: properties of the confidence score, and its exact contributors."""

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from proto.messages import CAKE_STATES
from scorer.engine import Params, confidence_score
from tests.scoring import scorer_config

P = Params(scorer_config())
SEVERITY = {"GREEN": 0, "YELLOW": 1, "SOFT_RED": 2, "RED": 3}

states = st.sampled_from(CAKE_STATES)
zones = st.sampled_from([None, *CAKE_STATES])
deltas = st.floats(min_value=0, max_value=1000, allow_nan=False)
levels = st.floats(min_value=0, max_value=100, allow_nan=False)
weights = st.integers(min_value=0, max_value=100)


def score(state, delta, history, drops, queues, zone, p=P):
    return confidence_score(p, state, delta, list(history) + [state], list(drops), list(queues), zone)


@given(states, deltas, st.lists(states, max_size=2), st.lists(levels, min_size=3, max_size=3),
       st.lists(levels, min_size=2, max_size=2), zones,
       st.fixed_dictionaries({k: weights for k in (
           "red_state", "soft_red_sustained", "yellow_state", "rtt_delta_high", "rtt_delta_severe",
           "drops_increasing", "queue_high_sustained", "wan_red", "wan_soft_red")}))
@settings(max_examples=300)
def test_score_stays_within_0_and_100(state, delta, history, drops, queues, zone, w):
    p = Params(scorer_config(confidence={"weights": w}))
    value, _ = score(state, delta, history, drops, queues, zone, p)
    assert 0 <= value <= 100


@given(st.lists(st.just("GREEN"), max_size=2), st.floats(min_value=0, max_value=80))
def test_green_with_no_other_signal_scores_zero(history, delta):
    value, why = score("GREEN", delta, history, [0, 0, 0], [1, 1], None)
    assert (value, why) == (0, [])


@given(deltas, st.lists(states, max_size=2), st.lists(levels, min_size=3, max_size=3),
       st.lists(levels, min_size=2, max_size=2), zones)
def test_red_scores_at_least_red_state(delta, history, drops, queues, zone):
    value, why = score("RED", delta, history, drops, queues, zone)
    assert value >= P.w_red and why[0] == "RED"


@given(states, states, deltas, deltas, zones, zones, st.lists(levels, min_size=2, max_size=2), levels, levels)
@settings(max_examples=300)
def test_more_severe_signals_never_lower_the_score(s1, s2, d1, d2, z1, z2, queues, q_extra, last_drop):
    """Raise the state, the RTT delta, the WAN zone and the queue: the score does not drop."""
    lo_state, hi_state = sorted((s1, s2), key=SEVERITY.get)
    lo_delta, hi_delta = sorted((d1, d2))
    zone_rank = {None: 0, "GREEN": 0, "YELLOW": 0, "SOFT_RED": 1, "RED": 2}
    lo_zone, hi_zone = sorted((z1, z2), key=zone_rank.get)
    history = [hi_state, hi_state]  # a sustained run, so SOFT_RED counts
    drops = [0.0, 0.0, last_drop]
    low, _ = confidence_score(P, lo_state, lo_delta, [lo_state] * 3, drops, queues, lo_zone)
    high, _ = confidence_score(P, hi_state, hi_delta, history + [hi_state], drops,
                               [q + q_extra for q in queues], hi_zone)
    assert high >= low


def test_soft_red_counts_only_when_sustained_three_samples():
    assert score("SOFT_RED", 0, ["SOFT_RED"], [0] * 3, [0, 0], None) == (0, [])
    assert score("SOFT_RED", 0, ["YELLOW", "SOFT_RED"], [0] * 3, [0, 0], None) == (0, [])
    assert score("SOFT_RED", 0, ["SOFT_RED", "SOFT_RED"], [0] * 3, [0, 0], None) == (25, ["SOFT_RED_sustained"])


def test_contributors_in_contract_order_and_spelling():
    value, why = score("RED", 131.04, [], [1.0, 2.0, 3.0], [60.0, 70.0], "RED")
    assert why == ["RED", "rtt_delta=131.0ms(severe)", "drops_increasing", "queue_high_sustained", "WAN_RED"]
    assert value == 100  # 50 + 25 + 10 + 10 + 25, clamped
    value, why = score("YELLOW", 85.24, [], [0, 0, 0], [0, 0], "SOFT_RED")
    assert (value, why) == (10 + 15 + 12, ["YELLOW", "rtt_delta=85.2ms(high)", "WAN_SOFT_RED"])


def test_boundaries_are_strict_where_the_contract_says_greater():
    assert score("GREEN", 80.0, [], [0, 0, 0], [0, 0], None)[0] == 0  # > high, not >=
    assert score("GREEN", 120.0, [], [0, 0, 0], [0, 0], None)[0] == 15  # > high but not > severe
    assert score("GREEN", 0, [], [0, 0, 0], [50.0, 50.0], None)[0] == 0  # queue must exceed 50
    assert score("GREEN", 0, [], [2.0, 5.0, 2.0], [0, 0], None)[0] == 0  # last must exceed first
    assert score("GREEN", 0, [], [0.0, 0.0, 0.0], [0, 0], None)[0] == 0  # and be above zero


def test_short_histories_never_count():
    assert confidence_score(P, "GREEN", 0, ["GREEN"], [0.0, 5.0], [90.0], None) == (0, [])


def test_zero_weight_contributor_is_still_listed():
    p = Params(scorer_config(confidence={"weights": {"yellow_state": 0}}))
    assert confidence_score(p, "YELLOW", 0, ["YELLOW"], [0.0], [0.0], None) == (0, ["YELLOW"])


def test_history_deque_or_list_is_the_same():
    drops = deque([1.0, 2.0, 3.0])
    assert confidence_score(P, "GREEN", 0, ["GREEN"] * 3, drops, [0, 0], None)[1] == ["drops_increasing"]
