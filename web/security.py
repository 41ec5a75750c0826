"""Response headers (CSP and friends), the socket's Origin check, and safe redirects."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from flask import Flask, request, url_for

from backstop.config import settings

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'; object-src 'none'")
UNSAFE_NEXT = re.compile(r"[\x00-\x20\x7f\\]")


def register_security(app: Flask) -> None:
    app.after_request(security_headers)


def security_headers(response):
    csp = CSP
    if settings().htmx_url:
        host = urlparse(settings().htmx_url)
        csp = CSP.replace("script-src 'self'", f"script-src 'self' {host.scheme}://{host.netloc}")
    response.headers.setdefault("Content-Security-Policy", csp)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def origin_allowed() -> bool:
    """Whether the request's Origin is the panel's own (or one of PANEL_ORIGINS)."""
    allowed = [o.strip() for o in settings().panel_origins.split(",") if o.strip()]
    allowed = allowed or [request.host_url.rstrip("/")]
    return request.headers.get("Origin") in allowed


def safe_next(target: str | None) -> str:
    """A path on this site to go on to; the overview for anything else (another site, a
    backslash browsers read as a slash, control characters that would split the header)."""
    if not target or not target.startswith("/") or UNSAFE_NEXT.search(target):
        return url_for("pages.overview_page")
    parts = urlparse(target)
    return url_for("pages.overview_page") if parts.netloc or parts.scheme else target
