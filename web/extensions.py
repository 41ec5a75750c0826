"""Flask extensions, created without an app and bound in create_app()."""

from __future__ import annotations

from flask import Flask
from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_sock import Sock
from flask_wtf import CSRFProtect

from backstop.config import settings

login_manager = LoginManager()
csrf = CSRFProtect()


def default_limit() -> str:
    return settings().rate_limit_default


limiter = Limiter(key_func=get_remote_address, default_limits=[default_limit])
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
