"""etcd is a trust boundary (issue 18 item 13): every value read back is checked; a bad
one is reported with its key and skipped, and taken once fixed; enrolment data written
by anyone without the orchestrator key enrols no one and replaces no key; the client
speaks TLS with a client certificate and authenticates with a user and password;
``wyneos state check`` checks etcd. Real etcd on loopback ports."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import time
from pathlib import Path

import pytest

from ha_helpers import WYNEOS, etcd_cluster, need_etcd, wait_for
from wyneos_core.config import load_config
from wyneos_core.ha.etcd import EtcdClient, EtcdError
from wyneos_core.ha.local import LocalEtcdCluster
from wyneos_core.licensing.keys import public_bytes
from wyneos_core.tick import Orchestrator


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory):
    yield from etcd_cluster(tmp_path_factory, 1)


def _config(tmp: Path, etcd: LocalEtcdCluster, prefix: str, extra: str = "") -> Path:
    cfg = tmp / "c.yaml"
    cfg.write_text(f"cluster: values\nplugins: {{disable: [licence]}}\nreport: {{stdout: none, json_path: null}}\n"
                   f"tick: {{interval: 0.2}}\n"
                   f"state: {{backend: etcd, etcd: {{prefix: '{prefix}', lease_duration: 2, renew_deadline: 1.5, "
                   f"retry_period: 0.25, timeout: 2, {extra}"
                   f"endpoints: [{', '.join(f'{h}:{p}' for h, p in etcd.endpoints)}]}}}}\n")
    return cfg


def _service(cfg: Path):  # noqa: ANN202
    from wyneos_core.service.core import Service
    from wyneos_core.service.settings import ServiceSettings

    config = load_config(cfg)
    return Service(Orchestrator(config, load_entrypoints=False), ServiceSettings.from_config(config))


def _state_check(cfg: Path, etcd: LocalEtcdCluster) -> subprocess.CompletedProcess:
    return subprocess.run([WYNEOS, "state", "check", "-c", str(cfg), "--store", etcd.url], capture_output=True,
                          text=True, timeout=60, cwd=cfg.parent)


def test_a_bad_value_is_reported_with_its_key_skipped_and_taken_once_fixed(etcd: LocalEtcdCluster,
                                                                           tmp_path: Path) -> None:
    from service_helpers import Node

    from wyneos_core.service.core import hash_token
    from wyneos_core.service.identity import SignedItem

    prefix = "/bad-values/"
    cfg = _config(tmp_path, etcd, prefix)
    service = _service(cfg)
    client = EtcdClient(etcd.endpoints)
    try:
        service.start()
        wait_for("a committed tick", lambda: service.ha.committed_tick >= 2, 30)
        service.db.add_enrol_token(hash_token("wyn_t"), None, 2, time.time() + 60, time.time())
        good = Node("good")
        assert service.enrol(SignedItem.from_headers(*reversed(good.enrol_request("wyn_t"))))[0] == 201
        assert _state_check(cfg, etcd).returncode == 0
        # one value that is not JSON, one of the wrong shape, one node row with a bad id
        client.put(prefix + "keys/broken", b"\xff not json {")
        client.put(prefix + "actions/odd", json.dumps({"id": "odd", "state": 7}))
        client.put(prefix + "nodes/bad%20id%2F..", json.dumps({
            "id": "bad id/..", "status": "online", "last_seen": None, "load": None, "metadata": {},
            "licence_ref": None, "fingerprint": None, "registered_at": 1.0, "isolated": False}))
        mark = service.ha.committed_tick
        wait_for("ticks going on past the bad values", lambda: service.ha.committed_tick >= mark + 5, 30)
        assert service.running and service.tick_error is None
        wait_for("the bad values reported", lambda: {prefix + "keys/broken", prefix + "actions/odd"}
                 <= set(service.db.problems), 30)
        problems = service.db.problems
        assert "not JSON" in problems[prefix + "keys/broken"]
        assert "no field" in problems[prefix + "actions/odd"] or "field" in problems[prefix + "actions/odd"]
        checked = _state_check(cfg, etcd)
        assert checked.returncode == 1 and "Traceback" not in checked.stderr
        for key in ("keys/broken", "actions/odd"):
            assert f"{prefix}{key}: " in checked.stdout, checked.stdout
        # fixed: the key of a node enrolled properly elsewhere, written as a replica writes it
        client.call("kv/deleterange", {"key": base64.b64encode((prefix + "actions/odd").encode()).decode()})
        client.call("kv/deleterange", {"key": base64.b64encode((prefix + "nodes/bad%20id%2F..").encode()).decode()})
        other = Node("broken")
        service.db.put_node_key("broken", public_bytes(other.key), "sha256:x", time.time())
        wait_for("the fixed key taken", lambda: "broken" in service.keys, 30)
        assert prefix + "keys/broken" not in service.db.problems
        wait_for("state check clean again", lambda: _state_check(cfg, etcd).returncode == 0, 30)
        assert "good" in service.keys and service.running and service.tick_error is None
    finally:
        service.stop()
        client.close()


def test_enrolment_data_written_without_the_orchestrator_key_enrols_no_one(etcd: LocalEtcdCluster,
                                                                           tmp_path: Path) -> None:
    from service_helpers import Node

    from wyneos_core.service.core import hash_token
    from wyneos_core.service.identity import AuthError, SignedItem

    prefix = "/forged/"
    cfg = _config(tmp_path, etcd, prefix)
    service = _service(cfg)
    client = EtcdClient(etcd.endpoints)
    try:
        now = time.time()
        # a token put straight into etcd, naming a customer: no signature, so no token
        client.put(prefix + "tokens/" + hash_token("wyn_forged"), json.dumps({
            "token_hash": hash_token("wyn_forged"), "node_id": None, "uses_left": 5, "expires_at": now + 600,
            "created_at": now, "customer": "victim"}))
        intruder = Node("intruder")
        with pytest.raises(AuthError) as refused:
            service.enrol(SignedItem.from_headers(*reversed(intruder.enrol_request("wyn_forged"))))
        assert refused.value.code == "bad_token"
        assert "intruder" not in service.keys and service.db.node_customers() == {}
        # a real token (signed by the service) enrols node-a
        service.db.add_enrol_token(hash_token("wyn_real"), None, 1, now + 600, now, customer="acme")
        node_a = Node("node-a")
        assert service.enrol(SignedItem.from_headers(*reversed(node_a.enrol_request("wyn_real"))))[0] == 201
        original = service.keys.get("node-a")
        # the attacker replaces keys/node-a with its own key, and moves node-a's signed row to keys/intruder
        row = json.loads(client.get(prefix + "keys/node-a").value)
        client.put(prefix + "keys/intruder", json.dumps({**row, "node_id": "intruder"}))
        forged = {**row, "public_key": public_bytes(intruder.key).hex()}
        client.put(prefix + "keys/node-a", json.dumps(forged))
        client.put(prefix + "customers/node-a", json.dumps({"customer": "victim", "sig": row["sig"]}))
        other = _service(cfg)  # a replica starting now reads them all
        try:
            # a replica that knew node-a's key keeps it; one starting now cannot learn the real key
            # (etcd no longer holds it) but never takes the intruder's
            for replica, expected in ((service, original), (other, None)):
                replica.refresh_keys()
                assert replica.keys.get("node-a") == expected, "node-a's key was replaced through etcd"
                assert "intruder" not in replica.keys
                assert replica.db.node_customers() == {}
            reasons = other.db.problems
            assert "signature" in reasons[prefix + "keys/node-a"] and "signature" in reasons[prefix + "keys/intruder"]
        finally:
            other.stop()
    finally:
        service.stop()
        client.close()


# -- TLS and authentication --------------------------------------------------------------


def _certificates(tmp: Path) -> tuple[str, str, str]:
    """A CA and one certificate for 127.0.0.1 (server and client use), as files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wyneos test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    # no CommonName: etcd's gateway proxies with the member's own certificate and refuses
    # a request whose certificate names someone (the CN is ignored there: CVE-2018-16886)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "etcd.crt", tmp / "etcd.key", tmp / "ca.crt"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[1].chmod(0o600)
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return str(paths[0]), str(paths[1]), str(paths[2])


def test_tls_with_a_client_certificate_and_user_password_authentication(tmp_path: Path) -> None:
    need_etcd()
    tls = _certificates(tmp_path)
    cluster = LocalEtcdCluster(tmp_path / "etcd", 1, election_ms=500, tls=tls).start()
    try:
        admin = EtcdClient(cluster.endpoints, timeout=3, **cluster.client_options)
        for path, body in (("auth/role/add", {"name": "root"}),
                           ("auth/user/add", {"name": "root", "password": "s3cret-root"}),
                           ("auth/user/grant", {"user": "root", "role": "root"}), ("auth/enable", {})):
            admin.call(path, body)
        admin.close()
        # plain HTTP to a TLS member, or TLS without a client certificate: no answer
        with pytest.raises(EtcdError):
            EtcdClient(cluster.endpoints, timeout=2).get("/x")
        with pytest.raises(EtcdError):
            EtcdClient(cluster.endpoints, timeout=2, ca_file=tls[2]).get("/x")
        # the certificate alone is not an identity (the gateway ignores its name): no user, no access
        with pytest.raises(EtcdError, match="user name is empty|not provided|permission denied|token|CommonName of client"):
            EtcdClient(cluster.endpoints, timeout=2, **cluster.client_options).put("/x", "1")
        with pytest.raises(EtcdError, match="refused user 'root'"):
            EtcdClient(cluster.endpoints, timeout=2, username="root", password="wrong",
                       **cluster.client_options).get("/x")
        # a replica configured with the CA, its certificate, a user and a password file
        (tmp_path / "etcd-password").write_text("s3cret-root\n")
        cfg = tmp_path / "c.yaml"
        cfg.write_text("cluster: tls\nplugins: {disable: [licence]}\nreport: {stdout: none, json_path: null}\n"
                       "state: {backend: etcd, etcd: {"
                       f"endpoints: ['https://127.0.0.1:{cluster.client_ports[0]}'], ca_file: ca.crt, "
                       "cert_file: etcd.crt, key_file: etcd.key, username: root, password_file: etcd-password}}\n")
        service = _service(cfg)
        try:
            service.start()
            wait_for("a tick committed over TLS with a user", lambda: service.ha.committed_tick >= 2, 30)
        finally:
            service.stop()
        checked = subprocess.run([WYNEOS, "state", "check", "-c", str(cfg)], capture_output=True, text=True,
                                 timeout=60, cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "signatures checked" in checked.stdout
    finally:
        cluster.stop()


def test_auth_settings_are_checked_naming_the_field(tmp_path: Path) -> None:
    from wyneos_core.config import ConfigError
    from wyneos_core.ha.replica import client_options

    cfg = tmp_path / "c.yaml"
    for extra, field in (("username: root", "state.etcd.password_file"),
                         ("username: root, password_file: nowhere", "state.etcd.password_file"),
                         ("cert_file: c.yaml", "state.etcd.cert_file"), ("ca_file: missing.pem", "state.etcd.ca_file")):
        cfg.write_text(f"cluster: x\nstate: {{backend: etcd, etcd: {{{extra}}}}}\n")
        with pytest.raises(ConfigError) as refused:
            client_options(load_config(cfg))
        assert refused.value.field == field, (extra, refused.value)


def test_after_a_key_rotation_a_new_leader_signs_enrolment_data_again(etcd: LocalEtcdCluster, tmp_path: Path) -> None:
    """Enrolment data signed by the previous orchestrator key is signed again by the
    next leader, so retiring the previous key locks no node out."""
    from service_helpers import Node

    from wyneos_core.service.core import hash_token
    from wyneos_core.service.identity import SignedItem
    from wyneos_core.service.orchestrator_key import OrchestratorKey

    prefix = "/rotated/"
    cfg = _config(tmp_path, etcd, prefix)
    first = _service(cfg)
    try:
        first.db.add_enrol_token(hash_token("wyn_r"), None, 1, time.time() + 600, time.time(), customer="acme")
        node = Node("kept")
        assert first.enrol(SignedItem.from_headers(*reversed(node.enrol_request("wyn_r"))))[0] == 201
        key_path = first.okey.path
    finally:
        first.stop()
    OrchestratorKey.load_or_create(key_path).rotate()
    second = _service(cfg)
    try:
        second.start()
        wait_for("the new key's leader took over", lambda: second.ha.committed_tick >= 1, 30)
    finally:
        second.stop()
    key_path.with_name(key_path.name + ".previous.pub").unlink()  # the previous key retired
    third = _service(cfg)
    try:
        assert "kept" in third.keys and third.db.node_customers() == {"kept": "acme"}
    finally:
        third.stop()
