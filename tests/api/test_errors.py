"""Problem details (RFC 9457) for client mistakes and server failures; the OpenAPI document."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.deps import get_store
from tests.api.conftest import auth

PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert PROBLEM_FIELDS <= set(body) and body["status"] == status
    return body


def test_unknown_route_is_404_problem(client: TestClient) -> None:
    body = assert_problem(client.get("/v2/nothing", headers=auth("admin")), 404)
    assert body["instance"] == "/v2/nothing"


def test_wrong_method_is_405_problem(client: TestClient) -> None:
    body = assert_problem(client.put("/healthz"), 405)
    assert "PUT" in body["detail"]


def test_invalid_query_is_422_problem_with_errors(client: TestClient) -> None:
    body = assert_problem(client.get("/v1/jobs?limit=0&offset=-1", headers=auth("read")), 422)
    assert {tuple(e["loc"]) for e in body["errors"]} == {("query", "limit"), ("query", "offset")}


def test_malformed_job_id_is_422_problem(client: TestClient) -> None:
    assert_problem(client.get("/v1/jobs/not-a-job-id", headers=auth("read")), 422)


def test_unknown_job_is_404_problem(client: TestClient) -> None:
    assert_problem(client.get("/v1/jobs/" + "a" * 32, headers=auth("read")), 404)


def test_unexpected_error_is_500_with_request_id_and_no_detail(client: TestClient) -> None:
    class BrokenStore:
        def list(self, **_: object) -> None:
            raise RuntimeError("secret internal state")

    client.app.dependency_overrides[get_store] = BrokenStore
    try:
        response = TestClient(client.app, raise_server_exceptions=False).get("/v1/jobs", headers=auth("read"))
    finally:
        client.app.dependency_overrides.clear()
    body = assert_problem(response, 500)
    request_id = response.headers["x-request-id"]
    assert body["request_id"] == request_id and request_id in body["detail"]
    assert "secret" not in response.text
    assert client.get("/healthz").status_code == 200


def test_unexpected_error_is_logged_without_its_message_and_not_raised_to_the_server(
    client: TestClient, caplog
) -> None:
    """Exception messages may quote dataset values (PHI): the log gets the type and frames only, and nothing is
    re-raised to the server, whose own log line would print the message (TestClient raises what the server
    would see)."""

    class BrokenStore:
        def list(self, **_: object) -> None:
            raise ValueError("PatientName DOE^JANE born 19800101")

    client.app.dependency_overrides[get_store] = BrokenStore
    try:
        with caplog.at_level("ERROR"):
            response = TestClient(client.app).get("/v1/jobs", headers=auth("read"))  # raises if re-raised
    finally:
        client.app.dependency_overrides.clear()
    assert_problem(response, 500)
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert "unhandled ValueError on /v1/jobs" in logged and "in list" in logged
    assert "DOE^JANE" not in logged and "19800101" not in logged


def test_client_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "trace-12345678"})
    assert response.headers["x-request-id"] == "trace-12345678"


def test_openapi_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json", headers=auth("read")).json()["paths"]
    expected = {
        "/healthz": {"get", "head"},
        "/readyz": {"get", "head"},
        "/metrics": {"get"},
        "/v1/studies": {"post"},
        "/v1/jobs": {"get"},
        "/v1/jobs/{job_id}": {"get", "delete"},
        "/v1/jobs/{job_id}/result": {"get"},
        "/v1/jobs/{job_id}/artifacts/{name}": {"get"},
        "/v1/jobs/{job_id}/delivery": {"post"},
        "/v1/models": {"get"},
        "/v1/models/{name}": {"get"},
        "/dicomweb/studies": {"post"},
        "/dicomweb/studies/{study}": {"post"},
        "/v1/pacs/pull/{study}": {"post"},
        "/v1/evaluations": {"post"},
        "/v1/evaluations/{evaluation_id}": {"get"},
        "/v1/evaluations/{evaluation_id}/report": {"get"},
        "/v1/evaluations/{evaluation_id}/resume": {"post"},
    }
    assert {path: set(ops) for path, ops in paths.items()} == expected
    result_schema = paths["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]["application/json"]
    assert result_schema["schema"]["$ref"].endswith("/FindingsReport")
    assert set(paths["/v1/studies"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data", "application/zip", "application/dicom"
    }


def test_http_problems_and_stored_job_errors_share_one_type_scheme(client: TestClient) -> None:
    """A client matches a problem's ``type`` the same way whether it came over HTTP or in a job's ``error``."""
    from inference.errors import PROBLEM_TYPE_BASE
    from inference.jobs.store import INTERRUPTED_PROBLEM
    from inference.jobs.worker import problem

    missing = client.get("/v1/jobs/" + "0" * 32, headers=auth("read")).json()
    assert missing["type"] == PROBLEM_TYPE_BASE + "unknown-job", missing
    assert problem(500, "Internal error", "x")["type"] == PROBLEM_TYPE_BASE + "internal-error"
    assert INTERRUPTED_PROBLEM["type"] == PROBLEM_TYPE_BASE + "job-interrupted"
