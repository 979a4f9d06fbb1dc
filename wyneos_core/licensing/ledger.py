"""What the licence step must not forget across restarts: the newest issue seen of
each licence (replay protection) and the revocation list accepted last (its version,
and the signed list itself, so revocations stay enforced when the list file goes
missing or an older list is put in its place).

Kept in a small JSON file (mode 0600) written atomically when it changes
(``licence.ledger``, by default next to the state file); with no path it lives in
memory only.
"""

from __future__ import annotations

import json
from pathlib import Path

from wyneos_core.licensing.revocation import write_atomic
from wyneos_core.safeio import FileRefused, read_regular_file

__all__ = ["Ledger"]

#: the largest ledger read (some hundred thousand licences)
MAX_LEDGER_BYTES = 32 * 1024 * 1024


class Ledger:
    __slots__ = ("path", "newest", "revocation_version", "revocation_document", "revocation_new", "dirty", "renewed")

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.newest: dict[str, float] = {}
        self.revocation_version = 0
        #: the signed revocation list accepted last (its envelope), and the ids it added
        self.revocation_document: dict | None = None
        self.revocation_new: list[str] = []
        self.dirty = False
        #: set when a newer issue of an already known licence was seen (a renewal)
        self.renewed = False
        if self.path is not None and self.path.exists():
            try:
                # a regular file, opened without blocking, its size checked before reading
                data = json.loads(read_regular_file(self.path, MAX_LEDGER_BYTES).decode("utf-8"))
                self.newest = {str(k): float(v) for k, v in data.get("newest_issue", {}).items()}
                self.revocation_version = int(data.get("revocation_version", 0))
                document = data.get("revocation_list")
                if document is not None and not isinstance(document, dict):
                    raise TypeError("revocation_list is not an object")
                self.revocation_document = document
                self.revocation_new = [str(i) for i in data.get("revocation_new", [])]
            except FileRefused as exc:
                raise ValueError(f"{self.path}: not a licence ledger ({exc.strerror})") from None
            except (ValueError, TypeError, AttributeError, OSError) as exc:
                raise ValueError(f"{self.path}: not a licence ledger ({exc}); move it away to start afresh") from None

    def seen(self, licence_id: str, issued: float) -> float | None:
        """Record an issue of ``licence_id``; return the newer issue time if this one is older."""
        newest = self.newest.get(licence_id)
        if newest is None or issued > newest:
            if newest is not None:
                self.renewed = True
            self.newest[licence_id] = issued
            self.dirty = True
            return None
        return newest if issued < newest else None

    def accept_revocations(self, version: int, document: dict | None, new: list[str]) -> None:
        """Remember the revocation list accepted last."""
        self.revocation_version = max(self.revocation_version, version)
        self.revocation_document = document
        self.revocation_new = list(new)
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        data = {"newest_issue": self.newest, "revocation_version": self.revocation_version,
                "revocation_list": self.revocation_document, "revocation_new": self.revocation_new}
        write_atomic(self.path, json.dumps(data, sort_keys=True) + "\n", mode=0o600)
        self.dirty = False
