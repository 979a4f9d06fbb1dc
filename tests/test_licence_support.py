"""Helpers shared by the licence tests (no tests here): an issuer, licence files, clusters."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import FakeClock
from wyneos_core.config import load_config
from wyneos_core.licensing.document import issue_licence
from wyneos_core.licensing.keys import generate_key, write_private_key, write_public_key
from wyneos_core.model import Heartbeat
from wyneos_core.tick import Orchestrator

DAY = 86400.0
T0 = 1_700_000_000.0


class Issuer:
    """A throw-away issuer key with its public key written to ``root/keys``."""

    def __init__(self, root: Path, name: str = "issuer") -> None:
        self.root = root
        self.key = generate_key()
        self.private_path = write_private_key(root / "keys" / f"{name}.key", self.key)
        self.public_path = write_public_key(root / "keys" / f"{name}.pub", self.key)

    def licence(self, licence_id: str, *, customer: str = "acme", issued: float = T0 - DAY,
                expires: float = T0 + 365 * DAY, **fields: Any) -> dict[str, Any]:
        return issue_licence(self.key, licence_id=licence_id, customer=customer, issued=issued, expires=expires,
                             **fields)

    def write(self, directory: Path, licence_id: str, *, stem: str | None = None, **fields: Any) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stem or licence_id}.licence"
        path.write_text(json.dumps(self.licence(licence_id, **fields)))
        return path


def licence_config(root: Path, nodes: list[dict[str, Any]], licence: str = "", extra: str = "") -> Any:
    """A config in ``root`` whose file source reads ``root/licences`` and trusts ``root/keys``."""
    section = {"directory": "licences", "trusted_keys": ["keys"], "customer": "acme", "rescan": 0}
    section.update(yaml.safe_load(textwrap.dedent(licence)) or {})
    node_lines = "\n".join("  - " + json.dumps(n) for n in nodes)
    text = textwrap.dedent(f"""\
        heartbeat: {{interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}}
        mesh: {{topology: ring, origin_links: 2, seed: 1}}
        report: {{stdout: none, json_path: null}}
        nodes:
        """) + node_lines + "\n" + "licence: " + json.dumps(section) + "\n" + textwrap.dedent(extra)
    path = root / "wyneos.yaml"
    path.write_text(text)
    for directory in ("licences", "keys"):  # a config naming a missing directory is refused at start
        (root / directory).mkdir(exist_ok=True)
    return load_config(path)


def orchestrator(config: Any, clock: FakeClock, plugins: tuple = ()) -> Orchestrator:
    return Orchestrator(config, clock=clock, plugins=plugins, load_entrypoints=False, store=False)


def beat_all(orch: Orchestrator, clock: FakeClock, **fingerprints: str) -> None:
    orch.intake.put_many(Heartbeat(n.id, clock(), 0.3, {}, fingerprint=fingerprints.get(n.id.replace("-", "_")))
                         for n in orch.registry)


def reasons(report: Any) -> dict[str, str]:
    return {nid: r.reason for nid, r in report.licences.items()}
