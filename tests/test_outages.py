"""The outage log: one line when Redis trouble begins, one when it ends (backstop.outages)."""

from __future__ import annotations

import logging
import time

from backstop.outages import OutageLog


def test_a_call_that_began_before_the_failure_does_not_end_the_outage(caplog):
    outage = OutageLog(logging.getLogger("test.outage"))
    began_before = time.monotonic()
    with caplog.at_level(logging.WARNING, "test.outage"):
        outage.failed("consume", ConnectionError("refused"))
        outage.recovered("consume", began_before)  # another thread's call, older than it
        outage.failed("consume", ConnectionError("refused"))
        assert [r.getMessage()[:25] for r in caplog.records] == ["Redis cannot take calls ("]
        outage.recovered("consume", time.monotonic())
    assert caplog.records[-1].getMessage().startswith("Redis takes calls again after")
    assert "(2 failed calls)" in caplog.records[-1].getMessage()
    assert len(caplog.records) == 2


def test_the_outage_ends_only_when_every_failing_concern_recovered(caplog):
    outage = OutageLog(logging.getLogger("test.outage"))
    with caplog.at_level(logging.WARNING, "test.outage"):
        outage.failed("consume", ConnectionError("refused"))
        outage.failed("beat", ConnectionError("refused"))
        outage.recovered("consume", time.monotonic())
        assert len(caplog.records) == 1
        outage.recovered("beat", time.monotonic())
    assert len(caplog.records) == 2
