"""Batching and SCAN helpers for repair and maintenance work (never KEYS)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import islice

import redis

CHUNK = 500


def glob_escape(text: str) -> str:
    """``text`` with the glob metacharacters of SCAN MATCH escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def chunks(items: Iterable, size: int = CHUNK) -> Iterator[list]:
    """Consecutive lists of at most ``size`` items."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def scan_prefix(r: redis.Redis, prefix: str, type_: str | None = None) -> Iterator[str]:
    """Every key starting with ``prefix`` (SCAN, optionally of one Redis type)."""
    return r.scan_iter(match=glob_escape(prefix) + "*", count=CHUNK, _type=type_)


# ---- cache ----
