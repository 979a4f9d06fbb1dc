"""Rule state over time, per (rule, node): inactive < pending < firing, then resolved.

Every transition is made in ``StateTracker.step`` and nowhere else (the shape of
Prometheus' alerting rule state machine):

* inactive -> pending: the condition became true (``for`` not yet served);
* pending -> firing: it has stayed true for ``for`` (ticks after the first, or seconds
  since it became true); with ``for: 0`` a true condition fires at once
  (inactive -> firing);
* pending -> inactive: it turned false before ``for`` was served;
* firing -> resolved: it has been false for ``keep_firing_for`` (0: at once);
* resolved -> inactive: still false on the next tick; resolved -> pending/firing: true
  again.

The states live in small arrays by node slot (``StateTracker``): a state code (one
byte) and, for a rule with a ``for`` or ``keep_firing_for``, the tick (and, for a
duration in seconds, the time) its current wait started. A tick advances every node at
once over a boolean mask of the condition (numpy); only the (rule, node) pairs whose
state is not inactive (they fail, or have just passed) or changes become Python objects.
A slot belongs to one node at a time: a node's state ends when it leaves, before the
next node to take its slot is looked at, so no counter carries over to it (``depart``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

__all__ = ["Duration", "IdSlots", "NAMES", "Place", "firing", "RuleState", "StateTracker", "parse_duration", "INACTIVE", "PENDING",
           "FIRING", "RESOLVED"]

INACTIVE: Final = "inactive"
PENDING: Final = "pending"
FIRING: Final = "firing"
RESOLVED: Final = "resolved"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TICKS = re.compile(r"^\s*(\d+)\s*ticks?\s*$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


@dataclass(frozen=True, slots=True)
class Duration:
    """A number of ticks or of seconds."""

    amount: float
    unit: str  # "ticks" | "seconds"

    def served(self, ticks: int, seconds: float) -> bool:
        """True once ``ticks`` ticks / ``seconds`` seconds reach this duration."""
        if self.unit == "ticks":
            return ticks >= self.amount
        return seconds >= self.amount

    def __str__(self) -> str:
        if self.unit == "ticks":
            n = int(self.amount)
            return f"{n} tick" + ("" if n == 1 else "s")
        return f"{self.amount:g}s"


ZERO: Final = Duration(0, "ticks")


def parse_duration(value: object) -> Duration:
    """``"3 ticks"`` / ``"30s"`` / ``"1m30s"`` / ``0`` -> ``Duration``; ValueError otherwise."""
    if value is None or value == 0 and not isinstance(value, bool):
        return ZERO
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: write '3 ticks' or '30s'")
    text = value.strip()
    if text == "0":
        return ZERO
    m = _TICKS.match(text)
    if m:
        return Duration(int(m.group(1)), "ticks")
    pos = 0
    total = 0.0
    compact = text.replace(" ", "")
    for part in _PART.finditer(compact):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    if pos != len(compact) or pos == 0:
        raise ValueError(f"{value!r} is not a duration: write '3 ticks', '30s', '5m', '1h' or '1m30s'")
    return Duration(total, "seconds")


@dataclass(slots=True)
class RuleState:
    """One (rule, node) state as stored (``rules.memory``) and read back."""

    state: str
    active_tick: int
    active_at: float
    cleared_tick: int | None = None
    cleared_at: float | None = None


#: state codes; KEEPING is firing with the condition false (keep_firing_for running)
_I, _P, _F, _K, _R = range(5)
NAMES: Final = (INACTIVE, PENDING, FIRING, FIRING, RESOLVED)
_CODE = {INACTIVE: _I, PENDING: _P, FIRING: _F, RESOLVED: _R}
_VISIBLE = (_I, _P, _F, _F, _R)


def _tables(for_: Duration, keep: Duration) -> tuple[np.ndarray, np.ndarray]:
    """By ``2 * state + condition``: the state after a tick (before waits are served),
    and whether a wait begins (``for`` on turning true, ``keep_firing_for`` on turning false)."""
    turned_on = _P if for_.amount else _F
    turned_off = _K if keep.amount else _R
    nxt = [_I, turned_on,  # inactive
           _I, _P,  # pending
           turned_off, _F,  # firing
           _K, _F,  # firing, condition false
           _I, turned_on]  # resolved
    begins = [False, bool(for_.amount), False, False, bool(keep.amount), False, False, False, False,
              bool(for_.amount)]
    return np.array(nxt, np.int8), np.array(begins, bool)
_TICK_MAX = 2**31 - 1


def firing(codes: np.ndarray) -> np.ndarray:
    """The positions whose state code (``StateTracker.advance``) is firing."""
    return np.flatnonzero((codes == _F) | (codes == _K))


class Place:
    """Where the nodes of one evaluation are: the slot of each position, the node id in
    each slot (None: free) and the slot of each node id."""

    __slots__ = ("slots", "ids", "index", "version", "_here", "_whole")

    def __init__(self, slots: np.ndarray, ids: Sequence[str | None], index: Mapping[str, int],
                 version: int | None = None) -> None:
        self.slots = slots
        self.ids = ids
        self.index = index
        #: changes whenever a node joins or leaves (None: unknown, look every time)
        self.version = version
        self._here: np.ndarray | None = None
        self._whole: bool | None = None

    def whole(self) -> bool:
        """Are the slots 0, 1, ... n - 1 in order (then a slice reads them, no gather)."""
        if self._whole is None:
            s, n = self.slots, len(self.slots)
            self._whole = n == 0 or (int(s[0]) == 0 and int(s[-1]) == n - 1 and bool(np.all(s[1:] > s[:-1])))
        return self._whole

    def here(self) -> np.ndarray:
        """By slot: is its node one of this evaluation's."""
        if self._here is None:
            self._here = np.zeros(len(self.ids), bool)
            self._here[self.slots] = True
        return self._here


class IdSlots:
    """Stable slots for nodes handed over as a plain list (no node table): a node keeps
    its slot while it is listed; the slot of one no longer listed is freed for the next."""

    def __init__(self) -> None:
        self.ids: list[str | None] = []
        self.index: dict[str, int] = {}
        self.free: list[int] = []

    def place(self, ids: Sequence[str]) -> Place:
        listed = set(ids)
        for node_id in [n for n in self.index if n not in listed]:
            slot = self.index.pop(node_id)
            self.ids[slot] = None
            self.free.append(slot)
        for node_id in ids:
            if node_id not in self.index:
                if self.free:
                    slot = self.free.pop()
                    self.ids[slot] = node_id
                else:
                    slot = len(self.ids)
                    self.ids.append(node_id)
                self.index[node_id] = slot
        index = self.index
        return Place(np.fromiter((index[n] for n in ids), np.intp, len(ids)), self.ids, index)


class StateTracker:
    """The states of one rule on every node, in arrays by slot (see the module docstring).

    ``code`` is the state of each slot; ``since_tick`` / ``since_at`` (only when a
    duration needs them) when the current wait began: ``for`` while pending,
    ``keep_firing_for`` while firing with the condition false. ``owner`` names the node
    of every slot whose state is not inactive.
    """

    __slots__ = ("for_", "keep", "code", "since_tick", "since_at", "owner", "_restore", "_own", "_seen", "_next",
                 "_begins")

    def __init__(self, for_: Duration = ZERO, keep: Duration = ZERO) -> None:
        self.for_ = for_
        self.keep = keep
        self.code = np.zeros(0, np.int8)
        timed = [d for d in (for_, keep) if d.amount]
        self.since_tick: np.ndarray | None = np.zeros(0, np.int32) if timed else None
        self.since_at: np.ndarray | None = np.zeros(0) if any(d.unit == "seconds" for d in timed) else None
        self.owner: dict[int, str] = {}
        self._restore: dict[str, RuleState] = {}
        self._own: IdSlots | None = None
        #: the place last looked at by ``depart`` (no node joined or left since: nothing to do)
        self._seen: tuple[Any, ...] = ()
        self._next, self._begins = _tables(for_, keep)

    # -- advancing --------------------------------------------------------------------

    def _fit(self, size: int) -> None:
        if len(self.code) >= size:
            return
        size = max(size, 2 * len(self.code), 16)
        self.code = np.concatenate([self.code, np.zeros(size - len(self.code), np.int8)])
        if self.since_tick is not None:
            self.since_tick = np.concatenate([self.since_tick, np.zeros(size - len(self.since_tick), np.int32)])
        if self.since_at is not None:  # NaN: unknown (the wait restarts when next looked at)
            self.since_at = np.concatenate([self.since_at, np.full(size - len(self.since_at), np.nan)])

    def depart(self, place: Place) -> list[tuple[str, str]]:
        """End the states of nodes that are not at ``place`` any more (left, or their slot
        now another node's), before the slot is looked at again.

        :return: ``(node_id, state it was in)`` of each state ended.
        """
        ended: list[tuple[str, str]] = []
        if self._restore:
            for node_id, st in self._restore.items():
                slot = place.index.get(node_id)
                if slot is None or not place.here()[slot]:
                    ended.append((node_id, st.state))
                    continue
                self._fit(len(place.ids))
                self._set(slot, node_id, st)
            self._restore = {}
        seen = (place.ids, place.slots, place.version)
        if place.version is not None and len(self._seen) == 3 and all(a is b for a, b in zip(seen[:2], self._seen)) \
                and seen[2] == self._seen[2]:
            return ended
        self._seen = seen
        if self.owner:
            ids, here = place.ids, place.here()
            size = len(ids)
            gone = [(slot, node_id) for slot, node_id in self.owner.items()
                    if slot >= size or not here[slot] or ids[slot] != node_id]
            for slot, node_id in gone:
                ended.append((node_id, NAMES[self.code[slot]]))
                self.code[slot] = _I
                del self.owner[slot]
        return ended

    def advance(self, active: np.ndarray, place: Place, tick: int,
                now: float) -> tuple[list[tuple[int, str, str, str]], np.ndarray]:
        """Advance every node at ``place`` one tick; ``active[i]``: the condition holds on
        the node at position ``i``. Call ``depart`` first.

        :return: the transitions ``(position, node_id, from, to)`` and the state code of
            each position after the tick (``NAMES`` names them; 0 is inactive).
        """
        self._fit(len(place.ids))
        slots = place.slots
        at = slice(0, len(slots)) if place.whole() else slots
        cur = self.code[at]
        step = np.left_shift(cur, 1)
        step |= np.asarray(active, bool).view(np.int8)
        new = self._next.take(step)
        if self._begins.any():
            began = np.flatnonzero(self._begins.take(step))
            if len(began):
                self._begin(slots[began], tick, now)
        if self.for_.amount:
            self._serve(new, _P, self.for_, slots, _F, tick, now)
        if self.keep.amount:
            self._serve(new, _K, self.keep, slots, _R, tick, now)
        changed = np.flatnonzero(new != cur)
        before, after = cur[changed].tolist(), new[changed].tolist()  # before cur (maybe a view) is written
        self.code[at] = new
        changes = []
        ids = place.ids
        owner = self.owner
        for position, b, a in zip(changed.tolist(), before, after):
            if _VISIBLE[b] == _VISIBLE[a]:
                continue  # firing -> firing (keep_firing_for began or ended)
            slot = int(slots[position])
            node_id = ids[slot]
            changes.append((position, node_id, NAMES[b], NAMES[a]))
            if a == _I:
                owner.pop(slot, None)
            else:
                owner[slot] = node_id  # type: ignore[assignment]
        return changes, new

    def _begin(self, slots: np.ndarray, tick: int, now: float) -> None:
        if self.since_tick is not None:
            self.since_tick[slots] = min(tick, _TICK_MAX)
        if self.since_at is not None:
            self.since_at[slots] = now

    def _serve(self, new: np.ndarray, waiting: int, duration: Duration, slots: np.ndarray, to: int,
               tick: int, now: float) -> None:
        """Move the positions in state ``waiting`` whose wait reached ``duration`` to ``to``."""
        positions = np.flatnonzero(new == waiting)
        if not len(positions):
            return
        at = slots[positions]
        if duration.unit == "ticks":
            served = (min(tick, _TICK_MAX) - self.since_tick[at].astype(np.int64)) >= duration.amount  # type: ignore[index]
        else:
            since = self.since_at[at]  # type: ignore[index]
            unknown = np.isnan(since)
            if unknown.any():  # a wait begun under another duration unit: it starts now
                self.since_at[at[unknown]] = now  # type: ignore[index]
                since = np.where(unknown, now, since)
            served = (now - since) >= duration.amount
        new[positions[served]] = to

    # -- by node id ---------------------------------------------------------------------

    def step(self, active: Iterable[str], tick: int, now: float) -> list[tuple[str, str, str]]:
        """``advance`` for callers without a node table: ``active`` are the ids of the
        nodes whose condition is true; the nodes with a state are advanced too.

        :return: the transitions ``(node_id, from, to)``.
        """
        active = list(dict.fromkeys(active))
        on = set(active)
        listed = active + [n for n in dict.fromkeys([*self.owner.values(), *self._restore]) if n not in on]
        if self._own is None:
            self._own = IdSlots()
        place = self._own.place(listed)
        self.depart(place)
        mask = np.zeros(len(listed), bool)
        mask[:len(active)] = True
        changes, _ = self.advance(mask, place, tick, now)
        return [(node_id, before, after) for _, node_id, before, after in changes]

    def state_of(self, node_id: str) -> str:
        for slot, owner in self.owner.items():
            if owner == node_id:
                return NAMES[self.code[slot]]
        st = self._restore.get(node_id)
        return INACTIVE if st is None else st.state

    def _state_at(self, slot: int) -> RuleState:
        """The state in ``slot`` (a time NaN when this rule keeps none)."""
        code = int(self.code[slot])
        tick = int(self.since_tick[slot]) if self.since_tick is not None else 0
        at = float(self.since_at[slot]) if self.since_at is not None else float("nan")
        if code == _K:
            return RuleState(FIRING, 0, 0.0, tick, at)
        return RuleState(NAMES[code], tick, at)

    @property
    def states(self) -> dict[str, RuleState]:
        """Every state that is not inactive, by node id (what ``rules.memory`` stores)."""
        out = dict(self._restore)
        for slot, node_id in self.owner.items():
            st = out[node_id] = self._state_at(slot)
            if st.active_at != st.active_at:
                st.active_at = 0.0
            if st.cleared_at is not None and st.cleared_at != st.cleared_at:
                st.cleared_at = 0.0
        return out

    @states.setter
    def states(self, states: Mapping[str, RuleState]) -> None:
        """Replace every state: these (by node id) take their slots at the next tick."""
        for slot in self.owner:
            self.code[slot] = _I
        self.owner = {}
        self._restore = dict(states)

    def _set(self, slot: int, node_id: str, st: RuleState) -> None:
        if st.state == FIRING and st.cleared_tick is not None:
            code, tick, at = _K, st.cleared_tick, st.cleared_at
        else:
            code, tick, at = _CODE[st.state], st.active_tick, st.active_at
        self.code[slot] = code
        if self.since_tick is not None:
            self.since_tick[slot] = max(-_TICK_MAX, min(int(tick), _TICK_MAX))
        if self.since_at is not None:
            self.since_at[slot] = float("nan") if at is None else at
        self.owner[slot] = node_id

    def adopt(self, other: StateTracker) -> None:
        """Take over ``other``'s states in their slots (the same rule reloaded; a wait
        kept in another unit than the new duration's starts again)."""
        self.states = other._restore
        self._fit(len(other.code))
        for slot, node_id in other.owner.items():
            self._set(slot, node_id, other._state_at(slot))

    def forget(self, keep_only: set[str] | None = None) -> list[tuple[str, str]]:
        """Drop the states of nodes not in ``keep_only`` (all when None).

        :return: ``(node_id, state it was in)`` of every state dropped, so that the
            caller can report how they ended.
        """
        dropped = [(n, st.state) for n, st in self._restore.items() if keep_only is None or n not in keep_only]
        for node_id, _ in dropped:
            del self._restore[node_id]
        for slot, node_id in list(self.owner.items()):
            if keep_only is None or node_id not in keep_only:
                dropped.append((node_id, NAMES[self.code[slot]]))
                self.code[slot] = _I
                del self.owner[slot]
        return dropped
