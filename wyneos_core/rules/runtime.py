"""Running loaded rulesets tick after tick: engines, rule states, hot reload.

``RulesetRunner`` holds every ruleset named by the config's ``rulesets.paths``, one
engine per ruleset and one ``StateTracker`` per rule. Each tick it

1. checks the files' modification stamps (``check_reload``): a changed file is loaded
   again and swapped in; an invalid edit is refused, the last good version keeps
   running and the tick report says so;
2. evaluates each stage's rulesets (``governance`` gives ``RuleResult`` objects,
   ``healing`` and ``enforcement`` give ``Action`` objects) and appends every rule
   state transition to the report.

A durable-rules worker that crashes or hangs is reported in the tick's errors and that
ruleset is evaluated by the native engine for the tick (both engines give the same
results); the worker is started again on the next tick, and after three failures in a
row it rests for a growing number of ticks (backoff) while the native engine runs and
every report says so. A durable ruleset is loaded into its worker when it is loaded
(startup, hot reload), so rules durable-rules refuses are refused there, with a line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

import wyneos_core
from wyneos_core.model import Action, LicenceResult, Node, PluginError, RuleResult, RuleResults
from wyneos_core.rules.durable import DurableEngine, DurableEngineError
from wyneos_core.rules.flapguard import FlapGuard
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, cluster_summary
from wyneos_core.rules.loader import STAGES, Rule, Ruleset, RulesetError, load_ruleset, start_durable
from wyneos_core.rules.native import NativeEngine
from wyneos_core.rules.state import FIRING, INACTIVE, NAMES, PENDING, RESOLVED, IdSlots, Place, StateTracker, firing
from wyneos_core.safeio import read_regular_file
from wyneos_core.wording import plural
from wyneos_core.yamlio import MAX_YAML_BYTES

__all__ = ["RulesetRunner", "resolve_paths", "shipped_rulesets_dir", "BUILTIN_PREFIX"]

BUILTIN_PREFIX = "builtin:"
_SUFFIXES = (".yaml", ".yml")


def shipped_rulesets_dir() -> Path:
    """Where the shipped rulesets are: inside an installed package, or the source tree."""
    packaged = resources.files("wyneos_core") / "shipped_rulesets"
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(wyneos_core.__file__).resolve().parent.parent / "rulesets"
    return source


def _ruleset_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in _SUFFIXES and p.is_file())


def resolve_paths(entries: Iterable[str], base_dir: Path | None = None) -> list[Path]:
    """Ruleset files named by ``rulesets.paths`` entries (files, directories, ``builtin:``).

    ``builtin:`` alone means every shipped ruleset; ``builtin:healing`` (or
    ``builtin:healing.yaml``) one of them. A directory means its ``*.yaml`` / ``*.yml``
    files (not its subdirectories).

    :raises RulesetError: for a path that does not exist.
    """
    out: list[Path] = []
    for entry in entries:
        if entry.startswith(BUILTIN_PREFIX):
            name = entry[len(BUILTIN_PREFIX):].strip()
            shipped = shipped_rulesets_dir()
            if not name:
                out.extend(_ruleset_files(shipped))
                continue
            candidates = [shipped / name] + [shipped / (name + s) for s in _SUFFIXES]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None or "/" in name or "\\" in name or name.startswith("."):
                known = ", ".join(p.stem for p in _ruleset_files(shipped))
                raise RulesetError(f"no shipped ruleset {name!r} (shipped: {known})", file=entry)
            out.append(found)
            continue
        p = Path(entry)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if p.is_dir():
            out.extend(_ruleset_files(p))
        elif p.is_file():
            out.append(p)
        else:
            raise RulesetError("no such ruleset file or directory", file=str(p))
    return list(dict.fromkeys(out))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _digest(path: Path) -> str | None:
    """The file's digest; None when it cannot be read, is not a regular file or is too
    big (the reload then reports why, naming the file)."""
    try:
        return hashlib.sha256(read_regular_file(path, MAX_YAML_BYTES)).hexdigest()
    except OSError:
        return None


#: consecutive durable-engine failures after which it is rested (native runs instead)
FAILURES_BEFORE_BACKOFF = 3
#: longest rest, in ticks, between two tries of a failing durable engine
MAX_BACKOFF_TICKS = 64


@dataclass(slots=True)
class Loaded:
    """One ruleset in service: its engine, a native fallback and the state of each rule."""

    ruleset: Ruleset
    path: Path
    stamp: tuple[int, int] | None
    engine: Any
    native: NativeEngine
    trackers: dict[str, StateTracker] = field(default_factory=dict)
    #: the flap guards of the predictive rules, by rule id (wyneos_core.rules.flapguard)
    guards: dict[str, FlapGuard] = field(default_factory=dict)
    digest: str | None = None
    #: consecutive ticks the durable engine failed; the tick it may be tried again
    failures: int = 0
    retry_tick: int = 0
    last_error: str = ""

    def close(self) -> None:
        if self.engine is not self.native:
            self.engine.close()


def _end_states(loaded: Loaded, rule_id: str, keep: set[str] | None, transitions: list[dict[str, Any]]) -> None:
    """End the states of ``rule_id`` on every node not in ``keep`` (all when None), with
    their transitions: a firing rule resolves, a pending or resolved one goes inactive."""
    tracker = loaded.trackers.get(rule_id)
    if tracker is None:
        return
    for node_id, before in tracker.forget(keep):
        transitions.append({"kind": "rule", "rule_id": rule_id, "node_id": node_id, "from": before,
                            "to": RESOLVED if before == FIRING else INACTIVE, "ruleset": loaded.ruleset.name,
                            "why": "node left the cluster" if keep is not None else "rule removed"})


class RulesetRunner:
    """Every configured ruleset, ready to run; see the module docstring.

    :param entries: ``rulesets.paths`` of the config.
    :param base_dir: directory relative paths are resolved against.
    :param default_engine: engine of rulesets that do not name one.
    :param durable_timeout: seconds a durable-rules evaluation may take.
    :param reload: check files for changes at every tick.
    :raises RulesetError: when a ruleset cannot be loaded (at startup nothing runs on a
        broken ruleset).
    """

    def __init__(
        self,
        entries: Sequence[str],
        *,
        base_dir: Path | None = None,
        default_engine: str = "native",
        durable_timeout: float = 60.0,
        reload: bool = True,
    ) -> None:
        self.entries = list(entries)
        self.base_dir = base_dir
        self.default_engine = default_engine
        self.durable_timeout = durable_timeout
        self.reload = reload
        self.loaded: dict[Path, Loaded] = {}
        self._refused: dict[Path, tuple[int, int] | None] = {}
        #: slots of nodes handed over as a plain list; the slot space the trackers are in
        self._id_slots = IdSlots()
        self._space: Any = None
        names: dict[str, Path] = {}
        for path in resolve_paths(self.entries, base_dir):
            loaded = self._load(path)
            other = names.get(loaded.ruleset.name)
            if other is not None:
                loaded.close()
                raise RulesetError(f"ruleset name {loaded.ruleset.name!r} is already used by {other}", file=str(path),
                                   line=1, field="ruleset")
            names[loaded.ruleset.name] = path
            self.loaded[path] = loaded

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_rulesets(cls, rulesets: Sequence[Ruleset], *, durable_timeout: float = 60.0) -> RulesetRunner:
        """A runner over rulesets already loaded (no files watched): for tests and tools."""
        runner = cls([], durable_timeout=durable_timeout, reload=False)
        for ruleset in rulesets:
            runner.loaded[Path(ruleset.file)] = runner._wrap(ruleset, Path(ruleset.file), None)
        return runner

    def _load(self, path: Path, previous: Loaded | None = None) -> Loaded:
        stamp = _stamp(path)
        digest = _digest(path)
        ruleset = load_ruleset(path, default_engine=self.default_engine)
        loaded = self._wrap(ruleset, path, stamp, previous, start=True)
        loaded.digest = digest
        return loaded

    def _wrap(self, ruleset: Ruleset, path: Path, stamp: tuple[int, int] | None,
              previous: Loaded | None = None, start: bool = False) -> Loaded:
        native = NativeEngine(ruleset.conditions())
        engine: Any = native
        if ruleset.engine == "durable":
            # loading the rules into a worker now is the check that durable-rules takes them
            engine = (start_durable(ruleset, self.durable_timeout) if start
                      else DurableEngine(ruleset.conditions(), timeout=self.durable_timeout))
        trackers = {}
        for rule in ruleset.rules:
            tracker = StateTracker(rule.for_, rule.keep_firing_for)
            if previous is not None and rule.id in previous.trackers:
                tracker.adopt(previous.trackers[rule.id])  # states survive a reload
            trackers[rule.id] = tracker
        guards = {rule.id: (previous.guards.get(rule.id) if previous is not None else None) or FlapGuard()
                  for rule in ruleset.rules if rule.predictive}
        return Loaded(ruleset, path, stamp, engine, native, trackers, guards)

    def reset_states(self) -> None:
        """Forget every rule state (all rules inactive everywhere), silently."""
        for loaded in self.loaded.values():
            for tracker in loaded.trackers.values():
                tracker.states = {}

    def rulesets(self, stage: str | None = None) -> list[Ruleset]:
        return [l.ruleset for l in self.loaded.values() if stage is None or l.ruleset.stage == stage]

    def check_reload(self, notes: list[str], errors: list[PluginError] | None = None,
                     transitions: list[dict[str, Any]] | None = None) -> list[str]:
        """Load changed, new and removed ruleset files; return what changed (also in ``notes``).

        Never raises: whatever goes wrong with one file (a ruleset error, YAML nested too
        deeply, an unreadable directory) refuses that edit, keeps the last good version
        running, and is noted once; the same refused file (same modification time and
        size) is not read again. Rule states that end because their ruleset file or rule
        is gone are appended to ``transitions`` (firing -> resolved, pending -> inactive).
        """
        if transitions is None:
            transitions = []
        if not self.reload:
            return []
        changed: list[str] = []
        try:
            current = resolve_paths(self.entries, self.base_dir)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable entry keeps the rest running
            current = [p for p in self.loaded if p.exists()]
            key = Path(getattr(exc, "file", None) or "rulesets.paths")
            if self._refused.get(key, "?") is not None:
                self._refused[key] = None
                notes.append(f"rulesets: {exc}")
        for path in list(self.loaded):
            if path not in current:
                gone = self.loaded.pop(path)
                gone.close()
                for rule in gone.ruleset.rules:
                    _end_states(gone, rule.id, None, transitions)
                changed.append(f"rulesets: {path} was removed; ruleset {gone.ruleset.name!r} stopped")
        names = {l.ruleset.name: p for p, l in self.loaded.items()}
        for path in current:
            stamp = _stamp(path)
            old = self.loaded.get(path)
            if old is not None and old.stamp == stamp:
                continue
            if path in self._refused and self._refused[path] == stamp:
                continue  # the same bad edit, already reported
            if old is not None and old.digest is not None and _digest(path) == old.digest:
                old.stamp = stamp  # touched, not changed
                self._refused.pop(path, None)
                continue
            try:
                new = self._load(path, old)
                owner = names.get(new.ruleset.name)
                if owner is not None and owner != path:
                    new.close()
                    raise RulesetError(f"ruleset name {new.ruleset.name!r} is already used by {owner}",
                                       file=str(path), line=1, field="ruleset")
            except Exception as exc:  # noqa: BLE001 - any failure refuses the edit, never the tick
                self._refused[path] = stamp
                reason = str(exc) if isinstance(exc, RulesetError) else f"{path}: {type(exc).__name__}: {exc}"
                if old is not None:
                    text = (f"rulesets: invalid edit of {path} refused, still running the last good version of "
                            f"{old.ruleset.name!r}: {reason}")
                else:
                    text = f"rulesets: new ruleset file {path} refused: {reason}"
                changed.append(text)
                if errors is not None:
                    errors.append(PluginError("rulesets", "reload", reason, kind="invalid_ruleset"))
                continue
            self._refused.pop(path, None)
            if old is not None:
                for rule_id in old.trackers:
                    if rule_id not in new.trackers:
                        _end_states(old, rule_id, None, transitions)
                old.close()
                changed.append(f"rulesets: reloaded {new.ruleset.name!r} from {path} "
                               f"({plural(len(new.ruleset.rules), 'rule')})")
            else:
                changed.append(f"rulesets: loaded new ruleset {new.ruleset.name!r} from {path}")
            self.loaded[path] = new
            names[new.ruleset.name] = path
        notes.extend(changed)
        return changed

    def close(self) -> None:
        for loaded in self.loaded.values():
            loaded.close()

    # -- evaluation ---------------------------------------------------------------------------

    @staticmethod
    def environment(nodes: Sequence[Node], now: float, violated: Mapping[str, set[str]] | None = None) -> EvalEnv:
        return EvalEnv(now, cluster_summary(nodes, now), violated or {})

    def _active(self, loaded: Loaded, nodes: Sequence[Node], lics: Sequence[LicenceResult], env: EvalEnv,
                hook: str, errors: list[PluginError], tick: int) -> list[list[int]]:
        """Run the ruleset's engine; on a durable-rules failure, the native engine.

        After ``FAILURES_BEFORE_BACKOFF`` failures in a row the durable engine is rested
        (2, 4, 8... up to ``MAX_BACKOFF_TICKS`` ticks) instead of being started again at
        every tick; while it rests, every tick report carries a standing error.
        """
        if loaded.engine is loaded.native:
            return loaded.native.evaluate(nodes, lics, env, masks=True)
        name = loaded.ruleset.name
        if tick < loaded.retry_tick:
            errors.append(PluginError(
                "rulesets", hook,
                f"ruleset {name!r}: the durable engine failed {loaded.failures} ticks in a row (last: "
                f"{loaded.last_error}); evaluated with the native engine until tick {loaded.retry_tick}",
                kind="engine",
            ))
            return loaded.native.evaluate(nodes, lics, env, masks=True)
        try:
            result = loaded.engine.evaluate(nodes, lics, env)
        except DurableEngineError as exc:
            loaded.failures += 1
            loaded.last_error = str(exc)
            rest = ""
            if loaded.failures >= FAILURES_BEFORE_BACKOFF:
                ticks = min(2 ** (loaded.failures - FAILURES_BEFORE_BACKOFF + 1), MAX_BACKOFF_TICKS)
                loaded.retry_tick = tick + ticks
                rest = f"; the durable engine rests until tick {loaded.retry_tick}"
            errors.append(PluginError(
                "rulesets", hook,
                f"ruleset {name!r}: {exc}; evaluated with the native engine for this tick{rest}",
                kind="engine",
            ))
            return loaded.native.evaluate(nodes, lics, env, masks=True)
        loaded.failures = 0
        return result

    def _place(self, nodes: Sequence[Node], ids: list[str]) -> Place:
        """Where ``nodes`` are: the node table's slots, or stable slots given to a plain list.

        When the nodes come another way than last time (another table, a list), the rule
        states move over by node id."""
        table = getattr(nodes, "table", None) if hasattr(nodes, "slots") else None
        space = self._id_slots if table is None else table
        if space is not self._space:
            if self._space is not None:
                for loaded in self.loaded.values():
                    for tracker in loaded.trackers.values():
                        tracker.states = tracker.states
            self._space = space
        if table is None:
            return self._id_slots.place(ids)
        return Place(nodes.slots, table.ids, table.index, table.version)  # type: ignore[attr-defined]

    def _step(self, loaded: Loaded, rule: Rule, hits: Any, place: Place, ids: list[str], tick: int, now: float,
              transitions: list[dict[str, Any]]) -> np.ndarray:
        """Advance ``rule``'s states one tick; ``hits``: the engine's answer (a mask, or
        the positions where the condition holds). :return: the state code of each position."""
        tracker = loaded.trackers[rule.id]
        name = loaded.ruleset.name
        for node_id, before in tracker.depart(place):
            transitions.append({"kind": "rule", "rule_id": rule.id, "node_id": node_id, "from": before,
                                "to": RESOLVED if before == FIRING else INACTIVE, "ruleset": name,
                                "why": "node left the cluster"})
        count = len(ids)
        if isinstance(hits, np.ndarray) and hits.dtype == bool:
            mask = hits
        else:
            mask = np.zeros(count, bool)
            mask[np.asarray(hits, dtype=np.intp)] = True
        guard = loaded.guards.get(rule.id)
        if guard is not None:  # a predictive rule: benign periodic bursts held back
            present = set(ids)
            if not (present.issuperset(guard.onset) and present.issuperset(guard.benign)):
                guard.forget(present)
            kept = set(guard.filter([ids[i] for i in np.flatnonzero(mask).tolist()], now))
            mask = np.fromiter((node_id in kept for node_id in ids), bool, count) if kept else np.zeros(count, bool)
        changes, codes = tracker.advance(mask, place, tick, now)
        for _, node_id, before, after in changes:
            transitions.append({"kind": "rule", "rule_id": rule.id, "node_id": node_id, "from": before,
                                "to": after, "ruleset": name})
        return codes

    def governance(
        self,
        nodes: Sequence[Node],
        licences: Mapping[str, LicenceResult],
        *,
        tick: int,
        env: EvalEnv,
        transitions: list[dict[str, Any]],
        errors: list[PluginError],
    ) -> list[RuleResult]:
        """The (governance rule, node) results with a state (pending, firing, resolved...)
        as ``RuleResult`` objects, in the order of ``nodes``; the inactive ones, which
        pass, counted per rule (``RuleResults.passed_counts``)."""
        out = RuleResults()
        loaded_list = [l for l in self.loaded.values() if l.ruleset.stage == "governance"]
        if not loaded_list:
            return out
        ids = _ids(nodes)
        lics = _Licences(ids, licences, nodes)
        place = self._place(nodes, ids)
        append = out.append
        for loaded in loaded_list:
            name = loaded.ruleset.name
            active = self._active(loaded, nodes, lics, env, "wyneos_governance", errors, tick)
            for rule, hits in zip(loaded.ruleset.rules, active):
                codes = self._step(loaded, rule, hits, place, ids, tick, env.now, transitions)
                severity = rule.severity
                rid = rule.id
                listed = np.flatnonzero(codes)  # positions in order: only these become objects
                out.count_passed({rid: len(ids) - len(listed)})
                static = rule.message.render(None, None, env) if rule.message.is_static else None  # type: ignore[arg-type]
                for i, code in zip(listed.tolist(), codes[listed].tolist()):
                    state = NAMES[code]
                    if state == PENDING or state == FIRING:
                        message = static if static is not None else rule.message.render(nodes[i], lics[i], env)
                        append(RuleResult(rid, ids[i], False, message, severity, name, state))
                    else:
                        append(RuleResult(rid, ids[i], True, "", severity, name, state))
        return out

    def actions(
        self,
        stage: str,
        nodes: Sequence[Node],
        licences: Mapping[str, LicenceResult],
        *,
        tick: int,
        env: EvalEnv,
        transitions: list[dict[str, Any]],
        errors: list[PluginError],
    ) -> list[Action]:
        """The actions of every firing rule of the ``stage`` rulesets."""
        assert stage in STAGES and stage != "governance"
        out: list[Action] = []
        loaded_list = [l for l in self.loaded.values() if l.ruleset.stage == stage]
        if not loaded_list:
            return out
        ids = _ids(nodes)
        lics = _Licences(ids, licences, nodes)
        place = self._place(nodes, ids)
        for loaded in loaded_list:
            name = loaded.ruleset.name
            active = self._active(loaded, nodes, lics, env, f"wyneos_{stage}", errors, tick)
            for rule, hits in zip(loaded.ruleset.rules, active):
                codes = self._step(loaded, rule, hits, place, ids, tick, env.now, transitions)
                origin = f"ruleset:{name}/{rule.id}"
                for i in sorted(firing(codes).tolist(), key=ids.__getitem__):
                    node_id = ids[i]
                    node, lic = nodes[i], lics[i]
                    reason = rule.message.render(node, lic, env)
                    for spec in rule.actions:
                        params = {k: (v.render(node, lic, env) if hasattr(v, "render") else v)
                                  for k, v in spec.params}
                        out.append(Action(spec.type, node_id, reason, origin, rule.severity, params))
        return out


class _Licences(Sequence[LicenceResult]):
    """Each node's licence result, looked up when read: rules over the columns read none,
    a failing pair's message one; the first engine going over them all makes the list.

    When the results are the licence step's columns for these very nodes (same slots,
    same nodes in them), they are read by position and answer ``columns()``: the rules
    on licences then run once per distinct result (``rules.vector``)."""

    __slots__ = ("ids", "licences", "results", "_all")

    def __init__(self, ids: list[str], licences: Mapping[str, LicenceResult], nodes: Sequence[Node]) -> None:
        self.ids = ids
        self.licences = licences
        self._all: list[LicenceResult] | None = None
        self.results = _aligned(getattr(licences, "results", None), nodes)

    def columns(self) -> tuple[np.ndarray, list[Any]] | None:
        """``(pool index of each node's result, the pool's fields)``, or None."""
        return None if self.results is None else (self.results.codes, self.results.fields)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: Any) -> Any:
        if self._all is not None:
            return self._all[position]
        if type(position) is int:
            if self.results is not None:
                return self.results[position]
            return self.licences.get(self.ids[position]) or NO_LICENCE
        iter(self)  # makes the list
        return self._all[position]  # type: ignore[index]

    def __iter__(self) -> Any:
        if self._all is None:
            if self.results is not None:
                self._all = self.results.list()
            else:
                get = self.licences.get
                self._all = [get(i) or NO_LICENCE for i in self.ids]
        return iter(self._all)


def _aligned(results: Any, nodes: Sequence[Node]) -> Any:
    """``results`` (the licence step's ``LicenceResults``) when they are by position the
    results of ``nodes`` (the same slots, and the same nodes in them); None otherwise."""
    table = getattr(nodes, "table", None) if hasattr(nodes, "slots") else None
    if table is None or results is None or not all(hasattr(results, a) for a in ("slots", "born", "codes", "fields")):
        return None
    slots = nodes.slots  # type: ignore[attr-defined]
    if len(results.codes) != len(slots) or not (results.slots is slots or np.array_equal(results.slots, slots)):
        return None
    if not np.array_equal(results.born, table.born[slots]) or (len(results.codes) and results.codes.min() < 0):
        return None
    return results


def _ids(nodes: Sequence[Node]) -> list[str]:
    """The nodes' ids in order (from the node table's id column when they are its nodes)."""
    ids = getattr(nodes, "ids", None)
    return ids() if callable(ids) else [n.id for n in nodes]
