"""Real signed licences for a simulated cluster, so the licence step runs for real.

``write_licences`` signs (Ed25519, ``wyneos_core.licensing``) the licences of a
simulation into a fresh directory and returns the ``SimLicences`` that say which
licence each node holds at each tick. The orchestrator validates them with the builtin
file source and the trusted issuer key, exactly as in production:

* every 100 nodes share one pool licence (``pool-0001``...), valid for the whole run;
* a node hit by ``licence_expiry`` holds its own licence, whose ``expires`` date is the
  simulated time of the fault's ``at`` tick (no grace): the licence engine finds it
  ``expired`` when the simulated clock reaches that date. At ``until`` the node is
  renewed onto its pool licence;
* a node hit by ``forged_licence`` presents, from ``at`` (to ``until``), a forged
  document: by default its licence with the payload edited after signing
  (``invalid_signature``); with ``forgery: untrusted_key``, a licence signed by a key
  the cluster does not trust (``unknown_key``).

The issuer key is derived from the scenario's seed, so a run is reproducible byte for
byte; it is a simulation key, never a real one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wyneos_core.licensing.document import issue_licence
from wyneos_core.licensing.keys import write_public_key
from wyneos_core.simulate.scenario import Fault, position_of

__all__ = ["CUSTOMER", "POOL_SIZE", "SimLicences", "write_licences"]

CUSTOMER = "sim"
#: nodes per shared pool licence
POOL_SIZE = 100
DAY = 86400.0


def _key(seed: int, purpose: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"wyneos-sim:{purpose}:{seed}".encode()).digest())


@dataclass(slots=True)
class SimLicences:
    """Where the licences are and which one each node presents."""

    directory: Path
    issuer_key: Path
    #: the cluster's node ids (a node's pool is its position's)
    ids: Sequence[str]
    #: the pool licences' references, by pool number
    pools: list[str]
    #: node id -> its own licence (a node ``licence_expiry`` hits)
    own: dict[str, str] = field(default_factory=dict)
    #: (fault index, node id) -> the reference of its forged document
    forged: dict[tuple[int, str], str] = field(default_factory=dict)

    def pool(self, node_id: str, position: int | None = None) -> str:
        """The pool licence of ``node_id`` (what a renewed node moves to)."""
        p = position_of(node_id, self.ids) if position is None else position
        if p is None:
            raise KeyError(node_id)
        return self.pools[p // POOL_SIZE]

    def initial(self, node_id: str, position: int | None = None) -> str:
        """The licence reference ``node_id`` is registered with."""
        return self.own.get(node_id) or self.pool(node_id, position)

    def reference(self, node_id: str, tick: int, faults: Iterable[Fault]) -> str:
        """The licence reference ``node_id`` presents in ``tick``."""
        ref = self.initial(node_id)
        for fault in faults:
            if fault.kind == "licence_expiry" and fault.until is not None and tick >= fault.until \
                    and ref.startswith("exp-"):
                ref = self.pool(node_id)
            elif fault.kind == "forged_licence" and fault.active(tick) and (fault.index, node_id) in self.forged:
                ref = self.forged[(fault.index, node_id)]
        return ref


def write_licences(root: Path, ids: Sequence[str], faults: Sequence[Fault], targets: dict[int, list[str]],
                   seed: int, epoch: float, interval: float) -> SimLicences:
    """Sign the licences of a simulated cluster into ``root`` (created; must be new).

    :param targets: fault index -> the nodes it hits (the simulator's draw).
    :param epoch: simulated time of tick 0; tick ``t`` is ``epoch + t * interval``.
    """
    directory = root / "licences"
    directory.mkdir(parents=True)
    key = _key(seed, "issuer")
    issuer_pub = write_public_key(root / "issuer.pub", key)
    issued, expires = epoch - 30 * DAY, epoch + 365 * DAY

    def write(ref: str, doc: dict) -> str:
        (directory / f"{ref}.licence").write_text(json.dumps(doc, indent=1) + "\n")
        return ref

    pools = []
    for start in range(0, len(ids), POOL_SIZE):
        ref = f"pool-{start // POOL_SIZE + 1:04d}"
        pools.append(write(ref, issue_licence(key, licence_id=ref, customer=CUSTOMER, issued=issued,
                                               expires=expires, features=["core"])))
    licences = SimLicences(directory, issuer_pub, ids, pools)
    untrusted = _key(seed, "untrusted")
    for fault in faults:
        for node_id in targets.get(fault.index, ()):
            if fault.kind == "licence_expiry" and node_id not in licences.own:
                ref = f"exp-{node_id}"
                write(ref, issue_licence(key, licence_id=ref, customer=CUSTOMER, issued=issued,
                                         expires=epoch + fault.at * interval, features=["core"]))
                licences.own[node_id] = ref
            elif fault.kind == "forged_licence":
                ref = f"forged-{fault.index}-{node_id}"
                signer = untrusted if fault.params.get("forgery") == "untrusted_key" else key
                doc = issue_licence(signer, licence_id=ref, customer=CUSTOMER, issued=issued, expires=expires,
                                    features=["core"])
                if signer is key:
                    doc["payload"]["features"] = ["core", "everything"]  # edited after signing
                licences.forged[(fault.index, node_id)] = write(ref, doc)
    return licences
