"""Heartbeat intake: typed decoding, the one validation, and the queue to the tick.

A heartbeat that arrives over the network is decoded **once** into a typed struct
(:class:`HeartbeatBody`, msgspec: types are checked while decoding, unknown fields
refused), validated **once** against the registry (``Registry.check``) and queued as
a :class:`CheckedHeartbeat`. The tick applies a checked heartbeat from the builtin
intake with only the checks that depend on the moment it is applied (is the node
still registered, is it older than what the node already reported); heartbeats that
other plugins return are checked in full, as before.

Heartbeats also come as columns (:class:`HeartbeatColumns`): node ids, timestamps and
loads of a whole batch as arrays, for producers that hold a batch already (a relay, a
session's batched route, a simulator, a benchmark). ``HeartbeatQueue.put_columns`` refuses
a malformed batch whole, naming the field and the node; the tick's heartbeat step hands
the batches to ``Registry.accept_columns``, which checks and scatters them over the
registry's columns without making a ``Heartbeat`` object per node.

Why msgspec: decoding a typical heartbeat body into a struct (with its type checks)
takes about a third of the time ``json`` needs to produce a plain dict whose types
must then be checked by hand (``bench/bench_heartbeats.py --decode-only`` measures both).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from wyneos_core.model import Heartbeat

__all__ = ["BatchError", "CheckedHeartbeat", "DecodeError", "Drained", "HeartbeatBody", "HeartbeatColumns",
           "HeartbeatQueue", "QueueFull", "decode_body"]


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


class BatchError(ValueError):
    """A batch of heartbeat columns was refused whole: ``field`` and ``node_id`` say where
    (``node_id`` is None when the fault is not one node's, e.g. lengths that differ)."""

    def __init__(self, field: str, node_id: str | None, reason: str) -> None:
        where = f"{field}" if node_id is None else f"{field} of node {node_id!r}"
        super().__init__(f"heartbeat batch refused: {where}: {reason}")
        self.field = field
        self.node_id = node_id
        self.reason = reason


#: the longest batch of heartbeat columns one ``put_columns`` takes
MAX_BATCH = 1_000_000
_NODE_ID_MAX = 128


class HeartbeatColumns:
    """Heartbeats of distinct nodes as columns, checked when made.

    :param node_ids: the nodes' ids (a list of ``str``, each at most once).
    :param timestamp: when each node sent it (seconds, finite), one per node.
    :param load: each node's load (``NaN``: not reported; else at least 0), or None for
        none at all.
    :raises BatchError: naming the field and the node at fault; nothing is kept.

    >>> batch = HeartbeatColumns(["a", "b"], [1700000000.0, 1700000001.0], [0.25, float("nan")])
    >>> len(batch), batch.load.dtype.name
    (2, 'float64')

    The registry's own checks (a node it knows, no clock skew or rollback, load within
    ``heartbeat.max_load``) are made per node when the tick applies the batch, as for
    ``Heartbeat`` objects: a node that fails them is rejected alone, named in the report.
    """

    __slots__ = ("node_ids", "timestamp", "load")

    def __init__(self, node_ids: Sequence[str], timestamp: Any, load: Any = None) -> None:
        if not isinstance(node_ids, list):
            if isinstance(node_ids, (str, bytes)) or not isinstance(node_ids, Sequence):
                raise BatchError("node_ids", None, f"not a list of node ids ({type(node_ids).__name__})")
            node_ids = list(node_ids)
        n = len(node_ids)
        if n > MAX_BATCH:
            raise BatchError("node_ids", None, f"{n} heartbeats, more than {MAX_BATCH} in one batch")
        kinds = set(map(type, node_ids))
        if kinds - {str}:
            bad = next(i for i, v in enumerate(node_ids) if type(v) is not str)
            raise BatchError("node_ids", None, f"item {bad} is not a string ({type(node_ids[bad]).__name__})")
        longest = max(map(len, node_ids), default=0)
        if longest > _NODE_ID_MAX:
            bad = next(v for v in node_ids if len(v) > _NODE_ID_MAX)
            raise BatchError("node_ids", bad[:64] + "...", f"longer than {_NODE_ID_MAX} characters")
        if len(set(node_ids)) != n:
            seen: set[str] = set()
            twice = next(v for v in node_ids if v in seen or seen.add(v))  # type: ignore[func-returns-value]
            raise BatchError("node_ids", twice, "appears twice in the batch (one heartbeat per node and batch)")
        ts = _floats("timestamp", timestamp, n, node_ids)
        bad = np.flatnonzero(~np.isfinite(ts))
        if len(bad):
            raise BatchError("timestamp", node_ids[bad[0]], f"not a finite number ({ts[bad[0]].item()!r})")
        if load is not None:
            ld = _floats("load", load, n, node_ids)
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero(~(np.isnan(ld) | ((ld >= 0) & (ld < math.inf))))
            if len(bad):
                raise BatchError("load", node_ids[bad[0]],
                                 f"not a load (NaN or a finite number >= 0): {ld[bad[0]].item()!r}")
        else:
            ld = np.full(n, np.nan)
        self.node_ids: list[str] = node_ids
        self.timestamp: np.ndarray = ts
        self.load: np.ndarray = ld

    def __len__(self) -> int:
        return len(self.node_ids)

    def __repr__(self) -> str:
        return f"HeartbeatColumns({len(self)} heartbeats)"


def _floats(field: str, values: Any, n: int, node_ids: list[str]) -> np.ndarray:
    """``values`` as a new 1-D float64 array of length ``n`` (refused: a ``BatchError``)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "fiu":
            raise BatchError(field, None, f"not a 1-D array of numbers (dtype {values.dtype}, {values.ndim}-D)")
        out = values.astype(np.float64, copy=True)
    else:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise BatchError(field, None, f"not a sequence of numbers ({type(values).__name__})")
        wrong = [i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, (int, float))][:1]
        if wrong:
            i = wrong[0]
            who = node_ids[i] if i < n else None
            raise BatchError(field, who, f"not a number ({type(values[i]).__name__})")
        out = np.array(values, dtype=np.float64)
    if len(out) != n:
        raise BatchError(field, None, f"{len(out)} values for {n} node ids")
    return out


class Drained(list):
    """What ``HeartbeatQueue.drain`` hands the tick: the heartbeats, in ``columns`` the
    batches of heartbeat columns queued since (in order), and in ``marks`` how many of
    the heartbeats were queued before each of those batches (so the tick applies both in
    the order they came: ``Registry.accept_all``)."""

    __slots__ = ("columns", "marks")


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

    __slots__ = ("_items", "_columns", "_marks", "_queued", "_lock", "maxlen", "refused")

    def __init__(self, maxlen: int = 1_000_000) -> None:
        self._items: deque[Heartbeat] = deque()
        self._columns: list[HeartbeatColumns] = []
        self._marks: list[int] = []  # len(_items) when each batch of ``_columns`` was queued
        self._queued = 0  # heartbeats in ``_columns``
        self._lock = threading.Lock()
        self.maxlen = maxlen
        self.refused = 0

    def put(self, heartbeat: Heartbeat) -> None:
        self.put_many((heartbeat,))

    def put_many(self, heartbeats: Iterable[Heartbeat]) -> None:
        batch = heartbeats if isinstance(heartbeats, list) else list(heartbeats)
        with self._lock:
            if len(self) + len(batch) > self.maxlen:
                self.refused += len(batch)
                raise QueueFull(f"heartbeat queue is full ({self.maxlen} waiting)")
            self._items.extend(batch)

    def put_columns(self, batch: HeartbeatColumns) -> None:
        """Queue a batch of heartbeat columns (made, hence checked, by ``HeartbeatColumns``).

        :raises QueueFull: the batch does not fit; nothing of it is queued.
        """
        if not isinstance(batch, HeartbeatColumns):
            raise TypeError(f"put_columns takes a HeartbeatColumns, not {type(batch).__name__}")
        with self._lock:
            if len(self) + len(batch) > self.maxlen:
                self.refused += len(batch)
                raise QueueFull(f"heartbeat queue is full ({self.maxlen} waiting)")
            self._columns.append(batch)
            self._marks.append(len(self._items))
            self._queued += len(batch)

    def room(self) -> int:
        """How many more heartbeats fit now."""
        return self.maxlen - len(self)

    def drain(self) -> Drained:
        """The heartbeats queued so far (and, in ``.columns``, the column batches), in order."""
        with self._lock:
            items, self._items = self._items, deque()
            columns, self._columns, self._queued = self._columns, [], 0
            marks, self._marks = self._marks, []
        out = Drained(items)
        out.columns = columns
        out.marks = marks
        return out

    def __len__(self) -> int:
        return len(self._items) + self._queued
