"""The in-process heartbeat queue between whoever receives heartbeats and the tick."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from wyneos_core.model import Heartbeat

__all__ = ["HeartbeatQueue", "QueueFull"]


class QueueFull(RuntimeError):
    """The queue holds ``maxlen`` heartbeats already; the sender should back off."""


class HeartbeatQueue:
    """A bounded, thread-safe queue drained once per tick by the heartbeat step.

    Producers (the HTTP API, a simulator, tests) call ``put``; the builtin heartbeat
    plugin calls ``drain``. When full, ``put`` refuses instead of growing without bound.
    """

    __slots__ = ("_items", "_lock", "maxlen", "refused")

    def __init__(self, maxlen: int = 1_000_000) -> None:
        self._items: deque[Heartbeat] = deque()
        self._lock = threading.Lock()
        self.maxlen = maxlen
        self.refused = 0

    def put(self, heartbeat: Heartbeat) -> None:
        self.put_many((heartbeat,))

    def put_many(self, heartbeats: Iterable[Heartbeat]) -> None:
        batch = list(heartbeats)
        with self._lock:
            if len(self._items) + len(batch) > self.maxlen:
                self.refused += len(batch)
                raise QueueFull(f"heartbeat queue is full ({self.maxlen} waiting)")
            self._items.extend(batch)

    def drain(self) -> list[Heartbeat]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)
