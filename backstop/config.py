"""Every setting Backstop reads, in one place: name, default, environment variable, help.

The README's settings table is generated from SETTINGS (``python -m backstop.config``).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


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
    Setting("WEBHOOK_SECRET", "", "Default HMAC secret for webhooks that name none."),
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
    Setting("PANEL_ORIGINS", "",
            "Origins allowed to open the live socket (comma-separated). Empty: the panel's own."),
    Setting("HTMX_URL", "", "Load htmx from this URL (a CDN) instead of static/vendor/."),
    Setting("POLL_SECONDS", "5", "How often pages poll while the live socket is down."),
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

    def int(self, name: str) -> int:
        return int(getattr(self, name))

    def float(self, name: str) -> float:
        return float(getattr(self, name))


@lru_cache(maxsize=1)
def secret_key() -> str:
    """SECRET_KEY, or one generated once and kept in var/secret_key (shared by both roles)."""
    if settings().secret_key:
        return settings().secret_key
    path = Path(__file__).resolve().parent.parent / "var" / "secret_key"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


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
