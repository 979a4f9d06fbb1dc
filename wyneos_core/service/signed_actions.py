"""Signed actions, signed acknowledgements and orchestrator key hand-over.

Everything the orchestrator hands to a node that makes the node *do* something is a
signed envelope (``wyneos_core.licensing.envelope``: Ed25519 over the format name, a
newline and the canonical JSON of the payload) made with the orchestrator key
(``orchestrator_key``). An action envelope::

    {"format": "wyneos.action/1",
     "payload": {"id": "5f0c...", "type": "isolate", "target": "worker-7",
                 "params": "{}", "reason": "...", "origin": "...", "severity": "critical",
                 "issued_at": 1767000000123, "expires_at": 1767003600123, "key_id": "..."},
     "signature": "<base64>"}

* ``id`` is the action's stable id (the one acknowledgements name);
* ``params`` is the action's parameters as JSON text (sorted keys, no spaces): action
  parameters may hold floating-point numbers, which canonical JSON leaves out because
  their text differs between languages; as a string they are signed byte for byte;
* ``issued_at`` (integer milliseconds since the epoch) is when the orchestrator decided
  this issuance of the action. ``(id, issued_at)`` names one issuance: an agent applies
  each issuance once and refuses it when it comes again (a replay);
* ``expires_at`` (milliseconds) bounds how long a copy of the envelope is worth
  anything; the orchestrator signs a pending action again (same ``issued_at``, a later
  ``expires_at``) before it runs out;
* ``target`` is the node the action is addressed to (``"*"``: the whole fleet, for
  fleet-wide types such as ``revoke``, the licence revocation list). The envelope does
  not depend on the path it takes, so a peer can relay it unchanged and the addressee
  checks it the same way.

An acknowledgement is signed by the node key (format ``wyneos.ack/1``) and names the
issuance it answers, so the orchestrator (or anyone holding the node's public key)
can check what the node said about which action, whoever carried the answer.

Key hand-over on rotation: ``wyneos orchestrator-key rotate`` signs the new public key
with the old private key (format ``wyneos.orchestrator-key/1``); an agent that pinned
the old key verifies that statement and then trusts the new key too.

Retirement: ``wyneos orchestrator-key retire`` has the *new* key sign that the old one
is retired from a date on (format ``wyneos.orchestrator-key-retired/1``). Every answer
then carries the orchestrator's **keyring statement**, signed by its current key
(format ``wyneos.orchestrator-keyring/1``): the keys it still holds (the current one,
and the previous one while ``.previous.pub`` is kept) and the retirements with their
dates. An agent applies it only when it is signed by the newest key it trusts (an old
statement signed by an older key cannot make it drop a newer one): it stops trusting
every key not listed, and a retired key once its date has passed, for good - actions
signed by it are refused from then on.

Signatures are verified with libsodium's strict Ed25519 (``identity.verify_signature``),
as node requests are.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wyneos_core.licensing.canonical import CanonicalError
from wyneos_core.licensing.envelope import EnvelopeError, load_json, parse_envelope, seal, signed_bytes
from wyneos_core.licensing.keys import fingerprint, key_id, public_bytes
from wyneos_core.model import ActionType
from wyneos_core.service.identity import b64d, b64e, verify_signature

__all__ = [
    "ACK_FORMAT",
    "ACTION_FORMAT",
    "BROADCAST_TYPES",
    "KNOWN_TYPES",
    "MAX_ENVELOPE_BYTES",
    "KEYRING_FORMAT",
    "RETIRE_FORMAT",
    "ROTATION_FORMAT",
    "Refused",
    "TrustedKeys",
    "key_entry",
    "open_ack",
    "open_action",
    "open_keyring",
    "open_retirement",
    "open_rotation",
    "seal_ack",
    "seal_action",
    "seal_keyring",
    "seal_retirement",
    "seal_rotation",
]

ACTION_FORMAT: Final = "wyneos.action/1"
ACK_FORMAT: Final = "wyneos.ack/1"
ROTATION_FORMAT: Final = "wyneos.orchestrator-key/1"
RETIRE_FORMAT: Final = "wyneos.orchestrator-key-retired/1"
KEYRING_FORMAT: Final = "wyneos.orchestrator-keyring/1"
#: keys and retirements a keyring statement lists at most
MAX_KEYRING: Final = 8
#: the largest signed envelope (its JSON text) a node or the server reads
MAX_ENVELOPE_BYTES: Final = 64 * 1024
#: the types an agent knows; others are refused and never reach ``--hook``
KNOWN_TYPES: Final = frozenset(t.value for t in ActionType)
#: the types that may be addressed to the whole fleet (``target: "*"``)
BROADCAST_TYPES: Final = frozenset({ActionType.REVOKE.value})
ACK_STATUSES: Final = ("applied", "failed", "ignored")

TYPE_PATTERN = re.compile(r"^[a-z_]{1,64}$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_ACTION_FIELDS = frozenset(("id", "type", "target", "params", "reason", "origin", "severity", "issued_at",
                            "expires_at", "key_id"))
_ACK_FIELDS = frozenset(("node", "action_id", "issued_at", "status", "detail", "acked_at", "key_id"))
_MAX_MS = 10 ** 15  # milliseconds: year 33658; anything later is not a time


class Refused(Exception):
    """A signed document that must not be used; ``reason`` is a short code.

    Codes: ``malformed``, ``unsigned``, ``unknown_key``, ``bad_signature``, ``expired``,
    ``not_yet_valid``, ``replayed``, ``other_node``, ``unknown_type``.
    """

    def __init__(self, reason: str, detail: str, action_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.action_id = action_id


def now_ms() -> int:
    return int(time.time() * 1000)


def key_entry(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> dict[str, str]:
    """``{"public_key" (base64url raw), "key_id", "fingerprint"}`` of a public key."""
    raw = key if isinstance(key, bytes) else public_bytes(key)
    pub = Ed25519PublicKey.from_public_bytes(raw)
    return {"public_key": b64e(raw), "key_id": key_id(pub), "fingerprint": fingerprint(raw)}


class TrustedKeys:
    """Raw Ed25519 public keys by key id: what a verifier trusts (at most ``limit``, newest last)."""

    def __init__(self, keys: Iterable[bytes] = (), limit: int = 4) -> None:
        self.limit = limit
        self._keys: dict[str, bytes] = {}
        for raw in keys:
            self.add(raw)

    def add(self, raw: bytes) -> str:
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
        kid = key_id(Ed25519PublicKey.from_public_bytes(raw))
        self._keys.pop(kid, None)
        self._keys[kid] = bytes(raw)
        while len(self._keys) > self.limit:
            del self._keys[next(iter(self._keys))]
        return kid

    def get(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def remove(self, kid: str) -> bool:
        """Stop trusting ``kid``; False when it was not trusted."""
        return self._keys.pop(kid, None) is not None

    def ids(self) -> list[str]:
        """The key ids, oldest first (the last is the newest)."""
        return list(self._keys)

    def raw(self) -> list[bytes]:
        return list(self._keys.values())

    def fingerprints(self) -> list[str]:
        return [fingerprint(raw) for raw in self._keys.values()]

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)


# -- parsing -----------------------------------------------------------------------------


def _parse(data: Any, fmt: str) -> dict[str, Any]:
    """The envelope's outer shape, or ``Refused`` (``unsigned`` / ``malformed``)."""
    if not isinstance(data, Mapping):
        raise Refused("malformed", f"a signed envelope is a JSON object, got {type(data).__name__}")
    if isinstance(data, Mapping) and "format" not in data and "signature" not in data:
        ident = data.get("id") if isinstance(data.get("id"), str) else None
        raise Refused("unsigned", "not a signed envelope (no format or signature)", ident and ident[:128])
    if isinstance(data, Mapping) and not isinstance(data.get("signature"), str):
        raise Refused("unsigned", "the envelope has no signature")
    try:
        size = len(json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError):
        raise Refused("malformed", "not JSON data") from None
    if size > MAX_ENVELOPE_BYTES:
        raise Refused("malformed", f"envelope of {size} bytes is larger than {MAX_ENVELOPE_BYTES}")
    try:
        return parse_envelope(data, fmt)
    except EnvelopeError as exc:
        raise Refused("malformed", str(exc)) from None


def _check_signature(envelope: Mapping[str, Any], raw_key: bytes) -> None:
    try:
        signature = base64.b64decode(envelope["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise Refused("bad_signature", "the signature is not valid base64") from None
    try:
        message = signed_bytes(envelope["format"], envelope["payload"])
    except CanonicalError as exc:
        raise Refused("malformed", str(exc)) from None
    if not verify_signature(raw_key, signature, message):
        raise Refused("bad_signature", f"the signature does not verify with key {envelope['payload']['key_id']}")


def _ms(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if type(value) is not int or not 0 < value < _MAX_MS:
        raise Refused("malformed", f"payload.{name}: expected a time in integer milliseconds")
    return value


def _text(payload: Mapping[str, Any], name: str, limit: int, pattern: re.Pattern[str] | None = None) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or len(value) > limit or (pattern is not None and not pattern.match(value)):
        raise Refused("malformed", f"payload.{name}: expected a string of at most {limit} characters"
                                   + (" of the allowed form" if pattern is not None else ""))
    return value


# -- actions -----------------------------------------------------------------------------


def seal_action(private: Ed25519PrivateKey, action: Mapping[str, Any], issued_at: int, expires_at: int) -> dict[str, Any]:
    """The signed envelope of ``action`` (a dict as ``Action.to_dict`` gives)."""
    payload = {
        "id": action["id"], "type": action["type"], "target": action["target"],
        "params": json.dumps(dict(action.get("params") or {}), sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False, allow_nan=False),
        "reason": str(action.get("reason", ""))[:1000],
        "origin": str(action.get("origin", ""))[:128], "severity": str(action.get("severity", "warning")),
        "issued_at": int(issued_at), "expires_at": int(expires_at),
    }
    return seal(ACTION_FORMAT, payload, private)


def open_action(data: Any, keys: TrustedKeys, *, now: float | None = None, tolerance: float = 300.0) -> dict[str, Any]:
    """Verify one action envelope against the trusted ``keys``; return its payload.

    Checks, in order: a signed envelope of the right format and size, a trusted key id,
    a signature that verifies, well-formed fields, ``issued_at`` not in the future and
    ``expires_at`` not in the past (both with ``tolerance`` seconds of clock skew).
    Addressing, replays and types are the caller's (the agent's) to check.

    :raises Refused: naming why.
    """
    envelope = _parse(data, ACTION_FORMAT)
    payload = envelope["payload"]
    ident = payload.get("id") if isinstance(payload.get("id"), str) else None
    ident = ident[:128] if ident else None
    raw = keys.get(payload["key_id"])
    if raw is None:
        raise Refused("unknown_key", f"signed with key {payload['key_id'][:40]!r}, which is not the pinned "
                                     "orchestrator key", ident)
    try:
        _check_signature(envelope, raw)
    except Refused as exc:
        exc.action_id = ident
        raise
    extra = sorted(set(payload) - _ACTION_FIELDS)
    try:
        if extra:
            raise Refused("malformed", f"payload.{extra[0]}: unknown field")
        _text(payload, "id", 128, ID_PATTERN)
        kind = _text(payload, "type", 64, TYPE_PATTERN)
        target = _text(payload, "target", 128)
        if target != "*" and not _NODE.match(target):
            raise Refused("malformed", "payload.target: not a node id or '*'")
        params_text = _text(payload, "params", 32 * 1024)
        try:
            params = load_json(params_text.encode("utf-8"))
        except (EnvelopeError, UnicodeEncodeError) as exc:
            raise Refused("malformed", f"payload.params: {exc}") from None
        if not isinstance(params, Mapping):
            raise Refused("malformed", "payload.params: expected the JSON text of an object")
        for name, limit in (("reason", 1000), ("origin", 128), ("severity", 32)):
            _text(payload, name, limit)
        issued, expires = _ms(payload, "issued_at"), _ms(payload, "expires_at")
        if expires <= issued:
            raise Refused("malformed", "payload.expires_at: not after issued_at")
    except Refused as exc:
        exc.action_id = ident
        raise
    at = (time.time() if now is None else now) * 1000
    if expires < at - tolerance * 1000:
        raise Refused("expired", f"{kind} of {target} expired {(at - expires) / 1000:.0f}s ago", ident)
    if issued > at + tolerance * 1000:
        raise Refused("not_yet_valid", f"{kind} of {target} is issued {(issued - at) / 1000:.0f}s in the future "
                                       "(clock skew?)", ident)
    return {**payload, "params": dict(params)}


# -- acknowledgements --------------------------------------------------------------------


def seal_ack(private: Ed25519PrivateKey, node_id: str, action_id: str, issued_at: int, status: str,
             detail: str, acked_at: int | None = None) -> dict[str, Any]:
    """A node's signed acknowledgement of one issuance of an action."""
    payload = {"node": node_id, "action_id": action_id, "issued_at": issued_at, "status": status,
               "detail": detail[:1000], "acked_at": now_ms() if acked_at is None else acked_at}
    return seal(ACK_FORMAT, payload, private)


def open_ack(data: Any, node_id: str, raw_key: bytes) -> dict[str, Any]:
    """Verify a node's acknowledgement with the node's public key; return its payload.

    :raises Refused: unsigned, malformed, another node's, not signed by this node's key.
    """
    envelope = _parse(data, ACK_FORMAT)
    payload = envelope["payload"]
    if payload["key_id"] != key_id(Ed25519PublicKey.from_public_bytes(raw_key)):
        raise Refused("unknown_key", f"not signed with the enrolled key of {node_id!r}")
    _check_signature(envelope, raw_key)
    extra = sorted(set(payload) - _ACK_FIELDS)
    if extra:
        raise Refused("malformed", f"payload.{extra[0]}: unknown field")
    if payload.get("node") != node_id:
        raise Refused("other_node", f"acknowledgement of node {str(payload.get('node'))[:128]!r}, sent by {node_id!r}")
    _text(payload, "action_id", 128, ID_PATTERN)
    _ms(payload, "issued_at")
    if payload.get("status") not in ACK_STATUSES:
        raise Refused("malformed", "payload.status: expected applied, failed or ignored")
    _text(payload, "detail", 1000)
    _ms(payload, "acked_at")
    return dict(payload)


# -- key hand-over -----------------------------------------------------------------------


def seal_rotation(old: Ed25519PrivateKey, new_public: bytes, at: int | None = None) -> dict[str, Any]:
    """The old key's signed statement that ``new_public`` succeeds it."""
    return seal(ROTATION_FORMAT, {"successor": key_entry(new_public), "rotated_at": now_ms() if at is None else at},
                old)


def open_rotation(data: Any, keys: TrustedKeys) -> bytes:
    """The successor key (raw) of a rotation statement signed by a trusted key.

    :raises Refused: when the statement is not signed by a key in ``keys``, or malformed.
    """
    envelope = _parse(data, ROTATION_FORMAT)
    payload = envelope["payload"]
    raw = keys.get(payload["key_id"])
    if raw is None:
        raise Refused("unknown_key", f"key hand-over signed by {payload['key_id'][:40]!r}, not a pinned key")
    _check_signature(envelope, raw)
    successor = payload.get("successor")
    if not isinstance(successor, Mapping) or not isinstance(successor.get("public_key"), str):
        raise Refused("malformed", "payload.successor: expected a key entry")
    try:
        new = b64d(successor["public_key"])
        Ed25519PublicKey.from_public_bytes(new)
    except ValueError:
        raise Refused("malformed", "payload.successor.public_key: not a raw Ed25519 key") from None
    return new


HANDOVER_SUFFIX: Final = ".handover.json"


def handover_path(key_path: Any) -> Any:
    """Where the hand-over statement of the orchestrator key at ``key_path`` is kept."""
    return key_path.with_name(key_path.name + HANDOVER_SUFFIX)


def rotate(okey: Any) -> Any:
    """Rotate the orchestrator key ``okey`` (an ``OrchestratorKey``): a new key, the old
    public key kept as 'previous', and the old key's signed hand-over to the new one
    written beside it (0600, replaced atomically). Returns the new ``OrchestratorKey``."""
    import os

    new = okey.rotate()
    statement = seal_rotation(okey.private, new.public_raw)
    path = handover_path(new.path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(statement, fh, sort_keys=True)
    os.replace(tmp, path)
    return new


def load_handover(key_path: Any, current_key_id: str) -> dict[str, Any] | None:
    """The hand-over statement to the key ``current_key_id``, if one is kept (else None)."""
    path = handover_path(key_path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_ENVELOPE_BYTES:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
        return None
    successor = data["payload"].get("successor")
    if not isinstance(successor, dict) or successor.get("key_id") != current_key_id:
        return None  # a statement about an older rotation
    return data


# -- retirement and the keyring statement -------------------------------------------------


def seal_retirement(new: Ed25519PrivateKey, old_public: bytes, retired_at: int) -> dict[str, Any]:
    """The new key's signed statement that the key ``old_public`` is retired from
    ``retired_at`` (milliseconds since the epoch) on."""
    return seal(RETIRE_FORMAT, {"retired": key_entry(old_public), "retired_at": int(retired_at)}, new)


def open_retirement(data: Any, signer: bytes) -> tuple[str, int]:
    """(retired key id, retired_at) of a retirement statement signed by ``signer``.

    :raises Refused: not signed by ``signer``, or malformed.
    """
    envelope = _parse(data, RETIRE_FORMAT)
    payload = envelope["payload"]
    if payload["key_id"] != key_entry(signer)["key_id"]:
        raise Refused("unknown_key", f"retirement signed by {payload['key_id'][:40]!r}, not by the current key")
    _check_signature(envelope, signer)
    retired, at = payload.get("retired"), payload.get("retired_at")
    if not isinstance(retired, Mapping) or not isinstance(retired.get("key_id"), str) or type(at) is not int:
        raise Refused("malformed", "payload: expected {retired: key entry, retired_at: milliseconds}")
    return retired["key_id"][:64], at


def seal_keyring(current: Ed25519PrivateKey, kept: Iterable[bytes], retired: Mapping[str, int],
                 at: int | None = None) -> dict[str, Any]:
    """The current key's signed statement of the keys the orchestrator holds (``kept``:
    raw public keys, the current one included) and the retired ones (key id -> date)."""
    return seal(KEYRING_FORMAT, {"keys": [key_entry(raw)["key_id"] for raw in kept][:MAX_KEYRING],
                                 "retired": [{"key_id": kid, "retired_at": int(when)}
                                             for kid, when in list(retired.items())[:MAX_KEYRING]],
                                 "issued_at": now_ms() if at is None else at}, current)


def open_keyring(data: Any, keys: TrustedKeys) -> tuple[set[str], dict[str, int]]:
    """(listed key ids, retired key id -> date) of a keyring statement signed by the
    newest key in ``keys``.

    :raises Refused: signed by another key (``stale``: an older trusted one), listing
        its own signer as retired or not at all, or malformed.
    """
    envelope = _parse(data, KEYRING_FORMAT)
    payload = envelope["payload"]
    signer = payload["key_id"]
    newest = keys.ids()[-1] if len(keys) else None
    if signer != newest:
        raise Refused("stale" if signer in keys else "unknown_key",
                      f"keyring statement signed by {signer[:40]!r}, not by the newest pinned key")
    _check_signature(envelope, keys.get(signer))  # type: ignore[arg-type]
    listed, retired = payload.get("keys"), payload.get("retired")
    if not isinstance(listed, list) or not isinstance(retired, list) or len(listed) > MAX_KEYRING \
            or len(retired) > MAX_KEYRING or not all(isinstance(k, str) for k in listed):
        raise Refused("malformed", "payload: expected {keys: [key id], retired: [{key_id, retired_at}]}")
    out: dict[str, int] = {}
    for entry in retired:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("key_id"), str) \
                or type(entry.get("retired_at")) is not int:
            raise Refused("malformed", "payload.retired: expected [{key_id, retired_at}]")
        out[entry["key_id"][:64]] = entry["retired_at"]
    if signer not in listed or signer in out:
        raise Refused("malformed", "a keyring statement must list its signer, and not as retired")
    return set(listed), out
