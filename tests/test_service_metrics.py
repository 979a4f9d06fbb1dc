"""/metrics follows Prometheus' conventions (checked with promtool when it is installed,
else with the official client's parser), and the Grafana dashboard in docs/ asks only
for metrics a live server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service_helpers import Quarantine, make_service, wait_for, write_config
from wyneos_core import __version__
from wyneos_core.service.metrics import RENAMED
from wyneos_core.service.server import ServerThread

DOCS = Path(__file__).resolve().parents[1] / "docs"
TOKEN = "a-read-token-of-some-length-0123456789"
NODES = "nodes:\n  - {id: q1, metadata: {role: bad}}\n  - {id: q2}\n  - {id: q3}\n  - {id: q4}"


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> str:
    """One live scrape of a real server (read token set) after a few ticks, one node isolated."""
    tmp = tmp_path_factory.mktemp("metrics")
    service = make_service(write_config(tmp, extra=NODES), plugins=(Quarantine(),), read_token=TOKEN)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/metrics").status_code == 401  # the token is needed
        auth = {"authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: client.get("/healthz").json()["tick"] >= 3)
        return client.get("/metrics", headers=auth).text


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _exported_names(text: str) -> set[str]:
    """Every series name a query may use: sample names, and the names of declared
    families without samples yet (a counter with labels no event has used)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def test_promtool_or_the_client_parser_finds_nothing_to_fix(scrape: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
    families = _families(scrape)  # the official parser reads all of it
    for name, family in families.items():
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), name


def test_build_info_process_metrics_counters_and_non_overlapping_status(scrape: str) -> None:
    families = _families(scrape)
    [build] = families["wyneos_build_info"].samples
    assert build.value == 1 and build.labels["version"] == __version__
    assert families["process_cpu_seconds"].type == "counter" and families["process_resident_memory_bytes"].samples
    assert families["wyneos_ticks_missed"].type == "counter"  # only grows
    nodes = {s.labels["status"]: s.value for s in families["wyneos_nodes"].samples}
    assert "isolated" not in nodes and sum(nodes.values()) == 4  # each node in one status
    [isolated] = families["wyneos_nodes_isolated"].samples
    assert isolated.value == 1  # q1, also counted in its status
    assert all(s.value > 0 for s in families["wyneos_tick_duration_seconds"].samples if s.name.endswith("_count"))
    assert set(RENAMED) == {"wyneos_ticks_missed", 'wyneos_nodes{status="isolated"}'}
    assert "wyneos_ticks_missed " not in scrape and 'status="isolated"' not in scrape  # the old names are gone


def _queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_grafana_query_names_a_metric_the_server_exports(scrape: str) -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exported = _exported_names(scrape)
    queries = _queries(dashboard)
    assert len(queries) >= 15
    functions = {"sum", "by", "rate", "increase", "histogram_quantile", "topk", "max", "time", "le"}
    for query in queries:
        bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^]]*\]', " ", query)  # drop selectors, strings, ranges
        named = [w for w in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", bare) if w not in functions]
        metrics = [w for w in named if w.startswith(("wyneos_", "process_", "python_"))]
        assert metrics, f"a query naming no metric: {query}"
        missing = [m for m in metrics if m not in exported]
        assert not missing, f"{query}: {missing} not exported"
        assert set(named) - set(metrics) <= {"status", "tier", "reason", "type", "rule", "outcome", "plugin",
                                             "hook", "version"}, query
    for query in queries:  # nothing asks for what was renamed
        assert not re.search(r"\bwyneos_ticks_missed\b(?!_total)", query) and 'status="isolated"' not in query


def test_the_scrape_config_in_the_docs_is_valid(tmp_path: Path) -> None:
    page = (DOCS / "operations.md").read_text()
    [block] = re.findall(r"```yaml prometheus-scrape\n(.*?)```", page, re.S)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/test-deps.sh as root (installs Debian's prometheus)")
    for _ in range(2):  # twice in one directory, as a reader would
        (tmp_path / "wyneos-read-token").write_text(TOKEN)
        (tmp_path / "prometheus.yml").write_text(block)
        done = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
