"""The decision log (bounded, rotated JSON Lines and a hook), replay of the logged inputs
with other rulesets, and shadow rulesets evaluated beside the live ones."""

from __future__ import annotations

import json

from enforcement_helpers import hot

from tests.conftest import beat, cluster_yaml
from wyneos_core import hookimpl
from wyneos_core.enforcement.decision_log import DecisionLog, read_log
from wyneos_core.enforcement.replay import render, replay



class Sink:
    __wyneos_name__ = "test-sink"

    def __init__(self):
        self.records = []

    @hookimpl
    def wyneos_decision_log(self, records):
        self.records.extend(records)


def setup(tmp_path, monkeypatch, make_orchestrator, extra="", plugins=()):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cand").mkdir()
    (tmp_path / "hot.yaml").write_text(hot(0.9))
    (tmp_path / "cand" / "hot.yaml").write_text(hot(0.5))
    return make_orchestrator(cluster_yaml(3, topology="star", disable="[governance, healing, enforcement]", extra=f"""
rulesets: {{paths: [hot.yaml], candidates: [cand/hot.yaml]}}
decide: {{max_isolations_per_tick: 100}}
enforcement:
  decision_log: {{path: log/decisions.jsonl{extra}}}
"""), plugins=plugins)


def run(orch, clock, ticks):
    for _ in range(ticks):
        beat(orch, clock, "n01", load=0.95)
        beat(orch, clock, "n02", load=0.6)
        beat(orch, clock, "n03", load=0.2)
        orch.tick()
        clock.advance(5)


def test_shadow_shows_what_candidates_would_change_and_never_act(make_orchestrator, clock, tmp_path, monkeypatch):
    orch = setup(tmp_path, monkeypatch, make_orchestrator)
    run(orch, clock, 2)
    report = orch.last_report
    shadow = report.enforcement["shadow"]
    assert shadow["candidates"] == ["hot"]
    assert shadow["rules"]["hot/isolate-hot"]["actions_added"] == [{"type": "isolate", "target": "n02"}]
    assert shadow["totals"] == {"newly_failing": 0, "newly_passing": 0, "actions_added": 1, "actions_removed": 0}
    assert sorted(n.id for n in orch.registry if n.isolated) == ["n01"]  # the candidate acted on nothing
    assert any(n.startswith("shadow: candidates hot would") for n in report.notes)
    from wyneos_core.service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    metrics.observe_tick(report, 0, [])
    text = metrics.render().decode()
    assert 'wyneos_shadow_differences{kind="actions_added"} 1.0' in text
    assert 'wyneos_enforcement_findings{mode="enforce"} 1.0' in text


def test_every_decision_is_logged_with_its_cause_and_mode_and_sent_to_the_hook(make_orchestrator, clock, tmp_path,
                                                                               monkeypatch):
    sink = Sink()
    orch = setup(tmp_path, monkeypatch, make_orchestrator, plugins=(sink,))
    run(orch, clock, 3)
    records = list(read_log([tmp_path / "log" / "decisions.jsonl"]))
    assert records == json.loads(json.dumps(sink.records))  # the file and the hook got the same
    inputs = [r for r in records if r["kind"] == "inputs"]
    assert [r["tick"] for r in inputs] == [1, 2, 3]
    assert all(r["digest"].startswith("sha256:") and len(r["nodes"]) == 3 for r in inputs)
    (approved,) = [r for r in records if r["kind"] == "decision" and r["state"] == "approved"]
    assert (approved["type"], approved["target"], approved["origin"]) == ("isolate", "n01", "ruleset:hot/isolate-hot")
    assert approved["mode"] == "enforce" and approved["setting"] == "enforcement.mode"
    assert approved["inputs"] == inputs[0]["digest"] and approved["tick"] == 1 and approved["term"] is None


def test_the_log_is_rotated_and_bounded(tmp_path):
    log = DecisionLog(tmp_path / "d.jsonl", max_bytes=4096, keep=2)
    for i in range(100):
        log.write([{"schema": "wyneos.decision/1", "kind": "decision", "n": i, "pad": "x" * 200}])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    kept = [r["n"] for r in read_log(log.files())]
    assert kept == list(range(kept[0], 100))  # the newest, in order, none lost in between


def test_replay_re_evaluates_the_logged_inputs_with_other_rulesets(make_orchestrator, clock, tmp_path, monkeypatch):
    orch = setup(tmp_path, monkeypatch, make_orchestrator)
    run(orch, clock, 3)
    log = [tmp_path / "log" / "decisions.jsonl"]
    result = replay(log, [str(tmp_path / "cand" / "hot.yaml")])
    assert result["replayed"] == 3 and [t["tick"] for t in result["ticks"]] == [1, 2, 3]
    assert result["ticks"][0]["rules"]["hot/isolate-hot"]["actions_added"] == [{"type": "isolate", "target": "n02"}]
    assert result["totals"]["actions_added"] == 3
    assert "  hot/isolate-hot: +isolate n02" in render(result)
    # the live rulesets themselves replay to no difference
    same = replay(log, [str(tmp_path / "hot.yaml")])
    assert same["ticks"] == [] and same["replayed"] == 3


def test_a_log_line_past_the_bound_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    import pytest

    from wyneos_core.enforcement import decision_log

    monkeypatch.setattr(decision_log, "MAX_LINE", 1000)
    path = tmp_path / "d.jsonl"
    path.write_text('{"schema": "wyneos.decision/1", "kind": "x"}\n' + "x" * 5000)
    with pytest.raises(ValueError, match=r"d.jsonl:2: line longer than 1000 characters"):
        list(read_log([path]))


def test_overrides_read_back_from_a_store_are_checked(tmp_path):
    from wyneos_core.enforcement.overrides import META_KEY, stored
    from wyneos_core.store import StateStore

    store = StateStore.open(tmp_path / "s.db")
    try:  # rows as a damaged or hostile store could hold them
        store.set_meta(META_KEY, {"ok-1": {"kind": "isolate", "reason": "r", "by": "a", "at": 1.0},
                                  "nan-1": {"kind": "isolate", "reason": "r", "by": "a", "at": float("nan")},
                                  "bad kind": {"kind": "evict", "reason": "r", "by": "a"},
                                  "no-reason": {"kind": "cordon", "reason": "", "by": "a"},
                                  "junk": "not a mapping"})
        assert list(stored(store)) == ["ok-1"]
    finally:
        store.close()


def test_without_logged_inputs_the_digest_is_the_same_made_a_chunk_at_a_time(make_orchestrator, clock, tmp_path,
                                                                             monkeypatch):
    """``inputs: false`` digests the nodes and licence results a chunk at a time
    (``digest_chunks``): the same digest as the logged inputs' (``digest``), so a log
    with inputs verifies one without."""
    from wyneos_core.enforcement import decision_log
    from wyneos_core.enforcement.decision_log import digest, digest_chunks

    monkeypatch.setattr(decision_log, "CHUNK", 2)
    weird = {"nodes": [{"id": "é", "b": [1, 2.5, None], "a": {"z": "\ud800", "y": True}}, {"when": object}, {}],
             "licences": [], "extra": ({"k": i} for i in range(5))}
    listed = {k: list(v) for k, v in weird.items()}
    assert digest_chunks({k: iter(v) for k, v in listed.items()}) == digest(listed)
    digests = {}
    for name, extra in (("logged", ""), ("unlogged", ", inputs: false")):
        path = tmp_path / name
        path.mkdir()
        clock.now = 1_000_000.0  # both runs see the same times
        orch = setup(path, monkeypatch, make_orchestrator, extra=extra)
        run(orch, clock, 3)
        records = [r for r in read_log([path / "log" / "decisions.jsonl"]) if r["kind"] == "inputs"]
        assert ("nodes" in records[0]) == (name == "logged")
        if name == "logged":
            assert all(r["digest"] == digest({"nodes": r["nodes"], "licences": r["licences"]}) for r in records)
        digests[name] = [r["digest"] for r in records]
    assert digests["logged"] == digests["unlogged"] and len(set(digests["logged"])) == 3
