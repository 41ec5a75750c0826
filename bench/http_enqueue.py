"""POST /api/v1/jobs over real HTTP: requests/s and latency per gunicorn setting.

Starts its own Redis, then for each --configs setting (WORKERSxTHREADS, gthread) a gunicorn
serving the web role, and drives `POST /api/v1/jobs` (a no-op job, one API token) from a small
asyncio HTTP/1.1 client with keep-alive connections, one closed loop per connection, at each
--levels concurrency for --seconds. Prints per level: requests/s, p50/p99 latency, errors,
and the CPU that the web workers, Redis and the client used; per setting: the highest
requests/s whose p99 stays under --p99-ms (the API's target, 100 ms). The best setting is
measured again at the end: the machine is shared, figures drift between runs.

    .venv/bin/python bench/http_enqueue.py [--configs 2x4,2x8,4x4,4x8] [--levels 1,4,8,16,32,64]
                                           [--seconds 2.5] [--p99-ms 100]
    .venv/bin/python bench/http_enqueue.py --profile 3000   # where one POST's time goes

The client runs on the same cores as the server and Redis (it used the CPU printed in its
column): the figures are a floor for a web host whose clients are elsewhere.

--profile N runs N POSTs through Flask's test client in this process under cProfile (no
gunicorn, no sockets to the web role) and prints what the request's parts cost.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402
from bench.throughput import start_redis, stop  # noqa: E402

BODY = json.dumps({"job": "bench.noop", "payload": {}}).encode()
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)
# The bench measures throughput, not the limit: its token may make far more calls than that.
BENCH_TOKEN_LIMIT = "100000000 per minute"


@dataclass
class Step:
    connections: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float]  # share of one core: web, redis, client

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: int) -> float:
        """The p-th percentile latency in ms."""
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("inf")
        return statistics.quantiles(self.latencies, n=100)[p - 1] * 1000


# ---- the stack: Redis and one gunicorn ----
def environment(redis_url: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
            "BACKSTOP_TASK_MODULES": "bench.jobs",
            "OUTBOX_PATH": str(Path(tempfile.mkdtemp(prefix="bench-outbox-")) / "outbox.db")}


def start_web(env: dict[str, str], workers: int, threads: int) -> tuple[subprocess.Popen, int]:
    """gunicorn with this many worker processes of this many threads (gthread), as in
    production; waits until a worker answers."""
    port = redis_server.free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
         str(workers), "--threads", str(threads), "--worker-class", "gthread",
         "--log-level", "warning", "app:create_app()"],
        cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {web.returncode}")
        try:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/queues", timeout=2):
                return web, port
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer within 60 s")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes so far (Linux /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# ---- the client: keep-alive connections, each a closed loop ----
def request_bytes(port: int, token: str) -> bytes:
    return (f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


async def one_connection(port: int, request: bytes, until: float, latencies: list[float],
                         errors: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = CONTENT_LENGTH.search(head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            latencies.append(time.perf_counter() - began)
            if head[9:12] != b"202":
                errors.append(head[9:12])
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def load(port: int, request: bytes, connections: int, seconds: float):
    latencies: list[float] = []
    errors: list[bytes] = []
    until = time.perf_counter() + seconds
    began = time.perf_counter()
    await asyncio.gather(*(one_connection(port, request, until, latencies, errors)
                           for _ in range(connections)))
    return latencies, errors, time.perf_counter() - began


def measure(port: int, request: bytes, connections: int, seconds: float,
            pids: dict[str, list[int]]) -> Step:
    before = {name: cpu_seconds(p) for name, p in pids.items()}
    client_before = time.process_time()
    latencies, errors, elapsed = asyncio.run(load(port, request, connections, seconds))
    cpu = {name: (cpu_seconds(p) - before[name]) / elapsed for name, p in pids.items()}
    cpu["client"] = (time.process_time() - client_before) / elapsed
    return Step(connections, len(latencies), len(errors), elapsed, latencies, cpu)


# ---- one gunicorn setting ----
def run_setting(env: dict[str, str], redis_proc: subprocess.Popen, workers: int,
                threads: int, args: argparse.Namespace) -> list[Step]:
    import redis

    from backstop import tokens

    redis.Redis.from_url(env["REDIS_URL"]).flushall()  # each setting starts from empty
    token = tokens.create("bench", "operator", rate_limit=BENCH_TOKEN_LIMIT)
    web, port = start_web(env, workers, threads)
    try:
        pids = {"web": children(web.pid), "redis": [redis_proc.pid]}
        request = request_bytes(port, token)
        asyncio.run(load(port, request, min(8, workers * threads), 1.0))  # warm every worker
        print(f"\ngunicorn --workers {workers} --threads {threads} (gthread)")
        print(f"{'conns':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   "
              f"CPU (cores): web  redis  client")
        steps = []
        for connections in args.levels:
            step = measure(port, request, connections, args.seconds, pids)
            steps.append(step)
            print(f"{connections:>6} {step.rate:>8.0f} {step.percentile(50):>8.1f} "
                  f"{step.percentile(99):>8.1f} {step.errors:>7}   "
                  f"{step.cpu['web']:>15.2f} {step.cpu['redis']:>6.2f} {step.cpu['client']:>7.2f}")
        return steps
    finally:
        stop(web)


def best_under(steps: list[Step], p99_ms: float) -> Step | None:
    """The step with the most requests/s whose p99 stays under p99_ms, and no errors."""
    fine = [s for s in steps if s.percentile(99) < p99_ms and not s.errors]
    return max(fine, key=lambda s: s.rate) if fine else None


def summary(label: str, best: Step | None, p99_ms: float) -> str:
    if best is None:
        return f"{label}: no level kept p99 under {p99_ms:.0f} ms"
    return (f"{label}: {best.rate:.0f} req/s at p99 {best.percentile(99):.1f} ms "
            f"(p50 {best.percentile(50):.1f} ms, {best.connections} connections)")


def compare(args: argparse.Namespace) -> None:
    redis_proc, url = start_redis()
    env = environment(url)
    os.environ.update(REDIS_URL=url)
    print(f"POST /api/v1/jobs, no-op job, {os.cpu_count()} cores shared by gunicorn, Redis and "
          f"this client; {args.seconds} s per level")
    try:
        results = {}
        for workers, threads in args.configs:
            results[(workers, threads)] = best_under(
                run_setting(env, redis_proc, workers, threads, args), args.p99_ms)
        print(f"\nhighest req/s with p99 < {args.p99_ms:.0f} ms:")
        for (workers, threads), best in results.items():
            print("  " + summary(f"{workers} workers x {threads} threads", best, args.p99_ms))
        ranked = [key for key, best in results.items() if best is not None]
        if ranked and not args.no_rerun:
            workers, threads = max(ranked, key=lambda key: results[key].rate)  # type: ignore[union-attr]
            again = best_under(run_setting(env, redis_proc, workers, threads, args), args.p99_ms)
            print("\nthe best setting, measured again:")
            print("  " + summary(f"{workers} workers x {threads} threads", again, args.p99_ms))
    finally:
        stop(redis_proc)


# ---- where one POST's time goes ----
PARTS = {  # (path suffix, function): what it is
    ("flask_limiter/_extension.py", "_check_request_limit"): "rate limit: count the hit",
    ("flask_limiter/_extension.py", "__inject_headers"): "rate limit: X-RateLimit headers",
    ("web/auth.py", "request_token"): "token verification (once per request)",
    ("werkzeug/wrappers/request.py", "get_json"): "JSON body parse",
    ("backstop/producers.py", "dispatch"): "enqueue (producers.dispatch)",
    ("flask/json/__init__.py", "jsonify"): "JSON answer",
    ("flask/app.py", "full_dispatch_request"): "all of Flask's dispatch",
    ("werkzeug/test.py", "open"): "the whole request (test client included)",
}


def profile(count: int) -> None:
    redis_proc, url = start_redis()
    os.environ.update({k: v for k, v in environment(url).items() if k != "PYTHONPATH"})
    try:
        from app import create_app
        from backstop import tokens

        client = create_app().test_client()
        headers = {"Authorization": "Bearer " + tokens.create("bench", "operator",
                                                              rate_limit=BENCH_TOKEN_LIMIT)}
        body = {"job": "bench.noop", "payload": {}}

        def post_all(n: int) -> None:
            for _ in range(n):
                assert client.post("/api/v1/jobs", json=body, headers=headers).status_code == 202

        post_all(200)  # warm: imports, caches, the scripts loaded in Redis
        began = time.process_time()
        post_all(count)
        plain = (time.process_time() - began) / count * 1e6
        # CPU time, not wall time: on a shared machine the wall clock counts other processes
        # (and the waits for Redis's answers, which cost this process nothing).
        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(post_all, count)
        report_profile(pstats.Stats(profiler), count, plain)
    finally:
        stop(redis_proc)


def report_profile(stats: pstats.Stats, count: int, plain_us: float) -> None:
    table = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tt, ct, callers)}
    whole = next(ct for (f, _l, n), (_cc, _nc, _tt, ct, _c) in table.items()
                 if f.endswith("werkzeug/test.py") and n == "open")
    print(f"{count} POSTs through the test client: {plain_us:.0f} us of CPU each without the "
          f"profiler; under it (CPU time), share of the whole request:")
    for (suffix, name), label in PARTS.items():
        spent = sum(ct for (f, _l, n), (_cc, _nc, _tt, ct, _c) in table.items()
                    if f.endswith(suffix) and n == name)
        print(f"  {100 * spent / whole:5.1f}%  {spent / count * 1e6:7.0f} us  {label}")
    calls = sum(nc for (f, _l, n), (_cc, nc, _tt, _ct, _c) in table.items()
                if f.endswith("redis/client.py") and n == "_execute_command")
    print(f"  Redis round trips per request: {calls / count:.1f}")
    print("\ntop 25 by cumulative time:")
    stats.sort_stats("cumulative").print_stats(25)


def setting(text: str) -> tuple[int, int]:
    workers, _, threads = text.partition("x")
    return int(workers), int(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="2x4,2x8,4x4,4x8",
                        type=lambda s: [setting(c) for c in s.split(",")],
                        help="gunicorn settings to compare: WORKERSxTHREADS,...")
    parser.add_argument("--levels", default="1,4,8,16,32,64",
                        type=lambda s: [int(n) for n in s.split(",")],
                        help="concurrent keep-alive connections, one level after another")
    parser.add_argument("--seconds", type=float, default=2.5, help="per level")
    parser.add_argument("--p99-ms", type=float, default=100.0)
    parser.add_argument("--no-rerun", action="store_true",
                        help="do not measure the best setting again at the end")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="profile N POSTs in this process instead")
    arguments = parser.parse_args()
    if arguments.profile:
        profile(arguments.profile)
    else:
        compare(arguments)
