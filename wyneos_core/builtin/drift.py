"""Builtin drift: each node's reported state against its declared state, every tick.

Declarations come from ``drift.declared`` in the config and from the signed manifests
in ``drift.manifests`` (checked against ``drift.trusted_keys``, or the licence's
trusted keys when that list is empty; a changed directory is read again every
``drift.rescan`` seconds). Before the rulesets evaluate anything (``wyneos_governance``,
first), the step compares every node (``wyneos_core.drift.DriftEngine``), leaves the
records for the rules in ``ctx.scratch["drift"]`` (``node.drift``, ``drift_age()``),
counts the states in the report (``report.drift``) and lists each node's change of
drift state among the report's transitions (kind ``drift``). The columns are kept in
the state store (``put_blob``: SQLite, or etcd on replicas) every ``SAVE_EVERY`` ticks
if a node changed state, and at shutdown, and restored at the first tick. See
docs/drift.md.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from wyneos_core import hookimpl
from wyneos_core.config import Config
from wyneos_core.drift.declared import DeclarationError, declaration_from, load_manifests
from wyneos_core.drift.engine import DriftEngine
from wyneos_core.model import Node, RuleResult

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext

__all__ = ["SCRATCH_KEY", "drift_record", "engine_of"]

SCRATCH_KEY: Final = "drift"
#: drift transitions listed one by one in a tick report at most (all are counted)
REPORT_LIMIT: Final = 1000


#: the name of the drift columns in the state store (``put_blob``)
BLOB_NAME: Final = "drift"
#: at most every this many ticks the drift columns are saved, if a node changed state since
SAVE_EVERY: Final = 60


class _DriftPlugin:
    __slots__ = ("engine", "config_decls", "manifests", "keys", "rescan", "checked_at", "stamp", "problems",
                 "loaded", "dirty")

    def __init__(self, config: Config) -> None:
        section = config["drift"]
        self.config_decls = [declaration_from(entry, f"drift.declared[{i}]")
                             for i, entry in enumerate(section["declared"])]
        self.manifests = config.resolve(section["manifests"]) if section.get("manifests") else None
        keys = section["trusted_keys"] or config["licence"].get("trusted_keys", [])
        self.keys = [config.resolve(k) for k in keys]
        self.rescan = float(section["rescan"])
        self.checked_at = float("-inf")
        self.stamp: Any = None
        self.problems: list[str] = []
        self.engine = DriftEngine(self.config_decls)
        self.loaded = False  # the saved state was looked for
        self.dirty = False

    def restore(self, orchestrator: Any, notes: list[str]) -> None:
        """The drift columns saved by the last run, once (SQLite, or etcd on replicas)."""
        self.loaded = True
        blob = getattr(orchestrator.store, "blob", None)
        saved = blob(BLOB_NAME) if blob is not None else None
        if saved is None:
            return
        from wyneos_core.drift.saved import DriftStateError, restore

        try:
            restore(self.engine, saved)
        except DriftStateError as exc:
            self.engine = DriftEngine(self.engine.declarations)
            notes.append(f"drift: the saved drift state was not used ({exc}); drift is found again from now")

    def save(self, orchestrator: Any) -> None:
        put = getattr(orchestrator.store, "put_blob", None)
        if put is not None and self.engine.ids:
            from wyneos_core.drift.saved import to_bytes

            put(BLOB_NAME, to_bytes(self.engine))
            self.dirty = False

    def reload(self, now: float, notes: list[str]) -> None:
        """Read the manifests again if the directory changed (at most every ``rescan`` s)."""
        if self.manifests is None or now - self.checked_at < self.rescan:
            return
        self.checked_at = now
        stamp = _stamp(self.manifests)
        if stamp == self.stamp:
            return
        self.stamp = stamp
        from wyneos_core.licensing.keys import KeyFileError, KeyRing

        try:
            ring = KeyRing.from_paths(self.keys)
        except (KeyFileError, OSError, ValueError) as exc:
            notes.append(f"drift: trusted keys unreadable, manifests ignored: {exc}")
            ring = KeyRing()
        found, problems = load_manifests(self.manifests, ring)
        for problem in problems:
            if problem not in self.problems:
                notes.append(f"drift: manifest refused: {problem}")
        self.problems = problems
        self.engine.set_declarations([*self.config_decls, *found])


def _stamp(directory: Path) -> Any:
    try:
        return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                            for e in os.scandir(directory) if e.name.endswith(".json")))
    except OSError:
        return None


_PLUGINS: weakref.WeakKeyDictionary[Any, _DriftPlugin] = weakref.WeakKeyDictionary()


def engine_of(pluginmanager: Any) -> DriftEngine | None:
    """The drift engine of an orchestrator's plugin manager (None before configure)."""
    plugin = _PLUGINS.get(pluginmanager)
    return plugin.engine if plugin is not None else None


def drift_record(orchestrator: Any, node_id: str) -> dict[str, Any] | None:
    """A node's drift record as the last tick left it (None: nothing declared for it)."""
    engine = engine_of(orchestrator.pm)
    return engine.record(node_id) if engine is not None and engine.declarations else None


@hookimpl
def wyneos_check_config(config: Config) -> list[tuple[tuple, str]]:
    problems = []
    for i, entry in enumerate(config["drift"]["declared"]):
        try:
            declaration_from(entry, f"drift.declared[{i}]")
        except DeclarationError as exc:
            problems.append((("drift", "declared", i), str(exc)))
    manifests = config["drift"].get("manifests")
    if manifests and not config.resolve(manifests).is_dir():
        problems.append((("drift", "manifests"), f"{manifests}: not a directory"))
    return problems


@hookimpl
def wyneos_configure(config: Config, pluginmanager: Any) -> None:
    _PLUGINS[pluginmanager] = _DriftPlugin(config)


@hookimpl(tryfirst=True)
def wyneos_governance(ctx: TickContext, nodes: Sequence[Node]) -> list[RuleResult]:
    plugin = _PLUGINS.get(ctx.orchestrator.pm)
    if plugin is None:
        return []
    plugin.reload(ctx.now, ctx.report.notes)
    if not plugin.engine.declarations:
        return []
    if not plugin.loaded:
        plugin.restore(ctx.orchestrator, ctx.report.notes)
    step = plugin.engine.step(nodes, ctx.now)
    plugin.dirty = plugin.dirty or bool(step.transitions)
    if plugin.dirty and ctx.tick % SAVE_EVERY == 0:
        plugin.save(ctx.orchestrator)
    ctx.scratch[SCRATCH_KEY] = plugin.engine.view()
    report = ctx.report
    report.drift = {"counts": step.counts, "changed": len(step.transitions)}
    for node_id, old, new, fields in step.transitions[:REPORT_LIMIT]:
        report.transitions.append({"kind": "drift", "node_id": node_id, "from": old, "to": new, "fields": fields})
    return []


@hookimpl
def wyneos_shutdown(orchestrator: Any) -> None:
    plugin = _PLUGINS.get(orchestrator.pm)
    if plugin is not None and plugin.loaded and plugin.engine.declarations:
        plugin.save(orchestrator)

