"""The integrity digest an agent reports: ``sha256:`` of the licensed artefact's bytes.

``wyneos agent --integrity-file PATH`` reports the digest of PATH in every heartbeat's
metadata (``integrity``); a licence that pins a digest (``wyneos licence issue
--integrity``) is valid only on a node reporting the same (reason ``integrity_mismatch``
otherwise; docs/licences.md). The file is read again only when its size, modification
time or inode changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["FileDigest", "file_digest"]

_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of the file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class FileDigest:
    """The digest of one file, computed again only when the file changed."""

    __slots__ = ("path", "_stamp", "_digest")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._digest: str | None = None

    def current(self) -> str | None:
        """The digest now; None when the file cannot be read (reported as missing)."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
            if stamp != self._stamp:
                self._digest = file_digest(self.path)
                self._stamp = stamp
        except OSError:
            self._stamp = self._digest = None
        return self._digest
