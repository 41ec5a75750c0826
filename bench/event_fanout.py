"""How many job events one web process fans out to many SSE clients, and how late they arrive.

Starts its own Redis and ONE gunicorn process (gthread, a thread per stream), opens --clients
Server-Sent-Event streams on /api/v1/events with an API token (asyncio, one process), then:

1. steady: --rate progress events a second for --seconds; the latency of each delivery is
   its arrival time minus the event's own time ("at", stamped by the script that wrote it),
   so it covers Redis, the hub, the stream's thread, gunicorn and the client. p50/p99/max.
2. burst: --burst events written as fast as one producer can; events per second delivered
   to all clients (deliveries/s = events/s x clients) until the last client has the last one.

    .venv/bin/python bench/event_fanout.py [--clients 200] [--rate 20] [--seconds 10] [--burst 2000]

The clients share the 2 cores with the server and Redis: figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
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


def start_stack(threads: int) -> tuple[list[subprocess.Popen], int]:
    port = redis_server.free_port()
    redis_proc = redis_server.start(port, Path(tempfile.mkdtemp()), durable=False)
    os.environ.update(REDIS_URL=f"redis://127.0.0.1:{port}/0",
                      EVENT_STREAMS_PER_TOKEN=str(threads), RATE_LIMIT_DEFAULT="100000 per minute")
    web_port = redis_server.free_port()
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{web_port}",
                            "--workers", "1", "--threads", str(threads), "--log-level",
                            "warning", "app:create_app()"], cwd=ROOT, env=os.environ.copy())
    from browser_support import wait_for_port

    wait_for_port(web_port, web)
    return [web, redis_proc], web_port


SERVER: list[int] = []  # the gunicorn worker's pid


AT = re.compile(rb'^data: .*?"at":([0-9.]+)', re.M)


class Client:
    """One SSE stream read with asyncio, in large reads (a line-by-line JSON parse here
    would cost more CPU than the server spends): each event's own time and its arrival."""

    def __init__(self):
        self.arrivals: list[tuple[float, float]] = []   # (arrived, the event's "at")
        self.ready = asyncio.Event()

    async def run(self, port: int, token: str, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n")
                     .encode())
        await writer.drain()
        status = await reader.readline()
        assert b" 200 " in status, status
        pending = b""
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 0.5)
            except TimeoutError:
                continue
            arrived = time.time()
            pending += chunk
            complete, _, pending = pending.rpartition(b"\n\n")
            self.ready.set()
            self.arrivals += [(arrived, float(at)) for at in AT.findall(complete)]
        writer.close()


def write_events(count: int, rate: float | None, job_id: str) -> None:
    from backstop import registry

    began = time.perf_counter()
    for n in range(count):
        if rate:
            wait = began + n / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        registry.report_progress(job_id, "system", "bench.noop", n % 101, f"event {n}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def web_worker_pid(arbiter: int) -> int:
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    return int(children[0])


async def phase(port: int, token: str, clients: int, count: int, rate: float | None):
    stop = asyncio.Event()
    streams = [Client() for _ in range(clients)]
    tasks = [asyncio.create_task(c.run(port, token, stop)) for c in streams]
    await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in streams)), 60)
    began, cpu_before = time.time(), (cpu_seconds(SERVER[0]), time.process_time())
    # Its own process: the clients' parsing here must not slow the writing down.
    writer = multiprocessing.Process(target=write_events, args=(count, rate, f"bench-{began}"))
    writer.start()
    deadline = time.monotonic() + count / (rate or 500) + 60
    while time.monotonic() < deadline and not all(len(c.arrivals) >= count for c in streams):
        await asyncio.sleep(0.05)
    writer.join()
    elapsed = time.time() - began
    server_cpu = cpu_seconds(SERVER[0]) - cpu_before[0]
    client_cpu = time.process_time() - cpu_before[1]
    stop.set()
    await asyncio.gather(*tasks)
    print(f"  CPU over {elapsed:.1f} s: web process {server_cpu:.1f} s "
          f"({100 * server_cpu / elapsed:.0f}% of a core), clients {client_cpu:.1f} s "
          f"({100 * client_cpu / elapsed:.0f}%)")
    return streams, began


def report_steady(streams: list[Client], count: int) -> None:
    latencies = [(arrived - at) * 1000 for c in streams for arrived, at in c.arrivals]
    got = sum(len(c.arrivals) for c in streams)
    cuts = statistics.quantiles(latencies, n=100)
    print(f"steady: {count} events x {len(streams)} clients = {got} of {count * len(streams)} "
          f"delivered; state change -> client: p50 {cuts[49]:.1f} ms  p90 {cuts[89]:.1f} ms  "
          f"p99 {cuts[98]:.1f} ms  max {max(latencies):.1f} ms  (target p99 < 100 ms)")


def report_burst(streams: list[Client], count: int, began: float) -> None:
    got = sum(len(c.arrivals) for c in streams)
    last = max(arrived for c in streams for arrived, _ in c.arrivals)
    seconds = last - began
    print(f"burst: {count} events x {len(streams)} clients = {got} delivered in {seconds:.2f} s: "
          f"{count / seconds:.0f} events/s fanned out, {got / seconds:.0f} deliveries/s")


def main(clients: int, rate: float, seconds: float, burst: int) -> None:
    procs, port = start_stack(clients + 16)
    SERVER.append(web_worker_pid(procs[0].pid))
    try:
        from backstop import tokens

        token = tokens.create("bench", "viewer")
        count = int(rate * seconds)
        streams, _ = asyncio.run(phase(port, token, clients, count, rate))
        report_steady(streams, count)
        streams, began = asyncio.run(phase(port, token, clients, burst, None))
        report_burst(streams, burst, began)
    finally:
        for proc in procs:  # the web role first: its streams would complain of Redis gone
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=2000)
    args = parser.parse_args()
    main(args.clients, args.rate, args.seconds, args.burst)
