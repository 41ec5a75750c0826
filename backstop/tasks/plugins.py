"""Plugin jobs: signed webhook delivery, webhook subscriptions and event fan-out, plugins.

A delivery is a POST of ``{"event", "data", "delivery", "timestamp"}`` with the headers
``X-Backstop-Event``, ``X-Backstop-Delivery`` and, when a secret is known,
``X-Backstop-Signature: t=<unix ts>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
Receivers check it with :func:`verify_signature`. Deliveries to internal addresses are
refused (:mod:`backstop.outbound`) and redirects are not followed.

Applications add plugins with :func:`register_plugin` in a module listed in
BACKSTOP_TASK_MODULES; ``plugins.execute`` runs them by name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import redis
import requests
from pydantic import AnyHttpUrl, TypeAdapter

from .. import keys, outbound
from ..config import settings
from ..contracts import PluginsEventDispatch, PluginsExecute, PluginsWebhookDeliver
from ..errors import PermanentFailure
from ..jobs import JobContext, handler

SIGNATURE_HEADER = "X-Backstop-Signature"
USER_AGENT = "Backstop-Webhooks/1"
EXCERPT = 200
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")  # always fullmatch

Plugin = Callable[[dict, JobContext], Any]
PLUGINS: dict[str, Plugin] = {}
URL = TypeAdapter(AnyHttpUrl)  # compares URLs as the delivery contract normalises them


class WebhookError(Exception):
    """A delivery that may succeed later (network error, timeout, non-2xx answer)."""


def sign(secret: str, timestamp: int, body: str | bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    text = body.decode() if isinstance(body, bytes) else body
    mac = hmac.new(secret.encode(), f"{int(timestamp)}.{text}".encode(), hashlib.sha256)
    return f"t={int(timestamp)},v1={mac.hexdigest()}"


def verify_signature(secret: str, header: str, body: str | bytes, tolerance: int = 300,
                     now: float | None = None) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds of now."""
    fields = [part.strip().partition("=") for part in (header or "").split(",")]
    stamps = [value for name, _, value in fields if name == "t"]
    candidates = [value for name, _, value in fields if name == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not candidates:
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, value) for value in candidates)


# ---- subscriptions ----
def subscribe(r: redis.Redis, url: str, events: list[str], secret: str | None = None) -> str:
    """Subscribe ``url`` to events (``"*"`` = every event); return the subscription id.

    Raises ValueError for a non-http(s) URL or an empty/invalid event list.
    """
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ValueError(f"webhook url must be an http(s) URL, not {url!r}")
    bad = [e for e in events if e != "*" and not NAME_PATTERN.fullmatch(e)]
    if not events or bad:
        raise ValueError(f"events must be event names or '*'; invalid: {bad or 'empty list'}")
    sub_id = f"wh_{secrets.token_hex(8)}"
    record = {"id": sub_id, "url": url, "events": sorted(set(events)), "secret": secret,
              "created_at": time.time()}
    r.hset(keys.webhooks(), sub_id, json.dumps(record))
    return sub_id


def unsubscribe(r: redis.Redis, sub_id: str) -> bool:
    """Remove a subscription; True if it existed."""
    return r.hdel(keys.webhooks(), sub_id) == 1


def _load_subscriptions(r: redis.Redis) -> list[dict]:
    records = [json.loads(raw) for raw in r.hvals(keys.webhooks())]
    return sorted(records, key=lambda rec: rec["created_at"])


def subscriptions(r: redis.Redis) -> list[dict]:
    """Every subscription, oldest first: id, url, events, created_at, signed (secrets hidden)."""
    return [{**{k: v for k, v in rec.items() if k != "secret"}, "signed": bool(rec["secret"])}
            for rec in _load_subscriptions(r)]


def _subscription(r: redis.Redis, sub_id: str) -> dict | None:
    raw = r.hget(keys.webhooks(), sub_id)
    return json.loads(raw) if raw else None


# ---- delivery ----
def _delivery_secret(payload: PluginsWebhookDeliver, ctx: JobContext) -> str | None:
    """The payload's own secret; else, for a subscription's delivery, the subscription's
    secret or WEBHOOK_SECRET. A stored secret signs only a delivery to its subscription's own
    URL: whoever may enqueue a delivery must not get a signature for a body of their choosing
    sent to their own server (they could replay it to the real receiver).

    Raises PermanentFailure when webhook_id names a missing subscription or another URL.
    """
    if payload.secret or not payload.webhook_id:
        return payload.secret or None
    sub = _subscription(ctx.redis, payload.webhook_id)
    if sub is None:
        raise PermanentFailure(f"webhook subscription {payload.webhook_id} does not exist "
                               "(any more): not delivered", code="webhook_unknown")
    if str(URL.validate_python(sub["url"])) != str(payload.url):
        raise PermanentFailure(
            f"webhook subscription {payload.webhook_id} is for another URL; its secret signs "
            "only deliveries to that URL: not delivered", code="webhook_url_mismatch")
    return sub.get("secret") or settings().webhook_secret or None


def _headers(payload: PluginsWebhookDeliver, ctx: JobContext, secret, body: str, ts: int):
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Backstop-Event": payload.event, "X-Backstop-Delivery": ctx.job_id}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, ts, body)
    return headers


def _post(url: str, body: str, headers: dict, timeout: float) -> requests.Response:
    """POST once through outbound's guard; redirects are not followed (see _check_answer)."""
    try:
        with outbound.session() as http:
            return http.post(url, data=body.encode(), headers=headers, timeout=timeout,
                             allow_redirects=False)
    except outbound.DestinationRefused as exc:
        raise PermanentFailure(f"webhook {url} refused: {exc}", code="webhook_internal") from None
    except requests.Timeout:
        raise WebhookError(f"webhook {url} did not answer within {timeout:.1f} s") from None
    except requests.RequestException as exc:
        raise WebhookError(f"webhook {url} unreachable: {exc}") from None


def _check_answer(response: requests.Response, url: str, ctx: JobContext, webhook_id) -> None:
    if 200 <= response.status_code < 300:
        return
    if response.is_redirect:
        raise _redirect_failure(response, url)
    excerpt = response.text[:EXCERPT]
    if response.status_code == 410:
        removed = webhook_id is not None and unsubscribe(ctx.redis, webhook_id)
        note = f"; subscription {webhook_id} removed" if removed else ""
        raise PermanentFailure(f"webhook {url} answered 410 Gone{note}", code="webhook_gone")
    raise WebhookError(f"webhook {url} answered {response.status_code}: {excerpt}")


def _redirect_failure(response: requests.Response, url: str) -> Exception:
    """Redirects are not followed; one to an internal address fails permanently."""
    target = urljoin(url, response.headers["Location"])
    try:
        outbound.check_url(target)
    except outbound.DestinationRefused as exc:
        return PermanentFailure(
            f"webhook {url} redirected to an internal address, refused: {exc}",
            code="webhook_internal")
    return WebhookError(f"webhook {url} answered {response.status_code} redirecting to "
                        f"{target[:EXCERPT]}; redirects are not followed: update the URL")


@handler("plugins.webhook.deliver")
def deliver_webhook(payload: PluginsWebhookDeliver, ctx: JobContext) -> dict:
    """POST the signed event; non-2xx fails (410 Gone permanently).

    An internal destination (backstop.outbound), directly or by redirect, fails permanently.
    """
    url, ts = str(payload.url), int(time.time())
    secret = _delivery_secret(payload, ctx)
    body = json.dumps({"event": payload.event, "data": payload.data,
                       "delivery": ctx.job_id, "timestamp": ts}, separators=(",", ":"))
    timeout = min(settings().float("webhook_timeout_seconds"), ctx.remaining())
    started = time.perf_counter()
    response = _post(url, body, _headers(payload, ctx, secret, body, ts), timeout)
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    _check_answer(response, url, ctx, payload.webhook_id)
    result = {"status": response.status_code, "ms": elapsed, "signed": bool(secret)}
    if not secret:
        result["note"] = ("sent unsigned: no secret in the payload, and no subscription "
                          "(whose secret or WEBHOOK_SECRET would sign it)")
    return result


@handler("plugins.event.dispatch")
def dispatch_event(payload: PluginsEventDispatch, ctx: JobContext) -> dict:
    """Enqueue one delivery per subscription to the event (or to ``*``)."""
    targets = [sub for sub in _load_subscriptions(ctx.redis)
               if payload.event in sub["events"] or "*" in sub["events"]]
    extra = payload.model_dump(include={"tenant_id", "actor_id"}, exclude_none=True)
    for sub in targets:
        delivery = {"url": sub["url"], "event": payload.event, "data": payload.data,
                    "webhook_id": sub["id"], **extra}
        ctx.enqueue("plugins.webhook.deliver", delivery, job_id=f"{ctx.job_id}:{sub['id']}")
    return {"delivered_to": len(targets), "webhooks": [sub["id"] for sub in targets]}


# ---- plugins ----
def register_plugin(name: str) -> Callable[[Plugin], Plugin]:
    """Register ``fn(args: dict, ctx: JobContext) -> result`` as plugin ``name``."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"plugin name {name!r} must match {NAME_PATTERN.pattern}")

    def decorate(fn: Plugin) -> Plugin:
        PLUGINS[name] = fn
        return fn

    return decorate


@register_plugin("echo")
def echo(args: dict, ctx: JobContext) -> dict:
    """Return the arguments unchanged (a smoke test of the plugin machinery)."""
    return args


@handler("plugins.execute")
def execute(payload: PluginsExecute, ctx: JobContext) -> Any:
    """Run a registered plugin with its args. Unknown plugin: PermanentFailure."""
    plugin = PLUGINS.get(payload.plugin)
    if plugin is None:
        known = ", ".join(sorted(PLUGINS)) or "none"
        raise PermanentFailure(f"unknown plugin {payload.plugin!r}; registered plugins: {known}",
                               code="unknown_plugin")
    return plugin(dict(payload.args), ctx)
