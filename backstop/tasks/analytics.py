"""Analytics jobs: hourly snapshots and daily aggregates of every queue's numbers.

An hourly snapshot (``keys.metrics_hourly("YYYYMMDDHH")``, kept 14 days) holds per queue:

- ``<queue>:state:<state>``: jobs in the state when the snapshot was taken (a gauge);
- ``<queue>:total:<counter>``: the queue's cumulative counter (``keys.queue_stats``);
- ``<queue>:delta:<counter>``: its increase since the previous hour's snapshot (present only
  when that snapshot exists; a counter that went down was reset and counts from zero);

and ``taken_at`` (unix seconds). A daily aggregate (``keys.metrics_daily("YYYYMMDD")``, kept
400 days) folds the day's hourly snapshots: state gauges and deltas are summed (the gauge's
``:max`` is kept too, and ``hours`` counts the snapshots, so average = sum / hours);
cumulative totals keep their latest (largest) value, since summing them means nothing.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import redis

from .. import keys, metrics
from ..contracts import (
    QUEUES,
    AnalyticsAggregateDaily,
    AnalyticsRecomputeRange,
    AnalyticsSnapshotHourly,
)
from ..jobs import JobContext, handler
from ..registry import STATES

COUNTERS = ("enqueued", "completed", "failed", "dead", "retried", "requeued")
HOURLY_TTL = 14 * 86_400
DAILY_TTL = 400 * 86_400


def utc_hour(moment: datetime | None = None) -> datetime:
    """``moment`` (naive = UTC; default now) in UTC, truncated to the hour."""
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_label(moment: datetime) -> str:
    """The ``YYYYMMDDHH`` label of the UTC hour holding ``moment``."""
    return utc_hour(moment).strftime("%Y%m%d%H")


def _read_numbers(r: redis.Redis, previous_label: str) -> tuple[list, dict]:
    pipe = r.pipeline(transaction=False)
    for queue in QUEUES:
        for state in STATES:
            pipe.zcard(keys.state_index(queue, state))
        pipe.hgetall(keys.queue_stats(queue))
    pipe.hgetall(keys.metrics_hourly(previous_label))
    values = pipe.execute()
    return values[:-1], values[-1]


def _as_int(value) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def _queue_fields(queue: str, counts: list[int], stats: dict, previous: dict) -> dict:
    fields = {f"{queue}:state:{state}": n for state, n in zip(STATES, counts, strict=True)}
    for counter in COUNTERS:
        total = _as_int(stats.get(counter))
        fields[f"{queue}:total:{counter}"] = total
        if previous:
            before = _as_int(previous.get(f"{queue}:total:{counter}"))
            fields[f"{queue}:delta:{counter}"] = total - before if total >= before else total
    return fields


def snapshot_fields(values: list, previous: dict) -> dict:
    """Snapshot fields from the pipelined reads (per queue: the ZCARDs, then the stats hash)."""
    fields: dict = {}
    step = len(STATES) + 1
    for i, queue in enumerate(QUEUES):
        chunk = values[i * step:(i + 1) * step]
        fields.update(_queue_fields(queue, chunk[:-1], chunk[-1], previous))
    return fields


def take_snapshot(r: redis.Redis, hour: datetime | None = None) -> dict:
    """Write the snapshot of ``hour`` (default: the current UTC hour); return its fields."""
    start = utc_hour(hour)
    label = hour_label(start)
    values, previous = _read_numbers(r, hour_label(start - timedelta(hours=1)))
    fields = {**snapshot_fields(values, previous), "taken_at": round(time.time(), 3)}
    key = keys.metrics_hourly(label)
    pipe = r.pipeline()
    pipe.delete(key)
    pipe.hset(key, mapping=fields)
    pipe.expire(key, HOURLY_TTL)
    pipe.execute()
    return {"hour": label, **fields}


@handler("analytics.snapshot.hourly")
def snapshot_hourly(payload: AnalyticsSnapshotHourly, ctx: JobContext) -> dict:
    """Snapshot every queue's counts and counters for the hour (default: this UTC hour), and
    roll the finished hours' minute metrics up into hourly ones."""
    fields = take_snapshot(ctx.redis, payload.hour)
    rolled = metrics.roll_up_hours(ctx.redis)
    return {"hour": fields["hour"], "queues": len(QUEUES), "fields": len(fields) - 1,
            "metrics_hours_rolled_up": rolled}


def _fold(out: dict, name: str, value: int) -> None:
    if ":total:" in name:
        out[name] = max(out.get(name, 0), value)
        return
    out[name] = out.get(name, 0) + value
    if ":state:" in name:
        out[f"{name}:max"] = max(out.get(f"{name}:max", 0), value)


def combine(snapshots: list[dict]) -> dict:
    """Fold hourly snapshots into daily fields (see the module docstring)."""
    out: dict = {}
    for snapshot in snapshots:
        for name, value in snapshot.items():
            if name != "taken_at":
                _fold(out, name, _as_int(value))
    return {**out, "hours": len(snapshots)}


def aggregate_day(r: redis.Redis, day: date) -> dict:
    """Rebuild the daily aggregate of ``day`` from its hourly snapshots.

    A day without snapshots loses any aggregate it had. Returns {"day", "hours"}.
    """
    label = day.strftime("%Y%m%d")
    pipe = r.pipeline(transaction=False)
    for h in range(24):
        pipe.hgetall(keys.metrics_hourly(f"{label}{h:02d}"))
    snapshots = [s for s in pipe.execute() if s]
    key = keys.metrics_daily(label)
    pipe = r.pipeline()
    pipe.delete(key)
    if snapshots:
        pipe.hset(key, mapping=combine(snapshots))
        pipe.expire(key, DAILY_TTL)
    pipe.execute()
    return {"day": label, "hours": len(snapshots)}


@handler("analytics.aggregate.daily")
def aggregate_daily(payload: AnalyticsAggregateDaily, ctx: JobContext) -> dict:
    """Aggregate a day's 24 hourly snapshots (default: yesterday UTC)."""
    day = payload.day or (datetime.now(UTC) - timedelta(days=1)).date()
    return aggregate_day(ctx.redis, day)


def days_touched(start: datetime, end: datetime) -> list[date]:
    """Every UTC day that [start, end) overlaps."""
    first = utc_hour(start).date()
    last = (utc_hour(end - timedelta(microseconds=1))).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@handler("analytics.recompute.range")
def recompute_range(payload: AnalyticsRecomputeRange, ctx: JobContext) -> dict:
    """Recompute the daily aggregate of every day [start, end) touches."""
    days = days_touched(payload.start, payload.end)
    results = []
    for i, day in enumerate(days):
        results.append(aggregate_day(ctx.redis, day))
        ctx.progress(100 * (i + 1) // len(days), f"aggregated {day.isoformat()}")
    return {"days": results}
