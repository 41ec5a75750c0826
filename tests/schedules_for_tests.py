"""A fast schedule for the schedule tests, loaded through BACKSTOP_TASK_MODULES (after
tests.jobs_for_tests): test.work every 2 seconds, marking each run in test:sched-marks."""

from __future__ import annotations

import tests.jobs_for_tests  # noqa: F401  (defines test.work)
from backstop import schedules

MARKS = "test:sched-marks"

TEST_MARK = schedules.add(schedules.Schedule(
    "test-mark", "test.work", 2, payload={"key": MARKS}, title="Test mark"))
