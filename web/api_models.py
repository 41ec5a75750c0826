"""The API's request and response bodies as pydantic models, for its OpenAPI document
(web/openapi.py). The routes validate by hand (web/params.py, the core's contracts); these
models describe what they take and answer. Response models leave extra fields allowed: a
record carries more than is listed here."""

from __future__ import annotations

import operator
from datetime import datetime
from functools import reduce
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from backstop.contracts import JOBS, QUEUES, JobSpec, load_job_modules
from backstop.modes import MODES
from backstop.registry import STATES
from backstop.system_log import LEVELS
from web.openapi import Error

Queue = Literal[QUEUES]  # type: ignore[valid-type]
JOB_ID = r"^([A-Za-z0-9_.:\-]{1,200})?$"  # empty or absent: a new id is made
JobId = Field(default=None, pattern=JOB_ID,
              description="your id for the job (or the Idempotency-Key header): enqueuing it "
                          "again adds nothing")


# A query string's value is text ("" for none, as an empty form field sends); a JSON body
# may send the number itself.
ReplayCount = Annotated[int, Field(ge=0, le=5)] | Annotated[str, Field(pattern=r"^[0-5]?$")]
Moment = float | datetime | Literal[""]


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- POST /jobs: one body per job name, told apart by "job" ----
class JobOptions(BaseModel):
    job_id: str | None = JobId
    delay: float | None = Field(default=None, ge=0, le=366 * 86400,
                                description="seconds before it may run")
    priority: int | None = Field(default=None, ge=-10, le=10)


def job_body(spec: JobSpec) -> type[BaseModel]:
    """The body enqueuing one job name: {"job": name, "payload": its contract, options}."""
    name = "".join(part.title() for part in spec.name.replace(":", ".").replace("-", "_")
                   .replace("_", ".").split(".")) + "Job"
    the_name: Any = Literal[spec.name]
    return create_model(name, __base__=JobOptions, __doc__=f"Enqueue {spec.name} "
                        f"(queue {spec.queue}).", job=(the_name, ...), payload=(spec.model, ...))


def job_request_model() -> type[BaseModel]:
    """A body for each job name known to this process (Backstop's own and those of
    BACKSTOP_TASK_MODULES), as a union discriminated by "job"."""
    load_job_modules()
    bodies = [job_body(JOBS[name]) for name in sorted(JOBS)]
    union: Any = Annotated[reduce(operator.or_, bodies), Field(discriminator="job")]
    return create_model("JobRequest", __base__=RootModel, root=(union, ...),
                        __doc__="A job name and its payload, with options.")


class JobAnswer(Open):
    id: str
    created: bool = Field(description="false: a job with this id existed; nothing was added")
    location: str
    state: str | None = None
    outbox: bool | None = Field(default=None, description="kept in this host's outbox while "
                                                          "Redis cannot take it")


class JobRan(JobAnswer):
    result: Any = None
    recorded: bool


class JobError(Open):
    type: str | None = None
    message: str | None = None
    code: str | None = None


class JobRanAndFailed(JobAnswer):
    error: JobError
    recorded: bool


class JobRecord(Open):
    """A job's record (secrets redacted); a job still in this host's outbox is only
    {"id", "state": "outbox"}."""

    id: str
    state: Literal[(*STATES, "outbox")]  # type: ignore[valid-type]


# ---- the dead-letter queue ----
class DlqFilters(BaseModel):
    """What a listing, export or action selects; empty selects everything."""

    model_config = ConfigDict(extra="forbid")
    queue: str | None = Field(default=None, max_length=500)
    job: str | None = Field(default=None, max_length=500)
    error_type: str | None = Field(default=None, max_length=500)
    fingerprint: str | None = Field(default=None, max_length=500)
    min_replays: ReplayCount | None = None
    max_replays: ReplayCount | None = None
    since: Moment | None = Field(default=None, description="unix seconds or ISO 8601")
    until: Moment | None = Field(default=None, description="unix seconds or ISO 8601")
    status: Literal["open", "replaying", "resolved"] | None = None
    q: str | None = Field(default=None, max_length=500, description="search text")


class Limit(BaseModel):
    limit: int = Field(default=50, ge=1, le=1000)


class DlqPageQuery(DlqFilters):
    cursor: str | None = Field(default=None,
                               pattern=r"^(\d+(\.\d+)?(e[+-]?\d+)?:[!-~]{1,200})?$",
                               description="the next_cursor of the previous page")
    limit: int = Field(default=50, ge=1, le=1000)


class DlqRecordSummary(Open):
    id: str


class DlqPage(Open):
    items: list[DlqRecordSummary]
    next_cursor: str | None
    total: int | None = Field(description="null when a search has not counted them all")
    complete: bool
    scanned: int


class DlqRecord(Open):
    """A record with its payload (redacted), stack and lineage."""

    id: str
    stack: str | None = None
    lineage: list[dict[str, Any]] = []


class ReplayBody(BaseModel):
    queue: Queue | None = Field(default=None, description="replay into this queue instead")
    payload: dict[str, Any] | None = Field(default=None, description="an edited payload")
    resend_token: str | None = Field(default=None, description="an owner's preview's token "
                                     "to send secrets to a changed destination")


class Replayed(Open):
    id: str
    attempt_id: str
    queue: str
    replay_count: int


class PreviewBody(BaseModel):
    payload: dict[str, Any]


class EditPreview(Open):
    id: str
    job: str
    payload: dict[str, Any]


class Deleted(Open):
    deleted: str


class BulkBody(BaseModel):
    """Either ids, or a filter ({} selects every record)."""

    ids: list[str] | None = None
    filter: DlqFilters | None = None


class BulkResults(Open):
    results: list[dict[str, Any]]
    count: int


class ClearBody(BaseModel):
    filter: DlqFilters | None = None
    token: str | None = Field(default=None, description="from the first call: clears")


class ClearAnswer(Open):
    """The first call: {"count", "token", "expires_in"}; the second: {"deleted", "filter"}."""


class RedriveBody(BaseModel):
    filter: DlqFilters | None = None
    rate: float = Field(description="jobs per second")
    queue: Queue | None = None


class Redrive(Open):
    id: str
    status: str
    total: int
    remaining: int
    percent: float


class Redrives(Open):
    items: list[Redrive]


class Items(Open):
    items: list[dict[str, Any]]


class TrendsQuery(BaseModel):
    hours: Literal[1, 6, 12, 24, 48] = 24


class LogsQuery(Limit):
    """Empty values select every level, from any time (as an empty form field sends)."""

    level: Literal[(*LEVELS, "")] | None = None  # type: ignore[valid-type]
    since: Annotated[float, Field(ge=0)] | Literal[""] | None = Field(
        default=None, description="unix seconds")


# ---- system and health ----
class Mode(Open):
    mode: Literal[MODES]  # type: ignore[valid-type]
    changed_at: float | None = None
    changed_by: str | None = None


class ModeBody(BaseModel):
    mode: Literal[MODES]  # type: ignore[valid-type]


class Health(Open):
    status: Literal["healthy", "degraded", "unhealthy"]
    timestamp: str


class Unhealthy(RootModel[Health | Error]):
    """Unhealthy (the assessment), or Redis cannot answer (an error)."""


class JobHeaders(BaseModel):
    idempotency_key: str | None = Field(default=None, alias="Idempotency-Key",
                                        pattern=JOB_ID,
                                        description="the job's id when the body has no job_id")
