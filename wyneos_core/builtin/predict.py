"""Builtin predict: telemetry into the online detectors, answers for the rules.

The ``wyneos_predict`` step (after licence, before governance) takes the metrics this
tick's accepted heartbeats carried (``Registry.take_metrics``), steps the detector
columns of every node and declared metric at once (``wyneos_core.predict.telemetry``)
and returns a ``FleetPredictions`` the core leaves in ``ctx.scratch["predict"]``. The
tick report's ``predict`` notes count the samples and the findings (anomaly score at or
above 0.5) with their evidence, at most ``REPORT_LIMIT`` of them.

The columns are saved to the state store every ``telemetry.save_every`` ticks (and at
shutdown) and restored the first time the step runs (SQLite, or etcd on replicas). A
saved state that cannot be read is reported and the detectors start afresh: learning
again costs 100 samples per series, never a wrong answer.

Replace it by disabling it (``plugins.disable: [predict]``) and implementing
``wyneos_predict``. See docs/prediction.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wyneos_core import hookimpl
from wyneos_core.model import Node
from wyneos_core.predict.telemetry import FINDING, FleetPredictions, Telemetry, TelemetryStateError

if TYPE_CHECKING:
    from wyneos_core.tick import Orchestrator, TickContext

__all__ = ["telemetry_of"]

BLOB_NAME = "telemetry"
#: findings listed one by one in a tick report at most (all are counted)
REPORT_LIMIT = 100
#: findings said in the tick report's notes at most
NOTE_LIMIT = 5


def _g(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def telemetry_of(orchestrator: Orchestrator) -> Telemetry:
    """The telemetry columns of ``orchestrator``, restored from its store the first time."""
    state = getattr(orchestrator, "_telemetry", None)
    if state is None:
        metrics = orchestrator.config["telemetry"]["metrics"]
        rows = orchestrator.registry.metrics_inbox.rows
        state = Telemetry(metrics, rows=rows)
        store = orchestrator.store
        blob = getattr(store, "blob", None)
        if blob is not None and state.width:
            saved = blob(BLOB_NAME)
            if saved is not None:
                try:
                    state.restore(saved)
                except TelemetryStateError as exc:
                    state = Telemetry(metrics, rows=rows)
                    orchestrator.startup_notes.append(f"telemetry: the saved detector state was not used ({exc}); "
                                                      "the detectors learn again")
        orchestrator._telemetry = state  # type: ignore[attr-defined]
    return state


def save(orchestrator: Orchestrator) -> None:
    state = getattr(orchestrator, "_telemetry", None)
    put = getattr(orchestrator.store, "put_blob", None)
    if state is not None and put is not None and state.width:
        put(BLOB_NAME, state.to_bytes())


@hookimpl
def wyneos_predict(ctx: TickContext, nodes: Sequence[Node]) -> FleetPredictions | None:
    state = telemetry_of(ctx.orchestrator)
    batch = ctx.registry.take_metrics()
    if not state.width:
        return None
    scores = state.feed(batch)
    summary: dict[str, Any] = {"samples": len(batch), "series": len(state.node_ids) * state.width}
    answers = FleetPredictions(state, ctx.now)
    rows, cols = np.nonzero(scores >= FINDING)
    summary["findings"] = int(len(rows))
    if len(rows):
        summary["evidence"] = [{"node_id": state.node_ids[r], **answers.evidence(state.node_ids[r], state.metrics[c])}
                               for r, c in zip(rows[:REPORT_LIMIT].tolist(), cols[:REPORT_LIMIT].tolist())]
    ctx.scratch["predict_summary"] = summary
    for item in summary.get("evidence", [])[:NOTE_LIMIT]:
        low, high = item["expected"]
        ctx.report.notes.append(
            f"predict: {item['node_id']} {item['metric']} = {item['observed']:g}{item['unit'] and ' ' + item['unit']} "
            f"is anomalous (score {item['anomaly']:.2f}; expected {_g(low)}..{_g(high)})")
    every = int(ctx.config["telemetry"]["save_every"])
    if ctx.tick % every == 0:
        save(ctx.orchestrator)
    return answers


@hookimpl
def wyneos_shutdown(orchestrator: Orchestrator) -> None:
    save(orchestrator)
