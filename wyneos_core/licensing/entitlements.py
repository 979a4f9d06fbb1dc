"""Entitlements: which features a node's licence grants, and gating the rest.

A licence grants its own ``features`` plus those of its tier (``licence.tiers`` in the
config maps tier names to feature lists, e.g. ``{basic: [core], pro: [core, analytics]}``).
A node asks for features through ``licence.required_features`` (all nodes) and its own
``metadata.features`` (what it runs). A node that uses a feature its licence does not
grant gets the reason ``entitlement_missing``; for that reason the result's
``features`` lists the *missing* features, and enforcement turns it into a
``gate_feature`` action for exactly those.

>>> ent = Entitlements({"pro": ["analytics"]})
>>> sorted(ent.granted("pro", ["export"]))
['analytics', 'export']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from wyneos_core.model import Action, ActionType, LicenceResult, Node, Severity
from wyneos_core.pyrules import Rule

__all__ = ["Entitlements", "entitled", "gate_feature_action", "licence_entitled", "require_feature",
           "requested_features"]


class Entitlements:
    """Tier -> features table, and the questions asked of it."""

    __slots__ = ("tiers",)

    def __init__(self, tiers: Mapping[str, Iterable[str]] | None = None) -> None:
        self.tiers = {name: frozenset(features) for name, features in (tiers or {}).items()}

    def granted(self, tier: str | None, features: Iterable[str]) -> frozenset[str]:
        """The features a licence of ``tier`` with its own ``features`` grants."""
        return self.tiers.get(tier or "", frozenset()) | frozenset(features)

    def missing(self, granted: frozenset[str], wanted: Iterable[str]) -> list[str]:
        return sorted(set(wanted) - granted)


def requested_features(node: Node, required: Iterable[str] = ()) -> frozenset[str]:
    """What ``node`` needs: the cluster-wide required features plus its ``metadata.features``."""
    own = node.metadata.get("features") if isinstance(node.metadata, dict) else None
    out = set(required)
    if isinstance(own, (list, tuple)):
        out.update(f for f in own if isinstance(f, str))
    return frozenset(out)


def entitled(result: LicenceResult | None, feature: str) -> bool:
    """Whether a node with licence ``result`` may use ``feature``.

    A valid result (also in grace) answers from the features it grants. An
    ``entitlement_missing`` result lists only the features the node may *not* use, so
    from the result alone the answer is False for every feature (the conservative
    answer); ``LicenceEngine.entitled(node_id, feature)`` (see ``licence_entitled``)
    knows what the licence grants and answers exactly. Any other invalid result: False.
    """
    if result is None or not result.valid:
        return False
    return feature in result.features


def licence_entitled(ctx: Any, node_id: str, feature: str) -> bool:
    """The exact answer for ``node_id`` in a tick: asks the running licence engine."""
    engine = getattr(getattr(ctx, "orchestrator", None), "_licence_engine", None)
    if engine is not None:
        return engine.entitled(node_id, feature)
    return entitled(ctx.report.licences.get(node_id), feature)


def require_feature(feature: str, *, severity: Severity = Severity.WARNING) -> Rule:
    """A governance rule (``wyneos_core.pyrules.Rule``): nodes that run ``feature`` hold a licence for it.

    The rule reads the licence results of the tick from ``ctx.report.licences``; a node
    that does not list ``feature`` in its ``metadata.features`` passes.
    """

    def check(node: Node, ctx: Any) -> bool:
        if feature not in requested_features(node):
            return True
        return licence_entitled(ctx, node.id, feature)

    return Rule(f"entitled-{feature}", f"Nodes that use {feature!r} are licensed for it", check, severity,
                f"uses feature {feature!r} without a licence that grants it")


def gate_feature_action(node_id: str, features: Iterable[str], reason: str, origin: str = "licence") -> Action:
    """The action that switches ``features`` off on ``node_id`` (paid-tier capability separation)."""
    return Action(ActionType.GATE_FEATURE, node_id, reason, origin, Severity.WARNING,
                  {"features": sorted(set(features))})
