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
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wyneos_core.licensing.canonical import CanonicalError, canonical_json
from wyneos_core.licensing.keys import key_id

__all__ = [
    "EnvelopeError",
    "FormatError",
    "SignatureError",
    "UnknownKeyError",
    "MAX_DOCUMENT_BYTES",
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
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise FormatError(f"not UTF-8 text (byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise FormatError(f"not JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); truncated?") from None
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
