"""Queues, job names, payload contracts and queue configs (SPEC section 1)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .config import settings
from .errors import PayloadError, UnknownJob

MAX_PAYLOAD_BYTES = 256 * 1024
# Field(pattern=...) runs in pydantic's Rust engine, where "$" is the end of the text; in
# Python, "$" also matches before a final newline, so Python code uses re.fullmatch.
EMAIL_PATTERN = r"^[^@\s<>]{1,64}@[^@\s<>]{1,255}$"
Email = Field(pattern=EMAIL_PATTERN, max_length=320)
OptionalEmail = Field(default=None, pattern=EMAIL_PATTERN, max_length=320)
Name = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")


class Payload(BaseModel):
    """Base of every payload: unknown fields are rejected, strings are bounded."""

    model_config = ConfigDict(extra="forbid", str_max_length=100_000, frozen=True)
    tenant_id: str | None = Field(default=None, max_length=100)
    actor_id: str | None = Field(default=None, max_length=100)


def _one_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must be one line (no CR or LF): it becomes a mail header")
    return value


def _bounded_json(value: Any, limit: int = 64 * 1024) -> Any:
    if len(json.dumps(value, default=str)) > limit:
        raise ValueError(f"must serialise to at most {limit} bytes")
    return value


# ---- ai ----
class AiContentGenerate(Payload):
    prompt: str = Field(min_length=1, max_length=8_000)
    language: str = Field(default="en", max_length=10)
    max_tokens: int = Field(default=800, ge=1, le=4_000)


class AiSeoOptimize(Payload):
    content: str = Field(min_length=1, max_length=50_000)
    keywords: list[str] = Field(default_factory=list, max_length=20)


class AiTranslate(Payload):
    text: str = Field(min_length=1, max_length=50_000)
    target_language: str = Field(min_length=2, max_length=10)
    source_language: str | None = Field(default=None, max_length=10)


class AiScoreRerun(Payload):
    content_id: str = Field(min_length=1, max_length=100)
    content: str = Field(min_length=1, max_length=50_000)


# ---- workflows ----
class WorkflowStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    job: str = Name
    payload: dict[str, Any] = Field(default_factory=dict)

    _check_size = field_validator("payload")(_bounded_json)


class WorkflowsDispatch(Payload):
    name: str = Name
    steps: list[WorkflowStep] = Field(min_length=1, max_length=50)
    run_id: str | None = Field(default=None, max_length=100)


class WorkflowsStepExecute(Payload):
    run_id: str = Field(min_length=1, max_length=100)
    step_index: int = Field(ge=0, le=49)


class WorkflowsRetry(Payload):
    run_id: str = Field(min_length=1, max_length=100)
    step_index: int | None = Field(default=None, ge=0, le=49)


# ---- analytics ----
class AnalyticsSnapshotHourly(Payload):
    hour: datetime | None = None


class AnalyticsAggregateDaily(Payload):
    day: date | None = None


class AnalyticsRecomputeRange(Payload):
    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self):
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if (self.end - self.start).days > 31:
            raise ValueError("a range covers at most 31 days")
        return self


# ---- email ----
class EmailSend(Payload):
    to: list[str] = Field(min_length=1, max_length=50)
    subject: str = Field(min_length=1, max_length=300)
    text: str = Field(min_length=1, max_length=100_000)
    html: str | None = Field(default=None, max_length=100_000)
    reply_to: str | None = OptionalEmail

    _check_subject = field_validator("subject")(_one_line)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if not re.fullmatch(EMAIL_PATTERN, a)]
        if bad:
            raise ValueError(f"not an e-mail address: {bad[0]!r}")
        return value


class EmailOtpSend(Payload):
    to: str = Email
    purpose: str = Field(default="login", min_length=1, max_length=40, pattern=r"^[a-z_]+$")


class EmailNotificationDispatch(Payload):
    user_id: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=300)
    body: str = Field(min_length=1, max_length=10_000)
    channels: list[Literal["email", "webhook", "inbox"]] = Field(min_length=1, max_length=3)
    email: str | None = OptionalEmail
    webhook_url: AnyHttpUrl | None = None

    _check_title = field_validator("title")(_one_line)

    @model_validator(mode="after")
    def _targets(self):
        if "email" in self.channels and not self.email:
            raise ValueError("channel 'email' needs the field email")
        if "webhook" in self.channels and not self.webhook_url:
            raise ValueError("channel 'webhook' needs the field webhook_url")
        return self


# ---- plugins ----
class PluginsExecute(Payload):
    plugin: str = Name
    args: dict[str, Any] = Field(default_factory=dict)

    _check_size = field_validator("args")(_bounded_json)


class PluginsWebhookDeliver(Payload):
    url: AnyHttpUrl
    event: str = Name
    data: dict[str, Any] = Field(default_factory=dict)
    secret: str | None = Field(default=None, max_length=200)
    webhook_id: str | None = Field(default=None, max_length=100)

    _check_size = field_validator("data")(_bounded_json)


class PluginsEventDispatch(Payload):
    event: str = Name
    data: dict[str, Any] = Field(default_factory=dict)

    _check_size = field_validator("data")(_bounded_json)


# ---- system ----
class SystemCacheInvalidate(Payload):
    names: list[str] = Field(default_factory=list, max_length=1_000)
    all: bool = False


class SystemIndexRebuild(Payload):
    # "retention" trims what outgrows its bounds instead (backstop.retention; scheduled).
    target: Literal["jobs", "dlq", "all", "retention"] = "all"


class SystemHealthCheck(Payload):
    pass


@dataclass(frozen=True)
class JobSpec:
    name: str
    queue: str
    model: type[BaseModel]


QUEUES = ("ai", "workflows", "analytics", "email", "plugins", "system")

JOBS: dict[str, JobSpec] = {}


def register_job(name: str, queue: str, model: type[BaseModel]) -> JobSpec:
    """Add a job name with its payload contract to a queue. Raises ValueError on a clash."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; queues are {', '.join(QUEUES)}")
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,100}", name):
        raise ValueError(f"job name {name!r}: use 1-100 of A-Z a-z 0-9 _ . : -")
    if name in JOBS and JOBS[name].model is not model:
        raise ValueError(f"job name {name!r} is already registered")
    JOBS[name] = JobSpec(name, queue, model)
    return JOBS[name]


for _name, _model in {
    "ai.content.generate": AiContentGenerate,
    "ai.seo.optimize": AiSeoOptimize,
    "ai.translate": AiTranslate,
    "ai.score.rerun": AiScoreRerun,
    "workflows.dispatch": WorkflowsDispatch,
    "workflows.step.execute": WorkflowsStepExecute,
    "workflows.retry": WorkflowsRetry,
    "analytics.snapshot.hourly": AnalyticsSnapshotHourly,
    "analytics.aggregate.daily": AnalyticsAggregateDaily,
    "analytics.recompute.range": AnalyticsRecomputeRange,
    "email.send": EmailSend,
    "email.otp.send": EmailOtpSend,
    "email.notification.dispatch": EmailNotificationDispatch,
    "plugins.execute": PluginsExecute,
    "plugins.webhook.deliver": PluginsWebhookDeliver,
    "plugins.event.dispatch": PluginsEventDispatch,
    "system.cache.invalidate": SystemCacheInvalidate,
    "system.index.rebuild": SystemIndexRebuild,
    "system.health.check": SystemHealthCheck,
}.items():
    register_job(_name, _name.split(".")[0], _model)


def job_spec(name: str) -> JobSpec:
    """The contract of a job name. Raises UnknownJob.

    A name not yet known may be defined in BACKSTOP_TASK_MODULES: those modules are imported
    on the first miss, so a producer in a plain Python process knows the user's jobs too.
    """
    spec = JOBS.get(name)
    if spec is None:
        load_job_modules()
        spec = JOBS.get(name)
    if spec is None:
        raise UnknownJob(name)
    return spec


def load_job_modules() -> None:
    """Import Backstop's task modules and BACKSTOP_TASK_MODULES (once per process)."""
    from .jobs import load_handlers  # jobs builds on this module

    load_handlers()


def validate_payload(job_name: str, payload: Any) -> dict:
    """Validate a payload against its contract; return it as JSON-ready data.

    Raises UnknownJob, or PayloadError naming every bad field.
    """
    return validated(job_name, payload)[0]


def validated(job_name: str, payload: Any) -> tuple[dict, str]:
    """The validated payload as JSON-ready data and as JSON text. Raises as validate_payload."""
    text = validated_json(job_name, payload)
    return json.loads(text), text


def validated_json(job_name: str, payload: Any) -> str:
    """The validated payload as JSON text (the enqueue hot path: pydantic-core's validator
    and serializer called directly, no dict made). Raises as validate_payload."""
    model = job_spec(job_name).model
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    try:
        instance = model.__pydantic_validator__.validate_python(payload)
    except ValidationError as exc:
        raise PayloadError(job_name, _field_errors(exc)) from None
    text = model.__pydantic_serializer__.to_json(instance, exclude_none=True)
    if len(text) > MAX_PAYLOAD_BYTES:
        raise PayloadError(job_name, [{"field": "(payload)", "message": "payload too large"}])
    return text.decode()


def _field_errors(exc: ValidationError) -> list[dict]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(payload)", "message": err["msg"]}
        for err in exc.errors()
    ]


# ---- queue configs ----
class QueueConfig(BaseModel):
    """How a queue runs its jobs. Every value is shown in the panel."""

    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(default=3, ge=1, le=50)
    backoff_base: float = Field(default=2.0, ge=0, le=3_600)
    backoff_cap: float = Field(default=300.0, ge=0, le=86_400)
    backoff_jitter: float = Field(default=0.1, ge=0, le=1)
    timeout: float = Field(default=60.0, gt=0, le=86_400)
    concurrency: int = Field(default=2, ge=1, le=256)
    rate_limit: float = Field(default=0.0, ge=0, description="jobs/s over all workers; 0 = none")
    keep_completed: int = Field(default=100, ge=0)
    keep_failed: int = Field(default=500, ge=0)
    priority: int = Field(default=0, ge=-10, le=10)
    dlq: Literal["dlq", "drop"] = "dlq"
    dlq_drop_jobs: tuple[str, ...] = ()
    outage: Literal["outbox", "direct", "refuse"] = Field(
        default="outbox", description="when Redis cannot take an enqueue: keep the job in "
        "the host's outbox, run it at once, or refuse it (503)")

    def retry_delay(self, attempt: int, rand: Callable[[], float]) -> float:
        """Seconds before attempt+1: base*2^(attempt-1), capped, with +/- jitter."""
        delay = min(self.backoff_cap, self.backoff_base * (2 ** (attempt - 1)))
        return max(0.0, delay * (1 + self.backoff_jitter * (2 * rand() - 1)))

    def routes_to_dlq(self, job_name: str) -> bool:
        return self.dlq == "dlq" and job_name not in self.dlq_drop_jobs


# Only the queues whose jobs call an outside service with a request quota have a rate limit
# by default (README "Queue configs"): ai (an LLM provider's requests per minute) and email
# (an SMTP relay's sending rate). Every other queue runs as fast as its workers.
QUEUE_DEFAULTS: dict[str, dict] = {
    "ai": {"timeout": 120, "concurrency": 2, "priority": 1, "rate_limit": 5},
    "workflows": {"timeout": 60, "concurrency": 4, "priority": 2},
    "analytics": {"timeout": 300, "concurrency": 1, "priority": -1},
    "email": {"timeout": 30, "concurrency": 4, "priority": 3, "rate_limit": 10},
    "plugins": {"timeout": 30, "concurrency": 8, "priority": 2},
    "system": {"timeout": 60, "concurrency": 2, "priority": 0},
}


def queue_configs() -> dict[str, QueueConfig]:
    """Every queue's config: defaults, then BACKSTOP_QUEUES overrides. Raises ValueError."""
    overrides = json.loads(settings().backstop_queues or "{}")
    unknown = set(overrides) - set(QUEUES)
    if unknown:
        raise ValueError(f"BACKSTOP_QUEUES names unknown queues: {sorted(unknown)}")
    return {
        q: QueueConfig(**{**QUEUE_DEFAULTS[q], **overrides.get(q, {})}) for q in QUEUES
    }


_CONFIGS: dict[str, QueueConfig] = {}


def queue_config(queue: str) -> QueueConfig:
    """One queue's config (cached for the process)."""
    if not _CONFIGS:
        _CONFIGS.update(queue_configs())
    return _CONFIGS[queue]
