"""The web role's commands: `flask --app app tokens|users|audit ...`."""

from __future__ import annotations

import sys

import click
from flask import Flask

from backstop import audit, tokens, users
from backstop.config import settings
from backstop.errors import BackstopError


def register_cli(app: Flask) -> None:
    for group in (tokens_cli, users_cli, audit_cli):
        app.cli.add_command(group)


@click.group("tokens")
def tokens_cli():
    """Manage API tokens."""


@tokens_cli.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(tokens.ROLES), default="operator", show_default=True)
@click.option("--rate-limit", metavar="LIMIT",
              help='Requests it may make to each API route, e.g. "20000 per minute" '
                   "(default: API_TOKEN_RATE_LIMIT).")
def create_token(name: str, role: str, rate_limit: str | None):
    """Create a token and print it once."""
    try:
        click.echo(tokens.create(name, role, rate_limit))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@tokens_cli.command("list")
def list_tokens():
    """List token names, roles and rate limits (a token's own, or the default's)."""
    default = f"{settings().api_token_rate_limit} (API_TOKEN_RATE_LIMIT)"
    for info in tokens.listing():
        click.echo(f"{info['name']}\t{info['role']}\t{info.get('rate_limit') or default}")


@tokens_cli.command("revoke")
@click.argument("name")
def revoke_token(name: str):
    """Revoke every token with this name."""
    click.echo(f"revoked {tokens.revoke(name)} token(s)")


@click.group("audit")
def audit_cli():
    """Inspect the audit log."""


@audit_cli.command("verify")
def verify_audit():
    """Check the HMAC chain of the whole audit log; exit 1 if anything was altered."""
    report = audit.verify()
    for problem in report.problems:
        click.echo(f"{problem['id']}: {problem['reason']}")
    trimmed = f" ({report.trimmed} older ones trimmed by retention)" if report.trimmed else ""
    click.echo(f"{'ok' if report.ok else 'TAMPERED'}: {report.checked} entries checked{trimmed}")
    raise SystemExit(0 if report.ok else 1)


@click.group("users")
def users_cli():
    """Manage panel users."""


def read_password(prompt: str) -> str:
    """A password from a hidden prompt on a terminal, or the first line of piped stdin
    (never echoed: click's prompt would echo it, with a GetPassWarning, off a terminal)."""
    if sys.stdin.isatty():
        return click.prompt(prompt, hide_input=True)
    line = sys.stdin.readline()
    if not line:
        raise click.UsageError("no password: pipe one line to stdin or pass --password")
    return line.rstrip("\r\n")


@users_cli.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(tokens.ROLES), required=True)
@click.option("--password", help="Read from stdin (or a hidden prompt) when not given.")
def create_user(name: str, role: str, password: str | None):
    """Create a user; the password is read from stdin (or a hidden prompt)."""
    try:
        users.create(name, role, password if password is not None else read_password("Password"))
    except BackstopError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {name} ({role})")


@users_cli.command("passwd")
@click.argument("name")
@click.option("--password", help="Read from stdin (or a hidden prompt) when not given.")
def change_password(name: str, password: str | None):
    """Change a password; every session of the user is revoked."""
    try:
        users.set_password(name, password if password is not None
                           else read_password("New password"))
    except BackstopError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password changed; {name} is signed out everywhere")


@users_cli.command("list")
def list_users():
    """List user names and roles."""
    for info in users.listing():
        click.echo(f"{info['name']}\t{info['role']}")
