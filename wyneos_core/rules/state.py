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

Only non-inactive states are stored, so a 100k-node cluster where little is wrong
costs little memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["Duration", "RuleState", "StateTracker", "parse_duration", "INACTIVE", "PENDING", "FIRING", "RESOLVED"]

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
    state: str
    active_tick: int
    active_at: float
    cleared_tick: int | None = None
    cleared_at: float | None = None


class StateTracker:
    """The states of one rule on every node."""

    __slots__ = ("for_", "keep", "states")

    def __init__(self, for_: Duration = ZERO, keep: Duration = ZERO) -> None:
        self.for_ = for_
        self.keep = keep
        self.states: dict[str, RuleState] = {}

    def state_of(self, node_id: str) -> str:
        st = self.states.get(node_id)
        return INACTIVE if st is None else st.state

    def step(self, active: Iterable[str], tick: int, now: float) -> list[tuple[str, str, str]]:
        """Advance every node one tick; ``active`` are the nodes whose condition is true.

        :return: the transitions ``(node_id, from, to)``.
        """
        states = self.states
        active = set(active)
        changes: list[tuple[str, str, str]] = []
        for node_id in active:
            st = states.get(node_id)
            before = INACTIVE if st is None else st.state
            if st is None or st.state == RESOLVED:
                st = states[node_id] = RuleState(PENDING, tick, now)
            st.cleared_tick = st.cleared_at = None
            if st.state == PENDING and self.for_.served(tick - st.active_tick, now - st.active_at):
                st.state = FIRING
            if st.state != before:
                changes.append((node_id, before, st.state))
        for node_id in [n for n in states if n not in active]:
            st = states[node_id]
            before = st.state
            if before == PENDING or before == RESOLVED:
                del states[node_id]
                changes.append((node_id, before, INACTIVE))
                continue
            # firing, condition false: keep firing for keep_firing_for, then resolve
            if st.cleared_tick is None:
                st.cleared_tick, st.cleared_at = tick, now
            if self.keep.served(tick - st.cleared_tick, now - (st.cleared_at or now)):
                st.state = RESOLVED
                changes.append((node_id, FIRING, RESOLVED))
        return changes

    def forget(self, keep_only: set[str] | None = None) -> list[tuple[str, str]]:
        """Drop the states of nodes not in ``keep_only`` (all when None).

        :return: ``(node_id, state it was in)`` of every state dropped, so that the
            caller can report how they ended.
        """
        dropped = [(n, st.state) for n, st in self.states.items() if keep_only is None or n not in keep_only]
        for node_id, _ in dropped:
            del self.states[node_id]
        return dropped
