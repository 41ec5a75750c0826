"""GET /metrics (backstop/prometheus.py, web/metrics.py), the shipped alert rules and the
Grafana dashboard: promtool checks the rules, their unit tests and a live scrape; the scrape's
histograms give the API's percentiles and its gauges the panel's counts."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import apply_env
from helpers import panel_app, system_worker
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import NO_RETRY_WAIT, measured, run_all, within_one_bucket
from test_redis_acl import restricted  # noqa: F401  (the fixture, used by name)

import tests.jobs_for_tests  # noqa: F401  (the jobs the in-process worker runs)
from backstop import (
    alerts,
    drainer,
    keys,
    modes,
    outbox,
    producers,
    prometheus,
    redis_server,
    stats,
    tokens,
)
from backstop.runner import WorkerProcess
from tools.browser import works
from tools.promtool import find_promtool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "backstop.json"
SLEEPS = [0.02] * 10 + [0.05] * 8 + [0.2] * 2  # p50 20 ms, p95 and p99 200 ms
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool: $BACKSTOP_PROMTOOL (set by ./test), else on PATH; never installs."""
    override = os.environ.get("BACKSTOP_PROMTOOL")
    if override and not works(override):
        pytest.skip(f"BACKSTOP_PROMTOOL={override} does not run `--version`")
    path = override or find_promtool()
    if not path:
        pytest.skip("promtool is not installed: ./test installs Debian's prometheus package "
                    "when it runs as root with apt-get (or run python3 tools/promtool.py)")
    return path


def run_promtool(promtool: str, *args: str, stdin: str | None = None):
    return subprocess.run([promtool, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.fixture
def worker(r):
    return system_worker(NO_RETRY_WAIT)


def viewer() -> dict:
    return {"Authorization": f"Bearer {tokens.create('prometheus', 'viewer')}"}


def scraped(text: str) -> dict:
    """{name: [(labels, value)]} of every sample in an exposition."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def sample(samples: dict, name: str, **labels) -> float:
    values = [v for found, v in samples[name] if all(found.get(k) == w for k, w in labels.items())]
    assert len(values) == 1, (name, labels, values)
    return values[0]


def histogram_quantile(q: float, samples: dict, name: str, **labels) -> float:
    """Prometheus' histogram_quantile(q, sum by (le) (name_bucket{labels})), done here."""
    by_le: dict[float, float] = {}
    for found, value in samples[f"{name}_bucket"]:
        if all(found.get(k) == w for k, w in labels.items()):
            by_le[float(found["le"])] = by_le.get(float(found["le"]), 0) + value
    buckets = sorted(by_le.items())
    rank = q * buckets[-1][1]
    index = next(i for i, (_le, count) in enumerate(buckets) if count >= rank)
    if index == len(buckets) - 1:
        return buckets[-2][0]
    low, below = (0.0, 0) if index == 0 else buckets[index - 1]
    high, count = buckets[index]
    return low + (high - low) * (rank - below) / (count - below)


# ---- the rules ----
def test_promtool_accepts_the_rules_file(promtool):
    result = run_promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_unit_tests_pass(promtool):
    """Each default fires where Backstop's own rule would (and failures do not at 9)."""
    result = run_promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = RULE_TESTS.read_text()
    for alert in re.findall(r"- alert: (\w+)", RULES.read_text()):
        assert f"alertname: {alert}" in tested, f"{alert} has no unit test"


# ---- the scrape ----
def run_known_durations(worker: WorkerProcess) -> dict[str, float]:
    """20 test.work jobs of known durations and two failing ones (one retry, then dead);
    returns the 20 jobs' true p50/p95/p99 (from their records)."""
    ids = producers.enqueue_many([{"job": "test.work", "payload": {"seconds": s}}
                                  for s in SLEEPS] + [{"job": "test.fail", "payload": {}}] * 2)
    run_all(worker)
    producers.enqueue_many([{"job": "test.work", "payload": {}}] * 3)  # left waiting
    worker.beat()
    return measured(ids[:20], SLEEPS)[1]


def test_a_live_scrape_passes_promtool_and_matches_the_api_and_panel(promtool, worker,
                                                                      live_server):
    # gunicorn listens before its worker has loaded the app: wait for that before timing jobs
    assert requests.get(f"{live_server}/metrics", timeout=30).status_code == 401
    truth = run_known_durations(worker)
    headers = viewer()
    response = requests.get(f"{live_server}/metrics", headers=headers, timeout=10)
    api = requests.get(f"{live_server}/api/v1/health/queues", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == prometheus.CONTENT_TYPE_LATEST
    checked = run_promtool(promtool, "check", "metrics", stdin=response.text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    samples = scraped(response.text)
    check_job_figures(samples, truth)
    check_against_the_api(samples, api.json())
    check_against_the_panel(samples)


def check_job_figures(samples: dict, truth: dict[str, float]) -> None:
    """test.work's percentiles: within one bucket of the truth, and stats.monitor()'s."""
    monitor = stats.monitor()["queues"]["system"]
    runtime_ms = monitor["jobs"]["test.work"]["runtime_ms"]
    for name, q in QUANTILES:
        seconds = histogram_quantile(q, samples, "backstop_job_runtime_seconds",
                                     queue="system", job="test.work")
        assert within_one_bucket(seconds * 1000, truth[name]), (name, seconds)
        assert seconds * 1000 == pytest.approx(runtime_ms[name], abs=0.01), (name, runtime_ms)
    assert sample(samples, "backstop_job_runtime_seconds_count", queue="system",
                  job="test.work") == 20
    assert sample(samples, "backstop_job_runtime_seconds_sum", queue="system",
                  job="test.work") == pytest.approx(runtime_ms["mean"] * 20 / 1000, rel=0.01)
    for outcome, count in (("ok", 0), ("retry", 2), ("dead", 2)):
        assert sample(samples, "backstop_jobs_finished_total", queue="system", job="test.fail",
                      outcome=outcome) == count


def check_against_the_api(samples: dict, api: dict) -> None:
    """The queue's percentiles (the scrape's buckets summed over its jobs), counts, workers
    and health scores are GET /api/v1/health/queues' numbers."""
    assert sample(samples, "backstop_health_score") == api["score"]
    assert sample(samples, "backstop_health_status", status=api["status"]) == 1
    for queue in api["queues"]:
        name = queue["queueName"]
        for state, count in queue["stats"].items():
            if state != "paused":
                assert sample(samples, "backstop_jobs", queue=name, state=state) == count
        assert sample(samples, "backstop_queue_health_score", queue=name) == queue["score"]
        assert sample(samples, "backstop_queue_workers", queue=name) == \
            queue["details"]["workers"]
    system = next(q for q in api["queues"] if q["queueName"] == "system")
    for kind in ("runtime", "wait"):
        shown = system["percentiles"][kind]
        for name, q in QUANTILES:
            seconds = histogram_quantile(q, samples, f"backstop_job_{kind}_seconds",
                                         queue="system")
            assert seconds * 1000 == pytest.approx(shown[name], abs=0.01), (kind, name, shown)


def check_against_the_panel(samples: dict) -> None:
    """Counts by state and dead letters are what the panel's queue pages show."""
    for row in stats.queue_overview():
        for state, count in row["counts"].items():
            assert sample(samples, "backstop_jobs", queue=row["queue"], state=state) == count
        assert sample(samples, "backstop_dlq_records", queue=row["queue"]) == \
            row["dead_letters"]
    assert sample(samples, "backstop_jobs", queue="system", state="waiting") == 3
    assert sample(samples, "backstop_dlq_records", queue="system") == 2
    assert sample(samples, "backstop_queue_workers", queue="system") == 1
    assert sample(samples, "backstop_workers_alive") == 1
    assert 0 < sample(samples, "backstop_queue_oldest_waiting_age_seconds", queue="system") < 60


# ---- who may scrape ----
@pytest.fixture
def app(r):
    return panel_app()


def test_a_scrape_needs_a_viewer_token_unless_metrics_are_public(app):
    client = app.test_client()
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.mimetype == "text/plain" and "bearer token" in anonymous.text
    wrong = client.get("/metrics", headers={"Authorization": "Bearer bst_not-a-token"})
    assert wrong.status_code == 401
    scrape = client.get("/metrics", headers=viewer())
    assert scrape.status_code == 200 and "# TYPE backstop_jobs gauge" in scrape.text
    owner = {"Authorization": f"Bearer {tokens.create('ops', 'owner')}"}
    assert client.get("/metrics", headers=owner).status_code == 200
    for word in ("1", "true", "Yes", "on"):
        apply_env(METRICS_PUBLIC=word)
        assert client.get("/metrics").status_code == 200, word
    apply_env(METRICS_PUBLIC="0")
    assert client.get("/metrics").status_code == 401


def test_redis_down_is_a_503_in_plain_text(app):
    apply_env(REDIS_URL=f"redis://127.0.0.1:{redis_server.free_port()}/0")
    client = app.test_client()
    for headers in ({"Authorization": "Bearer bst_whatever"}, {}):
        apply_env(METRICS_PUBLIC="0" if headers else "1")
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 503, response.text
        assert response.mimetype == "text/plain" and "Redis" in response.text
        assert "Retry-After" in response.headers
    apply_env(METRICS_PUBLIC="0")


def test_scrapers_are_never_refused_by_the_rate_limits(app):
    """Several scrapers behind one address, and the panel used from there until its own
    limit refuses it: the scrapes all answer."""
    client, headers = app.test_client(), viewer()
    assert all(client.get("/metrics", headers=headers).status_code == 200 for _ in range(30))
    statuses = [client.get("/").status_code for _ in range(610)]
    assert statuses[-1] == 429, "the panel's limit (600 per minute) is reached"
    assert client.get("/metrics", headers=headers).status_code == 200


def test_the_alert_state_is_backstops_own(r):
    """An incident Backstop's evaluator opened is 1 for its rule and queue; every other queue
    an enabled rule watches is 0."""
    producers.enqueue("test.work", {})
    alerts.evaluate("evaluator-1", now=time.time() + 700)  # the job has waited 700 s
    firing = {(i["rule"], i["queue"]) for i in alerts.firing()}
    assert ("oldest-waiting", "system") in firing
    samples = scraped(prometheus.exposition().decode())
    exported = {(labels["rule"], labels["queue"]): value
                for labels, value in samples["backstop_alert_firing"]}
    assert {pair for pair, value in exported.items() if value == 1} == firing
    assert exported[("oldest-waiting", "email")] == 0
    assert len(exported) == sum(len(rule.queues()) for rule in alerts.rules() if rule.enabled)


@pytest.mark.usefixtures("restricted")
def test_a_scrape_runs_under_the_production_acl_user():
    """Every read a scrape makes is allowed to backstop.redis_acl's user (a refused one
    would be a 503)."""
    from app import create_app

    response = create_app().test_client().get("/metrics", headers=viewer())
    assert response.status_code == 200, response.text
    assert "backstop_health_score" in response.text


def test_every_known_job_is_exported_from_zero(r):
    """Before anything ran: each job of the contracts has its counters and histograms at 0,
    so its first failure is an increase Prometheus sees."""
    samples = scraped(prometheus.exposition().decode())
    assert sample(samples, "backstop_jobs_finished_total", queue="email", job="email.send",
                  outcome="retry") == 0
    assert sample(samples, "backstop_job_wait_seconds_count", queue="ai",
                  job="ai.translate") == 0
    buckets = [found["le"] for found, _v in samples["backstop_job_runtime_seconds_bucket"]
               if found["job"] == "email.send"]
    assert buckets[0] == "0.005" and buckets[-1] == "+Inf" and len(buckets) == 16
    assert sample(samples, "backstop_workers_alive") == 0


# ---- the Grafana dashboard ----
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$queue": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def exported_names() -> set[str]:
    """Every metric name a scrape exports (a histogram's _bucket, _sum and _count)."""
    names = set()
    for family in text_string_to_metric_families(prometheus.exposition().decode()):
        names |= {family.name} | {s.name for s in family.samples}
    return names


def test_the_dashboard_queries_only_metrics_that_metrics_exports(r):
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queries = dashboard_queries()
    assert len(queries) >= 12
    exported = exported_names()
    for title, expr in queries:
        used = set(re.findall(r"\bbackstop_[a-z_]+", expr))
        assert used, f"{title}: {expr} reads no Backstop metric"
        assert used <= exported, f"{title}: {sorted(used - exported)} are not exported"
    titles = " ".join(t for t, _e in queries).lower()
    for topic in ("throughput", "failed", "runtime", "wait", "backlog", "oldest", "workers",
                  "dlq", "health"):
        assert topic in titles, f"no panel about {topic}"


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    """promtool parses each query (Grafana's variables filled in) as a recording rule."""
    rules = []
    for n, (_title, expr) in enumerate(dashboard_queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_mode_and_each_hosts_outbox_depth_are_exported(r):
    drainer.stop()  # this process's drainer would drain the outbox before the scrape
    for n in range(3):
        outbox.accept(f"kept-{n}", "system", "test.work", "{}", 0, 0, time.time())
    r.hset(keys.outbox_hosts(), "web-2", json.dumps({"depth": 7, "updated_at": time.time()}))
    modes.switch("sync_direct", "test")
    samples = scraped(prometheus.exposition().decode())
    modes.switch("async_queue", "test")
    assert sample(samples, "backstop_outbox_jobs", host=socket.gethostname()) == 3
    assert sample(samples, "backstop_outbox_jobs", host="web-2") == 7
    assert sample(samples, "backstop_mode", mode="sync_direct") == 1
    assert sample(samples, "backstop_mode", mode="async_queue") == 0
    drainer.ensure_running()
