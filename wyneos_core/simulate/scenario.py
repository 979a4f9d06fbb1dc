"""Fault-injection scenarios: the YAML format, loading, checking and finding them.

A scenario names a cluster (size, mesh, orchestrator config), a list of faults over
time and, optionally, what the outcome must be. The format is the JSON Schema
``scenario.schema.json`` next to this module, documented in ``docs/simulation.md``.
Mistakes are refused with file, line and field (``LocatedError``).

``builtin:NAME`` names a shipped scenario (see ``scenario_dirs``).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from wyneos_core.config import Config, ConfigError, _check_semantics, fill_defaults, schema as config_schema
from wyneos_core.yamlio import Located, LocatedError, load_yaml, validate_schema

__all__ = [
    "FAULT_KINDS",
    "MAX_NODES",
    "MAX_TICKS",
    "Fault",
    "Scenario",
    "builtin_scenarios",
    "load_scenario",
    "node_ids",
    "position_of",
    "resolve_scenario",
]

#: the largest cluster and the longest run a scenario (or ``--nodes`` / ``--ticks``) may ask for
MAX_NODES = 1_000_000
MAX_TICKS = 100_000

FAULT_KINDS = ("crash", "hang", "overload", "flapping", "partition", "licence_expiry", "forged_licence",
               "clock_skew", "message_loss", "orchestrator_link_loss", "liar", "colluders", "degrading",
               "leak", "disk_fill", "cron_burst", "drift")

#: Orchestrator settings of a simulation unless the scenario says otherwise: the tick and
#: the heartbeat share one rhythm, nothing is written to stdout or files.
SIM_DEFAULTS: dict[str, Any] = {
    "tick": {"interval": 5.0},
    "heartbeat": {"interval": 5.0, "stale_after": 15.0, "offline_after": 40.0, "max_clock_skew": 30.0},
    "report": {"stdout": "none", "json_path": None},
    "state": {"path": ":memory:"},
}


@cache
def scenario_schema() -> dict[str, Any]:
    text = (resources.files("wyneos_core.simulate") / "scenario.schema.json").read_text()
    return json.loads(text)


@dataclass(slots=True)
class Fault:
    """One fault of a scenario; ``targets`` are resolved against the cluster size."""

    kind: str
    at: int
    until: int | None
    nodes: list[str] | None = None
    count: int | None = None
    fraction: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    index: int = 0

    def active(self, tick: int) -> bool:
        return self.at <= tick and (self.until is None or tick < self.until)

    @property
    def label(self) -> str:
        return f"#{self.index} {self.kind}@{self.at}"


@dataclass(slots=True)
class Scenario:
    """A loaded, checked scenario."""

    name: str
    description: str
    nodes: int
    ticks: int
    seed: int
    mesh: dict[str, Any]
    config: dict[str, Any]
    load: dict[str, float]
    faults: list[Fault]
    expect: dict[str, Any]
    source: str = "<scenario>"
    located: Located | None = None
    #: zones the nodes are spread over (metadata ``zone``), in blocks of consecutive ids
    zones: int = 1

    def with_overrides(self, *, nodes: int | None = None, ticks: int | None = None,
                       seed: int | None = None) -> Scenario:
        """A copy with ``--nodes`` / ``--ticks`` / ``--seed`` applied and checked."""
        out = Scenario(self.name, self.description, self.nodes if nodes is None else nodes,
                       self.ticks if ticks is None else ticks,
                       self.seed if seed is None else seed, dict(self.mesh), self.config, self.load,
                       self.faults, self.expect, self.source, self.located, self.zones)
        for option, value, most in (("--nodes", nodes, MAX_NODES), ("--ticks", ticks, MAX_TICKS)):
            if value is not None and not 1 <= value <= most:
                raise LocatedError(f"must be between 1 and {most}, got {value}", file=option)
        problems = _fault_problems(out)
        if problems:
            raise ConfigError.of(problems)
        return out

    def orchestrator_config(self) -> Config:
        """The orchestrator ``Config`` of this scenario (validated when it was loaded)."""
        data = _merge(SIM_DEFAULTS, self.config)
        data["mesh"] = {**data.get("mesh", {}), **self.mesh, "seed": self.seed}
        data["cluster"] = f"sim-{self.name}"
        base = Path(self.source).parent if self.source and Path(self.source).is_file() else None
        return Config(fill_defaults(config_schema(), data), source=self.source, base_dir=base)


def zone_of(index: int, count: int, zones: int) -> str:
    """The zone of the ``index``-th (0-based) of ``count`` nodes spread over ``zones``."""
    return f"zone-{index * zones // count + 1}"


def node_ids(count: int) -> list[str]:
    """The ids of a simulated cluster of ``count`` nodes: ``node-0001``..."""
    width = max(4, len(str(count)))
    return [f"node-{i:0{width}d}" for i in range(1, count + 1)]


def position_of(node_id: str, ids: Sequence[str]) -> int | None:
    """Where ``node_id`` is in ``ids`` (None: not there): read from the id's number when
    ``ids`` are ``node_ids(len(ids))``, searched for otherwise."""
    if type(node_id) is not str:
        return None
    digits = node_id.rpartition("-")[2]
    if digits.isdigit():
        p = int(digits) - 1
        if 0 <= p < len(ids) and ids[p] == node_id:
            return p
    try:
        return ids.index(node_id)
    except ValueError:
        return None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load_scenario(path: str | Path | None = None, *, text: str | None = None, name: str | None = None) -> Scenario:
    """Load and check a scenario file (or ``text``).

    :raises LocatedError: naming file, line and field of a mistake; its ``errors`` (when
        there) hold every mistake of the faults and load sections, in file order.
    """
    source = str(path) if path is not None else (name or "<scenario>")
    located = load_yaml(source, text=text)
    if not isinstance(located.data, dict):
        raise LocatedError("a scenario must be a mapping (scenario:, faults: ...)", file=located.file, line=1)
    validate_schema(located, scenario_schema())
    data = fill_defaults(scenario_schema(), located.data)
    _check_config(located, data)
    problems: list[LocatedError] = []
    faults = []
    for index, raw in enumerate(data["faults"]):
        picks = [k for k in ("nodes", "count", "fraction") if k in raw]
        if raw["kind"] != "message_loss" and len(picks) != 1:
            problems.append(located.error(("faults", index), "give exactly one of nodes, count or fraction"))
        if raw["until"] is not None and raw["until"] <= raw["at"]:
            problems.append(located.error(("faults", index, "until"),
                                          f"must be after at ({raw['at']}), got {raw['until']}"))
        params = {k: raw[k] for k in ("extra", "down", "up", "skew", "probability", "forgery", "rate", "metric",
                                      "per_tick", "period", "length", "height", "field") if k in raw}
        for name, value in params.items():
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(located.error(("faults", index, name), f"must be a finite number, got {value}"))
        faults.append(Fault(raw["kind"], raw["at"], raw["until"], raw.get("nodes"), raw.get("count"),
                            raw.get("fraction"), params, index))
    load = data["load"]
    if load["max"] < load["min"]:
        problems.append(located.error(("load", "max"), f"must be at least load.min ({load['min']}), got {load['max']}"))
    scenario = Scenario(data["scenario"], data["description"], data["nodes"], data["ticks"], data["seed"],
                        data["mesh"], data["config"], load, faults, data["expect"], located.file, located,
                        data["zones"])
    problems += _fault_problems(scenario)
    if problems:  # every mistake at once, in file order
        raise ConfigError.of(sorted(problems, key=lambda e: (e.line or 0, e.column or 0)))
    return scenario


def _check_config(located: Located, data: dict[str, Any]) -> None:
    config = data["config"]
    for section in ("nodes", "demo"):
        if section in config:
            raise located.error(("config", section), "is set by the simulator, not by the scenario")
    sub = Located(config, located.file, located.positions)
    validate_schema(sub, config_schema(), prefix=("config",))
    mesh = Located(data["mesh"], located.file, located.positions)
    mesh_schema = config_schema()["properties"]["mesh"]
    validate_schema(mesh, mesh_schema, prefix=("mesh",))
    if data["mesh"].get("topology") == "explicit":
        raise located.error(("mesh", "topology"), "explicit meshes need node lists; pick a generated topology")
    merged = fill_defaults(config_schema(), _merge(SIM_DEFAULTS, config))
    try:
        positions = {k[1:]: v for k, v in located.positions.items() if k[:1] == ("config",)}
        _check_semantics(Located(merged, located.file, positions), merged)
    except LocatedError as exc:
        raise LocatedError(exc.reason, file=located.file, line=exc.line, column=exc.column,
                           field=f"config.{exc.field}" if exc.field else "config") from None


def _fault_problems(scenario: Scenario) -> list[LocatedError]:
    """What is wrong with the faults given the scenario's size and length (every mistake)."""
    problems = []

    def problem(path: tuple[Any, ...], reason: str) -> None:
        problems.append(scenario.located.error(path, reason) if scenario.located is not None
                        else LocatedError(reason, file=scenario.source))

    named = [n for fault in scenario.faults for n in fault.nodes or ()]
    known = set(node_ids(scenario.nodes)) if named else set()  # a million ids only when some are named
    for fault in scenario.faults:
        for node_id in fault.nodes or ():
            if node_id not in known:
                problem(("faults", fault.index, "nodes"),
                        f"unknown node {node_id!r} (this run has {node_ids(scenario.nodes)[0]} .. "
                        f"{node_ids(scenario.nodes)[-1]})")
        if fault.count is not None and fault.count > scenario.nodes:
            problem(("faults", fault.index, "count"), f"{fault.count} nodes asked for, the cluster has {scenario.nodes}")
        if fault.at > scenario.ticks:
            problem(("faults", fault.index, "at"), f"tick {fault.at} is after the last tick ({scenario.ticks})")
    return problems


def pick_nodes(fault: Fault, ids: Sequence[str], rng: random.Random) -> list[str]:
    """The nodes ``fault`` hits in a cluster of ``ids`` (seeded draws for count/fraction)."""
    if fault.nodes is not None:
        return list(fault.nodes)
    if fault.count is not None:
        return rng.sample(list(ids), fault.count)
    if fault.fraction is not None:
        return rng.sample(list(ids), max(1, round(fault.fraction * len(ids))))
    return []


# -- shipped scenarios ------------------------------------------------------------------------



def scenario_dirs() -> list[Path]:
    """Where shipped scenarios are: ``wyneos_core/shipped_scenarios``, which in the source
    tree is a link to the repository's ``scenarios/`` (the source of truth) and in an
    installed package holds the copies packaged with it (as for shipped rulesets)."""
    packaged = Path(str(resources.files("wyneos_core") / "shipped_scenarios"))
    return [packaged] if packaged.is_dir() else []


def builtin_scenarios() -> dict[str, Path]:
    """Name -> file of every shipped scenario."""
    found: dict[str, Path] = {}
    for directory in scenario_dirs():
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def resolve_scenario(spec: str) -> Path:
    """A scenario file from a path or ``builtin:NAME``.

    :raises LocatedError: when the file or the shipped scenario does not exist.
    """
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        shipped = builtin_scenarios()
        if name not in shipped:
            known = ", ".join(sorted(shipped)) or "none found"
            raise LocatedError(f"no shipped scenario {name!r} (shipped: {known})", file=spec)
        return shipped[name]
    path = Path(spec)
    if not path.is_file():
        raise LocatedError("no such scenario file", file=spec)
    return path
