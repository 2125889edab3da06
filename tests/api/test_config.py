"""Settings: defaults, environment parsing, and start-up errors that name the variable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from api.config import BUNDLED_MODELS_DIR, ConfigError, Settings, load_settings
from api.services import Services


def test_settings_defaults_are_loopback_sqlite_under_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RADINFER_HOST", "RADINFER_PORT", "RADINFER_DATA_DIR", "RADINFER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.host, settings.port, settings.device, settings.workers) == ("127.0.0.1", 8000, "auto", None)
    assert settings.resolved_database_url == f"sqlite:///{Path('data/radinfer.db').resolve()}"
    assert settings.models_dirs == [BUNDLED_MODELS_DIR]
    assert settings.is_loopback


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADINFER_PORT", "9001")
    monkeypatch.setenv("RADINFER_MAX_ROWS", "4096")
    monkeypatch.setenv("RADINFER_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("RADINFER_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.port == 9001
    assert settings.limits().max_rows == 4096
    assert settings.models_dirs == [tmp_path, BUNDLED_MODELS_DIR]
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("RADINFER_PORT", "eighty", id="port-not-int"),
        pytest.param("RADINFER_PORT", "70000", id="port-out-of-range"),
        pytest.param("RADINFER_DEVICE", "tpu", id="unknown-device"),
        pytest.param("RADINFER_WORKERS", "0", id="zero-workers"),
        pytest.param("RADINFER_API_KEYS", "root:0123456789abcdefXYZ", id="unknown-role"),
        pytest.param("RADINFER_API_KEYS", "admin:short", id="short-key"),
        pytest.param("RADINFER_API_KEYS", "0123456789abcdefXYZ", id="no-role"),
        pytest.param("RADINFER_EVALUATION_ROOTS", "/data/eval", id="list-not-json"),
        pytest.param("RADINFER_DATABASE_URL", "mysql://u:p@db/radinfer", id="unsupported-database"),
        pytest.param("RADINFER_MODELS_DIR", "/nonexistent/models", id="missing-models-dir"),
        pytest.param("RADINFER_LOG_LEVEL", "chatty", id="bad-log-level"),
        pytest.param("RADINFER_DELIVERY_MAX_ATTEMPTS", "0", id="no-delivery-attempt"),
        pytest.param("RADINFER_DELIVERY_BASE_DELAY_S", "0", id="zero-delivery-delay"),
        pytest.param("RADINFER_DELIVERY_MAX_DELAY_S", "1", id="max-delay-below-base"),
    ],
)
def test_load_settings_names_the_bad_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable) as info:
        load_settings()
    assert "Value error" not in str(info.value)  # pydantic's prefix says nothing to the user
    if variable == "RADINFER_API_KEYS":
        assert "0123456789abcdefXYZ" not in str(info.value), "a key must never be echoed"


def test_delivery_retry_window_settings_reach_the_delivery_of_results(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]
) -> None:
    monkeypatch.setenv("RADINFER_DELIVERY_MAX_ATTEMPTS", "20")
    monkeypatch.setenv("RADINFER_DELIVERY_BASE_DELAY_S", "10")
    monkeypatch.setenv("RADINFER_DELIVERY_MAX_DELAY_S", "900")
    services = Services(make_settings())
    try:
        delivery = services.pacs.delivery
        assert (delivery.max_attempts, delivery.base_delay_s, delivery.max_delay_s) == (20, 10, 900)
    finally:
        services.store.close()
