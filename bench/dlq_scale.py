"""DLQ at scale: do the dead-letter reads and the CSV export stay flat from 1k to 1M records?

One run against its own non-durable redis-server on a free port. One server, and the record
set grows in place (write_records with unique ids only adds records, so no FLUSHALL):

1. seed --small records (1,000) and time the reads: dlq.analytics(), dlq.trends(48), the first
   page (50) filtered by job and by job + error type, dlq.fingerprints(50); median of --reps;
2. grow to --export-at (10,000) and export every record as CSV (export.csv_chunks over
   dlq.iter_records(), written to /dev/null): peak Python memory (tracemalloc) and records/s;
3. grow to --records (1,000,000; progress every 100k, then the seeding rate), time the same
   reads and run the same export.

Prints ms at both sizes with their ratio (target: at most 2), the two export peaks and their
ratio (PASS below 2), and Redis's memory. Seeded records look like real failures: 6 queues,
15 jobs, 8 error types, messages with varying ids and numbers that normalise into 40
fingerprints, payloads of ~300 bytes, stacks of ~1 KB, failure times over the last 48 hours.
Absolute times drift +-30% between runs on these machines; read the ratios.

    .venv/bin/python bench/dlq_scale.py [--records 1000000] [--small 1000]
        [--export-at 10000] [--reps 20]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402

BATCH = 1_000
PROGRESS_EVERY = 100_000
TARGET_RATIO = 2.0
HOURS = 48
RNG = random.Random(7)
NOW = time.time()

QUEUES = {"email": ("send", "digest", "bounce"), "billing": ("charge", "refund", "invoice"),
          "reports": ("build", "export"), "webhooks": ("deliver", "retry"),
          "media": ("resize", "transcode"), "sync": ("crm", "inventory", "ledger")}
JOBS = [(queue, f"{queue}.{name}", name) for queue, names in QUEUES.items() for name in names]
# error type -> (message with volatile parts, code); each normalises to one message.
ERRORS = {
    "TimeoutError": ("timed out after {f}s waiting for '{host}' (attempt {n})", "ETIMEDOUT"),
    "ConnectionError": ("connection to '{host}:{port}' refused after {n} ms", "ECONNREFUSED"),
    "ValueError": ("invalid amount {f} for order {uuid}", ""),
    "KeyError": ("missing field 'customer_{n}' in record {hex}", ""),
    "PermissionError": ("tenant {n} may not write to bucket 'exports-{n}'", "EACCES"),
    "RateLimited": ("429 from upstream: retry after {n} s (request {uuid})", "429"),
    "IntegrityError": ("duplicate key value violates unique constraint on id={n}", "23505"),
    "OSError": ("[Errno 28] No space left on device: '/var/tmp/{hex}.part'", "ENOSPC"),
}
TYPES = list(ERRORS)
HOSTS = ("api.stripe.com", "smtp.mailgun.org", "db-1.internal", "db-2.internal", "s3.amazonaws.com")
SITE = "/srv/backstop/.venv/lib/python3.11/site-packages"
STACK_HEAD = f"""Traceback (most recent call last):
  File "{SITE}/huey/api.py", line 419, in _execute
    task_value = task.execute()
  File "{SITE}/huey/api.py", line 782, in execute
    return func(*args, **kwargs)
  File "/srv/backstop/backstop/execution.py", line 141, in run_handler
    return handler(payload, context)
"""
STACK_TAIL = f"""  File "{SITE}/requests/sessions.py", line 589, in request
    resp = self.send(prep, **send_kwargs)
  File "{SITE}/requests/sessions.py", line 703, in send
    r = adapter.send(request, **kwargs)
  File "{SITE}/requests/adapters.py", line 501, in send
    raise ConnectionError(err, request=request)
  File "/usr/lib/python3.11/socket.py", line 836, in create_connection
    sock.connect(sa)
"""


def build_templates() -> list[tuple]:
    """40 failure kinds (queue, job, function, error type), in a seeded order of frequency."""
    kinds = [(queue, job, func, TYPES[(i * 3 + k) % len(TYPES)])
             for i, (queue, job, func) in enumerate(JOBS) for k in range(3 if i < 10 else 2)]
    RNG.shuffle(kinds)
    return kinds


TEMPLATES = build_templates()
# Zipf-like: a few failure kinds dominate, as in a real DLQ.
CUM_WEIGHTS = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(len(TEMPLATES))))


def message(error_type: str) -> str:
    text, _ = ERRORS[error_type]
    return text.format(f=f"{RNG.uniform(0.5, 60):.2f}", host=RNG.choice(HOSTS),
                       n=RNG.randrange(1, 99_999), port=RNG.choice((443, 5432, 6379)),
                       uuid=f"{RNG.getrandbits(32):08x}-4a1b-4c2d-8e3f-{RNG.getrandbits(48):012x}",
                       hex=f"{RNG.getrandbits(64):016x}")


def stack(queue: str, func: str, error_type: str, text: str) -> str:
    frame = (f'  File "/srv/backstop/backstop/tasks/{queue}.py", line {RNG.randrange(20, 400)}, '
             f"in {func}\n    result = client.{func}(payload['order_id'], timeout=30)\n")
    return f"{STACK_HEAD}{frame}{STACK_TAIL}{error_type}: {text}\n"


def payload(queue: str, record_id: str) -> dict:
    data = {"tenant_id": f"t-{RNG.randrange(500)}", "actor_id": f"u-{RNG.randrange(20_000)}",
            "order_id": record_id, "amount_cents": RNG.randrange(100, 500_000),
            "currency": RNG.choice(("EUR", "USD", "GBP")),
            "items": [{"sku": f"SKU-{RNG.randrange(10_000):04d}", "qty": RNG.randrange(1, 5)}
                      for _ in range(RNG.randrange(1, 4))],
            "callback_url": f"https://hooks.example.com/backstop/{queue}/{RNG.randrange(10**6)}",
            "note": "customer asked for a retry after the outage; see ticket"}
    if queue == "webhooks":
        data["api_token"] = f"sk_live_{RNG.getrandbits(96):024x}"
    return data


def make_item(n: int, kind: tuple) -> tuple[dict, dict, int, float]:
    """One final failure as dlq.write_records takes it; n makes the id unique."""
    queue, job, func, error_type = kind
    record_id = f"{RNG.getrandbits(64):016x}{n:016x}"
    text = message(error_type)
    error = {"type": error_type, "message": text, "stack": stack(queue, func, error_type, text),
             "code": ERRORS[error_type][1]}
    # Denser towards now, all within the last 48 hours.
    failed_at = NOW - (HOURS - 0.1) * 3600 * RNG.random() ** 1.5
    job_data = {"id": record_id, "queue": queue, "job": job, "payload": payload(queue, record_id)}
    return job_data, error, RNG.randrange(1, 6), failed_at


def seed(start: int, stop: int) -> None:
    """Add records start..stop-1 in pipelined batches of BATCH; print progress and the rate."""
    from backstop import dlq

    began = time.perf_counter()
    for low in range(start, stop, BATCH):
        high = min(low + BATCH, stop)
        kinds = RNG.choices(TEMPLATES, cum_weights=CUM_WEIGHTS, k=high - low)
        dlq.write_records([make_item(low + i, kind) for i, kind in enumerate(kinds)])
        if high // PROGRESS_EVERY > low // PROGRESS_EVERY:
            print(f"  seeded {high:>9,}  ({(high - start) / (time.perf_counter() - began):,.0f}"
                  " records/s)", flush=True)
    seconds = time.perf_counter() - began
    print(f"seeded {start:,} -> {stop:,} in {seconds:.1f} s: "
          f"{(stop - start) / seconds:,.0f} records/s (count now {dlq.count():,})", flush=True)


def operations() -> dict[str, Callable]:
    """The timed reads; the filters use the most frequent failure kind's job and type."""
    from backstop import dlq

    _, job, _, error_type = TEMPLATES[0]
    return {
        "analytics()": dlq.analytics,
        "trends(48)": lambda: dlq.trends(HOURS),
        f"page(job={job})": lambda: dlq.page(dlq.Filters(job=job), limit=50),
        f"page(job, error_type={error_type})":
            lambda: dlq.page(dlq.Filters(job=job, error_type=error_type), limit=50),
        "fingerprints(50)": lambda: dlq.fingerprints(50),
    }


def median_ms(fn: Callable, reps: int) -> float:
    fn()  # warm-up: script loading, connection, caches
    samples = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def measure_reads(reps: int) -> dict[str, float]:
    ops = operations()
    results = {name: median_ms(fn, reps) for name, fn in ops.items()}
    for name, fn in ops.items():
        if name.startswith("page("):
            page = fn()
            print(f"  {name}: {len(page.items)} items, scanned {page.scanned}, "
                  f"total {page.total}, complete {page.complete}")
    return results


def counted(records: Iterator[dict], seen: list[int]) -> Iterator[dict]:
    for record in records:
        seen[0] += 1
        yield record


def run_export(traced: bool) -> dict:
    """Stream the whole DLQ as CSV into /dev/null; records, bytes, seconds, peak memory."""
    from backstop import dlq, export

    seen, written = [0], 0
    if traced:
        tracemalloc.start()
    began = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        for chunk in export.csv_chunks(counted(dlq.iter_records(), seen)):
            written += sink.write(chunk.encode("utf-8"))
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1] if traced else 0
    tracemalloc.stop()
    return {"records": seen[0], "bytes": written, "seconds": seconds, "peak": peak}


def measure_export() -> dict:
    """Peak memory from a traced pass; records/s from an untraced one (tracemalloc is slow)."""
    traced, plain = run_export(traced=True), run_export(traced=False)
    print(f"  export of {plain['records']:,} records, {plain['bytes'] / 1e6:,.1f} MB of CSV: "
          f"{plain['records'] / plain['seconds']:,.0f} records/s "
          f"({traced['records'] / traced['seconds']:,.0f} under tracemalloc), "
          f"peak {traced['peak'] / 1e6:.2f} MB", flush=True)
    return {"peak": traced["peak"], "rate": plain["records"] / plain["seconds"],
            "records": plain["records"]}


def report_reads(small: dict, big: dict, sizes: tuple[int, int]) -> None:
    a, b = (f"{n:,}" for n in sizes)
    print(f"\n{'operation':<42}{'ms at ' + a:>14}{'ms at ' + b:>16}{'ratio':>8}  target <= 2")
    for name in small:
        ratio = big[name] / small[name]
        verdict = "ok" if ratio <= TARGET_RATIO else "ABOVE TARGET"
        print(f"{name:<42}{small[name]:>14.2f}{big[name]:>16.2f}{ratio:>8.2f}  {verdict}")


def report_export(small: dict, big: dict) -> None:
    ratio = big["peak"] / small["peak"]
    print(f"\nexport peak memory: {small['peak'] / 1e6:.2f} MB at {small['records']:,} records, "
          f"{big['peak'] / 1e6:.2f} MB at {big['records']:,}; ratio {ratio:.2f} "
          f"-> {'PASS' if ratio < TARGET_RATIO else 'FAIL'} (flat: below 2)")
    print(f"export rate: {small['rate']:,.0f} records/s at {small['records']:,}, "
          f"{big['rate']:,.0f} records/s at {big['records']:,}")


def report_redis() -> None:
    from backstop import dlq
    from backstop.connection import client

    info = client().info("memory")
    per_record = info["used_memory"] / max(dlq.count(), 1)
    print(f"redis used_memory_human {info['used_memory_human']} "
          f"({per_record:,.0f} bytes per record, {dlq.count():,} records)")


def start_redis() -> tuple[subprocess.Popen, str, Path]:
    port = redis_server.free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="dlq-scale-"))
    proc = redis_server.start(port, data_dir, durable=False)
    return proc, f"redis://127.0.0.1:{port}/0", data_dir


def run(args: argparse.Namespace) -> None:
    print(f"seeding {args.small:,} records", flush=True)
    seed(0, args.small)
    small_reads = measure_reads(args.reps)
    seed(args.small, args.export_at)
    small_export = measure_export()
    print(f"seeding up to {args.records:,} records", flush=True)
    seed(args.export_at, args.records)
    big_reads = measure_reads(args.reps)
    big_export = measure_export()
    report_reads(small_reads, big_reads, (args.small, args.records))
    report_export(small_export, big_export)
    report_redis()


def main(args: argparse.Namespace) -> None:
    if not args.small < args.export_at < args.records:
        raise SystemExit("need --small < --export-at < --records")
    proc, url, data_dir = start_redis()
    # Before any backstop module reads its settings.
    os.environ.update(REDIS_URL=url, DLQ_MAX_RECORDS="2000000")
    os.environ.setdefault("SECRET_KEY", "dlq-scale-bench")
    try:
        run(args)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--export-at", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=20)
    main(parser.parse_args())
