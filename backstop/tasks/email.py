"""Email jobs: mail through SMTP_URL, one-time codes, notification fan-out.

SMTP_URL is ``smtp://user:pass@host:port`` (plain, ``?starttls=1`` to upgrade) or
``smtps://...`` (TLS from the first byte). Refusals with a 5xx code and bad credentials
fail permanently; connection problems and 4xx answers are retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import parse_qs, unquote, urlsplit

import redis

from .. import keys
from ..config import secret_key, settings
from ..contracts import EmailNotificationDispatch, EmailOtpSend, EmailSend
from ..errors import PermanentFailure
from ..jobs import JobContext, handler

INBOX_LIMIT = 200
OTP_MAX_TRIES = 5
TRUE_WORDS = ("1", "true", "yes", "on")


def smtp_connect(url: str, timeout: float) -> smtplib.SMTP:
    """Open an SMTP session for an smtp:// or smtps:// URL, upgraded and logged in.

    Raises PermanentFailure for a malformed URL or refused credentials.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise PermanentFailure(
            f"SMTP_URL must start with smtp:// or smtps://, not {parts.scheme!r}", code="smtp_url")
    host = parts.hostname or "localhost"
    if parts.scheme == "smtps":
        smtp = smtplib.SMTP_SSL(host, parts.port or 465, timeout=timeout,
                                context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(host, parts.port or 25, timeout=timeout)
    try:
        _upgrade_and_login(smtp, parts)
    except BaseException:
        smtp.close()
        raise
    return smtp


def _upgrade_and_login(smtp: smtplib.SMTP, parts) -> None:
    starttls = parse_qs(parts.query).get("starttls", ["0"])[0].lower() in TRUE_WORDS
    if starttls and parts.scheme == "smtp":
        smtp.starttls(context=ssl.create_default_context())
    if not parts.username:
        return
    try:
        smtp.login(unquote(parts.username), unquote(parts.password or ""))
    except smtplib.SMTPAuthenticationError as exc:
        raise PermanentFailure(
            f"SMTP server refused the credentials in SMTP_URL ({exc.smtp_code})",
            code="smtp_auth") from None


def send_message(message: EmailMessage, timeout: float) -> dict:
    """Send one message through SMTP_URL; return the addresses the server refused.

    Raises PermanentFailure on a 5xx refusal, ordinary SMTP/OS errors otherwise.
    """
    smtp = smtp_connect(settings().smtp_url, timeout)
    try:
        refused = smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        _raise_if_permanent(min(code for code, _ in exc.recipients.values()), "every recipient")
        raise
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        _raise_if_permanent(exc.smtp_code, "the message")
        raise
    finally:
        _quit(smtp)
    return {addr: f"{code} {reply!r}" for addr, (code, reply) in refused.items()}


def _raise_if_permanent(code: int, what: str) -> None:
    if 500 <= code < 600:
        raise PermanentFailure(f"SMTP server refused {what} with {code}", code="smtp_refused")


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def build_message(to: list[str], subject: str, text: str, *, html: str | None = None,
                  reply_to: str | None = None) -> EmailMessage:
    """A MIME message from MAIL_FROM: plain text, with an HTML alternative when given."""
    sender = settings().mail_from
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    if reply_to:
        message["Reply-To"] = reply_to
    message.set_content(text)
    if html:
        message.add_alternative(html, subtype="html")
    return message


@handler("email.send")
def send(payload: EmailSend, ctx: JobContext) -> dict:
    """Send a text (+ optional HTML) mail to every recipient."""
    message = build_message(payload.to, payload.subject, payload.text,
                            html=payload.html, reply_to=payload.reply_to)
    refused = send_message(message, ctx.remaining())
    return {"sent_to": [a for a in payload.to if a not in refused], "refused": refused,
            "message_id": message["Message-ID"]}


def _otp_digest(purpose: str, recipient: str, code: str) -> str:
    key = secret_key().encode()
    message = f"{purpose}\0{recipient.lower()}\0{code}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def issue_otp(r: redis.Redis, purpose: str, recipient: str) -> str:
    """Create a 6-digit code, store only its HMAC with OTP_TTL_SECONDS, return the code.

    A new code replaces the previous one for the same purpose and recipient.
    """
    code = f"{secrets.randbelow(1_000_000):06d}"
    key = keys.otp(purpose, recipient.lower())
    pipe = r.pipeline()
    pipe.delete(key)
    pipe.hset(key, mapping={"digest": _otp_digest(purpose, recipient, code), "tries": 0})
    pipe.expire(key, settings().int("otp_ttl_seconds"))
    pipe.execute()
    return code


def verify_otp(r: redis.Redis, purpose: str, to: str, code: str) -> bool:
    """True if ``code`` is the live code for purpose/recipient; a match consumes it.

    After OTP_MAX_TRIES wrong guesses the code is discarded.
    """
    key = keys.otp(purpose, to.lower())
    digest = r.hget(key, "digest")
    if not digest:
        return False
    if hmac.compare_digest(digest, _otp_digest(purpose, to, str(code).strip())):
        return r.delete(key) == 1
    if r.hincrby(key, "tries", 1) >= OTP_MAX_TRIES:
        r.delete(key)
    return False


@handler("email.otp.send")
def send_otp(payload: EmailOtpSend, ctx: JobContext) -> dict:
    """Mail a fresh one-time code; the code itself is never stored or returned."""
    ttl = settings().int("otp_ttl_seconds")
    code = issue_otp(ctx.redis, payload.purpose, payload.to)
    minutes = max(1, ttl // 60)
    text = (f"Your {payload.purpose} code is {code}.\n\n"
            f"It expires in {minutes} minute(s). If you did not ask for it, ignore this mail.")
    message = build_message([payload.to], f"Your {payload.purpose} code", text)
    send_message(message, ctx.remaining())
    return {"sent_to": payload.to, "purpose": payload.purpose, "expires_in": ttl}


@handler("email.notification.dispatch")
def dispatch_notification(payload: EmailNotificationDispatch, ctx: JobContext) -> dict:
    """Fan a notification out to its channels; a retried fan-out sends nothing twice."""
    result: dict = {}
    extra = payload.model_dump(include={"tenant_id", "actor_id"}, exclude_none=True)
    if "inbox" in payload.channels:
        result["inbox"] = _store_in_inbox(ctx, payload)
    if "email" in payload.channels:
        mail = {"to": [payload.email], "subject": payload.title, "text": payload.body, **extra}
        result["email"] = ctx.enqueue("email.send", mail, job_id=f"{ctx.job_id}:email")
    if "webhook" in payload.channels:
        hook = {"url": str(payload.webhook_url), "event": "notification", **extra,
                "data": {"user_id": payload.user_id, "title": payload.title,
                         "body": payload.body, "notification_id": ctx.job_id}}
        result["webhook"] = ctx.enqueue("plugins.webhook.deliver", hook,
                                        job_id=f"{ctx.job_id}:webhook")
    return result


def _store_in_inbox(ctx: JobContext, payload: EmailNotificationDispatch) -> bool:
    key = keys.notifications(payload.user_id)
    if any(json.loads(item).get("id") == ctx.job_id for item in ctx.redis.lrange(key, 0, -1)):
        return False
    entry = {"id": ctx.job_id, "title": payload.title, "body": payload.body,
             "created_at": time.time(), "read": False}
    pipe = ctx.redis.pipeline()
    pipe.lpush(key, json.dumps(entry))
    pipe.ltrim(key, 0, INBOX_LIMIT - 1)
    pipe.execute()
    return True
