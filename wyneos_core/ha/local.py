"""A throwaway etcd cluster on 127.0.0.1: for tests, benchmarks and trying replicas out.

Starts ``etcd`` (Debian's ``etcd-server``) members as child processes on free
loopback ports, each with its data directory under ``root``; ends them by their pid.
Not for production (see docs/ha.md for a real deployment).
"""

from __future__ import annotations

import os
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from wyneos_core.ha.etcd import EtcdClient, EtcdError

__all__ = ["LocalEtcdCluster", "ReplicaProcess", "etcd_binary", "free_port"]


def etcd_binary() -> str | None:
    """The etcd server program, if installed (``etcd-server`` on Debian)."""
    return shutil.which("etcd") or next((p for p in ("/usr/bin/etcd", "/usr/sbin/etcd") if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def get_json(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The JSON a local replica answers at ``url`` (also an error status's body), or None
    when nothing answers or the answer is not JSON."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - loopback http
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None

class LocalEtcdCluster:
    """``size`` etcd members on loopback. ``start()``, ``kill(i)``, ``restart(i)``, ``stop()``.

    :param election_ms: etcd's election timeout (its heartbeat is a tenth): short values
        make member loss heal fast; etcd's shortest lease is 1.5 times it.
    """

    def __init__(self, root: str | Path, size: int = 3, *, election_ms: int = 1000,
                 tls: tuple[str, str, str] | None = None) -> None:
        """``tls``: ``(cert_file, key_file, ca_file)``: clients speak HTTPS and must show a
        certificate the CA signed (``--client-cert-auth``); the same certificate serves
        both sides here."""
        self.tls = tls
        self.root = Path(root)
        self.size = size
        self.election_ms = election_ms
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.token = f"wyneos-test-{os.getpid()}-{self.client_ports[0]}"

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.client_ports]

    @property
    def client_options(self) -> dict[str, Any]:
        """``EtcdClient`` keyword arguments to reach this cluster."""
        if self.tls is None:
            return {}
        return {"cert_file": self.tls[0], "key_file": self.tls[1], "ca_file": self.tls[2]}

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"127.0.0.1:{p}" for p in self.client_ports)

    def _command(self, i: int, state: str) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (Debian: apt-get install etcd-server; "
                               "or run scripts/test-deps.sh as root)")
        cluster = ",".join(f"m{j}=http://127.0.0.1:{p}" for j, p in enumerate(self.peer_ports))
        client = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return [binary, "--name", f"m{i}", "--data-dir", str(self.root / f"m{i}"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", str(max(10, self.election_ms // 10)),
                "--election-timeout", str(self.election_ms),
                "--logger", "zap", "--log-outputs", str(self.root / f"m{i}.log"),
                *(["--cert-file", self.tls[0], "--key-file", self.tls[1], "--trusted-ca-file", self.tls[2],
                   "--client-cert-auth"] if self.tls else [])]

    def _spawn(self, i: int, state: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs[i] = subprocess.Popen(self._command(i, state), stdout=subprocess.DEVNULL,
                                         stderr=open(self.root / f"m{i}.err", "ab"),  # noqa: SIM115
                                         start_new_session=True)

    def start(self, timeout: float = 30.0) -> LocalEtcdCluster:
        for i in range(self.size):
            self._spawn(i, "new")
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until a write goes through (a quorum with a leader)."""
        client = EtcdClient(self.endpoints, timeout=1.0, **self.client_options)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    err = (self.root / f"m{i}.err").read_text(errors="replace")[-800:]
                    raise RuntimeError(f"etcd member m{i} exited with {proc.returncode}: {err}")
            try:
                client.put("/wyneos-health", "ok")
                client.close()
                return
            except EtcdError as exc:
                last = str(exc)
            time.sleep(0.1)
        client.close()
        raise RuntimeError(f"etcd cluster not healthy after {timeout:g}s: {last}")

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (by its pid)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.procs[i] = None

    def restart(self, i: int) -> None:
        if self.procs[i] is None:
            self._spawn(i, "existing")

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i``: it holds its sockets open and answers nothing."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        for i in range(self.size):
            self.kill(i)

    def __enter__(self) -> LocalEtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ReplicaProcess:
    """One ``wyneos serve`` replica as a child process (``--port 0`` the first time, the
    same port when started again), ended by its pid.

    :param log_dir: where each start's standard error goes (``NAME.N.log``).
    """

    def __init__(self, name: str, config: Path, store_url: str, log_dir: Path, *,
                 wyneos: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.config = Path(config)
        self.store_url = store_url
        self.log_dir = Path(log_dir)
        self.wyneos = wyneos or str(Path(sys.executable).with_name("wyneos"))
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.generation = 0

    def start(self) -> None:
        self.generation += 1
        log_path = self.log_dir / f"{self.name}.{self.generation}.log"
        with open(log_path, "w") as err:
            self.proc = subprocess.Popen(
                [self.wyneos, "serve", "-c", str(self.config), "--store", self.store_url, "--replica-id", self.name,
                 "--log-level", "warning", *(["--port", self.url.rsplit(":", 1)[1]] if self.url else []),
                 *self.extra],
                stdout=subprocess.PIPE, stderr=err, text=True, cwd=self.config.parent, start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "listening on " not in line:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError(f"replica {self.name} did not start: {line!r} {log_path.read_text()[-2000:]}")
        self.url = line.split("listening on ", 1)[1].split(" ", 1)[0]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.proc.pid, sig)  # type: ignore[union-attr]

    def kill(self) -> None:
        """SIGKILL (kill -9) by pid."""
        if self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            self.proc.wait(10)  # type: ignore[union-attr]

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is paused); SIGKILL if it does not end."""
        if self.alive:
            os.kill(self.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            os.kill(self.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
            try:
                self.proc.wait(15)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill()

    def health(self) -> dict[str, Any] | None:
        """``/healthz`` as JSON (also when it answers 503), None when it does not answer."""
        return get_json(self.url + "/healthz", timeout=1.0) if self.alive else None

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=2) as answer:  # noqa: S310 - loopback
                return answer.read().decode()
        except OSError:
            return ""
