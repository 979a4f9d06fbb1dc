"""The reason codes of a ``LicenceResult``, each with a one-line meaning.

A result is ``valid`` with reason ``ok``; valid with ``in_grace`` set for a licence
past its expiry but inside its grace period (reason ``expired``) or one whose source is
unreachable under the fail-open policy (reason ``source_unavailable``); otherwise
invalid with one of the codes below.
"""

from __future__ import annotations

from typing import Final

__all__ = ["REASONS", "OK"]

OK: Final = "ok"

#: code -> what it means. Enforcement maps codes to actions
#: (``wyneos_core.builtin.enforcement.LICENCE_ACTIONS``).
REASONS: Final[dict[str, str]] = {
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
