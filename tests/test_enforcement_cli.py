"""The operator commands against a real server (write token from a file, refused
without it) and against a config's state file; shadow and explain name what held."""

from __future__ import annotations

import json

from enforcement_helpers import hot
from service_helpers import make_service, write_config

from wyneos_core.cli import main
from wyneos_core.enforcement.overrides import META_KEY
from wyneos_core.service.server import ServerThread

READ, WRITE = "r" * 24, "w" * 24


def token_file(tmp_path, name, token):
    path = tmp_path / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)


def test_cordon_and_exceptions_against_a_server_need_the_write_token(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WYNEOS_WRITE_TOKEN", raising=False)
    extra = "nodes: [{id: web-1}]\n"
    service = make_service(write_config(tmp_path, extra=extra), read_token=READ, write_token=WRITE)
    write, read = token_file(tmp_path, "write", WRITE), token_file(tmp_path, "read", READ)
    with ServerThread(service) as url:
        assert main(["cordon", "web-1", "--reason", "kernel update", "--server", url]) == 1
        assert "cordon refused (401)" in capsys.readouterr().err
        assert main(["cordon", "web-1", "--reason", "kernel update", "--server", url, "--token-file", read]) == 1
        with service.db_lock:
            assert service.db.meta(META_KEY, {}) == {}  # refused: nothing changed
        assert main(["cordon", "web-1", "--reason", "kernel update", "--by", "carol", "--server", url,
                     "--token-file", write]) == 0
        assert "web-1: cordon by carol (kernel update) set on http" in capsys.readouterr().out
        with service.db_lock:
            assert service.db.meta(META_KEY, {})["web-1"]["kind"] == "cordon"
        monkeypatch.setenv("WYNEOS_WRITE_TOKEN", WRITE)
        assert main(["exception", "add", "--owner", "ops", "--reason", "canary", "--selector", "zone=eu",
                     "--expires", "2099-01-01T00:00:00Z", "--id", "canary", "--server", url]) == 0
        capsys.readouterr()
        assert main(["exception", "list", "--server", url, "--token-file", read, "--json"]) == 0
        (listed,) = json.loads(capsys.readouterr().out)["exceptions"]
        assert listed["id"] == "canary" and listed["selector"] == {"zone": "eu"} and listed["expired"] is False
        assert main(["exception", "add", "--owner", "ops", "--reason", "again", "--node", "web-1",
                     "--expires", "2099-01-01T00:00:00Z", "--id", "canary", "--server", url]) == 1
        assert "exists already" in capsys.readouterr().err
        assert main(["uncordon", "web-1", "--reason", "done", "--server", url]) == 0
        with service.db_lock:
            assert service.db.meta(META_KEY, {}) == {}




def test_shadow_of_a_state_file_and_explain_naming_the_exception(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hot.yaml").write_text(hot(0.9, """
  - id: isolate-flagged
    description: nodes flagged hot by the operator are isolated
    when: node.metadata.flag == "hot"
    then: [{isolate: {}}]
"""))
    (tmp_path / "next.yaml").write_text(hot(0.5))
    (tmp_path / "c.yaml").write_text("""
nodes:
  - {id: a, metadata: {flag: hot}}
  - {id: b}
mesh: {topology: star}
rulesets: {paths: [hot.yaml], candidates: [next.yaml]}
plugins: {disable: [licence, governance, healing, enforcement]}
enforcement:
  exceptions: [{id: keep-a, owner: ops, reason: a is the database, node: a, expires: "2099-01-01T00:00:00Z"}]
state: {path: s.db}
report: {stdout: none, json_path: null}
""")
    from wyneos_core.config import load_config
    from wyneos_core.model import Heartbeat
    from wyneos_core.tick import Orchestrator

    with Orchestrator(load_config("c.yaml")) as orch:  # a run leaves its nodes in the state file
        orch.intake.put_many([Heartbeat("a", orch.clock(), 0.95), Heartbeat("b", orch.clock(), 0.6)])
        orch.tick()
    assert main(["shadow", "--config", "c.yaml"]) == 0
    out = capsys.readouterr().out
    assert "on the nodes of " in out and "  hot/isolate-hot: +isolate b\n" in out
    assert main(["explain", "--node", "a", "--config", "c.yaml", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (held,) = data["actions"]
    assert held["status"] == "excepted" and held["exception"] == "keep-a" and held["mode"] == "enforce"
    assert "exception keep-a (owner ops" in held["detail"]


def test_replay_refuses_a_file_that_is_not_a_decision_log(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"hello": 1}\n')
    (tmp_path / "r.yaml").write_text(hot(0.5))
    assert main(["replay", str(tmp_path / "x.jsonl"), "--ruleset", str(tmp_path / "r.yaml")]) == 1
    assert f"{tmp_path / 'x.jsonl'}:1: not a decision log record" in capsys.readouterr().err
