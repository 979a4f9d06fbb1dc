"""docs/ha.md's deployment walkthrough, run as written: every block marked
``ha-walkthrough`` in page order (```yaml blocks saved under the name their first line
gives, ```console commands run by bash), against a real 3-member etcd cluster and real
replicas and agent processes, twice in one directory.

Only what stands for the machines changes: ``10.0.0.N:2379`` and ``:2380`` become etcd
member N's loopback client and peer ports, ``10.0.1.N:8420`` replica N's loopback port
(given with ``--port``, as the replicas share one config), ``/var/lib/`` a directory of
each machine under the test's, and ``wyn_...`` the token ``wyneos enrol token`` printed.
The page's ``etcd`` command (member ``m1``) is run for ``m1``, ``m2`` and ``m3``, each
with its own name and addresses, as the page says."""

from __future__ import annotations

import json
import re
import random
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ha_helpers import need_etcd

PAGE = Path(__file__).resolve().parents[1] / "docs" / "ha.md"
BIN = Path(sys.executable).parent
LONG_RUNNING = ("etcd ", "wyneos serve ", "wyneos agent ")
#: the flags of the page's etcd command that name the member's own addresses
OWN_ADDRESSES = ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                 "--initial-advertise-peer-urls")


def walkthrough() -> list[tuple[str, str]]:
    """(kind, body) of each marked block, in page order."""
    return re.findall(r"```(\w+) ha-walkthrough\n(.*?)```", PAGE.read_text(), re.S)


def commands(body: str) -> list[str]:
    """The ``$ `` lines of a console block (a trailing backslash continues a line)."""
    out: list[str] = []
    lines = iter(body.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + next(lines).strip()
            out.append(command)
    return out


def steady_port(taken: set[int]) -> int:
    """A free loopback port below the kernel's ephemeral range: the walkthrough stops and
    starts its servers on the same ports, and a port from the ephemeral range (port 0)
    may meanwhile be taken by any outgoing connection on this machine."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in taken:
            taken.add(port)
            return port


class Machines:
    """Loopback stand-ins for the page's addresses."""

    def __init__(self, work: Path) -> None:
        taken: set[int] = set()
        self.ports = {port: [steady_port(taken) for _ in range(3)] for port in ("2379", "2380")}
        self.replica_ports = [steady_port(taken), steady_port(taken)]
        self.work = work

    def local(self, text: str, machine: str = "") -> str:
        text = re.sub(r"10\.0\.0\.(\d):(2379|2380)", lambda m: f"127.0.0.1:{self.ports[m[2]][int(m[1]) - 1]}", text)
        text = re.sub(r"10\.0\.1\.(\d):8420", lambda m: f"127.0.0.1:{self.replica_ports[int(m[1]) - 1]}", text)
        return text.replace("/var/lib/", f"{self.work}/{machine or 'machine'}/var-lib/")

    def members(self, line: str) -> list[str]:
        """The page's member ``m1`` command as ``m1``, ``m2`` and ``m3`` would run it."""
        words = shlex.split(line)
        assert words[:3] == ["etcd", "--name", "m1"], line
        out = []
        for n in (1, 2, 3):
            own = [w.replace("10.0.0.1:", f"10.0.0.{n}:") if i and words[i - 1] in OWN_ADDRESSES else w
                   for i, w in enumerate(words)]
            own[2] = f"m{n}"
            out.append(self.local(shlex.join(own), f"10.0.0.{n}"))
        return out

    def command(self, line: str, token: str | None) -> str:
        if line.startswith("wyneos serve "):
            url = re.search(r"--advertise-url http://10\.0\.1\.(\d):8420", line)
            assert url, f"a replica of the page names no advertise URL: {line}"
            line += f" --port {self.replica_ports[int(url[1]) - 1]}"
        if "wyn_..." in line:
            assert token, f"the page uses a token before `wyneos enrol token` printed one: {line}"
            line = line.replace("wyn_...", token)
        line = re.sub(r"(^|\| |&& )wyneos ", lambda m: f"{m[1]}{BIN}/wyneos ", line)
        return self.local(line)


def run_once(work: Path, machines: Machines, started: list[subprocess.Popen]) -> dict[str, str]:
    """Every marked block in order; returns the output of each command run to its end."""
    token = None
    outputs: dict[str, str] = {}
    for kind, body in walkthrough():
        if kind == "yaml":
            name = body.splitlines()[0].removeprefix("# ").strip()
            (work / name).write_text(machines.local(body))
            continue
        assert kind == "console", kind
        for line in commands(body):
            if line.startswith(LONG_RUNNING):
                for command in machines.members(line) if line.startswith("etcd ") else [machines.command(line, token)]:
                    log = open(work / f"process-{len(started)}.log", "ab")  # noqa: SIM115 - closed with the test dir
                    started.append(subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=work, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True))
                continue
            command = machines.command(line, token)
            out = None
            deadline = time.monotonic() + 60  # a replica or the etcd cluster may still be starting
            while time.monotonic() < deadline:
                done = subprocess.run(["bash", "-e", "-c", command], cwd=work, capture_output=True, text=True,
                                      timeout=60)
                if done.returncode == 0 and done.stdout.strip():
                    out = done.stdout
                    break
                if done.returncode == 0 and not line.startswith("curl"):
                    out = done.stdout
                    break
                time.sleep(0.5)
            assert out is not None, f"`{line}` failed: {done.stdout}{done.stderr}"
            outputs[line] = out
            if line.startswith("wyneos enrol token"):
                found = re.search(r"wyn_\S+", out)
                assert found, out
                token = found[0]
    return outputs


def wait_json(work: Path, command: str, check, seconds: float = 90):
    """Run ``command`` until its JSON output passes ``check``; fail with the last output."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        done = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True, timeout=30)
        try:
            last = json.loads(done.stdout)
        except ValueError:
            last = done.stdout + done.stderr
        if isinstance(last, dict) and check(last):
            return last
        time.sleep(0.5)
    pytest.fail(f"`{command}` never answered as expected; last: {last!r}")


def one_leader(work: Path, machines: Machines, seconds: float = 90) -> list[dict]:
    """Both replicas' /healthz once one leads and ticked (after a restart the previous
    leader's lease may first have to expire)."""
    deadline, healths = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        healths = []
        for i in (1, 2):
            done = subprocess.run(["curl", "-s", machines.local(f"http://10.0.1.{i}:8420/healthz")],
                                  capture_output=True, text=True, timeout=30)
            try:
                healths.append(json.loads(done.stdout))
            except ValueError:
                healths.append(done.stdout)
        if all(isinstance(h, dict) for h in healths) and sorted(h["role"] for h in healths) == [
                "follower", "leader"] and any(h["deciding"] and h["tick"] > 0 for h in healths):
            return healths
        time.sleep(0.5)
    pytest.fail(f"no replica of the page leads; last /healthz: {healths!r}")


def stop(started: list[subprocess.Popen]) -> None:
    """As an operator would: the agent, then the replicas (giving their lease up), then
    etcd; each ended (SIGTERM, SIGKILL after 20 s) before the next."""
    for proc in reversed(started):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    started.clear()


@pytest.mark.slow
def test_the_walkthrough_runs_as_written_twice_in_one_directory(tmp_path: Path) -> None:
    need_etcd()
    blocks = walkthrough()
    assert [k for k, _ in blocks].count("yaml") == 1 and len(blocks) >= 5
    work = tmp_path / "machine"
    work.mkdir()
    first_seen: list[int] = []  # per run: the committed tick when one replica first leads
    last_seen: list[int] = []  # per run: the committed tick just before the run is stopped
    machines = Machines(work)
    started: list[subprocess.Popen] = []
    try:
        for _ in (1, 2):
            outputs = run_once(work, machines, started)
            assert "curl -s http://10.0.0.1:2379/health" in outputs
            wait_json(work, machines.local("curl -s http://10.0.0.1:2379/health"), lambda h: h["health"] == "true")
            health = next(json.loads(v) for k, v in outputs.items() if k.endswith("/healthz"))
            assert health["backend"] == "etcd" and health["replica"] == "web-2"
            # one leader among the page's two replicas, the agent's node online and not
            # isolated although no licence section exists (licences not enforced)
            [node_query] = [k for k in outputs if "/v1/nodes/node-a" in k]
            node = wait_json(work, machines.command(node_query, None),
                             lambda n: n.get("status") == "online" and not n.get("isolated"))
            assert node["id"] == "node-a"
            healths = one_leader(work, machines)
            first_seen.append(max(h["tick"] for h in healths))
            leader = 1 + [h["role"] for h in healths].index("leader")
            on_leader = node_query.replace("10.0.1.1:", f"10.0.1.{leader}:")
            decided = wait_json(work, machines.command(on_leader, None), lambda n: n.get("licence") is not None)
            assert decided["licence"]["reason"] == "no_licence" and decided["isolated"] is False, decided
            # the read API refuses a request without the token (the reason the token is there)
            refused = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                      machines.local("http://10.0.1.1:8420/v1/nodes")],
                                     capture_output=True, text=True, timeout=30)
            assert refused.stdout == "401"
            if last_seen:  # the second run: its leader ticks on past the first run's last tick
                wait_json(work, machines.local(f"curl -s http://10.0.1.{leader}:8420/healthz"),
                          lambda h: h.get("tick", 0) > last_seen[0])
            last_seen.append(max(h["tick"] for h in one_leader(work, machines)))
            stop(started)
    finally:
        stop(started)
    # the second run took the cluster over from etcd: its ticks carry on from the first's
    # (a leader that started again from tick 0 would first report a smaller number; the
    # committed tick it restored may equal the first run's last one until it ticks)
    assert first_seen[1] >= last_seen[0] >= first_seen[0], (first_seen, last_seen)
    assert last_seen[1] > last_seen[0]
