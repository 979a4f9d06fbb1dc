"""The orchestrator key: made once beside the state file, owner-only, refused when exposed."""

from __future__ import annotations

import os
import stat

import pytest

from wyneos_core.licensing.envelope import SignatureError, UnknownKeyError, open_envelope, parse_envelope, verify_envelope
from wyneos_core.licensing.keys import KeyFileError, KeyRing
from wyneos_core.service.orchestrator_key import OrchestratorKey, key_path_for


def test_the_key_is_made_once_owner_only_and_reloaded_unchanged(tmp_path):
    state = tmp_path / "state.db"
    first = OrchestratorKey.for_state(state)
    assert first.path == key_path_for(state) == tmp_path / "state.db.orchestrator.key"
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    again = OrchestratorKey.for_state(state)
    assert (again.key_id, again.fingerprint) == (first.key_id, first.fingerprint)
    assert first.fingerprint.startswith("sha256:") and len(first.key_id) == 16


def test_signed_envelopes_verify_with_its_keyring_and_fail_when_altered(tmp_path):
    key = OrchestratorKey.for_state(tmp_path / "s.db")
    env = key.seal("wyneos.action/1", {"id": "a1", "type": "isolate", "target": "n1"})
    assert open_envelope(env, "wyneos.action/1", key.keyring())["target"] == "n1"
    env["payload"]["target"] = "n2"
    with pytest.raises(SignatureError):
        verify_envelope(parse_envelope(env, "wyneos.action/1"), key.keyring())
    other = OrchestratorKey.for_state(tmp_path / "other.db")
    with pytest.raises(UnknownKeyError):
        open_envelope(key.seal("wyneos.action/1", {"id": "a"}), "wyneos.action/1", other.keyring())


def test_rotation_keeps_the_previous_public_key_trusted(tmp_path):
    old = OrchestratorKey.for_state(tmp_path / "s.db")
    signed_before = old.seal("wyneos.action/1", {"id": "a1"})
    new = old.rotate()
    assert new.key_id != old.key_id
    ring = OrchestratorKey.for_state(tmp_path / "s.db").keyring()
    assert set(ring) == {old.key_id, new.key_id}
    assert open_envelope(signed_before, "wyneos.action/1", ring)["id"] == "a1"
    assert set(KeyRing([new.private.public_key()])) == {new.key_id}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_or_write_is_refused_naming_it(tmp_path, mode):
    key = OrchestratorKey.for_state(tmp_path / "s.db")
    os.chmod(key.path, mode)
    with pytest.raises(KeyFileError, match=r"s\.db\.orchestrator\.key.*chmod 600"):
        OrchestratorKey.load_or_create(key.path)


def test_a_fifo_or_damaged_key_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "f.db.orchestrator.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="regular file"):
        OrchestratorKey.load_or_create(fifo)
    bad = tmp_path / "b.key"
    bad.write_bytes(b"not a key")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="b.key"):
        OrchestratorKey.load_or_create(bad)
