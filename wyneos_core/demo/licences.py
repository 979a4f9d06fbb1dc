"""Real signed licences for the demo cluster, made at first run.

Private keys are never shipped: the demo issuer key is generated on first use under
``.wyneos/demo-keys`` (directory 0700, key file 0600) and is for the demo only. The
licence files are (re)written into ``.wyneos/demo-licences`` on every start, dated
relative to now, so each run shows the same situations:

==============  ==============  ====================================================
licence         used by         what the orchestrator finds
==============  ==============  ====================================================
lic-acme-01     most nodes      valid, 8 seats, tier pro
lic-acme-02     3 nodes         valid, but 2 seats: the last node is ``too_many_nodes``
lic-acme-03     1 node          expired 3 days ago, no grace: ``expired``
lic-acme-04     1 node          paired with another machine's key: ``machine_mismatch``
lic-acme-05     1 node          payload edited after signing: ``invalid_signature``
lic-acme-06     1 node          expired yesterday, 7 days of grace: valid, in grace
(none)          1 node          ``no_licence``
==============  ==============  ====================================================

Each demo node's key fingerprint is derived from its id (``demo_fingerprint``) and
sent with its heartbeats.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wyneos_core.licensing.document import issue_licence
from wyneos_core.licensing.keys import (
    fingerprint,
    generate_key,
    load_private_key,
    write_private_key,
    write_public_key,
)
from wyneos_core.licensing.revocation import write_atomic

__all__ = ["DEMO_LICENCES", "demo_fingerprint", "ensure_demo_licences"]

DAY = 86400

#: licence id -> how the demo issues it
DEMO_LICENCES: dict[str, dict[str, Any]] = {
    "lic-acme-01": {"seats": 8, "tier": "pro", "expires_in": 365 * DAY},
    "lic-acme-02": {"seats": 2, "tier": "standard", "expires_in": 365 * DAY},
    "lic-acme-03": {"tier": "standard", "expires_in": -3 * DAY},
    "lic-acme-04": {"tier": "standard", "expires_in": 365 * DAY, "paired_with": "another-machine"},
    "lic-acme-05": {"tier": "standard", "expires_in": 30 * DAY, "forge": True},
    "lic-acme-06": {"tier": "standard", "expires_in": -1 * DAY, "grace_days": 7},
}


def demo_fingerprint(node_id: str) -> str:
    """The (stand-in) key fingerprint of a demo node: derived from its id."""
    return fingerprint(hashlib.sha256(f"wyneos-demo-node:{node_id}".encode()).digest())


def _issuer(keys: Path) -> Any:
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    private = keys / "issuer.key"
    if private.exists():
        return load_private_key(private)
    key = generate_key()
    write_private_key(private, key)
    write_public_key(keys / "issuer.pub", key, overwrite=True)
    return key


def ensure_demo_licences(keys: Path, directory: Path, nodes: Iterable[Mapping[str, Any]], now: float,
                         customer: str = "acme") -> list[Path]:
    """Create the demo issuer key if missing and write the demo licences for ``nodes``."""
    key = _issuer(keys)
    if not (keys / "issuer.pub").exists():
        write_public_key(keys / "issuer.pub", key)
    users: dict[str, list[str]] = {}
    for node in nodes:
        if node.get("licence"):
            users.setdefault(node["licence"], []).append(node["id"])
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for licence_id, spec in DEMO_LICENCES.items():
        expires = now + spec["expires_in"]
        issued = min(now, expires) - 30 * DAY
        fingerprints = [demo_fingerprint(spec["paired_with"])] if "paired_with" in spec else []
        doc = issue_licence(key, licence_id=licence_id, customer=customer, tier=spec["tier"],
                            features=["core"] + (["analytics"] if spec["tier"] == "pro" else []),
                            issued=issued, expires=expires, grace_days=spec.get("grace_days", 0),
                            seats=spec.get("seats"), fingerprints=fingerprints)
        if spec.get("forge"):
            doc["payload"]["seats"] = 1000  # edited after signing: the signature no longer covers it
        written.append(write_atomic(directory / f"{licence_id}.licence", json.dumps(doc, indent=1) + "\n"))
    return written
