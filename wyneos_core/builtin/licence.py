"""Builtin licence validation: asks the configured licence sources, in order, per node.

At startup the plugin collects every source offered through ``wyneos_licence_sources``
(its own contribution is the file source, named ``file``), loads the trusted issuer
keys and builds a ``wyneos_core.licensing.engine.LicenceEngine``. Each tick it
verifies signatures (once per document), checks dates, customer, product, machine
pairing, seats, revocation, replay and entitlements, and caches results
(``licence.cache_ttl``). A source that cannot answer follows ``licence.outage``.

In the enforcement step it proposes one ``revoke`` action for the accepted revocation
list, targeted at every node (``"*"``): its params carry the list version, the ids that
version added (``new_revocations``) and every revoked id (``licence_ids``, so a node
that missed earlier versions catches up). One list is one action, however many
licences it revokes; the decide step keeps it in force while that version is current,
and propagation carries it to every reachable node once.

Replay protection and the accepted revocation list survive restarts in the ledger
(``licence.ledger``; by default ``licence-ledger.json`` next to the state file).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.config import Config
from wyneos_core.licensing.engine import LicenceEngine
from wyneos_core.licensing.keys import KeyFileError, KeyRing
from wyneos_core.licensing.ledger import Ledger
from wyneos_core.licensing.settings import LicenceSettings
from wyneos_core.licensing.sources import FileSource
from wyneos_core.model import Action, ActionType, LicenceResult, Node, PluginError, Severity
from wyneos_core.tick import Orchestrator, TickContext

__all__ = ["engine_of", "settings_of"]


LEDGER_NAME = "licence-ledger.json"


def settings_of(config: Config) -> LicenceSettings:
    return LicenceSettings.from_config(config["licence"], config.resolve)


def default_ledger(orchestrator: Orchestrator) -> Path | None:
    """``licence-ledger.json`` next to the orchestrator's state file, or None without one."""
    if orchestrator.store is None:
        return None
    path = orchestrator.config["state"]["path"]
    if path == ":memory:":
        return None
    return orchestrator.config.resolve(path).parent / LEDGER_NAME


def engine_of(orchestrator: Orchestrator) -> LicenceEngine:
    """The running licence engine of ``orchestrator`` (built at startup)."""
    engine = getattr(orchestrator, "_licence_engine", None)
    if engine is None:
        orchestrator.start()
        engine = getattr(orchestrator, "_licence_engine", None)
        if engine is None:  # startup of this plugin failed; validate with nothing trusted
            engine = _build(orchestrator, [])
    return engine


@hookimpl
def wyneos_licence_sources(config: Config) -> Any:
    settings = settings_of(config)
    return FileSource(settings.directory, settings.mapping, name="file", rescan=settings.rescan)


def _build(orchestrator: Orchestrator, errors: list[PluginError]) -> LicenceEngine:
    settings = settings_of(orchestrator.config)
    if settings.ledger is None:
        settings.ledger = default_ledger(orchestrator)
    sources: dict[str, Any] = {}
    for plugin, batch in orchestrator.pm.call_each("wyneos_licence_sources", errors, config=orchestrator.config):
        for source in batch if isinstance(batch, (list, tuple)) else [batch]:
            name = getattr(source, "name", None)
            if not isinstance(name, str) or not callable(getattr(source, "lookup", None)):
                errors.append(PluginError(plugin, "wyneos_licence_sources",
                                          f"{source!r:.80} is not a licence source (needs name and lookup)",
                                          kind="invalid_result"))
                continue
            if name in sources:
                errors.append(PluginError(plugin, "wyneos_licence_sources",
                                          f"a licence source named {name!r} exists already; this one is ignored",
                                          kind="invalid_result"))
                continue
            sources[name] = source
    try:
        keyring = KeyRing.from_paths(settings.trusted_keys)
    except KeyFileError as exc:
        errors.append(PluginError("licence", "wyneos_startup", f"licence.trusted_keys: {exc}"))
        keyring = KeyRing()
    try:
        ledger = Ledger(settings.ledger)
    except ValueError as exc:  # unreadable ledger: keep it untouched for inspection, protect in memory
        errors.append(PluginError("licence", "wyneos_startup", f"licence.ledger: {exc}"))
        ledger = Ledger(None)
    engine = LicenceEngine(settings, keyring, sources, ledger)
    if not keyring:
        engine.notes.append("licence.trusted_keys names no usable key: every licence fails with unknown_key")
    orchestrator._licence_engine = engine  # type: ignore[attr-defined]
    return engine


@hookimpl
def wyneos_startup(orchestrator: Orchestrator) -> None:
    errors: list[PluginError] = []
    engine = _build(orchestrator, errors)
    orchestrator.startup_errors.extend(errors)
    for name in engine.missing_sources:
        orchestrator.startup_errors.append(PluginError(
            "licence", "wyneos_startup",
            f"licence.sources names {name!r}, but no installed plugin offers a source of that name "
            f"(available: {', '.join(s.name for s in engine.sources) or 'none'})", kind="invalid_result"))


@hookimpl
def wyneos_licence_validate(ctx: TickContext, nodes: Sequence[Node]) -> list[LicenceResult]:
    engine = engine_of(ctx.orchestrator)
    pending_notes = engine.notes
    engine.begin(ctx.now)
    results = engine.validate(nodes, ctx.now)
    for note in [*pending_notes, *engine.notes]:
        ctx.note(note)
    if engine.revocation_problem:  # an error every tick until the list is put right
        ctx.report.errors.append(PluginError("licence", "wyneos_licence_validate", engine.revocation_problem,
                                             kind="revocation_list"))
    ctx.scratch["licence"] = dict(engine.stats)
    return results


def revocation_action(engine: LicenceEngine) -> Action | None:
    """The one ``revoke`` action of the accepted revocation list (None without revocations)."""
    revocations = engine.revocations
    if not revocations.entries:
        return None
    cached = getattr(engine, "_revocation_action", None)
    if cached is not None and cached[0] is revocations:
        return cached[1]
    new = list(engine.revocation_new)
    shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
    action = Action(ActionType.REVOKE, "*", f"revocation list version {revocations.version}: "
                    f"{len(revocations.entries)} licence(s) revoked" + (f", new: {shown}" if new else ""),
                    "licence", Severity.CRITICAL,
                    {"revocation_list_version": revocations.version, "new_revocations": new,
                     "licence_ids": sorted(revocations.entries)})
    engine._revocation_action = (revocations, action)  # type: ignore[attr-defined]
    return action


@hookimpl
def wyneos_enforcement(ctx: TickContext) -> list[Action]:
    engine = getattr(ctx.orchestrator, "_licence_engine", None)
    if engine is None:
        return []
    action = revocation_action(engine)
    if action is None:
        return []
    return [Action(action.type, action.target, action.reason, action.origin, action.severity, action.params,
                   action.id)]


@hookimpl
def wyneos_shutdown(orchestrator: Orchestrator) -> None:
    engine = getattr(orchestrator, "_licence_engine", None)
    if engine is None:
        return
    engine.ledger.save()
    for source in engine.sources:
        close = getattr(source, "close", None)
        if close is not None:
            close()
