"""A node's licence outcome as the tick carries it: ``LicenceResult``, what each reason
code means, and the two readings every report makes of a tick's results (the ones not
plainly valid, and the count per reason). Re-exported by ``wyneos_core.model``."""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["LICENCE_REASON_TEXT", "LicenceResult", "licence_problems", "licence_summary"]

#: licence reason code -> what it means (``licensing.reasons.REASONS``)
LICENCE_REASON_TEXT: Final[dict[str, str]] = {
    "ok": "the licence is valid",
    "no_licence": "no configured source has a licence for the node",
    "malformed": "the licence document is truncated, garbage or misses a field",
    "invalid_signature": "the signature does not verify (forged signature or edited payload)",
    "unknown_key": "the licence is signed with a key that is not trusted",
    "expired": "past its expiry (valid while in its grace period)",
    "not_yet_valid": "before its not-before date",
    "customer_mismatch": "issued to another customer than the cluster's",
    "product_mismatch": "issued for another product",
    "machine_mismatch": "the node's key fingerprint is not among the licence's machines",
    "too_many_nodes": "more nodes use the licence than it has seats; this node lost out",
    "revoked": "listed in the signed revocation list",
    "suspended": "the source reports the licence suspended",
    "superseded": "an older issue of a licence replayed after a newer one was seen",
    "clock_rollback": "the node reported a time well before one it reported earlier",
    "entitlement_missing": "the node uses features its licence does not grant",
    "source_unavailable": "no source could answer (outage policy applied)",
    "integrity_mismatch": "the licence pins the integrity digest of what it licenses; the node reports another",
}


@dataclass(slots=True)
class LicenceResult:
    """The outcome of validating one node's licence.

    ``reason`` is a machine-readable code (``ok``, ``no_licence``, ``expired``, ...);
    ``detail`` is for humans. ``in_grace`` marks a licence that is past its expiry (or
    whose source is unreachable under a fail-open policy) but still inside its grace
    period: valid, but not plainly so.
    """

    node_id: str
    valid: bool
    reason: str = "ok"
    detail: str = ""
    licence_id: str | None = None
    customer: str | None = None
    product: str | None = None
    tier: str | None = None
    features: tuple[str, ...] = ()
    expires: float | None = None
    in_grace: bool = False
    source: str = ""

    def problem(self) -> str | None:
        """What makes this result unusable (a plugin built it wrong), or None."""
        if type(self.node_id) is not str:
            return f"node_id must be a string, got {self.node_id!r:.40}"
        if type(self.valid) is not bool or type(self.in_grace) is not bool:
            return "valid and in_grace must be True or False"
        if type(self.reason) is not str or type(self.detail) is not str:
            return "reason and detail must be strings"
        if not all(type(f) is str for f in self.features):
            return "features must be strings"
        if self.expires is not None and (isinstance(self.expires, bool) or not isinstance(self.expires, (int, float))):
            return f"expires must be a number or None, got {self.expires!r:.40}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "valid": self.valid,
            "reason": self.reason,
            "detail": self.detail,
            "licence_id": self.licence_id,
            "customer": self.customer,
            "product": self.product,
            "tier": self.tier,
            "features": list(self.features),
            "expires": self.expires,
            "in_grace": self.in_grace,
            "source": self.source,
        }




def licence_problems(licences: Any) -> list[LicenceResult]:
    """The licence results that are not plainly valid (invalid, or valid in grace): over
    the licence columns when ``licences`` has them, else over its values."""
    problems = getattr(licences, "problems", None)
    if problems is not None:
        return problems()
    return [r for r in licences.values() if not r.valid or r.in_grace]


def licence_summary(results: Any) -> dict[str, int]:
    """Licence results per reason code (``in_grace`` for valid results in grace)."""
    results = list(results)
    counts = Counter(map(_REASON, results))
    graced = Counter(map(_REASON, [r for r in results if r.in_grace and r.valid]))
    for reason, count in graced.items():  # valid results in grace count as in_grace, not by reason
        counts[reason] -= count
        if not counts[reason]:
            del counts[reason]
    if graced:
        counts["in_grace"] = counts.get("in_grace", 0) + sum(graced.values())
    return dict(counts)


_REASON = operator.attrgetter("reason")
