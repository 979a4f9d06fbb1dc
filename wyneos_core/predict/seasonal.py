"""Daily seasonality for the series configured ``seasonal: daily``, in the same 128 bytes.

A seasonal series keeps, in place of its last 8 values (the 32 bytes of its
``history``), a daily profile: 24 hourly bins of one signed byte each (``-128``: the
hour was never seen), the profile's scale (float32: a bin's value is ``byte * scale``)
and the running mean of the current hour (float32). Its ``base`` field is the
series' slow level without the daily cycle.

Per sample ``x`` at time ``t`` (hours of the day in UTC):

1. When the hour changed since the series' last sample, that hour's mean of
   ``x - base`` goes into its bin (the first time as it is, then moving it by
   ``season_gain``, 0.5: each day counts half), the profile is centred (the bins seen
   average 0: a level shift or a leak moves ``base``, not the profile) and requantised.
2. ``y = x - profile[hour(t)]`` is what the detector proper sees: the level, the
   surprises, the likelihood, the range, Holt's forecast and the change points are all
   of the series without its daily cycle, so a usual day scores as usual.
3. ``base`` follows ``y`` with a time constant of ``season_tau`` (6 hours), and the
   current hour's mean of ``x - base`` (time-weighted) takes the sample.

Series ``i``'s hours begin ``60 * (i % 6)`` seconds after the clock's, so that a fleet
whose samples come in step closes its hours over six minutes, not all in one tick (a
bin is that much late: nothing at an hour's resolution).

Only what came before a sample is used for its score (the bin of the current hour was
written at the end of that hour on an earlier day). Forecasts add the profile of the
hour forecast (``profile_at``); ``time_to`` follows the forecast hour by hour
(``time_to``). The byte layout is little-endian, saved and restored with the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from wyneos_core.predict.detector import Columns

HOURS: Final = 24
HOUR: Final = 3600.0
DAY: Final = 86400.0
EMPTY: Final = -128
#: series close their hours ``LAG`` seconds apart, in ``SPREAD`` groups (``before``)
SPREAD: Final = 6
LAG: Final = 60.0
#: bytes of a seasonal column's block (the 8 float32 of a plain column's history)
BLOCK: Final = 32
_SCALE, _ACC = 6, 7  # float32 slots of the block after the 24 bins


def hour_of(t: np.ndarray) -> np.ndarray:
    """The hour of the day (UTC) of epoch seconds ``t``."""
    return (np.asarray(t, dtype=np.float64) * (1.0 / HOUR)).astype(np.int64) % HOURS


def _blocks(cols: Columns, index: np.ndarray) -> np.ndarray:
    """The series' 32-byte blocks as (n, 8) float32, a copy (bins through ``.view(np.int8)``)."""
    return np.ascontiguousarray(cols.history[:, index].T)


def _profile(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins as float32 (n, 24) (0 where never seen) and which were seen."""
    q = block.view(np.int8)[:, :HOURS]
    seen = q != EMPTY
    scale = block[:, _SCALE:_SCALE + 1]
    return np.where(seen, q.astype(np.float32) * scale, np.float32(0.0)), seen


def _interpolate(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The profile ``values`` (n, 24) at times ``t`` ((n,) or (n, k)): linear between the
    middles of the hours (a bin is its hour's mean), so a ramp is followed, not stepped."""
    u = np.mod(t, DAY) / HOUR - 0.5
    low = np.floor(u)
    frac = (u - low).astype(np.float32)
    h0 = np.mod(low, HOURS).astype(np.intp)
    h1 = np.mod(h0 + 1, HOURS)
    if h0.ndim == 1:
        rows = np.arange(len(values))
        a, b = values[rows, h0], values[rows, h1]
    else:
        a, b = np.take_along_axis(values, h0, axis=1), np.take_along_axis(values, h1, axis=1)
    return a + frac * (b - a)


def _close_hours(sub: np.ndarray, at: np.ndarray, gain: float) -> None:
    """Put each block's hour mean into bin ``at`` (moving it by ``gain`` if seen before),
    centre the seen bins on 0 and quantise them again; ``sub`` is (m, 8), in place, a few
    thousand rows at a time (the temporaries stay in the processor's cache)."""
    for a in range(0, len(sub), _CLOSE_ROWS):
        blk = sub[a:a + _CLOSE_ROWS]
        hours = at[a:a + _CLOSE_ROWS]
        line = np.arange(len(blk))
        q = blk.view(np.int8)[:, :HOURS]
        seen = q != EMPTY
        values = q.astype(np.float32)
        values *= blk[:, _SCALE:_SCALE + 1]
        old = values[line, hours]
        mean = blk[:, _ACC]
        values[line, hours] = np.where(seen[line, hours], old + np.float32(gain) * (mean - old), mean)
        seen[line, hours] = True
        values *= seen
        values -= (values.sum(axis=1) / seen.sum(axis=1))[:, None]
        values *= seen
        top = np.abs(values).max(axis=1)
        scale = np.where(top > 0, top / np.float32(127.0), np.float32(1.0)).astype(np.float32)
        values *= (np.float32(1.0) / scale)[:, None]
        packed = np.rint(values, out=values).astype(np.int8)  # within +-127 by the scale
        np.copyto(packed, np.int8(EMPTY), where=~seen)
        q[:] = packed
        blk[:, _SCALE] = scale


#: rows of blocks closed at once (24 bins each: 400 KB of float32)
_CLOSE_ROWS: Final = 4096


#: a float32 whose four bytes are each ``EMPTY``
_EMPTY4: Final = np.array([0x80808080], dtype=np.uint32).view(np.float32)[0]


def _now_value(block: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """The profile at ``hours`` (epoch hours, float) of the blocks ``block`` laid out as in
    ``history`` ((8, n) float32): only the two bins around it are read."""
    n = block.shape[1]
    u = hours - 0.5
    low = np.floor(u)
    frac = (u - low).astype(np.float32)
    h0 = low.astype(np.int64) % HOURS
    h1 = h0 + 1
    h1[h1 == HOURS] = 0
    b8 = block.view(np.int8)  # (8, 4n): bin h of series r at [h // 4, 4 r + h % 4]
    base = 4 * np.arange(n)
    q0 = b8[h0 >> 2, base + (h0 & 3)]
    q1 = b8[h1 >> 2, base + (h1 & 3)]
    scale = block[_SCALE]
    v0 = q0 * scale
    v0[q0 == EMPTY] = 0.0
    v1 = q1 * scale
    v1[q1 == EMPTY] = 0.0
    return v0 + frac * (v1 - v0)


def before(cols: Columns, index: np.ndarray, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Update the profiles of the seasonal series ``index`` (each with a sample ``x`` at
    ``t``); returns what the detector is to see (``x`` less the profile at ``t``), that
    profile value and the new blocks ((8, n), written back by ``after``)."""
    p = cols.params
    x = x.astype(np.float32)
    block = np.ascontiguousarray(cols.history.take(index, axis=1))
    base = cols.get("base")[index]
    first = cols.get("count")[index] == 0
    last_t = cols.last_t[index]
    hours = t * (1.0 / HOUR)  # epoch hours
    # series i's hours begin ``LAG * (i % SPREAD)`` seconds late: a fleet in step closes its
    # hours over several ticks, not all in one (a bin is then a mean up to 5 minutes late)
    lag = (index % SPREAD) * (LAG / HOUR)
    hour = np.floor(hours - lag)
    with np.errstate(invalid="ignore"):
        dt = np.fmax(t - last_t, 0.0)
        moved = np.floor(last_t * (1.0 / HOUR) - lag) != hour  # another hour since the last sample
    dt[first] = 0.0
    moved &= ~first
    if first.any():
        block[:HOURS // 4, first] = _EMPTY4
        block[_SCALE, first] = 1.0
        block[_ACC, first] = 0.0
    if moved.any():  # close the hour just ended into its bin
        rows = np.flatnonzero(moved)
        sub = np.ascontiguousarray(block[:, rows].T)
        _close_hours(sub, hour_of(last_t[rows] - lag[rows] * HOUR), p.season_gain)
        block[:, rows] = sub.T
    now_profile = _now_value(block, hours)
    y = x - now_profile
    deviation = x - base
    deviation[first] = 0.0
    # the hour's mean so far, weighted by time: this sample stands for the dt before it
    weight = (dt / np.maximum((hours - lag - hour) * HOUR, np.maximum(dt, 1e-9))).astype(np.float32)
    weight[moved | first] = 1.0
    block[_ACC] += weight * (deviation - block[_ACC])
    follow = (dt / (dt + p.season_tau)).astype(np.float32)  # 1 - exp(-dt / tau) for dt << tau, cheaper
    new_base = base + follow * (y - base)
    new_base[first] = y[first]
    cols.get("base")[index] = new_base
    return y, now_profile, block


def after(cols: Columns, index: np.ndarray, x: np.ndarray, now_profile: np.ndarray, block: np.ndarray) -> None:
    """After the detector's update: the blocks back in place of the history it wrote, the
    latest value and the expected one in the series' own terms (with the profile)."""
    cols.history[:, index] = block
    cols.get("latest")[index] = x
    cols.get("expected")[index] += now_profile


def profile_at(cols: Columns, index: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The profile's value at times ``t`` (shape (n,) or (n, k) for the n series
    ``index``); 0 for series that are not seasonal or have not seen that hour."""
    index = np.asarray(index)
    t = np.asarray(t, dtype=np.float64)
    t = np.broadcast_to(t, index.shape) if t.ndim < 2 else t
    out = np.zeros(t.shape, dtype=np.float32)
    rows = np.flatnonzero(cols.seasonal[index])
    if not len(rows):
        return out
    values, _ = _profile(_blocks(cols, index[rows]))
    out[rows] = _interpolate(values, t[rows])
    return out


def profile(cols: Columns, index: int) -> list[float | None]:
    """The series' daily profile, hour 0 to 23 UTC (None: an hour never seen)."""
    values, seen = _profile(_blocks(cols, np.array([index])))
    return [float(v) if s else None for v, s in zip(values[0], seen[0])]


def time_to(cols: Columns, index: np.ndarray, level: float, now: float, line: np.ndarray, slope: np.ndarray,
            latest: np.ndarray) -> np.ndarray:
    """Seconds until the forecast with the daily profile reaches ``level`` (the rules of
    ``detector.time_to``; ``line`` is the forecast without the profile at ``now``):
    followed for a day exactly (between the middles of two hours the forecast is a
    line); past that day the line plus the profile's highest (rising) or lowest (falling)
    hour gives the earliest it can be."""
    n = len(index)
    first_middle = (np.floor(now / HOUR - 0.5) + 1.5) * HOUR - now  # the next middle of an hour
    knots = np.concatenate([[0.0], first_middle + HOUR * np.arange(HOURS + 1)])
    at = np.broadcast_to(now + knots, (n, len(knots))).copy()
    slope = slope.astype(np.float64)
    f = line[:, None] + slope[:, None] * knots + profile_at(cols, index, at).astype(np.float64)
    f0, f1 = f[:, :-1], f[:, 1:]
    k0, width = knots[:-1], np.diff(knots)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = k0 + (level - f0) / (f1 - f0) * width
        up = np.where(f0 >= level, k0, np.where(f1 >= level, inside, np.inf)).min(axis=1)
        down = np.where(f0 <= level, k0, np.where(f1 <= level, inside, np.inf)).min(axis=1)
        values, seen = _profile(_blocks(cols, index))
        top = np.where(seen.any(axis=1), np.where(seen, values, -np.inf).max(axis=1), 0.0)
        bottom = np.where(seen.any(axis=1), np.where(seen, values, np.inf).min(axis=1), 0.0)
        later_up = np.where(slope > 0, np.maximum(knots[-1], (level - line - top) / slope), np.nan)
        later_down = np.where(slope < 0, np.maximum(knots[-1], (level - line - bottom) / slope), 0.0)
    above = level > latest
    first = np.where(above, up, down)
    return np.where(np.isfinite(first), first, np.where(above, later_up, later_down))
