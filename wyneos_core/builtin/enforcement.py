"""Builtin enforcement: licence failures and critical governance violations become actions.

The mapping from licence reason code to actions is ``LICENCE_ACTIONS``; YAML rulesets
of stage ``enforcement`` (see docs/rulesets.md) can say more, and a plugin can disable
this one (``plugins.disable: [enforcement]``) to take over completely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from wyneos_core import hookimpl
from wyneos_core.builtin.listing import licence_problems
from wyneos_core.model import Action, ActionType, LicenceResult, Node, RuleResult, Severity

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext

I, Q, R, G, D = ActionType.ISOLATE, ActionType.QUARANTINE, ActionType.REVOKE, ActionType.GATE_FEATURE, ActionType.DEGRADE

#: licence reason code -> actions (in order) for an invalid licence.
LICENCE_ACTIONS: dict[str, tuple[ActionType, ...]] = {
    "no_licence": (I,),
    "expired": (I,),
    "invalid_signature": (I, R),
    "unknown_key": (I,),
    "customer_mismatch": (I,),
    "machine_mismatch": (I,),
    "product_mismatch": (I,),
    "revoked": (I,),
    "suspended": (Q,),
    "too_many_nodes": (Q,),
    "not_yet_valid": (Q,),
    "entitlement_missing": (G,),
    "source_unavailable": (Q,),
    "malformed": (I,),
    "superseded": (I,),
    "clock_rollback": (Q,),
    "integrity_mismatch": (Q,),
}


def licence_actions(result: LicenceResult) -> list[Action]:
    """The actions for one node's licence result (none for a plainly valid licence)."""
    if result.valid:
        if result.in_grace:
            return [Action(D, result.node_id, f"licence {result.reason} (in grace): {result.detail}",
                           "enforcement", Severity.WARNING, {"licence_reason": result.reason})]
        return []
    out = []
    for kind in LICENCE_ACTIONS.get(result.reason, (Q,)):
        params: dict = {"licence_reason": result.reason}
        target = result.node_id
        if kind is R:
            target, params = "*", {"licence_id": result.licence_id or f"node:{result.node_id}"}
        elif kind is G:
            params["features"] = list(result.features)
        out.append(Action(kind, target, f"licence {result.reason}: {result.detail}", "enforcement",
                          Severity.CRITICAL if kind in (I, R) else Severity.WARNING, params))
    return out


@hookimpl
def wyneos_enforcement(
    ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult], results: Sequence[RuleResult]
) -> list[Action]:
    actions: list[Action] = []
    for result in licence_problems(licences):  # the few not plainly valid, over the licence columns
        actions.extend(licence_actions(result))
    for r in results:
        if not r.passed and r.severity is Severity.CRITICAL and r.state in (None, "firing"):
            actions.append(Action(Q, r.node_id, f"rule {r.rule_id}: {r.message}", "enforcement",
                                  Severity.CRITICAL, {"rule": r.rule_id}))
    return actions
