"""The online detector: one step over a whole fleet of series at once, state in columns.

Each series (one node's one metric) owns one column of ``Columns``: 22 float32 fields,
the time of its last sample (float64) and its last ``HISTORY`` values (float32): 128
bytes. ``step`` reads one new value per series (or none: ``present`` is False) and
updates every column with plain numpy expressions over the whole fleet; nothing in a
step looks at a later value, so a series' scores never change when more data arrives.

The anomaly score (docs/prediction.md has the measurements behind the choice):

1. Two surprises per sample, each mapped to [0, 1) by ``1 - exp(-z / 3)``: the error of
   a fast level (EWMA, alpha 0.3) against its own mean absolute error, and the distance
   of a short mean (alpha 0.03) from the long mean in long standard deviations (alpha
   0.002). Their weighted mean (1 : 2) is the raw surprise.
2. The raw surprise is smoothed (alpha 0.1) and compared with its own long-run mean and
   variance (alpha 0.0005, a running mean over the first 2,000 samples): the Gaussian tail probability ``p`` of that is the
   surprise's likelihood, and ``-log10(p) / 5`` clipped to [0, 1] is the score.
3. A value beyond the range seen so far by more than 5 % of that range scores 1 (from
   the 301st sample on: the range must be known first).
4. After a score of 0.5 or more, the next 150 samples of that series score 0: one
   finding per episode, not one per sample.
5. The first 100 samples of a series only learn (score 0).

The forecast is Holt's linear trend on the sample times (level and slope per second,
both smoothed), with the band ``forecast +- 3 * its mean absolute error``; each sample's
one-step forecast is kept (``expected``) to explain a finding. Change points: a
two-sided CUSUM of the forecast's error in units of its mean error (drift 1, limit 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
from scipy.special import log_ndtr

HISTORY: Final = 8

#: the float32 fields of a column, in order
FIELDS: Final = (
    "count", "latest", "low", "high", "level", "error", "short", "long_mean", "long_var",
    "surprise", "lik_mean", "lik_var", "quiet", "score", "holt_level", "slope", "slope_error",
    "change_up", "change_down", "changes", "raw", "expected",
)
F: Final = {name: i for i, name in enumerate(FIELDS)}

#: bytes each series takes: the fields, the time of the last sample, the history
BYTES_PER_SERIES: Final = 4 * len(FIELDS) + 8 + 4 * HISTORY


@dataclass(frozen=True)
class Params:
    """One configuration for every series (the NAB score is measured with these)."""

    level_alpha: float = 0.3
    error_alpha: float = 0.01
    short_alpha: float = 0.03
    long_alpha: float = 0.002
    surprise_alpha: float = 0.1
    likelihood_alpha: float = 0.0005
    level_scale: float = 3.0
    shift_scale: float = 3.0
    shift_weight: float = 2.0
    log10_scale: float = 5.0
    range_tolerance: float = 0.05
    learn: int = 100
    range_learn: int = 300
    fire: float = 0.5
    quiet: int = 150
    holt_alpha: float = 0.2
    slope_alpha: float = 0.05
    change_drift: float = 1.0
    change_limit: float = 8.0


@dataclass
class Columns:
    """The state of ``size`` series: ``fields`` (len(FIELDS), size) float32, ``last_t``
    (size,) float64 seconds, ``history`` (HISTORY, size) float32 (ring, newest at
    ``count % HISTORY - 1``)."""

    fields: np.ndarray
    last_t: np.ndarray
    history: np.ndarray
    params: Params = field(default_factory=Params)

    @classmethod
    def empty(cls, size: int, params: Params | None = None) -> Columns:
        return cls(np.zeros((len(FIELDS), size), dtype=np.float32), np.full(size, np.nan),
                   np.full((HISTORY, size), np.nan, dtype=np.float32), params or Params())

    @property
    def size(self) -> int:
        return int(self.last_t.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.fields.nbytes + self.last_t.nbytes + self.history.nbytes)

    def grow(self, size: int) -> None:
        """Make room for ``size`` series (new ones empty); existing columns are kept."""
        if size <= self.size:
            return
        extra = Columns.empty(size - self.size, self.params)
        self.fields = np.concatenate([self.fields, extra.fields], axis=1)
        self.last_t = np.concatenate([self.last_t, extra.last_t])
        self.history = np.concatenate([self.history, extra.history], axis=1)

    def reset(self, index: np.ndarray) -> None:
        """Forget the series at ``index`` (a node removed, a metric redeclared)."""
        self.fields[:, index] = 0.0
        self.last_t[index] = np.nan
        self.history[:, index] = np.nan

    def get(self, name: str) -> np.ndarray:
        return self.fields[F[name]]

    def step(self, values: np.ndarray, present: np.ndarray, now: float | np.ndarray) -> np.ndarray:
        """Take one sample per series (where ``present``); return this step's scores."""
        return step(self, values, present, now)


def step(cols: Columns, values: np.ndarray, present: np.ndarray, now: float | np.ndarray) -> np.ndarray:
    p = cols.params
    s = cols.fields
    ok = np.asarray(present, dtype=bool) & np.isfinite(values)
    count = s[F["count"]].astype(np.float64)
    level = s[F["level"]].astype(np.float64)
    x = np.where(ok, values, level).astype(np.float64)
    first = ok & (count == 0)
    for name in ("low", "high", "level", "short", "long_mean", "holt_level", "latest"):
        s[F[name]] = np.where(first, x, s[F[name]])
    level = s[F["level"]].astype(np.float64)
    low = s[F["low"]].astype(np.float64)
    high = s[F["high"]].astype(np.float64)
    span = high - low
    tiny = 1e-9 + 1e-6 * span

    # 1. the two surprises
    level_err = np.abs(x - level)
    z_level = level_err / (s[F["error"]] + tiny)
    short = s[F["short"]] + p.short_alpha * (x - s[F["short"]])
    long_mean = s[F["long_mean"]].astype(np.float64)
    long_var = s[F["long_var"]].astype(np.float64)
    z_shift = np.abs(short - long_mean) / np.sqrt(long_var + tiny * tiny)
    seen = count > 1
    raw = np.where(seen, ((1.0 - np.exp(-z_level / p.level_scale))
                          + p.shift_weight * (1.0 - np.exp(-z_shift / p.shift_scale)))
                   / (1.0 + p.shift_weight), 0.0)

    # 2. the likelihood of the smoothed surprise
    surprise = s[F["surprise"]] + p.surprise_alpha * (raw - s[F["surprise"]])
    d = surprise - s[F["lik_mean"]]
    z_lik = d / np.sqrt(s[F["lik_var"]] + 1e-6)
    score = np.clip(-log_ndtr(-z_lik) / (p.log10_scale * np.log(10.0)), 0.0, 1.0)
    score = np.where(count > p.learn, score, 0.0)

    # 3. beyond the range seen so far
    margin = p.range_tolerance * span
    score = np.where(((x > high + margin) | (x < low - margin)) & (count > p.range_learn), 1.0, score)

    # 4. one finding per episode
    quiet = s[F["quiet"]]
    fire = score >= p.fire
    score = np.where(quiet > 0, 0.0, score)
    new_quiet = np.where(fire & (quiet <= 0), float(p.quiet), quiet - 1.0)
    score = np.where(ok, score, 0.0)

    # forecast: Holt's level and slope per second
    now_arr = np.broadcast_to(np.asarray(now, dtype=np.float64), cols.last_t.shape)
    dt = now_arr - cols.last_t
    dt = np.where(np.isfinite(dt) & (dt > 0), dt, 0.0)
    holt = s[F["holt_level"]].astype(np.float64)
    slope = s[F["slope"]].astype(np.float64)
    predicted = holt + slope * dt

    # change points: a two-sided CUSUM of the forecast's error in units of its mean error
    signed = np.where(count > p.learn, (x - predicted) / (s[F["slope_error"]] + tiny), 0.0)
    up = np.maximum(0.0, s[F["change_up"]] + signed - p.change_drift)
    down = np.maximum(0.0, s[F["change_down"]] - signed - p.change_drift)
    changed = (count > p.learn) & ((up > p.change_limit) | (down > p.change_limit))
    new_holt = predicted + p.holt_alpha * (x - predicted)
    step_slope = np.where(dt > 0, (new_holt - holt) / np.where(dt > 0, dt, 1.0), slope)
    new_slope = np.where(count >= 1, slope + p.slope_alpha * (step_slope - slope), 0.0)

    # write back only where a sample came
    def put(name: str, value: np.ndarray) -> None:
        s[F[name]] = np.where(ok, value, s[F[name]])

    dev = x - long_mean
    # slow averages start as running means (alpha 1/n until it falls to theirs): no
    # false finding just after learning because a variance has not grown yet
    warm = 1.0 / (count + 1.0)
    lik_alpha = np.maximum(p.likelihood_alpha, warm)
    put("lik_mean", s[F["lik_mean"]] + lik_alpha * d)
    put("lik_var", s[F["lik_var"]] + lik_alpha * (d * d - s[F["lik_var"]]))
    put("error", np.where(count == 0, 0.0, s[F["error"]] + p.error_alpha * (level_err - s[F["error"]])))
    put("slope_error", np.where(count == 0, 0.0,
                                s[F["slope_error"]] + p.error_alpha * (np.abs(x - predicted) - s[F["slope_error"]])))
    put("level", level + p.level_alpha * (x - level))
    put("short", short)
    put("long_mean", long_mean + p.long_alpha * dev)
    put("long_var", np.where(count == 0, 0.0, (1.0 - p.long_alpha) * (long_var + p.long_alpha * dev * dev)))
    put("surprise", surprise)
    put("quiet", new_quiet)
    put("score", score)
    put("raw", raw)
    put("low", np.minimum(low, x))
    put("high", np.maximum(high, x))
    put("holt_level", np.where(changed, x, new_holt))  # after a change point the old trend is void
    put("slope", np.where(changed, 0.0, new_slope))
    put("change_up", np.where(changed, 0.0, up))
    put("change_down", np.where(changed, 0.0, down))
    put("changes", s[F["changes"]] + changed)
    put("latest", x)
    put("expected", np.where(count >= 2, predicted, x))
    slot = (count % HISTORY).astype(np.intp)
    rows = np.flatnonzero(ok)
    cols.history[slot[rows], rows] = x[rows]
    put("count", count + 1.0)
    cols.last_t = np.where(ok, now_arr, cols.last_t)
    return score


def forecast(cols: Columns, index: np.ndarray, horizon_s: float, now: float) -> np.ndarray:
    """Expected values ``horizon_s`` seconds after ``now`` (NaN without two samples)."""
    s = cols.fields
    since = np.maximum(0.0, now - cols.last_t[index])
    value = s[F["holt_level"], index] + s[F["slope"], index] * (since + horizon_s)
    return np.where(s[F["count"], index] >= 2, value, np.nan)


def band(cols: Columns, index: np.ndarray, horizon_s: float, now: float) -> tuple[np.ndarray, np.ndarray]:
    centre = forecast(cols, index, horizon_s, now)
    width = 3.0 * cols.fields[F["slope_error"], index]
    return centre - width, centre + width


def time_to(cols: Columns, index: np.ndarray, level: float, now: float) -> np.ndarray:
    """Seconds until the forecast reaches ``level``: 0 if there already, NaN if never."""
    s = cols.fields
    current = forecast(cols, index, 0.0, now)
    slope = s[F["slope"], index].astype(np.float64)
    gap = level - current
    with np.errstate(divide="ignore", invalid="ignore"):
        seconds = gap / slope
    latest = s[F["latest"], index]
    reached = np.where(slope >= 0, latest >= level, latest <= level)
    out = np.where(reached, 0.0, np.where((seconds > 0) & np.isfinite(seconds), seconds, np.nan))
    return np.where(s[F["count"], index] >= 2, out, np.nan)


def history(cols: Columns, index: int) -> list[float]:
    """The series' last values, oldest first."""
    count = int(cols.fields[F["count"], index])
    kept = min(count, HISTORY)
    slots = [(count - kept + i) % HISTORY for i in range(kept)]
    return [float(cols.history[slot, index]) for slot in slots]


def run_series(values: list[np.ndarray], times: list[np.ndarray] | None = None,
               params: Params | None = None) -> list[np.ndarray]:
    """Run the detector over whole series side by side (one column each), as the tick
    would feed them one sample at a time; returns each series' scores."""
    size = len(values)
    length = max((len(v) for v in values), default=0)
    cols = Columns.empty(size, params)
    grid = np.full((length, size), np.nan)
    clock = np.zeros((length, size))
    for j, series in enumerate(values):
        grid[: len(series), j] = series
        clock[: len(series), j] = times[j] if times is not None else np.arange(len(series), dtype=np.float64)
    out = np.zeros((length, size))
    for t in range(length):
        row = grid[t]
        out[t] = cols.step(row, ~np.isnan(row), clock[t])
    return [out[: len(series), j] for j, series in enumerate(values)]
