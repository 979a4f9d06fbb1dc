"""The operator token of the read API and the dashboard (issue 9, deliver 4)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from service_helpers import Node, add_token, make_service, write_config

from wyneos_core.config import ConfigError, load_config
from wyneos_core.service.server import ServerThread
from wyneos_core.service.settings import ServiceSettings

TOKEN = "op-token-0123456789abcdef"
READ = ("/v1/nodes", "/v1/nodes/edge-1", "/v1/ticks/latest", "/v1/ticks", "/v1/actions", "/v1/licences", "/v1/rules",
        "/v1/mesh", "/metrics")


def test_the_read_api_and_dashboard_need_the_token_the_node_api_does_not(tmp_path):
    service = make_service(write_config(tmp_path), read_token=TOKEN)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        node = Node("edge-1")  # signed node endpoints work as before
        body, headers = node.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        body, headers = node.heartbeat()
        assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 202
        assert client.get("/healthz").status_code == 200
        for path in READ:
            r = client.get(path)
            assert r.status_code == 401 and r.json()["code"] == "read_token_required", path
            assert "edge-1" not in r.text and r.headers["www-authenticate"].startswith("Bearer")
            assert client.get(path, headers={"authorization": "Bearer wrong-token-0123456789"}).status_code == 401
            assert client.get(path, headers={"authorization": f"Bearer {TOKEN}x"}).status_code == 401
            good = client.get(path, headers={"authorization": f"Bearer {TOKEN}"})
            assert good.status_code in (200, 404), (path, good.text)  # 404: no tick yet
        assert "edge-1" in client.get("/v1/nodes", headers={"authorization": f"Bearer {TOKEN}"}).text
        # the dashboard: a sign-in form, then a cookie the page's own requests carry
        page = client.get("/")
        assert page.status_code == 401 and 'action="/login"' in page.text and "edge-1" not in page.text
        assert client.post("/login", data={"token": "nope"}).status_code == 401
        signed_in = client.post("/login", data={"token": TOKEN})
        assert signed_in.status_code == 303 and "httponly" in signed_in.headers["set-cookie"].lower()
        assert "samesite=strict" in signed_in.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200 and "<html" in client.get("/").text.lower()
        assert client.get("/v1/nodes").status_code == 200


def test_without_a_token_loopback_reads_stay_open(tmp_path):
    service = make_service(write_config(tmp_path))
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/v1/nodes").status_code == 200 and client.get("/").status_code == 200


def test_binding_a_non_loopback_address_without_a_token_is_refused(tmp_path):
    config = load_config(write_config(tmp_path))
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        with pytest.raises(ConfigError) as err:
            ServiceSettings.from_config(config, host=host)
        assert "plugins.settings.service.read_token" in str(err.value) and "loopback" in str(err.value)
    assert ServiceSettings.from_config(config, host="0.0.0.0", read_token=TOKEN).read_token == TOKEN
    for host in ("127.0.0.1", "::1", "localhost"):
        assert ServiceSettings.from_config(config, host=host).read_token is None
    with pytest.raises(ConfigError, match="at least 16"):
        ServiceSettings.from_config(config, read_token="short")
    done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "serve", "--config", str(tmp_path / "config.yaml"),
                           "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "read_token" in done.stderr and "Traceback" not in done.stderr


def test_the_token_from_an_owner_only_file(tmp_path):
    token_file = tmp_path / "read-token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o644)
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("replay_window: 60}", "replay_window: 60, read_token_file: read-token}"))
    with pytest.raises(ConfigError, match="readable by others"):
        ServiceSettings.from_config(load_config(path))
    os.chmod(token_file, 0o600)
    assert ServiceSettings.from_config(load_config(path), host="0.0.0.0").read_token == TOKEN
    os.unlink(token_file)
    os.mkfifo(token_file, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        ServiceSettings.from_config(load_config(path))
