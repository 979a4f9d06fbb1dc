from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from tests.conftest import beat, cluster_yaml
from tests.plugins import badarg, misnamed, raising, unmarked
from tests.venvtools import make_venv, pip_install, run_in
from wyneos_core import hookimpl
from wyneos_core.plugins import BUILTIN_PLUGINS, PluginLoadError, PluginManager

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_builtins_register_through_the_same_path_and_are_listed():
    pm = PluginManager()
    pm.load_builtins()
    infos = {i.name: i for i in pm.plugin_infos()}
    assert list(BUILTIN_PLUGINS) == [n for n in infos if n in BUILTIN_PLUGINS]
    assert infos["decide"].hooks == ["wyneos_decide"]
    assert "wyneos_deliver" in infos["propagate"].hooks
    assert infos["heartbeat"].origin == "builtin"


def test_plugin_with_unknown_hook_is_refused_naming_plugin_and_hook():
    pm = PluginManager()
    with pytest.raises(PluginLoadError) as info:
        pm.register(misnamed, "misnamed")
    assert "plugin 'misnamed'" in str(info.value) and "'wyneos_governence'" in str(info.value)
    assert pm.get_plugin("misnamed") is None


def test_plugin_asking_for_missing_argument_is_refused_naming_the_argument():
    pm = PluginManager()
    with pytest.raises(PluginLoadError) as info:
        pm.register(badarg, "badarg")
    msg = str(info.value)
    assert "plugin 'badarg'" in msg and "'wyneos_healing'" in msg and "weather" in msg
    assert "it passes: ctx, nodes, licences, results" in msg


def test_unmarked_hook_function_is_refused():
    pm = PluginManager()
    with pytest.raises(PluginLoadError, match="not marked with @wyneos_core.hookimpl"):
        pm.register(unmarked, "unmarked")


def test_essential_builtins_cannot_be_disabled():
    with pytest.raises(PluginLoadError, match="'decide' is essential"):
        PluginManager().load_builtins(disable=["decide"])


def test_raising_plugin_is_recorded_and_the_tick_goes_on(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(4), plugins=[raising])
    beat(orch, clock, "n01", "n02", "n03", "n04", load=0.95)
    report = orch.tick()
    errors = {(e.plugin, e.hook, e.kind): e.error for e in report.errors}
    assert "rule database unavailable" in errors[("tests.plugins.raising", "wyneos_governance", "exception")]
    assert "returned str" in errors[("tests.plugins.raising", "wyneos_healing", "invalid_result")]
    # the builtins still did their work in the same tick
    assert report.rule_summary["load-threshold"] == {"passed": 0, "failed": 4}
    assert {a.type for a in report.actions} == {"reduce_load"}
    assert json.dumps(report.to_dict())


def test_plugin_over_budget_is_recorded(make_orchestrator, clock):
    class Slow:
        @hookimpl
        def wyneos_governance(self, ctx):
            import time

            time.sleep(0.05)
            return []

    orch = make_orchestrator(cluster_yaml(2), plugins=[Slow()], sections={"tick": {"plugin_budget": 0.01}})
    orch.pm.budget = 0.01
    report = orch.tick()
    # on a loaded machine a builtin may overrun 10 ms too: only overruns are recorded, and the slow one is
    assert {e.kind for e in report.errors} == {"budget"}
    [slow] = [e for e in report.errors if e.hook == "wyneos_governance" and orch.pm.origins.get(e.plugin) != "builtin"]
    assert "over its budget" in slow.error


def test_disabled_builtin_does_not_run(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(3, disable="[licence, governance]"))
    beat(orch, clock, "n01", "n02", "n03", load=0.99)
    report = orch.tick()
    assert report.rule_summary == {}
    assert orch.pm.get_plugin("governance") is None


def test_trace_prints_every_hook_call(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(2))
    out = io.StringIO()
    orch.pm.trace_file = out
    orch.tick()
    text = out.getvalue()
    for hook in ("wyneos_heartbeat", "wyneos_governance", "wyneos_decide", "wyneos_propagate", "wyneos_tick_report"):
        assert re.search(rf"-> {hook} \[\w+\]", text), hook
        assert re.search(rf"<- {hook} \[\w+\] [0-9.]+ms", text), hook


def _doc_files(doc: Path) -> dict[str, str]:
    """Code blocks preceded by ``<!-- file: NAME -->`` in a markdown page."""
    pattern = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.S)
    return {name: body for name, body in pattern.findall(doc.read_text())}


@pytest.mark.slow
def test_docs_example_plugin_installs_and_runs(tmp_path):
    files = _doc_files(DOCS / "writing-plugins.md")
    assert set(files) == {"pyproject.toml", "wyneos_owner_check.py", "wyneos.yaml"}
    dist = tmp_path / "wyneos-owner-check"
    dist.mkdir()
    for name in ("pyproject.toml", "wyneos_owner_check.py"):
        (dist / name).write_text(files[name])
    work = tmp_path / "work"
    work.mkdir()
    (work / "wyneos.yaml").write_text(files["wyneos.yaml"])

    python = make_venv(tmp_path / "venv")
    before = run_in(python, "plugins", "--json", "--config", "wyneos.yaml", cwd=work)
    assert before.returncode == 0, before.stderr
    assert "owner-check" not in {p["name"] for p in json.loads(before.stdout)}

    pip_install(python, dist)
    listed = run_in(python, "plugins", "--json", "--config", "wyneos.yaml", cwd=work)
    assert listed.returncode == 0, listed.stderr
    plugin = {p["name"]: p for p in json.loads(listed.stdout)}["owner-check"]
    assert plugin["version"] == "1.2.0"
    assert plugin["origin"] == "entry point (wyneos-owner-check)"
    assert plugin["hooks"] == ["wyneos_enforcement", "wyneos_governance", "wyneos_tick_report"]

    ran = run_in(python, "run", "--ticks", "3", "--interval", "0.01", "--config", "wyneos.yaml", cwd=work)
    assert ran.returncode == 0, ran.stderr
    assert "has-owner: failing on 1 node, 1 new (web-2)" in ran.stdout
    assert "quarantine (warning) by owner-check (web-2)" in ran.stdout  # third tick without an owner
    assert ran.stdout.splitlines()[0].endswith("; installed plugins: owner-check 1.2.0")  # it changes the run
    log = (work / "owner-check.log").read_text().splitlines()
    assert log == [f"tick {i}: 1 node(s) without owner" for i in (1, 2, 3)]
    # the page's example again in the same directory: it carries on from the state it left
    again = run_in(python, "run", "--ticks", "3", "--interval", "0.01", "--config", "wyneos.yaml", cwd=work)
    assert again.returncode == 0, again.stderr
    assert (work / "owner-check.log").read_text().splitlines()[3:] == \
           [f"tick {i}: 1 node(s) without owner" for i in (4, 5, 6)]

    disabled = run_in(python, "tick", "--config", "wyneos.yaml", "--disable", "owner-check", cwd=work)
    assert disabled.returncode == 0 and "has-owner" not in disabled.stdout

    # a broken plugin distribution is refused at load time, naming plugin, hook and argument
    (dist / "wyneos_owner_check.py").write_text(files["wyneos_owner_check.py"].replace(
        "def wyneos_enforcement(ctx, results):", "def wyneos_enforcement(ctx, results, weather):"))
    pip_install(python, dist)
    broken = run_in(python, "tick", "--config", "wyneos.yaml", cwd=work)
    assert broken.returncode == 2
    assert "plugin 'owner-check'" in broken.stderr and "'wyneos_enforcement'" in broken.stderr
    assert "weather" in broken.stderr
