"""A served cluster with real signed licences in several states, the shipped rulesets and a
plugin of its own, so that every kind of "why" shows: licence codes, rules, plugins."""

from __future__ import annotations

import time
from pathlib import Path

from service_helpers import Quarantine, make_service

from wyneos_core.demo.licences import ensure_demo_licences
from wyneos_core.service.core import Service

#: node id -> (licence, metadata): what the orchestrator finds on each
NODES: dict[str, tuple[str | None, dict]] = {
    "ok-1": ("lic-acme-01", {"region": "eu", "version": "2.4.1"}),
    "ok-2": ("lic-acme-01", {"region": "eu", "version": "2.4.1"}),
    "exp-1": ("lic-acme-03", {"region": "eu", "version": "2.4.1"}),  # expired, no grace: isolated
    "grace-1": ("lic-acme-06", {"region": "eu", "version": "2.4.1"}),  # expired in grace: degraded
    "none-1": (None, {"region": "eu", "version": "2.4.1"}),  # no licence: isolated
    "old-1": ("lic-acme-01", {"region": "eu", "version": "2.3.0"}),  # below the version floor: quarantined
    "bare-1": ("lic-acme-01", {}),  # no region nor version: required-metadata fails
    "bad-1": ("lic-acme-01", {"region": "eu", "version": "2.4.1", "role": "bad"}),  # the test plugin isolates it
}


def node_line(node_id: str) -> str:
    licence, metadata = NODES[node_id]
    meta = ", ".join(f"{k}: {v!r}" for k, v in metadata.items())
    return f"  - {{id: {node_id}" + (f", licence: {licence}" if licence else "") + f", metadata: {{{meta}}}}}"


def licensed_service(tmp: Path, interval: float = 0.2) -> Service:
    ensure_demo_licences(tmp / "keys", tmp / "licences",
                         [{"id": n, "licence": lic} for n, (lic, _meta) in NODES.items()], time.time())
    nodes = "\n".join(node_line(n) for n in NODES)
    path = tmp / "config.yaml"
    path.write_text(f"""cluster: why
tick: {{interval: {interval}}}
heartbeat: {{interval: 5, stale_after: 60, offline_after: 120, max_clock_skew: 30, unknown_nodes: reject}}
decide: {{max_unhealthy_fraction: 0.9}}
mesh: {{topology: star}}
nodes:
{nodes}
licence:
  sources: [file]
  directory: licences
  trusted_keys: [keys/issuer.pub]
  customer: acme
rulesets: {{paths: ["builtin:"]}}
enforcement: {{rules: {{quarantine-below-version-floor: enforce, quarantine-unknown-version: enforce}}}}  # they warn
plugins:
  disable: [governance, healing, enforcement]
  settings: {{service: {{port: 0, replay_window: 60}}}}
state: {{path: state.db}}
report: {{json_path: null, stdout: none}}
""")
    return make_service(path, plugins=(Quarantine(),))
