"""Delivering alerts to people: signed webhooks and mail, straight from the evaluating process.

Decisions:

- Never through a Backstop queue: an alert about a broken queue must not wait in one. Each
  target gets its own background thread, so a slow or dead target stalls neither the
  evaluator nor the other targets.
- Targets: ALERT_WEBHOOK_URLS and ALERT_MAIL_TO (every alert, so a deployment alerts without
  anyone opening the panel) plus the rule's own, each once.
- A webhook is a POST of JSON ``{event: fired|resolved, alert_id, rule, kind, queue, value,
  threshold, message, started_at, resolved_at, links}`` with ``X-Backstop-Timestamp`` and
  ``X-Backstop-Signature: t=<ts>,v1=<hex HMAC-SHA256(key, "<ts>.<body>")>`` (the format of
  plugin webhooks: backstop.tasks.plugins.verify_signature checks it). The key is
  ALERT_WEBHOOK_SECRET, else HMAC-SHA256(SECRET_KEY, "backstop-alert-webhook") as hex
  (``signing_key()``). It goes through backstop.outbound (internal addresses refused unless
  allowed), redirects are not followed, and 2xx is success.
- A failed attempt is retried after RETRY_DELAYS (1, 4, 15 s); a refused destination, a
  4xx other than 408/429, or a mail server's 5xx refusal is not retried.
- Every attempt is recorded (capped list, shown on the Alerts page) with the target's
  address shown without its path or credentials (a Slack-style URL's path is its secret);
  each target's outcome is logged once, without secrets.
- Links point at the panel: the first of PANEL_ORIGINS when set, else bare paths.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from urllib.parse import urlsplit

import redis
import requests

from . import keys, outbound
from .config import derived_key, settings
from .connection import client
from .errors import PermanentFailure
from .redaction import redact_text

log = logging.getLogger("backstop.alerts")

RETRY_DELAYS = (1.0, 4.0, 15.0)
DELIVERY_LENGTH = 200
MAIL_TIMEOUT = 30.0
USER_AGENT = "Backstop-Alerts/1"
SIGNATURE_HEADER = "X-Backstop-Signature"
TIMESTAMP_HEADER = "X-Backstop-Timestamp"
RETRYABLE_4XX = (408, 425, 429)

_pending: set[threading.Thread] = set()
_pending_lock = threading.Lock()


class Undelivered(Exception):
    """One attempt failed; ``retry`` says whether another could succeed."""

    def __init__(self, detail: str, retry: bool = True):
        super().__init__(detail)
        self.retry = retry


def _listed(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def webhook_targets(rule) -> list[str]:
    """ALERT_WEBHOOK_URLS and the rule's webhooks, each once."""
    return list(dict.fromkeys([*_listed(settings().alert_webhook_urls),
                               *(rule.webhooks if rule else [])]))


def mail_targets(rule) -> list[str]:
    """ALERT_MAIL_TO and the rule's addresses, each once."""
    return list(dict.fromkeys([*_listed(settings().alert_mail_to),
                               *(rule.mail_to if rule else [])]))


def shown_url(url: str) -> str:
    """A URL as the panel and the logs show it: scheme, host and port; the rest elided."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else "/"
    return f"{parts.scheme}://{host}{port}{rest}"


def signing_key() -> str:
    """The key alert webhooks are signed with (see the module docstring)."""
    return settings().alert_webhook_secret or derived_key(b"backstop-alert-webhook").hex()


def links(queue: str) -> dict:
    """Where in the panel a person looks at the alert and its queue."""
    origins = _listed(settings().panel_origins)
    base = origins[0].rstrip("/") if origins else ""
    return {"alerts": f"{base}/alerts", "queue": f"{base}/queues/{queue}"}


def body_of(alert: dict) -> str:
    """The JSON a webhook receives."""
    fields = ("rule", "kind", "queue", "value", "threshold", "message", "started_at",
              "resolved_at")
    body = {"event": alert["event"], "alert_id": alert["id"],
            **{name: alert.get(name) for name in fields}, "links": links(alert["queue"])}
    return json.dumps(body, separators=(",", ":"))


def signed_headers(body: str, timestamp: int, delivery: str, event: str) -> dict:
    from .tasks.plugins import sign

    return {"Content-Type": "application/json", "User-Agent": USER_AGENT,
            "X-Backstop-Event": f"alert.{event}", "X-Backstop-Delivery": delivery,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(signing_key(), timestamp, body)}


# ---- delivery ----
def deliver(alert: dict, rule) -> list[threading.Thread]:
    """Send a fired or resolved alert to every target of its rule, each in a background
    thread; return the threads (wait() waits for every one)."""
    threads = [_start(_deliver_webhook, alert, url) for url in webhook_targets(rule)]
    recipients = mail_targets(rule)
    if recipients:
        threads.append(_start(_deliver_mail, alert, recipients))
    return threads


def wait(timeout: float = 60.0) -> bool:
    """Wait for the deliveries in flight in this process; True if none is left."""
    deadline = time.monotonic() + timeout
    while True:
        with _pending_lock:
            threads = list(_pending)
        if not threads:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        threads[0].join(remaining)


def _start(target, *args) -> threading.Thread:
    def run() -> None:
        try:
            target(*args)
        except Exception:  # a delivery thread must say why it died
            log.exception("alert delivery failed unexpectedly")
        finally:
            with _pending_lock:
                _pending.discard(threading.current_thread())

    thread = threading.Thread(target=run, name="alert-delivery", daemon=True)
    with _pending_lock:
        _pending.add(thread)
    thread.start()
    return thread


def _attempts(alert: dict, channel: str, shown: str, send) -> None:
    """Call send() until it succeeds, is refused for good, or the retries are spent;
    record every attempt and log the outcome once."""
    detail = ""
    for attempt, delay in enumerate((0.0, *RETRY_DELAYS), 1):
        time.sleep(delay)
        started = time.monotonic()
        try:
            detail = send()
        except Undelivered as exc:
            detail = str(exc)
            _record(alert, channel, shown, attempt, False, detail, started)
            if not exc.retry:
                break
            continue
        _record(alert, channel, shown, attempt, True, detail, started)
        log.info("alert %s %s: %s to %s delivered (attempt %d)", alert["id"], alert["event"],
                 channel, shown, attempt)
        return
    log.warning("alert %s %s: %s to %s NOT delivered after %d attempt(s): %s", alert["id"],
                alert["event"], channel, shown, attempt, detail)


def _deliver_webhook(alert: dict, url: str) -> None:
    body = body_of(alert)
    delivery = uuid.uuid4().hex

    def send() -> str:
        headers = signed_headers(body, int(time.time()), delivery, alert["event"])
        return _post(url, body, headers)

    _attempts(alert, "webhook", shown_url(url), send)


def _post(url: str, body: str, headers: dict) -> str:
    timeout = settings().float("webhook_timeout_seconds")
    try:
        with outbound.session() as http:
            response = http.post(url, data=body.encode(), headers=headers, timeout=timeout,
                                 allow_redirects=False)
    except outbound.DestinationRefused as exc:
        raise Undelivered(f"refused: {exc}", retry=False) from None
    except requests.Timeout:
        raise Undelivered(f"no answer within {timeout:g} s") from None
    except requests.RequestException as exc:
        raise Undelivered(f"unreachable ({type(exc).__name__})") from None
    status = response.status_code
    if 200 <= status < 300:
        return f"answered {status}"
    retry = status >= 500 or status in RETRYABLE_4XX
    raise Undelivered(f"answered {status}", retry=retry)


def _deliver_mail(alert: dict, recipients: list[str]) -> None:
    from .tasks.email import build_message, send_message

    subject, text = mail_text(alert)

    def send() -> str:
        try:
            refused = send_message(build_message(recipients, subject, text), MAIL_TIMEOUT)
        except PermanentFailure as exc:
            raise Undelivered(redact_text(str(exc)), retry=False) from None
        except Exception as exc:  # smtplib and socket errors: try again
            raise Undelivered(f"{type(exc).__name__}: {redact_text(str(exc))[:200]}") from None
        return f"refused by {len(refused)} recipient(s)" if refused else "accepted"

    _attempts(alert, "mail", ", ".join(recipients), send)


def mail_text(alert: dict) -> tuple[str, str]:
    """Subject and plain-text body of an alert's mail."""
    state = "FIRING" if alert["event"] == "fired" else "RESOLVED"
    subject = f"[Backstop] {state}: {alert['rule']} on {alert['queue']}"
    where = links(alert["queue"])
    lines = [alert["message"], "", f"rule: {alert['rule']} ({alert['kind']})",
             f"queue: {alert['queue']}", f"value: {alert['value']}",
             f"threshold: {alert['threshold']}",
             f"started: {_utc(alert['started_at'])}"]
    if alert.get("resolved_at"):
        lines.append(f"resolved: {_utc(alert['resolved_at'])}")
    lines += ["", f"Alerts: {where['alerts']}", f"Queue: {where['queue']}"]
    return subject, "\n".join(lines)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _record(alert: dict, channel: str, target: str, attempt: int, ok: bool, detail: str,
            started: float) -> None:
    item = {"t": time.time(), "alert_id": alert["id"], "event": alert["event"],
            "rule": alert["rule"], "queue": alert["queue"], "channel": channel,
            "target": target, "attempt": attempt, "ok": ok, "detail": detail,
            "ms": round((time.monotonic() - started) * 1000, 1)}
    try:
        pipe = client().pipeline()
        pipe.lpush(keys.alert_deliveries(), json.dumps(item))
        pipe.ltrim(keys.alert_deliveries(), 0, DELIVERY_LENGTH - 1)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("alert %s: a delivery attempt was not recorded: %s", alert["id"], exc)
