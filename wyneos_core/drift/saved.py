"""The drift columns kept across restarts: a checked binary layout (never pickle).

Layout: ``MAGIC``, the header's length (8 bytes, little endian), the header (JSON: the
node ids in row order), then per node, column after column: state and fields differing
(1 byte each), since and last change (8-byte floats, NaN for none). Only what cannot be
read again from the nodes is kept: the interned codes and the declarations are rebuilt
from the config, the manifests and the next heartbeats.
"""

from __future__ import annotations

import json
import struct
from typing import Final

import numpy as np

from wyneos_core.drift.engine import STATES, DriftEngine

__all__ = ["DriftStateError", "MAGIC", "restore", "to_bytes"]

MAGIC: Final = b"WYNDRIFT1\n"
#: the largest header a saved state may have (node ids), checked before it is read
MAX_HEADER: Final = 64 * 1024 * 1024
_ROW: Final = 1 + 1 + 8 + 8


class DriftStateError(ValueError):
    """Saved drift that cannot be read back (the message says why)."""


def to_bytes(engine: DriftEngine) -> bytes:
    n = len(engine.ids)
    header = json.dumps({"nodes": engine.ids, "states": list(STATES)}).encode()
    return b"".join((MAGIC, struct.pack("<Q", len(header)), header,
                     np.ascontiguousarray(engine.state[:n], dtype="u1").tobytes(),
                     np.ascontiguousarray(engine.mask[:n], dtype="u1").tobytes(),
                     np.ascontiguousarray(engine.since[:n], dtype="<f8").tobytes(),
                     np.ascontiguousarray(engine.changed_at[:n], dtype="<f8").tobytes()))


def restore(engine: DriftEngine, blob: bytes) -> int:
    """Put a saved state into a new engine (before its first step); the nodes restored.

    :raises DriftStateError: a blob of another layout, truncated or damaged.
    """
    if blob[: len(MAGIC)] != MAGIC or len(blob) < len(MAGIC) + 8:
        raise DriftStateError("not a saved drift state")
    (size,) = struct.unpack_from("<Q", blob, len(MAGIC))
    start = len(MAGIC) + 8
    if size > MAX_HEADER or start + size > len(blob):
        raise DriftStateError(f"header of {size} bytes does not fit")
    try:
        header = json.loads(blob[start:start + size])
        nodes, states = header["nodes"], header["states"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DriftStateError(f"damaged header ({exc})") from None
    if states != list(STATES):
        raise DriftStateError("saved with other drift states")
    if not (isinstance(nodes, list) and all(isinstance(x, str) for x in nodes) and len(set(nodes)) == len(nodes)):
        raise DriftStateError("damaged header (nodes must be a list of distinct ids)")
    n = len(nodes)
    body = memoryview(blob)[start + size:]
    if len(body) != n * _ROW:
        raise DriftStateError(f"{len(body)} bytes of columns, expected {n * _ROW}")
    state = np.frombuffer(body[:n], dtype="u1")
    if n and int(state.max()) >= len(STATES):
        raise DriftStateError("a state out of range")
    mask = np.frombuffer(body[n:2 * n], dtype="u1")
    since = np.frombuffer(body[2 * n:10 * n], dtype="<f8")
    changed = np.frombuffer(body[10 * n:], dtype="<f8")
    engine.adopt(nodes, state, mask, since, changed)
    return n
