"""The stop flag of a process: set by SIGTERM or SIGINT, polled by its loop."""

from __future__ import annotations

import signal


class StopFlag:
    """Set by SIGTERM/SIGINT; loops poll with short timeouts and check it.

    ``restore()`` puts back the handlers that were installed before.
    """

    def __init__(self) -> None:
        self.stopping = False
        self._previous = {sig: signal.signal(sig, self._set) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _set(self, signum, frame) -> None:
        self.stopping = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
