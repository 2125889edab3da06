"""API keys: every route but the health checks needs one; roles limit what a key may do."""

from __future__ import annotations

import io
import re
import stat
import warnings
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.auth import GENERATED_KEYS_FILE, hash_key, load_keyring
from api.config import ConfigError, Settings
from tests.api.conftest import KEYS, auth

OPEN_ROUTES = {"/healthz", "/readyz"}
JOB = "0" * 32


def protected_calls(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route in the OpenAPI document except the health checks, parameters filled in,
    plus the document itself and its UI."""
    calls = [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/assets/swagger-ui-bundle.js")]
    for path, operations in client.get("/openapi.json", headers=auth("read")).json()["paths"].items():
        if path in OPEN_ROUTES:
            continue
        concrete = path.replace("{job_id}", JOB).replace("{name}", "seg.dcm")
        calls.extend((method.upper(), concrete) for method in operations)
    return calls


def test_every_route_but_health_is_protected(client: TestClient) -> None:
    calls = protected_calls(client)
    assert len(calls) >= 10, calls
    for method, path in calls:
        for headers in ({}, {"Authorization": "Bearer not-a-valid-key-at-all"}, {"X-API-Key": "wrong-key-123456"}):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["status"] == 401


@pytest.mark.parametrize("role", ["submit", "read", "admin"])
def test_any_key_reads_the_api_document_and_its_ui(client: TestClient, role: str) -> None:
    document = client.get("/openapi.json", headers=auth(role))
    assert document.status_code == 200 and "/v1/studies" in document.json()["paths"]
    ui = client.get("/docs", headers=auth(role))
    assert ui.status_code == 200 and "/openapi.json" in ui.text


def test_docs_page_needs_no_cdn(client: TestClient) -> None:
    """An air-gapped hospital network reaches no CDN: every script, style and icon of /docs comes from us."""
    page = client.get("/docs", headers=auth("read")).text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(sources) >= 3, page
    for source in sources:
        assert source.startswith("/docs/assets/"), source
        asset = client.get(source, headers=auth("read"))
        assert asset.status_code == 200 and len(asset.content) > 1000, source
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js", headers=auth("read")).text
    missing = client.get("/docs/assets/..%2Fcore.py", headers=auth("read"))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def test_api_document_declares_both_key_schemes(client: TestClient) -> None:
    """Generated clients and Swagger UI's Authorize button learn how to send the key from the document."""
    document = client.get("/openapi.json", headers=auth("read")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["APIKeyHeader"] == {**schemes["APIKeyHeader"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    submit = document["paths"]["/v1/studies"]["post"]
    assert {"HTTPBearer": []} in submit["security"] and {"APIKeyHeader": []} in submit["security"]
    assert "security" not in document["paths"]["/healthz"]["get"]


def test_health_routes_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("role", "method", "path"),
    [
        pytest.param("read", "POST", "/v1/studies", id="read-cannot-submit"),
        pytest.param("submit", "GET", "/v1/jobs", id="submit-cannot-list-jobs"),
        pytest.param("read", "DELETE", f"/v1/jobs/{JOB}", id="read-cannot-delete"),
        pytest.param("submit", "DELETE", f"/v1/jobs/{JOB}", id="submit-cannot-delete"),
        pytest.param("read", "GET", "/metrics", id="read-cannot-see-metrics"),
        pytest.param("submit", "GET", "/metrics", id="submit-cannot-see-metrics"),
    ],
)
def test_role_without_the_right_gets_403(client: TestClient, role: str, method: str, path: str) -> None:
    response = client.request(method, path, headers=auth(role))
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert role in response.json()["detail"]


@pytest.mark.parametrize(
    ("role", "path", "status"),
    [
        pytest.param("submit", f"/v1/jobs/{JOB}", 404, id="submit-may-poll-a-job"),
        pytest.param("read", "/v1/jobs", 200, id="read-may-list"),
        pytest.param("read", "/v1/models", 200, id="read-may-list-models"),
        pytest.param("admin", "/metrics", 200, id="admin-sees-metrics"),
    ],
)
def test_role_with_the_right_passes(client: TestClient, role: str, path: str, status: int) -> None:
    assert client.get(path, headers=auth(role)).status_code == status


def test_x_api_key_header_is_accepted(client: TestClient) -> None:
    assert client.get("/v1/models", headers={"X-API-Key": KEYS["read"]}).status_code == 200


def test_non_loopback_host_without_keys_refuses_to_start(tmp_path: Path) -> None:
    settings = Settings(host="0.0.0.0", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="RADINFER_API_KEYS"):
        load_keyring(settings)


def test_loopback_without_keys_creates_one_admin_key_printed_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first, second = io.StringIO(), io.StringIO()
    ring = load_keyring(settings, announce=first)
    key = first.getvalue().rsplit(": ", 1)[1].strip()
    stored = tmp_path / GENERATED_KEYS_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert key not in stored.read_text() and hash_key(key) in stored.read_text()
    assert ring.identify(key).role == "admin"
    again = load_keyring(settings, announce=second)
    assert second.getvalue() == ""
    assert again.identify(key).role == "admin"


def test_configured_keys_replace_the_generated_one_and_the_log_says_how_to_keep_it(tmp_path: Path, caplog) -> None:
    announce = io.StringIO()
    load_keyring(Settings(data_dir=tmp_path), announce=announce)
    generated = announce.getvalue().rsplit(": ", 1)[1].strip()
    with caplog.at_level("WARNING"):
        ring = load_keyring(Settings(data_dir=tmp_path, api_keys="submit:gateway-key-00000001"))
    assert ring.identify(generated) is None and ring.identify("gateway-key-00000001").role == "submit"
    assert f"RADINFER_API_KEYS_FILE={tmp_path / GENERATED_KEYS_FILE}" in caplog.text
    assert generated not in caplog.text
    kept = load_keyring(Settings(data_dir=tmp_path, api_keys="submit:gateway-key-00000001",
                                 api_keys_file=tmp_path / GENERATED_KEYS_FILE))
    assert kept.identify(generated).role == "admin"


def test_keys_file_holds_hashes_and_comments(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team keys\nread:{hash_key('reader-secret-0001')}  # dashboards\n\n")
    ring = load_keyring(Settings(host="0.0.0.0", data_dir=tmp_path, api_keys_file=keys_file))
    assert ring.identify("reader-secret-0001").role == "read"
    assert ring.identify("reader-secret-0002") is None


def test_keys_file_with_a_plain_key_names_the_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ok\nadmin:not-a-hash\n")
    with pytest.raises(ConfigError, match="line 2") as info:
        load_keyring(Settings(data_dir=tmp_path, api_keys_file=keys_file))
    assert "not-a-hash" not in str(info.value)


def test_operation_ids_are_unique(client: TestClient) -> None:
    """Client generators (openapi-generator, openapi-python-client) refuse a document with repeated ids."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        document = client.get("/openapi.json", headers=auth("read")).json()
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) >= 10
