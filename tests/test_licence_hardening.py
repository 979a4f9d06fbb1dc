"""Hostile documents, seat moves, outages and revocations across restarts, in real ticks and the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import FakeClock
from tests.test_licence_cli import run
from tests.test_licence_engine import SourcePlugin, StaticSource
from tests.test_licence_support import DAY, T0, Issuer, licence_config, orchestrator, reasons
from wyneos_core.builtin.licence import engine_of, ledger_for
from wyneos_core.licensing.revocation import RevocationList
from wyneos_core.licensing.sources import LicenceRecord
from wyneos_core.model import Heartbeat
from wyneos_core.tick import Orchestrator


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def issuer(tmp_path) -> Issuer:
    return Issuer(tmp_path)


def hostile_documents(issuer: Issuer) -> dict[str, tuple[bytes, str]]:
    """name -> (document bytes, what the malformed detail must say)."""
    good = json.dumps(issuer.licence("h"))
    assert '"grace_days": 0' in good and '"customer": "acme"' in good
    return {
        "deep": (b'{"format": "wyneos.licence/1", "payload": ' + b"[" * 100_000 + b"]" * 100_000
                 + b', "signature": "x"}', "nested 100001 levels deep"),
        "bigint": (good.replace('"grace_days": 0', '"grace_days": ' + "9" * 5000).encode(),
                   "payload.grace_days: an integer of 5000 digits"),
        "surrogate": (good.replace('"customer": "acme"', '"customer": "\\ud800"').encode(),
                      "payload.customer: not valid Unicode text"),
        "duplicate": (good.replace('"customer": "acme"', '"customer": "acme", "customer": "other"').encode(),
                      "duplicate key 'customer'"),
        "nan": (good.replace('"grace_days": 0', '"grace_days": NaN').encode(), "NaN is not a JSON number"),
    }


def test_hostile_files_are_malformed_per_node_and_the_scan_goes_on(tmp_path, issuer, clock):
    d = tmp_path / "licences"
    issuer.write(d, "good")
    hostile = hostile_documents(issuer)
    d.mkdir(exist_ok=True)
    for name, (data, _) in hostile.items():
        (d / f"{name}.licence").write_bytes(data)
    nodes = [{"id": "ok", "licence": "good"}] + [{"id": f"n-{name}", "licence": name} for name in hostile]
    orch = orchestrator(licence_config(tmp_path, nodes), clock)
    report = orch.tick()
    assert not report.errors and report.licences["ok"].reason == "ok"
    for name, (_, says) in hostile.items():
        r = report.licences[f"n-{name}"]
        assert (r.reason, r.valid) == ("malformed", False), (name, r.detail)
        assert f"{name}.licence" in r.detail and says in r.detail, r.detail
        assert [a.type for a in report.proposed if a.target == f"n-{name}" and a.origin == "enforcement"] == ["isolate"]
    # the file source keeps refreshing: a licence added later is found
    issuer.write(d, "later")
    orch.registry.register("n-later", now=clock(), licence_ref="later")
    clock.advance(5)
    report = orch.tick()
    assert report.licences["n-later"].reason == "ok" and not report.notes


def test_hostile_documents_from_any_source_affect_only_their_node(tmp_path, issuer, clock):
    hostile = hostile_documents(issuer)
    good = json.dumps(issuer.licence("g")).encode()
    records = {f"n-{name}": LicenceRecord(data, "remote", origin=f"remote:{name}") for name, (data, _) in hostile.items()}
    records["ok"] = LicenceRecord(good, "remote")
    src = StaticSource("remote", records)
    config = licence_config(tmp_path, [{"id": nid} for nid in records], "sources: [remote]\n")
    report = orchestrator(config, clock, (SourcePlugin(src),)).tick()
    assert not report.errors
    assert reasons(report) == {**{f"n-{name}": "malformed" for name in hostile}, "ok": "ok"}


def test_cli_names_file_and_field_of_hostile_documents_without_a_traceback(tmp_path, issuer, capsys):
    for name, (data, says) in hostile_documents(issuer).items():
        path = tmp_path / f"{name}.licence"
        path.write_bytes(data)
        code, out, err = run(capsys, "verify", str(path), "--trusted", str(issuer.public_path))
        assert code == 1 and out.startswith("INVALID malformed") and str(path) in out and says in out, out + err
        code, out, err = run(capsys, "inspect", str(path))
        assert code == 2 and str(path) in err and says in err and "Traceback" not in err, err
        code, out, err = run(capsys, "revoke", "x", "--key", str(issuer.private_path), "--list", str(path))
        assert code == 2 and str(path) in err and "revocation list refused (malformed)" in err, err


def test_cli_inspect_shows_non_string_features_and_refuses_absurd_dates(tmp_path, issuer, capsys):
    doc = issuer.licence("f")
    doc["payload"]["features"] = [1, 2]  # a wrong payload (its signature no longer verifies)
    path = tmp_path / "f.licence"
    path.write_text(json.dumps(doc))
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0 and "payload.features: expected a list of strings" in out
    code, _, err = run(capsys, "issue", "--key", str(issuer.private_path), "--id", "x", "--customer", "c",
                       "--expires", "+99999999d")
    assert code == 2 and "--expires" in err and "9999-12-31" in err


def test_cli_verify_with_a_revocation_list_that_does_not_verify_is_a_usage_error(tmp_path, issuer, capsys):
    lic = issuer.write(tmp_path / "licences", "lic-v", issued=time.time() - DAY, expires=time.time() + DAY)
    rev = tmp_path / "rev.json"
    RevocationList().revoke("other", now=time.time()).save(rev, issuer.key)
    trusted = ["--trusted", str(issuer.public_path)]
    code, out, _ = run(capsys, "verify", str(lic), *trusted, "--revocations", str(rev))
    assert code == 0 and out.startswith("VALID ok")
    forged = json.loads(rev.read_text())
    forged["payload"]["entries"] = []
    rev.write_text(json.dumps(forged))
    code, out, err = run(capsys, "verify", str(lic), *trusted, "--revocations", str(rev))
    assert code == 2 and not out and str(rev) in err and "invalid_signature" in err and "signature" in err
    other = Issuer(tmp_path / "other")
    RevocationList().revoke("x", now=time.time()).save(rev, other.key)
    code, _, err = run(capsys, "verify", str(lic), *trusted, "--revocations", str(rev))
    assert code == 2 and str(rev) in err and "unknown_key" in err and "payload.key_id" in err
    code, _, err = run(capsys, "verify", str(lic), *trusted, "--revocations", str(tmp_path / "none.json"))
    assert code == 2 and "none.json" in err


def test_a_node_moving_onto_a_full_licence_loses_the_seat(tmp_path, issuer, clock):
    d = tmp_path / "licences"
    issuer.write(d, "lic-a", seats=1)
    issuer.write(d, "lic-b", seats=1)
    orch = orchestrator(licence_config(tmp_path, [{"id": "n1", "licence": "lic-a"},
                                                  {"id": "n2", "licence": "lic-b"}]), clock)

    def tick(**refs: str) -> dict[str, tuple[str, str]]:
        orch.intake.put_many(Heartbeat(n, clock(), 0.3, licence_ref=refs.get(n)) for n in ("n1", "n2"))
        report = orch.tick()
        clock.advance(5)
        return {k: (v.reason, v.licence_id) for k, v in report.licences.items()}

    assert tick() == {"n1": ("ok", "lic-a"), "n2": ("ok", "lic-b")}
    moved = {"n1": ("ok", "lic-a"), "n2": ("too_many_nodes", "lic-a")}
    assert tick(n2="lic-a") == moved
    assert tick() == moved and tick() == moved
    assert not engine_of(orch).entitled("n2", "anything") and not engine_of(orch).entitled("n2", "core")
    assert tick(n2="lic-b") == {"n1": ("ok", "lic-a"), "n2": ("ok", "lic-b")}


def test_entitled_is_false_for_a_seat_loser(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "pro", seats=1, tier="pro")
    config = licence_config(tmp_path, [{"id": "a", "licence": "pro"}, {"id": "b", "licence": "pro"}],
                            "tiers: {pro: [analytics]}\n")
    orch = orchestrator(config, clock)
    assert reasons(orch.tick()) == {"a": "ok", "b": "too_many_nodes"}
    engine = engine_of(orch)
    assert engine.entitled("a", "analytics") and not engine.entitled("b", "analytics")
    orch.remove_node("a")  # the seat is free again: b takes it
    clock.advance(5)
    assert reasons(orch.tick()) == {"b": "ok"} and engine.entitled("b", "analytics")
    assert "a" not in engine.cached()  # departed nodes are forgotten


def test_fail_open_outage_does_not_keep_revoked_or_expired_licences_valid(tmp_path, issuer, clock):
    docs = {"a": issuer.licence("lic-a"), "e": issuer.licence("lic-e", expires=T0 + 100, grace_days=0),
            "g": issuer.licence("lic-g")}
    src = StaticSource("remote", {n: LicenceRecord(json.dumps(d).encode(), "remote") for n, d in docs.items()})
    rev = tmp_path / "rev.json"
    config = licence_config(tmp_path, [{"id": n} for n in docs], "sources: [remote]\ncache_ttl: 0\n"
                            "revocations: rev.json\noutage: {policy: fail-open, grace: 3600}\n")
    orch = orchestrator(config, clock, (SourcePlugin(src),))
    assert reasons(orch.tick()) == {"a": "ok", "e": "ok", "g": "ok"}
    src.down = True
    RevocationList().revoke("lic-a", now=clock(), reason="fraud").save(rev, issuer.key)
    clock.advance(200)  # lic-e is past its expiry now
    report = orch.tick()
    got = {n: (r.reason, r.valid, r.in_grace) for n, r in report.licences.items()}
    assert got == {"a": ("revoked", False, False), "e": ("expired", False, False),
                   "g": ("source_unavailable", True, True)}
    assert "sources could not answer" in report.licences["a"].detail and "fraud" in report.licences["a"].detail


def _restart_config(root: Path, nodes: list[dict], state: bool) -> Orchestrator:
    config = licence_config(root, nodes, "revocations: rev.json\n")
    clock = FakeClock(T0)
    if state:
        config["state"]["path"] = str(root / "state" / "state.db")
        return Orchestrator(config, clock=clock, load_entrypoints=False)
    return orchestrator(config, clock)


def test_revocations_survive_restarts_in_the_default_ledger(tmp_path, issuer):
    issuer.write(tmp_path / "licences", "lic-a")
    rev, old = tmp_path / "rev.json", tmp_path / "old.json"
    v1 = RevocationList().revoke("lic-x", now=T0)
    v1.save(old, issuer.key)
    v1.revoke("lic-a", now=T0).save(rev, issuer.key)
    nodes = [{"id": "n1", "licence": "lic-a"}]
    orch = _restart_config(tmp_path, nodes, state=True)
    report = orch.tick()
    assert reasons(report) == {"n1": "revoked"}
    orch.stop()
    ledger = ledger_for(tmp_path / "state" / "state.db")  # the default: next to the state file, its own
    assert ledger.name == "state.licence-ledger.json"
    assert json.loads(ledger.read_text())["revocation_version"] == 2
    assert oct(os.stat(ledger).st_mode & 0o777) == "0o600"
    # the list file deleted: the revocations kept in the ledger stay in force, and an error says so
    rev.unlink()
    orch = _restart_config(tmp_path, nodes, state=True)
    report = orch.tick()
    assert reasons(report) == {"n1": "revoked"}
    assert any("rev.json is missing" in e.error and "stay in force" in e.error for e in report.errors)
    orch.stop()
    # an older signed list put in its place: refused, revocations stay, reported every tick
    os.replace(old, rev)
    orch = _restart_config(tmp_path, nodes, state=True)
    for _ in range(2):
        report = orch.tick()
        assert reasons(report) == {"n1": "revoked"}
        assert any("version 1, older than version 2" in e.error for e in report.errors)
    orch.stop()
    # the current list back: no error
    v1.revoke("lic-a", now=T0).save(rev, issuer.key)
    orch = _restart_config(tmp_path, nodes, state=True)
    report = orch.tick()
    assert reasons(report) == {"n1": "revoked"} and not report.errors
    orch.stop()


def test_one_revoke_action_per_list_version_however_many_licences(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "lic-a")
    rl = RevocationList()
    for i in range(300):
        rl = rl.revoke(f"gone-{i:03d}", now=T0)
    rl.save(tmp_path / "rev.json", issuer.key)
    nodes = [{"id": f"n{i}", "licence": "lic-a"} for i in range(50)]
    orch = orchestrator(licence_config(tmp_path, nodes, "revocations: rev.json\n"), clock)
    report = orch.tick()
    revokes = [a for a in report.actions if a.type == "revoke"]
    assert len(revokes) == 1 and revokes[0].target == "*"
    params = revokes[0].params
    assert params["revocation_list_version"] == 300 and len(params["new_revocations"]) == 300
    assert params["licence_ids"][0] == "gone-000" and len(params["licence_ids"]) == 300
    assert len([d for d in report.deliveries if d.action_id == revokes[0].id]) == 50
    clock.advance(5)
    report = orch.tick()  # in force: not carried again
    assert not [a for a in report.actions if a.type == "revoke"] and not report.deliveries
    rl.revoke("lic-a", now=T0).save(tmp_path / "rev.json", issuer.key)
    clock.advance(5)
    report = orch.tick()
    revokes = [a for a in report.actions if a.type == "revoke"]
    assert [a.params["new_revocations"] for a in revokes] == [["lic-a"]]
    assert len(revokes[0].params["licence_ids"]) == 301


def test_a_forged_document_is_revoked_by_its_hash_never_by_the_id_it_claims(tmp_path, issuer, clock):
    d = tmp_path / "licences"
    issuer.write(d, "lic-real")
    forged = issuer.licence("lic-real", seats=999)  # claims the id of a real licence
    forged["payload"]["customer"] = "acme"
    forged["payload"]["tier"] = "gold"  # edited after signing
    (d / "forged.licence").write_text(json.dumps(forged))
    data = (d / "forged.licence").read_bytes()
    orch = orchestrator(licence_config(tmp_path, [{"id": "real", "licence": "lic-real"},
                                                  {"id": "thief", "licence": "forged"}]), clock)
    report = orch.tick()
    thief = report.licences["thief"]
    import hashlib
    assert thief.reason == "invalid_signature" and thief.licence_id == "sha256:" + hashlib.sha256(data).hexdigest()
    revokes = [a for a in report.proposed if a.type == "revoke"]
    assert revokes and all(a.params.get("licence_id") != "lic-real" for a in revokes)
    assert {a.params["licence_id"] for a in revokes if a.origin == "enforcement"} == {thief.licence_id}
    clock.advance(5)
    assert orch.tick().licences["real"].reason == "ok"  # the real licence is untouched


def test_two_state_files_in_one_directory_keep_their_own_revocations(tmp_path, issuer):
    """The ledger used to be shared by every state file of a directory: a config without
    revocations showed 'revoked' from another config's list."""
    issuer.write(tmp_path / "licences", "lic-a")
    RevocationList().revoke("lic-a", now=T0).save(tmp_path / "rev.json", issuer.key)
    nodes = [{"id": "n1", "licence": "lic-a"}]
    with_list = licence_config(tmp_path, nodes, "revocations: rev.json\n")
    with_list["state"]["path"] = str(tmp_path / "shared" / "one.db")
    orch = Orchestrator(with_list, clock=FakeClock(T0), load_entrypoints=False)
    assert reasons(orch.tick()) == {"n1": "revoked"}
    orch.stop()
    without = licence_config(tmp_path, nodes)
    without["state"]["path"] = str(tmp_path / "shared" / "two.db")
    orch = Orchestrator(without, clock=FakeClock(T0), load_entrypoints=False)
    assert reasons(orch.tick()) == {"n1": "ok"}
    orch.stop()
    assert sorted(p.name for p in (tmp_path / "shared").glob("*.json")) == [
        "one.licence-ledger.json", "two.licence-ledger.json"]
