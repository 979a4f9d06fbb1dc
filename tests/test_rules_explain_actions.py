"""``wyneos explain`` explains actions: the rule or licence code behind each, since when
(from the state file of a real ``wyneos run``, read only) and what clears it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path


def wyneos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_explain_says_why_since_when_and_what_clears_each_action(tmp_path):
    wyneos("run", "--ticks", "3", "--interval", "0.05", "-q", cwd=tmp_path)
    state = tmp_path / ".wyneos" / "state.db"
    before = digest(state)
    started = dict(sqlite3.connect(state).execute("SELECT tick, started_at FROM ticks"))

    data = json.loads(wyneos("explain", "--node", "node-11", "--json", cwd=tmp_path).stdout)
    (isolate,) = data["actions"]
    assert isolate["type"] == "isolate" and isolate["status"] == "in_force"
    assert isolate["cause"]["kind"] == "licence" and isolate["cause"]["licence_code"] == "no_licence"
    assert isolate["cause"]["rule"] == "licence-enforcement/isolate-unlicensed"
    assert isolate["rule_condition"] == 'licence.reason == "no_licence"'
    assert isolate["since_source"] == "state file" and isolate["since_tick"] == 1
    assert isolate["since"] == started[1]  # when tick 1 of the run started
    assert isolate["clears"].startswith("clears when the node's licence is no longer no_licence (now: no_licence)")
    assert "reinstated once it has been online for its probation" in isolate["clears"]

    text = wyneos("explain", "--node", "node-05", cwd=tmp_path).stdout
    section = text[text.index("\nactions on node-05:"):]
    assert "  quarantine (critical), in force since tick 1 (state file, " in section
    assert "    why: rule version-floor fails on the node\n" in section
    assert ('    rule: licence-enforcement/quarantine-below-version-floor: when violated("version-floor")'
            in section)
    assert "    clears when rule version-floor stops firing on the node" in section

    assert wyneos("explain", "--node", "node-01", cwd=tmp_path).stdout.endswith("\nactions on node-01: none\n")
    assert digest(state) == before, "explain wrote to the state file"


def test_without_a_state_file_since_is_the_tick_of_this_run(tmp_path):
    data = json.loads(wyneos("explain", "--node", "node-11", "--ticks", "2", "--json", cwd=tmp_path).stdout)
    (isolate,) = data["actions"]
    assert (isolate["since_source"], isolate["since_tick"], isolate["since"]) == ("this run", 1, None)
    assert not (tmp_path / ".wyneos" / "state.db").exists()


def test_an_action_held_back_says_so(tmp_path):
    (tmp_path / "c.yaml").write_text("""
nodes:
  - {id: a, metadata: {region: eu, version: "2.4.1"}}
  - {id: b, metadata: {region: eu, version: "2.4.1"}}
  - {id: c, metadata: {region: eu, version: "2.4.1"}}
licence: {sources: [file], directory: lic, trusted_keys: [], customer: acme}
rulesets: {paths: ["builtin:"]}
plugins: {disable: [governance, healing, enforcement]}
decide: {max_isolations_per_tick: 1, max_unhealthy_fraction: 1.0}
enforcement: {licence: enforce}  # without a trusted key licences are audited unless told
state: {path: s.db}
""")
    (tmp_path / "lic").mkdir()
    data = json.loads(wyneos("explain", "--node", "c", "--config", "c.yaml", "--json", cwd=tmp_path).stdout)
    (held,) = data["actions"]
    assert held["status"] == "deferred" and held["detail"] == "decide.max_isolations_per_tick reached"
    assert held["cause"]["licence_code"] == "no_licence" and held["clears"] is None
    text = wyneos("explain", "--node", "c", "--config", "c.yaml", cwd=tmp_path).stdout
    assert "  isolate (critical), deferred: decide.max_isolations_per_tick reached\n" in text


def test_the_rulesets_page_example_runs_as_written(tmp_path):
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "rulesets.md").read_text()
    command = re.search(r"```console\n\$ wyneos (explain .*?)\n```", page).group(1).split()
    expected = re.search(r"```text\n(actions on .*?)```", page, re.S).group(1)
    date = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    for _ in range(2):  # twice in the same directory, as every docs example
        wyneos("run", "--ticks", "3", "--interval", "0.05", "-q", cwd=tmp_path)
        out = wyneos(*command, cwd=tmp_path).stdout
        got = out[out.index("actions on "):]
        assert re.sub(date, "DATE", got) == re.sub(date, "DATE", expected)
