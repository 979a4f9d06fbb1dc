"""``wyneos licence keygen|issue|verify|inspect|revoke`` and the demo's signed licences."""

from __future__ import annotations

import json
import os
import stat

from wyneos_core.cli import main
from wyneos_core.config import load_config
from wyneos_core.demo import demo_plugins
from wyneos_core.licensing.keys import fingerprint, generate_key
from wyneos_core.tick import Orchestrator


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["licence", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_issue_verify_inspect_revoke_round_trip(tmp_path, capsys):
    keys, lic, rev = tmp_path / "keys", tmp_path / "l.licence", tmp_path / "rev.json"
    code, out, _ = run(capsys, "keygen", "--out", str(keys))
    assert code == 0 and "key id:" in out
    private = (keys / "issuer.key").read_text()
    assert stat.S_IMODE(os.stat(keys / "issuer.key").st_mode) == 0o600
    assert private.strip().splitlines()[1] not in out  # the private key is never printed
    fp = fingerprint(generate_key())
    code, out, err = run(capsys, "issue", "--key", str(keys / "issuer.key"), "--id", "lic-9", "--customer", "acme",
                         "--expires", "+30d", "--seats", "4", "--feature", "gpu", "--fingerprint", fp,
                         "--grace-days", "3", "-o", str(lic))
    assert code == 0 and "lic-9" in err and private.strip().splitlines()[1] not in out + err
    trusted = ["--trusted", str(keys / "issuer.pub")]
    code, out, _ = run(capsys, "verify", str(lic), *trusted, "--customer", "acme", "--fingerprint", fp)
    assert code == 0 and out.startswith("VALID ok")
    code, out, _ = run(capsys, "verify", str(lic), *trusted, "--customer", "globex")
    assert code == 1 and "customer_mismatch" in out
    code, out, _ = run(capsys, "verify", str(lic), *trusted, "--fingerprint", fingerprint(generate_key()))
    assert code == 1 and "machine_mismatch" in out
    code, out, _ = run(capsys, "verify", str(lic), *trusted, "--fingerprint", fp, "--at", "+32d", "--json")
    assert code == 0 and json.loads(out)["in_grace"] is True
    code, out, _ = run(capsys, "verify", str(lic), *trusted, "--fingerprint", fp, "--at", "+40d")
    assert code == 1 and "INVALID expired" in out
    code, out, _ = run(capsys, "verify", str(lic), *trusted, "--fingerprint", fp, "--feature", "analytics")
    assert code == 1 and "entitlement_missing" in out
    code, out, _ = run(capsys, "inspect", str(lic), *trusted, "--json")
    shown = json.loads(out)
    assert shown["payload"]["seats"] == 4 and shown["signature"] == "valid"
    code, out, _ = run(capsys, "revoke", "lic-9", "--key", str(keys / "issuer.key"), "--list", str(rev),
                       "--reason", "refund")
    assert code == 0 and "version 1" in out
    code, out, _ = run(capsys, "verify", str(lic), *trusted, "--fingerprint", fp, "--revocations", str(rev))
    assert code == 1 and "INVALID revoked" in out and "refund" in out


def test_cli_errors_name_the_file_and_never_crash(tmp_path, capsys):
    keys = tmp_path / "keys"
    run(capsys, "keygen", "--out", str(keys))
    code, _, err = run(capsys, "keygen", "--out", str(keys))
    assert code == 2 and "exists already" in err
    code, _, err = run(capsys, "issue", "--key", str(keys / "issuer.pub"), "--id", "x", "--customer", "c",
                       "--expires", "+1d")
    assert code == 2 and "issuer.pub: not a PEM private key" in err
    code, _, err = run(capsys, "issue", "--key", str(keys / "issuer.key"), "--id", "x", "--customer", "c",
                       "--expires", "next tuesday")
    assert code == 2 and "--expires" in err
    garbage = tmp_path / "g.licence"
    garbage.write_bytes(b"\x89PNG garbage")
    code, out, _ = run(capsys, "verify", str(garbage), "--trusted", str(keys))
    assert code == 1 and "malformed" in out
    code, _, err = run(capsys, "inspect", str(garbage))
    assert code == 2 and "not UTF-8" in err
    code, _, err = run(capsys, "verify", str(tmp_path / "missing.licence"), "--trusted", str(keys))
    assert code == 2 and "missing.licence: cannot read" in err


def test_demo_cluster_uses_real_signed_licences_each_failure_enforced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    config["report"]["stdout"] = "none"
    orch = Orchestrator(config, plugins=demo_plugins(config), load_entrypoints=False, store=False)
    with orch:
        for _ in range(5):
            report = orch.tick()
    key = tmp_path / ".wyneos" / "demo-keys" / "issuer.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    got = {n: (r.reason, r.valid, r.in_grace) for n, r in report.licences.items() if r.reason != "ok"}
    assert got == {
        "node-02": ("invalid_signature", False, False),
        "node-04": ("expired", True, True),
        "node-08": ("too_many_nodes", False, False),
        "node-09": ("machine_mismatch", False, False),
        "node-11": ("no_licence", False, False),
        "node-12": ("expired", False, False),
    }
    enforced: dict[str, set[str]] = {}
    for a in report.proposed:
        # the demo enforces through the shipped licence-enforcement ruleset
        if a.origin.startswith("ruleset:licence-enforcement/") and "licence_reason" in a.params:
            enforced.setdefault(a.target, set()).add(a.params["licence_reason"])
    assert enforced == {"node-02": {"invalid_signature"}, "node-04": {"expired"}, "node-08": {"too_many_nodes"},
                        "node-09": {"machine_mismatch"}, "node-11": {"no_licence"}, "node-12": {"expired"}}


def test_issue_refuses_to_overwrite_without_force(tmp_path, capsys):
    run(capsys, "keygen", "--out", str(tmp_path))
    lic = tmp_path / "l.licence"
    issue = ["issue", "--key", str(tmp_path / "issuer.key"), "--customer", "acme", "--expires", "+30d", "-o", str(lic)]
    assert run(capsys, *issue, "--id", "lic-1")[0] == 0
    first = lic.read_text()
    code, _, err = run(capsys, *issue, "--id", "lic-2")
    assert code == 2 and f"{lic}: exists already (use --force to replace it)" in err
    assert lic.read_text() == first  # the licence issued before is untouched
    assert run(capsys, *issue, "--id", "lic-2", "--force")[0] == 0
    assert json.loads(lic.read_text())["payload"]["licence_id"] == "lic-2"


def test_revoke_of_an_unknown_id_says_so_and_inspect_reads_revocation_lists(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(capsys, "keygen", "--out", "keys")
    key = ["--key", "keys/issuer.key"]
    (tmp_path / "licences").mkdir()
    for licence_id in ("lic-acme-1", "lic-acme-2"):
        assert run(capsys, "issue", *key, "--id", licence_id, "--customer", "acme", "--expires", "+30d",
                   "-o", f"licences/{licence_id}.licence")[0] == 0
    rev = "licences/revocations.json"
    code, _, err = run(capsys, "revoke", "lic-acme-3", *key, "--list", rev)
    assert code == 2 and "no licence with id 'lic-acme-3' in licences (2 licence(s) there); did you mean " \
        "'lic-acme-2'? (--force revokes it anyway)" in err
    assert not (tmp_path / rev).exists()  # a refused revocation changes nothing
    code, out, _ = run(capsys, "revoke", "lic-acme-2", *key, "--list", rev, "--reason", "refund")
    assert code == 0 and "version 1" in out
    code, out, _ = run(capsys, "revoke", "lic-gone", *key, "--list", rev, "--force")
    assert code == 0 and "version 2" in out
    code, out, _ = run(capsys, "inspect", rev, "--trusted", "keys/issuer.pub")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("revocation list version 2, issued ") and lines[0].endswith("2 licence(s) revoked")
    assert lines[1].startswith("  lic-acme-2  revoked ") and lines[1].endswith("(refund)")
    assert lines[2].startswith("  lic-gone  revoked ") and lines[-1] == "signature  valid"
    code, out, _ = run(capsys, "inspect", rev, "--json")
    shown = json.loads(out)
    assert shown["kind"] == "revocations" and shown["version"] == 2 and shown["signature"].startswith("not checked")
    assert [e["licence_id"] for e in shown["revoked"]] == ["lic-acme-2", "lic-gone"]
