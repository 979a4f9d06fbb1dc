"""A licence that pins an integrity digest, end to end: a real agent process reports the
digest of its licensed file; another digest fails validation with integrity_mismatch."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from service_helpers import add_token, end_processes, make_service, wait_for, write_config

from wyneos_core.licensing.document import Licence, issue_licence, parse_licence
from wyneos_core.licensing.engine import LicenceEngine
from wyneos_core.licensing.ledger import Ledger
from wyneos_core.licensing.sources import FileSource
from wyneos_core.licensing.envelope import FormatError
from wyneos_core.licensing.keys import KeyRing, generate_key, write_private_key, write_public_key
from wyneos_core.licensing.reasons import REASONS
from wyneos_core.licensing.settings import LicenceSettings
from wyneos_core.model import Node
from wyneos_core.service.integrity import file_digest
from wyneos_core.service.server import ServerThread

WYNEOS = [sys.executable, "-m", "wyneos_core.cli"]


def test_integrity_mismatch_through_a_real_agent(tmp_path) -> None:
    key = generate_key()
    write_private_key(tmp_path / "issuer.key", key)
    write_public_key(tmp_path / "issuer.pub", key)
    (tmp_path / "licences").mkdir()
    artefact = tmp_path / "app.bin"
    artefact.write_bytes(b"the licensed build 1.0\n" * 1000)
    # issued with the CLI, pinning the file's digest
    issued = subprocess.run([*WYNEOS, "licence", "issue", "--key", str(tmp_path / "issuer.key"), "--id", "lic-1",
                             "--customer", "acme", "--expires", "+30d", "--integrity", str(artefact),
                             "--out", str(tmp_path / "licences" / "lic-1.json")], capture_output=True, text=True)
    assert issued.returncode == 0, issued.stderr
    pinned = parse_licence((tmp_path / "licences" / "lic-1.json").read_bytes())[1].integrity
    assert pinned == file_digest(artefact)
    config = write_config(tmp_path, extra="licence: {trusted_keys: [issuer.pub], directory: licences, rescan: 0.1, "
                                          "cache_ttl: 1}")
    text = config.read_text().replace("plugins: {disable: [licence], ", "plugins: {")
    config.write_text(text)
    service = make_service(config)
    procs = []
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        procs.append(subprocess.Popen(
            [*WYNEOS, "agent", "--server", url, "--node", "edge-1", "--state-dir", str(tmp_path / "agent"),
             "--token", add_token(service), "--interval", "0.2", "--licence", "lic-1",
             "--integrity-file", str(artefact)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        try:
            def licence() -> dict | None:
                node = client.get("/v1/nodes/edge-1")
                return node.json().get("licence") if node.status_code == 200 else None

            good = wait_for(lambda: (lic := licence()) and lic["reason"] == "ok" and lic)
            assert good["state"] == "valid"
            # the licensed file is changed on the node: the next heartbeats report another digest
            artefact.write_bytes(b"a patched build\n")
            bad = wait_for(lambda: (lic := licence()) and lic["reason"] == "integrity_mismatch" and lic)
            assert bad["state"] == "invalid" and "integrity digest" in bad["meaning"]
            assert "pins integrity sha256:" in bad["detail"]
            # the builtin enforcement quarantines it, and the agent applies it
            log = tmp_path / "agent" / "actions.log"
            wait_for(lambda: log.exists() and any(
                json.loads(line)["action"]["type"] == "quarantine" for line in log.read_text().splitlines()))
            # the original build is restored: valid again
            artefact.write_bytes(b"the licensed build 1.0\n" * 1000)
            wait_for(lambda: (lic := licence()) and lic["reason"] == "ok")
        finally:
            end_processes(procs)


def test_the_digest_is_signed_checked_and_optional(tmp_path) -> None:
    key = generate_key()
    digest = "sha256:" + "ab" * 32
    doc = issue_licence(key, licence_id="l", customer="c", issued=0, expires=10**9, integrity=digest)
    assert parse_licence(doc)[1].integrity == digest
    plain = issue_licence(key, licence_id="l", customer="c", issued=0, expires=10**9)
    assert "integrity" not in plain["payload"] and parse_licence(plain)[1].integrity is None
    with pytest.raises(FormatError, match="payload.integrity"):
        issue_licence(key, licence_id="l", customer="c", issued=0, expires=10**9, integrity="md5:abc")
    # pinned after signing: the signature no longer verifies
    from wyneos_core.licensing.document import verify_licence
    from wyneos_core.licensing.envelope import SignatureError

    edited = json.loads(json.dumps(plain))
    edited["payload"]["integrity"] = digest
    with pytest.raises(SignatureError):
        verify_licence(edited, KeyRing([key.public_key()]))
    assert "integrity_mismatch" in REASONS
    assert isinstance(parse_licence(doc)[1], Licence)


def test_a_changed_report_is_checked_again_not_served_from_the_cache(tmp_path) -> None:
    key = generate_key()
    write_public_key(tmp_path / "k.pub", key)
    (tmp_path / "lic").mkdir()
    digest = "sha256:" + "cd" * 32
    (tmp_path / "lic" / "a.json").write_text(json.dumps(issue_licence(
        key, licence_id="lic-a", customer="c", issued=0, expires=4 * 10**9, integrity=digest)))
    settings = LicenceSettings(directory=tmp_path / "lic", cache_ttl=3600)
    engine = LicenceEngine(settings, KeyRing([key.public_key()]), {"file": FileSource(tmp_path / "lic")},
                           Ledger(None))
    node = Node("a", licence_ref="lic-a", metadata={"integrity": digest})
    reasons = []
    for md in ({"integrity": digest}, {"integrity": digest}, {"integrity": "sha256:" + "00" * 32}, {},
               {"integrity": digest}):
        node.metadata = md
        now = 1000.0 + len(reasons)
        engine.begin(now)
        reasons.append(engine.validate([node], now)[0].reason)
    assert reasons == ["ok", "ok", "integrity_mismatch", "integrity_mismatch", "ok"]
