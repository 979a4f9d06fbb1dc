"""Operator overrides: an operator takes a node out of the rules' hands.

``wyneos cordon | uncordon | isolate | reinstate NODE --reason TEXT`` (and
``POST /v1/overrides`` with the operator write token) set one override per node:

``isolate``    the node is isolated by the operator: an ``isolate`` action (origin
               ``operator``) is proposed every tick, so it stays in force, and is
               approved past the safety stop, the budgets, the modes and exceptions;
``reinstate``  the node is reinstated (a ``reinstate`` action), the isolations in force
               on it are lifted, and the rules' new isolations and quarantines of it
               are held (``held_by_override``) while the override stands;
``cordon``     the rules' isolations and quarantines of the node are held and a
               ``cordon`` action tells the node (an agent hands it to its hook when it
               is among its ``hook_types``, and acknowledges it either way);
``uncordon``   lifts the override: the node is the rules' again.

The rules never undo an override: only the operator lifts it (``uncordon``, or another
override replacing it). Each carries who set it, why and when; they are kept in the
state store's ``meta`` under ``enforcement.overrides``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Final

from wyneos_core.model import Action, Severity

__all__ = ["KINDS", "META_KEY", "OPERATOR", "Override", "OverrideError", "set_override", "stored"]

META_KEY: Final = "enforcement.overrides"
OPERATOR: Final = "operator"
#: override kind -> the action it carries (cordon: a custom type; uncordon lifts)
KINDS: Final = {"isolate": "isolate", "reinstate": "reinstate", "cordon": "cordon"}
MAX_OVERRIDES: Final = 100_000
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,252}$")


class OverrideError(ValueError):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(slots=True)
class Override:
    node: str
    kind: str
    reason: str
    by: str
    at: float

    def action(self) -> Action:
        """The action this override keeps in force (one stable id while it stands)."""
        severity = Severity.CRITICAL if self.kind == "isolate" else Severity.INFO
        return Action(KINDS[self.kind], self.node, f"operator {self.by}: {self.reason}", OPERATOR, severity,
                      {"override": self.kind, "by": self.by, "set_at": round(self.at, 3)})

    def holds(self, action: Action, severe: frozenset[str]) -> bool:
        """Whether this override holds a rule's ``action`` back."""
        return action.target == self.node and action.type in severe | {"isolate", "quarantine"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(node: Any, kind: Any, reason: Any, by: Any) -> None:
    if not isinstance(node, str) or not _NODE.match(node):
        raise OverrideError("node", f"expected a node id, got {node!r:.60}")
    if kind not in (*KINDS, "uncordon"):
        raise OverrideError("kind", f"expected one of cordon, uncordon, isolate, reinstate, got {kind!r:.40}")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
        raise OverrideError("reason", "required: why, a non-empty text of at most 1,000 characters")
    if not isinstance(by, str) or not by.strip() or len(by) > 200:
        raise OverrideError("by", "required: who, a non-empty text of at most 200 characters")


def stored(store: Any) -> dict[str, Override]:
    """Node id -> override, as kept in ``store`` (entries that do not check out are skipped)."""
    raw = store.meta(META_KEY, {}) if store is not None else {}
    out: dict[str, Override] = {}
    for node, row in (raw.items() if isinstance(raw, dict) else ()):
        try:
            check(node, row.get("kind"), row.get("reason"), row.get("by"))
            at = float(row.get("at", 0))
            if row["kind"] in KINDS and math.isfinite(at):
                out[node] = Override(node, row["kind"], row["reason"], row["by"], at)
        except (OverrideError, AttributeError, TypeError, ValueError):
            continue
    return out


def set_override(store: Any, node: str, kind: str, reason: str, by: str, now: float | None = None
                 ) -> Override | None:
    """Set (or with ``uncordon`` lift) the override of ``node`` in ``store``; the override set."""
    check(node, kind, reason, by)
    current = stored(store)
    if kind == "uncordon":
        current.pop(node, None)
        made = None
    else:
        made = current[node] = Override(node, kind, reason.strip(), by.strip(), time.time() if now is None else now)
    if len(current) > MAX_OVERRIDES:
        raise OverrideError("node", f"at most {MAX_OVERRIDES} overrides are kept")
    store.set_meta(META_KEY, {n: o.to_dict() for n, o in current.items()})
    return made
