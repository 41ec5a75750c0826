"""Time from a job's state change to the pushed message on a connected live socket.

Starts its own Redis and the web role under gunicorn (as `./run` does), signs in, opens the
job page's socket, then 1,000 times: record the time, report the job's progress (a state change
published by the registry script), and wait for the socket's push. Prints p50, p90, p99, max.
Target: p99 under 100 ms on this machine.

    .venv/bin/python bench/live_latency.py [--events 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from backstop import redis_server  # noqa: E402


def start_stack() -> tuple[list[subprocess.Popen], str]:
    port = redis_server.free_port()
    redis_proc = redis_server.start(port, Path(tempfile.mkdtemp()), durable=False)
    os.environ.update(REDIS_URL=f"redis://127.0.0.1:{port}/0", COOKIE_SECURE="0")
    web_port = redis_server.free_port()
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{web_port}",
                            "--workers", "1", "--threads", "8", "--log-level", "warning",
                            "app:create_app()"], cwd=ROOT, env=os.environ.copy())
    from browser_support import wait_for_port

    wait_for_port(web_port, web)
    return [web, redis_proc], f"http://127.0.0.1:{web_port}"


def main(events: int) -> None:
    procs, base = start_stack()
    try:
        samples = measure(base, events)
    finally:
        for proc in procs:
            proc.terminate()
    report(samples)


def measure(base: str, events: int) -> list[float]:
    from test_live_socket import handshake, read_text_frame, session_cookie

    from backstop import producers, registry

    job_id = producers.enqueue("email.send", {"to": ["a@example.com"], "subject": "s",
                                              "text": "t"})
    cookie = session_cookie(base, "bench", "viewer")
    status, sock = handshake(base, f"page=job&topic=job:{job_id}&job_id={job_id}", base, cookie)
    assert status == 101, status
    samples = []
    for n in range(events):
        started = time.perf_counter()
        registry.report_progress(job_id, "email", "email.send", n % 100, f"step {n}")
        read_text_frame(sock)
        samples.append((time.perf_counter() - started) * 1000)
    sock.close()
    return samples


def report(samples: list[float]) -> None:
    cuts = statistics.quantiles(samples, n=100)
    print(f"events {len(samples)}: state change -> pushed message on the socket")
    print(f"p50 {cuts[49]:.1f} ms   p90 {cuts[89]:.1f} ms   p99 {cuts[98]:.1f} ms   "
          f"max {max(samples):.1f} ms   (target: p99 < 100 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    main(parser.parse_args().events)
