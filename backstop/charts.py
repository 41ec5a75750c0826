"""Chart data for the panel: a queue's metrics over a window, as geometry a template draws.

Decisions:
- Windows of 1, 6, 24 and 48 hours. 1 h: 60 one-minute steps and 6 h: 72 five-minute steps,
  both from the minute hashes; 24 h and 48 h: 24 and 48 hourly steps from the hourly roll-ups
  (``metrics.roll_up_hours``, written by the hourly analytics job for finished hours). Reading
  48 h of minute hashes (2,880 HGETALLs of ~60 fields each) took ~1.2 s parsed job by job
  and still ~0.35 s summed leanly (Redis alone ~0.2 s): too slow for a
  page that refreshes every few seconds; the hourly hashes take ~20 ms (bench/chart_reads.py).
  The current hour has no roll-up yet: it is read from its minutes (at most 60). A finished
  hour without one (the job has not run yet, or no worker runs the schedules) is read from
  its minutes too, in a second round trip: slower, never blank.
- A step's figures are the whole queue's (``metrics.summed``: the fields summed by metric,
  every job name together, then parsed once).
- Counts are shown per minute (a step's count over its minutes): a step without jobs is 0.
  A percentile is None in a step without observations: its line breaks there instead of
  dropping to an invented 0.
- Backlog: the waiting count the minute health check records (``metrics.record_backlog``), the
  last one recorded in each step (a roll-up keeps its hour's last). None where nothing was
  recorded: a gap; all None: "no data yet".
- Geometry: a plot of WIDTH x HEIGHT user units, time running left (old) to right (new) in
  every language, 0 at the bottom and a round top (4 gridlines at a 1-2-2.5-5 step). The
  template stretches the plot to its card and writes the axes' text in CSS pixels, so the
  text keeps its size at 390 px as at 1440 px; time ticks are percentages of the width.
- Time ticks fall on round times of the viewer's zone (every 10 min, 1 h, 4 h or 8 h: six or
  seven labels); a tick at local midnight is marked so the template can name the day.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from . import keys, metrics, stats
from .config import settings
from .connection import client
from .dates import zone as zone_named

WIDTH, HEIGHT = 1000, 100
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
NICE = (1, 2, 2.5, 5)


@dataclass(frozen=True)
class Window:
    """A chart window: its length, the minutes each step merges, and where they are read
    from ("minute" or "hour" hashes); ``tick`` is the minutes between time labels."""

    hours: int
    step: int
    source: str
    tick: int

    @property
    def points(self) -> int:
        return self.hours * 60 // self.step


WINDOWS = {1: Window(1, 1, "minute", 10), 6: Window(6, 5, "minute", 60),
           24: Window(24, 60, "hour", 240), 48: Window(48, 60, "hour", 480)}
DEFAULT_WINDOW = 1


def window(hours: int) -> Window:
    """The window of that many hours; the default (1 h) for any other number."""
    return WINDOWS.get(hours, WINDOWS[DEFAULT_WINDOW])


# ---- reading: one pipeline, queue totals per step ----
def steps(pipe, queue: str, win: Window, now: float) -> Callable[[list], list[dict]]:
    """Queue the reads of a queue's steps over a window; the returned function turns their
    results into [{"t": step start, "end": step end (unix s), "figures": Figures,
    "backlog": waiting jobs or None}], oldest first. The last step holds now."""
    if win.source == "hour":
        return _hour_steps(pipe, queue, win, now)
    return _minute_steps(pipe, queue, win, now)


def _minute_steps(pipe, queue: str, win: Window, now: float):
    last = metrics.minute_of(now)
    first = last - last % win.step - (win.points - 1) * win.step
    for minute in range(first, last + 1):
        pipe.hgetall(keys.metrics_minute(queue, minute))

    def finish(results: list) -> list[dict]:
        out = []
        for k in range(win.points):
            chunk = results[k * win.step:(k + 1) * win.step]
            figures, backlog = metrics.summed(chunk)
            start = (first + k * win.step) * 60
            out.append({"t": start, "end": start + win.step * 60, "figures": figures,
                        "backlog": backlog})
        return out

    return finish


def _hour_steps(pipe, queue: str, win: Window, now: float):
    last_hour, last_minute = int(now // 3600), metrics.minute_of(now)
    hours = range(last_hour - win.points + 1, last_hour + 1)
    for hour in hours[:-1]:
        pipe.hgetall(keys.metrics_hour(queue, hour))
    for minute in range(last_hour * 60, last_minute + 1):
        pipe.hgetall(keys.metrics_minute(queue, minute))

    def finish(results: list) -> list[dict]:
        rolled, current = results[:win.points - 1], results[win.points - 1:]
        finished = list(zip(hours[:-1], rolled, strict=True))
        kept = last_hour - settings().float("metrics_minute_hours")  # older minutes expired
        missing = [hour for hour, raw in finished if not raw and hour >= kept]
        by_hour = {**{hour: [raw] for hour, raw in finished}, **_minutes_of(queue, missing),
                   last_hour: current}
        out = []
        for hour in hours:
            figures, backlog = metrics.summed(by_hour[hour])
            out.append({"t": hour * 3600, "end": (hour + 1) * 3600, "figures": figures,
                        "backlog": backlog})
        return out

    return finish


def _minutes_of(queue: str, hours: list[int]) -> dict[int, list[dict]]:
    """The minute hashes of finished hours that have no roll-up yet (one round trip)."""
    if not hours:
        return {}
    pipe = client().pipeline(transaction=False)
    for hour in hours:
        for minute in range(hour * 60, hour * 60 + 60):
            pipe.hgetall(keys.metrics_minute(queue, minute))
    results = pipe.execute()
    return {hour: results[k * 60:(k + 1) * 60] for k, hour in enumerate(hours)}


# ---- the charts of a queue page ----
def queue_charts(queue: str, hours: int = DEFAULT_WINDOW, zone: str = "UTC",
                 now: float | None = None) -> dict:
    """The four charts of a queue page over the window of ``hours`` (one Redis round trip;
    two when a finished hour has no roll-up yet): throughput (processed and failed per
    minute, ``bar_chart()``), runtime (p50, p95, p99), wait (p95) and backlog
    (``line_chart()``); with the window, its start and end.

    zone: the viewer's IANA zone (time labels fall on its round times). Without ``now`` the
    reads are shared for STATS_CACHE_SECONDS by every page of this process (a busy queue's
    page is pushed several times a second)."""
    win = window(hours)

    def read() -> list[dict]:
        at = time.time() if now is None else now
        return metrics.read(client(), lambda pipe: steps(pipe, queue, win, at))[0]

    points = read() if now is not None else stats.cached(f"chart:{queue}:{win.hours}", read)
    return charts_of(points, win, zone)


def charts_of(points: list[dict], win: Window, zone: str = "UTC") -> dict:
    """The four charts from steps as ``steps()`` gives them."""
    axis = TimeAxis(points[0]["t"], points[-1]["end"], win.tick, zone)
    minutes = win.step
    processed = [p["figures"].processed / minutes for p in points]
    failed = [p["figures"].failed / minutes for p in points]
    runtime = {name: [_ms(p["figures"].runtime.quantile(q)) for p in points]
               for name, q in QUANTILES}
    wait = {"p95": [_ms(p["figures"].wait.quantile(0.95)) for p in points]}
    backlog = {"backlog": [p["backlog"] for p in points]}
    return {"hours": win.hours, "step_minutes": minutes, "from": axis.start, "to": axis.end,
            "throughput": bar_chart(points, processed, failed, axis),
            "runtime": line_chart(points, runtime, axis, duration=True),
            "wait": line_chart(points, wait, axis, duration=True),
            "backlog": line_chart(points, backlog, axis)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class TimeAxis:
    """Maps unix times between start and end to x (0..WIDTH), and lists the ticks."""

    def __init__(self, start: float, end: float, tick_minutes: int, zone: str):
        self.start, self.end = start, end
        self.ticks = time_ticks(start, end, tick_minutes, zone)

    def x(self, t: float) -> float:
        return round((t - self.start) / (self.end - self.start) * WIDTH, 2)


def time_ticks(start: float, end: float, every_minutes: int, zone: str) -> list[dict]:
    """Round local times between start and end: [{"t", "pct" (0-100 of the width), "anchor"
    (SVG text-anchor keeping the label inside the chart), "day" (local midnight), "minor"
    (every other one, which a phone leaves out; midnight never is)}]."""
    tz = zone_named(zone)
    offset = datetime.fromtimestamp(start, UTC).astimezone(tz).utcoffset()
    shift = offset.total_seconds() if offset else 0.0
    every = every_minutes * 60
    t = math.ceil((start + shift) / every) * every - shift
    out = []
    while t <= end:
        local = datetime.fromtimestamp(t, UTC).astimezone(tz)
        of_day = local.hour * 60 + local.minute
        if local.second == 0 and of_day % every_minutes == 0:
            pct = round((t - start) / (end - start) * 100, 2)
            anchor = "start" if pct < 4 else "end" if pct > 96 else "middle"
            out.append({"t": t, "pct": pct, "anchor": anchor, "day": of_day == 0,
                        "minor": of_day % (2 * every_minutes) != 0})
        t += every
    return out


def nice_scale(peak: float, least: float = 1.0) -> tuple[float, float]:
    """(step, top): four equal steps of a round size (1, 2, 2.5 or 5 times a power of ten,
    at least ``least``) whose top reaches peak."""
    wanted = max(peak / 4, least)
    power = 10 ** math.floor(math.log10(wanted))
    step = next(n * power for n in (*NICE, 10) if n * power >= wanted * (1 - 1e-9))
    return step, step * 4


def y_ticks(step: float) -> list[dict]:
    """The gridlines' values, top first, with their y."""
    return [{"value": _tidy(step * k), "y": HEIGHT - k * HEIGHT / 4} for k in (4, 3, 2, 1, 0)]


def _tidy(value: float) -> float | int:
    value = round(value, 6)
    return int(value) if float(value).is_integer() else value


def _y(value: float, top: float) -> float:
    return round(HEIGHT - value / top * HEIGHT, 2)


def columns(points: list[dict], axis: TimeAxis) -> list[dict]:
    """Each step's slot: x, width and its time span (a hover target that names the step)."""
    return [{"x": axis.x(p["t"]), "w": round(axis.x(p["end"]) - axis.x(p["t"]), 2),
             "t": p["t"], "end": p["end"]} for p in points]


def bar_chart(points: list[dict], processed: list[float], failed: list[float],
              axis: TimeAxis) -> dict:
    """Processed per minute as bars, the failed part of each at its foot."""
    step, top = nice_scale(max(processed, default=0))
    slots = columns(points, axis)
    bars = []
    for slot, p, done, bad in zip(slots, points, processed, failed, strict=True):
        pad = slot["w"] * 0.15
        bars.append({**slot, "bar_x": round(slot["x"] + pad, 2),
                     "bar_w": round(slot["w"] - 2 * pad, 2),
                     "y": _y(done, top), "h": round(done / top * HEIGHT, 2),
                     "failed_y": _y(bad, top), "failed_h": round(bad / top * HEIGHT, 2),
                     "processed": p["figures"].processed, "failed": p["figures"].failed,
                     "per_minute": round(done, 2)})
    total = sum(p["figures"].processed for p in points)
    return {"kind": "bars", "unit": "", "ticks_y": y_ticks(step), "ticks_x": axis.ticks,
            "bars": bars, "empty": False, "total": total,
            "failed": sum(p["figures"].failed for p in points)}


def line_chart(points: list[dict], series: dict[str, list[float | None]], axis: TimeAxis,
               duration: bool = False) -> dict:
    """One line per named series, broken where a value is None; durations (ms) switch to
    seconds when the top is 2 s or more. empty: no value at all."""
    values = [v for line in series.values() for v in line if v is not None]
    peak = max(values, default=0)
    unit, scale = ("ms", 1.0) if duration else ("", 1.0)
    if duration and peak >= 2000:
        unit, scale = "s", 1000.0
    step, top = nice_scale(peak / scale, least=0.001 if duration else 1)
    slots = columns(points, axis)
    centres = [round(s["x"] + s["w"] / 2, 2) for s in slots]
    lines = [{"name": name, "segments": segments(centres, line, top * scale)}
             for name, line in series.items()]
    for slot, k in zip(slots, range(len(points)), strict=True):
        slot["values"] = {name: line[k] for name, line in series.items()}
    return {"kind": "lines", "unit": unit, "ticks_y": y_ticks(step), "ticks_x": axis.ticks,
            "lines": lines, "columns": slots, "empty": not values,
            "latest": {name: next((v for v in reversed(line) if v is not None), None)
                       for name, line in series.items()}}


def segments(xs: list[float], values: list[float | None], top: float) -> list[str]:
    """SVG polyline points of the runs of values between gaps (None). A lone value is a
    zero-length segment, which a round line cap draws as a dot."""
    runs: list[list[str]] = [[]]
    for x, value in zip(xs, values, strict=True):
        if value is None:
            runs.append([])
        else:
            runs[-1].append(f"{x},{_y(min(value, top), top)}")
    return [" ".join(run * 2 if len(run) == 1 else run) for run in runs if run]


# ---- the overview's sparklines ----
SPARK_MINUTES = 60


def sparklines(queues: Iterable[str], now: float | None = None) -> dict[str, dict]:
    """Per queue, the last hour's processed and failed per minute as small bars (one round
    trip): {queue: {"bars": [...], "top", "processed", "failed"}}."""
    now = time.time() if now is None else now
    queues = list(queues)
    win = Window(1, 1, "minute", 10)
    readers = [lambda pipe, q=q: steps(pipe, q, win, now) for q in queues]
    results = metrics.read(client(), *readers)
    return {q: spark(points) for q, points in zip(queues, results, strict=True)}


def spark(points: list[dict]) -> dict:
    """Bars of processed per step (failed at their foot) on a scale of their own peak."""
    counts = [(p["figures"].processed, p["figures"].failed) for p in points]
    top = max([done for done, _ in counts] + [1])
    width = WIDTH / len(points)
    bars = [{"x": round(k * width + width * 0.1, 2), "w": round(width * 0.8, 2),
             "y": _y(done, top), "h": round(done / top * HEIGHT, 2),
             "failed_y": _y(bad, top), "failed_h": round(bad / top * HEIGHT, 2)}
            for k, (done, bad) in enumerate(counts)]
    return {"bars": bars, "top": top, "processed": sum(d for d, _ in counts),
            "failed": sum(b for _, b in counts), "from": points[0]["t"], "to": points[-1]["end"]}
