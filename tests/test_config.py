"""Settings: one table in backstop/config.py, and the README's copy of it stays true."""

from __future__ import annotations

import multiprocessing
import re
import stat

import pytest
from conftest import ROOT

from backstop.config import SETTINGS, Settings, markdown_table, read_or_create_key


def test_the_readme_lists_every_setting_as_config_defines_it():
    assert markdown_table() in (ROOT / "README.md").read_text()


def test_settings_read_the_environment_mapping():
    current = Settings({"REDIS_SOCKET_TIMEOUT": "2.5"})
    assert current.float("redis_socket_timeout") == 2.5
    assert current.float("worker_reconcile_grace") == float(
        next(s.default for s in SETTINGS if s.name == "WORKER_RECONCILE_GRACE"))


def _read_key_together(barrier, path, answers) -> None:
    barrier.wait()
    try:
        answers.put(read_or_create_key(path))
    except Exception as exc:  # the test shows what went wrong instead of hanging
        answers.put(f"error: {exc!r}")


def test_processes_starting_at_once_all_read_one_private_key(tmp_path):
    fork = multiprocessing.get_context("fork")
    for round_ in range(25):
        path = tmp_path / f"round-{round_}" / "secret_key"
        barrier, answers = fork.Barrier(4), fork.Queue()
        procs = [fork.Process(target=_read_key_together, args=(barrier, path, answers))
                 for _ in range(4)]
        for proc in procs:
            proc.start()
        seen = [answers.get(timeout=20) for _ in procs]
        for proc in procs:
            proc.join(10)
        assert len(set(seen)) == 1 and re.fullmatch(r"[0-9a-f]{64}", seen[0]), (round_, seen)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert list(path.parent.iterdir()) == [path], "no temp file is left behind"


def test_a_key_file_readable_by_others_is_tightened_and_an_empty_one_refused(tmp_path):
    path = tmp_path / "secret_key"
    path.write_text("k" * 64)
    path.chmod(0o644)
    assert read_or_create_key(path) == "k" * 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("")
    with pytest.raises(RuntimeError, match="empty"):
        read_or_create_key(path)


def test_every_on_off_setting_reads_the_same_words():
    from backstop.config import Settings
    from backstop.panel import shown_setting

    for word, on in (("1", True), ("on", True), ("TRUE", True), (" yes ", True),
                     ("0", False), ("off", False), ("", False), ("no", False)):
        current = Settings({"COOKIE_SECURE": word, "WEBHOOK_ALLOW_PRIVATE": word})
        assert current.flag("cookie_secure") is on, word
        assert current.flag("webhook_allow_private") is on, word
        assert shown_setting("WEBHOOK_ALLOW_PRIVATE", word) == ("yes" if on else "no"), word


def test_only_queues_that_call_an_outside_service_are_rate_limited_by_default():
    from backstop.contracts import queue_configs

    limits = {queue: config.rate_limit for queue, config in queue_configs().items()}
    assert limits == {"ai": 5, "email": 10, "workflows": 0, "analytics": 0, "plugins": 0,
                      "system": 0}
