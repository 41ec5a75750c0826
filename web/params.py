"""Request arguments checked once: a 400 that names the argument when one is bad (a 422
with "fields" when the value is well formed but not one the API takes)."""

from __future__ import annotations

import math
import re
from typing import NoReturn, TypeVar

from flask import abort, jsonify, make_response, request
from pydantic import BaseModel, ValidationError

from backstop.dlq import Filters
from web.auth import audit_note

CURSOR = re.compile(r"\d+(\.\d+)?(e[+-]?\d+)?:[!-~]{1,200}")  # always fullmatch
PAGING_ARGS = ("cursor", "limit", "partial")
Model = TypeVar("Model", bound=BaseModel)


def json_body() -> dict:
    """The request's JSON object ({} when there is no body)."""
    body = request.get_json(silent=True)
    if body is None and request.data:
        abort(400, "the body must be a JSON object")
    if body is not None and not isinstance(body, dict):
        abort(400, "the body must be a JSON object")
    return body or {}


def filters_from(source: dict) -> Filters:
    """DLQ filters from query arguments (paging arguments are not filters)."""
    return Filters.parse({k: v for k, v in source.items() if k not in PAGING_ARGS})


def body_filter(body: dict) -> Filters:
    """The "filter" of a JSON body: an object ({} or absent selects every record)."""
    value = body.get("filter")
    value = {} if value is None else value  # false, 0 or "" is a mistake, not "every record"
    if not isinstance(value, dict):
        abort(400, '"filter" must be a JSON object of filters')
    return Filters.parse(value)


def checked_limit(default: int = 50, most: int = 1000) -> int:
    """?limit=, a whole number from 1 to most; a 400 that says so otherwise."""
    raw = request.args.get("limit")
    whole = raw is not None and raw.isascii() and raw.isdigit() and len(raw) < 6
    limit = default if raw is None else int(raw) if whole else 0
    if not 1 <= limit <= most:
        abort(400, f"limit must be a whole number from 1 to {most}")
    return limit


def valid_cursor(cursor: str | None) -> bool:
    """Whether a cursor is absent or shaped like one a previous page gave."""
    return cursor is None or bool(CURSOR.fullmatch(cursor))


def checked_cursor(message: str) -> str | None:
    """?cursor= as given by a previous page; a 400 with message when it is not one."""
    cursor = request.args.get("cursor") or None
    if not valid_cursor(cursor):
        abort(400, message)
    return cursor


def refuse_field(field: str, message: str, status: int = 422) -> NoReturn:
    """Answer {"error", "fields": [{"field", "message"}]} with status (raises)."""
    refuse(status, message, fields=[{"field": field, "message": message}])


def refuse(status: int, message: str, headers: dict | None = None, **extra) -> NoReturn:
    """Answer {"error", ...extra} with status and headers (raises)."""
    abort(make_response(jsonify(error=message, **extra), status, headers or {}))


def parsed(model: type[Model], body: dict) -> Model:
    """body as model (a request body's model: see its own strictness); a 422 naming each
    bad field otherwise, noted in the audit entry."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)",
                   "message": e["msg"]} for e in exc.errors()]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        audit_note(reason=message)
        refuse(422, message, fields=errors)


def checked_since() -> float | None:
    """?since=, unix seconds (a number); None when absent; a 422 naming "since" otherwise."""
    raw = request.args.get("since")
    if raw is None or raw == "":
        return None
    try:
        since = float(raw)
    except ValueError:
        since = math.nan
    if not math.isfinite(since) or since < 0:
        refuse_field("since", f"since must be a time in unix seconds (e.g. 1700000000.5), "
                              f"not {raw[:40]!r}")
    return since


def checked_whole(name: str, default: int) -> int:
    """?name=, a whole number (default when absent); a 422 naming it otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) < 10):
        refuse_field(name, f"{name} must be a whole number, not {raw[:40]!r}")
    return int(raw)
