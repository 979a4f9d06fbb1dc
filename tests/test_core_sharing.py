"""Values many nodes hold alike are held once: metadata mappings and licence references."""

from __future__ import annotations

import copy
import json

import msgspec
import pytest

from wyneos_core.config import Config
from wyneos_core.registry import Registry
from wyneos_core.sharing import EMPTY_METADATA, FrozenMetadata, MetadataPool

NOW = 1_700_000_000.0


def test_equal_plain_mappings_are_one_object_and_unequal_ones_stay_apart():
    pool = MetadataPool()
    a = pool({"zone": "eu", "version": "2.4.1", "features": ["x"]})
    assert pool({"zone": "eu", "version": "2.4.1", "features": ["x"]}) is a
    assert type(a) is FrozenMetadata and a == {"zone": "eu", "version": "2.4.1", "features": ["x"]}
    assert pool({}) is pool(None) is EMPTY_METADATA
    # same under ==, yet different data: never shared
    ones = [pool({"n": 1}), pool({"n": 1.0}), pool({"n": True})]
    assert len({id(m) for m in ones}) == 3 and [type(m["n"]) for m in ones] == [int, float, bool]
    assert pool({"version": "2.4.1", "zone": "eu", "features": ["x"]}) is not a        # another order
    assert pool({"n": (1, 2)}) is not pool({"n": (1, 2)})                                # not JSON data
    assert pool({"n": [1, 2]}) is pool({"n": [1, 2]})
    given = {"zone": "us"}
    stored = pool(given)
    given["zone"] = "eu"                                        # the caller's dict is not the stored one
    assert stored == {"zone": "us"}


def test_the_pool_is_bounded():
    pool = MetadataPool(limit=3)
    first = pool({"i": 0})
    for i in range(1, 10):
        pool({"i": i})
    assert len(pool) == 3 and pool({"i": 0}) is not first and pool({"i": 0}) == first
    assert pool({"i": 9}) is pool({"i": 9})


def test_frozen_metadata_refuses_changes_in_place_and_encodes_as_a_dict():
    m = MetadataPool()({"zone": "eu", "tags": ["a"]})
    for change in (lambda: m.__setitem__("zone", "us"), lambda: m.pop("zone"), lambda: m.update(zone="us"),
                   lambda: m.setdefault("x", 1), m.clear, m.popitem, lambda: m.__delitem__("zone")):
        with pytest.raises(TypeError, match="never changed in place"):
            change()
    with pytest.raises(TypeError):
        m |= {"x": 1}
    assert m == {"zone": "eu", "tags": ["a"]}
    assert json.loads(json.dumps(m)) == m and msgspec.json.decode(msgspec.json.encode(m)) == m
    for copied in (copy.copy(m), copy.deepcopy(m), dict(m), {**m}):
        assert type(copied) is dict and copied == m
        copied["zone"] = "us"                                    # copies are the caller's to change
    assert copy.deepcopy(m)["tags"] is not m["tags"] and m["zone"] == "eu"


def test_the_table_shares_metadata_and_licence_references():
    r = Registry(dict(Config.defaults()["heartbeat"]))
    refs = ["".join(["lic-", str(k % 2)]) for k in range(6)]     # equal strings, distinct objects
    assert refs[0] is not refs[2]
    r.register_many([f"n{i}" for i in range(6)], now=NOW, licence_refs=refs)
    t = r.table
    assert all(m is EMPTY_METADATA for m in t.metadata)
    assert t.licence_ref[0] is t.licence_ref[2] is t.licence_ref[4] and t.licence_ref[1] is t.licence_ref[5]
    r["n0"].metadata = {"zone": "eu"}
    r["n1"].metadata = {"zone": "eu"}
    r.register("late", now=NOW, metadata={"zone": "eu"}, licence_ref="".join(["lic-", "1"]))
    assert r["late"].metadata is r["n0"].metadata is r["n1"].metadata
    assert r["late"].licence_ref is t.licence_ref[1]
    r.deregister("n0")
    assert t.metadata[0] is EMPTY_METADATA and r["n1"].metadata == {"zone": "eu"}
