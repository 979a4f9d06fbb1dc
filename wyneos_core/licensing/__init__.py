"""Signed licences: format, keys, verification, validation, sources, revocation, entitlements.

The public API is re-exported here; each module holds one job:

``canonical``     the canonical JSON encoding that signatures cover (and what has none)
``keys``          Ed25519 key generation, files, key ids, node fingerprints, key rings
``envelope``      the signed envelope shared by licences and revocation lists; strict
                  parsing of untrusted JSON (depth, size, duplicate keys, huge integers)
``document``      the licence document (payload fields, parsing, signing, verification)
``revocation``    the signed, versioned revocation list
``reasons``       the reason codes of a ``LicenceResult``
``seats``         seat counting across the cluster with deterministic losers
``sources``       the licence-source interface and the builtin file source
``ledger``        what survives restarts: newest issue per licence, the accepted revocation list
``entitlements``  feature checks, tiers, the rule helper and the gate_feature action
``settings``      the ``licence`` config section, resolved
``engine``        the licence step: sources, verification, checks, seats, caching, outages
"""

from __future__ import annotations

from wyneos_core.licensing.canonical import canonical_json
from wyneos_core.licensing.document import (
    Licence,
    LicenceFormatError,
    SignatureError,
    UnknownKeyError,
    issue_licence,
    parse_licence,
    verify_licence,
)
from wyneos_core.licensing.entitlements import Entitlements, gate_feature_action, require_feature
from wyneos_core.licensing.keys import KeyRing, fingerprint, generate_key, key_id, load_private_key, load_public_key
from wyneos_core.licensing.reasons import REASONS
from wyneos_core.licensing.revocation import RevocationList
from wyneos_core.licensing.sources import FileSource, LicenceRecord, LicenceSource, SourceUnavailable

__all__ = [
    "REASONS",
    "Entitlements",
    "FileSource",
    "KeyRing",
    "Licence",
    "LicenceFormatError",
    "LicenceRecord",
    "LicenceSource",
    "RevocationList",
    "SignatureError",
    "SourceUnavailable",
    "UnknownKeyError",
    "canonical_json",
    "fingerprint",
    "gate_feature_action",
    "generate_key",
    "issue_licence",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_licence",
    "require_feature",
    "verify_licence",
]
