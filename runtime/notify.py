"""Webhook notifications (``notify.webhook_url``): steering changes reach a chat, a pager or a log service.

The scorer hands every decision and every state it publishes to a ``Notifier``;
it picks out what operators want to hear about and POSTs it as JSON:

- ``{"event": "decision", ...}``: one per *driving* decision (steering on or
  off on a WAN), with the decision's fields;
- ``{"event": "flap_brake", ...}``: one each time a WAN's flap brake engages
  (its published state's ``flap_penalty`` turns on).

The stage loop never waits on the network: ``decision``/``states`` only put a
small dict into a bounded queue (``notify.queue_size``); a full queue drops the
notification and counts it.  One daemon thread sends them in order, each with
up to ``notify.retries`` retries and exponential backoff; a notification that
still fails is dropped and counted.  On stop the thread gets ``timeout_s`` to
send what is queued (one attempt each, no retries); what is left is counted as failed.

Delivery is at most once per event and best effort: the decision file
(``logger.path``) remains the record.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from proto.config import Config, router_address
from proto.messages import DEGRADED, Decision, State

log = logging.getLogger("wanctl.notify")

_STOP = object()


class Notifier:
    """The bounded queue and the sending thread (``start``/``close``); counters for the stage's health."""

    def __init__(self, cfg: Config, *, sleep: Callable[[float], None] | None = None) -> None:
        n = cfg.notify
        self.url = n.webhook_url
        self.timeout_s = n.timeout_s
        self.retries = n.retries
        self.backoff_initial_s = n.backoff_initial_s
        self.backoff_max_s = n.backoff_max_s
        self.router = "%s:%d" % router_address(cfg)
        self.queue: queue.Queue = queue.Queue(maxsize=n.queue_size)
        self.counters = {"notify_queued": 0, "notify_sent": 0, "notify_retries": 0, "notify_failed": 0,
                         "notify_dropped_full": 0}
        self.last_error: str | None = None
        self._penalty: dict[str, bool] = {}
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.url is not None

    # --- what the stage loop calls (never blocks) ----------------------------------

    def decision(self, d: Decision) -> None:
        """A decision the scorer published: a driving one is notified."""
        if not self.enabled or not d.driving:
            return
        self._put({"event": "decision", "wan": d.wan, "seq": d.seq, "decision": d.decision, "state": d.state,
                   "steering": d.state == DEGRADED, "policy": d.policy, "fallback": d.fallback,
                   "confidence": d.confidence, "threshold": d.threshold, "flap_penalty": d.flap_penalty,
                   "contributors": list(d.contributors), "sustained_s": d.sustained_s, "wall": d.wall})

    def states(self, states: list[State]) -> None:
        """The states the scorer published: a WAN whose flap penalty turns on is notified.

        The first state seen of a WAN only sets what is known (a restart does not repeat the last activation).
        """
        if not self.enabled:
            return
        for s in states:
            before = self._penalty.get(s.wan)
            self._penalty[s.wan] = s.flap_penalty
            if before is False and s.flap_penalty:
                self._put({"event": "flap_brake", "wan": s.wan, "policy": s.policy, "threshold": s.threshold,
                           "flap_penalty_remaining_s": s.flap_penalty_remaining_s, "decision_seq": s.decision_seq,
                           "state": s.desired, "wall": time.time()})

    def _put(self, body: dict[str, Any]) -> None:
        body = {"source": "wanctl", "router": self.router, **body}
        try:
            self.queue.put_nowait(body)
            self.counters["notify_queued"] += 1
        except queue.Full:
            self.counters["notify_dropped_full"] += 1
            if self.counters["notify_dropped_full"] % 100 == 1:  # the first, then every 100th
                log.warning("notify: queue full (%d); dropped a %s notification for %s (%d dropped so far)",
                            self.queue.maxsize, body["event"], body["wan"], self.counters["notify_dropped_full"])

    # --- the sending thread ---------------------------------------------------------

    def start(self) -> Notifier:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
            self._thread.start()
            log.info("notify: POSTing driving decisions and flap-brake activations to %s", self.url)
        return self

    def close(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        try:
            self.queue.put_nowait(_STOP)
        except queue.Full:
            pass
        self._thread.join(timeout=self.timeout_s + 1.0)  # what is queued gets one attempt within that time
        self._thread = None
        left = 0
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            left += item is not _STOP
        if left:
            self.counters["notify_failed"] += left
            log.warning("notify: stopping with %d notifications unsent", left)

    def _run(self) -> None:
        while (item := self.queue.get()) is not _STOP:
            self._deliver(item)  # once stopping, without retries

    def _deliver(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        delay = self.backoff_initial_s
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters["notify_retries"] += 1
                self._sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                if self._stopping.is_set():
                    break
            problem = self._post(data)
            if problem is None:
                self.counters["notify_sent"] += 1
                self.last_error = None
                return
            self.last_error = problem
        self.counters["notify_failed"] += 1
        log.error("notify: gave up on a %s notification for %s after %d attempts: %s",
                  body["event"], body["wan"], attempt + 1, self.last_error)

    def _post(self, data: bytes) -> str | None:
        request = urllib.request.Request(self.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "wanctl"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read(65536)
            return None
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code} {error.reason}"
        except Exception as error:  # noqa: BLE001 - any failure is retried, never raised into the stage
            return f"{type(error).__name__}: {getattr(error, 'reason', None) or error}"

    def conditions(self) -> dict[str, str]:
        """Degraded while the last attempt failed (the webhook is down or refuses)."""
        if self.last_error is None:
            return {}
        return {"notify": f"webhook {self.url}: {self.last_error}"}


def start_notifier(stage) -> Notifier:
    """The stage's notifier, started, its counters and condition in the stage's health, stopped with the stage."""
    notifier = Notifier(stage.cfg).start()
    if notifier.enabled:
        stage.count_from("notify", notifier.counters)
        stage.health.conditions_from("notify", notifier.conditions)
        stage.on_close("stop the webhook notifier", notifier.close)
    return notifier
