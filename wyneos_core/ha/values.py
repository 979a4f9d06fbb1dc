"""etcd is a trust boundary: every value read back is checked before it is used.

``problem(kind, value)`` checks the shape of a decoded value by the first segment of
its key (``nodes``, ``actions``, ``keys``, ...): the fields a reader indexes exist and
have the types it expects, and sizes are bounded. A value that fails is reported with
its key and skipped by the reader (``EtcdStateStore``); nothing crashes, and once the
value is fixed the next read takes it.

``Sealer`` signs what decides who a node is and whom it belongs to, with the
orchestrator key (which lives on the replicas' disks, never in etcd): enrolled keys
(``keys/<node>``), enrolment tokens (``tokens/<hash>``) and the customers tokens gave
(``customers/<node>``). The signature covers the key's name and the value, so a token
or key written into etcd by anyone without the orchestrator key, or moved to another
key, is refused: it enrols no one as any customer and replaces no node's key. Values
are checked against the current key and the previous one kept during a rotation.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

__all__ = ["BAD", "MAX_TXN_OPS", "SEALED", "Sealer", "encode", "problem"]

#: operations per transaction, below etcd's default ``--max-txn-ops`` of 128 (room for the fence)
MAX_TXN_OPS = 120
#: what a checked read gives for a value that failed its checks (reported, skipped)
BAD = object()


def encode(value: Any) -> str:
    """A value as written to etcd: compact JSON with sorted keys."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)

#: kinds whose values carry the orchestrator key's signature (``sig``)
SEALED = frozenset(("keys", "tokens", "customers"))

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))
_STATUSES = frozenset(("online", "stale", "offline", "unknown"))

#: per kind: required fields and their types (extra fields are allowed)
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "nodes": {"id": (str,), "status": (str,), "last_seen": _OPT_NUM, "load": _OPT_NUM, "metadata": (dict,),
              "licence_ref": _OPT_STR, "fingerprint": _OPT_STR, "registered_at": _NUM, "isolated": (bool,)},
    "actions": {"id": (str,), "type": (str,), "target": (str,), "origin": (str,), "reason": (str,),
                "severity": (str,), "params": (dict,), "state": (str,), "first_tick": (int,), "last_tick": (int,)},
    "keys": {"node_id": (str,), "public_key": (str,), "fingerprint": (str,), "enrolled_at": _NUM,
             "revoked_at": _OPT_NUM},
    "tokens": {"token_hash": (str,), "node_id": _OPT_STR, "uses_left": (int,), "expires_at": _NUM,
               "created_at": _NUM, "customer": _OPT_STR},
    "customers": {"customer": (str,)},
    "acks": {"action_id": (str,), "node_id": (str,), "status": (str,), "detail": (str,), "acked_at": _NUM},
    "sacks": {"envelope": (dict,), "acked_at": _NUM},
    "refusals": {"node_id": (str,), "reported_at": _NUM, "reason": (str,), "detail": (str,)},
    "trust": {"node_id": (str,)},
    "notices": {"id": (str,), "type": (str,), "target": (str,), "params": (dict,)},
    "ticks": {"tick": (int,), "started_at": _NUM, "summary": (dict,)},
    "effects": {"tick": (int,)},
}


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, never to a reader of a count
    return isinstance(value, types)


def problem(kind: str, value: Any) -> str | None:
    """What is wrong with ``value`` stored under a key of ``kind`` (None: usable)."""
    if kind == "tick":
        return None if _typed(value, (int,)) and value >= 0 else "expected a tick number"
    if kind == "events":
        if not isinstance(value, list) or not all(
                isinstance(e, list) and len(e) == 3 and all(isinstance(x, str) for x in e) for e in value):
            return "expected a list of [action, state, detail]"
        return None
    if kind == "targets":
        if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], bool)
                and isinstance(value[1], str) and _typed(value[2], (int,))):
            return "expected [delivered, reason, tick]"
        return None
    if kind in ("carry", "meta"):
        return None  # checked by their readers (carry.restore, meta's callers)
    fields = _FIELDS.get(kind)
    if fields is None:
        return None
    if not isinstance(value, dict):
        return "expected a JSON object"
    for name, types in fields.items():
        if name not in value:
            return f"no field {name!r}"
        if not _typed(value[name], types):
            return f"field {name!r}: expected {' or '.join(t.__name__ for t in types)}"
    if kind == "nodes" and value["status"] not in _STATUSES:
        return f"field 'status': {value['status']!r} is not one of {', '.join(sorted(_STATUSES))}"
    if kind == "keys":
        try:
            raw = bytes.fromhex(value["public_key"])
        except ValueError:
            raw = b""
        if len(raw) != 32:
            return "field 'public_key': not a hex Ed25519 public key (32 bytes)"
    if kind == "tokens" and value["uses_left"] < 0:
        return "field 'uses_left': below 0"
    return None


def _message(name: str, value: dict[str, Any]) -> bytes:
    body = {k: v for k, v in value.items() if k != "sig"}
    return b"wyneos.etcd/1\n" + name.encode() + b"\n" + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                                  default=str).encode()


class Sealer:
    """Signs and checks sealed values with the orchestrator key.

    :param sign: signs bytes with the current orchestrator key (None: can only check).
    :param verifiers: ``verify(signature, message)`` of each trusted public key (the
        current one first, then the previous kept during a rotation); each raises on a
        bad signature.
    """

    def __init__(self, sign: Callable[[bytes], bytes] | None,
                 verifiers: list[Callable[[bytes, bytes], None]]) -> None:
        self._sign = sign
        self._verifiers = verifiers

    @classmethod
    def of(cls, okey: Any) -> Sealer:
        """A sealer from an ``OrchestratorKey``."""
        return cls(okey.sign, [k.verify for k in okey.keyring().values()])

    def seal(self, name: str, value: dict[str, Any]) -> dict[str, Any]:
        if self._sign is None:
            raise PermissionError("writing enrolment data into etcd needs the orchestrator key")
        sig = self._sign(_message(name, value))
        return {**value, "sig": base64.b64encode(sig).decode()}

    def current(self, name: str, value: dict[str, Any]) -> bool:
        """Whether ``value`` is signed by the current key (not only a previous one)."""
        try:
            self._verifiers[0](base64.b64decode(value["sig"], validate=True), _message(name, value))
            return True
        except Exception:  # noqa: BLE001 - no signature, or another key's
            return False

    def check(self, name: str, value: dict[str, Any]) -> str | None:
        sig = value.get("sig")
        if not isinstance(sig, str):
            return "not signed by the orchestrator key (no 'sig')"
        try:
            raw = base64.b64decode(sig, validate=True)
        except ValueError:
            return "field 'sig': not base64"
        message = _message(name, value)
        for verify in self._verifiers:
            try:
                verify(raw, message)
                return None
            except Exception:  # noqa: BLE001 - cryptography's InvalidSignature and friends
                continue
        return "its signature does not verify with the orchestrator key (written by someone without it?)"
