"""Flask extensions, created without an app and bound in create_app()."""

from __future__ import annotations

from flask import Flask
from flask_babel import Babel
from flask_limiter import Limit, Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_sock import Sock
from flask_wtf import CSRFProtect

login_manager = LoginManager()
csrf = CSRFProtect()


def caller_limit() -> str:
    from web.auth import caller_limit  # web.auth imports this module: bound at call time

    return caller_limit()


def caller_key() -> str:
    from web.auth import caller_key

    return caller_key()


# Every route's default limit counts per valid API token (API_TOKEN_RATE_LIMIT or the
# token's own), else per client address (RATE_LIMIT_DEFAULT); a limit a route declares
# itself (sign-in, actions, health) counts per address unless it says otherwise.
limiter = Limiter(key_func=get_remote_address,
                  default_limits=[Limit(caller_limit, key_function=caller_key)])
sock = Sock()
babel = Babel()


def bind_extensions(app: Flask) -> None:
    """Bind every extension to app (the locale and sign-in hooks come from their modules)."""
    from web import auth, i18n

    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.unauthorized_handler(auth.sign_in_again)
    csrf.init_app(app)
    limiter.init_app(app)
    sock.init_app(app)
    i18n.compile_translations()
    babel.init_app(app, locale_selector=i18n.select_locale,
                   timezone_selector=i18n.select_timezone)
