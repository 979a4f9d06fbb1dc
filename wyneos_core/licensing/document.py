"""The licence document: its fields, parsing, issuing and verification.

A licence file is a signed envelope (``envelope``) of format ``wyneos.licence/1`` whose
payload has exactly these fields:

==============  ===========================================================
licence_id      ``[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}``
customer        who the licence is issued to
product         the product it is for (``wyneos`` by default)
tier            a tier name; tiers can grant features (``licence.tiers``)
features        list of feature codes granted (entitlements)
issued          when it was issued, UTC ``YYYY-MM-DDTHH:MM:SSZ``; a renewal has a later one
not_before      valid from (same format)
expires         valid until (same format)
grace_days      days after ``expires`` during which it is valid "in grace" (integer)
seats           how many nodes may use it at once, or null for no limit
fingerprints    node key fingerprints it may run on; empty means any machine
key_id          id of the issuer key that signed it (set when signing)
==============  ===========================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wyneos_core.licensing.envelope import (
    FormatError,
    SignatureError,
    UnknownKeyError,
    parse_envelope,
    seal,
    verify_envelope,
)

__all__ = [
    "FORMAT",
    "Licence",
    "LicenceFormatError",
    "SignatureError",
    "UnknownKeyError",
    "format_time",
    "issue_licence",
    "parse_licence",
    "parse_time",
    "verify_licence",
]

FORMAT = "wyneos.licence/1"
LicenceFormatError = FormatError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
TIME_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
FIELDS = ("licence_id", "customer", "product", "tier", "features", "issued", "not_before", "expires",
          "grace_days", "seats", "fingerprints", "key_id")
#: fields a licence may leave out (a licence issued before they existed verifies unchanged)
OPTIONAL = ("integrity",)
#: ``sha256:`` and 64 lowercase hex digits: the digest of the licensed artefact
INTEGRITY_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_time(text: Any, field: str) -> float:
    """``2026-01-31T00:00:00Z`` -> epoch seconds; ``FormatError`` naming ``field`` otherwise."""
    if not isinstance(text, str) or not TIME_PATTERN.match(text):
        raise FormatError(f"expected a UTC time like 2026-01-31T00:00:00Z, got {text!r}", field)
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise FormatError(f"not a valid date: {exc}", field) from None


@lru_cache(maxsize=8192)
def format_time(epoch: float) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds, UTC)."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Licence:
    """A parsed licence payload; times are epoch seconds."""

    licence_id: str
    customer: str
    product: str
    tier: str
    features: tuple[str, ...]
    issued: float
    not_before: float
    expires: float
    grace_days: int
    seats: int | None
    fingerprints: frozenset[str]
    key_id: str
    #: the integrity digest of what it licenses; a node must report the same (None: not pinned)
    integrity: str | None = None

    @property
    def grace_until(self) -> float:
        return self.expires + self.grace_days * 86400

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Licence:
        """Check every field strictly; raise ``FormatError`` naming the first bad one."""
        extra = sorted(set(payload) - set(FIELDS) - set(OPTIONAL))
        if extra:
            raise FormatError(f"unknown field {extra[0]!r}", f"payload.{extra[0]}")
        for name in FIELDS:
            if name not in payload:
                raise FormatError("is required", f"payload.{name}")

        def text(name: str) -> str:
            value = payload[name]
            if not isinstance(value, str) or not value or len(value) > 256:
                raise FormatError(f"expected a non-empty string of at most 256 characters, got {value!r:.60}",
                                  f"payload.{name}")
            return value

        def strings(name: str) -> tuple[str, ...]:
            value = payload[name]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise FormatError(f"expected a list of strings, got {value!r:.60}", f"payload.{name}")
            return tuple(value)

        licence_id = text("licence_id")
        if not ID_PATTERN.match(licence_id):
            raise FormatError(f"not a valid licence id: {licence_id!r}", "payload.licence_id")
        grace = payload["grace_days"]
        if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= 3650:
            raise FormatError(f"expected an integer 0..3650, got {grace!r}", "payload.grace_days")
        seats = payload["seats"]
        if seats is not None and (isinstance(seats, bool) or not isinstance(seats, int) or seats < 1):
            raise FormatError(f"expected a positive integer or null, got {seats!r}", "payload.seats")
        integrity = payload.get("integrity")
        if integrity is not None and (not isinstance(integrity, str) or not INTEGRITY_PATTERN.match(integrity)):
            raise FormatError(f"expected sha256: and 64 lowercase hex digits, got {integrity!r:.80}",
                              "payload.integrity")
        not_before = parse_time(payload["not_before"], "payload.not_before")
        expires = parse_time(payload["expires"], "payload.expires")
        if expires <= not_before:
            raise FormatError("must be after not_before", "payload.expires")
        return cls(
            licence_id=licence_id,
            customer=text("customer"),
            product=text("product"),
            tier=text("tier"),
            features=strings("features"),
            issued=parse_time(payload["issued"], "payload.issued"),
            not_before=not_before,
            expires=expires,
            grace_days=grace,
            seats=seats,
            fingerprints=frozenset(strings("fingerprints")),
            key_id=text("key_id"),
            integrity=integrity,
        )

    def to_payload(self) -> dict[str, Any]:
        return {
            "licence_id": self.licence_id,
            "customer": self.customer,
            "product": self.product,
            "tier": self.tier,
            "features": list(self.features),
            "issued": format_time(self.issued),
            "not_before": format_time(self.not_before),
            "expires": format_time(self.expires),
            "grace_days": self.grace_days,
            "seats": self.seats,
            "fingerprints": sorted(self.fingerprints),
            "key_id": self.key_id,
            **({"integrity": self.integrity} if self.integrity is not None else {}),
        }


def issue_licence(
    key: Ed25519PrivateKey,
    *,
    licence_id: str,
    customer: str,
    expires: float,
    product: str = "wyneos",
    tier: str = "standard",
    features: Sequence[str] = (),
    issued: float,
    not_before: float | None = None,
    grace_days: int = 0,
    seats: int | None = None,
    fingerprints: Sequence[str] = (),
    integrity: str | None = None,
) -> dict[str, Any]:
    """Build, check and sign a licence; return the envelope (write it with ``json.dump``)."""
    payload = {
        "licence_id": licence_id,
        "customer": customer,
        "product": product,
        "tier": tier,
        "features": sorted(set(features)),
        "issued": format_time(issued),
        "not_before": format_time(issued if not_before is None else not_before),
        "expires": format_time(expires),
        "grace_days": grace_days,
        "seats": seats,
        "fingerprints": sorted(set(fingerprints)),
        "key_id": "-",
        **({"integrity": integrity} if integrity is not None else {}),
    }
    Licence.from_payload(payload)  # refuse to sign what would not parse
    return seal(FORMAT, payload, key)


def parse_licence(data: bytes | str | Mapping[str, Any]) -> tuple[dict[str, Any], Licence]:
    """Parse without verifying: ``(envelope, licence)``; ``FormatError`` for a bad document."""
    envelope = parse_envelope(data, FORMAT)
    return envelope, Licence.from_payload(envelope["payload"])


def verify_licence(data: bytes | str | Mapping[str, Any], keyring: Mapping[str, Any]) -> Licence:
    """Parse and verify a licence document.

    :raises FormatError: malformed (reason ``malformed``).
    :raises UnknownKeyError: signed by an untrusted key (``unknown_key``).
    :raises SignatureError: signature does not verify (``invalid_signature``).
    """
    envelope = parse_envelope(data, FORMAT)
    verify_envelope(envelope, keyring)  # signature first: an edited payload is a forgery, not a typo
    return Licence.from_payload(envelope["payload"])
