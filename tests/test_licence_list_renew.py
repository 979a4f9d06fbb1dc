"""`wyneos licence list` and `wyneos licence renew`: files listed soonest expiry first with
their state; a renewal keeps every field, moves the expiry later and is a newer issue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from wyneos_core.licensing.document import parse_licence
from wyneos_core.licensing.envelope import parse_envelope

WYNEOS = str(Path(sys.executable).with_name("wyneos"))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([WYNEOS, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _licence(path: Path):
    return parse_licence(parse_envelope(path.read_bytes(), "wyneos.licence/1"))[1]


def test_list_and_renew(tmp_path: Path) -> None:
    assert run("licence", "keygen", cwd=tmp_path).returncode == 0
    (tmp_path / "licences").mkdir()
    fp = "sha256:" + "ab" * 32
    assert run("licence", "issue", "--key", "issuer.key", "--id", "lic-a", "--customer", "acme", "--expires", "+10d",
               "--feature", "gpu", "--fingerprint", fp, "--grace-days", "3", "-o", "licences/a.json",
               cwd=tmp_path).returncode == 0
    assert run("licence", "issue", "--key", "issuer.key", "--id", "lic-b", "--customer", "beta", "--expires",
               "+200d", "--seats", "5", "-o", "licences/b.json", cwd=tmp_path).returncode == 0
    (tmp_path / "licences" / "broken.json").write_text("{")
    (tmp_path / "cluster.yaml").write_text("licence: {directory: licences}\n")
    listed = run("licence", "list", "-c", "cluster.yaml", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["LICENCE", "CUSTOMER", "TIER"]
    assert lines[1].split()[0] == "lic-a" and lines[1].endswith("expiring")  # within 30 days
    assert lines[2].split()[:4] == ["lic-b", "beta", "standard", "5"] and lines[2].endswith("valid")
    assert lines[3].startswith("broken.json") and "unreadable" in lines[3]

    before = _licence(tmp_path / "licences" / "a.json")
    renewed = run("licence", "renew", "licences/a.json", "--key", "issuer.key", "--expires", "+365d", cwd=tmp_path)
    assert renewed.returncode == 0, renewed.stderr
    after = _licence(tmp_path / "licences" / "a.json")
    assert after.expires > before.expires + 300 * 86400 and after.issued > before.issued  # a newer issue
    for field in ("licence_id", "customer", "product", "tier", "features", "grace_days", "seats", "fingerprints"):
        assert getattr(after, field) == getattr(before, field), field
    verified = run("licence", "verify", "licences/a.json", "--trusted", "issuer.pub", "--fingerprint", fp,
                   "--feature", "gpu", cwd=tmp_path)
    assert verified.returncode == 0 and verified.stdout.startswith("VALID"), verified.stdout + verified.stderr
    rows = json.loads(run("licence", "list", "licences", "--json", cwd=tmp_path).stdout)
    assert {r.get("licence_id"): r["state"] for r in rows if "licence_id" in r} == {"lic-a": "valid", "lic-b": "valid"}

    shorter = run("licence", "renew", "licences/a.json", "--key", "issuer.key", "--expires", "+5d", cwd=tmp_path)
    assert shorter.returncode == 2 and "not after the licence's expiry" in shorter.stderr
    assert _licence(tmp_path / "licences" / "a.json").expires == after.expires  # unchanged
    bad = run("licence", "renew", "licences/broken.json", "--key", "issuer.key", "--expires", "+5d", cwd=tmp_path)
    assert bad.returncode == 1 and "broken.json" in bad.stderr and "Traceback" not in bad.stderr


def test_the_example_of_the_page_runs_twice(tmp_path: Path) -> None:
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "licences.md").read_text()
    [script] = re.findall(r"```sh renew-example\n(.*?)```", page, re.S)
    (tmp_path / "shelf").mkdir()
    for _ in range(2):
        done = subprocess.run(["bash", "-e", "-c", script.replace("wyneos ", f"{WYNEOS} ")], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"lic-renew .* expiring", done.stdout) and "renewed until" in done.stdout
        assert done.stdout.rstrip().splitlines()[-1].startswith("VALID ok")
