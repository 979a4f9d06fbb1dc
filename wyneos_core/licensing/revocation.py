"""The revocation list: signed, versioned, persisted.

A revocation list is a signed envelope of format ``wyneos.revocations/1``::

    {"format": "wyneos.revocations/1",
     "payload": {"version": 3, "issued": "2026-03-01T12:00:00Z", "key_id": "...",
                 "entries": [{"licence_id": "lic-7", "revoked_at": "...", "reason": "chargeback"}]},
     "signature": "..."}

``version`` only grows: a list older than one already accepted is refused (a replayed
old list cannot un-revoke a licence). The file is replaced atomically when written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wyneos_core.licensing.document import ID_PATTERN, format_time, parse_time
from wyneos_core.licensing.envelope import MAX_DOCUMENT_BYTES, FormatError, parse_envelope, seal, verify_envelope
from wyneos_core.safeio import read_regular_file

__all__ = ["FORMAT", "Revocation", "RevocationList", "write_atomic"]

FORMAT = "wyneos.revocations/1"


@dataclass(frozen=True, slots=True)
class Revocation:
    licence_id: str
    revoked_at: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"licence_id": self.licence_id, "revoked_at": format_time(self.revoked_at), "reason": self.reason}


@dataclass(slots=True)
class RevocationList:
    """Revoked licence ids, with the list's version (0: the empty list before any)."""

    version: int = 0
    issued: float = 0.0
    entries: dict[str, Revocation] = field(default_factory=dict)
    key_id: str = ""
    #: the signed envelope this list was read from (kept so it can be persisted as is)
    document: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def __contains__(self, licence_id: object) -> bool:
        return licence_id in self.entries

    def revoke(self, licence_id: str, *, now: float, reason: str = "") -> RevocationList:
        """A new list (version + 1) that also revokes ``licence_id``."""
        if not ID_PATTERN.match(licence_id):
            raise ValueError(f"not a valid licence id: {licence_id!r}")
        entries = dict(self.entries)
        entries[licence_id] = Revocation(licence_id, float(int(now)), reason)
        return RevocationList(self.version + 1, float(int(now)), entries)

    def sign(self, key: Ed25519PrivateKey) -> dict[str, Any]:
        payload = {
            "version": self.version,
            "issued": format_time(self.issued),
            "entries": [e.to_dict() for e in sorted(self.entries.values(), key=lambda e: e.licence_id)],
            "key_id": "-",
        }
        return seal(FORMAT, payload, key)

    @classmethod
    def from_document(cls, data: bytes | str | Mapping[str, Any], keyring: Mapping[str, Any], *,
                      verify: bool = True) -> RevocationList:
        """Verify and parse a signed list; raise ``EnvelopeError`` subclasses on failure.

        :param verify: False only for a copy the orchestrator kept itself (its ledger),
            whose signature may have been made by a key trusted no longer.
        """
        envelope = parse_envelope(data, FORMAT)
        if verify:
            verify_envelope(envelope, keyring)
        payload = envelope["payload"]
        extra = sorted(set(payload) - {"version", "issued", "entries", "key_id"})
        if extra:
            raise FormatError(f"unknown field {extra[0]!r}", f"payload.{extra[0]}")
        version = payload.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise FormatError(f"expected a positive integer, got {version!r}", "payload.version")
        issued = parse_time(payload.get("issued"), "payload.issued")
        raw_entries = payload.get("entries")
        if not isinstance(raw_entries, list):
            raise FormatError("expected a list", "payload.entries")
        entries: dict[str, Revocation] = {}
        for i, item in enumerate(raw_entries):
            where = f"payload.entries[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("licence_id"), str) \
                    or not ID_PATTERN.match(item["licence_id"]):
                raise FormatError("expected {licence_id, revoked_at, reason} with a valid licence id", where)
            reason = item.get("reason", "")
            if not isinstance(reason, str):
                raise FormatError("expected a string", f"{where}.reason")
            entries[item["licence_id"]] = Revocation(
                item["licence_id"], parse_time(item.get("revoked_at"), f"{where}.revoked_at"), reason)
        return cls(version, issued, entries, payload["key_id"], envelope)

    @classmethod
    def load(cls, path: str | Path, keyring: Mapping[str, Any]) -> RevocationList:
        """Load a list file; a missing file is the empty list (version 0)."""
        path = Path(path)
        try:  # a regular file, opened without blocking, its size checked before reading
            data = read_regular_file(path, MAX_DOCUMENT_BYTES)
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise FormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
        return cls.from_document(data, keyring)

    def save(self, path: str | Path, key: Ed25519PrivateKey) -> Path:
        """Sign and write atomically (readers see the old or the new list, never half)."""
        return write_atomic(Path(path), json.dumps(self.sign(key), indent=1, sort_keys=True) + "\n")


def write_atomic(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
