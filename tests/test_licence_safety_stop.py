"""The orchestrator never punishes the fleet for its own fault: when every licensed node's
licence fails for one orchestrator-side reason (every key untrusted, every source down),
licence actions freeze, and the report, the service log, /healthz and /metrics say why."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from tests.conftest import FakeClock
from tests.test_licence_engine import SourcePlugin, StaticSource
from tests.test_licence_support import DAY, T0, Issuer, beat_all, licence_config, orchestrator, reasons
from wyneos_core.licensing.sources import LicenceRecord

NODES = [{"id": f"n{i}"} for i in range(4)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def licence_actions(report) -> list[tuple[str, str]]:  # noqa: ANN001
    return sorted((a.type, a.target) for a in report.actions if "licence_reason" in a.params)


def stop_errors(report) -> list[str]:  # noqa: ANN001
    return [e.error for e in report.errors if e.kind == "licence_safety_stop"]


def cluster(tmp_path, clock):  # noqa: ANN001
    issuer = Issuer(tmp_path)
    good = json.dumps(issuer.licence("good")).encode()
    old = json.dumps(issuer.licence("old", issued=T0 - 60 * DAY, expires=T0 - 30 * DAY)).encode()  # n3's licence expired long ago
    records = {f"n{i}": LicenceRecord(good, "api") for i in range(3)} | {"n3": LicenceRecord(old, "api")}
    api = StaticSource("api", records)
    config = licence_config(tmp_path, NODES, "sources: [api]\ncache_ttl: 0\noutage: {policy: fail-closed}\n",
                            extra="decide: {keep_firing_ticks: 1}\n")
    return api, orchestrator(config, clock, (SourcePlugin(api),))


def test_every_source_failing_freezes_licence_actions_and_says_why(tmp_path, clock):
    api, orch = cluster(tmp_path, clock)
    beat_all(orch, clock)
    report = orch.tick()
    assert reasons(report) == {"n0": "ok", "n1": "ok", "n2": "ok", "n3": "expired"}
    assert licence_actions(report) == [("isolate", "n3")] and not stop_errors(report)

    api.down = True  # the licence API goes away: every node's licence is source_unavailable
    for _ in range(4):  # longer than keep_firing_ticks: nothing in force is cleared either
        clock.advance(5)
        beat_all(orch, clock)
        report = orch.tick()
        assert set(reasons(report).values()) == {"source_unavailable"}
        assert licence_actions(report) == []  # no quarantine of the whole fleet
        [why] = stop_errors(report)
        assert "all 4 licensed node(s) failed with source_unavailable" in why and "licence.sources" in why
        assert why.startswith("licence safety stop: the licences of all 4")
        assert orch.registry["n3"].isolated  # the isolation for a real reason stays in force
        assert not any(orch.registry[f"n{i}"].isolated or orch.registry[f"n{i}"].metadata.get("restrictions")
                       for i in range(3))

    api.down = False
    clock.advance(5)
    beat_all(orch, clock)
    report = orch.tick()
    assert not stop_errors(report) and any("licence safety stop lifted" in n for n in report.notes)
    assert orch.registry["n3"].isolated


def test_every_licence_signed_by_an_untrusted_key_freezes_licence_actions(tmp_path, clock):
    issuer = Issuer(tmp_path)
    for i in range(3):
        issuer.write(tmp_path / "licences", f"l{i}")
    issuer.public_path.unlink()  # the trusted key file is gone from the trusted directory
    config = licence_config(tmp_path, [{"id": f"n{i}", "licence": f"l{i}"} for i in range(3)] + [{"id": "bare"}])
    orch = orchestrator(config, clock)
    beat_all(orch, clock)
    report = orch.tick()
    assert reasons(report) == {"n0": "unknown_key", "n1": "unknown_key", "n2": "unknown_key", "bare": "no_licence"}
    [why] = stop_errors(report)
    assert "all 3 licensed node(s) failed with unknown_key" in why and "licence.trusted_keys" in why
    # the node that names no licence is not the keys' business: its isolation goes ahead
    assert licence_actions(report) == [("isolate", "bare")]


def test_one_bad_licence_among_good_ones_is_enforced_as_usual(tmp_path, clock):
    other = Issuer(tmp_path, "stranger")
    issuer = Issuer(tmp_path)
    issuer.write(tmp_path / "licences", "l0")
    other.write(tmp_path / "licences", "l1")
    other.public_path.unlink()
    config = licence_config(tmp_path, [{"id": "n0", "licence": "l0"}, {"id": "n1", "licence": "l1"}])
    orch = orchestrator(config, clock)
    beat_all(orch, clock)
    report = orch.tick()
    assert reasons(report) == {"n0": "ok", "n1": "unknown_key"}
    assert not stop_errors(report) and licence_actions(report) == [("isolate", "n1")]


def test_the_service_reports_the_stop_in_healthz_metrics_and_log(tmp_path, caplog):
    from service_helpers import make_service

    from wyneos_core.service.server import ServerThread

    issuer = Issuer(tmp_path)
    for i in range(2):
        issuer.write(tmp_path / "licences", f"l{i}")
    issuer.public_path.unlink()
    licence_config(tmp_path, [{"id": f"n{i}", "licence": f"l{i}"} for i in range(2)],
                   extra="tick: {interval: 0.2}\nstate: {path: state.db}\n")
    service = make_service(tmp_path / "wyneos.yaml")
    with caplog.at_level(logging.INFO, logger="wyneos.service"), ServerThread(service) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while (health := client.get("/healthz").json())["tick"] < 3:
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert "failed with unknown_key" in health["licence_safety_stop"], health
        assert health["status"] == "ok"  # the service itself is alive
        metrics = client.get("/metrics").text
        assert 'wyneos_licence_safety_stop{reason="unknown_key"} 1.0' in metrics
        assert 'wyneos_licence_safety_stop{reason="source_unavailable"} 0.0' in metrics
    stops = [r for r in caplog.records if "licence safety stop" in r.getMessage()]
    assert len(stops) == 1 and stops[0].levelno == logging.ERROR  # logged when it starts, not every tick
