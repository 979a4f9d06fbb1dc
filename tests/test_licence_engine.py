"""The licence step in real ticks: every reason code, seats, caching, revocation, replay, outages."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import FakeClock
from tests.test_licence_support import DAY, T0, Issuer, beat_all, licence_config, orchestrator, reasons
from wyneos_core import hookimpl
from wyneos_core.builtin.enforcement import LICENCE_ACTIONS
from wyneos_core.builtin.licence import engine_of
from wyneos_core.config import ConfigError
from wyneos_core.licensing.entitlements import entitled, gate_feature_action, licence_entitled, require_feature
from wyneos_core.licensing.keys import fingerprint, generate_key
from wyneos_core.licensing.reasons import REASONS
from wyneos_core.licensing.revocation import RevocationList
from wyneos_core.licensing.seats import allocate_seats
from wyneos_core.licensing.sources import LicenceRecord, SourceUnavailable
from wyneos_core.model import Heartbeat, Node, NodeStatus
from wyneos_core.pyrules import evaluate


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def issuer(tmp_path) -> Issuer:
    return Issuer(tmp_path)


class StaticSource:
    """A test licence source: fixed records by node id, or an outage."""

    def __init__(self, name: str, records: dict[str, LicenceRecord | None], down: bool = False) -> None:
        self.name = name
        self.records = records
        self.down = down
        self.asked = 0

    def lookup(self, node, now):  # noqa: ANN001
        self.asked += 1
        if self.down:
            raise SourceUnavailable("connection refused")
        return self.records.get(node.id)


class SourcePlugin:
    def __init__(self, *sources) -> None:  # noqa: ANN002
        self.sources = list(sources)
        self.__wyneos_name__ = "test-sources"

    @hookimpl
    def wyneos_licence_sources(self, config):  # noqa: ANN001
        return self.sources


def test_every_reason_code_in_one_cluster_each_enforced(tmp_path, issuer, clock):
    d = tmp_path / "licences"
    node_fp = fingerprint(generate_key())
    issuer.write(d, "ok")
    issuer.write(d, "grace", expires=T0 - DAY, issued=T0 - 30 * DAY, grace_days=7)
    issuer.write(d, "old", expires=T0 - DAY, issued=T0 - 30 * DAY)
    issuer.write(d, "future", issued=T0, not_before=T0 + DAY, expires=T0 + 9 * DAY)
    issuer.write(d, "other-customer", customer="globex")
    issuer.write(d, "other-product", product="something-else")
    issuer.write(d, "paired", fingerprints=[node_fp])
    issuer.write(d, "seats", seats=1)
    issuer.write(d, "basic", features=["core"])
    forged = json.loads(issuer.write(d, "forged").read_text())
    forged["payload"]["seats"] = 99
    (d / "forged.licence").write_text(json.dumps(forged))
    Issuer(tmp_path / "stranger").write(d, "stranger")
    (d / "garbage.licence").write_bytes(b"\x00\x01 not a licence")
    text = (d / "ok.licence").read_text()
    (d / "truncated.licence").write_text(text[: len(text) // 2])
    suspended_doc = json.dumps(issuer.licence("susp")).encode()
    nodes = [
        {"id": "n-ok", "licence": "ok"}, {"id": "n-none"}, {"id": "n-grace", "licence": "grace"},
        {"id": "n-old", "licence": "old"}, {"id": "n-future", "licence": "future"},
        {"id": "n-cust", "licence": "other-customer"}, {"id": "n-prod", "licence": "other-product"},
        {"id": "n-paired", "licence": "paired", "fingerprint": node_fp},
        {"id": "n-moved", "licence": "paired", "fingerprint": fingerprint(generate_key())},
        {"id": "n-seat1", "licence": "seats"}, {"id": "n-seat2", "licence": "seats"},
        {"id": "n-feat", "licence": "basic", "metadata": {"features": ["core", "gpu"]}},
        {"id": "n-forged", "licence": "forged"}, {"id": "n-stranger", "licence": "stranger"},
        {"id": "n-garbage", "licence": "garbage"}, {"id": "n-trunc", "licence": "truncated"},
        {"id": "n-susp", "licence": "susp"},
    ]
    config = licence_config(tmp_path, nodes, "sources: [file, extra]\n")
    extra = StaticSource("extra", {"n-susp": LicenceRecord(suspended_doc, "extra", "suspended")})
    orch = orchestrator(config, clock, (SourcePlugin(extra),))
    report = orch.tick()
    got = reasons(report)
    assert got == {
        "n-ok": "ok", "n-none": "no_licence", "n-grace": "expired", "n-old": "expired",
        "n-future": "not_yet_valid", "n-cust": "customer_mismatch", "n-prod": "product_mismatch",
        "n-paired": "ok", "n-moved": "machine_mismatch", "n-seat1": "ok", "n-seat2": "too_many_nodes",
        "n-feat": "entitlement_missing", "n-forged": "invalid_signature", "n-stranger": "unknown_key",
        "n-garbage": "malformed", "n-trunc": "malformed", "n-susp": "suspended",
    }
    lic = report.licences
    assert lic["n-grace"].valid and lic["n-grace"].in_grace
    assert not lic["n-old"].valid and not lic["n-old"].in_grace
    assert lic["n-ok"].valid and not lic["n-ok"].in_grace
    assert lic["n-feat"].features == ("gpu",)
    assert set(got.values()) <= set(REASONS)
    # each failure is enforced with its own reason
    by_target: dict[str, set[tuple[str, str]]] = {}
    for a in report.proposed:
        by_target.setdefault(a.target, set()).add((a.type, a.params.get("licence_reason", "")))
    for node_id, reason in got.items():
        if reason == "ok":
            assert node_id not in by_target
            continue
        if lic[node_id].in_grace:
            assert ("degrade", reason) in by_target[node_id]
            continue
        for kind in LICENCE_ACTIONS[reason]:
            if kind.value != "revoke":
                assert (kind.value, reason) in by_target[node_id], (node_id, reason, by_target.get(node_id))
    gate = [a for a in report.proposed if a.type == "gate_feature"]
    assert [(a.target, a.params["features"]) for a in gate] == [("n-feat", ["gpu"])]
    assert not report.errors


def test_seat_losers_are_deterministic_and_offline_nodes_free_seats(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "pool", seats=3)
    ids = [f"s{i:02d}" for i in range(8)]
    orders = []
    for seed in range(4):
        shuffled = ids[:]
        random.Random(seed).shuffle(shuffled)
        config = licence_config(tmp_path, [{"id": i, "licence": "pool"} for i in shuffled])
        report = orchestrator(config, clock).tick()
        orders.append(sorted(n for n, r in report.licences.items() if r.reason == "too_many_nodes"))
    assert all(o == ["s03", "s04", "s05", "s06", "s07"] for o in orders)
    # a node registered later never takes a seat from one that holds it
    early = Node("z-early", registered_at=1.0)
    late = Node("a-late", registered_at=2.0)
    assert list(allocate_seats([(("L", 1), late), (("L", 1), early)])) == ["a-late"]

    config = licence_config(tmp_path, [{"id": i, "licence": "pool"} for i in ids])
    orch = orchestrator(config, clock)
    orch.intake.put_many(Heartbeat(i, clock(), 0.2) for i in ids if i != "s00")
    orch.tick()
    clock.advance(60)  # s00 never reported: offline now, its seat goes to s03
    orch.intake.put_many(Heartbeat(i, clock(), 0.2) for i in ids if i != "s00")
    report = orch.tick()
    assert orch.registry["s00"].status is NodeStatus.OFFLINE
    assert report.licences["s03"].valid
    assert sorted(n for n, r in report.licences.items() if r.reason == "too_many_nodes") == \
        ["s04", "s05", "s06", "s07"]


def test_unchanged_licences_are_not_verified_again_until_ttl(tmp_path, issuer, clock):
    for i in range(3):
        issuer.write(tmp_path / "licences", f"l{i}")
    nodes = [{"id": f"c{i:03d}", "licence": f"l{i % 3}"} for i in range(60)]
    config = licence_config(tmp_path, nodes, "cache_ttl: 100\nrescan: 1000\n")
    orch = orchestrator(config, clock)
    orch.tick()
    engine = engine_of(orch)
    assert engine.stats["verified"] == 3  # one verification per document, not per node
    clock.advance(10)
    report = orch.tick()
    assert engine.stats == {"cached": 60, "looked_up": 0, "reused": 0, "verified": 0, "unavailable": 0}
    assert all(r.valid for r in report.licences.values())
    kept = dict(report.licences)
    clock.advance(100)  # TTL over: sources asked again; they hand back the same documents, so the
    report = orch.tick()  # results made from them are kept as they are, not checked again
    assert engine.stats["looked_up"] == 60 and engine.stats["reused"] == 60 and engine.stats["verified"] == 0
    assert all(report.licences[n] is kept[n] for n in kept)
    # a changed file is noticed at the next rescan and verified once; only its nodes are checked again
    issuer.write(tmp_path / "licences", "l1", expires=T0 - 1, issued=T0 - DAY)
    clock.advance(1001)
    report = orch.tick()
    assert engine.stats["verified"] == 1 and engine.stats["looked_up"] == 60 and engine.stats["reused"] == 40
    assert {r.reason for n, r in report.licences.items() if orch.registry[n].licence_ref == "l1"} == {"expired"}
    assert {r.reason for n, r in report.licences.items() if orch.registry[n].licence_ref != "l1"} == {"ok"}


def test_cached_result_turns_expired_at_expiry_not_after_ttl(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "short", issued=T0 - DAY, expires=T0 + 30)
    orch = orchestrator(licence_config(tmp_path, [{"id": "a", "licence": "short"}], "cache_ttl: 3600\n"), clock)
    assert orch.tick().licences["a"].reason == "ok"
    clock.advance(31)
    assert orch.tick().licences["a"].reason == "expired"


def test_revocation_travels_as_action_to_every_reachable_node_and_applies(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "keep")
    issuer.write(tmp_path / "licences", "bad")
    nodes = [{"id": f"r{i}", "licence": "keep"} for i in range(5)] + [{"id": "r-bad", "licence": "bad"}]
    rev = tmp_path / "revocations.json"
    config = licence_config(tmp_path, nodes, "revocations: revocations.json\ncache_ttl: 3600\n")
    orch = orchestrator(config, clock)
    beat_all(orch, clock)
    assert orch.tick().licences["r-bad"].valid
    RevocationList().revoke("bad", now=clock(), reason="chargeback").save(rev, issuer.key)
    clock.advance(5)
    beat_all(orch, clock)
    report = orch.tick()
    assert report.licences["r-bad"].reason == "revoked" and "chargeback" in report.licences["r-bad"].detail
    assert report.licences["r0"].valid
    revoke = [a for a in report.actions if a.type == "revoke" and a.params.get("new_revocations") == ["bad"]]
    assert len(revoke) == 1 and revoke[0].target == "*" and revoke[0].params["licence_ids"] == ["bad"]
    delivered = {d.target for d in report.deliveries if d.action_id == revoke[0].id and d.delivered}
    assert delivered >= {f"r{i}" for i in range(5)}
    assert any("revocation list version 1 accepted" in n for n in report.notes)
    # a replayed older list (version 1 after version 2) is refused: the licence stays revoked
    old_text = rev.read_text()
    RevocationList.load(rev, engine_of(orch).keyring).revoke("other", now=clock()).save(rev, issuer.key)
    clock.advance(5)
    orch.tick()
    rev.write_text(old_text)
    clock.advance(5)
    report = orch.tick()
    assert any("older than version 2" in n for n in report.notes)
    assert report.licences["r-bad"].reason == "revoked"
    # a forged list is refused with a note and an error, nothing crashes, the revocations stay
    doc = json.loads(old_text)
    doc["payload"]["version"] = 99
    rev.write_text(json.dumps(doc))
    clock.advance(5)
    report = orch.tick()
    assert any("refused (invalid_signature)" in n for n in report.notes)
    assert [e.kind for e in report.errors] == ["revocation_list"] and report.licences["r-bad"].reason == "revoked"


def test_old_licence_replayed_after_renewal_is_superseded_even_after_restart(tmp_path, issuer, clock):
    d = tmp_path / "licences"
    old_text = issuer.write(d, "lic-r", issued=T0 - 300 * DAY, expires=T0 + 10 * DAY).read_text()
    config = licence_config(tmp_path, [{"id": "a", "licence": "lic-r"}], "ledger: ledger.json\ncache_ttl: 0\n")
    orch = orchestrator(config, clock)
    assert orch.tick().licences["a"].reason == "ok"
    issuer.write(d, "lic-r", issued=T0 - DAY, expires=T0 + 365 * DAY)  # the renewal
    clock.advance(10)
    assert orch.tick().licences["a"].reason == "ok"
    (d / "lic-r.licence").write_text(old_text)  # the old one put back
    clock.advance(10)
    report = orch.tick()
    assert report.licences["a"].reason == "superseded" and "replayed" in report.licences["a"].detail
    orch.stop()
    again = orchestrator(licence_config(tmp_path, [{"id": "a", "licence": "lic-r"}], "ledger: ledger.json\n"), clock)
    assert again.tick().licences["a"].reason == "superseded"


def test_clock_rollback_gets_its_own_reason(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "l")
    orch = orchestrator(licence_config(tmp_path, [{"id": "a", "licence": "l"}, {"id": "b", "licence": "l"}],
                                       "rollback_hold: 600\n"), clock)
    beat_all(orch, clock)
    assert reasons(orch.tick()) == {"a": "ok", "b": "ok"}
    clock.advance(10)
    orch.intake.put_many([Heartbeat("a", clock() - 3 * DAY, 0.2), Heartbeat("b", clock(), 0.2)])
    report = orch.tick()
    assert reasons(report) == {"a": "clock_rollback", "b": "ok"}
    assert [a.type for a in report.proposed if a.target == "a" and a.origin == "enforcement"] == ["quarantine"]
    clock.advance(601)
    assert orch.tick().licences["a"].reason == "ok"


def test_outage_fail_open_keeps_last_good_result_for_the_grace_then_fails(tmp_path, issuer, clock):
    doc = json.dumps(issuer.licence("remote")).encode()
    src = StaticSource("remote", {"a": LicenceRecord(doc, "remote")})
    config = licence_config(tmp_path, [{"id": "a"}, {"id": "b"}],
                            "sources: [remote]\ncache_ttl: 0\noutage: {policy: fail-open, grace: 100}\n")
    orch = orchestrator(config, clock, (SourcePlugin(src),))
    assert reasons(orch.tick()) == {"a": "ok", "b": "no_licence"}
    src.down = True
    clock.advance(50)
    report = orch.tick()
    a, b = report.licences["a"], report.licences["b"]
    assert a.valid and a.in_grace and a.reason == "source_unavailable" and "fail-open" in a.detail
    assert not b.valid and b.reason == "source_unavailable" and "no earlier good result" in b.detail
    assert any("outage policy fail-open" in n for n in report.notes)
    assert [x.type for x in report.proposed if x.target == "a" and x.origin == "enforcement"] == ["degrade"]
    clock.advance(60)
    report = orch.tick()
    assert not report.licences["a"].valid and "grace of 100s is over" in report.licences["a"].detail
    src.down = False
    clock.advance(1)
    assert orch.tick().licences["a"].reason == "ok"


def test_outage_fail_closed_and_fallback_to_next_source(tmp_path, issuer, clock):
    doc = json.dumps(issuer.licence("l")).encode()
    down = StaticSource("down", {"a": LicenceRecord(doc, "down")}, down=False)
    backup = StaticSource("backup", {"b": LicenceRecord(doc, "backup")})
    config = licence_config(tmp_path, [{"id": "a"}, {"id": "b"}],
                            "sources: [down, backup]\ncache_ttl: 0\noutage: {policy: fail-closed}\n")
    orch = orchestrator(config, clock, (SourcePlugin(down, backup),))
    report = orch.tick()
    assert reasons(report) == {"a": "ok", "b": "ok"}
    assert report.licences["a"].source == "down" and report.licences["b"].source == "backup"
    down.down = True
    clock.advance(5)
    report = orch.tick()
    # b's licence is found in the next source; a's only source is down and the policy is fail-closed
    assert report.licences["b"].valid
    assert not report.licences["a"].valid and report.licences["a"].reason == "source_unavailable"
    assert "fail-closed" in report.licences["a"].detail


def test_a_broken_source_never_takes_the_tick_down(tmp_path, issuer, clock):
    class Broken:
        name = "broken"

        def lookup(self, node, now):  # noqa: ANN001
            raise ZeroDivisionError("bug in a plugin")

    class WrongType:
        name = "wrong"

        def lookup(self, node, now):  # noqa: ANN001
            return "not a record"

    issuer.write(tmp_path / "licences", "l")
    config = licence_config(tmp_path, [{"id": "a", "licence": "l"}, {"id": "b"}],
                            "sources: [broken, wrong, file]\noutage: {policy: fail-closed}\n")
    orch = orchestrator(config, clock, (SourcePlugin(Broken(), WrongType()),))
    report = orch.tick()
    # a's licence is found by a later source; b has none anywhere, and two sources failed to answer
    assert report.licences["a"].reason == "ok" and report.licences["a"].source == "file"
    b = report.licences["b"]
    assert b.reason == "source_unavailable" and "bug in a plugin" in b.detail and "not a LicenceRecord" in b.detail


def test_a_cold_tick_in_chunks_gives_the_results_of_one_pass_and_asks_a_failed_source_once(
        tmp_path, issuer, clock, monkeypatch):
    """A cold tick looks nodes up chunk by chunk (a chunk's node views and answers at a
    time): with chunks of 3 nodes the results are those of one pass, and a source whose
    call fails is asked once per tick, its failure given to the nodes of every chunk."""
    from wyneos_core.licensing import engine as licence_engine

    class Broken:
        name = "broken"

        def __init__(self) -> None:
            self.calls = 0

        def lookup(self, node, now):  # noqa: ANN001
            return self.lookup_many([node], now)

        def lookup_many(self, nodes, now):  # noqa: ANN001
            self.calls += 1
            raise ZeroDivisionError("bug in a plugin")

    doc = json.dumps(issuer.licence("l")).encode()
    ids = [f"n{i:02d}" for i in range(11)]

    def run(root, chunk):  # noqa: ANN001, ANN202
        monkeypatch.setattr(licence_engine, "_CHUNK", chunk)
        (root / "keys").mkdir(parents=True)
        (root / "keys" / "issuer.pub").write_bytes(issuer.public_path.read_bytes())
        issuer.write(root / "licences", "l")
        broken = Broken()
        down = StaticSource("down", {i: LicenceRecord(doc, "down") for i in ids[:4]}, down=True)
        backup = StaticSource("backup", {i: LicenceRecord(doc, "backup") for i in ids[6:]})
        config = licence_config(root, [{"id": i, "licence": "l"} if i in ids[8:] else {"id": i} for i in ids],
                                "sources: [broken, down, backup, file]\ncache_ttl: 0\n"
                                "outage: {policy: fail-closed}\n")
        orch = orchestrator(config, FakeClock(T0), (SourcePlugin(broken, down, backup),))
        reports = [orch.tick(), orch.tick()]
        return broken.calls, [{k: (r.valid, r.reason, r.detail, r.source) for k, r in rep.licences.items()}
                              for rep in reports], [rep.notes for rep in reports]

    calls, results, notes = run(tmp_path / "chunked", 3)
    assert calls == 2  # once per tick, not once per chunk
    assert (calls, results, notes) == (2, *run(tmp_path / "whole", 65536)[1:])
    got = results[0]
    assert {k for k, r in got.items() if r[1] == "ok"} == set(ids[6:])
    assert all("broken: ZeroDivisionError: bug in a plugin" in r[2] for k, r in got.items() if not r[0])
    assert sum("licence source 'broken' unavailable" in n for n in notes[0]) == 1


def test_a_source_no_plugin_offers_is_refused_before_the_first_tick(tmp_path, issuer, clock):
    config = licence_config(tmp_path, [{"id": "a", "licence": "l"}], "sources: [file, htp]\n")
    with pytest.raises(ConfigError) as info:
        orchestrator(config, clock)
    error = info.value
    assert error.file == str(tmp_path / "wyneos.yaml") and error.field == "licence.sources[1]" and error.line == 6
    # the builtin file source is named among those available (it used to say "available: none")
    assert "no loaded plugin offers a licence source named 'htp' (available: file)" in error.reason


def test_entitlement_api_rule_helper_and_gate_action(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "pro", tier="pro", features=["export"])
    issuer.write(tmp_path / "licences", "basic", tier="basic")
    nodes = [{"id": "p", "licence": "pro", "metadata": {"features": ["analytics"]}},
             {"id": "b", "licence": "basic"}]
    config = licence_config(tmp_path, nodes, "tiers: {pro: [analytics, core], basic: [core]}\n")
    orch = orchestrator(config, clock)
    report = orch.tick()
    p, b = report.licences["p"], report.licences["b"]
    assert p.features == ("analytics", "core", "export") and b.features == ("core",)
    assert entitled(p, "analytics") and entitled(b, "core") and not entitled(b, "analytics")
    assert not entitled(None, "core")
    orch.registry["b"].metadata = {**orch.registry["b"].metadata, "features": ["analytics"]}
    rule = require_feature("analytics")
    report = orch.tick()
    assert report.licences["b"].reason == "entitlement_missing"
    ctx = type("Ctx", (), {"report": report, "orchestrator": orch})()
    results = {r.node_id: r.passed for r in evaluate([rule], orch.registry.nodes(), ctx)}
    assert results == {"p": True, "b": False}
    # the exact answer knows what b's licence grants although it is refused for analytics
    engine = engine_of(orch)
    assert engine.entitled("b", "core") and not engine.entitled("b", "analytics") and not engine.entitled("b", "x")
    assert licence_entitled(ctx, "p", "export") and not licence_entitled(ctx, "nobody", "core")
    assert not entitled(report.licences["b"], "core")  # from the result alone: the conservative answer
    action = gate_feature_action("b", ["analytics", "analytics"], "tier basic")
    assert action.type == "gate_feature" and action.params == {"features": ["analytics"]}
    assert [a.params["features"] for a in report.proposed if a.type == "gate_feature"] == [["analytics"]]


def test_bad_trusted_key_file_is_refused_before_the_first_tick(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "l")
    (tmp_path / "keys" / "broken.pub").write_text("-----BEGIN PUBLIC KEY-----\nnope\n")
    with pytest.raises(ConfigError) as info:
        orchestrator(licence_config(tmp_path, [{"id": "a", "licence": "l"}]), clock)
    assert info.value.field == "licence.trusted_keys[0]" and "broken.pub" in info.value.reason


def test_licence_typos_are_refused_together_with_file_line_and_field(tmp_path, issuer, clock):
    """A typo in a key file name or the licence directory used to isolate every node."""
    issuer.write(tmp_path / "licences", "l")
    config = licence_config(tmp_path, [{"id": "a", "licence": "l"}],
                            "trusted_keys: [keys/isuer.pub]\ndirectory: licencs\n")
    with pytest.raises(ConfigError) as info:
        orchestrator(config, clock)
    errors = {e.field: e for e in info.value.errors}
    assert set(errors) == {"licence.trusted_keys[0]", "licence.directory"}
    assert "no such key file or directory" in errors["licence.trusted_keys[0]"].reason
    assert errors["licence.directory"].reason.endswith("did you mean 'licences'?")
    assert all(e.line == 6 and e.column for e in errors.values())


def test_corrupt_ledger_is_reported_left_untouched_and_checks_go_on(tmp_path, issuer, clock):
    issuer.write(tmp_path / "licences", "l")
    (tmp_path / "ledger.json").write_text("{not json")
    orch = orchestrator(licence_config(tmp_path, [{"id": "a", "licence": "l"}], "ledger: ledger.json\n"), clock)
    report = orch.tick()
    assert any("licence.ledger" in e.error and "not a licence ledger" in e.error for e in report.errors)
    assert report.licences["a"].reason == "ok"
    assert (tmp_path / "ledger.json").read_text() == "{not json"
