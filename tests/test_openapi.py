"""GET /api/v1/openapi.json: a valid OpenAPI 3.1 document that documents every /api/v1
route with its methods, and the body of POST /jobs for every job name."""

from __future__ import annotations

import re

import jsonschema_rs
import pytest
import schemathesis

from backstop import tokens
from backstop.contracts import JOBS
from web.openapi import openapi_path

# Routes under /api/v1 that the document may leave out, each with the reason. Keep it short.
UNDOCUMENTED: dict[str, str] = {}
BUILT_IN_JOBS = 19
IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def app(r):
    from app import create_app

    application = create_app()
    application.testing = True
    return application


@pytest.fixture
def document(app) -> dict:
    headers = {"Authorization": f"Bearer {tokens.create('doc-reader', 'viewer')}"}
    response = app.test_client().get("/api/v1/openapi.json", headers=headers)
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.json


def api_routes(app) -> dict[str, set[str]]:
    """Every /api/v1 rule of the app as an OpenAPI path, with its methods."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and rule.rule not in UNDOCUMENTED:
            methods = (rule.methods or set()) - IGNORED_METHODS
            routes.setdefault(openapi_path(rule.rule), set()).update(methods)
    return routes


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name  # each a valid JSON Schema 2020-12


def test_every_api_route_is_documented_with_its_methods(app, document):
    documented = {path: {m.upper() for m in ops} for path, ops in document["paths"].items()}
    missing = {path: methods - documented.get(path, set())
               for path, methods in api_routes(app).items()}
    assert {path: m for path, m in missing.items() if m} == {}, (
        "document these routes with @documented (web/openapi.py), or list them in "
        "UNDOCUMENTED with a reason")
    assert set(documented) <= set(api_routes(app))  # and nothing that is not routed


def test_every_operation_documents_bearer_auth_and_the_refusals_every_route_gives(document):
    bearer = document["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["security"] == [{"bearer": []}], (method, path)
            assert {"401", "429", "503"} <= set(operation["responses"]), (method, path)
            assert re.search(r"the (viewer|operator|owner) role", operation["description"])


def test_path_parameters_match_the_route(document):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            named = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert named == set(re.findall(r"{(\w+)}", path)), (method, path)
    verb = document["paths"]["/api/v1/dlq/redrives/{redrive_id}/{verb}"]["post"]
    [verb_schema] = [p["schema"] for p in verb["parameters"] if p["name"] == "verb"]
    assert sorted(verb_schema["enum"]) == ["cancel", "pause", "resume"]


def test_post_jobs_takes_a_body_per_job_name_told_apart_by_job(document):
    operation = document["paths"]["/api/v1/jobs"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    union = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    mapping = union["discriminator"]["mapping"]
    assert union["discriminator"]["propertyName"] == "job"
    assert len(union["oneOf"]) == len(mapping) >= BUILT_IN_JOBS
    assert set(mapping) == set(JOBS)
    schemas = document["components"]["schemas"]
    for name, target in mapping.items():
        body = schemas[target.rsplit("/", 1)[1]]
        assert body["properties"]["job"]["const"] == name
        payload = schemas[body["properties"]["payload"]["$ref"].rsplit("/", 1)[1]]
        assert payload["title"] == JOBS[name].model.__name__
    assert {"201", "202", "400", "403", "422", "502"} <= set(operation["responses"])


def test_the_dlq_export_answers_csv_or_jsonl(document):
    answer = document["paths"]["/api/v1/dlq/export.{fmt}"]["get"]["responses"]["200"]
    assert set(answer["content"]) == {"text/csv", "application/x-ndjson"}


def test_the_document_needs_a_viewer_token(app):
    client = app.test_client()
    refused = client.get("/api/v1/openapi.json")
    assert refused.status_code == 401 and "error" in refused.json
    wrong = client.get("/api/v1/openapi.json", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401



def test_a_documented_view_still_streams_its_answer(api):
    """Documenting keeps spectree off the request path: its wrapper reads an answer's whole
    body, which for an event stream never ends (the call would not return)."""
    import threading

    from helpers import auth

    headers, answers = auth("viewer"), []

    def call() -> None:
        answer = api.get("/api/v1/events", headers=headers, buffered=False)
        answers.append((answer.status_code, answer.is_streamed))
        answer.close()

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(10)
    assert answers == [(200, True)]
