"""Which revocation list is in force: the one kept across a restart, and a newer one
read from its file when it may replace it.

A list older than the one accepted (by the engine, or before a restart: the ledger's
version) is refused: a replayed old list cannot un-revoke a licence. A list file that
is missing keeps the accepted revocations in force. Each refusal comes with the
problem worded for the operator; the licence engine reports it every tick until the
file is put right (``LicenceEngine.revocation_problem``).
"""

from __future__ import annotations

from pathlib import Path

from wyneos_core.licensing.envelope import EnvelopeError
from wyneos_core.licensing.keys import KeyRing
from wyneos_core.licensing.ledger import Ledger
from wyneos_core.licensing.revocation import RevocationList

__all__ = ["kept_revocations", "read_revocations"]


def kept_revocations(ledger: Ledger, keyring: KeyRing) -> tuple[RevocationList | None, str | None]:
    """The revocation list accepted before a restart, from ``ledger``: ``(list, note)``.

    The list is None when none was kept or it is unreadable; a list that no longer
    verifies (its key rotated out since) is kept all the same, its revocations still
    hold. The note, when there is one, says what was wrong with it.
    """
    document = ledger.revocation_document
    if document is None:
        return None, None
    try:
        return RevocationList.from_document(document, keyring), None
    except EnvelopeError as exc:
        try:  # our own copy: its key may have been rotated out since; the revocations still hold
            kept = RevocationList.from_document(document, keyring, verify=False)
        except EnvelopeError:
            return None, (f"licence.ledger: the kept revocation list is unreadable ({exc}); "
                          "revocations are known again once a list is provided")
        return kept, (f"licence.ledger: the kept revocation list version {kept.version} no longer "
                      f"verifies ({exc.reason}); its revocations stay in force")


def read_revocations(path: Path, present: bool, keyring: KeyRing, kept: RevocationList, accepted_version: int
                     ) -> tuple[RevocationList | None, str | None]:
    """The revocation list in the file at ``path`` when it may replace ``kept``:
    ``(list, None)``; else ``(None, problem)``, the problem None when the file is
    missing and no list was ever accepted.

    :param present: whether the file is there (the caller looked, to see if it changed).
    :param accepted_version: the newest version accepted before (the ledger's): a list
        older than it or than ``kept`` is refused.
    """
    if not present:
        if kept.version:
            return None, (f"revocation list {path} is missing; the {len(kept.entries)} "
                          f"revocation(s) of version {kept.version} accepted earlier stay in force")
        if accepted_version:
            return None, (f"revocation list {path} is missing, and version {accepted_version} was accepted "
                          "before: revoked licences are unknown until that list (or a newer one) is provided")
        return None, None
    try:
        fresh = RevocationList.load(path, keyring)
    except EnvelopeError as exc:
        return None, f"revocation list {path} refused ({exc.reason}): {exc}; keeping version {kept.version}"
    floor = max(kept.version, accepted_version)
    if fresh.version < floor:
        problem = (f"revocation list {path} has version {fresh.version}, older than version "
                   f"{floor} already accepted: refused (replayed old list?)")
        if kept.version:
            problem += f"; the revocations of version {kept.version} stay in force"
        else:
            problem += ("; no accepted list is known: revoked licences are unknown until a list "
                        "at least as new is provided")
        return None, problem
    return fresh, None
