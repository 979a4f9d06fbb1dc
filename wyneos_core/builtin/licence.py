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
(``licence.ledger``; by default ``<state file stem>.licence-ledger.json`` next to the state
file: one ledger per state file, so two configs sharing a directory never share revocations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wyneos_core import hookimpl
from wyneos_core.config import Config
from wyneos_core.licensing.engine import LicenceEngine
from wyneos_core.licensing.keys import KeyFileError, KeyRing
from wyneos_core.licensing.ledger import Ledger
from wyneos_core.licensing.results import LicenceResults
from wyneos_core.licensing.settings import LicenceSettings
from wyneos_core.licensing.sources import FileSource
from wyneos_core.model import Action, ActionType, LicenceResult, Node, PluginError, Severity

if TYPE_CHECKING:
    from wyneos_core.tick import Orchestrator, TickContext

__all__ = ["ORCHESTRATOR_SIDE", "engine_of", "fleet_fault", "settings_of"]

#: licence reasons that, when every node has the same one, point at the orchestrator's own
#: setup (its trusted keys, its licence sources) rather than at the nodes
ORCHESTRATOR_SIDE = {
    "unknown_key": "check licence.trusted_keys (a key file missing, unreadable or rotated out?)",
    "source_unavailable": "check licence.sources: every source failed to answer",
}


#: the ledger's name next to the state file ``STEM.db``: ``STEM`` + this
LEDGER_SUFFIX = ".licence-ledger.json"
#: the name every state file of a directory shared before (adopted by the only state file there)
LEDGER_NAME = "licence-ledger.json"


def settings_of(config: Config) -> LicenceSettings:
    return LicenceSettings.from_config(config["licence"], config.resolve)


def ledger_for(state_path: Path) -> Path:
    """The default ledger of the state file ``state_path``: ``STEM.licence-ledger.json`` beside it."""
    return state_path.parent / (state_path.stem + LEDGER_SUFFIX)


def default_ledger(orchestrator: Orchestrator) -> Path | None:
    """The ledger next to the orchestrator's state file (its own), or None without one.

    A directory whose only state file used the shared ``licence-ledger.json`` before
    keeps it: the file is renamed to the state file's own ledger.
    """
    if orchestrator.store is None:
        return None
    path = orchestrator.config["state"]["path"]
    if path == ":memory:":
        return None
    state = orchestrator.config.resolve(path)
    own = ledger_for(state)
    shared = state.parent / LEDGER_NAME
    if not own.exists() and shared.is_file():
        others = [p for p in state.parent.glob("*.db") if p != state]
        if not others:
            try:
                shared.rename(own)
                orchestrator.startup_notes.append(f"licence ledger {shared} is now {own} (one per state file)")
            except OSError:
                pass
    return own


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
    engine.offered = sorted(sources)  # type: ignore[attr-defined]
    if not keyring:
        if settings.trusted_keys:
            engine.notes.append("licence.trusted_keys names no usable key: every licence fails with unknown_key")
        elif orchestrator.config["enforcement"].get("licence") is None:
            from wyneos_core.enforcement.check import UNKEYED

            orchestrator.startup_notes.append(UNKEYED)  # and the decide step says it in every report
    orchestrator._licence_engine = engine  # type: ignore[attr-defined]
    return engine


def offered_sources(config: Config, pluginmanager: Any) -> tuple[list[str], list[str]]:
    """Names of the licence sources the loaded plugins offer with this config, and the
    failures of plugins that could not make theirs. Sources are made, never asked."""
    failed: list[PluginError] = []
    names: list[str] = []
    for _, batch in pluginmanager.call_each("wyneos_licence_sources", failed, config=config):
        for source in batch if isinstance(batch, (list, tuple)) else [batch]:
            name = getattr(source, "name", None)
            if isinstance(name, str):
                names.append(name)
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - a check never fails on a source's clean-up
                    pass
    return names, [f"plugin {e.plugin!r} could not make its source: {e.error}" for e in failed]


def _missing(path: Path, what: str) -> str:
    """Why ``path`` cannot be used, with a look-alike name in its directory if there is one."""
    from wyneos_core.diagnostics import suggest

    try:
        siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
    except OSError:
        siblings = []
    return f"no such {what}: {path}" + suggest(path.name, siblings[:10000])


@hookimpl
def wyneos_check_config(config: Config, pluginmanager: Any) -> list[tuple[tuple, str]]:
    """Mistakes in the ``licence`` section that would make every node fail: refused at start."""
    from wyneos_core.diagnostics import suggest

    section = config["licence"]
    problems: list[tuple[tuple, str]] = []
    demo = bool(config["demo"].get("enabled"))  # the demo makes its own keys and licences when it starts
    names, failures = offered_sources(config, pluginmanager)
    for index, name in enumerate(section["sources"]):
        if name not in names:
            why = f"; {'; '.join(failures)}" if failures else ""
            if failures and not suggest(name, names):  # the failing plugin's own error is the one to read
                problems.append((("licence", "sources", index), f"no licence source named {name!r}{why}"))
                continue
            problems.append((("licence", "sources", index),
                             f"no loaded plugin offers a licence source named {name!r} (available: "
                             f"{', '.join(names) or 'none'}){suggest(name, names)}{why}"))
    if not demo:
        for index, entry in enumerate(section["trusted_keys"]):
            path = config.resolve(entry)
            if not path.exists():
                problems.append((("licence", "trusted_keys", index), _missing(path, "key file or directory")))
                continue
            try:
                KeyRing.from_paths([path])
            except KeyFileError as exc:
                problems.append((("licence", "trusted_keys", index), str(exc)))
        if "file" in section["sources"] and config.given(("licence", "directory")):
            path = config.resolve(section["directory"])
            if not path.exists():
                problems.append((("licence", "directory"), _missing(path, "directory")))
            elif not path.is_dir():
                problems.append((("licence", "directory"), f"not a directory: {path}"))
    return problems


@hookimpl
def wyneos_startup(orchestrator: Orchestrator) -> None:
    errors: list[PluginError] = []
    engine = _build(orchestrator, errors)
    orchestrator.startup_errors.extend(errors)
    for name in engine.missing_sources:
        orchestrator.startup_errors.append(PluginError(
            "licence", "wyneos_startup",
            f"licence.sources names {name!r}, but no installed plugin offers a source of that name "
            f"(available: {', '.join(engine.offered) or 'none'})", kind="invalid_result"))


@hookimpl
def wyneos_licence_validate(ctx: TickContext, nodes: Sequence[Node]) -> LicenceResults:
    """The nodes' results as columns (``licensing.results``): the tick makes them the
    report's ``licences`` mapping, whose result objects are made when read."""
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


def fleet_fault(licences: Mapping[str, LicenceResult], min_nodes: int) -> tuple[str, str] | None:
    """``(reason code, explanation)`` when the licence step failed for the whole fleet for one
    orchestrator-side reason, else None.

    Nodes that name no licence (``no_licence``) are left out: keys and sources do not
    concern them. At least ``min_nodes`` others must all have the same reason, one of
    ``ORCHESTRATOR_SIDE``; a node whose licence validates ends it.
    """
    counts = getattr(licences, "counts", None)
    if counts is not None:  # licence columns: counted without a result object per node
        found = counts()
        found.pop("no_licence", None)
        if len(found) != 1:
            return None
        (reason, count), = found.items()
        if reason not in ORCHESTRATOR_SIDE or count < min_nodes:
            return None
        example = licences.last_with(reason)  # type: ignore[attr-defined]
        return reason, _fault_text(count, reason, example)
    count, reason, example = 0, None, None
    for result in licences.values():
        code = result.reason
        if code == "no_licence":
            continue
        if code not in ORCHESTRATOR_SIDE or (reason is not None and code != reason):
            return None
        reason, example = code, result
        count += 1
    if reason is None or count < min_nodes or example is None:
        return None
    return reason, _fault_text(count, reason, example)


def _fault_text(count: int, reason: str, example: LicenceResult) -> str:
    return (f"the licences of all {count} licensed node(s) failed with {reason} "
            f"(e.g. {example.node_id}: {example.detail[:200]}); a fault on the orchestrator's side is likelier "
            f"than in every node: {ORCHESTRATOR_SIDE[reason]}")


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
