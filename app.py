"""The web role: create_app() and every route, each a few lines over the core."""

from __future__ import annotations

from functools import wraps

import click
import redis
from flask import Flask, abort, g, jsonify, render_template, request, url_for

from backstop import producers, registry, tokens
from backstop.config import secret_key
from backstop.contracts import QUEUES, queue_configs
from backstop.errors import PayloadError, UnknownJob
from backstop.jobs import load_handlers


def create_app() -> Flask:
    load_handlers()
    app = Flask(__name__)
    app.config["SECRET_KEY"] = secret_key()
    app.register_error_handler(redis.ConnectionError, redis_unavailable)
    app.register_error_handler(redis.TimeoutError, redis_unavailable)
    for code in (400, 401, 403, 404, 405):
        app.register_error_handler(code, json_error)
    register_routes(app)
    app.cli.add_command(tokens_cli)
    return app


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
            return view(*args, **kwargs)

        return wrapped

    return decorate


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
