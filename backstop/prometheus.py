"""Backstop's numbers in the Prometheus text format, read from Redis at scrape time.

A custom collector, not instrumentation: every number comes from Redis when Prometheus
scrapes, so any web process answers the same (no per-process counters to disagree), and
the panel and /metrics show one truth:

- the counters and histograms since the start from ``metrics.totals`` (the never-trimmed
  hash the FINISH script writes): ``backstop_jobs_finished_total{queue,job,outcome}``,
  ``backstop_job_runtime_seconds`` and ``backstop_job_wait_seconds`` (``le`` = metrics.BOUNDS);
- the gauges from ``health.assess()`` (``stats.monitor()``'s snapshot, judged; cached
  STATS_CACHE_SECONDS and shared with GET /health/queues): jobs by queue and state, oldest
  waiting age, paused, consumers, stuck jobs, workers alive, DLQ records, and the health
  scores and statuses of each queue, Redis and the whole;
- the state of Backstop's own alert rules (``alerts.rules()``, ``alerts.firing()``):
  ``backstop_alert_firing{rule,queue}``, 1 while an incident is open, 0 for every other queue
  an enabled rule watches.

Every job name the contracts know is exported from zero before it first runs, so the first
failure of a job is an increase Prometheus sees, not the birth of a series.

Outcomes are the FINISH script's: ok, retry (a failed attempt that will be retried), dead (a
failed last attempt). Backstop's counters live in Redis and never reset with a process.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from . import alerts, health, metrics, modes, outbox
from .connection import client
from .contracts import JOBS, QUEUES
from .metrics import BOUNDS, OUTCOMES, Figures, Histogram
from .registry import STATES

__all__ = ["CONTENT_TYPE_LATEST", "Snapshot", "exposition", "families", "snapshot"]
LE = [floatToGoString(b) for b in BOUNDS] + ["+Inf"]
STATUSES = tuple(health.STATUS_OF.values())  # healthy, degraded, unhealthy
SEVERITIES = tuple(s for s in health.RANK if s)  # warning, critical


@dataclass
class Snapshot:
    """What one scrape exports: health.assess()'s dict, metrics.totals' figures, and the
    alert rules with the incidents firing now."""

    assessment: dict
    totals: dict[tuple[str, str], Figures] = field(default_factory=dict)
    rules: list[alerts.AlertRule] = field(default_factory=list)
    firing: list[dict] = field(default_factory=list)
    outboxes: dict[str, int] = field(default_factory=dict)  # host -> jobs in its outbox
    mode: str = modes.DEFAULT


def snapshot() -> Snapshot:
    """Read everything a scrape exports: the health assessment (cached a few seconds, shared
    with GET /health/queues), the totals since the start (one HGETALL), the alert rules and
    the incidents firing.

    Raises redis.RedisError when Redis cannot answer (assess() itself reports an unreachable
    Redis as a finding: here it is an error, so a scrape never exports an empty picture).
    """
    totals = metrics.read(client(), metrics.totals)[0]
    assessment = health.assess()
    if not assessment["redis"].get("reachable", True):
        raise redis.ConnectionError(assessment["redis"].get("error", "Redis did not answer"))
    return Snapshot(assessment=assessment, totals=totals, rules=alerts.rules(),
                    firing=alerts.firing(), outboxes=outbox_depths(), mode=modes.read()["mode"])


def outbox_depths() -> dict[str, int]:
    """Each host's outbox depth as it last reported it; this host's as it is now."""
    depths = {host: int(info.get("depth", 0)) for host, info in outbox.host_depths().items()}
    depths[socket.gethostname()] = outbox.depth()
    return depths


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot, in a stable order."""
    yield from queue_gauges(snap.assessment)
    yield from health_gauges(snap.assessment)
    yield alert_gauge(snap.rules, snap.firing)
    yield from finished(snap.totals)
    yield from outage_gauges(snap)


def outage_gauges(snap: Snapshot) -> Iterator[Metric]:
    """The kill switch's mode and each host's outbox depth."""
    mode = GaugeMetricFamily("backstop_mode", "1 for the mode every process obeys (async_queue "
                             "or sync_direct), 0 for the other.", labels=["mode"])
    for name in modes.MODES:
        mode.add_metric([name], int(name == snap.mode))
    yield mode
    depth = GaugeMetricFamily("backstop_outbox_jobs", "Jobs kept in a host's outbox while "
                              "Redis could not take them, not yet drained.", labels=["host"])
    for host, jobs in sorted(snap.outboxes.items()):
        depth.add_metric([host], jobs)
    yield depth


# ---- gauges: the panel's numbers for this moment ----
def queue_gauges(assessment: dict) -> Iterator[Metric]:
    """Jobs by state, oldest waiting age, paused, consumers, stuck jobs and DLQ records per
    queue, and the worker processes alive."""
    queues = assessment["queues"]
    jobs = GaugeMetricFamily("backstop_jobs", "Jobs in Backstop's registry, by queue and state.",
                             labels=["queue", "state"])
    for queue, row in queues.items():
        for state in STATES:
            jobs.add_metric([queue, state], row["counts"].get(state, 0))
    yield jobs
    yield per_queue(queues, "backstop_queue_oldest_waiting_age_seconds",
                    "Age of the queue's oldest waiting job (0 when none waits).",
                    lambda row: row["oldest_waiting_age"] or 0)
    yield per_queue(queues, "backstop_queue_paused", "1 while the queue is paused.",
                    lambda row: int(row["paused"]))
    yield per_queue(queues, "backstop_queue_workers",
                    "Live worker processes consuming the queue.", lambda row: row["workers"])
    yield per_queue(queues, "backstop_queue_threads",
                    "Threads of live worker processes consuming the queue.",
                    lambda row: row["threads"])
    yield per_queue(queues, "backstop_queue_stuck_jobs",
                    "Jobs active for longer than the queue's timeout and a grace.",
                    lambda row: row["stuck"])
    yield per_queue(queues, "backstop_dlq_records",
                    "Dead-letter records whose last attempt ran on the queue.",
                    lambda row: row["dead_letters"])
    yield GaugeMetricFamily("backstop_workers_alive",
                            "Worker processes whose heartbeat is current.",
                            value=len(assessment["workers"]))


# ---- health: the scores and statuses GET /health/queues answers ----
def health_gauges(assessment: dict) -> Iterator[Metric]:
    """Score (0-100) and status (one sample per status, 1 for the current one) overall, per
    queue and of Redis, and the issues found by severity."""
    yield GaugeMetricFamily("backstop_health_score", "Backstop's health score (0-100).",
                            value=assessment["score"])
    overall = GaugeMetricFamily("backstop_health_status",
                                "1 for Backstop's health status now, 0 for the others.",
                                labels=["status"])
    for status in STATUSES:
        overall.add_metric([status], int(assessment["status"] == status))
    yield overall
    queues = assessment["queues"]
    yield per_queue(queues, "backstop_queue_health_score", "The queue's health score (0-100).",
                    lambda row: row["score"])
    by_queue = GaugeMetricFamily("backstop_queue_health_status",
                                 "1 for the queue's health status now, 0 for the others.",
                                 labels=["queue", "status"])
    for queue, row in queues.items():
        for status in STATUSES:
            by_queue.add_metric([queue, status], int(row["status"] == status))
    yield by_queue
    yield GaugeMetricFamily("backstop_redis_health_score", "Redis' health score (0-100).",
                            value=assessment["redis"]["score"])
    issues = GaugeMetricFamily("backstop_health_issues",
                               "Issues the health check finds now, by severity.",
                               labels=["severity"])
    for severity in SEVERITIES:
        issues.add_metric([severity], sum(1 for i in assessment["issues"]
                                          if i["severity"] == severity))
    yield issues


def alert_gauge(rules: list[alerts.AlertRule], firing: list[dict]) -> GaugeMetricFamily:
    """1 for each (rule, queue) whose incident is open, 0 for the other queues each enabled
    rule watches (a disabled rule's open incident still shows until it resolves)."""
    gauge = GaugeMetricFamily("backstop_alert_firing",
                              "1 while Backstop's own alert rule fires for the queue.",
                              labels=["rule", "queue"])
    on = {(incident["rule"], incident["queue"]) for incident in firing}
    watched = {(rule.id, queue) for rule in rules if rule.enabled for queue in rule.queues()}
    for rule_id, queue in sorted(watched | on):
        gauge.add_metric([rule_id, queue], int((rule_id, queue) in on))
    return gauge


def per_queue(queues: dict, name: str, documentation: str, value) -> GaugeMetricFamily:
    """A gauge with one sample per queue: value(row) of each queue's assessment row."""
    gauge = GaugeMetricFamily(name, documentation, labels=["queue"])
    for queue, row in queues.items():
        gauge.add_metric([queue], value(row))
    return gauge


# ---- counters and histograms since the start ----
def finished(totals: dict[tuple[str, str], Figures]) -> Iterator[Metric]:
    """Attempts by queue, job and outcome, and the runtime and wait histograms; every job
    the contracts know starts at zero."""
    known = {(spec.queue, name): Figures() for name, spec in JOBS.items()
             if spec.queue in QUEUES}
    rows = sorted({**known, **totals}.items())
    counter = CounterMetricFamily(
        "backstop_jobs_finished", "Attempts that ended, by queue, job and outcome (ok; retry: "
        "failed, will be retried; dead: failed for good).", labels=["queue", "job", "outcome"])
    for (queue, job), figures in rows:
        for outcome in OUTCOMES:
            counter.add_metric([queue, job, outcome], getattr(figures, outcome))
    yield counter
    yield histogram("backstop_job_runtime_seconds", "Time from an attempt's start to its end.",
                    ((key, f.runtime) for key, f in rows))
    yield histogram("backstop_job_wait_seconds",
                    "Time from a job being due (enqueued, or its delay or retry over) to its "
                    "start.", ((key, f.wait) for key, f in rows))


def histogram(name: str, documentation: str,
              rows: Iterable[tuple[tuple[str, str], Histogram]]) -> HistogramMetricFamily:
    """A histogram family with one (queue, job) series per row: cumulative buckets at
    metrics.BOUNDS, then +Inf, and the sum in seconds."""
    family = HistogramMetricFamily(name, documentation, labels=["queue", "job"])
    for (queue, job), hist in rows:
        family.add_metric([queue, job], list(zip(LE, hist.cumulative(), strict=True)),
                          sum_value=hist.total)
    return family


# ---- the exposition ----
class Collector:
    """prometheus_client's collector protocol: collect() reads Redis at every scrape."""

    def __init__(self, read=snapshot):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield from families(self.read())


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(Collector())


def exposition() -> bytes:
    """The text a scrape answers (CONTENT_TYPE_LATEST). Raises redis.RedisError when Redis
    cannot answer: nothing partial is exported."""
    return generate_latest(REGISTRY)
