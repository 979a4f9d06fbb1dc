"""The agent against a hostile server on 127.0.0.1: huge and trickled answers, absurd
clocks and intervals, malformed answers; ``--count`` and ``--duration`` end it whatever
the server does. Each case fails without its defence (an unbounded read, a per-read
timeout only, a trusted ``server_time``, ``{"actions": 5}`` taken as a list...)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest
from hostile_server import Huge, HostileServer, Raw, Trickle
from service_helpers import signed

from wyneos_core.service import agent as agent_module
from wyneos_core.service import signed_actions as sa
from wyneos_core.service.agent import Agent
from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.server import bind

NODE = "h-1"


def orchestrator(okey, answers, interval=0.05, enrol_extra=None):
    """Enrols anyone with ``okey``; the n-th heartbeat gets ``answers[n]`` (status, body),
    later ones a plain 202."""
    answers = list(answers)

    def handler(path, body):
        if path == "/v1/enrol":
            return 201, {"node_id": NODE, "enrolled": True, "server_time": time.time(), "heartbeat_interval": interval,
                         "orchestrator_key": sa.key_entry(okey.private), **(enrol_extra or {})}
        if path == "/v1/heartbeats":
            if answers:
                return answers.pop(0)
            return 202, {"accepted": 1, "server_time": time.time(), "actions": []}
        if path.endswith("/actions/ack"):
            return 200, {"acknowledged": [], "refused": []}
        return 404, {}

    return handler


def run_bounded(agent, limit=60, **kwargs):
    """``agent.run(**kwargs)`` in a thread; True when it ended within ``limit`` seconds (a
    generous bound on liveness, not a speed measurement)."""
    thread = threading.Thread(target=agent.run, kwargs=kwargs, daemon=True)
    thread.start()
    thread.join(limit)
    return not thread.is_alive()


@pytest.fixture
def okey(tmp_path):
    return OrchestratorKey.for_state(tmp_path / "s.db")


def _isolate(okey):
    return signed(okey, {"id": "iso-1", "type": "isolate", "target": NODE})


# -- answer size -------------------------------------------------------------------------


@pytest.mark.parametrize("announce", [True, False], ids=["with_length", "until_close"])
def test_a_huge_answer_is_never_read_whole(tmp_path, okey, announce):
    size = 200 * 1024 * 1024
    answers = [(202, Huge(size, announce=announce)), (202, {"accepted": 1, "actions": [_isolate(okey)]})]
    with HostileServer(orchestrator(okey, answers)) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", max_backoff=0.1)
        tracemalloc.start()
        try:
            agent.run(count=3)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 * agent_module.MAX_ANSWER_BYTES, peak  # 200 MB were on offer
    assert agent.stats.bad_answers == 1 and agent.state["isolated"] is True  # then it carried on
    assert server.written[0] < size


# -- deadlines ---------------------------------------------------------------------------


def test_a_trickled_body_cannot_hold_a_request_past_its_deadline(tmp_path, okey):
    body = json.dumps({"accepted": 1, "actions": [], "pad": "x" * 300}).encode()
    answers = [(202, Trickle(body, every=0.2)), (202, {"accepted": 1, "actions": [_isolate(okey)]})]
    with HostileServer(orchestrator(okey, answers)) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", timeout=1.0, max_backoff=0.1)
        assert run_bounded(agent, count=3)
    assert server.written[0] < len(body)  # the agent hung up; without a deadline it reads all 60 s of it
    assert agent.stats.bad_answers == 1 and agent.state["isolated"] is True


def test_trickled_headers_cannot_hold_a_request_past_its_deadline(tmp_path, okey):
    raw = b"HTTP/1.1 202 Accepted\r\n" + b"X-Pad: " + b"a" * 500 + b"\r\n\r\n{}"
    with HostileServer(orchestrator(okey, [(202, Raw(raw, every=0.1))])) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", timeout=1.0, max_backoff=0.1)
        assert run_bounded(agent, count=2)
    assert server.written[0] < len(raw) and agent.stats.bad_answers == 1


def test_duration_ends_a_real_agent_process_while_the_server_trickles(tmp_path, okey):
    body = json.dumps({"accepted": 1, "actions": [], "pad": "x" * 1000}).encode()
    with HostileServer(orchestrator(okey, [(202, Trickle(body, every=0.1))] * 5)) as server:
        proc = subprocess.Popen([sys.executable, "-m", "wyneos_core.cli", "agent", "--server", server.url, "--node",
                                 NODE, "--state-dir", str(tmp_path / "a"), "--token", "t", "--duration", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=60)  # 100 s of trickle on offer
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "wyneos agent: sent" in out
    assert server.written[0] < len(body)


def test_count_and_duration_end_the_agent_while_the_server_is_down(tmp_path):
    sock = bind("127.0.0.1", 0)  # a port nobody listens on
    port = sock.getsockname()[1]
    sock.close()
    agent = Agent(f"http://127.0.0.1:{port}", NODE, tmp_path / "a", token="t", interval=0.05, max_backoff=0.2)
    assert run_bounded(agent, count=4)  # counted by sent heartbeats, it would never end
    assert agent.stats.attempts == 4 and agent.stats.sent == 0 and agent.stats.failures == 4
    done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "agent", "--server", f"http://127.0.0.1:{port}",
                           "--node", NODE, "--state-dir", str(tmp_path / "b"), "--token", "t", "--count", "2",
                           "--max-backoff", "0.2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "sent 0" in done.stdout and "connection failures 2" in done.stdout, done


# -- clock and interval ------------------------------------------------------------------


@pytest.mark.parametrize("server_time", [1e300, -1e300, 0, "soon", True, [1], 10 ** 80],
                         ids=["1e300", "-1e300", "zero", "string", "bool", "list", "huge_int"])
def test_an_absurd_server_time_is_ignored(tmp_path, okey, server_time):
    answers = [(202, {"accepted": 1, "server_time": server_time, "actions": []})]
    with HostileServer(orchestrator(okey, answers)) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t")
        agent.interval = 0.05
        agent.run(count=3)
    assert math.isfinite(agent.offset) and abs(agent.offset) < 60
    stamps = [float(h["x-wyneos-timestamp"]) for h in server.headers if "x-wyneos-timestamp" in h]
    assert len(stamps) >= 4 and all(abs(t - time.time()) < 60 for t in stamps), stamps
    assert agent.stats.accepted == 3 and agent.stats.bad_answers == 0


def test_a_nan_server_time_is_a_bad_answer_and_changes_no_clock(tmp_path, okey):
    answers = [(202, b'{"accepted": 1, "server_time": NaN, "actions": []}'),
               (202, b'{"accepted": 1, "server_time": Infinity, "actions": []}')]
    with HostileServer(orchestrator(okey, answers)) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", max_backoff=0.1)
        agent.run(count=4)
    stamps = [float(h["x-wyneos-timestamp"]) for h in server.headers if "x-wyneos-timestamp" in h]
    assert agent.offset == pytest.approx(0, abs=60) and all(abs(t - time.time()) < 60 for t in stamps)
    assert agent.stats.bad_answers == 2 and agent.stats.accepted == 2


@pytest.mark.parametrize("interval, expected", [(1e-6, agent_module.MIN_INTERVAL), (-5, agent_module.DEFAULT_INTERVAL),
                                                ("soon", agent_module.DEFAULT_INTERVAL), (0, agent_module.DEFAULT_INTERVAL),
                                                (1e9, agent_module.MAX_INTERVAL), (None, agent_module.DEFAULT_INTERVAL)],
                         ids=["1e-6", "-5", "soon", "zero", "1e9", "null"])
def test_the_interval_a_server_asks_for_is_bounded(tmp_path, okey, interval, expected, caplog):
    with HostileServer(orchestrator(okey, [], interval=interval)) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t")
        assert run_bounded(agent, count=1)
    assert agent.interval == expected and agent.stats.accepted == 1
    assert "heartbeat_interval" in caplog.text  # said so in the log


# -- malformed answers -------------------------------------------------------------------

MALFORMED = {
    "actions_number": (202, {"accepted": 1, "actions": 5}),
    "actions_string": (202, {"accepted": 1, "actions": "isolate"}),
    "actions_object": (202, {"accepted": 1, "actions": {"id": "x"}}),
    "too_many_actions": (202, {"accepted": 1, "actions": [{}] * 1001}),
    "a_list": (202, [1, 2, 3]),
    "not_json": (202, b"<html>hello</html>"),
    "not_utf8": (202, b'{"actions": ["\xff\xfe"]}'),
    "deep": (202, b"[" * 100_000 + b"]" * 100_000),
    "duplicate_keys": (202, b'{"actions": [], "actions": 5}'),
    "status_200": (200, {"accepted": 1, "actions": []}),
    "status_302": (302, {"location": "elsewhere"}),
    "key_ref_garbage": (202, {"accepted": 1, "actions": [], "orchestrator_key": {"key_id": 5, "handover": []}}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_answer_is_logged_and_retried_never_fatal(tmp_path, okey, case, caplog):
    answers = [MALFORMED[case], (202, {"accepted": 1, "actions": [_isolate(okey)]})]
    with HostileServer(orchestrator(okey, answers)) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", max_backoff=0.1)
        stats = agent.run(count=3)
    assert stats.attempts == 3 and agent.state["isolated"] is True  # it went on and applied the next answer
    if case != "key_ref_garbage":
        assert stats.bad_answers == 1 and "bad answer" in caplog.text


@pytest.mark.parametrize("answer", [{"node_id": NODE, "heartbeat_interval": 0.05},
                                    {"node_id": NODE, "orchestrator_key": "garbage"},
                                    {"node_id": NODE, "orchestrator_key": {"public_key": "!!"}}],
                         ids=["no_key", "key_string", "key_garbage"])
def test_a_malformed_enrolment_answer_is_retried(tmp_path, okey, answer):
    answers = [answer]

    def handler(path, body):
        if path == "/v1/enrol" and answers:
            return 201, answers.pop(0)
        return orchestrator(okey, [])(path, body)

    with HostileServer(handler) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", max_backoff=0.1, interval=0.05)
        stats = agent.run(count=3)
    assert stats.bad_answers == 1 and stats.enrolments == 1 and stats.accepted == 2
    assert agent.trusted.fingerprints() == [okey.fingerprint]


def test_an_interval_or_backoff_below_the_floor_is_raised_with_a_log_line(tmp_path, caplog):
    agent = Agent("http://127.0.0.1:9", NODE, tmp_path / "a", interval=1e-6, max_backoff=1e-9)
    assert agent.interval == agent_module.MIN_INTERVAL and agent.max_backoff == agent_module.MIN_INTERVAL
    assert "interval 1e-06s is below" in caplog.text and "max_backoff 1e-09s is below" in caplog.text


@pytest.mark.parametrize("status, body", [(429, {"code": "too_many", "error": "slow down"}), (400, b"<html>no</html>"),
                                          (403, b"forbidden"), (418, {"code": "teapot"})],
                         ids=["rate_limited", "html_400", "plain_403", "teapot"])
def test_an_unstructured_or_rate_limited_enrolment_refusal_is_retried(tmp_path, okey, status, body):
    answers = [(status, body)]

    def handler(path, request_body):
        if path == "/v1/enrol" and answers:
            return answers.pop(0)
        return orchestrator(okey, [])(path, request_body)

    with HostileServer(handler) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", max_backoff=0.1, interval=0.05)
        stats = agent.run(count=3)
    assert stats.bad_answers == 1 and stats.enrolments == 1 and stats.accepted == 2


def test_a_structured_enrolment_refusal_stops_the_agent(tmp_path, okey):
    from wyneos_core.service.agent import AgentError

    def handler(path, body):
        return 403, {"status": 403, "code": "bad_token", "error": "token unknown or spent"}

    with HostileServer(handler) as server:
        with pytest.raises(AgentError, match="bad_token"):
            Agent(server.url, NODE, tmp_path / "a", token="t").run(count=3)


def test_the_agents_kept_lists_stay_bounded_however_many_refusals_a_server_causes(tmp_path):
    from wyneos_core.service.agent import AgentStats

    agent = Agent("http://127.0.0.1:9", NODE, tmp_path / "a", token="t")  # never contacted
    for i in range(AgentStats.KEPT + 50):
        agent._report("unsigned", "no signature", f"a{i}")
    assert agent.stats.refusals_made == AgentStats.KEPT + 50
    assert len(agent.stats.refused_actions) == AgentStats.KEPT
    assert agent.stats.refused_actions[-1] == f"unsigned:a{AgentStats.KEPT + 49}"
