"""A mistyped licence setting is refused by `run`, `tick` and `serve` before the first tick
(exit 2, file:line:column and field), instead of isolating every node and exiting 0.
(Plugin settings, such as licence-http's, are refused the same way: tests/test_licence_http.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wyneos_core.licensing.keys import generate_key, write_public_key


def wyneos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def setup(tmp_path: Path, licence: str, extra: str = "") -> Path:
    write_public_key(tmp_path / "issuer.pub", generate_key())
    (tmp_path / "licences").mkdir()
    config = tmp_path / "cluster.yaml"
    config.write_text(textwrap.dedent("""\
        nodes: [{id: a, licence: l-a}, {id: b, licence: l-b}]
        state: {path: state/wyneos.db}
        report: {json_path: null}
        licence:
        """) + textwrap.indent(textwrap.dedent(licence), "  ") + textwrap.dedent(extra))
    return config


CASES = {
    "trusted key typo": ("trusted_keys: [isuer.pub]\n", "", "5:18: licence.trusted_keys[0]: no such key file or "
                         "directory: {dir}/isuer.pub; did you mean 'issuer.pub'?"),
    "unknown source": ("trusted_keys: [issuer.pub]\nsources: [htp]\n", "",
                       "6:13: licence.sources[0]: no loaded plugin offers a licence source named 'htp' "
                       "(available: file"),
    "directory typo": ("trusted_keys: [issuer.pub]\ndirectory: nope\n", "",
                       "6:3: licence.directory: no such directory: {dir}/nope"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["tick", "run", "serve"])
def test_licence_misconfiguration_is_refused_before_the_first_tick(tmp_path, command, case):
    licence, extra, expected = CASES[case]
    config = setup(tmp_path, licence, extra)
    args = {"tick": ["tick"], "run": ["run", "--ticks", "2"], "serve": ["serve", "--port", "0"]}[command]
    out = wyneos(*args, "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    first = out.stderr.splitlines()[0]
    assert first.startswith(f"wyneos: error: {config}:" + expected.format(dir=tmp_path)), out.stderr
    assert "tick 1" not in out.stdout
    assert not (tmp_path / "state").exists()  # nothing was written: no state directory, no state file


def test_every_mistake_is_named_in_one_run(tmp_path):
    config = setup(tmp_path, "trusted_keys: [isuer.pub]\nsources: [file, htp]\ndirectory: nope\n",
                   "heartbeat: {hearbeat: 3, interval: fast}\n")
    out = wyneos("tick", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    # the schema's mistakes first (the plugin checks need a config of the right shape)
    assert [line.split(": ")[3] for line in lines] == ["heartbeat.hearbeat", "heartbeat.interval"], lines
    assert lines[0].endswith("unknown field 'hearbeat'; did you mean 'interval'?") or "allowed:" in lines[0]
    config.write_text(config.read_text().replace("heartbeat: {hearbeat: 3, interval: fast}\n", ""))
    out = wyneos("tick", "--config", str(config), cwd=tmp_path)
    fields = [line.split(": ")[3] for line in out.stderr.splitlines()]
    assert fields == ["licence.trusted_keys[0]", "licence.sources[1]", "licence.directory"], out.stderr
