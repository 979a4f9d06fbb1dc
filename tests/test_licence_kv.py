"""The wyneos-licence-kv registry and source on real SQLite files, with concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.conftest import FakeClock
from tests.test_licence_support import T0, Issuer, licence_config, orchestrator, reasons
from wyneos_core.config import ConfigError
from wyneos_core.licensing.sources import SourceUnavailable
from wyneos_core.model import Node

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "wyneos-licence-kv"


@pytest.fixture
def kv(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    import wyneos_licence_kv

    return wyneos_licence_kv


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def _writer(db: str, plugin: str, worker: int, docs: list[str], rounds: int) -> None:
    sys.path.insert(0, plugin)
    from wyneos_licence_kv.registry import LicenceRegistry

    reg = LicenceRegistry(db)
    for i in range(rounds):
        reg.put(docs[i % len(docs)])
        reg.assign(f"w{worker}-n{i}", json.loads(docs[i % len(docs)])["payload"]["licence_id"])
    reg.close()


def test_schema_is_as_documented(kv, tmp_path):
    reg = kv.LicenceRegistry(tmp_path / "r.db")
    tables = {r[0]: r[1] for r in reg.conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")}
    assert set(tables) == {"meta", "licences", "assignments"}
    cols = [r[1] for r in reg.conn.execute("PRAGMA table_info(licences)")]
    assert cols == ["licence_id", "document", "status", "revision", "updated_at"]
    assert [r[1] for r in reg.conn.execute("PRAGMA table_info(assignments)")] == ["node_id", "licence_id",
                                                                                   "updated_at"]
    assert reg.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):  # status is checked by the schema itself
        reg.conn.execute("INSERT INTO licences VALUES ('x', '{}', 'bogus', 1, 0)")
    with pytest.raises(ValueError, match="not a licence document: format"):
        reg.put("{}")


def test_concurrent_writers_in_processes_lose_nothing(kv, tmp_path):
    issuer = Issuer(tmp_path)
    docs = [json.dumps(issuer.licence(f"L{i}")) for i in range(5)]
    db = str(tmp_path / "r.db")
    kv.LicenceRegistry(db).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, str(PLUGIN), w, docs, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    reg = kv.LicenceRegistry(db)
    assert reg.generation() == 4 * 40 * 2  # every write counted exactly once
    assert reg.conn.execute("SELECT COUNT(*) FROM assignments").fetchone()[0] == 160
    assert sum(rev for _, _, rev in reg.licences()) == 160  # every put bumped its licence's revision once
    assert reg.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_compare_and_set_refuses_a_stale_revision(kv, tmp_path):
    issuer = Issuer(tmp_path)
    reg = kv.LicenceRegistry(tmp_path / "r.db")
    assert reg.put(issuer.licence("L1"), expect_revision=0) == 1
    other = kv.LicenceRegistry(tmp_path / "r.db")
    assert other.put(issuer.licence("L1", seats=5), expect_revision=1) == 2
    with pytest.raises(kv.registry.ConflictError, match="revision is 2, expected 1"):
        reg.put(issuer.licence("L1", seats=9), expect_revision=1)
    assert json.loads(reg.conn.execute("SELECT document FROM licences").fetchone()[0])["payload"]["seats"] == 5


def test_source_assignment_then_reference_and_status(kv, tmp_path):
    issuer = Issuer(tmp_path)
    reg = kv.LicenceRegistry(tmp_path / "r.db")
    reg.put(issuer.licence("L1"))
    reg.put(issuer.licence("L2"), status="suspended")
    reg.assign("a", "L2")
    src = kv.KVLicenceSource(tmp_path / "r.db")
    src.refresh(T0)
    got = src.lookup_many([Node("a", licence_ref="L1"), Node("b", licence_ref="L1"), Node("c")], T0)
    assert json.loads(got["a"].document)["payload"]["licence_id"] == "L2" and got["a"].status == "suspended"
    assert got["b"].status == "active" and got["c"] is None
    gen = src.generation
    reg.set_status("L2", "active")
    src.refresh(T0)
    assert src.generation == gen + 1


def test_missing_or_foreign_file_is_unavailable(kv, tmp_path):
    with pytest.raises(SourceUnavailable, match="does not exist"):
        kv.KVLicenceSource(tmp_path / "none.db").lookup(Node("a"), T0)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SourceUnavailable, match="not a licence registry"):
        kv.KVLicenceSource(junk).lookup(Node("a"), T0)


def test_in_ticks_a_registry_change_is_seen_at_once_despite_the_cache(kv, tmp_path, clock):
    issuer = Issuer(tmp_path)
    reg = kv.LicenceRegistry(tmp_path / "r.db")
    reg.put(issuer.licence("L1"))
    config = licence_config(tmp_path, [{"id": "a", "licence": "L1"}, {"id": "b"}],
                            "sources: [kv]\ncache_ttl: 3600\n",
                            extra="plugins: {settings: {licence-kv: {path: r.db}}}\n")
    orch = orchestrator(config, clock, (kv,))
    assert reasons(orch.tick()) == {"a": "ok", "b": "no_licence"}
    reg.set_status("L1", "suspended")
    reg.assign("b", "L1")
    clock.advance(5)
    assert reasons(orch.tick()) == {"a": "suspended", "b": "suspended"}


def _reader(db: str, plugin: str, rounds: int, queue) -> None:  # noqa: ANN001
    sys.path.insert(0, plugin)
    from wyneos_licence_kv.registry import KVLicenceSource

    src = KVLicenceSource(db)
    seen = []
    for _ in range(rounds):
        src.refresh(0)
        got = src.lookup_many([Node(f"w0-n{i}") for i in range(40)], 0)
        seen.append((src.generation, sum(r is not None for r in got.values())))
    src.close()
    queue.put(seen)


def test_a_reader_during_concurrent_writes_sees_whole_writes_only(kv, tmp_path):
    issuer = Issuer(tmp_path)
    docs = [json.dumps(issuer.licence(f"L{i}")) for i in range(3)]
    db = str(tmp_path / "r.db")
    kv.LicenceRegistry(db).close()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    reader = ctx.Process(target=_reader, args=(db, str(PLUGIN), 150, queue))
    writers = [ctx.Process(target=_writer, args=(db, str(PLUGIN), w, docs, 40)) for w in range(2)]
    for proc in [reader, *writers]:
        proc.start()
    seen = queue.get(timeout=60)
    for proc in [reader, *writers]:
        proc.join(60)
    assert [proc.exitcode for proc in [reader, *writers]] == [0, 0, 0]
    generations = [g for g, _ in seen]
    assert generations == sorted(generations)  # never goes back
    assert all(0 <= found <= 40 for _, found in seen)
    # every answer is whole: the nodes found are a prefix of worker 0's assignments (they are made in order)
    assert [found for _, found in seen] == sorted(found for _, found in seen)


def test_an_unusable_row_is_malformed_for_its_nodes_only(kv, tmp_path, clock):
    issuer = Issuer(tmp_path)
    reg = kv.LicenceRegistry(tmp_path / "r.db")
    reg.put(issuer.licence("good"))
    reg.put(issuer.licence("bad"))
    reg.put(issuer.licence("deep"))
    # rows written behind the registry's back: bytes that are not UTF-8, a hostile document
    reg.conn.execute("UPDATE licences SET document = CAST(? AS TEXT) WHERE licence_id = 'bad'",
                     (b'{"format": "\xff\xfe"}',))
    deep = '{"format": "wyneos.licence/1", "payload": ' + "[" * 50_000 + "]" * 50_000 + ', "signature": "x"}'
    reg.conn.execute("UPDATE licences SET document = ? WHERE licence_id = 'deep'", (deep,))
    config = licence_config(tmp_path, [{"id": "a", "licence": "good"}, {"id": "b", "licence": "bad"},
                                       {"id": "c", "licence": "deep"}], "sources: [kv]\n",
                            extra="plugins: {settings: {licence-kv: {path: r.db}}}\n")
    report = orchestrator(config, clock, (kv,)).tick()
    assert reasons(report) == {"a": "ok", "b": "malformed", "c": "malformed"}
    assert "r.db [bad]: not UTF-8 text" in report.licences["b"].detail
    assert "nested 50001 levels deep" in report.licences["c"].detail and not report.errors


def test_the_source_opens_read_only_and_never_waits_long_for_a_lock(kv, tmp_path):
    issuer = Issuer(tmp_path)
    reg = kv.LicenceRegistry(tmp_path / "r.db")
    reg.put(issuer.licence("L1"))
    src = kv.KVLicenceSource(tmp_path / "r.db")
    src.refresh(T0)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        src._db().execute("DELETE FROM licences")
    assert src.lookup(Node("a", licence_ref="L1"), T0) is not None


def test_command_errors_name_node_licence_and_file(kv, tmp_path, capsys):
    issuer = Issuer(tmp_path)
    main = kv.registry.main
    db = str(tmp_path / "r.db")
    lic = tmp_path / "L1.licence"
    lic.write_text(json.dumps(issuer.licence("L1")))
    assert main([db, "put", str(lic)]) == 0 and "revision 1" in capsys.readouterr().out
    assert main([db, "assign", "n1", "nolic"]) == 2
    assert "cannot assign node 'n1': licence 'nolic' is not in the registry" in capsys.readouterr().err
    deep = tmp_path / "deep.licence"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main([db, "put", str(deep)]) == 2
    err = capsys.readouterr().err
    assert str(deep) in err and "nested 100000 levels deep" in err
    garbage = tmp_path / "g.licence"
    garbage.write_text('{"payload": {"licence_id": "x"}}')
    assert main([db, "put", str(garbage)]) == 2 and "not a licence document" in capsys.readouterr().err
    notadb = tmp_path / "notadb"
    notadb.write_bytes(b"not sqlite at all" * 100)
    for target in (notadb, tmp_path):
        assert main([str(target), "list"]) == 2
        assert f"{target}: not a licence registry" in capsys.readouterr().err
    assert main([db, "list"]) == 0 and "L1\tactive\trevision 1" in capsys.readouterr().out


def test_path_setting_must_be_a_path(kv, tmp_path, clock):
    config = licence_config(tmp_path, [{"id": "a"}], "sources: [kv, file]\n",
                            extra="plugins: {settings: {licence-kv: {path: 42}}}\n")
    with pytest.raises(ConfigError) as info:
        orchestrator(config, clock, (kv,))
    [error] = info.value.errors
    assert error.field == "plugins.settings.licence-kv.path" and error.reason == "expected a string, got 42"


def test_a_registry_file_that_is_not_there_is_refused_at_start(kv, tmp_path, clock):
    config = licence_config(tmp_path, [{"id": "a"}], "sources: [kv, file]\n",
                            extra="plugins: {settings: {licence-kv: {path: licences.db}}}\n")
    with pytest.raises(ConfigError) as info:
        orchestrator(config, clock, (kv,))
    [error] = info.value.errors
    assert error.field == "plugins.settings.licence-kv.path" and "no such registry file" in error.reason
