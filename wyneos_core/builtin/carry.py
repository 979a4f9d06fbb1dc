"""Carrying actions down the tick's routing tree: one tree level at a time, every action at once.

Each action crosses every tree edge on the way to its targets once (the union of their
tree paths). The carrier works out those hops for all the tick's actions together, in
arrays over the tree's vertex numbers, then walks the tree level by level from the
orchestrator: the hops of one level, for every action, go to the ``wyneos_deliver_batch``
hook in one ``HopBatch``. A hop not acknowledged is tried again (``propagate.retries``
times, in a batch of the hops still unacknowledged); a hop that never is fails its
subtree (the action's hops below it are not tried: their receivers are
``relay_failed``). The builtin batch transport falls back to one ``wyneos_deliver`` call
per hop when another plugin implements that per-hop hook (see ``builtin/propagate.py``).

A target the tree does not reach is reported with the reason (``unknown_node``,
``offline``, ``isolated``, ``partition``); an offline target that witnesses still reach
is routed through one when a relaying transport is registered (``witness_route``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wyneos_core.mesh_search import ArrayParents, RoutingTree
from wyneos_core.model import Action, Delivery, PluginError

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext

__all__ = ["Carrier", "HopBatch", "RELAY_PLUGIN"]

#: the plugin name of a transport that relays through peers (``wyneos_core.service.action_relay``):
#: while one is registered, an offline node that witnesses still reach is routed through them
RELAY_PLUGIN = "relay-desk"


class HopBatch:
    """The hops of one level of the routing tree, for every action carried at once.

    Hop ``i`` carries ``actions[action[i]]`` from ``senders[i]`` to ``receivers[i]``
    (node ids; ``"orchestrator"`` for the origin). ``level`` is the receivers' depth in
    the tree (1: the orchestrator's own links); ``attempt`` is 0 for the first try and
    counts the retries of the hops still unacknowledged. ``sender`` and ``receiver`` are
    the same hops as vertex numbers of the tick's mesh snapshot, for transports that
    work on arrays. Iterating yields ``(action, sender, receiver)`` per hop.

    A ``wyneos_deliver_batch`` implementation answers with one bool per hop (a list or
    a numpy array; True: acknowledged), True or False for all of them, or None to pass
    the batch to the next implementation.
    """

    __slots__ = ("actions", "action", "sender", "receiver", "level", "attempt", "_names", "_senders", "_receivers")

    def __init__(self, actions: Sequence[Action], action: np.ndarray, sender: np.ndarray, receiver: np.ndarray,
                 names: Sequence[str | None], level: int, attempt: int) -> None:
        self.actions = actions
        self.action = action
        self.sender = sender
        self.receiver = receiver
        self.level = level
        self.attempt = attempt
        self._names = names
        self._senders: list[str] | None = None
        self._receivers: list[str] | None = None

    def __len__(self) -> int:
        return len(self.action)

    @property
    def senders(self) -> list[str]:
        if self._senders is None:
            self._senders = list(map(self._names.__getitem__, self.sender.tolist()))  # type: ignore[arg-type]
        return self._senders

    @property
    def receivers(self) -> list[str]:
        if self._receivers is None:
            self._receivers = list(map(self._names.__getitem__, self.receiver.tolist()))  # type: ignore[arg-type]
        return self._receivers

    def __iter__(self) -> Iterator[tuple[Action, str, str]]:
        actions = self.actions
        return ((actions[a], s, r) for a, s, r in zip(self.action.tolist(), self.senders, self.receivers))

    def __repr__(self) -> str:
        return f"HopBatch(level={self.level}, attempt={self.attempt}, hops={len(self)}, actions={len(self.actions)})"


class Carrier:
    """Carries actions down one routing tree (see the module docstring)."""

    def __init__(self, ctx: TickContext, tree: RoutingTree, retries: int) -> None:
        self.ctx = ctx
        self.tree = tree
        self.parent = tree.parent
        self.avoid = tree.avoided
        self.retries = retries
        self.call = ctx.orchestrator.pm.call_each
        self.errors = ctx.report.errors
        self.mesh = ctx.mesh
        self.hops = 0
        self.retried = 0
        #: offline target -> the witness the route goes through (relay, see ``witness_route``)
        self.via: dict[str, str] = {}
        self.relaying = ctx.orchestrator.pm.get_plugin(RELAY_PLUGIN) is not None
        parent = tree.parent
        self.arrays_parent = parent if isinstance(parent, ArrayParents) else ArrayParents.of(parent)

    def witness_route(self, target: str) -> str | None:
        """The witness through which an offline ``target`` is reached, when a relaying
        transport is registered and a routable witness reports it reachable (else None)."""
        if not self.relaying or self.avoid.get(target) != "offline":
            return None
        if target in self.via:
            return self.via[target]
        from wyneos_core.consensus import state_of

        consensus = state_of(self.ctx.orchestrator)
        sus = consensus.suspicions.get(target)
        if sus is None:
            return None
        tick, window = self.ctx.tick, consensus.settings.window_ticks
        registry = self.ctx.registry
        for observer in sorted(sus.reports):
            at, reachable = sus.reports[observer]
            node = registry.get(observer)
            if (reachable and tick - at < window and observer != target and observer in self.parent
                    and node is not None and not node.isolated and self.mesh.has_edge(observer, target)):
                self.via[target] = observer
                return observer
        return None

    def carry(self, action: Action, targets: Sequence[str], direct: str | None = None) -> list[Delivery]:
        """Deliver one action to ``targets``; ``direct`` may be reached from the origin in one hop."""
        return self.carry_all([(action, targets, direct)])[0]

    def carry_all(self, jobs: Sequence[tuple[Action, Sequence[str], str | None]]) -> list[list[Delivery]]:
        """Deliver each job's action to its targets, all jobs in one walk down the tree;
        one list of deliveries per job, in the order of its targets."""
        tree = self.arrays_parent
        names, pred = tree.arrays.names, tree.pred
        mesh, avoid = self.mesh, self.avoid
        # 1. each target: reached through the tree, a witness, the origin directly, or why not
        seeds: list[tuple[int, int, int]] = []  # (job, target number, sender number: -1 for its tree parent)
        verdicts: list[list[tuple[str, int, int]]] = []  # per job: (target, seed index or -1, reason code)
        reasons: list[str] = []
        flat = [t for _, targets, _ in jobs for t in targets]
        found = tree.numbers(flat)  # a number in the snapshot: a vertex of the mesh
        numbers = found.tolist()
        in_tree = ((found > 0) & (pred[np.maximum(found, 0)] >= 0)).tolist()
        at = 0
        for j, (_, targets, direct) in enumerate(jobs):
            out = []
            for target, i, reached in zip(targets, numbers[at:at + len(targets)], in_tree[at:at + len(targets)]):
                if reached:
                    out.append((target, len(seeds), 0))
                    seeds.append((j, i, -1))
                elif target not in mesh:
                    out.append((target, -1, _reason(reasons, "unknown_node")))
                elif i > 0 and target == direct:
                    out.append((target, len(seeds), 0))
                    seeds.append((j, i, 0))
                elif i > 0 and (via := self.witness_route(target)) is not None:
                    out.append((target, len(seeds), 0))
                    seeds.append((j, i, tree.arrays.number(via)))  # type: ignore[arg-type]
                else:
                    out.append((target, -1, _reason(reasons, avoid.get(target, "partition"))))
            verdicts.append(out)
            at += len(targets)
        failed = self._walk(jobs, seeds, names, pred) if seeds else np.zeros(0, bool)
        # 2. the deliveries, with every reached target's path from the tree (all at once)
        reached = np.array([t if via < 0 else via for _, t, via in seeds], np.int64)  # whose tree path
        paths = tree.paths(reached) if seeds else []
        done: list[list[Delivery]] = []
        for (action, _, _), out in zip(jobs, verdicts):
            routed = []
            aid = action.id
            for target, seed, why in out:
                if seed < 0:
                    routed.append(Delivery(aid, target, False, [], reasons[why - 1]))
                    continue
                path = list(paths[seed])
                if seeds[seed][2] >= 0:
                    path.append(target)  # through a witness, or one hop from the origin
                if failed[seed]:
                    routed.append(Delivery(aid, target, False, path, "relay_failed"))
                else:
                    routed.append(Delivery(aid, target, True, path))
            done.append(routed)
        return done

    def _walk(self, jobs: Sequence[tuple[Action, Sequence[str], str | None]], seeds: list[tuple[int, int, int]],
              names: Sequence[str | None], pred: np.ndarray) -> np.ndarray:
        """Send the hops level by level; whether each seed's target was *not* reached."""
        n = len(names)
        seed = np.array(seeds, np.int64).reshape(-1, 3)
        job, target, via = seed[:, 0], seed[:, 1], seed[:, 2]
        in_tree = via < 0
        # the last hop of each seed: from its tree parent, or from its witness / the origin
        sender = np.where(in_tree, pred[target], via)
        depth_of_sender = self.arrays_parent.depths(sender)
        level = depth_of_sender + 1
        # hops by level, bottom up: each (job, receiver) once, its sender's hop on the level above
        keys_at: dict[int, list[np.ndarray]] = {}
        senders_at: dict[int, list[np.ndarray]] = {}
        for lv in np.unique(level).tolist():
            at = level == lv
            keys_at.setdefault(lv, []).append(job[at] * n + target[at])
            senders_at.setdefault(lv, []).append(sender[at])
        top = max(keys_at)
        rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for lv in range(top, 0, -1):
            if lv not in keys_at:
                continue
            keys, first = np.unique(np.concatenate(keys_at[lv]), return_index=True)
            senders = np.concatenate(senders_at[lv])[first]
            rows[lv] = (keys, senders)
            climb = senders > 0
            if climb.any() and lv > 1:
                keys_at.setdefault(lv - 1, []).append(keys[climb] // n * n + senders[climb])
                senders_at.setdefault(lv - 1, []).append(pred[senders[climb]])
        # top down: a hop whose sender was not reached fails without being tried
        actions = [a for a, _, _ in jobs]
        failed_above = np.zeros(0, np.int64)
        failed_all = []
        for lv in range(1, top + 1):
            if lv not in rows:
                failed_above = np.zeros(0, np.int64)
                continue
            keys, senders = rows[lv]
            jobs_of = keys // n
            blocked = (senders > 0) & np.isin(jobs_of * n + senders, failed_above)
            acked = np.zeros(len(keys), bool)
            trying = np.flatnonzero(~blocked)
            for attempt in range(self.retries + 1):
                if not len(trying):
                    break
                self.hops += len(trying)
                if attempt:
                    self.retried += len(trying)
                ok = self._send(HopBatch(actions, jobs_of[trying], senders[trying], keys[trying] % n, names,
                                         lv, attempt))
                acked[trying[ok]] = True
                trying = trying[~ok]
            failed_above = keys[~acked]
            failed_all.append(failed_above)
        failed = np.concatenate(failed_all) if failed_all else np.zeros(0, np.int64)
        return np.isin(job * n + target, failed)

    def _send(self, batch: HopBatch) -> np.ndarray:
        """Which hops of ``batch`` the first answering transport acknowledged."""
        answer = self.call("wyneos_deliver_batch", self.errors, firstresult=True, ctx=self.ctx, hops=batch)
        if not answer:
            return np.zeros(len(batch), bool)
        plugin, result = answer[0]
        if isinstance(result, (bool, np.bool_)):
            return np.full(len(batch), bool(result))
        ok = _as_acks(result, len(batch))
        if ok is None:
            self.errors.append(PluginError(
                plugin, "wyneos_deliver_batch",
                f"returned {type(result).__name__} {result!r:.60}: expected one bool per hop ({len(batch)}), "
                "True, False or None; the level's hops count as not acknowledged", kind="invalid_result"))
            return np.zeros(len(batch), bool)
        return ok


def _as_acks(result: Any, count: int) -> np.ndarray | None:
    try:
        ok = np.asarray(result)
    except Exception:  # noqa: BLE001 - whatever a plugin returned, it is refused below
        return None
    if ok.dtype != bool or ok.shape != (count,):
        return None
    return ok


def _reason(reasons: list[str], reason: str) -> int:
    """A reason's code (1-based index into ``reasons``), added on first use."""
    try:
        return reasons.index(reason) + 1
    except ValueError:
        reasons.append(reason)
        return len(reasons)
