"""What ``wyneos run`` prints per tick, at scale: grouped changes by default, one line
with ``-q``, everything with ``-v`` (a real CLI process on a generated 1,000-node cluster)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from wyneos_core.builtin.report import quiet_line, summary_lines
from wyneos_core.model import Action, LicenceResult, Node, NodeStatus, RuleResult, Severity, TickReport
from wyneos_core.wording import examples, plural

N = 1000


def big_cluster(path: Path, n: int = N) -> Path:
    """``n`` unlicensed nodes simulated in process: one overloaded, one with a skewed
    clock (every heartbeat refused) and an impostor."""
    nodes = "\n".join(f"  - {{id: n-{i:04d}, metadata: {{region: eu, version: '2.4.1'}}}}" for i in range(n))
    path.write_text(f"""cluster: big
heartbeat: {{interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 10}}
mesh: {{topology: small_world, degree: 4, origin_links: 3, seed: 1}}
nodes:
{nodes}
licence:
  sources: [file]
  directory: .wyneos/licences
  trusted_keys: [.wyneos/demo-keys/issuer.pub]
  customer: acme
rulesets: {{paths: ["builtin:"]}}
plugins: {{disable: [governance, healing, enforcement]}}
state: {{path: state.db}}
report: {{json_path: null}}
demo:
  enabled: true
  seed: 3
  behaviours:
    n-0003: {{kind: overloaded, load: 0.97}}
    n-0009: {{kind: skewed, skew: 120}}
    rogue-1: {{kind: impostor}}
""")
    return path


def run(cwd: Path, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "run", "--config", "big.yaml", "--ticks", "3",
                          "--interval", "0.05", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return out.stdout.splitlines()


def ticks(lines: list[str]) -> dict[int, list[str]]:
    """The lines of each tick (its header first)."""
    out: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if m := re.match(r"tick (\d+): ", line):
            current = out.setdefault(int(m.group(1)), [])
        elif not line.startswith("  "):
            current = None
        if current is not None:
            current.append(line)
    return out


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big")
    big_cluster(path / "big.yaml")
    return path


def test_a_thousand_nodes_print_grouped_changes_in_at_most_150_lines(cluster_dir, tmp_path):
    (tmp_path / "big.yaml").write_text((cluster_dir / "big.yaml").read_text())
    lines = run(tmp_path)
    assert len(lines) <= 150, "\n".join(lines)
    by_tick = ticks(lines)
    assert sorted(by_tick) == [1, 2, 3]
    first = by_tick[1]
    assert first[0].startswith(f"tick 1: {N} nodes (online=999 unknown=1 isolated=10) in ")
    assert ("  licence  1000 INVALID no_licence (n-0000, n-0001, n-0002, +997): "
            "the node names no licence (sources: file)") in first
    assert "  status   999 unknown -> online (n-0000, n-0001, n-0002, +996)" in first
    assert "  alert    isolate-unlicensed: 1000 inactive -> firing (n-0000, n-0001, n-0002, +997)" in first
    assert ("  action   10 isolate (critical) for licence:no_licence by "
            "ruleset:licence-enforcement/isolate-unlicensed (n-0000, n-0001, n-0002, +7): "
            "no licence: the node names no licence (sources: file)") in first
    assert "  reject   timestamp: 120.0s in the future (allowed skew 10s): 1 node (n-0009)" in first
    assert "  reject   node_id: unknown node (heartbeat.unknown_nodes is 'reject'): 1 node (rogue-1)" in first
    # what stayed the same is not listed again: one "still" line counts it
    for n in (2, 3):
        text = "\n".join(by_tick[n])
        assert "licence  1000" not in text and "reject   " not in text and "status   " not in text
        assert ("  still    licence failing on 1000 nodes (no_licence=1000); rules failing: load-ceiling=1; "
                "heartbeats rejected from 2 nodes") in by_tick[n]
    # the actions that are new are (10 more isolations a tick, under the rate limit)
    assert any(line.startswith("  action   10 isolate (critical)") and "(n-0010, n-0011, n-0012, +7)" in line
               for line in by_tick[2])
    assert "  alert    load-ceiling: 1 pending -> firing (n-0003)" in by_tick[3]


def test_quiet_prints_one_line_per_tick(cluster_dir, tmp_path):
    (tmp_path / "big.yaml").write_text((cluster_dir / "big.yaml").read_text())
    lines = run(tmp_path, "-q")
    assert len(lines) == 5  # the banner, one line per tick, the stop line
    assert lines[0].startswith("wyneos ") and lines[-1].startswith("stopped after 3 tick(s)")
    assert re.fullmatch(r"tick 1: 1000 nodes \(online=999 unknown=1 isolated=10\); licences: 1000 invalid; "
                        r"1 rule failing on 1 node; 10 new actions; 2 rejected in [\d.]+ ms", lines[1]), lines[1]
    assert lines[2].startswith("tick 2: 1000 nodes") and lines[3].startswith("tick 3: 1000 nodes")


def test_verbose_prints_every_node_every_tick(cluster_dir, tmp_path):
    (tmp_path / "big.yaml").write_text((cluster_dir / "big.yaml").read_text())
    by_tick = ticks(run(tmp_path, "--verbose"))
    for n in (1, 2, 3):
        licence = [line for line in by_tick[n] if line.startswith("  licence  ")]
        assert len(licence) == N  # held or not
        assert licence[0] == "  licence  n-0000: INVALID no_licence - the node names no licence (sources: file)"
        assert ("  action   isolate n-0000 (critical) for licence:no_licence by "
                "ruleset:licence-enforcement/isolate-unlicensed: no licence: the node names no licence (sources: file)"
                in by_tick[1])
        assert sum(line.startswith("  action   isolate ") for line in by_tick[n]) == 10
        assert "  reject   n-0009: timestamp: 120.0s in the future (allowed skew 10s)" in by_tick[n]
    assert sum(line.startswith("  status   ") for line in by_tick[1]) == 999
    assert sum(line.startswith("  deliver  ") for line in by_tick[1]) > 10  # one per delivery


def test_quiet_and_verbose_together_is_a_usage_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "run", "-q", "-v"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


# -- the summary of one tick, from reports built by hand --------------------------------

def report(tick: int, *, invalid: dict[str, str] = {}, failing: dict[str, list[str]] = {},  # noqa: B006
           actions: list[Action] = (), nodes: int = 5) -> TickReport:  # type: ignore[assignment]
    r = TickReport(tick, 0.0)
    r.nodes = [Node(f"n{i}", NodeStatus.ONLINE) for i in range(nodes)]
    r.licences = {n.id: LicenceResult(n.id, n.id not in invalid, invalid.get(n.id, "ok"), f"detail of {n.id}")
                  for n in r.nodes}
    r.results = [RuleResult(rule, node, False, f"{rule} fails on {node}") for rule, ids in failing.items()
                 for node in ids]
    r.actions = list(actions)
    return r


def test_examples_and_plural():
    assert examples(["c", "a", "b"]) == "a, b, c"
    assert examples([f"n{i}" for i in range(10)]) == "n0, n1, n2, +7"
    assert plural(1, "rule") == "1 rule" and plural(3, "rule") == "3 rules" and plural(0, "node") == "0 nodes"


def test_changes_are_listed_and_what_holds_is_counted():
    before = report(1, invalid={"n0": "expired", "n1": "expired"}, failing={"load": ["n0"], "version": ["n1"]})
    now = report(2, invalid={"n0": "expired", "n2": "no_licence"}, failing={"load": ["n0", "n3"]})
    lines = summary_lines(now, before)
    assert "  licence  1 INVALID no_licence (n2): detail of n2" in lines
    assert "  licence  1 valid again (n1)" in lines
    assert "  rule     load: failing on 2 nodes, 1 new (n3): load fails on n3" in lines
    assert "  rule     version: passing again on 1 node (n1)" in lines
    assert lines[-1] == "  still    licence failing on 1 node (expired=1)"
    assert not any("n0" in line for line in lines), "n0 changed nothing"


def test_differing_texts_in_a_group_show_the_first_and_count_the_others():
    acts = [Action("reduce_load", f"n{i}", f"load 0.9{i}", "ruleset:healing/x") for i in range(4)]
    lines = summary_lines(report(1, actions=acts))
    assert ("  action   4 reduce_load (warning) by ruleset:healing/x (n0, n1, n2, +1): load 0.90 (and 3 others)"
            in lines)


def test_many_kinds_are_capped_and_verbose_lists_them_all():
    failing = {f"rule-{i:02d}": [f"n{i % 5}"] for i in range(30)}
    lines = summary_lines(report(1, failing=failing))
    rules = [line for line in lines if line.startswith("  rule     ")]
    assert len(rules) == 13 and rules[-1] == "  rule     ... and 18 more rules (-v lists all)"
    assert sum(line.startswith("  rule     ") for line in summary_lines(report(1, failing=failing),
                                                                          verbosity="verbose")) == 30


def test_quiet_line_counts_only_what_is_there():
    assert quiet_line(report(7)).startswith("tick 7: 5 nodes (online=5) in ")
    line = quiet_line(report(7, invalid={"n1": "expired"}, failing={"a": ["n1"], "b": ["n1", "n2"]},
                             actions=[Action("isolate", "n1", "x", "y", Severity.CRITICAL)]))
    assert "; licences: 1 invalid; 2 rules failing on 2 nodes; 1 new action in " in line


def test_the_quickstart_quiet_example_runs_as_written(tmp_path):
    page = (Path(__file__).resolve().parents[1] / "docs" / "quickstart.md").read_text()
    section = page[page.index("### How much a tick prints"):]
    command = re.search(r"```console\n\$ wyneos (.*?)\n```", section).group(1).split()
    expected = re.search(r"```text\n(.*?)```", section[section.index("```console"):], re.S).group(1).splitlines()
    for run_ in range(2):  # examples run twice in the same directory: the second carries on from tick 4
        out = subprocess.run([sys.executable, "-m", "wyneos_core.cli", *command], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("wyneos ") and lines[-1].startswith("stopped after 3 tick(s)")
        assert [line.split(":")[0] for line in lines[1:-1]] == [f"tick {3 * run_ + n}" for n in (1, 2, 3)]
        if run_ == 0:
            assert [re.sub(r"in [\d.]+ ms$", "", line) for line in lines[1:-1]] == \
                   [re.sub(r"in [\d.]+ ms$", "", line) for line in expected]


def test_a_reader_that_goes_away_ends_the_printing_not_the_run(tmp_path):
    """``wyneos run | head -1``: no traceback, exit 0, and every tick still decided and stored."""
    import sqlite3

    proc = subprocess.Popen([sys.executable, "-m", "wyneos_core.cli", "run", "--ticks", "3", "--interval", "0.5"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"wyneos ")
    proc.stdout.close()  # the reader goes away after one line, as `head -1` does
    try:
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err and "standard output was closed" in err
    with sqlite3.connect(tmp_path / ".wyneos" / "state.db") as db:
        assert db.execute("select max(tick) from ticks").fetchone() == (3,)
