"""The picture of a simulation: node states and actions over time (PNG or SVG).

Drawn with matplotlib's Agg canvas directly (no GUI backend, no global pyplot state),
so it works on a machine without a display and inside a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wyneos_core.simulate.metrics import TickSample
from wyneos_core.simulate.scenario import Scenario

__all__ = ["plot_run", "FORMATS"]

FORMATS = ("png", "svg")
_STATES = (("online", "#4caf50"), ("stale", "#ffb300"), ("offline", "#e53935"), ("unknown", "#9e9e9e"))


def plot_run(samples: Sequence[TickSample], scenario: Scenario, path: str | Path) -> Path:
    """Draw node states (stacked) and actions per tick; faults are shaded. Returns ``path``."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"plot format must be one of {', '.join(FORMATS)}, got {path.name!r}")
    ticks = [s.tick for s in samples]
    fig = Figure(figsize=(10, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top.stackplot(ticks, *[[s.counts.get(name, 0) for s in samples] for name, _ in _STATES],
                  labels=[name for name, _ in _STATES], colors=[c for _, c in _STATES], alpha=0.85)
    top.plot(ticks, [s.counts.get("isolated", 0) for s in samples], color="black", lw=1.6, label="isolated")
    top.plot(ticks, [s.partitioned for s in samples], color="#6a1b9a", lw=1.2, ls="--", label="partitioned")
    stops = [s.tick for s in samples if s.safety_stop]
    if stops:
        top.scatter(stops, [0] * len(stops), marker="|", s=120, color="#6a1b9a", label="safety stop")
    for fault in scenario.faults:
        end = fault.until if fault.until is not None else (ticks[-1] if ticks else fault.at) + 1
        top.axvspan(fault.at - 0.5, end - 0.5, color="#90caf9", alpha=0.18)
        top.text(fault.at - 0.4, top.get_ylim()[1] * 0.98, fault.kind, fontsize=7, va="top", rotation=90)
    top.set_ylabel("nodes")
    total = sum(samples[0].counts.get(k, 0) for k, _ in _STATES) if samples else 0
    top.set_title(f"{scenario.name}: {len(samples)} ticks, {total} nodes")
    top.legend(loc="lower left", fontsize=7, ncol=4)
    types = sorted({t for s in samples for t in s.actions})
    bottoms = [0] * len(samples)
    for kind in types:
        values = [s.actions.get(kind, 0) for s in samples]
        bottom.bar(ticks, values, bottom=bottoms, label=kind, width=0.8)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    bottom.set_ylabel("actions decided")
    bottom.set_xlabel("tick")
    if types:
        bottom.legend(loc="upper right", fontsize=7, ncol=3)
    cover = bottom.twinx()
    cover.plot(ticks, [s.delivered / s.deliveries if s.deliveries else None for s in samples],
               color="#283593", marker=".", lw=0, label="coverage")
    cover.set_ylim(0, 1.05)
    cover.set_ylabel("delivered share")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt)
    return path
