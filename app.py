"""The web role: create_app() and every route, each a few lines over the core."""

from __future__ import annotations

from functools import wraps

import click
import redis
from flask import (
    Flask,
    Response,
    abort,
    g,
    jsonify,
    make_response,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from backstop import audit, dlq, export, producers, registry, replay, tokens
from backstop.config import secret_key
from backstop.contracts import QUEUES, queue_configs
from backstop.dlq import DlqError, FilterError, Filters
from backstop.errors import BackstopError, PayloadError, UnknownJob
from backstop.jobs import load_handlers


def create_app() -> Flask:
    load_handlers()
    app = Flask(__name__)
    app.config["SECRET_KEY"] = secret_key()
    app.register_error_handler(redis.ConnectionError, redis_unavailable)
    app.register_error_handler(redis.TimeoutError, redis_unavailable)
    for code in (400, 401, 403, 404, 405):
        app.register_error_handler(code, json_error)
    app.register_error_handler(BackstopError, api_error)
    register_routes(app)
    register_dlq_routes(app)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(audit_cli)
    return app


def api_error(exc: BackstopError):
    """A refused request as JSON: which field or which rule, and the status that fits."""
    if isinstance(exc, UnknownJob):
        return jsonify(error=str(exc), fields=[{"field": "job", "message": str(exc)}]), 422
    if isinstance(exc, (PayloadError, FilterError)):
        return jsonify(error=str(exc), fields=exc.errors), 422
    if isinstance(exc, DlqError):
        return jsonify(error=str(exc), code=exc.code), exc.status
    return jsonify(error=str(exc)), 400


def redis_unavailable(exc):
    response = jsonify(error="Redis is unreachable; nothing was written. Try again shortly.")
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def json_error(exc):
    if not request.path.startswith("/api/"):
        return exc
    response = jsonify(error=exc.description)
    response.status_code = exc.code
    if exc.code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="backstop"'
    return response


def require_token(role: str):
    """Decorator: the request carries a bearer token whose role is at least role."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            info = tokens.verify(header.removeprefix("Bearer ").strip())
            if info is None:
                abort(401, "a valid bearer token is required (flask --app app tokens create)")
            if not tokens.allows(info["role"], role):
                abort(403, f"this needs the {role} role; the token has {info['role']}")
            g.token = info
            g.actor = f"token:{info['name']}"
            return view(*args, **kwargs)

        return wrapped

    return decorate


def audited(action: str):
    """Decorator: write the request and its result to the audit log (after require_token)."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            try:
                response = make_response(view(*args, **kwargs))
            except BackstopError as exc:
                response = make_response(api_error(exc))
            target = next(iter(kwargs.values()), "")
            result = "ok" if response.status_code < 400 else f"refused {response.status_code}"
            audit.record(g.actor, action, str(target), summary=request_summary(),
                         ip=request.remote_addr or "", user_agent=request.user_agent.string,
                         result=result)
            return response

        return wrapped

    return decorate


def request_summary() -> dict:
    body = request.get_json(silent=True) if request.is_json else None
    return {"method": request.method, "path": request.path, "args": request.args.to_dict(),
            "body": body}


def register_routes(app: Flask) -> None:
    app.add_url_rule("/", view_func=index)
    app.add_url_rule("/api/v1/jobs", view_func=create_job, methods=["POST"])
    app.add_url_rule("/api/v1/jobs/<job_id>", view_func=show_job)


def index():
    """A plain status page until the owner panel lands."""
    return render_template("index.html", counts=registry.counts(), queues=QUEUES,
                           configs=queue_configs())


@require_token("operator")
def create_job():
    """Enqueue a job: {"job", "payload", "job_id"?, "delay"?, "priority"?} -> 202."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("job"), str):
        abort(400, 'send a JSON object with "job" (a job name) and "payload" (an object)')
    job_id = body.get("job_id") or request.headers.get("Idempotency-Key")
    try:
        job_id, created = producers.submit(body["job"], body.get("payload", {}), job_id=job_id,
                                           delay=body.get("delay"), priority=body.get("priority"))
    except UnknownJob as exc:
        return jsonify(error=str(exc), fields=[{"field": "job", "message": str(exc)}]), 422
    except PayloadError as exc:
        return jsonify(error=str(exc), fields=exc.errors), 422
    location = url_for("show_job", job_id=job_id)
    return jsonify(id=job_id, created=created, location=location), 202, {"Location": location}


@require_token("viewer")
def show_job(job_id: str):
    """The JSON record of one job."""
    job = registry.get_job(job_id)
    if job is None:
        abort(404, f"no job {job_id!r} (never enqueued, or removed by retention)")
    return jsonify(job)


@click.group("tokens")
def tokens_cli():
    """Manage API tokens."""


@tokens_cli.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(tokens.ROLES), default="operator", show_default=True)
def create_token(name: str, role: str):
    """Create a token and print it once."""
    click.echo(tokens.create(name, role))


@tokens_cli.command("list")
def list_tokens():
    """List token names and roles."""
    for info in tokens.listing():
        click.echo(f"{info['name']}\t{info['role']}")


@tokens_cli.command("revoke")
@click.argument("name")
def revoke_token(name: str):
    """Revoke every token with this name."""
    click.echo(f"revoked {tokens.revoke(name)} token(s)")


# ---- the dead-letter queue API (read: viewer, manage: operator, delete: owner) ----
def register_dlq_routes(app: Flask) -> None:
    rules = [
        ("/api/v1/dlq", list_dead_letters, ["GET"]),
        ("/api/v1/dlq/analytics", dlq_analytics, ["GET"]),
        ("/api/v1/dlq/trends", dlq_trends, ["GET"]),
        ("/api/v1/dlq/fingerprints", dlq_fingerprints, ["GET"]),
        ("/api/v1/dlq/export.<fmt>", export_dead_letters, ["GET"]),
        ("/api/v1/dlq/clear", clear_dead_letters, ["POST"]),
        ("/api/v1/dlq/bulk/replay", bulk_replay, ["POST"]),
        ("/api/v1/dlq/bulk/delete", bulk_delete, ["POST"]),
        ("/api/v1/dlq/<record_id>", show_dead_letter, ["GET"]),
        ("/api/v1/dlq/<record_id>", delete_dead_letter, ["DELETE"]),
        ("/api/v1/dlq/<record_id>/replay", replay_dead_letter, ["POST"]),
        ("/api/v1/dlq/<record_id>/preview", preview_dead_letter_edit, ["POST"]),
    ]
    for rule, view, methods in rules:
        app.add_url_rule(rule, view_func=view, methods=methods,
                         endpoint=f"{view.__name__}")


def json_body() -> dict:
    body = request.get_json(silent=True)
    if body is None and request.data:
        abort(400, "the body must be a JSON object")
    if body is not None and not isinstance(body, dict):
        abort(400, "the body must be a JSON object")
    return body or {}


def filters_from(source: dict) -> Filters:
    return Filters.parse({k: v for k, v in source.items() if k not in ("cursor", "limit")})


@require_token("viewer")
def list_dead_letters():
    """A page of DLQ records: filters and search in the query string, ?cursor= continues."""
    page = dlq.page(filters_from(request.args.to_dict()), cursor=request.args.get("cursor"),
                    limit=request.args.get("limit", 50, type=int))
    return jsonify(items=[_summary(i) for i in page.items], next_cursor=page.next_cursor,
                   total=page.total, complete=page.complete, scanned=page.scanned)


def _summary(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("stack", "payload")}


@require_token("viewer")
@audited("dlq.view")
def show_dead_letter(record_id: str):
    """One record with payload (redacted), stack and lineage (a sensitive read: audited)."""
    record = dlq.detail(record_id)
    if record is None:
        abort(404, f"no dead-letter record {record_id!r}")
    return jsonify(record)


@require_token("operator")
@audited("dlq.replay")
def replay_dead_letter(record_id: str):
    """Replay one record: {"queue"?, "payload"?} (an edited payload is validated)."""
    body = json_body()
    done = replay.replay(record_id, actor=g.actor, queue=body.get("queue"),
                         payload=body.get("payload"))
    return jsonify(done), 202


@require_token("operator")
def preview_dead_letter_edit(record_id: str):
    """Validate an edited payload and show its diff against the original; commits nothing."""
    payload = json_body().get("payload")
    if not isinstance(payload, dict):
        abort(400, 'send {"payload": {...}}')
    return jsonify(replay.preview_edit(record_id, payload))


@require_token("owner")
@audited("dlq.delete")
def delete_dead_letter(record_id: str):
    """Delete one record."""
    if not replay.delete([record_id]):
        abort(404, f"no dead-letter record {record_id!r}")
    return jsonify(deleted=record_id)


def _bulk(action: str):
    body = json_body()
    ids = body.get("ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        abort(400, '"ids" must be a list of record ids')
    if ids is None and not isinstance(body.get("filter"), dict):
        abort(400, 'send "ids": [...] or "filter": {...} ({} selects every record)')
    flt = None if ids is not None else Filters.parse(body["filter"])
    results = replay.bulk(action, actor=g.actor, ids=ids, flt=flt)
    return jsonify(results=results, count=len(results))


@require_token("operator")
@audited("dlq.bulk_replay")
def bulk_replay():
    """Replay selected ids or every record a filter selects; a result per id."""
    return _bulk("replay")


@require_token("owner")
@audited("dlq.bulk_delete")
def bulk_delete():
    """Delete selected ids or every record a filter selects; a result per id."""
    return _bulk("delete")


@require_token("owner")
@audited("dlq.clear")
def clear_dead_letters():
    """Clear in two calls: {"filter"} answers the count and a token; {"filter", "token"}
    clears."""
    body = json_body()
    flt = Filters.parse(body.get("filter") or {})
    if not body.get("token"):
        return jsonify(replay.clear_preview(g.actor, flt))
    return jsonify(replay.clear(g.actor, flt, body["token"]))


@require_token("viewer")
def dlq_analytics():
    """Totals by queue, job, error type, reason, code, status and replay status."""
    return jsonify(dlq.analytics())


@require_token("viewer")
def dlq_trends():
    """Failures per hour over ?hours= 1, 6, 12, 24 or 48."""
    return jsonify(dlq.trends(request.args.get("hours", 24, type=int)))


@require_token("viewer")
def dlq_fingerprints():
    """Failure groups, largest first (replay, clear or export one with filter fingerprint=)."""
    return jsonify(items=dlq.fingerprints(request.args.get("limit", 50, type=int)))


@require_token("viewer")
@audited("dlq.export")
def export_dead_letters(fmt: str):
    """Stream every record a filter selects as CSV or JSONL (audited)."""
    writers = {"csv": (export.csv_chunks, "text/csv; charset=utf-8"),
               "jsonl": (export.jsonl_chunks, "application/x-ndjson; charset=utf-8")}
    if fmt not in writers:
        abort(404, "export.csv or export.jsonl")
    writer, mimetype = writers[fmt]
    records = dlq.iter_records(filters_from(request.args.to_dict()))
    return Response(stream_with_context(writer(records)), mimetype=mimetype, headers={
        "Content-Disposition": f'attachment; filename="backstop-dlq.{fmt}"'})


@click.group("audit")
def audit_cli():
    """Inspect the audit log."""


@audit_cli.command("verify")
def verify_audit():
    """Check the HMAC chain of the whole audit log; exit 1 if anything was altered."""
    report = audit.verify()
    for problem in report.problems:
        click.echo(f"{problem['id']}: {problem['reason']}")
    click.echo(f"{'ok' if report.ok else 'TAMPERED'}: {report.checked} entries checked")
    raise SystemExit(0 if report.ok else 1)
