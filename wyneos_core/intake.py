"""Heartbeat intake: typed decoding, the one validation, and the queue to the tick.

A heartbeat that arrives over the network is decoded **once** into a typed struct
(:class:`HeartbeatBody`, msgspec: types are checked while decoding, unknown fields
refused), validated **once** against the registry (``Registry.check``) and queued as
a :class:`CheckedHeartbeat`. The tick applies a checked heartbeat from the builtin
intake with only the checks that depend on the moment it is applied (is the node
still registered, is it older than what the node already reported); heartbeats that
other plugins return are checked in full, as before.

Why msgspec: decoding a typical heartbeat body into a struct (with its type checks)
takes about a third of the time ``json`` needs to produce a plain dict whose types
must then be checked by hand (``bench/bench_heartbeats.py --decode-only`` measures both).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from wyneos_core.model import Heartbeat

__all__ = ["CheckedHeartbeat", "DecodeError", "HeartbeatBody", "HeartbeatQueue", "QueueFull", "decode_body"]


class QueueFull(RuntimeError):
    """The queue holds ``maxlen`` heartbeats already; the sender should back off."""


class DecodeError(ValueError):
    """A heartbeat body is not valid; ``field`` names where (``body`` for the whole)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class HeartbeatBody(msgspec.Struct, forbid_unknown_fields=True):
    """What a node reports in a heartbeat body (every field optional)."""

    node_id: str | None = None
    timestamp: float | None = None
    load: float | None = None
    metadata: dict[str, Any] | None = None
    licence_ref: str | None = None
    #: witness observations (``{subject, reachable, rtt_ms, last_seq}``), checked as for signed bodies
    observations: list[Any] | None = None
    #: numeric telemetry, metric name -> value (names and bounds checked by ``Registry.check``)
    metrics: dict[str, float] | None = None


_decoder = msgspec.json.Decoder(HeartbeatBody)


def decode_body(body: bytes) -> HeartbeatBody:
    """Decode a heartbeat body (UTF-8 JSON object) into its typed struct.

    :raises DecodeError: naming the field at fault.
    """
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = "body"
        if " - at `$." in text:
            text, where = text.rsplit(" - at `$.", 1)
            field = where.rstrip("`")
        if text.startswith("Object contains unknown field"):
            field = text.split("`", 2)[1]
            text = "unknown field (known: node_id, timestamp, load, metadata, licence_ref, observations, metrics)"
        raise DecodeError(field, text) from None
    except msgspec.DecodeError as exc:
        raise DecodeError("body", f"not JSON ({exc})") from None
    except RecursionError:
        raise DecodeError("body", "JSON nested too deeply") from None


@dataclass(slots=True, frozen=True)
class CheckedHeartbeat(Heartbeat):
    """A heartbeat that passed ``Registry.check`` on its way in (made by the intake only)."""


class HeartbeatQueue:
    """A bounded, thread-safe queue drained once per tick by the heartbeat step.

    Producers (the HTTP API, a simulator, tests) call ``put`` / ``put_many``; the builtin
    heartbeat plugin calls ``drain``. When full, ``put_many`` refuses the whole batch
    instead of growing without bound. Order is kept: heartbeats leave in the order they
    came. ``drain`` swaps the queue for an empty one, so producers never wait for the
    tick longer than that swap, and the tick takes at most ``maxlen`` heartbeats.
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
        batch = heartbeats if isinstance(heartbeats, list) else list(heartbeats)
        with self._lock:
            if len(self._items) + len(batch) > self.maxlen:
                self.refused += len(batch)
                raise QueueFull(f"heartbeat queue is full ({self.maxlen} waiting)")
            self._items.extend(batch)

    def room(self) -> int:
        """How many more heartbeats fit now."""
        return self.maxlen - len(self._items)

    def drain(self) -> list[Heartbeat]:
        with self._lock:
            items, self._items = self._items, deque()
        return list(items)

    def __len__(self) -> int:
        return len(self._items)
