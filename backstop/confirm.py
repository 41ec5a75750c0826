"""Double confirmation for destructive actions: a single-use token, valid 60 s, bound to the
actor, the action and exactly what it touches."""

from __future__ import annotations

import hashlib
import json
import secrets

from . import keys
from .connection import client

SECONDS = 60


def _binding(actor: str, action: str, scope: dict) -> str:
    scope_text = json.dumps(scope, sort_keys=True, default=str)
    return hashlib.sha256(f"{actor}\0{action}\0{scope_text}".encode()).hexdigest()


def issue(actor: str, action: str, scope: dict) -> str:
    """A token that confirms ``action`` on ``scope`` for ``actor`` once, within 60 s."""
    token = secrets.token_urlsafe(24)
    client().set(keys.confirmation(token), _binding(actor, action, scope), ex=SECONDS)
    return token


def consume(token: str, actor: str, action: str, scope: dict) -> bool:
    """Whether the token was issued for exactly this; it is spent either way."""
    stored = client().getdel(keys.confirmation(token or "-"))
    return stored is not None and secrets.compare_digest(stored, _binding(actor, action, scope))
