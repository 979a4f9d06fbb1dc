"""Daily seasonality (``telemetry.metrics[].seasonal: daily``) and departed nodes' columns
(issue 20): a daily cycle and the 03:00 cron burst cause no warning once a day is
learnt, a leak on top of the cycle is still warned of before the crash, a seasonal
series' scores never look ahead, and a node taking a departed node's row starts clean."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from wyneos_core import hookimpl
from wyneos_core.builtin.predict import telemetry_of
from wyneos_core.config import load_config
from wyneos_core.model import Heartbeat
from wyneos_core.predict import detector, seasonal
from wyneos_core.predict.detector import BYTES_PER_SERIES, F, Columns
from wyneos_core.predict.telemetry import Telemetry, TelemetryStateError
from wyneos_core.tick import Orchestrator

DAY = 86400.0
T0 = 1_700_006_400.0  # a midnight, UTC


def office_day(t: np.ndarray) -> np.ndarray:
    """Memory of a node busy in office hours: 0.45 at night, up to 0.9 from 08:00 to 11:00,
    down at 19:00."""
    hour = np.mod(t, DAY) / 3600.0
    day = np.clip((hour - 8.0) / 3.0, 0.0, 1.0) - np.clip(hour - 19.0, 0.0, 1.0)
    return 0.45 + 0.45 * np.where(hour < 20.0, day, 0.0)


def cycle(days: float, step: float, leak_from: float | None = None, per_hour: float = 0.0, seed: int = 1):
    t = T0 + np.arange(0.0, days * DAY, step)
    x = office_day(t) + np.random.default_rng(seed).normal(0.0, 0.01, len(t))
    if leak_from is not None:
        x += np.where(t >= T0 + leak_from, per_hour * (t - T0 - leak_from) / 3600.0, 0.0)
    return t, x


def warned(cols: Columns, t: np.ndarray, x: np.ndarray, level: float = 1.0, within: float = 7200.0) -> np.ndarray:
    """Per sample: did ``time_to(level) < within`` hold right after it (what a rule sees)?"""
    out = np.zeros(len(t), dtype=bool)
    for i in range(len(t)):
        cols.step(x[i:i + 1], np.array([True]), t[i])
        left = detector.time_to(cols, np.array([0]), level, t[i])[0]
        out[i] = np.isfinite(left) and left < within
    return out


def test_a_seasonal_series_still_takes_128_bytes() -> None:
    cols = Columns.empty(10, pattern=np.array([True, False]))
    assert cols.nbytes == 10 * BYTES_PER_SERIES and BYTES_PER_SERIES <= 128
    assert cols.seasonal.tolist() == [True, False] * 5
    cols.grow(20)
    assert cols.seasonal.tolist() == [True, False] * 10 and cols.nbytes == 20 * BYTES_PER_SERIES


def test_the_profile_learns_the_day_and_the_forecast_follows_it() -> None:
    t, x = cycle(3, 300.0)
    cols = Columns.empty(1, pattern=np.array([True]))
    for i in range(len(t)):
        cols.step(x[i:i + 1], np.array([True]), t[i])
    profile = np.array(seasonal.profile(cols, 0))
    hourly = office_day(T0 + 1800.0 + 3600.0 * np.arange(24))  # the middle of each hour
    assert np.abs((profile - profile.mean()) - (hourly - hourly.mean())).max() < 0.06
    now = t[-1]  # 23:55
    at = np.array([0])
    for hours in (3, 10, 14):  # night, the morning ramp, office hours
        expected = office_day(np.array([now + 3600.0 * hours]))[0]
        assert detector.forecast(cols, at, 3600.0 * hours, now)[0] == pytest.approx(expected, abs=0.07), hours
    # without the profile the forecast is a line: it says nothing of the office hours
    plain = Columns.empty(1)
    for i in range(len(t)):
        plain.step(x[i:i + 1], np.array([True]), t[i])
    assert abs(detector.forecast(plain, at, 3600.0 * 10, now)[0] - office_day(np.array([now + 36000.0]))[0]) > 0.15


@pytest.mark.parametrize("step", [60.0, 300.0])
def test_a_daily_cycle_warns_of_nothing_once_a_day_is_learnt(step: float) -> None:
    t, x = cycle(4, step)
    late = t >= T0 + DAY
    with_profile = warned(Columns.empty(1, pattern=np.array([True])), t, x)
    assert not with_profile[late].any()
    if step == 60.0:  # the same cycle without the profile: the morning ramp reads as memory running out
        assert warned(Columns.empty(1), t, x)[late].sum() * step >= 3 * 3600


@pytest.mark.parametrize("step, per_hour", [(60.0, 0.03), (120.0, 0.09), (300.0, 0.05), (120.0, 0.01)])
def test_a_leak_on_top_of_the_cycle_is_warned_before_the_crash(step: float, per_hour: float) -> None:
    t, x = cycle(6, step, leak_from=3 * DAY, per_hour=per_hour)
    flags = warned(Columns.empty(1, pattern=np.array([True])), t, x)
    crash = int(np.flatnonzero(x >= 1.0)[0])
    assert not flags[(t >= T0 + DAY) & (t < T0 + 3 * DAY)].any()  # the days before the leak: quiet
    first = int(np.flatnonzero(flags & (t >= T0 + 3 * DAY))[0])
    assert t[crash] - t[first] >= 15 * 60  # ahead of the crash by more than a predictive rule's hold


def test_seasonal_scores_of_a_prefix_never_change() -> None:
    t, x = cycle(3, 300.0, leak_from=2 * DAY, per_hour=0.02)
    x[400] += 0.4  # a spike, so that there is something to score
    full = detector.run_series([x, x], [t, t], daily=[True, False])
    assert full[0].max() >= 0.5
    for cut in (150, 288, 289, 500, 700, len(x) - 1):  # before, at and after a day's end
        prefix = detector.run_series([x[:cut]], [t[:cut]], daily=[True])[0]
        assert np.array_equal(prefix, full[0][:cut]), cut
    assert not np.array_equal(full[0], full[1])  # the seasonal path is another path


# -- through the tick: the shipped predictive rules, a daily cycle and the 03:00 cron job --------

RULES = """\
ruleset: predictive
stage: healing
rules:
  - id: memory-runs-out
    description: memory is expected to run out within two hours
    when: 'time_to(node.metrics.memory, 1.0) < "2h"'
    then:
      - degrade: {}
  - id: cpu-climbing
    description: CPU above 70% and not coming down
    when: 'node.metrics.cpu > 0.7 and trend(node.metrics.cpu) >= 0'
    mode: enforce
    then:
      - reduce_load: {}
"""


class Fleet:
    """Three nodes on office hours with a nightly CPU job at 03:00 for ten minutes; ``leaky``
    leaks memory from ``leak_from`` (0.05 an hour) and crashes when it is full."""

    def __init__(self, now: list[float], leak_from: float) -> None:
        self.now = now
        self.leak_from = leak_from
        self.crashed: float | None = None
        self.warnings: list[tuple[float, str, str]] = []
        self.acted: list[tuple[float, str]] = []
        self.rng = np.random.default_rng(3)

    @hookimpl
    def wyneos_heartbeat(self, ctx):
        t = self.now[0]
        hour = (t % DAY) / 3600.0
        beats = []
        for node_id in ("quiet-1", "quiet-2", "leaky"):
            memory = float(office_day(np.array([t]))[0] + self.rng.normal(0.0, 0.01))
            if node_id == "leaky" and t >= self.leak_from:
                memory += 0.05 * (t - self.leak_from) / 3600.0
                if memory >= 1.0 and self.crashed is None:
                    self.crashed = t
            if node_id == "leaky" and self.crashed is not None:
                continue  # down
            cpu = 0.25 + (0.5 if 3.0 <= hour < 3.0 + 1 / 6 else 0.0) + float(self.rng.normal(0.0, 0.01))
            beats.append(Heartbeat(node_id, t, metrics={"memory": min(memory, 1.0), "cpu": cpu}))
        return beats

    @hookimpl
    def wyneos_tick_report(self, ctx, report):
        for action in report.proposed:
            if str(action.origin).startswith("ruleset:predictive/"):
                self.warnings.append((self.now[0], action.target, action.origin))
        for action in report.actions:
            if str(action.origin).startswith("ruleset:predictive/"):
                self.acted.append((self.now[0], action.target))


def test_through_the_tick_a_cycle_and_the_cron_job_cause_nothing_and_the_leak_is_warned(tmp_path) -> None:
    (tmp_path / "predictive.yaml").write_text(RULES)
    config = load_config(text=textwrap.dedent(f"""\
        nodes: [{{id: quiet-1}}, {{id: quiet-2}}, {{id: leaky}}]
        plugins: {{disable: [licence]}}
        report: {{stdout: none, json_path: null}}
        tick: {{interval: 120}}
        heartbeat: {{interval: 120, stale_after: 360, offline_after: 960, max_clock_skew: 30}}
        rulesets: {{paths: [{tmp_path / 'predictive.yaml'}]}}
        telemetry:
          metrics:
            - {{name: memory, unit: ratio, min: 0, max: 1, seasonal: daily}}
            - {{name: cpu, unit: ratio, min: 0, max: 2, seasonal: daily}}
        """))
    now = [T0]
    fleet = Fleet(now, leak_from=T0 + 3 * DAY)
    orch = Orchestrator(config, clock=lambda: now[0], plugins=[fleet], load_entrypoints=False, store=False)
    while now[0] < T0 + 3 * DAY + 14 * 3600 and fleet.crashed is None:
        now[0] += 120.0
        orch.tick()
    orch.stop()
    assert fleet.crashed is not None  # the leak did run the node out of memory
    after_first_day = [w for w in fleet.warnings if w[0] >= T0 + DAY]
    false = [w for w in after_first_day if w[1] != "leaky" or w[0] < fleet.leak_from]
    assert false == []
    assert not fleet.acted  # the cron job's CPU burst decided nothing
    leak = [w for w in after_first_day if w[1] == "leaky" and w[0] >= fleet.leak_from]
    assert leak and leak[0][2].endswith("memory-runs-out") and leak[0][0] < fleet.crashed
    evidence = telemetry_of(orch)
    assert evidence.daily == [True, True]


def test_evidence_shows_the_profile_and_the_band_follows_it(tmp_path) -> None:
    tel = Telemetry([{"name": "memory", "seasonal": "daily"}, {"name": "cpu"}])
    tel.slot("n")  # the only node
    t, x = cycle(2, 300.0)
    pad = np.full(tel.cols.size - 2, np.nan)
    for i in range(len(t)):
        tel.step(np.concatenate([[x[i], 0.3], pad]), np.concatenate([[t[i], t[i]], pad]))
    from wyneos_core.predict.telemetry import FleetPredictions

    answers = FleetPredictions(tel, t[-1])
    ev = answers.evidence("n", "memory")
    assert ev["seasonal"] == "daily" and len(ev["profile"]) == 24 and ev["recent"] == []
    low, high = ev["expected"]
    assert low <= ev["observed"] <= high
    assert "profile" not in answers.evidence("n", "cpu") and len(answers.evidence("n", "cpu")["recent"]) == 8


# -- kept across restarts, and departed nodes ---------------------------------------------------

def _fed(metrics, nodes=("a", "b"), samples=300) -> Telemetry:
    tel = Telemetry(metrics)
    rng = np.random.default_rng(5)
    for node in nodes:
        tel.slot(node)
    for i in range(samples):
        values = np.array([0.5 + 0.3 * np.sin(i / 12.0) + rng.normal(0, 0.01) for _ in range(len(nodes) * tel.width)])
        tel.step(np.concatenate([values, np.full(tel.cols.size - len(values), np.nan)]),
                 np.full(tel.cols.size, T0 + 300.0 * i))
    return tel


def test_profiles_are_kept_across_a_restart_and_dropped_when_the_seasonality_changes() -> None:
    metrics = [{"name": "memory", "seasonal": "daily"}, {"name": "cpu"}]
    tel = _fed(metrics)
    blob = tel.to_bytes()
    back = Telemetry(metrics)
    assert back.restore(blob) == 2
    used = 2 * tel.width
    assert np.array_equal(back.cols.history[:, :used].view(np.uint32), tel.cols.history[:, :used].view(np.uint32))
    assert seasonal.profile(back.cols, 0) == seasonal.profile(tel.cols, 0)
    # memory no longer seasonal: its saved bytes mean something else, it learns again; cpu is kept
    changed = Telemetry([{"name": "memory"}, {"name": "cpu"}])
    changed.restore(blob)
    assert changed.index("a", "memory") is None and changed.index("a", "cpu") is not None
    with pytest.raises(TelemetryStateError):
        Telemetry(metrics).restore(blob[:-3])


def test_a_node_taking_a_departed_nodes_row_starts_clean(tmp_path) -> None:
    config = load_config(text=textwrap.dedent("""\
        nodes: [{id: old}, {id: stays}]
        plugins: {disable: [licence]}
        report: {stdout: none, json_path: null}
        telemetry:
          metrics:
            - {name: memory, unit: ratio, min: 0, max: 1, seasonal: daily}
            - {name: cpu, unit: ratio, min: 0, max: 1}
        """))
    now = [T0]
    present = ["old", "stays"]

    class Beats:
        @hookimpl
        def wyneos_heartbeat(self, ctx):
            return [Heartbeat(n, now[0], metrics={"memory": 0.5 + 0.001 * ctx.tick, "cpu": 0.2}) for n in present]

    orch = Orchestrator(config, clock=lambda: now[0], plugins=[Beats()], load_entrypoints=False, store=False)
    for _ in range(150):
        now[0] += 60.0
        orch.tick()
    tel = telemetry_of(orch)
    row = tel.rows.index["old"]
    assert tel.cols.get("count")[row * 2] == 150
    orch.remove_node("old")
    present.remove("old")
    assert "old" not in tel.rows.index
    orch.add_node("new")
    present.append("new")
    now[0] += 60.0
    orch.tick()
    assert tel.rows.index["new"] == row  # the row is reused ...
    for j in range(2):  # ... and starts from nothing: one sample, no trend, no profile of the old node
        assert tel.cols.get("count")[row * 2 + j] == 1
    assert tel.index("old", "memory") is None
    assert all(v is None for v in seasonal.profile(tel.cols, row * 2))
    assert tel.cols.get("count")[tel.rows.index["stays"] * 2] == 151
    saved = Telemetry(config["telemetry"]["metrics"])
    assert saved.restore(tel.to_bytes()) == 2 and sorted(saved.node_ids) == ["new", "stays"]
    orch.stop()


def test_metrics_a_departed_node_sent_in_its_last_tick_do_not_reach_the_next_node() -> None:
    from wyneos_core.telemetry_inbox import MetricInbox

    inbox = MetricInbox(("memory",))
    inbox.add("gone", T0, {"memory": 0.9})
    inbox.add("here", T0, {"memory": 0.1})
    inbox.forget("gone")
    inbox.add("next", T0, {"memory": 0.3})
    batch = inbox.take()
    assert batch.as_dict() == {"here": {"memory": 0.1}, "next": {"memory": 0.3}}
    assert batch.rows.tolist() == [inbox.rows.index["here"], inbox.rows.index["next"]]
    assert inbox.rows.index["next"] == 0  # the freed row
    assert inbox.rows.take_freed() == [0] and inbox.rows.take_freed() == []


def test_explain_shows_the_forecast_along_the_profile() -> None:
    from wyneos_core.model import Node, NodeStatus
    from wyneos_core.predict.telemetry import FleetPredictions
    from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, explain
    from wyneos_core.rules.expr import parse

    tel = Telemetry([{"name": "memory", "unit": "ratio", "seasonal": "daily"}])
    tel.slot("n")
    t, x = cycle(3, 300.0)
    pad = np.full(tel.cols.size - 1, np.nan)
    for i in range(len(t)):
        tel.step(np.concatenate([[x[i]], pad]), np.concatenate([[t[i]], pad]))
    now = float(t[-1])  # 23:55: in ten hours the morning ramp, which the profile expects
    answers = FleetPredictions(tel, now)
    env = EvalEnv(now, {}, {}, answers, None)
    node = Node("n", NodeStatus.ONLINE, last_seen=now)
    text = "\n".join(explain(parse('forecast(node.metrics.memory, "10h") > 0.8'), node, NO_LICENCE, env))
    ahead = answers.forecast("n", "memory", 36000.0)
    assert ahead == pytest.approx(office_day(np.array([now + 36000.0]))[0], abs=0.07)
    assert f"forecast(node.metrics.memory, '10h')  =>  {ahead:.6g}" in text
    assert "seasonal='daily'" in text and "profile=[" in text and "profile_now=" in text
