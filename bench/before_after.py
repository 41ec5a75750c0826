"""Backstop before and after a change: enqueue rate and worker throughput of two revisions,
interleaved (before, after, after, before ...) against one Redis started here.

The "before" revision is checked out into a temporary git worktree; both sides run the same
no-op job (bench.jobs) with the same interpreter and settings. Prints medians and the ratios
after / before (1.00 = no change; 0.97 = 3% slower).

    .venv/bin/python bench/before_after.py --before 5b96d77 [--after REV] [--jobs 5000]
        [--rounds 5]

--after defaults to the working tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402

# One round, run inside the tree being measured (its own backstop package and worker.py).
ROUND = r"""
import json, subprocess, sys, time
import redis
import bench.jobs  # noqa: F401  (registers bench.noop)
from backstop import keys, producers
jobs = int(sys.argv[1])
client = redis.Redis.from_url(sys.argv[2])
client.flushall()
began = time.monotonic()
for _ in range(jobs):
    producers.enqueue("bench.noop", {})
enqueue = jobs / (time.monotonic() - began)
worker = subprocess.Popen([sys.executable, "worker.py", "--queues", "system"],
                          stderr=subprocess.DEVNULL)
def completed():
    return int(client.hget(keys.queue_stats("system"), "completed") or 0)
def wait(target):
    deadline = time.monotonic() + 300
    while completed() < target:
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.002)
    return time.monotonic()
try:
    began = wait(1)
    done = wait(jobs)
finally:
    worker.terminate()
    worker.wait()
print(json.dumps([enqueue, (jobs - 1) / (done - began)]))
"""


def checkout(revision: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="backstop-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree),
                    revision], check=True, capture_output=True)
    return tree


def one_round(tree: Path, url: str) -> list[float]:
    queues = json.dumps({"system": {"rate_limit": 0, "concurrency": ARGS.workers}})
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(tree), "SECRET_KEY": "bench",
           "BACKSTOP_TASK_MODULES": "bench.jobs", "BACKSTOP_QUEUES": queues}
    out = subprocess.run([sys.executable, "-c", ROUND, str(ARGS.jobs), url], cwd=tree, env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    port = redis_server.free_port()
    proc = redis_server.start(port, Path(tempfile.mkdtemp()), durable=False)
    url = f"redis://127.0.0.1:{port}/0"
    before = checkout(ARGS.before)
    after = checkout(ARGS.after) if ARGS.after else ROOT
    results: dict[str, list] = {"before": [], "after": []}
    try:
        for n in range(ARGS.rounds):
            sides = [("before", before), ("after", after)]
            for side, tree in sides if n % 2 == 0 else sides[::-1]:  # ABBA: no order bias
                results[side].append(one_round(tree, url))
            print(f"round {n + 1}: before {results['before'][-1]}, after "
                  f"{results['after'][-1]}", file=sys.stderr)
    finally:
        proc.terminate()
        for tree in {before, after} - {ROOT}:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)
    report(results)


def report(results: dict) -> None:
    med = {side: [statistics.median(r[i] for r in rows) for i in (0, 1)]
           for side, rows in results.items()}
    print(f"before {ARGS.before}, after {ARGS.after or 'the working tree'}; jobs per round "
          f"{ARGS.jobs}, "
          f"rounds {ARGS.rounds}, thread workers {ARGS.workers}")
    for i, what in enumerate(("enqueue/s  ", "processed/s")):
        print(f"{what} before {med['before'][i]:8.0f}   after {med['after'][i]:8.0f}   "
              f"ratio {med['after'][i] / med['before'][i]:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--after", default="", help="git revision (default: working tree)")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    ARGS = parser.parse_args()
    main()
