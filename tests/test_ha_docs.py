"""docs/ha.md as written: its config is valid, its commands parse, its example runs
(twice in the same directory, against a real etcd cluster and real replicas)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from ha_helpers import need_etcd
from wyneos_core.config import load_config

PAGE = Path(__file__).resolve().parents[1] / "docs" / "ha.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}(?: [^\n]*)?\n(.*?)```", PAGE.read_text(), re.S)


def test_the_replica_config_is_valid_and_names_etcd(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(blocks("yaml")[0])
    config = load_config(tmp_path / "cluster.yaml")
    assert config["state"]["backend"] == "etcd" and len(config["state"]["etcd"]["endpoints"]) == 3
    from wyneos_core.ha.replica import election_config

    cfg = election_config(config)
    assert (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period) == (15, 10, 2)


def test_the_wyneos_commands_of_the_page_parse() -> None:
    from wyneos_core.cli import parser

    lines = [line[2:] for block in blocks("console") for line in block.splitlines() if line.startswith("$ wyneos ")]
    assert len(lines) >= 4
    for line in lines:
        args = parser().parse_args(shlex.split(line.split("#")[0])[1:])
        assert callable(args.func)


def test_the_healthz_example_has_the_fields_a_replica_returns() -> None:
    example = json.loads(blocks("json")[0])
    assert {"role", "tick", "leader", "deciding", "backend"} <= set(example)


@pytest.mark.slow
def test_the_example_runs_twice_in_the_same_directory(tmp_path, monkeypatch, capsys) -> None:
    need_etcd()
    monkeypatch.chdir(tmp_path)
    code = compile(blocks("python")[0], "ha.md (example)", "exec")
    for _ in range(2):
        exec(code, {"__name__": "docs_ha"})  # noqa: S102 - our own documentation
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["killed"] != out["new leader"] and out["to"] > out["ticks on from"]


def test_the_tls_config_is_valid_and_its_files_are_checked(tmp_path: Path) -> None:
    from wyneos_core.config import ConfigError
    from wyneos_core.ha.replica import client_options

    text = blocks("yaml")[1]
    assert "https://" in text and "password_file" in text
    (tmp_path / "cluster.yaml").write_text("cluster: lab\n" + text)
    config = load_config(tmp_path / "cluster.yaml")
    with pytest.raises(ConfigError) as refused:  # the files named are not on this machine
        client_options(config)
    assert refused.value.field == "state.etcd.ca_file"
    etcd = config["state"]["etcd"]
    for name in ("ca_file", "cert_file", "key_file", "password_file"):
        local = tmp_path / Path(etcd[name]).name
        local.write_text("s3cret\n" if name == "password_file" else "-")
        etcd[name] = str(local)
    options = client_options(config)
    assert options["tls"] and options["username"] == "wyneos" and options["password"] == "s3cret"
