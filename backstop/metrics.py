"""Job metrics over time: counts by outcome and runtime / wait histograms, per queue and job.

The FINISH script (scripts.METRICS) writes them as each attempt ends, in the step that
acknowledges the job: O(1) per job, no extra round trip. This module reads them back:

- ``Histogram``: fixed, log-spaced buckets (``BOUNDS``, Prometheus-style ``le`` bounds in
  seconds, plus one above all). Any set of minutes merges by adding bucket counts, and
  quantiles are read from the merged counts by linear interpolation inside the bucket that
  holds them (Prometheus' ``histogram_quantile``), so a percentile is never off by more than
  the width of its bucket.
- ``Figures``: one job's (or one queue's) outcome counts and its two histograms.
- ``recent`` (the last N minutes), ``series`` (points for a chart), ``totals`` (since the
  start: the counters /metrics exports). Each adds its reads to a pipeline the caller runs,
  so a page reads everything it shows in one round trip.

Minute hashes live ``METRICS_MINUTE_HOURS`` (48 h), hourly roll-ups ``METRICS_HOURLY_DAYS``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import keys
from .config import settings
from .contracts import QUEUES

# Upper bounds of the histogram buckets, in seconds: 5 ms ... 5 min (then one above all).
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
OUTCOMES = ("ok", "retry", "dead")


def minute_ttl() -> int:
    return int(settings().float("metrics_minute_hours") * 3600) + 120


def hour_ttl() -> int:
    return int(settings().float("metrics_hourly_days") * 86400) + 7200


def retention_args() -> list[str]:
    """The FINISH script's metrics arguments: key prefix, minute TTL (seconds)."""
    return [keys.metrics_prefix(), str(minute_ttl())]


@dataclass
class Histogram:
    """Counts per bucket of BOUNDS (the last one: above every bound) and the sum, in s."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    total: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 < q < 1) in seconds, None without observations.

        Interpolated linearly inside the bucket that holds it; in the bucket above every
        bound it is the highest bound (as Prometheus does).
        """
        n = self.count
        if not n:
            return None
        rank, seen = q * n, 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                if i == len(BOUNDS):
                    return float(BOUNDS[-1])
                low = BOUNDS[i - 1] if i else 0.0
                return low + (BOUNDS[i] - low) * (rank - seen) / c
            seen += c
        return float(BOUNDS[-1])

    def percentiles(self) -> dict[str, float | None]:
        """p50, p95, p99 and the mean, in milliseconds (None without observations)."""
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)
        return {"p50": ms(self.quantile(0.5)), "p95": ms(self.quantile(0.95)),
                "p99": ms(self.quantile(0.99)), "mean": ms(self.mean()), "count": self.count}

    def cumulative(self) -> list[int]:
        """Counts at or below each bound, then the total (Prometheus ``_bucket``)."""
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


@dataclass
class Figures:
    """Outcome counts and histograms of a set of attempts."""

    ok: int = 0
    retry: int = 0
    dead: int = 0
    runtime: Histogram = field(default_factory=Histogram)
    wait: Histogram = field(default_factory=Histogram)

    @property
    def processed(self) -> int:
        """Attempts that ran to an end."""
        return self.ok + self.retry + self.dead

    @property
    def failed(self) -> int:
        """Failed attempts: retried or dead."""
        return self.retry + self.dead

    def error_rate(self) -> float | None:
        return self.failed / self.processed if self.processed else None

    def add(self, other: Figures) -> None:
        self.ok += other.ok
        self.retry += other.retry
        self.dead += other.dead
        self.runtime.add(other.runtime)
        self.wait.add(other.wait)

    def summary(self) -> dict:
        """Plain numbers for a page or the API."""
        rate = self.error_rate()
        return {"processed": self.processed, "succeeded": self.ok, "failed": self.failed,
                "retried": self.retry, "dead": self.dead,
                "error_rate": None if rate is None else round(rate, 4),
                "runtime_ms": self.runtime.percentiles(), "wait_ms": self.wait.percentiles()}


def _put(figures: Figures, pieces: list[str], value: int) -> None:
    """Count one field's value: an outcome|runtime bucket|wait bucket combination, or a sum."""
    if len(pieces) == 3:
        outcome, runtime, wait = pieces
        if outcome not in OUTCOMES or not (runtime.isdigit() and wait.isdigit()):
            return
        setattr(figures, outcome, getattr(figures, outcome) + value)
        figures.runtime.counts[_bucket(runtime)] += value
        figures.wait.counts[_bucket(wait)] += value
    elif pieces == ["rs"]:
        figures.runtime.total += value / 1e6
    elif pieces == ["ws"]:
        figures.wait.total += value / 1e6


def _bucket(number: str) -> int:
    """A Lua bucket number (from 1) as an index of Histogram.counts (clamped)."""
    return min(max(int(number) - 1, 0), len(BOUNDS))


def parse(raw: dict, parts: int = 1) -> dict[tuple[str, ...], Figures]:
    """Figures by the first ``parts`` pieces of each field name (job, or queue and job);
    fields of another shape ('n', 'backlog') are left out."""
    out: dict[tuple[str, ...], Figures] = {}
    for name, value in raw.items():
        pieces = _text(name).split("|")
        if len(pieces) not in (parts + 1, parts + 3):
            continue
        key = tuple(pieces[:parts])
        figures = out.get(key)
        if figures is None:
            figures = out[key] = Figures()
        _put(figures, pieces[parts:], int(value))
    return out


def bucket_number(seconds: float) -> int:
    """The bucket of a duration as the FINISH script numbers it (from 1; #BOUNDS+1 = above
    every bound)."""
    return next((i for i, bound in enumerate(BOUNDS) if seconds <= bound), len(BOUNDS)) + 1


def fields_for(job: str, outcome: str, runtime: float, wait: float, count: int = 1,
               queue: str | None = None) -> dict[str, int]:
    """The field increments ``count`` attempts make, as the FINISH script writes them: in a
    queue's minute (or hour) hash, or with ``queue`` in the total hash. For seeding tests and
    benches with known numbers."""
    head = f"{queue}|{job}|" if queue else f"{job}|"
    combo = f"{outcome}|{bucket_number(runtime)}|{bucket_number(wait)}"
    return {f"{head}{combo}": count, f"{head}rs": round(runtime * 1e6) * count,
            f"{head}ws": round(wait * 1e6) * count}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def merged(parts: Iterable[dict[tuple[str, ...], Figures]]) -> dict[tuple[str, ...], Figures]:
    """Add several parsed hashes together, key by key."""
    out: dict[tuple[str, ...], Figures] = {}
    for part in parts:
        for key, figures in part.items():
            out.setdefault(key, Figures()).add(figures)
    return out


def total_of(by_key: dict[tuple[str, ...], Figures]) -> Figures:
    """Everything in a parsed mapping added together (a whole queue's figures)."""
    out = Figures()
    for figures in by_key.values():
        out.add(figures)
    return out


def minute_of(moment: float) -> int:
    return int(moment // 60)


# ---- reads, added to a caller's pipeline ----
Finish = Callable[[list], object]


def recent(pipe, queues: Iterable[str], minutes: int = 5,
           now: float | None = None) -> Callable[[list], dict]:
    """Queue the reads of the last ``minutes`` minutes (the current one included) of each
    queue; the returned function turns the pipeline's results for them into
    {queue: {"jobs": {job: Figures}, "all": Figures, "per_minute": processed per minute}}.

    The current minute is partial: the rate divides by the time the window really covers.
    """
    now = time.time() if now is None else now
    last = minute_of(now)
    queues = list(queues)
    for queue in queues:
        for minute in range(last - minutes + 1, last + 1):
            pipe.hgetall(keys.metrics_minute(queue, minute))
    covered = (minutes - 1) + (now % 60) / 60

    def finish(results: list) -> dict:
        out = {}
        for i, queue in enumerate(queues):
            jobs = merged(parse(raw) for raw in results[i * minutes:(i + 1) * minutes])
            whole = total_of(jobs)
            out[queue] = {"jobs": {k[0]: v for k, v in jobs.items()}, "all": whole,
                          "per_minute": round(whole.processed / covered, 2) if covered else 0}
        return out

    return finish


def series(pipe, queue: str, window_minutes: int, points: int = 60,
           now: float | None = None) -> Callable[[list], list[dict]]:
    """Queue the reads of a chart of one queue over the last ``window_minutes``, in
    ``points`` equal steps (each merges its minutes); the returned function gives
    [{"t": step start (unix s), "figures": Figures, "backlog": waiting jobs or None}].

    A step's figures are the whole queue's (``summed``). backlog: the queue's waiting count
    the minute health check recorded (field 'backlog' of a minute hash), the last one
    recorded in the step.
    """
    now = time.time() if now is None else now
    step = max(1, math.ceil(window_minutes / points))
    last = minute_of(now)
    first = last - step * points + 1
    for minute in range(first, last + 1):
        pipe.hgetall(keys.metrics_minute(queue, minute))

    def finish(results: list) -> list[dict]:
        out = []
        for k in range(points):
            figures, backlog = summed(results[k * step:(k + 1) * step])
            out.append({"t": (first + k * step) * 60, "figures": figures, "backlog": backlog})
        return out

    return finish


def summed(hashes: Iterable[dict]) -> tuple[Figures, int | None]:
    """Metric hashes added together over every job name: their Figures, and the last backlog
    any of them recorded (None if none did). The fields are summed by metric first and parsed
    once, several times faster than parsing job by job, which a whole queue does not need."""
    sums: dict[str, int] = {}
    backlog = None
    for raw in hashes:
        for name, value in raw.items():
            name = _text(name)
            if name == "backlog":
                backlog = int(value)
                continue
            metric = name.partition("|")[2]  # job names hold no "|"
            sums[metric] = sums.get(metric, 0) + int(value)
    parsed = parse({f"all|{metric}": n for metric, n in sums.items()})
    return parsed.get(("all",), Figures()), backlog


def _texts(raw: dict) -> dict:
    return {_text(k): _text(v) for k, v in raw.items()}


def totals(pipe) -> Callable[[list], dict[tuple[str, str], Figures]]:
    """Queue the read of every number since the start; the function gives
    {(queue, job): Figures}."""
    pipe.hgetall(keys.metrics_total())

    def finish(results: list) -> dict[tuple[str, str], Figures]:
        return {(k[0], k[1]): v for k, v in parse(results[0], parts=2).items()}

    return finish


def record_backlog(pipe, queue: str, waiting: int, now: float | None = None) -> None:
    """Note a queue's waiting count in the current minute's hash (the chart's backlog line);
    the minute health check calls this for every queue."""
    key = keys.metrics_minute(queue, minute_of(time.time() if now is None else now))
    pipe.hset(key, "backlog", waiting)
    pipe.expire(key, minute_ttl())


def read(r, *readers: Callable[[object], Finish]) -> list:
    """Run several readers in one pipeline (one round trip) and return their results."""
    pipe = r.pipeline(transaction=False)
    finishers, spans = [], []
    for reader in readers:
        start = len(pipe)
        finishers.append(reader(pipe))
        spans.append((start, len(pipe)))
    results = pipe.execute()
    return [f(results[a:b]) for f, (a, b) in zip(finishers, spans, strict=True)]


# ---- hourly roll-ups (the hourly analytics job) ----
def roll_up_hours(r, now: float | None = None) -> int:
    """Write the hourly hash of every finished hour whose minutes are still kept and that has
    none yet (so an hour missed while no worker ran is made up later); return how many.
    Runs in the hourly analytics job: O(queues x hours) EXISTS, then 60 HGETALL per new hour.

    Counts add up; 'backlog' (a gauge) keeps the hour's last reading.
    """
    now = time.time() if now is None else now
    current = int(now // 3600)
    oldest = current - int(settings().float("metrics_minute_hours"))
    hours = [(q, h) for q in QUEUES for h in range(oldest, current)]
    pipe = r.pipeline(transaction=False)
    for queue, hour in hours:
        pipe.exists(keys.metrics_hour(queue, hour))
    missing = [qh for qh, there in zip(hours, pipe.execute(), strict=True) if not there]
    return sum(_roll_up(r, queue, hour) for queue, hour in missing)


def _roll_up(r, queue: str, hour: int) -> int:
    pipe = r.pipeline(transaction=False)
    for minute in range(hour * 60, hour * 60 + 60):
        pipe.hgetall(keys.metrics_minute(queue, minute))
    fields: dict[str, int] = {}
    for raw in map(_texts, pipe.execute()):
        for name, value in raw.items():
            fields[name] = int(value) + (0 if name == "backlog" else fields.get(name, 0))
    key = keys.metrics_hour(queue, hour)
    pipe = r.pipeline()
    pipe.hset(key, mapping=fields or {"n": 0})  # an idle hour is rolled up too, once
    pipe.expire(key, hour_ttl())
    pipe.execute()
    return 1
