"""Both licence-source distributions pip-installed into a fresh virtual environment,
discovered through the ``wyneos`` entry-point group and used in a tick."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.test_licence_http import LicenceAPI
from tests.test_licence_support import Issuer
from tests.venvtools import make_venv, pip_install, run_in
from wyneos_core.config import load_config
from wyneos_core.licensing.document import issue_licence

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_plugins_are_discovered_and_used_in_a_tick(tmp_path):
    python = make_venv(tmp_path / "venv")
    pip_install(python, ROOT / "plugins" / "wyneos-licence-http", ROOT / "plugins" / "wyneos-licence-kv")

    issuer = Issuer(tmp_path)
    import time

    now = time.time()
    api = LicenceAPI()
    try:
        api.licences["lic-web"] = {"status": "active", "document": issue_licence(
            issuer.key, licence_id="lic-web", customer="acme", issued=now - 100, expires=now + 86400)}
        kv_doc = issue_licence(issuer.key, licence_id="lic-kv", customer="acme", issued=now - 100,
                               expires=now + 86400)
        (tmp_path / "kv.licence").write_text(json.dumps(kv_doc))
        # the registry is written with the installed plugin's own command
        cli = tmp_path / "venv" / "bin" / "wyneos-licence-kv"
        import subprocess

        for args in (["put", str(tmp_path / "kv.licence")], ["assign", "n-kv", "lic-kv"]):
            subprocess.run([str(cli), str(tmp_path / "reg.db"), *args], check=True, capture_output=True)
        (tmp_path / "wyneos.yaml").write_text(f"""
nodes:
  - {{id: n-web, licence: lic-web}}
  - {{id: n-kv}}
  - {{id: n-none}}
licence:
  sources: [http, kv, file]
  trusted_keys: [keys/issuer.pub]
  customer: acme
plugins:
  settings:
    licence-http: {{url: "{api.url}", timeout: 2}}
    licence-kv: {{path: reg.db}}
state: {{path: state.db}}
report: {{json_path: null}}
""")
        listed = run_in(python, "plugins", "--json", "--config", "wyneos.yaml", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        plugins = {p["name"]: p for p in json.loads(listed.stdout)}
        assert plugins["licence-http"]["origin"] == "entry point (wyneos-licence-http)"
        assert plugins["licence-kv"]["origin"] == "entry point (wyneos-licence-kv)"
        assert plugins["licence-http"]["hooks"] == ["wyneos_check_config", "wyneos_licence_sources"]

        out = run_in(python, "tick", "--json", "--config", "wyneos.yaml", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["errors"] == []
        # n-web can only be licensed by the HTTP API and n-kv only by the registry (there is no licence directory)
        assert report["licence_summary"] == {"ok": 2, "no_licence": 1}
        assert [r["node_id"] for r in report["licences"]] == ["n-none"]
        assert len(api.requests) == 1 and {n["id"] for n in api.requests[0]["nodes"]} == {"n-web", "n-kv", "n-none"}
        # the plugins' READMEs: their config examples load, their shell examples run as written
        for name in ("wyneos-licence-http", "wyneos-licence-kv"):
            readme = (ROOT / "plugins" / name / "README.md").read_text()
            for text in re.findall(r"```yaml\n(.*?)```", readme, re.S):
                load_config(text=text)
            for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
                (tmp_path / "lic-acme-01.licence").write_text(json.dumps(issue_licence(
                    issuer.key, licence_id="lic-acme-01", customer="acme", issued=now - 100, expires=now + 86400)))
                for line in block.strip().splitlines():
                    argv = shlex.split(line)
                    done = subprocess.run([str(tmp_path / "venv" / "bin" / argv[0]), *argv[1:]], cwd=tmp_path,
                                          capture_output=True, text=True)
                    assert done.returncode == 0, (line, done.stderr)
        listed = subprocess.run([str(cli), str(tmp_path / "licences.db"), "list"], capture_output=True, text=True)
        assert listed.stdout.split("\t")[:2] == ["lic-acme-01", "suspended"], listed.stdout
    finally:
        api.close()

