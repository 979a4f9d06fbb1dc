"""Builtin rulesets plugin: YAML rulesets drive governance, healing and enforcement.

The rulesets named by ``rulesets.paths`` load when the orchestrator is configured (a
broken ruleset stops the start with file, line and reason). Each tick, before the
governance step evaluates anything, changed files are reloaded (``rulesets.reload``).
Governance rulesets give one ``RuleResult`` per (rule, node) with the rule's state;
healing and enforcement rulesets give the actions of their firing rules, with origin
``ruleset:<name>/<rule id>``. Python rules (``wyneos_core.pyrules``, the builtin
governance plugin) keep running beside them. See docs/rulesets.md.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from wyneos_core import hookimpl
from wyneos_core.config import Config
from wyneos_core.model import Action, LicenceResult, Node, PluginError, RuleResult
from wyneos_core.rules.interp import EvalEnv
from wyneos_core.rules.memory import RuleMemory, restore
from wyneos_core.rules.runtime import RulesetRunner

if TYPE_CHECKING:
    from wyneos_core.tick import Orchestrator, TickContext

__all__ = ["env_of", "runner_of"]

_RUNNERS: weakref.WeakKeyDictionary[Any, _Slot] = weakref.WeakKeyDictionary()


class _Slot:
    __slots__ = ("runner", "tick", "env")

    def __init__(self, runner: RulesetRunner | None) -> None:
        self.runner = runner
        self.tick = -1
        self.env: EvalEnv | None = None


def runner_of(pluginmanager: Any) -> RulesetRunner | None:
    """The ruleset runner of an orchestrator's plugin manager (None without rulesets)."""
    slot = _RUNNERS.get(pluginmanager)
    return slot.runner if slot is not None else None


def env_of(pluginmanager: Any) -> EvalEnv | None:
    """The environment the rulesets saw in the last tick (predictions and drift included)."""
    slot = _RUNNERS.get(pluginmanager)
    return slot.env if slot is not None else None


@hookimpl
def wyneos_configure(config: Config, pluginmanager: Any) -> None:
    settings = config["rulesets"]
    runner = None
    if settings.get("paths"):
        runner = RulesetRunner(
            settings["paths"], base_dir=config.base_dir, default_engine=settings.get("engine", "native"),
            durable_timeout=float(settings.get("durable_timeout", 60.0)), reload=bool(settings.get("reload", True)),
        )
    old = _RUNNERS.get(pluginmanager)
    if old is not None and old.runner is not None:
        old.runner.close()
    _RUNNERS[pluginmanager] = _Slot(runner)


def _prepare(ctx: TickContext, nodes: Sequence[Node]) -> tuple[RulesetRunner, EvalEnv] | None:
    slot = _RUNNERS.get(ctx.orchestrator.pm)
    if slot is None or slot.runner is None:
        return None
    if slot.tick != ctx.tick:
        # the environment first: whatever happens to the reload, this tick's steps never
        # see the previous tick's cluster
        slot.env = RulesetRunner.environment(nodes, ctx.now)
        slot.env.predictions = ctx.scratch.get("predict")  # left by the predict step (docs/prediction.md)
        slot.env.drift = ctx.scratch.get("drift")  # left by the drift step (docs/drift.md)
        slot.tick = ctx.tick
        try:
            slot.runner.check_reload(ctx.report.notes, ctx.report.errors, ctx.report.transitions)
        except Exception as exc:  # noqa: BLE001 - check_reload refuses per file; this is a last guard
            ctx.report.errors.append(PluginError("rulesets", "reload", f"{type(exc).__name__}: {exc}",
                                                 kind="invalid_ruleset"))
    assert slot.env is not None
    return slot.runner, slot.env


def _violated(results: Sequence[RuleResult]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in results:
        if not r.passed and r.state in (None, "firing"):
            out.setdefault(r.rule_id, set()).add(r.node_id)
    return out


@hookimpl
def wyneos_governance(ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult]) -> list[RuleResult]:
    prepared = _prepare(ctx, nodes)
    if prepared is None:
        return []
    runner, env = prepared
    return runner.governance(nodes, licences, tick=ctx.tick, env=env, transitions=ctx.report.transitions,
                             errors=ctx.report.errors)


def _act(stage: str, ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult],
         results: Sequence[RuleResult]) -> list[Action]:
    prepared = _prepare(ctx, nodes)
    if prepared is None:
        return []
    runner, env = prepared
    if not runner.rulesets(stage):
        return []
    stage_env = env.staged(_violated(results))
    return runner.actions(stage, nodes, licences, tick=ctx.tick, env=stage_env,
                          transitions=ctx.report.transitions, errors=ctx.report.errors)


@hookimpl
def wyneos_healing(ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult],
                   results: Sequence[RuleResult]) -> list[Action]:
    return _act("healing", ctx, nodes, licences, results)


@hookimpl
def wyneos_enforcement(ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult],
                       results: Sequence[RuleResult]) -> list[Action]:
    return _act("enforcement", ctx, nodes, licences, results)


@hookimpl
def wyneos_startup(orchestrator: Orchestrator) -> None:
    """Rule states come back from the state file, and go into it with every tick: a
    restart never restarts a ``for:`` nor clears an action to issue it again. (The etcd
    replicas carry them over themselves, ``wyneos_core.ha.carry``.)"""
    store = orchestrator.store
    runner = runner_of(orchestrator.pm)
    if runner is None or not getattr(store, "keeps_rule_states", False) or store.carry is not None:
        return
    memory = RuleMemory(runner)
    kept = {name: doc for name, doc in store.carried().items() if name.startswith("rules/")}
    restore(runner, kept)
    memory.remember(kept)
    store.carry = memory


@hookimpl
def wyneos_shutdown(orchestrator: Orchestrator) -> None:
    slot = _RUNNERS.get(orchestrator.pm)
    if slot is not None and slot.runner is not None:
        slot.runner.close()
