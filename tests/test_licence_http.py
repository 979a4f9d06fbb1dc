"""The wyneos-licence-http source against a real HTTP licence API on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import FakeClock
from tests.test_licence_support import T0, Issuer, licence_config, orchestrator, reasons
from wyneos_core.config import ConfigError
from wyneos_core.licensing.sources import SourceUnavailable
from wyneos_core.model import Node

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "wyneos-licence-http"


@pytest.fixture
def http_plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    import wyneos_licence_http

    return wyneos_licence_http


class LicenceAPI:
    """A small licence API as the plugin's README documents it."""

    def __init__(self) -> None:
        self.licences: dict[str, dict] = {}  # licence ref -> {"status", "document"}
        self.mode = "ok"
        self.raw = b""  # the answer in mode "raw"
        self.delay = 0.0  # seconds before each answer
        self.trickle_done = threading.Event()
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append(body)
                api.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/licences/lookup":
                    return self._send(404, b"{}")
                if api.mode == "slow":
                    time.sleep(1.5)
                time.sleep(api.delay)
                if api.mode == "raw":
                    return self._send(200, api.raw)
                if api.mode == "trickle":  # headers at once, then one byte of the body every 0.2 s
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(100):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(0.2)
                        api.trickle_done.set()  # 20 s: far past the client's 1 s timeout
                    except OSError:
                        pass
                    return None
                if api.mode == "500":
                    return self._send(500, b'{"error": "boom"}')
                if api.mode == "malformed":
                    return self._send(200, b'{"licences": {"a": {"status": "act')
                if api.mode == "shape":
                    return self._send(200, json.dumps({"licences": {"a": {"status": "weird"}}}).encode())
                answer = {n["id"]: api.licences.get(n["licence"]) for n in body["nodes"]}
                self._send(200, json.dumps({"licences": answer}).encode())

            def _send(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    server = LicenceAPI()
    yield server
    server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_source_batches_nodes_and_returns_records(http_plugin, api, tmp_path, monkeypatch):
    issuer = Issuer(tmp_path)
    api.licences["L1"] = {"status": "active", "document": issuer.licence("L1")}
    api.licences["L2"] = {"status": "suspended", "document": json.dumps(issuer.licence("L2"))}
    monkeypatch.setenv("LICENCE_TOKEN", "s3cret")
    src = http_plugin.HttpLicenceSource(api.url, batch=2, token="s3cret")
    nodes = [Node("a", licence_ref="L1"), Node("b", licence_ref="L2"), Node("c", licence_ref="nope")]
    got = src.lookup_many(nodes, T0)
    assert got["c"] is None and got["a"].status == "active" and got["b"].status == "suspended"
    assert json.loads(got["a"].document)["payload"]["licence_id"] == "L1"
    assert [len(r["nodes"]) for r in api.requests] == [2, 1]
    assert api.requests[0]["nodes"][0] == {"id": "a", "licence": "L1", "fingerprint": None}
    assert set(api.auth) == {"Bearer s3cret"}


@pytest.mark.parametrize("mode,match", [("500", "HTTP 500"), ("malformed", "malformed JSON"),
                                        ("slow", "no complete answer within 0.3s"), ("shape", "expected {status, document}")])
def test_failures_are_source_unavailable(http_plugin, api, mode, match):
    api.mode = mode
    # the short timeout only where it is what is tested: an answer at once must not be cut
    # by it on a loaded machine (it was, once: "malformed" read as "no complete answer")
    src = http_plugin.HttpLicenceSource(api.url, timeout=0.3 if mode == "slow" else 10.0)
    with pytest.raises(SourceUnavailable, match=match):
        src.lookup_many([Node("a", licence_ref="L1")], T0)


def test_unreachable_is_source_unavailable(http_plugin):
    src = http_plugin.HttpLicenceSource(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    with pytest.raises(SourceUnavailable, match="unreachable"):
        src.lookup(Node("a"), T0)
    with pytest.raises(ValueError, match="http"):
        http_plugin.HttpLicenceSource("ftp://example.invalid")


def test_in_ticks_outages_follow_the_policy_and_the_report_says_so(http_plugin, api, tmp_path, clock):
    issuer = Issuer(tmp_path)
    api.licences["L1"] = {"status": "active", "document": issuer.licence("L1")}
    config = licence_config(
        tmp_path, [{"id": "a", "licence": "L1"}, {"id": "b", "licence": "L1"}],
        "sources: [http]\ncache_ttl: 0\noutage: {policy: fail-open, grace: 60}\n",
        extra=f"plugins: {{settings: {{licence-http: {{url: '{api.url}', timeout: 0.3}}}}}}\n",
    )
    orch = orchestrator(config, clock, (http_plugin,))
    assert reasons(orch.tick()) == {"a": "ok", "b": "ok"}
    assert len(api.requests) == 1  # one batch for the whole cluster
    for mode in ("500", "malformed", "slow"):
        api.mode = mode
        clock.advance(10)
        report = orch.tick()
        assert all(r.valid and r.in_grace and r.reason == "source_unavailable" for r in report.licences.values())
        assert any("policy fail-open" in n for n in report.notes), report.notes
        # the API down for every node is the orchestrator's side: licence actions freeze, and it says so
        assert [e.kind for e in report.errors] == ["licence_safety_stop"], report.errors
    clock.advance(61)
    report = orch.tick()
    assert all(not r.valid and "grace of 60s is over" in r.detail for r in report.licences.values())
    api.mode = "ok"
    clock.advance(1)
    assert reasons(orch.tick()) == {"a": "ok", "b": "ok"}


def test_cache_keeps_the_api_from_being_asked_every_tick(http_plugin, api, tmp_path, clock):
    issuer = Issuer(tmp_path)
    api.licences["L1"] = {"status": "active", "document": issuer.licence("L1")}
    config = licence_config(tmp_path, [{"id": "a", "licence": "L1"}], "sources: [http]\ncache_ttl: 60\n",
                            extra=f"plugins: {{settings: {{licence-http: {{url: '{api.url}'}}}}}}\n")
    orch = orchestrator(config, clock, (http_plugin,))
    for _ in range(5):  # 20 s: less than the shortest staggered lifetime (half the ttl)
        assert orch.tick().licences["a"].valid
        clock.advance(5)
    assert len(api.requests) == 1
    clock.advance(60)
    orch.tick()
    assert len(api.requests) == 2


def test_a_trickling_server_cannot_hold_the_lookup_past_its_timeout(http_plugin, api):
    api.mode = "trickle"
    src = http_plugin.HttpLicenceSource(api.url, timeout=1.0)
    with pytest.raises(SourceUnavailable, match="no complete answer within 1s"):
        src.lookup_many([Node("a", licence_ref="L1")], T0)
    # cut off while the server was still trickling (it needs 20 s for the whole answer)
    assert not api.trickle_done.is_set()


def test_a_slow_api_costs_at_most_the_deadline_per_tick(http_plugin, api, tmp_path):
    issuer = Issuer(tmp_path)
    api.licences["L1"] = {"status": "active", "document": issuer.licence("L1")}
    api.delay = 0.3
    src = http_plugin.HttpLicenceSource(api.url, timeout=1.5, batch=1, deadline=1.5)
    nodes = [Node(f"n{i}", licence_ref="L1") for i in range(20)]
    got = src.lookup_many(nodes, T0)
    # 20 batches of 0.3 s each need 6 s: the deadline stopped asking after a few of them
    assert 1 <= len(got) < 20 and all(r is not None for r in got.values())  # the rest: unanswered this tick
    assert len(got) <= len(api.requests) <= len(got) + 1 < 20  # at most one more asked, cut by the deadline


def test_hostile_documents_in_an_answer_are_malformed_for_their_node_only(http_plugin, api, tmp_path, clock):
    issuer = Issuer(tmp_path)
    good = json.dumps(issuer.licence("L1"))
    big = good.replace('"grace_days": 0', '"grace_days": ' + "7" * 5000)
    deep = '{"format": "wyneos.licence/1", "payload": ' + "[" * 5000 + "]" * 5000 + ', "signature": "x"}'
    surrogate = json.dumps(good.replace('"customer": "acme"', '"customer": "\\ud800"'))
    api.mode = "raw"
    api.raw = ('{"licences": {"ok": {"status": "active", "document": %s}, "big": {"status": "active", "document": '
               '%s}, "deep": {"status": "active", "document": %s}, "sur": {"status": "active", "document": %s}}}'
               % (good, big, json.dumps(deep), surrogate)).encode()
    config = licence_config(tmp_path, [{"id": n} for n in ("ok", "big", "deep", "sur")], "sources: [http]\n",
                            extra=f"plugins: {{settings: {{licence-http: {{url: '{api.url}'}}}}}}\n")
    report = orchestrator(config, clock, (http_plugin,)).tick()
    assert reasons(report) == {"ok": "ok", "big": "malformed", "deep": "malformed", "sur": "malformed"}
    assert "document.payload.grace_days: an integer of 5000 digits" in report.licences["big"].detail
    assert "nested 5001 levels deep" in report.licences["deep"].detail
    assert "[sur]: payload.customer: not valid Unicode text" in report.licences["sur"].detail
    # a whole answer nested too deep is an outage of the source, not a crash
    api.raw = b'{"licences": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    src = http_plugin.HttpLicenceSource(api.url, timeout=2.0)
    with pytest.raises(SourceUnavailable, match="malformed JSON in response .*nested"):
        src.lookup_many([Node("ok")], T0)


@pytest.mark.parametrize("settings,match,field", [
    ({"url": "http://127.0.0.1:9", "timeout": "abc"}, "expected a number, got 'abc'", "timeout"),
    ({"url": "http://127.0.0.1:9", "batch": 0}, "must be at least 1, got 0", "batch"),
    ({"url": "http://127.0.0.1:9", "deadline": -1}, "must be above 0, got -1", "deadline"),
    ({"url": "ftp://x"}, "'ftp://x' does not match", "url"),
    ({"url": "http://127.0.0.1:9", "tiemout": 3}, "unknown field 'tiemout'; did you mean 'timeout'?", "tiemout"),
])
def test_bad_settings_are_refused_before_the_first_tick_naming_the_setting(http_plugin, tmp_path, clock, settings,
                                                                             match, field):
    with pytest.raises(ValueError, match=f"licence-http.{field}"):
        http_plugin.source_from_settings(settings)
    config = licence_config(tmp_path, [{"id": "a"}], "sources: [http, file]\n",
                            extra="plugins: {settings: {licence-http: %s}}\n" % json.dumps(settings))
    with pytest.raises(ConfigError) as info:
        orchestrator(config, clock, (http_plugin,))
    # the setting's own error, not "no source named http" besides it
    [error] = info.value.errors
    assert error.field == f"plugins.settings.licence-http.{field}" and error.line == 7 and error.column
    assert match in error.reason
