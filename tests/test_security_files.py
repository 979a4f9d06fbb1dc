"""Hostile files (issue 9, breaks 6 and 9): FIFOs, /dev/zero behind a symlink, huge
sparse files, 5,000-digit integers and lone surrogates in config, rulesets, scenarios
and the licence directory; a licence source that hangs is cut at its deadline."""

from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc

import pytest

from tests.conftest import FakeClock
from tests.test_licence_support import T0, Issuer, licence_config, orchestrator
from wyneos_core import hookimpl
from wyneos_core.config import ConfigError, load_config
from wyneos_core.licensing.sources import FileSource, LicenceRecord
from wyneos_core.rules.loader import RulesetError, load_ruleset
from wyneos_core.safeio import FileRefused, read_regular_file
from wyneos_core.simulate.scenario import load_scenario
from wyneos_core.yamlio import LocatedError


def bounded(fn, *args, timeout: float = 20.0):
    """``fn(*args)`` on a thread; fails the test (instead of hanging it) past ``timeout``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def hostile_files(tmp_path, suffix: str) -> dict[str, str]:
    """name -> path of: a FIFO, a symlink to /dev/zero, a directory, a 64 MB sparse file."""
    out = {}
    fifo = tmp_path / f"fifo{suffix}"
    os.mkfifo(fifo)
    out["fifo"] = str(fifo)
    zero = tmp_path / f"zero{suffix}"
    zero.symlink_to("/dev/zero")
    out["dev-zero"] = str(zero)
    directory = tmp_path / f"dir{suffix}"
    directory.mkdir()
    out["directory"] = str(directory)
    sparse = tmp_path / f"sparse{suffix}"
    with open(sparse, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    out["sparse"] = str(sparse)
    return out


EXPECTED = {"fifo": "not a regular file (a FIFO)", "dev-zero": "not a regular file (a character device)",
            "directory": "not a regular file (a directory)", "sparse": "larger than"}


def test_the_shared_reader_refuses_before_reading_and_never_blocks(tmp_path):
    for kind, path in hostile_files(tmp_path, ".bin").items():
        tracemalloc.start()
        with pytest.raises(FileRefused) as err:
            bounded(read_regular_file, path, 1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert EXPECTED[kind] in err.value.strerror, kind
        assert peak < 4 * 1024 * 1024, (kind, peak)  # the 64 MB file was never read
    small = tmp_path / "ok.bin"
    small.write_bytes(b"x" * 100)
    assert read_regular_file(small, 100) == b"x" * 100
    with pytest.raises(FileRefused):
        read_regular_file(small, 99)


def test_config_ruleset_and_scenario_files_are_refused_clearly(tmp_path):
    for kind, path in hostile_files(tmp_path, ".yaml").items():
        for load, error in ((load_config, ConfigError), (load_ruleset, RulesetError), (load_scenario, LocatedError)):
            tracemalloc.start()
            with pytest.raises(error) as err:
                bounded(load, path)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert path in str(err.value) and EXPECTED[kind] in str(err.value), (load.__name__, kind, str(err.value))
            assert peak < 8 * 1024 * 1024, (load.__name__, kind, peak)


def test_huge_integers_and_lone_surrogates_in_yaml_name_file_line_and_field(tmp_path):
    path = tmp_path / "wyneos.yaml"
    path.write_text("cluster: lab\nheartbeat:\n  max_nodes: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}:3:" in text and "heartbeat.max_nodes" in text and "5000 characters" in text
    assert "9" * 200 not in text  # the value is not echoed
    path.write_text('cluster: "lab\\ud800"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:1:" in str(err.value) and "cluster: not valid Unicode" in str(err.value)
    path.write_text('cluster: lab\nnodes:\n  - {id: a, metadata: {"\\udc00": 1}}\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:3:" in str(err.value) and "not valid Unicode" in str(err.value)
    ruleset = tmp_path / "r.yaml"
    ruleset.write_text('ruleset: r\nstage: enforcement\nrules:\n  - id: x\n    description: "\\ud800"\n'
                       '    when: "true"\n    then: {type: alert, reason: x}\n')
    with pytest.raises(RulesetError) as err:
        load_ruleset(ruleset)
    assert f"{ruleset}:5:" in str(err.value) and "rules[0].description" in str(err.value)


class _SourcePlugin:
    __wyneos_name__ = "test-sources"

    def __init__(self, *sources):
        self.sources = sources

    @hookimpl
    def wyneos_licence_sources(self, config):
        return list(self.sources)


class HangingSource:
    """A licence source whose answers hang until released."""

    def __init__(self, record: LicenceRecord) -> None:
        self.name = "remote"
        self.record = record
        self.release = threading.Event()
        self.calls = 0

    def lookup_many(self, nodes, now):
        self.calls += 1
        self.release.wait(60)
        return {n.id: self.record for n in nodes}

    def lookup(self, node, now):
        return self.record


def test_a_hanging_licence_source_is_cut_at_its_deadline(tmp_path):
    issuer = Issuer(tmp_path)
    clock = FakeClock(T0)
    src = HangingSource(LicenceRecord(json.dumps(issuer.licence("l")).encode(), "remote"))
    config = licence_config(tmp_path, [{"id": "a"}], "sources: [remote]\ncache_ttl: 0\nsource_timeout: 0.2\n"
                                                    "outage: {policy: fail-closed}\n")
    orch = orchestrator(config, clock, (_SourcePlugin(src),))
    for _ in range(3):  # each tick ends; while the first call hangs the source is not asked again
        report = bounded(orch.tick)
        assert report.licences["a"].reason == "source_unavailable"
        assert any("remote" in n and "unavailable" in n for n in report.notes)
        clock.advance(1)
    assert src.calls == 1
    src.release.set()
    for _ in range(50):  # the hanging call returns; then the source answers again
        time.sleep(0.02)
        clock.advance(1)
        if bounded(orch.tick).licences["a"].reason == "ok":
            break
    assert orch.last_report.licences["a"].reason == "ok"


def test_the_licence_directory_reads_only_regular_files_without_blocking(tmp_path):
    issuer = Issuer(tmp_path)
    directory = tmp_path / "licences"
    issuer.write(directory, "good")
    os.mkfifo(directory / "fifo.licence")
    (directory / "zero.licence").symlink_to("/dev/zero")
    with open(directory / "huge.licence", "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    source = FileSource(directory, rescan=0)
    tracemalloc.start()
    bounded(source.refresh, T0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    records = {os.path.basename(r.origin): r for r in source.records()}
    assert records["good.licence"].error == ""
    assert "not a regular file" in records["fifo.licence"].error
    assert "not a regular file" in records["zero.licence"].error
    assert "larger than" in records["huge.licence"].error
    # in a tick: the node naming the FIFO gets a malformed licence, the tick goes on
    config = licence_config(tmp_path, [{"id": "a", "licence": "good"}, {"id": "b", "licence": "fifo"}])
    report = bounded(orchestrator(config, FakeClock(T0)).tick)
    assert report.licences["a"].reason == "ok"
    assert report.licences["b"].reason == "malformed" and "not a regular file" in report.licences["b"].detail


def test_a_fifo_in_the_licence_directory_never_stalls_wyneos_serve_and_sigterm_is_prompt(tmp_path):
    import re
    import signal
    import subprocess
    import sys
    import time

    import httpx

    issuer = Issuer(tmp_path)
    issuer.write(tmp_path / "licences", "good", issued=time.time() - 86400, expires=time.time() + 30 * 86400)
    os.mkfifo(tmp_path / "licences" / "stuck.licence")
    (tmp_path / "licences" / "zero.licence").symlink_to("/dev/zero")
    (tmp_path / "c.yaml").write_text(
        "cluster: fifo\ntick: {interval: 0.2}\n"
        "heartbeat: {interval: 1, stale_after: 100, offline_after: 200}\n"
        "licence: {directory: licences, trusted_keys: [keys], rescan: 0, customer: acme}\n"
        "state: {path: state.db}\nreport: {stdout: none, json_path: null}\n"
        "nodes:\n  - {id: a, licence: good}\n  - {id: b, licence: stuck}\n  - {id: c, licence: zero}\n")
    server = subprocess.Popen([sys.executable, "-m", "wyneos_core.cli", "serve", "--config", "c.yaml", "--port", "0"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(200):  # ticks go on (the FIFO used to hang the first one for ever)
                health = client.get("/healthz").json()
                if health["tick"] >= 3:
                    break
                time.sleep(0.05)
            assert health["tick"] >= 3 and health["status"] == "ok"
            report = client.get("/v1/ticks/latest").json()
        licences = {r["node_id"]: r for r in report["licences"]}
        assert licences.get("a", {"reason": "ok"})["reason"] == "ok"
        assert licences["b"]["reason"] == "malformed"
        assert "not a regular file" in licences["c"]["detail"] and "zero.licence" in licences["c"]["detail"]
        assert "stuck.licence" in licences["b"]["detail"]
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0  # prompt: well inside the 30 s an orchestrator manager waits
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        server.stdout.close()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "sparse"])
def test_hot_reload_refuses_a_hostile_ruleset_file_and_the_tick_goes_on(tmp_path, kind):
    from tests.conftest import beat
    from tests.test_rules_plugin import _make

    clock = FakeClock(T0)
    orch = _make(clock, tmp_path)
    gov = tmp_path / "gov.yaml"
    with orch:
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.3)
        assert orch.tick().rule_summary["has-region"]["failed"] == 4
        gov.unlink()
        if kind == "fifo":
            os.mkfifo(gov)
        elif kind == "dev-zero":
            gov.symlink_to("/dev/zero")
        else:
            with open(gov, "wb") as fh:
                fh.truncate(64 * 1024 * 1024)
        clock.advance(5)
        beat(orch, clock, "n01", "n02", "n03", "n04", load=0.3)
        tracemalloc.start()
        report = bounded(orch.tick)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 * 1024 * 1024, peak  # the 64 MB file (or /dev/zero) was never read
        refused = [n for n in report.notes if "invalid edit" in n]
        assert refused and "gov.yaml" in refused[0] and EXPECTED[kind] in refused[0], report.notes
        assert report.rule_summary["has-region"]["failed"] == 4  # the last good version still runs


def test_the_licence_ledger_and_revocation_list_are_read_without_blocking(tmp_path):
    from wyneos_core.licensing.envelope import FormatError
    from wyneos_core.licensing.ledger import Ledger
    from wyneos_core.licensing.revocation import RevocationList

    for kind, path in hostile_files(tmp_path, ".json").items():
        if kind == "directory":
            continue
        with pytest.raises(ValueError) as err:
            bounded(Ledger, path)
        assert EXPECTED[kind] in str(err.value), (kind, str(err.value))
        with pytest.raises(FormatError) as err:
            bounded(RevocationList.load, path, {})
        assert EXPECTED[kind] in str(err.value), (kind, str(err.value))
