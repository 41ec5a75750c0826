"""Backstop: job-queue operations for Huey on Redis. The core never imports Flask."""

from .errors import PayloadError, PermanentFailure, UnknownJob  # noqa: F401
from .jobs import JobContext, define_job, handler  # noqa: F401


def enqueue(*args, **kwargs):
    """See backstop.producers.enqueue."""
    from .producers import enqueue as _enqueue

    return _enqueue(*args, **kwargs)
