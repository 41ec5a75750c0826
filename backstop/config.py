"""Every setting Backstop reads, in one place: name, default, environment variable, help.

The README's settings table is generated from SETTINGS (``python -m backstop.config``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

TRUE_WORDS = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str

    @property
    def env(self) -> str:
        return self.name


SETTINGS = [
    Setting("REDIS_URL", "",
            "Redis to use. Empty: `./run` starts an embedded Redis under var/."),
    Setting("REDIS_SOCKET_TIMEOUT", "5",
            "Seconds a Redis reply may take before the call fails (and is retried or "
            "reported); 0: wait for ever."),
    Setting("REDIS_CONNECT_TIMEOUT", "3", "Seconds a connection to Redis may take to open."),
    Setting("REDIS_HEALTH_CHECK_SECONDS", "15",
            "An idle pooled connection is pinged before reuse after this many seconds."),
    Setting("REDIS_SENTINELS", "",
            "Comma-separated host:port of the Redis Sentinels (e.g. "
            "`10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379`): every process asks them which "
            "server is the primary and follows a failover. REDIS_URL may still give the "
            "password and database number (its host is then ignored). Empty: no Sentinel."),
    Setting("REDIS_SENTINEL_SERVICE", "",
            "With REDIS_SENTINELS: the name the Sentinels monitor the primary under "
            "(`sentinel monitor <name> ...`), e.g. `backstop`."),
    Setting("REDIS_SENTINEL_PASSWORD", "",
            "Password of the Sentinels themselves (their `requirepass`), if they have one; "
            "the data servers' password comes from REDIS_URL."),
    Setting("REDIS_MIN_REPLICAS_ACK", "0",
            "N > 0: an enqueue is acknowledged only once N replicas have it (WAIT on the "
            "enqueue's own connection), so a failover cannot lose an acknowledged job; when "
            "fewer confirm in time the enqueue counts as Redis being unavailable (the queue's "
            "outage policy takes the job, e.g. the outbox). 0: no wait."),
    Setting("REDIS_REPLICA_ACK_TIMEOUT_MS", "500",
            "With REDIS_MIN_REPLICAS_ACK: milliseconds an enqueue waits for its replicas."),
    Setting("BACKSTOP_PREFIX", "backstop", "Prefix of every Redis key Backstop writes."),
    Setting("BACKSTOP_TASK_MODULES", "", "Comma-separated modules that define your own jobs."),
    Setting("BACKSTOP_QUEUES", "",
            'JSON overrides of queue configs, e.g. {"email": {"concurrency": 4}}.'),
    Setting("BACKSTOP_EVENTS_MAXLEN", "10000", "Length of the recent-events stream (approximate)."),
    Setting("WORKER_HEARTBEAT_SECONDS", "2", "How often a worker process beats."),
    Setting("WORKER_HEARTBEAT_TTL", "15", "Seconds without a beat after which a worker is gone."),
    Setting("WORKER_SHUTDOWN_TIMEOUT", "20", "Seconds running jobs get on SIGTERM/SIGINT."),
    Setting("WORKER_REAPER_SECONDS", "5", "How often a worker looks for orphaned jobs."),
    Setting("WORKER_RECONCILE_SECONDS", "5",
            "How often a worker checks its own processing lists for jobs no thread holds."),
    Setting("WORKER_RECONCILE_GRACE", "15",
            "Seconds a message may sit unheld in a worker's processing list before it goes back "
            "to its queue (at least REDIS_SOCKET_TIMEOUT + REDIS_CONNECT_TIMEOUT + 1)."),
    Setting("DLQ_MAX_RECORDS", "100000",
            "DLQ size cap: past it the oldest records are archived to DLQ_ARCHIVE_DIR."),
    Setting("DLQ_RETENTION_DAYS", "30", "Records older than this are archived, then dropped."),
    Setting("DLQ_ARCHIVE_DIR", "var/dlq-archive", "Where archived DLQ records go (JSONL)."),
    Setting("SMTP_URL", "smtp://localhost:25", "Mail server: smtp://user:pass@host:port or smtps://."),
    Setting("MAIL_FROM", "backstop@localhost", "Sender address of Backstop's mail."),
    Setting("OTP_TTL_SECONDS", "300", "Lifetime of a one-time code."),
    Setting("WEBHOOK_TIMEOUT_SECONDS", "10", "Timeout of one webhook delivery."),
    Setting("WEBHOOK_SECRET", "",
            "HMAC secret of subscriptions that name none (it signs only deliveries to a "
            "subscription's own URL)."),
    Setting("WEBHOOK_ALLOW_PRIVATE", "0",
            "1: webhooks may go to loopback, private, link-local and other internal "
            "addresses (refused by default, permanently)."),
    Setting("WEBHOOK_ALLOWED_HOSTS", "",
            "Comma-separated webhook hosts let through even though they are or resolve to "
            "internal addresses (e.g. `hooks.internal,10.0.0.7`)."),
    Setting("AI_API_URL", "", "OpenAI-compatible base URL. Empty: AI jobs fail permanently."),
    Setting("AI_API_KEY", "", "Bearer key for AI_API_URL."),
    Setting("AI_MODEL", "gpt-4o-mini", "Model name sent to AI_API_URL."),
    Setting("SECRET_KEY", "",
            "Signs sessions, OTP hashes, the audit chain; seals DLQ payloads. "
            "Empty: generated once into var/secret_key."),
    Setting("COOKIE_SECURE", "1", "1: session cookie only over HTTPS (browsers allow localhost)."),
    Setting("MAX_CONTENT_LENGTH", "1048576",
            "Largest request body the web role reads, in bytes; a larger one gets 413."),
    Setting("SESSION_LIFETIME_SECONDS", "1209600",
            "A panel session ends this long after sign-in, however active (default 14 days)."),
    Setting("SESSION_IDLE_SECONDS", "43200",
            "A panel session ends after this long without a request from its user (default "
            "12 h: a working shift; live pushes and polls do not count as use)."),
    Setting("PASSWORD_HASH_TIME_COST", "3",
            "Argon2id passes per password hash (default: RFC 9106's low-memory profile)."),
    Setting("PASSWORD_HASH_MEMORY_KIB", "65536",
            "Argon2id memory per password hash, in KiB (default 64 MiB, RFC 9106)."),
    Setting("PASSWORD_HASH_PARALLELISM", "4",
            "Argon2id lanes per password hash (default 4, RFC 9106). Stored hashes keep "
            "the costs they were made with."),
    Setting("PANEL_ORIGINS", "",
            "Origins allowed to open the live socket (comma-separated). Empty: the panel's own."),
    Setting("HTMX_URL", "", "Load htmx from this URL (a CDN) instead of static/vendor/."),
    Setting("POLL_SECONDS", "5", "How often pages poll while the live socket is down."),
    # ---- monitoring: metrics, stats, health ----
    Setting("METRICS_MINUTE_HOURS", "48",
            "Hours the per-minute metrics (counts, runtime and wait histograms) are kept."),
    Setting("METRICS_HOURLY_DAYS", "30", "Days the hourly roll-ups of those metrics are kept."),
    Setting("METRICS_PUBLIC", "0",
            "1: GET /metrics answers without a token (keep it on a private network)."),
    Setting("STATS_CACHE_SECONDS", "3",
            "Seconds the panel's and the API's stats are reused before Redis is read again."),
    Setting("HEALTH_ERROR_RATE_DEGRADED", "0.05",
            "Share of failed attempts over the last 5 minutes at which a queue is degraded."),
    Setting("HEALTH_ERROR_RATE_UNHEALTHY", "0.25",
            "Share of failed attempts over the last 5 minutes at which a queue is unhealthy."),
    Setting("HEALTH_OLDEST_WAITING_DEGRADED_SECONDS", "300",
            "Age of a queue's oldest waiting job at which the queue is degraded."),
    Setting("HEALTH_OLDEST_WAITING_UNHEALTHY_SECONDS", "1800",
            "Age of a queue's oldest waiting job at which the queue is unhealthy."),
    Setting("HEALTH_NO_WORKER_SECONDS", "60",
            "Seconds a queue may have waiting jobs and no live worker consuming it before it "
            "is unhealthy."),
    Setting("HEALTH_PAUSED_SECONDS", "3600",
            "Seconds a queue may stay paused before it is reported (degraded)."),
    Setting("HEALTH_DLQ_FULL_RATIO", "0.8",
            "Share of DLQ_MAX_RECORDS at which the DLQ is reported as near capacity."),
    Setting("HEALTH_REDIS_MEMORY_RATIO", "0.9",
            "Share of Redis maxmemory in use at which Redis is reported as near full."),
    Setting("HEALTH_REDIS_SLOW_MS", "100",
            "Redis PING time, in ms, at which Redis is reported as slow."),
    Setting("HEALTH_ERROR_RATE_MIN_ATTEMPTS", "10",
            "Attempts a queue must have run in the last 5 minutes before its error rate is "
            "judged (one failure of one attempt is not a 100% error rate)."),
    Setting("HEALTH_BACKLOG_GROWTH", "100",
            "Waiting jobs a queue may gain over 5 minutes, faster than it processes them, "
            "before it is reported (degraded)."),
    # ---- alerts ----
    Setting("ALERT_WEBHOOK_URLS", "",
            "Comma-separated URLs every alert is POSTed to (HMAC-signed JSON), besides the "
            "targets a rule names."),
    Setting("ALERT_WEBHOOK_SECRET", "",
            "HMAC-SHA256 key of alert webhooks. Empty: one derived from SECRET_KEY."),
    Setting("ALERT_MAIL_TO", "",
            "Comma-separated addresses every alert is mailed to, besides a rule's own."),
    Setting("ALERT_EVALUATE_SECONDS", "10", "How often the (single) alert evaluator runs."),
    Setting("ALERT_COOLDOWN_SECONDS", "900",
            "Default cool-down of a rule: a rule that fired does not fire again sooner."),
    Setting("ALERT_FAILURES", "10",
            "Default rule: this many failed attempts on one queue within ALERT_FAILURES_WINDOW."),
    Setting("ALERT_FAILURES_WINDOW", "300", "Window of the failed-attempts rule, in seconds."),
    Setting("ALERT_OLDEST_WAITING_SECONDS", "600",
            "Default rule: a queue's oldest waiting job is older than this."),
    Setting("ALERT_DLQ_GROWTH", "50",
            "Default rule: this many new DLQ records within ALERT_FAILURES_WINDOW."),
    # ---- scheduled system jobs ----
    Setting("SCHEDULES_ENABLED", "1",
            "1: workers run the scheduled system jobs (health check each minute, analytics "
            "hourly and daily, retention and DLQ maintenance every 5 minutes); exactly one "
            "worker runs each occurrence. 0: none runs (nor the DLQ's archiving and alerts)."),
    Setting("AUDIT_MAX_ENTRIES", "100000",
            "The audit log keeps about this many newest entries: the retention job trims "
            "older ones, and `flask audit verify` checks the chain from the oldest kept one."),
    Setting("RATE_LIMIT_DEFAULT", "600 per minute",
            "Requests a client address may make to each route of the panel and the API "
            "(flask-limiter notation); sign-in and actions have stricter limits of their own. "
            "An API call with a valid token counts against API_TOKEN_RATE_LIMIT instead."),
    Setting("API_TOKEN_RATE_LIMIT", "6000 per minute",
            "Requests one valid API token may make to each route of the API (flask-limiter "
            "notation), from any address; a token created with `--rate-limit` has its own. A "
            "wrong or unknown token counts against the address's RATE_LIMIT_DEFAULT."),
    Setting("OUTBOX_PATH", "var/outbox.sqlite3",
            "This host's local SQLite file: jobs accepted while Redis cannot take them (the "
            "outbox, drained into Redis when it returns) and health-log entries written "
            "meanwhile. Every web and worker process of a host shares it."),
    Setting("OUTBOX_DRAIN_SECONDS", "1",
            "How often every process looks for outbox jobs to drain into Redis."),
    Setting("BREAKER_FAILURES", "3",
            "Failed Redis calls in a row (unreachable, timed out, read-only, out of memory) "
            "after which a process stops trying Redis at enqueue and falls back at once."),
    Setting("BREAKER_RESET_SECONDS", "2",
            "Seconds the breaker stays open before one call probes Redis again."),
    Setting("SYSTEM_LOG_DAYS", "7",
            "Days the health log (mode switches, fallbacks, breaker, outbox) is kept."),
    Setting("EVENT_STREAMS_PER_TOKEN", "50",
            "Event streams (SSE or WebSocket, /api/v1/events) one API token, or one scoped "
            "stream token, may hold open at once across every web process; one more gets 429."),
    Setting("EVENTS_PING_SECONDS", "15",
            "An idle event stream sends a comment (SSE) or ping (WebSocket) this often, and "
            "checks then that its token is still valid."),
    Setting("AUTH_CACHE_SECONDS", "60",
            "Seconds a process trusts an API token or panel session it verified, without "
            "asking Redis again: callers stay signed in through a Redis outage, and a "
            "revocation reaches every other process within this time. 0: no cache."),
    Setting("HOST", "127.0.0.1", "Address `./run` binds the web app to."),
    Setting("PORT", "8000", "Port `./run` binds the web app to."),
    Setting("REDIS_PORT", "6380", "Port of the embedded Redis that `./run` starts."),
]


class Settings:
    """Settings read from an environment mapping (os.environ by default)."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        for setting in SETTINGS:
            setattr(self, setting.name.lower(), env.get(setting.env, setting.default))

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> str: ...  # one str attribute per setting

    def int(self, name: str) -> int:
        return int(getattr(self, name))

    def float(self, name: str) -> float:
        return float(getattr(self, name))

    def flag(self, name: str) -> bool:
        """An on/off setting: 1, true, yes or on (any case) turn it on; anything else off."""
        return getattr(self, name).strip().lower() in TRUE_WORDS


@lru_cache(maxsize=1)
def secret_key() -> str:
    """SECRET_KEY, or one generated once and kept in var/secret_key (shared by both roles)."""
    if settings().secret_key:
        return settings().secret_key
    return read_or_create_key(Path(__file__).resolve().parent.parent / "var" / "secret_key")


def read_or_create_key(path: Path) -> str:
    """The key kept in ``path`` (mode 0600), created with a random key if missing.

    Safe when several processes start at once: the key is written to a private temp file
    that is then hard-linked to ``path``; a link never replaces an existing file, so
    exactly one process wins and every process reads the winner's complete key.
    Raises RuntimeError if the file exists but is empty.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _link_new_key(path)
    _restrict(path)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty: delete it (a new key is made) or set SECRET_KEY")
    return key


def _link_new_key(path: Path) -> None:
    write_private(path, secrets.token_hex(32), replace=False)


def write_private(path: Path, text: str, *, replace: bool = True) -> None:
    """Write text to path, readable by this user only (0600 whatever the umask), whole or not
    at all: it is written to a private temp file beside path, then put in place.

    replace=False: only if path does not exist yet (a hard link never replaces a file, so
    of several processes racing exactly one wins and the others keep the winner's file).
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(temp, path)
        else:
            with contextlib.suppress(FileExistsError):  # another process won: use its file
                os.link(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _restrict(path: Path) -> None:
    """Tighten a key file left readable by others (made by an older version) to 0600."""
    if path.stat().st_mode & 0o077:
        with contextlib.suppress(OSError):
            path.chmod(0o600)


def derived_key(purpose: bytes) -> bytes:
    """A key for one purpose ("backstop-api-token" ...), derived from SECRET_KEY, so one
    purpose's MACs never verify as another's."""
    return _derived_key(secret_key(), purpose)


@lru_cache(maxsize=16)
def _derived_key(secret: str, purpose: bytes) -> bytes:
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def markdown_table() -> str:
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    rows += [f"| `{s.env}` | {f'`{s.default}`' if s.default else '(empty)'} | {s.help} |"
             for s in SETTINGS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
