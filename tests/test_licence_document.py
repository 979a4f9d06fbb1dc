"""Licence documents, keys and signatures: canonical bytes, key files, tampering."""

from __future__ import annotations

import base64
import copy
import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.test_licence_support import DAY, T0, Issuer
from wyneos_core.licensing.canonical import CanonicalError, canonical_json
from wyneos_core.licensing.document import FORMAT, issue_licence, parse_licence, verify_licence
from wyneos_core.licensing.envelope import FormatError, SignatureError, UnknownKeyError, signed_bytes
from wyneos_core.licensing.keys import (
    KeyFileError,
    KeyRing,
    fingerprint,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    public_bytes,
)
from wyneos_core.licensing.revocation import RevocationList


@pytest.fixture
def issuer(tmp_path):
    return Issuer(tmp_path)


def ring(*issuers) -> KeyRing:
    return KeyRing(i.key.public_key() for i in issuers)


def test_canonical_json_is_sorted_compact_utf8_and_refuses_floats():
    assert canonical_json({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()
    assert canonical_json({"a": 1, "b": 2}) == canonical_json({"b": 2, "a": 1})
    with pytest.raises(CanonicalError, match="x.y: floating-point"):
        canonical_json({"x": {"y": 1.5}})
    with pytest.raises(CanonicalError, match="keys must be strings"):
        canonical_json({1: 2})


def test_signature_covers_format_and_canonical_payload_byte_for_byte(issuer):
    doc = issuer.licence("lic-1", seats=3, features=["b", "a"])
    # re-encoding the file with other white space and key order does not matter...
    shuffled = json.loads(json.dumps(doc, indent=4, sort_keys=False))
    assert verify_licence(json.dumps(shuffled, indent=7), ring(issuer)).licence_id == "lic-1"
    # ...because the signature is over these exact bytes, which an independent verifier can rebuild
    message = FORMAT.encode() + b"\n" + json.dumps(doc["payload"], sort_keys=True, separators=(",", ":"),
                                                   ensure_ascii=False).encode()
    assert message == signed_bytes(FORMAT, doc["payload"])
    pub = Ed25519PublicKey.from_public_bytes(public_bytes(issuer.key))
    pub.verify(base64.b64decode(doc["signature"]), message)  # raises if not
    assert doc["payload"]["key_id"] == key_id(issuer.key) and len(key_id(issuer.key)) == 16
    assert doc["payload"]["features"] == ["a", "b"]


def test_key_files_owner_only_and_loadable(issuer, tmp_path):
    mode = stat.S_IMODE(issuer.private_path.stat().st_mode)
    assert mode == 0o600
    assert public_bytes(load_private_key(issuer.private_path)) == public_bytes(issuer.key)
    assert public_bytes(load_public_key(issuer.public_path)) == public_bytes(issuer.key)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(issuer.public_path)
    bad = tmp_path / "junk.pub"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(KeyFileError, match="junk.pub: not a PEM public key"):
        load_public_key(bad)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")


def test_fingerprint_is_sha256_of_raw_public_key():
    key = generate_key()
    import hashlib

    assert fingerprint(key) == "sha256:" + hashlib.sha256(public_bytes(key)).hexdigest()
    assert fingerprint(key.public_key()) == fingerprint(public_bytes(key))
    with pytest.raises(ValueError, match="32 bytes"):
        fingerprint(b"short")


def test_forged_signature_is_invalid_signature(issuer):
    doc = issuer.licence("lic-1")
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[5] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(SignatureError) as err:
        verify_licence(doc, ring(issuer))
    assert err.value.reason == "invalid_signature"


@pytest.mark.parametrize("field,value", [("expires", "2099-01-01T00:00:00Z"), ("seats", 10_000),
                                         ("customer", "evil"), ("fingerprints", []), ("features", ["all"])])
def test_edited_payload_is_invalid_signature(issuer, field, value):
    doc = issuer.licence("lic-1", seats=2, fingerprints=[fingerprint(generate_key())])
    doc["payload"][field] = value
    with pytest.raises(SignatureError):
        verify_licence(doc, ring(issuer))


def test_wrong_key_is_unknown_key_and_key_id_swap_is_invalid_signature(issuer, tmp_path):
    other = Issuer(tmp_path / "other")
    doc = other.licence("lic-1")
    with pytest.raises(UnknownKeyError) as err:
        verify_licence(doc, ring(issuer))
    assert err.value.reason == "unknown_key"
    # an attacker claims the trusted key id for a document signed with their own key
    forged = copy.deepcopy(doc)
    forged["payload"]["key_id"] = key_id(issuer.key)
    with pytest.raises(SignatureError):
        verify_licence(forged, ring(issuer))


def test_rotation_two_trusted_keys_coexist(issuer, tmp_path):
    new = Issuer(tmp_path / "new")
    both = KeyRing.from_paths([issuer.public_path, new.public_path.parent])
    assert len(both) == 2
    assert verify_licence(issuer.licence("old"), both).licence_id == "old"
    assert verify_licence(new.licence("new"), both).licence_id == "new"
    with pytest.raises(UnknownKeyError):  # the old key retired
        verify_licence(issuer.licence("old"), KeyRing.from_paths([new.public_path]))


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"\xff\xfe garbage", "not UTF-8"),
    (b"not json at all", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"format": "other/1", "payload": {}, "signature": ""}', "format"),
    (b'{"format": "wyneos.licence/1", "payload": {"key_id": "x"}}', "signature"),
    (b'{"format": "wyneos.licence/1", "payload": {"key_id": "x"}, "signature": "", "extra": 1}', "extra"),
])
def test_garbage_documents_are_malformed(issuer, data, match):
    with pytest.raises(FormatError, match=match) as err:
        verify_licence(data, ring(issuer))
    assert err.value.reason == "malformed"


def test_truncated_file_is_malformed(issuer):
    text = json.dumps(issuer.licence("lic-1"))
    for cut in (1, len(text) // 3, len(text) - 1):
        with pytest.raises(FormatError, match="truncated"):
            verify_licence(text[:cut], ring(issuer))


def test_payload_fields_checked_with_field_names(issuer):
    with pytest.raises(FormatError, match="payload.seats"):
        issuer.licence("lic-1", seats=0)
    with pytest.raises(FormatError, match="payload.licence_id"):
        issuer.licence("bad id with spaces")
    with pytest.raises(FormatError, match="payload.expires: must be after not_before"):
        issuer.licence("lic-1", issued=T0, expires=T0 - DAY)
    doc = issuer.licence("lic-1")
    doc["payload"]["issued"] = "yesterday"
    with pytest.raises(FormatError, match="payload.issued"):
        parse_licence(doc)
    del doc["payload"]["tier"]
    with pytest.raises(FormatError, match="payload.tier: is required"):
        parse_licence(doc)


def test_signed_float_payload_is_malformed_not_a_crash(issuer):
    doc = issuer.licence("lic-1")
    doc["payload"]["grace_days"] = 1.5
    with pytest.raises(FormatError, match="floating-point"):
        verify_licence(doc, ring(issuer))


def test_issue_refuses_nothing_it_cannot_parse_back(issuer):
    doc = issue_licence(issuer.key, licence_id="x", customer="c", issued=T0, expires=T0 + DAY, grace_days=3,
                        fingerprints=["sha256:ab"], seats=5, tier="pro", features=["f"])
    lic = verify_licence(doc, ring(issuer))
    assert (lic.grace_days, lic.seats, lic.tier, lic.features, lic.fingerprints) == (3, 5, "pro", ("f",),
                                                                                     frozenset({"sha256:ab"}))
    assert lic.grace_until == lic.expires + 3 * DAY
    assert lic.to_payload() == doc["payload"]


def test_revocation_list_signed_versioned_persisted(issuer, tmp_path):
    path = tmp_path / "revocations.json"
    keys = ring(issuer)
    empty = RevocationList.load(path, keys)
    assert empty.version == 0 and not empty.entries
    v1 = empty.revoke("lic-1", now=T0, reason="chargeback")
    v1.save(path, issuer.key)
    v2 = RevocationList.load(path, keys).revoke("lic-2", now=T0 + 5)
    v2.save(path, issuer.key)
    loaded = RevocationList.load(path, keys)
    assert loaded.version == 2 and set(loaded.entries) == {"lic-1", "lic-2"}
    assert loaded.entries["lic-1"].reason == "chargeback"
    doc = json.loads(path.read_text())
    doc["payload"]["entries"] = []  # un-revoking by editing is a forgery
    with pytest.raises(SignatureError):
        RevocationList.from_document(doc, keys)
    # a licence signature cannot be passed off as a revocation list (format is signed)
    lic = issuer.licence("lic-9")
    lic["format"] = "wyneos.revocations/1"
    with pytest.raises(SignatureError):
        RevocationList.from_document(lic, keys)
