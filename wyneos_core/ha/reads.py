"""What a replica's read endpoints answer from: the last committed view, read off the
request path.

``CommittedReads`` reads the committed decisions (``/v1/actions``) and tick summaries
(``/v1/ticks``) from etcd on a thread of its own, once per tick interval, and keeps
the last good answer. A request takes that answer and never waits on etcd: during a
quorum loss (members killed or stopped) the read endpoints keep answering with the
last view, which says how old it is (``as_of``) and why it is not newer
(``etcd_error``), instead of a 500 or a hang.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CommittedReads"]

log = logging.getLogger("wyneos.ha.reads")

#: tick summaries kept for ``/v1/ticks`` (its ``limit`` is capped at this on replicas)
TICKS_KEPT = 200


class CommittedReads:
    """The last committed view of ``read()``'s answers, refreshed on one thread.

    :param read: reads etcd and returns ``{"actions": ..., "ticks": [...]}``; may raise.
    :param every: seconds between reads.
    """

    def __init__(self, read: Callable[[], dict[str, Any]], every: float) -> None:
        self._read = read
        self.every = max(0.05, float(every))
        self._last: dict[str, Any] | None = None
        self.as_of: float | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Read once now (on the caller's thread); False when etcd did not answer."""
        try:
            answer = self._read()
        except Exception as exc:  # noqa: BLE001 - etcd trouble: the last view stays
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            log.info("committed view not refreshed: %s", self.error)
            return False
        self._last, self.as_of, self.error = answer, time.time(), None
        return True

    def poke(self) -> None:
        """Read again soon (a tick was committed)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="wyneos-reads", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._wake.wait(self.every)
            self._wake.clear()

    def _status(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "etcd_error": self.error}

    def actions(self) -> dict[str, Any]:
        """The committed decisions as ``/v1/actions`` answers them."""
        last = self._last
        if last is None:
            return {"committed_tick": 0, "in_force": [], "events": [], "acks": [], "refusals": [], "relays": [],
                    **self._status()}
        return {**last["actions"], **self._status()}

    def ticks(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` committed tick summaries (newest first)."""
        last = self._last
        return [] if last is None else list(last["ticks"][:max(0, limit)])
