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


def test_state_path_typo_is_refused_and_memory_state_is_not_a_path(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("nodes: [{id: a}]\nplugins: {disable: [licence]}\nreport: {json_path: null}\n"
                      "state: {path: sate/data/s.db}\n")
    out = wyneos("run", "--ticks", "1", "--interval", "0.1", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2 and "neither" in out.stderr and "a typo in state.path?" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no directory made for the typo
    config.write_text(config.read_text().replace("sate/data/s.db", "data/s.db"))
    out = wyneos("tick", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "data" / "s.db").is_file()
    assert f"created the directory {tmp_path / 'data'} for the state file" in out.stdout
    config.write_text(config.read_text().replace("data/s.db", "':memory:'"))
    out = wyneos("run", "--ticks", "1", "--interval", "0.1", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0 and "state in memory only (state.path ':memory:')" in out.stdout
    assert ":memory:" not in out.stdout.replace("state.path ':memory:'", "")
