"""The shapes of web/api_operations.py's bodies and answers, as pydantic models: request
bodies are validated with them (a 422 names each bad field), answers are documented by them
(an OpenAPI document can be generated from both)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from backstop.alerts import AlertRule, Kind
from backstop.job_actions import MAX_BULK

JobState = Literal["waiting", "delayed", "active", "completed", "failed", "dead", "cancelled"]


class Body(BaseModel):
    """A request body: exactly these fields, each of its JSON type (no coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ---- errors ----
class FieldError(BaseModel):
    field: str
    message: str


class ErrorAnswer(BaseModel):
    """Every refusal: 400, 401, 403, 404, 409 (with code), 422 (with fields), 429, 503."""

    error: str
    code: str | None = Field(None, description="why, for a program: state, not_dead, token...")
    fields: list[FieldError] | None = None


# ---- queues ----
class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    count: int


class JobFigures(BaseModel):
    """The last 5 minutes of one queue (or one job name on it)."""

    processed: int
    succeeded: int
    failed: int
    retried: int
    dead: int
    error_rate: float | None = Field(description="failed attempts / processed, 0..1")
    runtime_ms: Percentiles
    wait_ms: Percentiles


class QueueRow(JobFigures):
    """A queue now: counts by state, paused, DLQ records, throughput, latency, workers."""

    queue: str
    counts: dict[JobState, int]
    paused: bool
    oldest_waiting_age: float | None = Field(description="seconds; None when none waits")
    workers: int = Field(description="live worker processes consuming it")
    threads: int = Field(description="their threads for this queue")
    dead_letters: int
    per_minute: float = Field(description="jobs processed per minute, last 5 minutes")
    jobs: dict[str, JobFigures] = Field(description="the same figures per job name")
    totals: dict[str, int] = Field(description="all-time: enqueued, completed, failed, dead, "
                                               "requeued, processed")


class QueueList(BaseModel):
    items: list[QueueRow]
    taken_at: float


class QueueConfigShown(BaseModel):
    model_config = ConfigDict(extra="allow")
    attempts: int
    timeout: float
    concurrency: int
    rate_limit: float
    outage: str


class QueueDetail(QueueRow):
    paused_since: float | None
    config: QueueConfigShown


class QueueState(BaseModel):
    queue: str
    paused: bool
    paused_since: float | None


class PurgeBody(Body):
    token: str | None = Field(None, max_length=200,
                              description="absent: ask for a count and a token; the token "
                                          "a first call gave: purge")


class PurgePreview(BaseModel):
    queue: str
    count: int = Field(description="waiting jobs the purge would cancel now")
    token: str
    expires_in: int


class PurgeDone(BaseModel):
    queue: str
    cancelled: int


class PurgeAnswer(RootModel[PurgePreview | PurgeDone]):
    """The first call's count and token, or the second call's purge."""


# ---- jobs ----
class JobListQuery(BaseModel):
    state: JobState | Literal[""] = Field("waiting", description="empty: waiting")
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=500)


class JobListed(BaseModel):
    """A job as a listing shows it: the record (secrets redacted) without its timeline and
    result, its error without the stack (GET /api/v1/jobs/<id> has the whole record)."""

    model_config = ConfigDict(extra="allow")
    id: str
    queue: str
    job: str
    state: JobState
    attempts: int
    created_at: float | None = None
    updated_at: float | None = None


class JobPage(BaseModel):
    queue: str
    state: JobState
    total: int = Field(description="jobs in this state now")
    items: list[JobListed]
    next_cursor: str | None = Field(description="None on the last page")


class JobOutcome(BaseModel):
    id: str
    outcome: str = Field(description="retried, cancelled or deleted; in a bulk answer, a "
                                     "refusal's code (missing, state, not_dead, queued...)")
    attempt_id: str | None = Field(None, description="retry: the new attempt's job id")
    detail: str | None = Field(None, description="a refusal's message")


JobId = Annotated[str, Field(min_length=1, max_length=200)]


class JobBulkBody(Body):
    ids: list[JobId] = Field(min_length=1, max_length=MAX_BULK)


class BulkAnswer(BaseModel):
    verb: Literal["retry", "cancel", "delete"]
    results: list[JobOutcome]
    count: int = Field(description="distinct ids")
    done: int


# ---- workers ----
class RunningJob(BaseModel):
    job_id: str
    queue: str
    job: str
    since: float
    thread: str | int | None = None


class Worker(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    host: str | None = None
    pid: int | None = None
    queues: list[str] = []
    threads: dict[str, int] = {}
    current: list[RunningJob] = []
    processed: int = 0
    failed: int = 0
    started_at: float | None = None
    last_beat: float
    alive: bool


class WorkerList(BaseModel):
    items: list[Worker]


# ---- alert rules ----
class AlertRuleCreate(Body):
    """A new rule (fields as AlertRule); a missing id is made from kind and queue."""

    model_config = ConfigDict(extra="allow", strict=False)
    id: str | None = None
    kind: Kind


class AlertRuleChange(Body):
    """The fields to change; the others keep their values (id and kind never change)."""

    model_config = ConfigDict(extra="allow", strict=False)
    queue: str | None = None
    threshold: float | None = None
    window_seconds: int | None = None
    cooldown_seconds: int | None = None
    webhooks: list[str] | None = None
    mail_to: list[str] | None = None
    enabled: bool | None = None


class AlertRuleShown(AlertRule):
    """A rule as the API shows it: webhook URLs elided to scheme, host and port."""


class AlertRuleList(BaseModel):
    items: list[AlertRuleShown]


class Alerts(BaseModel):
    firing: list[dict] = Field(description="incidents firing now, newest first")
    history: list[dict] = Field(description="alerts fired and resolved, newest first")
    evaluated: dict | None = Field(description="the last evaluation (None: none in a day)")
    evaluation_stale: bool
