"""Signed envelopes: the outer format shared by licences and revocation lists.

An envelope is a JSON object::

    {"format": "wyneos.licence/1", "payload": {..., "key_id": "..."}, "signature": "<base64>"}

The signature is Ed25519 over ``format`` + a newline + the canonical JSON of
``payload`` (``canonical.canonical_json``). The format name in the signed bytes keeps a
signature made for one kind of document from verifying as another; the ``key_id``
inside the payload is signed too, so it cannot be swapped.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wyneos_core.licensing.canonical import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    CanonicalError,
    OversizedInteger,
    canonical_json,
    check_canonical,
)
from wyneos_core.licensing.keys import key_id

__all__ = [
    "EnvelopeError",
    "FormatError",
    "SignatureError",
    "UnknownKeyError",
    "MAX_DOCUMENT_BYTES",
    "load_json",
    "open_envelope",
    "parse_envelope",
    "seal",
    "signed_bytes",
    "verify_envelope",
]

MAX_DOCUMENT_BYTES = 256 * 1024


class EnvelopeError(ValueError):
    """Base of the errors below; ``reason`` is the licence reason code it stands for."""

    reason = "malformed"

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class FormatError(EnvelopeError):
    """Not a well-formed document (truncated, garbage, wrong types, missing fields)."""

    reason = "malformed"


class UnknownKeyError(EnvelopeError):
    """Signed with a key id that is not in the trusted key ring."""

    reason = "unknown_key"


class SignatureError(EnvelopeError):
    """The signature does not verify against the named trusted key."""

    reason = "invalid_signature"


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _nesting(raw: bytes) -> int:
    """The deepest nesting of lists and objects in JSON text (strings skipped)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(brackets, lambda d, b: d + 1 if b in (91, 123) else d - 1, initial=0))


def _int(text: str) -> int | OversizedInteger:
    return OversizedInteger(text) if len(text) > MAX_INT_DIGITS + 1 else int(text)


def _constant(name: str) -> Any:
    raise FormatError(f"{name} is not a JSON number")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise FormatError(f"duplicate key {key!r:.60} in one object")
        obj[key] = value
    return obj


def load_json(raw: bytes) -> Any:
    """Parse untrusted JSON text strictly: ``FormatError`` instead of any other exception.

    Refused with a message: not UTF-8, not JSON, nesting deeper than ``MAX_DEPTH``,
    duplicate keys, NaN/Infinity. Integer literals longer than ``MAX_INT_DIGITS`` come
    back as ``OversizedInteger`` (the canonical check names their field).
    """
    depth = _nesting(raw)
    if depth > MAX_DEPTH:
        raise FormatError(f"nested {depth} levels deep (at most {MAX_DEPTH})")
    try:
        return json.loads(raw.decode("utf-8"), parse_int=_int, parse_constant=_constant, object_pairs_hook=_pairs)
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"not JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); truncated?") from None
    except (RecursionError, ValueError, MemoryError) as exc:  # defence in depth: never anything but FormatError
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"not readable JSON ({type(exc).__name__})") from None


def signed_bytes(fmt: str, payload: Mapping[str, Any]) -> bytes:
    """The exact bytes the signature covers."""
    return fmt.encode("ascii") + b"\n" + canonical_json(dict(payload))


def seal(fmt: str, payload: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign ``payload`` (its ``key_id`` is set from ``key``) and return the envelope."""
    body = dict(payload)
    body["key_id"] = key_id(key)
    signature = key.sign(signed_bytes(fmt, body))
    return {"format": fmt, "payload": body, "signature": base64.b64encode(signature).decode("ascii")}


def parse_envelope(data: bytes | str | Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """Parse an envelope's outer shape; raise ``FormatError`` naming the field at fault."""
    if isinstance(data, (bytes, bytearray, str)):
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise FormatError(f"document is larger than {MAX_DOCUMENT_BYTES} bytes")
        if not raw.strip():
            raise FormatError("document is empty")
        obj = load_json(raw)
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise FormatError(f"a document is a JSON object, got {type(obj).__name__}")
    extra = sorted(set(obj) - {"format", "payload", "signature"})
    if extra:
        raise FormatError(f"unknown field {extra[0]!r}", extra[0])
    if obj.get("format") != fmt:
        raise FormatError(f"expected {fmt!r}, got {obj.get('format')!r}", "format")
    if not isinstance(obj.get("payload"), Mapping):
        raise FormatError("missing or not an object", "payload")
    if not isinstance(obj.get("signature"), str):
        raise FormatError("missing or not a string", "signature")
    try:  # floats, huge integers, lone surrogates, deep nesting: named here, before any use
        check_canonical(obj["payload"], "payload")
    except CanonicalError as exc:
        raise FormatError(str(exc)) from None
    if not isinstance(obj["payload"].get("key_id"), str):
        raise FormatError("missing or not a string", "payload.key_id")
    return dict(obj)


def verify_envelope(envelope: Mapping[str, Any], keyring: Mapping[str, Any]) -> None:
    """Check the signature of a parsed envelope against the trusted ``keyring``.

    :raises UnknownKeyError: the payload's key id is not trusted.
    :raises SignatureError: the signature is not valid base64 or does not verify.
    :raises FormatError: the payload has no canonical form (e.g. contains a float).
    """
    payload = envelope["payload"]
    kid = payload["key_id"]
    key = keyring.get(kid)
    if key is None:
        raise UnknownKeyError(f"key id {kid!r} is not among the {len(keyring)} trusted key(s)", "payload.key_id")
    try:
        signature = base64.b64decode(envelope["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("not valid base64", "signature") from None
    if len(signature) != 64:
        raise SignatureError(f"an Ed25519 signature has 64 bytes, got {len(signature)}", "signature")
    try:
        message = signed_bytes(envelope["format"], payload)
    except CanonicalError as exc:
        raise FormatError(str(exc), "payload") from None
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError(f"does not verify with trusted key {kid}", "signature") from None


def open_envelope(data: bytes | str | Mapping[str, Any], fmt: str, keyring: Mapping[str, Any]) -> dict[str, Any]:
    """Parse and verify; return the payload."""
    envelope = parse_envelope(data, fmt)
    verify_envelope(envelope, keyring)
    return dict(envelope["payload"])
