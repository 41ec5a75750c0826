"""`worker.py --processes N`: children with their own heartbeats and lists, restarted when
they die (with a back-off when they die at once), signals forwarded, no orphans
(backstop.supervisor)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, wait_for

import tests.jobs_for_tests  # noqa: F401  (the jobs the workers run)
import worker
from backstop import connection, keys, producers, registry, supervisor

FAST = {"rate_limit": 0, "backoff_jitter": 0, "keep_completed": 10_000}


# ---- processes, as /proc shows them ----
def parent_of(pid: int) -> int | None:
    """The parent pid of a live (not zombie) process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else int(ppid)


def alive(pid: int) -> bool:
    return parent_of(pid) is not None


def children_of(pid: int) -> set[int]:
    return {int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and parent_of(int(entry.name)) == pid}


# ---- what Redis shows ----
def heartbeats(r) -> dict[str, dict]:
    """Worker id -> its live heartbeat."""
    beats = {}
    for worker_id in r.zrange(keys.workers(), 0, -1):
        raw = r.get(keys.worker(worker_id))
        if raw:
            beats[worker_id] = json.loads(raw)
    return beats


def beating_children(r, sup: subprocess.Popen, count: int) -> dict[int, str]:
    """Wait until `count` children of the supervisor beat; pid -> worker id."""
    def found():
        beats = {beat["pid"]: worker_id for worker_id, beat in heartbeats(r).items()
                 if parent_of(beat["pid"]) == sup.pid}
        return beats if len(beats) == count else None
    return wait_for(found, timeout=20, what=f"{count} worker processes beating")


def runs(path: Path) -> Counter:
    """How many times each job ran, from the lines test.nap appends to its runs file."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines())


def states(job_ids) -> Counter:
    return Counter(job["state"] if job else "missing" for job in registry.get_jobs(job_ids))


class Supervisors:
    """Starts real `python worker.py --queues system --processes ...` supervisors."""

    def __init__(self, redis_url: str, log: Path):
        self.redis_url, self.log = redis_url, log
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, queue_config: dict | None = None, **env: str):
        environ = {**os.environ, "REDIS_URL": self.redis_url, "PYTHONPATH": str(ROOT),
                   "BACKSTOP_TASK_MODULES": "tests.jobs_for_tests",
                   "BACKSTOP_QUEUES": json.dumps({"system": queue_config or FAST}),
                   "WORKER_HEARTBEAT_SECONDS": "0.5", "WORKER_HEARTBEAT_TTL": "2",
                   "WORKER_REAPER_SECONDS": "0.5", "SCHEDULES_ENABLED": "0", **env}
        with open(self.log, "a") as log:
            proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--queues",
                                     "system", *args], cwd=ROOT, env=environ, stderr=log)
        self.procs.append(proc)
        return proc

    def said(self, pattern: str) -> list[re.Match]:
        text = self.log.read_text() if self.log.exists() else ""
        return list(re.finditer(pattern, text))

    def kill_all(self) -> None:
        for proc in self.procs:
            for pid in children_of(proc.pid) | {proc.pid}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(10)


@pytest.fixture
def supervisors(r, redis_url, tmp_path):
    pool = Supervisors(redis_url, tmp_path / "workers.log")
    yield pool
    pool.kill_all()


# ---- the command line ----
def test_auto_is_the_number_of_cores():
    assert worker.parse_args(["--processes", "auto"]).processes == len(os.sched_getaffinity(0))
    assert worker.parse_args(["--processes", "3"]).processes == 3
    assert worker.parse_args([]).processes == 1


@pytest.mark.parametrize(("value", "says"), [("0", "0 processes: give at least 1"),
                                             ("-1", "-1 processes: give at least 1"),
                                             ("x", "'x' is not a number of processes")])
def test_a_bad_process_count_is_refused_with_what_to_give(value, says, capsys):
    with pytest.raises(SystemExit) as refused:
        worker.parse_args(["--processes", value])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "--processes" in error and says in error, error


def test_a_child_crashing_at_once_is_restarted_with_a_growing_back_off(supervisors):
    # A task module that cannot be imported: every child dies as it starts (exit code 1).
    sup = supervisors.start("--processes", "2", BACKSTOP_TASK_MODULES="no_such_module")
    wait_for(lambda: len(supervisors.said(r"worker process 0 .* restarting it in")) >= 2,
             timeout=20, what="two restarts of one child")
    delays = [float(m[1]) for m in supervisors.said(r"worker process 0 .*exited with code 1 "
                                                    r"after .* restarting it in ([\d.]+) s")]
    assert delays[:2] == [0.5, 1], delays
    # Stopped while a restart waits: no child starts again, the supervisor ends at once.
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(5) == 0
    assert [supervisor.backoff_seconds(n) for n in (0, 3, 4, 20)] == [0, 2, 4, 30]


@pytest.mark.skipif(connection.EMBEDDED_URL_FILE.exists(), reason="./run's Redis is noted")
def test_a_configuration_error_stops_the_supervisor_with_its_code(supervisors):
    sup = supervisors.start("--processes", "2", REDIS_URL="")
    assert sup.wait(20) == 2
    assert supervisors.said("could not start as configured")
    assert supervisors.said("no Redis configured")


# ---- running ----
def test_two_processes_beat_apart_and_share_the_jobs(r, supervisors, tmp_path):
    sup = supervisors.start("--processes", "2", "--concurrency", "1",
                            TEST_RUNS_FILE=str(tmp_path / "runs"))
    pids = beating_children(r, sup, 2)
    assert children_of(sup.pid) == set(pids), "each child is a worker of its own"
    assert len({keys.processing(worker_id, "system") for worker_id in pids.values()}) == 2
    ids = producers.enqueue_many([{"job": "test.nap", "payload": {"seconds": 0.05}}
                                  for _ in range(40)])
    wait_for(lambda: states(ids)["completed"] == 40, what="40 jobs done")
    ran_by = Counter(job["worker"] for job in registry.get_jobs(ids))
    assert set(ran_by) == set(pids.values()), ran_by
    assert min(ran_by.values()) >= 5, ran_by


def test_a_child_killed_mid_run_is_restarted_and_no_job_is_lost(r, supervisors, tmp_path):
    runs_file = tmp_path / "runs"
    sup = supervisors.start("--processes", "2", "--concurrency", "2",
                            TEST_RUNS_FILE=str(runs_file))
    pids = beating_children(r, sup, 2)
    ids = producers.enqueue_many([{"job": "test.nap", "payload": {"seconds": 0.03}}
                                  for _ in range(300)])
    wait_for(lambda: len(runs(runs_file)) >= 60, what="60 jobs done")
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    assert r.llen(keys.processing(pids[victim], "system")), "it had jobs in flight"
    replaced = beating_children(r, sup, 2)
    assert set(replaced) - set(pids), "a new child beats"
    wait_for(lambda: states(ids)["completed"] == 300, timeout=30, what="every job done")
    done = runs(runs_file)
    assert set(done) == set(ids), "every job ran"
    print(f"kill -9 of a child: 0 lost, {sum(done.values()) - len(ids)} ran twice of 300")
    assert r.llen(keys.processing(pids[victim], "system")) == 0, "its list was reaped"
    assert supervisors.said(rf"\(pid {victim}\) killed by SIGKILL .* restarting it")
    assert sup.poll() is None


# ---- stopping ----
def test_sigterm_stops_every_child_gracefully_and_the_supervisor_exits_0(
        r, supervisors, tmp_path):
    sup = supervisors.start("--processes", "2", "--concurrency", "1")
    pids = beating_children(r, sup, 2)
    ids = [producers.enqueue("test.nap", {"seconds": 1.5}) for _ in range(2)]
    wait_for(lambda: states(ids)["active"] == 2, what="one job running in each child")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(20) == 0
    assert not any(alive(pid) for pid in pids), "no child outlives its supervisor"
    assert states(ids)["completed"] == 2, "running jobs were let finish"
    assert heartbeats(r) == {}, "each child said goodbye"


def test_a_second_signal_makes_the_children_hurry(r, supervisors):
    sup = supervisors.start("--processes", "2", "--concurrency", "1")
    pids = beating_children(r, sup, 2)
    ids = [producers.enqueue("test.nap", {"seconds": 30}) for _ in range(2)]
    wait_for(lambda: states(ids)["active"] == 2, what="one job running in each child")
    sup.send_signal(signal.SIGINT)
    time.sleep(0.5)
    sup.send_signal(signal.SIGINT)
    assert sup.wait(10) == 0
    assert not any(alive(pid) for pid in pids)
    assert states(ids)["waiting"] == 2, "the running jobs went back to their queue"


def test_children_of_a_killed_supervisor_shut_down_and_return_their_jobs(r, supervisors):
    sup = supervisors.start("--processes", "2", "--concurrency", "1",
                            WORKER_SHUTDOWN_TIMEOUT="1")
    pids = beating_children(r, sup, 2)
    ids = [producers.enqueue("test.nap", {"seconds": 30}) for _ in range(2)]
    wait_for(lambda: states(ids)["active"] == 2, what="one job running in each child")
    sup.kill()
    sup.wait(5)
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10,
             what="the orphaned children to exit")
    assert heartbeats(r) == {}, "they shut down gracefully"
    assert states(ids)["waiting"] == 2, "their jobs went back to the queue"
