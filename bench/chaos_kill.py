"""The kill -9 loop: workers killed at random while jobs run; nothing may be lost.

Starts a Redis of its own, enqueues the jobs, starts 4 worker processes, and every 2-5 s kills
one with SIGKILL (starting a replacement) for the given duration. Then waits for every job to
end and prints: jobs completed / dead / lost, duplicate runs (a job's handler ran more than
once: at-least-once delivery), and how long an orphan took to come back to its queue after
its worker was killed (median and max).

    .venv/bin/python bench/chaos_kill.py [--jobs 5000] [--seconds 120] [--workers 4]

Heartbeat settings come from the environment (WORKER_HEARTBEAT_TTL ...) or their defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=0.05)
    return parser.parse_args(argv)


class Chaos:
    """One run: its own Redis, its workers (env: extra settings for them), its kill loop."""

    def __init__(self, args: argparse.Namespace, env: dict | None = None):
        from backstop import config, connection

        self.args = args
        self.extra_env = env or {}
        self.dir = Path(tempfile.mkdtemp(prefix="backstop-chaos-"))
        port = redis_server.free_port()
        self.redis_proc = redis_server.start(port, self.dir / "redis", durable=False)
        self.url = f"redis://127.0.0.1:{port}/0"
        os.environ.update(REDIS_URL=self.url, BACKSTOP_TASK_MODULES="bench.jobs")
        config.settings.cache_clear()
        connection.reset()
        self.runs_file = self.dir / "runs"
        self.procs: list[subprocess.Popen] = []
        self.kills: list[tuple[float, str]] = []

    def env(self) -> dict:
        queues = {"system": {"rate_limit": 0, "concurrency": 4, "backoff_jitter": 0,
                             "keep_completed": 100_000}}
        return {**os.environ, "REDIS_URL": self.url, "PYTHONPATH": str(ROOT),
                "BACKSTOP_TASK_MODULES": "bench.jobs", "BACKSTOP_QUEUES": json.dumps(queues),
                "BENCH_RUNS_FILE": str(self.runs_file), **self.extra_env}

    def start_worker(self) -> subprocess.Popen:
        log = open(self.dir / "workers.log", "a")  # noqa: SIM115  (the child keeps it)
        proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--queues", "system"],
                                cwd=ROOT, env=self.env(), stderr=log, stdout=log)
        log.close()
        self.procs.append(proc)
        return proc

    def run(self) -> dict:
        import bench.jobs  # noqa: F401  (defines bench.work in this process too)
        from backstop import producers

        ids = producers.enqueue_many(
            {"job": "bench.work", "payload": {"seconds": self.args.job_seconds}}
            for _ in range(self.args.jobs))
        live = [self.start_worker() for _ in range(self.args.workers)]
        end = time.monotonic() + self.args.seconds
        while time.monotonic() < end:
            time.sleep(random.uniform(2, 5))
            victim = live.pop(random.randrange(len(live)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            self.kills.append((time.time(), str(victim.pid)))
            live.append(self.start_worker())
        return self.settle(ids)

    def settle(self, ids: list[str]) -> dict:
        from backstop import registry

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = Counter(j["state"] if j else "missing" for j in registry.get_jobs(ids))
            if set(found) <= {"completed", "dead"}:
                break
            time.sleep(1)
        ran = Counter(line.split()[0] for line in self.runs_file.read_text().splitlines())
        return {"states": dict(found), "duplicates": sum(n - 1 for n in ran.values()),
                "never_ran": len(set(ids) - set(ran)), "kills": len(self.kills),
                "orphan_return_s": self.return_times(ids)}

    def return_times(self, ids: list[str]) -> list[float]:
        """Seconds from each kill to the first job of the killed worker back in its queue."""
        from backstop import registry

        stalled: dict[str, float] = {}
        for job in registry.get_jobs(ids):
            for item in job["timeline"] if job else []:
                if item["event"] == "stalled" and "stopped beating" in item.get("detail", ""):
                    pid = item["detail"].split(":")[1]
                    stalled[pid] = min(stalled.get(pid, item["t"]), item["t"])
        return [stalled[pid] - t for t, pid in self.kills if pid in stalled]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.redis_proc.kill()


def main() -> None:
    args = parse_args()
    chaos = Chaos(args)
    try:
        result = chaos.run()
    finally:
        chaos.close()
    times = result.pop("orphan_return_s")
    print(json.dumps(result))
    if times:
        print(f"orphan back in its queue after a kill: median {statistics.median(times):.1f} s, "
              f"max {max(times):.1f} s ({len(times)} kills with jobs in flight)")
    lost = result["states"].get("missing", 0) + sum(
        n for s, n in result["states"].items() if s not in ("completed", "dead", "missing"))
    print(f"lost or stuck: {lost}; duplicate runs: {result['duplicates']}")


if __name__ == "__main__":
    main()
