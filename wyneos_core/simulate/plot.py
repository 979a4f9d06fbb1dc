"""The picture of a simulation (PNG or SVG), made to read well at any cluster size.

Panels, top to bottom, sharing the tick axis:

* **nodes not online**: stale, offline, unknown, isolated and partitioned nodes per tick
  as step lines on their own scale (a node that crashes in a cluster of 1,000 is a
  step from 0 to 1, not a hair on a 1,000-node area); ticks of a safety stop shaded;
  how many were online is in the title;
* **faults**: one lane per fault of the scenario, a bar from its first to its last
  tick, with a marker where its nodes were detected and where they were acted on
  (sized by how many), so even a one-node fault is plain to see;
* **load** (when the scenario overloads nodes): the mean and the highest load the
  nodes reported, the healing threshold, and how many nodes were above it;
* **actions**: actions decided per tick by type, and the share of deliveries made.

Counts get integer ticks; every legend sits outside its axes, to the right, so it
never hides data. Drawn with matplotlib's Agg canvas directly (no GUI backend, no
global pyplot state), so it works on a machine without a display and inside a server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from wyneos_core.simulate.metrics import TickSample
from wyneos_core.simulate.scenario import Scenario
from wyneos_core.wording import plural

__all__ = ["plot_run", "run_figure", "FORMATS"]

FORMATS = ("png", "svg")
_STATES = (("online", "#4caf50"), ("stale", "#ffb300"), ("offline", "#e53935"), ("unknown", "#9e9e9e"))
#: the lines of the "nodes not online" panel: (series, colour, line style)
#: isolated first, as a broad light band, so the lines drawn over it stay visible where counts are equal
_NOT_ONLINE = (("isolated", "#000000", "-"), ("stale", "#ffb300", "-"), ("offline", "#e53935", "-"),
               ("unknown", "#757575", "-"), ("partitioned", "#6a1b9a", "--"))
_FAULT_COLOURS = {"crash": "#e53935", "hang": "#ad1457", "flapping": "#fb8c00", "overload": "#f9a825",
                  "partition": "#6a1b9a", "message_loss": "#78909c", "licence_expiry": "#1565c0",
                  "forged_licence": "#283593", "clock_skew": "#00897b"}
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "fontsize": 8, "frameon": False}


def plot_run(samples: Sequence[TickSample], scenario: Scenario, path: str | Path,
             summary: Mapping[str, Any] | None = None, threshold: float | None = None) -> Path:
    """Draw the run into ``path`` (its suffix picks PNG or SVG) and return ``path``.

    ``summary`` (``Recorder.summary``) gives the per-tick detections and actions of each
    fault for its lane; ``threshold`` the healing load threshold for the load panel.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"plot format must be one of {', '.join(FORMATS)}, got {path.name!r}")
    fig = run_figure(samples, scenario, summary, threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt)
    return path


def run_figure(samples: Sequence[TickSample], scenario: Scenario, summary: Mapping[str, Any] | None = None,
               threshold: float | None = None) -> Figure:
    """The figure ``plot_run`` saves; each panel's axes is labelled with its name
    (``nodes``, ``faults``, ``load``, ``actions``; ``Axes.get_label()``)."""
    faults = list(scenario.faults)
    with_load = any(f.kind == "overload" for f in faults)
    panels = ["nodes"] + (["faults"] if faults else []) + (["load"] if with_load else []) + ["actions"]
    all_online = not any(s.partitioned or any(s.counts.get(n, 0) for n, _c, _s in _NOT_ONLINE) or s.safety_stop
                         for s in samples)
    heights = {"nodes": 0.8 if all_online else 3.0, "faults": max(1.0, 0.45 * len(faults)), "load": 2.0,
               "actions": 2.2}
    ratios = [heights[p] for p in panels]
    fig = Figure(figsize=(11, 1.2 + 1.05 * sum(ratios)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, gridspec_kw={"height_ratios": ratios}, squeeze=False)[:, 0]
    ax = dict(zip(panels, axes))
    for name, a in ax.items():
        a.set_label(name)
    ticks = [s.tick for s in samples]
    total = sum(samples[0].counts.get(k, 0) for k, _ in _STATES) if samples else 0

    _nodes_panel(ax["nodes"], samples, ticks, total)
    ax["nodes"].set_title(f"{scenario.name}: {plural(len(samples), 'tick')}, {plural(total, 'node')}"
                          + _online_range(samples, total), fontsize=11)
    if faults:
        fault_rows = {f["fault"]: f for f in (summary or {}).get("faults", [])}
        _faults_panel(ax["faults"], faults, fault_rows, ticks)
    if with_load:
        _load_panel(ax["load"], samples, ticks, threshold)
    _actions_panel(ax["actions"], samples, ticks)

    last = ax["actions"]
    last.set_xlabel("tick")
    last.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ticks:
        last.set_xlim(min(ticks) - 0.5, max(ticks) + 0.5)
    return fig


def _online_range(samples: Sequence[TickSample], total: int) -> str:
    online = [s.counts.get("online", 0) for s in samples]
    if not online:
        return ""
    low, high = min(online), max(online)
    return f" (online {low}" + (f"-{high}" if high != low else "") + f" of {total})"


def _integer_axis(ax: Any, highest: float) -> None:
    """Integer ticks from 0, with room above the highest count."""
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=2))
    ax.set_ylim(0, max(1.0, highest * 1.08))


def _nodes_panel(ax: Any, samples: Sequence[TickSample], ticks: list[int], total: int) -> None:
    drawn = 0
    highest = 0
    for name, colour, style in _NOT_ONLINE:
        values = [s.partitioned if name == "partitioned" else s.counts.get(name, 0) for s in samples]
        if not any(values):
            continue
        band = name == "isolated"
        ax.step(ticks, values, where="mid", color=colour, ls=style, lw=5 if band else 1.6, alpha=0.3 if band else 1,
                label=name)
        drawn += 1
        highest = max(highest, *values)
    stops = [s.tick for s in samples if s.safety_stop]
    for i, tick in enumerate(stops):
        ax.axvspan(tick - 0.5, tick + 0.5, color="#ce93d8", alpha=0.35, lw=0, label="safety stop" if i == 0 else None)
    if not drawn:
        ax.text(0.5, 0.5, "every node online in every tick", transform=ax.transAxes, ha="center", va="center",
                color="#555555")
    ax.set_ylabel("nodes not online")
    _integer_axis(ax, highest)
    ax.grid(axis="y", color="#eeeeee")
    if drawn or stops:
        ax.legend(**_LEGEND)


def _faults_panel(ax: Any, faults: Sequence[Any], rows: Mapping[str, Mapping[str, Any]], ticks: list[int]) -> None:
    end_of_run = (max(ticks) if ticks else 0) + 1
    labels = []
    biggest = 1
    for row in rows.values():
        for _tick, n in [*row.get("detected_by_tick", []), *row.get("acted_by_tick", [])]:
            biggest = max(biggest, n)
    for lane, fault in enumerate(faults):
        end = fault.until if fault.until is not None else end_of_run
        colour = _FAULT_COLOURS.get(fault.kind, "#607d8b")
        ax.broken_barh([(fault.at - 0.5, end - fault.at)], (lane - 0.3, 0.6), facecolors=colour, alpha=0.35,
                       edgecolor=colour, lw=1.0)
        row = rows.get(fault.label, {})
        nodes = row.get("nodes")
        labels.append(fault.label + (f" ({plural(nodes, 'node')})" if nodes else ""))
        for key, marker, colour_mark, dy in (("detected_by_tick", "v", "#212121", -0.12),
                                             ("acted_by_tick", "o", "#d50000", 0.12)):
            points = row.get(key) or []
            if points:
                ax.scatter([t for t, _ in points], [lane + dy] * len(points), marker=marker, color=colour_mark,
                           s=[28 + 60 * math.log2(n) / math.log2(biggest + 1) for _, n in points], zorder=3,
                           edgecolors="white", linewidths=0.5)
    ax.set_yticks(range(len(faults)), labels, fontsize=8)
    ax.set_ylim(len(faults) - 0.5, -0.5)  # fault #0 on top
    ax.set_ylabel("faults")
    ax.grid(axis="x", color="#eeeeee")
    handles = [Line2D([], [], marker="v", color="#212121", ls="", label="detected"),
               Line2D([], [], marker="o", color="#d50000", ls="", label="acted on")]
    ax.legend(handles=handles, title="marker size: nodes", title_fontsize=7, **_LEGEND)


def _load_panel(ax: Any, samples: Sequence[TickSample], ticks: list[int], threshold: float | None) -> None:
    ax.plot(ticks, [s.load_max for s in samples], color="#e65100", lw=1.5, label="highest load")
    ax.plot(ticks, [s.load_mean for s in samples], color="#1565c0", lw=1.5, label="mean load")
    if threshold is not None:
        ax.axhline(threshold, color="#b71c1c", ls=":", lw=1.2, label=f"threshold {threshold:g}")
    ax.set_ylabel("load")
    ax.set_ylim(0, max([1.0] + [s.load_max for s in samples if s.load_max is not None]) * 1.05)
    ax.grid(axis="y", color="#eeeeee")
    over = ax.twinx()
    over.step(ticks, [s.overloaded for s in samples], where="mid", color="#6d4c41", lw=1.0, ls="--",
              label="nodes above threshold")
    over.set_ylabel("nodes above", fontsize=8)
    _integer_axis(over, max((s.overloaded for s in samples), default=0))
    handles, names = ax.get_legend_handles_labels()
    more, more_names = over.get_legend_handles_labels()
    ax.legend(handles + more, names + more_names, **{**_LEGEND, "bbox_to_anchor": (1.07, 1.0)})


def _actions_panel(ax: Any, samples: Sequence[TickSample], ticks: list[int]) -> None:
    types = sorted({t for s in samples for t in s.actions})
    bottoms = [0] * len(samples)
    for kind in types:
        values = [s.actions.get(kind, 0) for s in samples]
        ax.bar(ticks, values, bottom=bottoms, label=kind, width=0.8)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_ylabel("actions decided")
    _integer_axis(ax, max(bottoms, default=0))
    ax.grid(axis="y", color="#eeeeee")
    cover = ax.twinx()
    if any(s.deliveries for s in samples):
        cover.plot(ticks, [s.delivered / s.deliveries if s.deliveries else math.nan for s in samples],
                   color="#283593", marker=".", lw=0, label="delivered share")
    cover.set_ylim(0, 1.05)
    cover.set_ylabel("delivered share", fontsize=8)
    handles, names = ax.get_legend_handles_labels()
    more, more_names = cover.get_legend_handles_labels()
    if not types:
        ax.text(0.5, 0.5, "no action decided", transform=ax.transAxes, ha="center", va="center", color="#555555")
    if handles or more:
        ax.legend(handles + more, names + more_names, **{**_LEGEND, "bbox_to_anchor": (1.07, 1.0)})
