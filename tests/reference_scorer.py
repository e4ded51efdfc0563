"""A literal, unoptimised reading of SPEC section 5, for differential tests.

Written to be obviously the text of the contract rather than fast: full
histories, dicts, no shortcuts.  ``tests/test_engine_differential.py`` feeds
random traces to it and to ``scorer.engine.Engine`` and requires identical
decisions.
"""

from __future__ import annotations

import math

TOL = 1e-6
STATES = {"GREEN", "YELLOW", "SOFT_RED", "RED"}


class ReferenceScorer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.seq = 0
        self.wans: dict[str, dict] = {}
        self.rejected: dict[str, int] = {}

    # -- helpers ---------------------------------------------------------------

    def _new_wan(self):
        return {
            "stream": None, "last_t": None, "last_scored_t": None,
            "ewma": None, "hist_states": [], "hist_drops": [], "hist_queues": [],
            "c_state": "GOOD", "degrade_start": None, "recovery_start": None,
            "hold_until": None, "penalty_until": None, "toggles": [],
            "h_state": "GOOD", "h_count": 0, "h_first": None,
            "fb_state": "GOOD", "fb_count": 0, "fb_first": None,
        }

    def _reject(self, cause):
        self.rejected[cause] = self.rejected.get(cause, 0) + 1
        return []

    def _clear(self, w):
        w["degrade_start"] = None
        w["recovery_start"] = None
        w["hist_states"], w["hist_drops"], w["hist_queues"] = [], [], []
        w["ewma"] = None
        w["h_count"] = 0
        w["fb_count"] = 0

    def _penalty_active(self, w, t):
        return w["penalty_until"] is not None and t < w["penalty_until"] - TOL

    # -- section 5 -------------------------------------------------------------

    def process(self, s):
        cfg = self.cfg
        numbers = [s.t, s.wall, s.rtt_ms, s.baseline_rtt_ms, s.drops_per_sec, s.queue_depth_pct]
        if s.v != 1:
            return self._reject("unsupported_version")
        if any(x is not None and not math.isfinite(x) for x in numbers):
            return self._reject("non_finite")
        if any(x is not None and x < 0 for x in numbers[2:]):
            return self._reject("negative_value")
        if (s.cake_state is not None and s.cake_state not in STATES) or (
                s.wan_zone is not None and s.wan_zone not in STATES):
            return self._reject("unknown_state")
        w = self.wans.get(s.wan)
        if w is not None and w["stream"] == s.stream and not (s.t > w["last_t"] + TOL):
            return self._reject("out_of_order")
        if w is None:
            w = self.wans[s.wan] = self._new_wan()
            w["stream"] = s.stream
        elif w["stream"] != s.stream:
            shift = s.t - w["last_t"]
            if w["hold_until"] is not None:
                w["hold_until"] += shift
            if w["penalty_until"] is not None:
                w["penalty_until"] += shift
            w["toggles"] = [x + shift for x in w["toggles"]]
            self._clear(w)
            w["last_scored_t"] = None
            w["stream"] = s.stream
        w["last_t"] = s.t
        if s.rtt_ms is None or s.baseline_rtt_ms is None:
            return []
        t = s.t
        if w["last_scored_t"] is not None and t - w["last_scored_t"] > cfg.max_gap_s + TOL:
            self._clear(w)
        w["last_scored_t"] = t

        # 5.3
        a = cfg.assess
        delta = max(0.0, s.rtt_ms - s.baseline_rtt_ms)
        w["ewma"] = delta if w["ewma"] is None else w["ewma"] + a.rtt_ewma_alpha * (delta - w["ewma"])
        drops = s.drops_per_sec if s.drops_per_sec is not None else 0.0
        queue = s.queue_depth_pct if s.queue_depth_pct is not None else 0.0
        if s.cake_state is not None:
            state = s.cake_state
        elif w["ewma"] > a.red_rtt_ms and drops >= a.min_drops_red and queue >= a.min_queue_red_pct:
            state = "RED"
        elif w["ewma"] > a.soft_red_rtt_ms:
            state = "SOFT_RED"
        elif w["ewma"] > a.yellow_rtt_ms or queue >= a.min_queue_yellow_pct:
            state = "YELLOW"
        else:
            state = "GREEN"
        w["hist_states"].append(state)
        w["hist_drops"].append(drops)
        w["hist_queues"].append(queue)

        # 5.4
        c = cfg.confidence
        wt = c.weights
        score, why = 0, []
        if state == "RED":
            score += wt.red_state
            why.append("RED")
        if state == "SOFT_RED" and len(w["hist_states"]) >= 3 and all(
                x == "SOFT_RED" for x in w["hist_states"][-3:]):
            score += wt.soft_red_sustained
            why.append("SOFT_RED_sustained")
        if state == "YELLOW":
            score += wt.yellow_state
            why.append("YELLOW")
        if delta > c.rtt_delta_severe_ms:
            score += wt.rtt_delta_severe
            why.append(f"rtt_delta={delta:.1f}ms(severe)")
        elif delta > c.rtt_delta_high_ms:
            score += wt.rtt_delta_high
            why.append(f"rtt_delta={delta:.1f}ms(high)")
        d = w["hist_drops"]
        if len(d) >= 3 and d[-1] > d[-3] and d[-1] > 0:
            score += wt.drops_increasing
            why.append("drops_increasing")
        q = w["hist_queues"]
        if len(q) >= 2 and q[-1] > c.queue_high_pct and q[-2] > c.queue_high_pct:
            score += wt.queue_high_sustained
            why.append("queue_high_sustained")
        if s.wan_zone == "RED":
            score += wt.wan_red
            why.append("WAN_RED")
        if s.wan_zone == "SOFT_RED":
            score += wt.wan_soft_red
            why.append("WAN_SOFT_RED")
        score = max(0, min(100, score))

        confidence_running = cfg.policy == "confidence" or cfg.shadow
        hysteresis_running = cfg.policy == "hysteresis" or cfg.shadow
        if confidence_running:
            penalty = cfg.flap.enabled and self._penalty_active(w, t)
            threshold = c.steer_threshold + (cfg.flap.penalty_threshold_add if penalty else 0)
        else:
            penalty, threshold = False, c.steer_threshold

        out = []

        def decision(policy, driving, new_state, sustained):
            return dict(wan=s.wan, t=t, wall=s.wall, telemetry_seq=s.seq, policy=policy, driving=driving,
                        fallback=False,
                        decision="ENABLE_STEERING" if new_state == "DEGRADED" else "DISABLE_STEERING",
                        state=new_state, confidence=score, threshold=threshold, flap_penalty=penalty,
                        contributors=list(why), sustained_s=sustained)

        # 5.5
        if confidence_running:
            made = None
            if w["c_state"] == "GOOD":
                if score >= threshold:
                    if w["degrade_start"] is None:
                        w["degrade_start"] = t
                    if t - w["degrade_start"] >= c.sustain_s - TOL:
                        made = ("DEGRADED", t - w["degrade_start"])
                else:
                    w["degrade_start"] = None
            elif w["hold_until"] is not None and t < w["hold_until"] - TOL:
                pass
            else:
                r = cfg.recovery
                eligible = (score <= c.recovery_threshold and state in r.allowed_states
                            and delta < r.max_rtt_delta_ms and drops < r.max_drops_per_sec
                            and s.wan_zone in (None, "GREEN"))
                if eligible:
                    if w["recovery_start"] is None:
                        w["recovery_start"] = t
                    if t - w["recovery_start"] >= cfg.confidence.recovery_sustain_s - TOL:
                        made = ("GOOD", t - w["recovery_start"])
                else:
                    w["recovery_start"] = None
            if made is not None:
                new_state, sustained = made
                w["c_state"] = new_state
                w["degrade_start"] = None
                w["recovery_start"] = None
                if new_state == "DEGRADED":
                    w["hold_until"] = t + c.hold_down_s
                if cfg.flap.enabled:
                    f = cfg.flap
                    w["toggles"] = [x for x in w["toggles"] if not (x <= t - f.window_s + TOL)]
                    w["toggles"].append(t)
                    while len(w["toggles"]) > f.max_toggles + 1:
                        w["toggles"].pop(0)
                    if len(w["toggles"]) > f.max_toggles and not self._penalty_active(w, t):
                        w["penalty_until"] = t + f.penalty_s
                        w["toggles"] = []
                out.append(decision("confidence", cfg.policy == "confidence", new_state, sustained))

        # 5.6
        if hysteresis_running:
            want = "RED" if w["h_state"] == "GOOD" else "GREEN"
            if state == want:
                if w["h_count"] == 0:
                    w["h_first"] = t
                w["h_count"] += 1
            else:
                w["h_count"] = 0
            h = cfg.hysteresis
            need = h.red_samples_required if w["h_state"] == "GOOD" else h.green_samples_required
            if w["h_count"] >= need:
                w["h_state"] = "DEGRADED" if w["h_state"] == "GOOD" else "GOOD"
                w["h_count"] = 0
                d = decision("hysteresis", cfg.policy == "hysteresis", w["h_state"], t - w["h_first"])
                if cfg.policy == "hysteresis":
                    out.insert(0, d)
                else:
                    out.append(d)

        for d in out:
            self.seq += 1
            d["seq"] = self.seq
        return out
