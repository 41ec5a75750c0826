"""The DLQ's JSON API: roles, refusals, two-step clear, streamed exports, and the audit log."""

from __future__ import annotations

import csv
import io
import json

from dlq_helpers import make_dead
from helpers import auth

from backstop import audit, dlq, keys

HOSTILE = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2", "@SUM(A1)", "\tcmd",
           "\rcmd", 'quote " and, comma', "line\nbreak", "error:=cmd|' /C calc'!A0"]


def test_list_filter_and_detail_are_read_by_viewers_and_detail_is_audited(api):
    ids = make_dead([{"cause": 1 + n % 3, "n": n} for n in range(6)])
    viewer = auth("viewer")
    listing = api.get("/api/v1/dlq?error_type=KeyError", headers=viewer).json
    assert listing["total"] == 2 and {i["error_type"] for i in listing["items"]} == {"KeyError"}
    bad = api.get("/api/v1/dlq?min_replays=99", headers=viewer)
    assert bad.status_code == 422 and bad.json["fields"][0]["field"] == "min_replays"
    detail = api.get(f"/api/v1/dlq/{ids[0]}", headers=viewer).json
    assert detail["stack"] and detail["lineage"] == [] and "payload_sealed" not in detail
    views = audit.entries(action="dlq.view").items
    assert views[0]["actor"] == "token:viewer-bot" and views[0]["target"] == ids[0]
    assert api.get("/api/v1/dlq/nope", headers=viewer).status_code == 404


def test_roles_guard_replay_and_delete(api):
    [record_id] = make_dead([{"cause": 1, "n": 1}])
    viewer, operator, owner = auth("viewer"), auth("operator"), auth("owner")
    assert api.post(f"/api/v1/dlq/{record_id}/replay", headers=viewer).status_code == 403
    assert api.delete(f"/api/v1/dlq/{record_id}", headers=operator).status_code == 403
    first = api.post(f"/api/v1/dlq/{record_id}/replay", headers=operator)
    assert first.status_code == 202 and first.json["replay_count"] == 1
    again = api.post(f"/api/v1/dlq/{record_id}/replay", headers=operator)
    assert again.status_code == 409 and again.json["code"] == "busy"
    assert api.delete(f"/api/v1/dlq/{record_id}", headers=owner).status_code == 200
    results = [e["result"] for e in audit.entries(action="dlq.").items]
    assert results == ["refused 403", "refused 403", "ok", "refused 409", "ok"][::-1]


def test_edit_preview_and_edited_replay(api):
    [record_id] = make_dead([{"cause": 2, "n": 4}])
    operator = auth("operator")
    bad = api.post(f"/api/v1/dlq/{record_id}/preview", json={"payload": {"cause": "no"}},
                   headers=operator)
    assert bad.status_code == 422 and bad.json["fields"][0]["field"] == "cause"
    good = api.post(f"/api/v1/dlq/{record_id}/preview", json={"payload": {"cause": 0, "n": 4}},
                    headers=operator).json
    assert good["diff"]["changes"] == [{"path": "cause", "old": 2, "new": 0}]
    done = api.post(f"/api/v1/dlq/{record_id}/replay", json={"payload": {"cause": 0, "n": 4}},
                    headers=operator).json
    assert done["diff"]["changes"] == good["diff"]["changes"]
    lineage = dlq.detail(record_id)["lineage"]
    assert lineage[0]["edited"] and lineage[0]["diff"]["changes"][0]["path"] == "cause"


def test_clear_takes_two_calls_and_a_token(api):
    make_dead([{"cause": 1, "n": n} for n in range(4)])
    owner = auth("owner")
    body = {"filter": {"job": "test.flaky"}}
    first = api.post("/api/v1/dlq/clear", json=body, headers=owner).json
    assert first["count"] == 4 and first["token"]
    refused = api.post("/api/v1/dlq/clear", json={**body, "token": "guess"}, headers=owner)
    assert refused.status_code == 403 and dlq.count() == 4
    done = api.post("/api/v1/dlq/clear", json={**body, "token": first["token"]}, headers=owner)
    assert done.json["deleted"] == 4 and dlq.count() == 0
    reused = api.post("/api/v1/dlq/clear", json={**body, "token": first["token"]},
                      headers=owner)
    assert reused.status_code == 403


def test_bulk_replay_reports_missing_ids(api):
    ids = make_dead([{"cause": 1, "n": n} for n in range(2)])
    response = api.post("/api/v1/dlq/bulk/replay", json={"ids": [*ids, "ghost"]},
                        headers=auth("operator")).json
    assert [x["outcome"] for x in response["results"]] == ["replayed", "replayed", "missing"]
    assert api.post("/api/v1/dlq/bulk/delete", json={"filter": {}},
                    headers=auth("operator")).status_code == 403


def test_analytics_trends_and_fingerprints(api):
    make_dead([{"cause": 1 + n % 3, "n": n} for n in range(9)])
    viewer = auth("viewer")
    assert api.get("/api/v1/dlq/analytics", headers=viewer).json["total"] == 9
    trend = api.get("/api/v1/dlq/trends?hours=12", headers=viewer).json
    assert len(trend["series"]) == 12 and trend["total"] == 9
    assert api.get("/api/v1/dlq/trends?hours=5", headers=viewer).status_code == 422
    groups = api.get("/api/v1/dlq/fingerprints", headers=viewer).json["items"]
    assert len(groups) == 3


def test_csv_export_of_hostile_payloads_is_inert_text(api):
    make_dead([{"cause": 1, "n": n, "note": text} for n, text in enumerate(HOSTILE)])
    response = api.get("/api/v1/dlq/export.csv", headers=auth("viewer"))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    body = response.get_data().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(body)))
    assert len(rows) == 1 + len(HOSTILE) and all(len(row) == 9 for row in rows)
    for row in rows[1:]:
        assert all(not cell or cell[0] not in "=+-@\t\r" for cell in row)
    notes = {json.loads(row[8].lstrip("'"))["note"] for row in rows[1:]}
    assert '=HYPERLINK("http://evil.example","x")' in notes and "line\nbreak" in notes
    errors = [row[4] for row in rows[1:] if row[4].startswith("'=cmd")]
    assert errors == ["'=cmd|' /C calc'!A0 \ufffd\ufffd"], "invalid UTF-8 arrives replaced"
    lines = api.get("/api/v1/dlq/export.jsonl", headers=auth("viewer")).get_data(as_text=True)
    assert len([json.loads(line) for line in lines.splitlines()]) == len(HOSTILE)
    exports = audit.entries(action="dlq.export").items
    assert len(exports) == 2


def test_audit_verify_cli_detects_an_edited_entry(api, r, cli):
    make_dead([{"cause": 1, "n": 1}])
    api.get("/api/v1/dlq/analytics", headers=auth("viewer"))
    record_id = dlq.page().items[0]["id"]
    api.get(f"/api/v1/dlq/{record_id}", headers=auth("viewer"))
    api.post(f"/api/v1/dlq/{record_id}/replay", headers=auth("operator"))

    intact = cli("audit", "verify")
    assert intact.exit_code == 0 and intact.stdout.startswith("ok: "), intact.output
    entries = r.xrange(keys.audit_log())
    r.delete(keys.audit_log())
    for n, (entry_id, fields) in enumerate(entries):
        if n == 0:
            fields = {**fields, "actor": "token:someone-else"}
        r.xadd(keys.audit_log(), fields, id=entry_id)
    tampered = cli("audit", "verify")
    assert tampered.exit_code == 1 and "TAMPERED" in tampered.stdout
    assert entries[0][0] in tampered.stdout


def test_redrive_api_starts_reports_and_cancels(api):
    make_dead([{"cause": 1, "n": n} for n in range(30)])
    operator = auth("operator")
    bad = api.post("/api/v1/dlq/redrives", json={"filter": {}, "rate": 0}, headers=operator)
    assert bad.status_code == 422 and bad.json["fields"][0]["field"] == "rate"
    started = api.post("/api/v1/dlq/redrives", json={"filter": {"job": "test.flaky"},
                                                     "rate": 5}, headers=operator)
    assert started.status_code == 202 and started.json["total"] == 30
    redrive_id = started.json["id"]
    second = api.post("/api/v1/dlq/redrives", json={"filter": {}, "rate": 5}, headers=operator)
    assert second.status_code == 409 and redrive_id in second.json["error"]
    shown = api.get(f"/api/v1/dlq/redrives/{redrive_id}", headers=auth("viewer")).json
    assert shown["status"] == "running" and shown["remaining"] == 30
    assert api.post(f"/api/v1/dlq/redrives/{redrive_id}/cancel",
                    headers=auth("viewer")).status_code == 403
    cancelled = api.post(f"/api/v1/dlq/redrives/{redrive_id}/cancel", headers=operator)
    assert cancelled.json["status"] == "cancelled"
    listing = api.get("/api/v1/dlq/redrives", headers=operator).json["items"]
    assert [item["id"] for item in listing] == [redrive_id]
    trail = [(e["action"], e["target"], e["result"])
             for e in audit.entries(action="dlq.redrive.").items]
    assert trail == [("dlq.redrive.change", redrive_id, "ok"),
                     ("dlq.redrive.change", redrive_id, "refused 403"),
                     ("dlq.redrive.start", "filter {}", "refused 409"),
                     ("dlq.redrive.start", redrive_id, "ok"),
                     ("dlq.redrive.start", "filter {}", "refused 422")]


def test_edit_replay_to_a_new_destination_needs_the_secrets_or_an_owners_confirmation(api):
    import time

    hook = {"url": "https://hooks.example/in", "event": "order.paid", "secret": "whsec-victim"}
    dlq.write_records([({"id": "wh-1", "queue": "plugins", "job": "plugins.webhook.deliver",
                         "payload": hook}, {"type": "WebhookError", "message": "500",
                                            "stack": "", "code": ""}, 1, time.time())])
    moved = {**dlq.get_record("wh-1")["payload"], "url": "https://evil.example/in"}
    operator, owner = auth("operator"), auth("owner")
    refused = api.post("/api/v1/dlq/wh-1/replay", json={"payload": moved}, headers=operator)
    assert refused.status_code == 422 and refused.json["fields"][0]["field"] == "secret"
    preview = api.post("/api/v1/dlq/wh-1/preview", json={"payload": moved}, headers=operator)
    assert preview.status_code == 422
    preview = api.post("/api/v1/dlq/wh-1/preview", json={"payload": moved}, headers=owner).json
    assert preview["resend"]["to"][0]["new"] == "https://evil.example/in"
    body = {"payload": moved, "resend_token": preview["resend"]["token"]}
    assert api.post("/api/v1/dlq/wh-1/replay", json=body, headers=operator).status_code == 422
    body["resend_token"] = api.post("/api/v1/dlq/wh-1/preview", json={"payload": moved},
                                    headers=owner).json["resend"]["token"]
    done = api.post("/api/v1/dlq/wh-1/replay", json=body, headers=owner)
    assert done.status_code == 202 and dlq.get_record("wh-1")["replay_count"] == 1
    assert "whsec-victim" not in json.dumps(audit.entries(action="dlq.replay").items)
