"""The plot of ``wyneos simulate``: legends outside the axes, integer ticks for counts, a
load panel for overloads, a lane with markers for every fault (a one-node fault on a
1,000-node cluster stays visible), and no stale files from earlier runs in ``--out``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from wyneos_core.simulate import load_scenario, resolve_scenario, simulate
from wyneos_core.simulate.plot import run_figure
from wyneos_core.simulate.runner import write_outputs


@pytest.fixture(scope="module")
def crash_of_one_in_1000():
    scenario = load_scenario(resolve_scenario("builtin:single-crash")).with_overrides(nodes=1000, ticks=20)
    return simulate(scenario)


@pytest.fixture(scope="module")
def overload():
    return simulate(load_scenario(resolve_scenario("builtin:overload")).with_overrides(ticks=24))


def panels(fig) -> dict:
    return {a.get_label(): a for a in fig.axes if a.get_label() in ("nodes", "faults", "load", "actions")}


def figure(result):
    fig = run_figure(result.samples, result.scenario, result.summary,
                     result.orchestrator.config["healing"]["overload_threshold"])
    FigureCanvasAgg(fig).draw()
    return fig


def test_panels_follow_the_scenario(crash_of_one_in_1000, overload):
    assert list(panels(figure(crash_of_one_in_1000))) == ["nodes", "faults", "actions"]
    assert list(panels(figure(overload))) == ["nodes", "faults", "load", "actions"]


def test_every_legend_is_outside_its_axes(crash_of_one_in_1000, overload):
    for result in (crash_of_one_in_1000, overload):
        fig = figure(result)
        renderer = fig.canvas.get_renderer()
        legends = [(a, a.get_legend()) for a in fig.axes if a.get_legend() is not None]
        assert len(legends) >= 3
        for axes, legend in legends:
            box, frame = legend.get_window_extent(renderer), axes.get_window_extent(renderer)
            assert box.x0 >= frame.x1, f"legend of {axes.get_label()} overlaps its axes"
            assert box.x1 <= fig.bbox.x1 + 1, f"legend of {axes.get_label()} is cut off"


def test_counts_have_integer_ticks(crash_of_one_in_1000, overload):
    for result in (crash_of_one_in_1000, overload):
        fig = figure(result)
        for name in ("nodes", "actions"):
            ticks = panels(fig)[name].get_yticks()
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (name, ticks)
        assert all(float(t).is_integer() for t in panels(fig)["actions"].get_xticks())


def test_a_one_node_crash_on_1000_nodes_is_plain_to_see(crash_of_one_in_1000):
    result = crash_of_one_in_1000
    fig = figure(result)
    nodes = panels(fig)["nodes"]
    # the not-online panel is scaled to what is not online (one node), not to 1,000
    assert nodes.get_ylim()[1] < 2
    drawn = {line.get_label(): line for line in nodes.get_lines()}
    assert max(drawn["stale"].get_ydata()) == 1 and max(drawn["isolated"].get_ydata()) == 1
    faults = panels(fig)["faults"]
    assert [t.get_text() for t in faults.get_yticklabels()] == ["#0 crash@5 (1 node)"]
    (row,) = result.summary["faults"]
    markers = [c.get_offsets().tolist() for c in faults.collections if len(c.get_offsets())]
    detected_at = row["detected_by_tick"][0][0]
    acted_at = row["acted_by_tick"][0][0]
    assert [[float(detected_at), -0.12]] in markers and [[float(acted_at), 0.12]] in markers
    assert acted_at > detected_at >= 5


def test_the_load_panel_shows_the_overload_and_the_threshold(overload):
    fig = figure(overload)
    load = panels(fig)["load"]
    lines = {line.get_label(): line.get_ydata() for line in load.get_lines()}
    assert max(lines["highest load"]) > 0.9 > max(lines["mean load"])
    assert list(lines["threshold 0.9"]) == [0.9, 0.9]
    over = [a for a in fig.axes if a is not load and a.bbox.bounds == load.bbox.bounds]  # its twin
    assert max(over[0].get_lines()[0].get_ydata()) == 3  # the three overloaded nodes


def test_the_png_is_a_real_picture_and_the_fault_lane_shows(crash_of_one_in_1000, tmp_path):
    paths = write_outputs(crash_of_one_in_1000, tmp_path / "out", "png")
    image = imread(paths["plot"])[:, :, :3]
    assert image.shape[1] == 1100 and image.shape[0] > 700
    pixels = (image * 255).round().astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    marker = np.all(np.abs(pixels - [0xD5, 0x00, 0x00]) <= 10, axis=2).sum()  # the red "acted on" marker
    assert marker > 20, marker


def test_no_stale_files_from_an_earlier_run(crash_of_one_in_1000, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    write_outputs(crash_of_one_in_1000, out, "svg")
    assert sorted(p.name for p in out.iterdir()) == ["notes.md", "plot.svg", "summary.json", "summary.txt",
                                                     "timeline.csv"]
    write_outputs(crash_of_one_in_1000, out, "png")
    assert sorted(p.name for p in out.iterdir()) == ["notes.md", "plot.png", "summary.json", "summary.txt",
                                                     "timeline.csv"]
    assert (out / "notes.md").read_text() == "mine"


def test_cli_out_holds_only_the_last_run(tmp_path):
    def run(*args):
        out = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "simulate", "builtin:single-crash", "--ticks",
                              "20", "--out", "o", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr

    run("--format", "svg")
    run()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["plot.png", "summary.json", "summary.txt",
                                                                 "timeline.csv"]
    header = (tmp_path / "o" / "timeline.csv").read_text().splitlines()[0]
    assert header.endswith(",load_mean,load_max,overloaded")


def test_the_simulation_page_plot_example_runs_as_written(tmp_path):
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "simulation.md").read_text()
    section = page[page.index("## The plot"):]
    command = re.search(r"```console\n\$ wyneos (.*?)\n```", section).group(1).split()
    for _ in range(2):  # twice in one directory, as every docs example
        out = subprocess.run([sys.executable, "-m", "wyneos_core.cli", *command], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "scenario single-crash: 1000 nodes, 20 ticks" in out.stdout
        assert sorted(p.name for p in (tmp_path / "sim-out").iterdir()) == [
            "plot.png", "summary.json", "summary.txt", "timeline.csv"]
        assert (tmp_path / "sim-out" / "plot.png").read_bytes().startswith(b"\x89PNG")
