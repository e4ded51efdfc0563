"""A literal, unoptimised reading of docs/scoring.md (the quality policy), for differential tests.

Written to be obviously the text of the document rather than fast: every
accepted sample kept, every window recomputed by filtering from scratch, dicts,
no shortcuts.  It runs the quality policy alone (``policy: quality,
shadow: false``), so its decisions are numbered 1, 2, ... in emission order.
"""

from __future__ import annotations

import math

TOL = 1e-6
STATES = {"GREEN", "YELLOW", "SOFT_RED", "RED"}
STATUSES = {"ok", "lost", "unavailable"}


def median(values):
    if not values:
        return None
    v = sorted(values)
    n = len(v)
    if n % 2 == 1:
        return v[n // 2]
    return (v[n // 2 - 1] + v[n // 2]) / 2.0


class ReferenceQuality:
    def __init__(self, cfg, wans=()):
        self.q = cfg.quality
        self.seq = 0
        self.alternates = {w.name: w.alternate for w in wans if w.alternate}
        self.wans: dict[str, dict] = {}
        self.rejected: dict[str, int] = {}
        self.holds = {"alternate_worse": 0, "alternate_down": 0, "alternate_stale": 0, "flap_hold": 0}

    def _new_wan(self):
        return {"stream": None, "last_t": None, "state": "GOOD", "base": None, "window": [],
                "hold_down_until": None, "enables": [], "hold": None, "summary": [],
                "summary_stream": None, "last_measured_t": None}

    def _reject(self, cause):
        self.rejected[cause] = self.rejected.get(cause, 0) + 1
        return []

    # -- rule 1: validation (SPEC 5.1 plus the new fields) ---------------------

    def process(self, s):
        numbers = [s.t, s.wall, s.rtt_ms, s.baseline_rtt_ms, s.drops_per_sec, s.queue_depth_pct,
                   s.queue_delay_ms, s.loss_pct]
        if s.v != 1:
            return self._reject("unsupported_version")
        if any(x is not None and not math.isfinite(x) for x in numbers):
            return self._reject("non_finite")
        if any(x is not None and x < 0 for x in numbers[2:]):
            return self._reject("negative_value")
        if s.cake_state is not None and s.cake_state not in STATES:
            return self._reject("unknown_state")
        if s.wan_zone is not None and s.wan_zone not in STATES:
            return self._reject("unknown_state")
        if s.rtt_status is not None and s.rtt_status not in STATUSES:
            return self._reject("unknown_state")
        w = self.wans.get(s.wan)
        if w is not None and w["stream"] == s.stream and s.t <= w["last_t"] + TOL:
            return self._reject("out_of_order")
        if w is None:
            w = self.wans[s.wan] = self._new_wan()
            w["stream"] = s.stream
        elif w["stream"] != s.stream:
            by = s.t - w["last_t"]
            if w["hold_down_until"] is not None:
                w["hold_down_until"] += by
            w["enables"] = [x + by for x in w["enables"]]
            w["window"] = []
            w["stream"] = s.stream
        w["last_t"] = s.t
        return self._quality(w, s)

    # -- the policy --------------------------------------------------------------

    @staticmethod
    def status(s):
        if s.rtt_status is not None:
            return s.rtt_status
        return "ok" if s.rtt_ms is not None else "unavailable"

    def _summary_add(self, w, s):
        if w["summary_stream"] != s.stream:
            w["summary_stream"] = s.stream
            w["summary"] = []
            w["last_measured_t"] = None
        st = self.status(s)
        if st == "ok" and s.rtt_ms is not None:
            w["summary"].append((s.t, s.rtt_ms))
        elif st == "lost":
            w["summary"].append((s.t, None))
        else:
            return
        w["last_measured_t"] = s.t
        w["summary"] = [e for e in w["summary"] if e[0] > s.t - self.q.summary_window_s + TOL]

    def _harm(self, s, w, prim_rtt, prim_loss):
        q = self.q
        name = self.alternates.get(s.wan)
        if name is None:
            return None
        a = self.wans.get(name)
        if a is None or a["summary_stream"] != s.stream or a["last_measured_t"] is None \
                or s.t - a["last_measured_t"] > q.alternate_stale_s + TOL:
            return "alternate_stale"
        recent = [e for e in a["summary"] if e[0] > s.t - q.summary_window_s + TOL]
        rtts = [r for _, r in recent if r is not None]
        alt_loss = 0.0 if not recent else 100.0 * (len(recent) - len(rtts)) / len(recent)
        alt_rtt = median(rtts)
        if alt_loss >= q.alternate_down_loss_pct - TOL:
            return "alternate_down"
        if alt_rtt is not None and prim_rtt is not None and alt_rtt > prim_rtt + q.alternate_margin_ms + TOL:
            return "alternate_worse"
        if alt_loss > prim_loss + q.alternate_loss_margin_pct + TOL:
            return "alternate_worse"
        return None

    def _quality(self, w, s):
        q = self.q
        t = s.t
        if self.alternates:
            self._summary_add(w, s)
        # Rule 2: prune, drift guard.
        keep = max(q.window_s, q.recovery_window_s, q.severe_window_s)
        w["window"] = [e for e in w["window"] if e["t"] > t - keep + TOL]
        congested = w["state"] == "DEGRADED" or any(e["bad"] for e in w["window"])
        if s.baseline_rtt_ms is not None:
            if congested and w["base"] is not None:
                w["base"] = min(w["base"], s.baseline_rtt_ms)
            else:
                w["base"] = s.baseline_rtt_ms
        # Rule 3: classify.
        st = self.status(s)
        lost = st == "lost" or (s.loss_pct is not None and s.loss_pct >= q.loss_bad_pct)
        d = None
        if st == "ok" and s.rtt_ms is not None and w["base"] is not None:
            d = max(0.0, s.rtt_ms - w["base"])
        qd = s.queue_delay_ms
        zone = s.wan_zone in ("RED", "SOFT_RED")
        if d is not None or qd is not None or lost:
            bad = (lost or (d is not None and d >= q.delay_bad_ms) or (qd is not None and qd >= q.queue_bad_ms)
                   or (zone and ((d is not None and d >= q.delay_good_ms) or (qd is not None and qd >= q.queue_good_ms))))
            good = (not bad and not zone and (d is None or d < q.delay_good_ms)
                    and (qd is None or qd < q.queue_good_ms))
            severe = bad and ((d is not None and d >= q.delay_severe_ms) or (qd is not None and qd >= q.queue_severe_ms))
            rtt = s.rtt_ms if (st == "ok" and s.rtt_ms is not None) else None
            w["window"].append({"t": t, "bad": bad, "good": good, "lost": lost, "severe": severe, "d": d, "rtt": rtt})
        else:
            return []  # unmeasured: nothing more happens on this sample
        # Rule 4: the score over the steering window.
        win = [e for e in w["window"] if e["t"] > t - q.window_s + TOL]
        n = len(win)
        n_bad = len([e for e in win if e["bad"]])
        n_lost = len([e for e in win if e["lost"]])
        score = (100 * n_bad) // n if n else 0
        enables = w["enables"][-q.flap.max_enables:]
        capped = len(enables) >= q.flap.max_enables and t - enables[0] < q.flap.window_s - TOL
        threshold = 101 if capped else q.steer_share_pct
        why = [f"bad_share={score}%"]
        delays = [e["d"] for e in win if e["d"] is not None]
        if delays:
            why.append(f"delay_p50={median(delays):.1f}ms")
        if qd is not None:
            why.append(f"queue_delay={qd:.1f}ms")
        if n_lost:
            why.append(f"loss={(100 * n_lost) // n}%")
        if s.drops_per_sec is not None and s.drops_per_sec > 0:
            why.append(f"drops={s.drops_per_sec:.1f}/s")
        if zone:
            why.append(f"WAN_{s.wan_zone}")
        if w["base"] is not None and s.baseline_rtt_ms is not None and w["base"] < s.baseline_rtt_ms - TOL:
            why.append(f"baseline_frozen={w['base']:.1f}ms")
        prim_rtt = median([e["rtt"] for e in win if e["rtt"] is not None])
        prim_loss = 100.0 * n_lost / n if n else 0.0
        decision, sustained, hold = None, 0.0, None
        severe_share = None
        if w["state"] == "GOOD":
            current_bad = w["window"][-1]["bad"]
            oldest_bad = min((e["t"] for e in win if e["bad"]), default=None)
            moderate = (current_bad and n >= q.min_samples and 100 * n_bad >= q.steer_share_pct * n
                        and t - oldest_bad >= q.sustain_s - TOL)
            sev_win = [e for e in w["window"] if e["t"] > t - q.severe_window_s + TOL]
            sev = [e for e in sev_win if e["severe"]]
            severe = (current_bad and not moderate and len(sev_win) >= q.severe_min_samples and len(sev) > 0
                      and 100 * len(sev) >= q.severe_share_pct * len(sev_win)
                      and t - sev[0]["t"] >= q.severe_sustain_s - TOL)
            if moderate or severe:
                hold = self._harm(s, w, prim_rtt, prim_loss)
                if hold is None and capped:
                    hold = "flap_hold"
                if hold is None:
                    if moderate:
                        decision, sustained = "DEGRADED", t - oldest_bad
                    else:
                        decision, sustained = "DEGRADED", t - sev[0]["t"]
                        severe_share = (100 * len(sev)) // len(sev_win)
                        why.insert(1, f"severe_share={severe_share}%")
        else:
            hold = self._harm(s, w, prim_rtt, prim_loss)
            if hold is not None:
                decision = "GOOD"
            elif w["hold_down_until"] is None or not t < w["hold_down_until"] - TOL:
                rec = [e for e in w["window"] if e["t"] > t - q.recovery_window_s + TOL]
                m = len(rec)
                m_good = len([e for e in rec if e["good"]])
                if m:
                    why.append(f"good_share={(100 * m_good) // m}%")
                if m >= q.min_samples and 100 * m_good >= q.recovery_share_pct * m:
                    decision, sustained = "GOOD", t - rec[0]["t"]
        if hold is not None:
            why.append(hold)
            if hold != w["hold"]:
                self.holds[hold] += 1
        w["hold"] = hold
        if decision is None:
            return []
        w["state"] = decision
        if decision == "DEGRADED":
            w["hold_down_until"] = t + q.hold_down_s
            w["enables"].append(t)
        else:
            w["hold_down_until"] = None
        self.seq += 1
        return [dict(seq=self.seq, wan=s.wan, t=t, wall=s.wall, telemetry_seq=s.seq, policy="quality",
                     driving=True, fallback=False,
                     decision="ENABLE_STEERING" if decision == "DEGRADED" else "DISABLE_STEERING",
                     state=decision,
                     confidence=score if severe_share is None else severe_share,
                     threshold=threshold if severe_share is None else q.severe_share_pct, flap_penalty=capped,
                     contributors=why, sustained_s=sustained)]
