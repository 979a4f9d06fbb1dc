"""Node identity: signed requests, their verification, and the replay window.

Every request a node agent sends is signed with the node's Ed25519 key. The signature
covers the **canonical bytes** of the request::

    wyneos-sig-v1 \\n METHOD \\n PATH \\n NODE-ID \\n TIMESTAMP \\n NONCE \\n SHA256-HEX(BODY)

and travels in four headers: ``X-Wyneos-Node``, ``X-Wyneos-Timestamp`` (epoch
seconds, as sent), ``X-Wyneos-Nonce`` (16-64 characters ``[A-Za-z0-9_-]``) and
``X-Wyneos-Signature`` (base64url of the 64-byte signature).

A batch of heartbeats carries the same four values per item, with the item's own
body (``POST /v1/heartbeats`` is the method and path every item signs), so a relay
can forward heartbeats it did not sign and cannot alter.

The server refuses, before anything touches the registry:

* **401** no or malformed signature headers, a node that is not enrolled, a bad
  signature;
* **403** a revoked key, or a body that speaks for another node than the signer;
* **409** a replay: a nonce already seen inside the window, or a timestamp outside
  ``now ± window`` (or from before the server started, when its nonce memory began).

The node key fingerprint (``sha256:`` + hex SHA-256 of the raw public key) is what
licences pair with; it comes from ``wyneos_core.licensing.keys.fingerprint``.

Signatures are verified by ``verify_signature``: libsodium's Ed25519 (through PyNaCl),
about 2.5x faster than the ``cryptography`` package on the hot path, and stricter. On
top of RFC 8032 it refuses a non-canonical ``S`` (``S >= L``), a non-canonical or
small-order public key and a small-order ``R``. With such a key (the identity point,
say) ``cryptography`` accepts a signature that anyone can make for any message;
libsodium does not, so a weak key can never enrol (enrolment proves possession through
the same function). Keys stay plain Ed25519: ``cryptography`` still generates and
serialises them and signs licences.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from wyneos_core.licensing.keys import fingerprint

__all__ = [
    "AuthError",
    "HEADER_NODE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "KeyCache",
    "NonceWindow",
    "SignedItem",
    "b64d",
    "b64e",
    "canonical_bytes",
    "fingerprint",
    "new_nonce",
    "parse_item",
    "sign_request",
    "verify_item",
    "verify_signature",
]

HEADER_NODE: Final = "x-wyneos-node"
HEADER_TIMESTAMP: Final = "x-wyneos-timestamp"
HEADER_NONCE: Final = "x-wyneos-nonce"
HEADER_SIGNATURE: Final = "x-wyneos-signature"

_PREFIX: Final = "wyneos-sig-v1"
_URLSAFE_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class AuthError(Exception):
    """A signed request was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str, code: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.code = code

    def to_dict(self) -> dict[str, object]:
        return {"status": self.status, "code": self.code, "error": self.reason}


def b64e(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    """Decode base64url with or without padding; ``ValueError`` when it is not base64url."""
    if not isinstance(text, str) or len(text) > 200:
        raise ValueError("not a base64url string")
    try:
        data = text.encode("ascii").translate(_URLSAFE_TO_STANDARD)
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a base64url string") from None


def new_nonce() -> str:
    """A fresh random nonce (22 base64url characters, 128 bits)."""
    return secrets.token_urlsafe(16)


def canonical_bytes(method: str, path: str, node_id: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The bytes a node signs for one request (see the module docstring)."""
    return (f"{_PREFIX}\n{method.upper()}\n{path}\n{node_id}\n{timestamp}\n{nonce}\n"
            f"{hashlib.sha256(body).hexdigest()}").encode()


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``.

    libsodium's strict verification (see the module docstring): a non-canonical
    signature or a small-order / non-canonical key is refused. ``public_key`` is the
    raw 32 bytes, ``signature`` the raw 64. The GIL is released while libsodium works,
    so verifier threads use several cores.
    """
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except BadSignatureError:
        return False
    return True


def sign_request(
    key: Ed25519PrivateKey, node_id: str, method: str, path: str, body: bytes = b"",
    *, timestamp: float | None = None, nonce: str | None = None,
) -> dict[str, str]:
    """The four signature headers for a request from ``node_id``."""
    ts = f"{time.time() if timestamp is None else timestamp:.3f}"
    nonce = nonce or new_nonce()
    signature = key.sign(canonical_bytes(method, path, node_id, ts, nonce, body))
    return {HEADER_NODE: node_id, HEADER_TIMESTAMP: ts, HEADER_NONCE: nonce, HEADER_SIGNATURE: b64e(signature)}


@dataclass(slots=True)
class SignedItem:
    """One signed unit: a whole request, or one item of a heartbeat batch."""

    node_id: str
    timestamp: str
    nonce: str
    signature: str
    body: bytes

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], body: bytes) -> SignedItem:
        values = [headers.get(h) for h in (HEADER_NODE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)]
        missing = [h for h, v in zip((HEADER_NODE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE), values) if not v]
        if missing:
            raise AuthError(401, f"unsigned request: missing header(s) {', '.join(missing)}", "unsigned")
        return cls(values[0], values[1], values[2], values[3], body)  # type: ignore[arg-type]


class KeyCache:
    """Enrolled public keys (raw 32 bytes, checked once) by node id, and the revoked ones
    (thread-safe)."""

    __slots__ = ("_keys", "_fingerprints", "_revoked", "_lock")

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._fingerprints: dict[str, str] = {}
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    def set(self, node_id: str, raw_public_key: bytes, revoked: bool = False) -> None:
        Ed25519PublicKey.from_public_bytes(raw_public_key)  # ValueError when not a key encoding
        key = bytes(raw_public_key)
        with self._lock:
            self._keys[node_id] = key
            self._fingerprints[node_id] = fingerprint(raw_public_key)
            if revoked:
                self._revoked.add(node_id)
            else:
                self._revoked.discard(node_id)

    def forget(self, node_id: str) -> None:
        with self._lock:
            self._keys.pop(node_id, None)
            self._fingerprints.pop(node_id, None)
            self._revoked.discard(node_id)

    def get(self, node_id: str) -> bytes | None:
        """The node's raw public key, or None when it is not enrolled."""
        return self._keys.get(node_id)

    def is_revoked(self, node_id: str) -> bool:
        return node_id in self._revoked

    def fingerprint(self, node_id: str) -> str | None:
        return self._fingerprints.get(node_id)

    def active_count(self) -> int:
        with self._lock:
            return len(self._keys) - len(self._revoked)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class NonceWindow:
    """Remembers ``(node, nonce)`` pairs for ``window`` seconds and refuses repeats.

    A request's timestamp must lie inside ``now ± window`` and not before ``not_before``
    (the moment this memory started: older requests could be replays it never saw).
    Memory is bounded: at most ``max_entries`` remembered nonces; when expired ones
    are purged and there is still no room, requests are refused (409, retry later).
    """

    __slots__ = ("window", "not_before", "max_entries", "_seen", "_lock", "_next_purge")

    def __init__(self, window: float, *, not_before: float | None = None, max_entries: int = 5_000_000) -> None:
        self.window = float(window)
        self.not_before = time.time() if not_before is None else not_before
        self.max_entries = max_entries
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def check_time(self, ts: float, now: float) -> None:
        if ts < now - self.window or ts > now + self.window:
            raise AuthError(409, f"timestamp {ts:.3f} is outside the replay window of ±{self.window:g}s "
                                 f"around the server time {now:.3f}; sign with a fresh timestamp", "stale_timestamp")
        if ts < self.not_before:
            raise AuthError(409, f"timestamp {ts:.3f} is from before the server started ({self.not_before:.3f}); "
                                 "sign again with a fresh timestamp", "before_start")

    def claim(self, node_id: str, nonce: str, ts: float, now: float) -> None:
        """Record the nonce; ``AuthError(409)`` if it was seen inside the window."""
        key = (node_id, nonce)
        with self._lock:
            if now >= self._next_purge or len(self._seen) >= self.max_entries:
                self._purge(now)
            if key in self._seen:
                raise AuthError(409, f"replayed request: nonce {nonce!r} of {node_id!r} was already used", "replay")
            if len(self._seen) >= self.max_entries:
                raise AuthError(409, "too many requests inside the replay window; retry later", "window_full")
            self._seen[key] = ts + self.window

    def claim_many(self, items: Iterable[tuple[str, str, float]], now: float) -> list[AuthError | None]:
        """``claim`` for several items at once (one lock round); one result per item."""
        out: list[AuthError | None] = []
        with self._lock:
            if now >= self._next_purge:
                self._purge(now)
            seen = self._seen
            for node_id, nonce, ts in items:
                key = (node_id, nonce)
                if key in seen:
                    out.append(AuthError(409, f"replayed request: nonce {nonce!r} of {node_id!r} was already used",
                                         "replay"))
                elif len(seen) >= self.max_entries:
                    out.append(AuthError(409, "too many requests inside the replay window; retry later",
                                         "window_full"))
                else:
                    seen[key] = ts + self.window
                    out.append(None)
        return out

    def release(self, node_id: str, nonce: str) -> None:
        """Forget a nonce claimed by a request that was then refused for another reason."""
        with self._lock:
            self._seen.pop((node_id, nonce), None)

    def _purge(self, now: float) -> None:
        expired = [k for k, until in self._seen.items() if until < now]
        for k in expired:
            del self._seen[k]
        self._next_purge = now + max(1.0, self.window / 4)

    def __len__(self) -> int:
        return len(self._seen)


def parse_item(item: SignedItem) -> float:
    """Check the shape of a signed item's values; return its timestamp as a float."""
    if not isinstance(item.node_id, str) or not _NODE.match(item.node_id):
        raise AuthError(401, f"malformed {HEADER_NODE}: not a node id", "malformed")
    if not isinstance(item.nonce, str) or not _NONCE.match(item.nonce):
        raise AuthError(401, f"malformed {HEADER_NONCE}: 16-64 characters of A-Z a-z 0-9 _ -", "malformed")
    try:
        if not isinstance(item.timestamp, str) or len(item.timestamp) > 32:
            raise ValueError
        ts = float(item.timestamp)
    except ValueError:
        raise AuthError(401, f"malformed {HEADER_TIMESTAMP}: not a number of epoch seconds", "malformed") from None
    if ts != ts or ts in (float("inf"), float("-inf")):
        raise AuthError(401, f"malformed {HEADER_TIMESTAMP}: not finite", "malformed")
    return ts


def verify_item(item: SignedItem, method: str, path: str, keys: KeyCache, now: float) -> float:
    """Verify one signed unit's signature (not its nonce); return its timestamp.

    :raises AuthError: 401 (malformed, unknown node, bad signature) or 403 (revoked).
    """
    ts = parse_item(item)
    key = keys.get(item.node_id)
    if key is None:
        raise AuthError(401, f"node {item.node_id!r} is not enrolled (wyneos agent enrols it)", "not_enrolled")
    if keys.is_revoked(item.node_id):
        raise AuthError(403, f"the key of node {item.node_id!r} is revoked", "revoked")
    try:
        signature = b64d(item.signature)
    except ValueError:
        raise AuthError(401, f"malformed {HEADER_SIGNATURE}: not base64url", "malformed") from None
    if len(signature) != 64:
        raise AuthError(401, f"malformed {HEADER_SIGNATURE}: {len(signature)} bytes, an Ed25519 signature has 64",
                        "malformed")
    if not verify_signature(key, signature, canonical_bytes(method, path, item.node_id, item.timestamp, item.nonce,
                                                             item.body)):
        raise AuthError(401, f"bad signature from node {item.node_id!r}", "bad_signature")
    return ts
