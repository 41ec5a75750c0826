"""The sweep: a payload and an error carrying one secret of every kind in the redaction table go
through every surface a viewer, a token or an export reaches, and no secret comes out, while
max_tokens and other plain fields stay readable."""

from __future__ import annotations

import json

import pytest
from conftest import apply_env
from dlq_helpers import make_dead
from helpers import panel_app, signed_in

from backstop import audit, dlq_maintenance, redaction, registry, tokens


def secret_names() -> list[str]:
    """One field name per entry of the rules table, built from the table itself."""
    return (sorted(redaction.ALWAYS) + sorted(redaction.LAST)
            + ["_".join(pair) for pair in sorted(redaction.PAIRS)]
            + [f"api_{plural}" for plural in sorted(redaction.PLURALS)]
            + [f"token_{carrier}" for carrier in sorted(redaction.CARRIERS)])


NAMES = secret_names()
VALUES = {name: f"Zq{i:03d}sv" for i, name in enumerate(NAMES)}
IN_URL = {"userinfo": "Zq900sv", "bearer": "Zq901svLongEnough"}
PLAIN = {"max_tokens": 777, "token_count": 12, "keyboard": "qwerty-plain",
         "primary_key": "pk-plain", "passenger": "ann-plain", "auth_type": "basic-plain"}


def leak_payload() -> dict:
    """A test.leak payload: every secret as a field, and again as text in its error."""
    pairs = " ".join(f"{name}={value}" for name, value in {**VALUES, **PLAIN}.items())
    error = (f"webhook http://u:{IN_URL['userinfo']}@hooks.example/h?token={VALUES['token']}"
             f"&page=2 answered 401: {pairs}\nAuthorization: Bearer {IN_URL['bearer']}")
    return {"url": f"http://u:{IN_URL['userinfo']}@hooks.example/h", "error": error,
            "secret": VALUES["secret"], "max_tokens": 777, "data": {**VALUES, **PLAIN}}


def leaked(text: str) -> list[str]:
    return [v for v in [*VALUES.values(), *IN_URL.values()] if v in text]


@pytest.fixture
def app(r):
    return panel_app(only=("vera",))


def test_no_secret_reaches_any_surface_and_plain_fields_stay_readable(app, tmp_path):
    assert len(NAMES) >= 40
    [job_id] = make_dead([leak_payload()], job="test.leak")
    api = app.test_client()
    viewer = {"Authorization": f"Bearer {tokens.create('viewer-bot', 'viewer')}"}
    operator = {"Authorization": f"Bearer {tokens.create('ops-bot', 'operator')}"}
    edited = {**leak_payload(), "max_tokens": 778}  # every secret typed out again
    attempt = api.post(f"/api/v1/dlq/{job_id}/replay", json={"payload": edited},
                       headers=operator).json["attempt_id"]
    panel = signed_in(app, "vera")
    surfaces = {
        "job API": lambda: api.get(f"/api/v1/jobs/{job_id}", headers=viewer),
        "replay job API": lambda: api.get(f"/api/v1/jobs/{attempt}", headers=viewer),
        "job page": lambda: panel.get(f"/jobs/{job_id}"),
        "queue page": lambda: panel.get("/queues/system?state=dead"),
        "DLQ list API": lambda: api.get("/api/v1/dlq", headers=viewer),
        "DLQ page": lambda: panel.get("/dlq"),
        "DLQ record API": lambda: api.get(f"/api/v1/dlq/{job_id}", headers=viewer),
        "DLQ record page": lambda: panel.get(f"/dlq/records/{job_id}"),
        "feed": lambda: panel.get("/overview"),
        "analytics API": lambda: api.get("/api/v1/dlq/analytics", headers=viewer),
        "fingerprints API": lambda: api.get("/api/v1/dlq/fingerprints", headers=viewer),
        **{f"analytics page {tab}": lambda tab=tab: panel.get(f"/dlq/analytics?tab={tab}")
           for tab in ("overview", "failures", "trends", "replays")},
        "CSV": lambda: api.get("/api/v1/dlq/export.csv", headers=viewer),
        "JSONL": lambda: api.get("/api/v1/dlq/export.jsonl", headers=viewer),
        "audit page": lambda: panel.get("/audit"),
    }
    texts = {}
    for name, read in surfaces.items():
        response = read()
        texts[name] = response.get_data(as_text=True)  # streamed: read before the next request
        assert response.status_code == 200, (name, response.status_code)
    texts["event stream"] = json.dumps(registry.latest_events(1000))
    texts["audit log"] = json.dumps(audit.entries(limit=1000).items)
    apply_env(DLQ_MAX_RECORDS="0", DLQ_ARCHIVE_DIR=str(tmp_path))
    try:
        assert dlq_maintenance.archive_overflow() == 1
    finally:
        apply_env(DLQ_MAX_RECORDS="100000", DLQ_ARCHIVE_DIR="var/dlq-archive")
    texts["archive"] = "".join(f.read_text() for f in tmp_path.glob("*.jsonl"))

    found = {name: leaked(text) for name, text in texts.items() if leaked(text)}
    assert not found, f"secrets shown: {found}"

    job, record = json.loads(texts["job API"]), json.loads(texts["DLQ record API"])
    exported = json.loads(texts["JSONL"].splitlines()[0])
    for payload in (job["payload"], record["payload"], exported["payload"]):
        assert payload["max_tokens"] == 777 and payload["data"]["max_tokens"] == 777
        assert {k: payload["data"][k] for k in PLAIN} == PLAIN
        assert all(payload["data"][name] == redaction.REDACTED for name in NAMES)
    assert json.loads(texts["replay job API"])["payload"]["max_tokens"] == 778
    assert "hooks.example/h?token=[REDACTED]&page=2 answered 401" in record["error_message"]
    assert "max_tokens=777 token_count=12 keyboard=qwerty-plain" in record["error_message"]
    assert "qwerty-plain" in texts["job page"] and "qwerty-plain" in texts["DLQ record page"]
