"""Retiring the orchestrator's old key after a rotation (issue 18 item 12), on a real
server on 127.0.0.1: ``wyneos orchestrator-key retire`` (signed by the new key) gives the
retirement a date; agents stop applying actions the old key signed from that date on,
and stop trusting every key the orchestrator no longer holds (``.previous.pub`` deleted)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from service_helpers import add_token, make_service, signed, write_config

from wyneos_core.service import signed_actions as sa
from wyneos_core.service.agent import Agent
from wyneos_core.service.orchestrator_key import OrchestratorKey, keyring_statement, retire
from wyneos_core.service.server import ServerThread, bind

CLI = [sys.executable, "-m", "wyneos_core.cli", "orchestrator-key"]


def _serve_once(config, port, agent):
    """Start the server as it is on disk now, let ``agent`` heartbeat once, stop it."""
    service = make_service(config, port=port)
    with ServerThread(service, port=port):
        assert agent.heartbeat() == 202
    service.orchestrator.stop()
    return service


@pytest.fixture
def rotated(tmp_path):
    """An agent that pinned the first key and followed the hand-over to the second."""
    config = write_config(tmp_path, stale=60, offline=120)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    service = make_service(config, port=port)
    old = service.okey  # kept in memory: it signs what an attacker holding the old key would
    with ServerThread(service, port=port) as url:
        agent = Agent(url, "k-1", tmp_path / "agent", token=add_token(service), sessions=False)
        agent.enrol()
        assert agent.heartbeat() == 202
    service.orchestrator.stop()
    subprocess.run([*CLI, "rotate", "-c", str(config)], capture_output=True, text=True, timeout=60, check=True)
    new = _serve_once(config, port, agent).okey
    assert agent.trusted.ids() == [old.key_id, new.key_id]
    return config, port, agent, old, new


def _isolate(okey, action_id):
    return signed(okey, {"id": action_id, "type": "isolate", "target": "k-1"})


def test_a_retired_key_signs_nothing_from_its_date_on(rotated):
    config, port, agent, old, new = rotated
    later = time.time() + 3600
    done = subprocess.run([*CLI, "retire", "--at", str(later), "-c", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and f"retired: key {old.key_id}" in done.stdout, done.stderr
    _serve_once(config, port, agent)
    assert agent.state["retired"] == {old.key_id: int(later * 1000)}
    assert old.key_id in agent.trusted  # not yet: its date is an hour away
    done = subprocess.run([*CLI, "retire", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _serve_once(config, port, agent)
    assert agent.trusted.ids() == [new.key_id]
    agent._request = lambda method, path, body=b"": (200, {}, {})  # the acks go nowhere here
    agent.apply([_isolate(old, "iso-old")])
    assert agent.state["isolated"] is False  # signed by the retired key: refused
    assert agent.stats.refused_actions[-1] == "unknown_key:iso-old"
    agent.apply([_isolate(new, "iso-new")])
    assert agent.state["isolated"] is True
    # for good: a restarted agent (its state file) still refuses the retired key
    again = Agent("http://127.0.0.1:9", "k-1", agent.state_dir, sessions=False)
    assert again.trusted.ids() == [new.key_id] and old.key_id in again.state["retired"]


def test_deleting_the_previous_key_file_ends_the_agents_trust_in_it(rotated):
    config, port, agent, old, new = rotated
    (new.path.with_name(new.path.name + ".previous.pub")).unlink()
    _serve_once(config, port, agent)
    assert agent.trusted.ids() == [new.key_id]


def test_only_the_newest_key_can_make_an_agent_drop_keys(rotated):
    config, port, agent, old, new = rotated
    stale = sa.seal_keyring(old.private, [old.public_raw], {})  # an old statement, signed by the old key
    agent._follow_key({"key_id": old.key_id, "keyring": stale})
    assert agent.trusted.ids() == [old.key_id, new.key_id]
    forged = sa.seal_keyring(OrchestratorKey.for_state(config.parent / "x.db").private, [], {})
    agent._follow_key({"key_id": new.key_id, "keyring": forged})
    assert agent.trusted.ids() == [old.key_id, new.key_id]


def test_retire_needs_a_previous_key_and_a_readable_date(tmp_path):
    config = write_config(tmp_path)
    done = subprocess.run([*CLI, "retire", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no previous key to retire" in done.stderr
    done = subprocess.run([*CLI, "retire", "--at", "next tuesday", "-c", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--at 'next tuesday'" in done.stderr
    key = OrchestratorKey.for_state(tmp_path / "state.db")
    new = sa.rotate(key)
    assert retire(new, 1_000)[0] == key.key_id
    listed, retired = sa.open_keyring(keyring_statement(new), sa.TrustedKeys([new.public_raw]))
    assert listed == {new.key_id, key.key_id} and retired == {key.key_id: 1_000}
