"""Settings: one table in backstop/config.py, and the README's copy of it stays true."""

from __future__ import annotations

from conftest import ROOT

from backstop.config import SETTINGS, Settings, markdown_table


def test_the_readme_lists_every_setting_as_config_defines_it():
    assert markdown_table() in (ROOT / "README.md").read_text()


def test_settings_read_the_environment_mapping():
    current = Settings({"REDIS_SOCKET_TIMEOUT": "2.5"})
    assert current.float("redis_socket_timeout") == 2.5
    assert current.float("worker_reconcile_grace") == float(
        next(s.default for s in SETTINGS if s.name == "WORKER_RECONCILE_GRACE"))
