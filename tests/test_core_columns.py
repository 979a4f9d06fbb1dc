"""The node table's columns for vector code: licence state and reason, the licence
stamp, dictionary-encoded metadata and the parsed version; and the licence engine's cache
by slot (a departed node's result never passes to the node that takes its slot)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wyneos_core.config import Config
from wyneos_core.licensing.document import issue_licence
from wyneos_core.licensing.engine import LicenceEngine
from wyneos_core.licensing.keys import KeyRing, generate_key
from wyneos_core.licensing.ledger import Ledger
from wyneos_core.licensing.settings import LicenceSettings
from wyneos_core.licensing.sources import LicenceRecord
from wyneos_core.model import Heartbeat, LicenceResult, Node
from wyneos_core.nodetable import LICENCE_INVALID, LICENCE_REASONS, LICENCE_UNCHECKED, LICENCE_VALID
from wyneos_core.registry import Registry

NOW = 1_700_000_000.0
DAY = 86400.0


def registry() -> Registry:
    return Registry(dict(Config.defaults()["heartbeat"]))


class Source:
    """A licence source answering from a dict by node id (counts what it was asked)."""

    name = "mem"

    def __init__(self) -> None:
        self.records: dict[str, LicenceRecord | None] = {}
        self.asked: list[str] = []

    def lookup(self, node: Node, now: float) -> LicenceRecord | None:
        self.asked.append(node.id)
        return self.records.get(node.id)


@pytest.fixture()
def licensing(tmp_path):
    key = generate_key()
    settings = LicenceSettings(sources=["mem"], customer="acme", cache_ttl=3600.0)
    source = Source()
    engine = LicenceEngine(settings, KeyRing([key.public_key()]), {"mem": source}, Ledger(None))

    def record(licence_id: str, **kw) -> LicenceRecord:
        doc = issue_licence(key, licence_id=licence_id, customer="acme", issued=NOW - DAY, expires=NOW + 365 * DAY,
                            **kw)
        return LicenceRecord(json.dumps(doc).encode(), "mem")

    return engine, source, record


def test_metadata_codes_are_a_dictionary_that_follows_every_write():
    r = registry()
    r.register("a", now=NOW, metadata={"zone": "eu", "x": float("nan")})
    r.register("b", now=NOW, metadata={"zone": "us", "x": float("nan")})
    r.register("c", now=NOW)
    codes, values = r.table.metadata_codes("zone")
    slot = r.table.index
    assert [values[codes[slot[n]]] for n in "ab"] == ["eu", "us"] and codes[slot["c"]] == -1   # missing: -1
    x_codes, x_values = r.table.metadata_codes("x")
    assert x_codes[slot["a"]] == x_codes[slot["b"]] and len(x_values) == 1 and math.isnan(x_values[0])  # one NaN
    r.accept(Heartbeat("c", NOW, 0.1, metadata={"zone": "ap-south"}), NOW)      # a value never seen before
    assert values[codes[slot["c"]]] == "ap-south" and len(values) == 3
    r["a"].metadata = {**r["a"].metadata, "zone": "us"}                        # replaced, through a view
    assert codes[slot["a"]] == codes[slot["b"]] and r["a"].metadata == {"zone": "us", "x": r["a"].metadata["x"]}
    r.table.metadata[slot["b"]] = {"zone": 1}                                   # a step replacing the mapping
    r.table.metadata[slot["c"]] = {"zone": True}
    assert values[codes[slot["b"]]] == 1 and type(values[codes[slot["c"]]]) is bool  # 1 and True stay apart
    gone = slot["a"]
    r.deregister("a")
    assert codes[gone] == -1
    new = r.register("d", now=NOW, metadata={"zone": "eu"})
    assert r.table.index["d"] == gone and values[codes[gone]] == "eu"          # the reused slot is the new node's
    r.register("e", now=NOW, metadata={"zone": ["a", "list"]})                  # unhashable: encoded too
    assert values[codes[r.table.index["e"]]] == ["a", "list"]
    assert new.metadata == {"zone": "eu"}


def test_versions_are_parsed_once_per_value_and_ranked():
    r = registry()
    for node_id, version in [("a", "2.4"), ("b", "v2.4.0-rc1"), ("c", "10.0.1"), ("d", "garbage"), ("e", None)]:
        r.register(node_id, now=NOW, metadata={} if version is None else {"version": version})
    v = r.table.version()
    slot = r.table.index
    assert v.parsed == [(2, 4), (2, 4), (10, 0, 1), None]
    assert v.rank[v.codes[slot["a"]]] == v.rank[v.codes[slot["b"]]] < v.rank[v.codes[slot["c"]]]
    mask, known = v.at_least((2, 10))
    assert [bool(mask[slot[n]]) for n in "abcde"] == [False, False, True, False, False]
    assert [bool(known[slot[n]]) for n in "abcde"] == [True, True, True, False, False]
    r["e"].metadata = {"version": "3"}
    v = r.table.version()
    assert v.at_least((3,))[0][slot["e"]] and v.rank[v.codes[slot["e"]]] == 1   # between 2.4 and 10.0.1


def test_the_licence_stamp_moves_only_when_a_licence_input_changes():
    r = registry()
    r.register("a", now=NOW, metadata={"zone": "eu"}, licence_ref="l1")
    t, s = r.table, r.table.index["a"]

    def stamp() -> int:
        return int(t.licence_stamp[s])

    before = stamp()
    r.accept(Heartbeat("a", NOW, 0.3, metadata={"zone": "us"}), NOW)
    r["a"].licence_ref = "l1"
    assert stamp() == before                                   # neither changes what the licence depends on
    for change in (lambda: setattr(r["a"], "licence_ref", "l2"), lambda: setattr(r["a"], "fingerprint", "SHA256:x"),
                   lambda: setattr(r["a"], "metadata", {**r["a"].metadata, "features": ["export"]}),
                   lambda: r.accept(Heartbeat("a", NOW + 1, 0.3, metadata={"integrity": "sha256:1"}), NOW + 1)):
        change()
        assert stamp() != before
        before = stamp()


def test_licence_state_is_written_to_the_columns_and_results_come_lazily(licensing):
    engine, source, record = licensing
    r = registry()
    for i in range(6):
        r.register(f"n{i}", now=NOW, licence_ref="x")
    source.records.update({f"n{i}": record(f"lic-{i % 2}") for i in range(5)})  # n5: no licence
    results = engine.validate(r.nodes(), NOW)
    t = r.table
    assert [LICENCE_REASONS[c] for c in t.licence_reason[t.slots()]] == ["ok"] * 5 + ["no_licence"]
    assert list(t.licence_state[t.slots()]) == [LICENCE_VALID] * 5 + [LICENCE_INVALID]
    mapping = results.mapping()
    assert mapping.counts() == {"ok": 5, "no_licence": 1} and [p.node_id for p in mapping.problems()] == ["n5"]
    assert mapping["n3"] == LicenceResult("n3", True, "ok", mapping["n3"].detail, "lic-1", "acme", "wyneos",
                                          mapping["n3"].tier, mapping["n3"].features, NOW + 365 * DAY, False, "mem")
    assert len(engine._pool) == 3                              # distinct results, not one per node
    # a warm tick compares the columns and asks nobody; the objects made last time are reused
    first = results.list()
    source.asked.clear()
    again = engine.validate(r.nodes(), NOW + 6)
    assert source.asked == [] and engine.stats["cached"] == 6
    assert all(a is b for a, b in zip(again.list(), first))


def test_a_ticks_licence_results_are_freed_with_their_mapping_without_the_cyclic_collector(licensing):
    """The report's mapping and its results form no reference cycle: when the report lets
    go of the mapping, the tick's columns go at once (a cycle kept every tick's until the
    collector's rare full pass: about 15 B a node a tick)."""
    import gc
    import weakref

    engine, source, record = licensing
    r = registry()
    for i in range(4):
        r.register(f"n{i}", now=NOW, licence_ref="x")
    source.records.update({f"n{i}": record("lic-0") for i in range(4)})
    results = engine.validate(r.nodes(), NOW)
    mapping = results.mapping()
    assert results.mapping() is mapping and mapping["n2"].valid   # one mapping while it is held
    gone = weakref.ref(results)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del results, mapping
        engine.validate(r.nodes(), NOW + 6)   # the next tick's results: the engine lets go of the last ones
        assert gone() is None
    finally:
        if enabled:
            gc.enable()


def test_a_departed_nodes_licence_never_passes_to_the_node_in_its_slot(licensing):
    engine, source, record = licensing
    r = registry()
    r.register("old", now=NOW, licence_ref="x")
    r.register("other", now=NOW, licence_ref="x")
    source.records["old"] = record("lic-old")
    engine.validate(r.nodes(), NOW)
    assert engine.entitled("old", "core") or engine.cached()["old"]
    slot = r.table.index["old"]
    r.deregister("old")
    assert r.table.licence_state[slot] == LICENCE_UNCHECKED
    r.register("new", now=NOW + 1, licence_ref="x")           # same slot, same licence reference
    assert r.table.index["new"] == slot
    results = engine.validate(r.nodes(), NOW + 2).mapping()
    assert results["new"].reason == "no_licence" and not results["new"].valid
    assert r.table.licence_state[slot] == LICENCE_INVALID and "old" not in engine.cached()
    assert not engine.entitled("old", "core") and not engine.entitled("new", "core")


def test_a_past_ticks_results_stay_as_they_were(licensing):
    engine, source, record = licensing
    r = registry()
    r.register("a", now=NOW, licence_ref="x")
    source.records["a"] = record("lic-a")
    before = engine.validate(r.nodes(), NOW)
    r["a"].licence_ref = "y"
    source.records["a"] = None
    after = engine.validate(r.nodes(), NOW + 6)
    assert before.mapping()["a"].valid and not after.mapping()["a"].valid
    assert before[0].reason == "ok" and after[0].reason == "no_licence"
    assert np.array_equal(before.state, [LICENCE_VALID])


def test_metadata_cannot_be_changed_in_place_and_a_replacement_is_noted(licensing):
    """Metadata in the table is shared (equal mappings are one object): a change in place
    is refused with a clear error and changes nothing; a replaced mapping is noted at once."""
    engine, source, record = licensing
    r = registry()
    r.register("a", now=NOW, licence_ref="x", metadata={"customer": "acme"})
    r.register("b", now=NOW, licence_ref="x", metadata={"customer": "acme"})
    assert r["a"].metadata is r["b"].metadata                         # equal metadata: one object
    source.records["a"] = record("lic-a")
    assert engine.validate(r.nodes(), NOW).mapping()["a"].valid
    with pytest.raises(TypeError, match="never changed in place: replace it"):
        r.table.metadata[r.table.index["a"]]["customer"] = "globex"
    with pytest.raises(TypeError, match="replace it"):
        r["a"].metadata.pop("customer")
    assert r["b"].metadata == {"customer": "acme"} == r["a"].metadata  # nothing changed, for either
    r["a"].metadata = {**r["a"].metadata, "customer": "globex"}        # replaced: noted at once
    assert engine.validate(r.nodes(), NOW + 6).mapping()["a"].reason == "customer_mismatch"
    assert r["b"].metadata == {"customer": "acme"}


def test_the_columns_example_of_the_plugin_guide_runs(tmp_path, monkeypatch, capsys):
    """docs/writing-plugins.md's example of the metadata and version columns, twice."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md").read_text()
    [code] = re.findall(r"<!-- columns-example -->\n```python\n(.*?)```", page, re.S)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        exec(compile(code, "writing-plugins.md (columns example)", "exec"), {"__name__": "__main__"})  # noqa: S102
    assert capsys.readouterr().out == "['n0', 'n2'] []\n" * 2


def test_the_pool_of_distinct_results_is_renumbered_without_changing_any_result(licensing):
    engine, source, record = licensing
    r = registry()
    for node_id in ("a", "b", "c"):
        r.register(node_id, now=NOW, licence_ref="x")
    source.records["a"] = record("lic-a", features=["export"])
    first = engine.validate(r.nodes(), NOW)
    first_list = [(x.node_id, x.reason, x.detail) for x in first]
    now = NOW
    for i in range(1100):  # each new reference of b is a result no node had before
        r["b"].licence_ref = f"ref-{i}"
        now += 1
        latest = engine.validate(r.nodes(), now)
    assert len(engine._pool) < 1100                                     # renumbered on the way
    assert [(x.node_id, x.reason) for x in latest] == [("a", "ok"), ("b", "no_licence"), ("c", "no_licence")]
    assert "'ref-1099'" in latest[1].detail and engine.stats["cached"] == 2
    assert [(x.node_id, x.reason, x.detail) for x in first] == first_list  # a past tick's results as they were
    assert "export" in latest[0].features and engine.entitled("a", "export") and not engine.entitled("b", "export")


def test_a_few_lookups_make_a_few_results_and_many_make_them_all(licensing):
    engine, source, record = licensing
    r = registry()
    r.register_many([f"n{i:04d}" for i in range(2000)], now=NOW, licence_refs=["x"] * 2000)
    source.records.update({f"n{i:04d}": record("lic") for i in range(0, 2000, 2)})
    mapping = engine.validate(r.nodes(), NOW).mapping()
    assert mapping["n0003"].reason == "no_licence" and mapping.get("n0004").valid and "n1999" in mapping
    fresh = engine.validate(r.nodes(), NOW + 6).mapping()
    assert [fresh.get(f"n{i:04d}").valid for i in range(5)] == [True, False, True, False, True]
    assert fresh._dict is None                                       # five reads: no dict of 2000
    r.deregister("n0002")                                            # after the tick: found by the dict
    assert fresh["n0002"].valid and fresh._dict is not None and len(fresh) == 2000
    again = engine.validate(r.nodes(), NOW + 12).mapping()
    got = [again.get(f"n{i:04d}") for i in range(3, 2000)]          # many reads: the dict, then dict.get
    assert again._dict is not None and again.get == again._dict.get and sum(g.valid for g in got) == 998
    with pytest.raises(KeyError):
        again["nobody"]


def test_result_objects_are_kept_only_while_someone_reads_them_all(licensing):
    engine, source, record = licensing
    r = registry()
    r.register_many([f"n{i}" for i in range(10)], now=NOW, licence_refs=["x"] * 10)
    source.records.update({f"n{i}": record("lic") for i in range(10)})
    first = engine.validate(r.nodes(), NOW).list()
    second = engine.validate(r.nodes(), NOW + 6).list()
    assert all(a is b for a, b in zip(first, second))                 # read every tick: made once
    engine.validate(r.nodes(), NOW + 12)                               # a tick nobody reads in full
    third = engine.validate(r.nodes(), NOW + 18)
    assert len(engine._objects.objects) == 0                           # ... and they are let go
    assert third.list() == second and not any(a is b for a, b in zip(third.list(), second))
