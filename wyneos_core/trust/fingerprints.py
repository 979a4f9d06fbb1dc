"""Which slot last held a key fingerprint: a log of two columns, not a dict of every key.

A node that enrols again under a new id with a key seen before inherits the record of
the node that last had that key (``TrustEngine.slot``: no whitewashing by re-enrolling).
``FingerprintLog`` remembers every (fingerprint, slot) pair the engine learnt, in the
order learnt, as two arrays: the fingerprint's 64-bit hash (``hash()``: SipHash keyed
per process, so nobody can aim a key at another's) and the slot. That is 12 bytes a
pair, where a dict of fingerprint -> slot costs about 70 a node; nothing at all while
no node has a key. The slot a fingerprint belongs to is the slot of its last pair.

A lookup scans the hashes (about a millisecond at a million pairs): ``TrustEngine``
asks once per new node only for a few; a tick that creates many nodes asks for all of
them at once (``earlier_many``: one stable sort of the log).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["FingerprintLog"]

#: new nodes of one tick looked up one scan each; more are looked up with one sort
_SCANS = 32


class FingerprintLog:
    """Every (fingerprint, slot) pair learnt, in order (see the module docstring)."""

    __slots__ = ("hashes", "slots", "size")

    def __init__(self) -> None:
        self.hashes = np.zeros(0, dtype=np.int64)
        self.slots = np.zeros(0, dtype=np.int32)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, fingerprint: str, slot: int) -> int:
        """Log that ``slot`` has ``fingerprint`` now; returns the pair's position."""
        at = self.size
        if at == len(self.hashes):
            self._reserve(1)
        self.hashes[at] = hash(fingerprint)
        self.slots[at] = slot
        self.size = at + 1
        return at

    def add_many(self, fingerprints: Iterable[str], slots: Sequence[int] | np.ndarray) -> None:
        """``add`` for each pair, in order."""
        hashes = np.fromiter(map(hash, fingerprints), dtype=np.int64)
        self._reserve(len(hashes))
        self.hashes[self.size:self.size + len(hashes)] = hashes
        self.slots[self.size:self.size + len(hashes)] = slots
        self.size += len(hashes)

    def _reserve(self, count: int) -> None:
        needed = self.size + count
        if needed > len(self.hashes):
            capacity = max(needed, 2 * len(self.hashes), 1024)
            for name in ("hashes", "slots"):
                old = getattr(self, name)
                new = np.zeros(capacity, dtype=old.dtype)
                new[:self.size] = old[:self.size]
                setattr(self, name, new)

    def get(self, fingerprint: str, default: int | None = None) -> int | None:
        """The slot that last had ``fingerprint`` (``default``: none did)."""
        found = np.flatnonzero(self.hashes[:self.size] == hash(fingerprint))
        return int(self.slots[found[-1]]) if found.size else default

    def earlier_many(self, positions: np.ndarray) -> np.ndarray:
        """For the pairs at ``positions``, the slot of the last pair logged before each
        with the same fingerprint (-1: none)."""
        h = self.hashes[:self.size]
        out = np.full(len(positions), -1, dtype=np.int64)
        if len(positions) <= _SCANS:
            for k, at in enumerate(positions.tolist()):
                found = np.flatnonzero(h[:at] == h[at])
                if found.size:
                    out[k] = self.slots[found[-1]]
            return out
        order = np.argsort(h, kind="stable")  # equal hashes together, in the order logged
        rank = np.empty(self.size, dtype=np.int64)
        rank[order] = np.arange(self.size)
        i = rank[positions]
        has = i > 0
        has[has] = h[order[i[has] - 1]] == h[positions[has]]
        out[has] = self.slots[order[i[has] - 1]]
        return out
