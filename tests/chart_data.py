"""Metric hashes written as the FINISH script writes them (metrics.fields_for), for the chart
tests and the screenshots: known counts and durations at known minutes."""

from __future__ import annotations

import math
import random

from backstop import keys, metrics


def minute_fields(job: str, ok: int = 0, retry: int = 0, dead: int = 0,
                  runtime: float = 0.02, wait: float = 0.005) -> dict[str, int]:
    """One minute of a job: its outcomes, every attempt taking runtime and waiting wait."""
    fields: dict[str, int] = {}
    for outcome, count in (("ok", ok), ("retry", retry), ("dead", dead)):
        if count:
            for name, value in metrics.fields_for(job, outcome, runtime, wait, count).items():
                fields[name] = fields.get(name, 0) + value
    return fields


def write(r, queue: str, minute: int, fields: dict[str, int], backlog: int | None = None,
          hourly: bool = True) -> None:
    """Add fields to a queue's minute hash (and its hour's roll-up); note a backlog."""
    pipe = r.pipeline()
    targets = [keys.metrics_minute(queue, minute)]
    if hourly:
        targets.append(keys.metrics_hour(queue, minute // 60))
    for key in targets:
        for name, value in fields.items():
            pipe.hincrby(key, name, value)
    if backlog is not None:
        pipe.hset(keys.metrics_minute(queue, minute), "backlog", backlog)
    pipe.execute()


def seed_two_days(r, queue: str, jobs: tuple[str, ...], now: float, seed: int = 7) -> None:
    """48 hours of a busy day-night queue: a daily wave of jobs, a few failures, slower runs
    at the peak, a quiet half hour (no jobs: a gap), and the backlog every minute."""
    rng = random.Random(seed)
    last = metrics.minute_of(now)
    pipe = r.pipeline(transaction=False)
    for minute in range(last - 48 * 60 + 1, last + 1):
        if last - 200 <= minute < last - 170:
            continue  # a quiet half hour: nothing ran, nothing recorded
        wave = 0.5 + 0.5 * math.sin(minute / 1440 * 2 * math.pi)
        for job in jobs:
            ok = int(rng.randint(2, 6) + 18 * wave)
            failed = rng.random() < 0.15
            groups = [  # most runs are quick, some slower at the peak, a few slow
                minute_fields(job, ok=ok - ok // 4, runtime=0.01 + 0.03 * rng.random(),
                              wait=0.002 + 0.01 * wave * rng.random()),
                minute_fields(job, ok=ok // 4, retry=rng.randint(1, 3) if failed else 0,
                              dead=1 if failed and rng.random() < 0.3 else 0,
                              runtime=0.08 + 0.5 * wave * rng.random(),
                              wait=0.01 + 0.2 * wave * rng.random())]
            if rng.random() < 0.1:
                groups.append(minute_fields(job, ok=1, runtime=1 + 2 * rng.random(), wait=0.5))
            for fields in groups:
                for key in (keys.metrics_minute(queue, minute),
                            keys.metrics_hour(queue, minute // 60)):
                    for name, value in fields.items():
                        pipe.hincrby(key, name, value)
        pipe.hset(keys.metrics_minute(queue, minute), "backlog", int(40 * wave) + rng.randint(0, 5))
    pipe.execute()
