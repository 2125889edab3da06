"""Settings: read once from ``RADINFER_*`` environment variables and validated at start-up.

This is the only module that reads the environment. ``load_settings()`` turns pydantic's validation errors into one
:class:`ConfigError` whose message names each offending variable, so a bad deployment fails before serving.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from dicom_io.limits import Limits
from dicom_io.network.destinations import parse_destinations

ENV_PREFIX = "RADINFER_"
REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODELS_DIR = REPO_ROOT / "models"
ROLES = ("submit", "read", "admin")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?(\s*,\s*cuda(:\d+)?)*)$")
_LIMIT_DEFAULTS = Limits()


class ConfigError(ValueError):
    """The environment holds an invalid setting; the message names the variable and the fix."""


class Settings(BaseSettings):
    """Every setting of the service. Environment: ``RADINFER_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on")
    data_dir: Path = Field(Path("./data"), description="Jobs, staged uploads, results, SQLite database, key file")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/radinfer.db")
    device: str = Field(
        "auto",
        description="auto (every GPU when present, one model replica each; else CPU), cpu, cuda, cuda:N, or a list "
        "such as cuda:0,cuda:1",
    )
    runner: Literal["auto", "torch", "torchscript", "onnx"] | None = Field(
        None,
        description="Runner for every bundle (default: each bundle's radinfer.json, else auto = the verified ONNX "
        "export when ONNX Runtime can run on the device, else torch)",
    )
    models_dir: Path | None = Field(None, description="Extra folder of MONAI bundles, searched before models/")
    bundled_models: bool = Field(True, description="Also load the bundles shipped in the repository's models/")
    workers: int | None = Field(
        None, ge=1, le=64, description="Jobs processed concurrently, at least one per device (default: two per "
        "GPU, so that the next job's decoding and pre-processing overlap with the GPU running the current one; "
        "one on a CPU, where they would compete with the model for the same cores)"
    )
    job_lease_s: float = Field(
        60.0, ge=1, le=3600, description="A running job nobody has updated for this long is queued again "
        "(its server stopped heartbeating: several servers may share one PostgreSQL store)"
    )
    max_queued_jobs: int = Field(100, ge=1, description="Queued jobs accepted before answering 503")
    max_upload_bytes: int = Field(_LIMIT_DEFAULTS.max_request_bytes, ge=1, description="Largest request body")
    max_wait_s: float = Field(300.0, ge=0, le=3600, description="Upper bound of POST /v1/studies?wait=")
    api_keys: str | None = Field(None, description="Comma-separated role:key pairs (roles: submit, read, admin)")
    api_keys_file: Path | None = Field(None, description="File of role:sha256hex lines (# comments allowed)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # DICOM networking (PACS integration).
    dicom_port: int | None = Field(None, ge=1, le=65535, description="C-STORE/C-ECHO SCP port; unset: no SCP")
    dicom_host: str | None = Field(None, description="Address the SCP listens on; default RADINFER_HOST")
    dicom_ae_title: str = Field("RADINFER", description="Our AE title (called AE title the SCP accepts)")
    dicom_allowed_ae_titles: str | None = Field(
        None, description="Comma-separated calling AE titles allowed to associate; * for any (required with a port)"
    )
    dicom_max_associations: int = Field(10, ge=1, le=100, description="Concurrent DICOM associations")
    dicom_max_pdu_bytes: int = Field(262_144, ge=4096, description="Largest PDU the SCP accepts")
    dicom_quiet_period_s: float = Field(30.0, gt=0, description="Seconds without a new instance before a study runs")
    destinations: str | None = Field(
        None,
        description="Comma-separated result destinations: dicomweb+http://user:pw@host:port/path, dimse://AET@host:port",
    )
    delivery_max_attempts: int = Field(
        8, ge=1, le=1000, description="Attempts per destination before a delivery is failed"
    )
    delivery_base_delay_s: float = Field(5.0, gt=0, le=3600, description="Wait after the first failed attempt")
    delivery_max_delay_s: float = Field(
        600.0, gt=0, le=86400, description="Longest wait between attempts (the wait doubles from the base)"
    )
    pacs_pull_source: str | None = Field(None, description="PACS to pull studies from (same URL forms)")
    pacs_pull_method: Literal["get", "move"] = Field("get", description="DIMSE pull: C-GET or C-MOVE")
    stow_max_parts: int = Field(5000, ge=1, description="Largest number of instances in one STOW-RS request")
    stow_max_part_bytes: int = Field(512 * 1024**2, ge=1, description="Largest instance in a STOW-RS request")
    # Researchers' evaluations on the server.
    evaluation_roots: list[Path] = Field(
        default_factory=list, description="Server folders evaluations may read (JSON list); none: evaluations off"
    )
    # dicom_io.limits.Limits, one setting per field (max_request_bytes is max_upload_bytes above).
    max_files: int = Field(_LIMIT_DEFAULTS.max_files, ge=1)
    max_zip_entries: int = Field(_LIMIT_DEFAULTS.max_zip_entries, ge=1)
    max_zip_ratio: float = Field(_LIMIT_DEFAULTS.max_zip_ratio, gt=1)
    max_unpacked_bytes: int = Field(_LIMIT_DEFAULTS.max_unpacked_bytes, ge=1)
    max_pixel_bytes_per_instance: int = Field(_LIMIT_DEFAULTS.max_pixel_bytes_per_instance, ge=1)
    max_pixel_bytes_total: int = Field(_LIMIT_DEFAULTS.max_pixel_bytes_total, ge=1)
    max_rows: int = Field(_LIMIT_DEFAULTS.max_rows, ge=1, le=65535)
    max_columns: int = Field(_LIMIT_DEFAULTS.max_columns, ge=1, le=65535)
    max_frames: int = Field(_LIMIT_DEFAULTS.max_frames, ge=1)
    max_sequence_depth: int = Field(_LIMIT_DEFAULTS.max_sequence_depth, ge=1)
    max_inflated_bytes: int = Field(_LIMIT_DEFAULTS.max_inflated_bytes, ge=1)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or a list of cuda:N, got {value!r}")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str | None) -> str | None:
        for role, key in parse_key_pairs(value or ""):
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)} (format role:key,role:key)")
            if len(key) < 16:
                raise ValueError(f"the {role} key is shorter than 16 characters; use a long random key")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB (the job store supports "
                             f"SQLite and PostgreSQL), got the scheme {value.partition(':')[0]!r}")
        return value

    @field_validator("api_keys_file", "models_dir")
    @classmethod
    def _check_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"{str(value)!r} does not exist")
        return value

    @field_validator("destinations", "pacs_pull_source")
    @classmethod
    def _check_destinations(cls, value: str | None) -> str | None:
        parse_destinations(value)  # raises DestinationError (a ValueError) naming the bad entry
        return value

    @model_validator(mode="after")
    def _check_models_available(self) -> Settings:
        if self.models_dir is None and not self.bundled_models:
            raise ValueError("RADINFER_BUNDLED_MODELS is false and RADINFER_MODELS_DIR is unset: no model to serve")
        return self

    @model_validator(mode="after")
    def _check_dicom_listener(self) -> Settings:
        if self.dicom_port is not None and not (self.dicom_allowed_ae_titles or "").strip():
            raise ValueError(
                "RADINFER_DICOM_PORT is set but RADINFER_DICOM_ALLOWED_AE_TITLES is empty: list the calling AE "
                "titles allowed to send studies (or * to allow any)"
            )
        return self

    @model_validator(mode="after")
    def _check_delivery_delays(self) -> Settings:
        if self.delivery_max_delay_s < self.delivery_base_delay_s:
            raise ValueError(
                f"RADINFER_DELIVERY_MAX_DELAY_S ({self.delivery_max_delay_s:g}) is below "
                f"RADINFER_DELIVERY_BASE_DELAY_S ({self.delivery_base_delay_s:g}); the wait doubles from the base "
                "up to the maximum"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'radinfer.db').resolve()}"

    @property
    def models_dirs(self) -> list[Path]:
        """Bundle folders in search order: the extra one first, then the repository's models/."""
        dirs = [self.models_dir] if self.models_dir is not None else []
        if self.bundled_models:
            dirs.append(BUNDLED_MODELS_DIR)
        return dirs

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def limits(self) -> Limits:
        """The dicom_io limits for one submitted study."""
        return Limits(
            max_request_bytes=self.max_upload_bytes,
            max_files=self.max_files,
            max_zip_entries=self.max_zip_entries,
            max_zip_ratio=self.max_zip_ratio,
            max_unpacked_bytes=self.max_unpacked_bytes,
            max_pixel_bytes_per_instance=self.max_pixel_bytes_per_instance,
            max_pixel_bytes_total=self.max_pixel_bytes_total,
            max_rows=self.max_rows,
            max_columns=self.max_columns,
            max_frames=self.max_frames,
            max_sequence_depth=self.max_sequence_depth,
            max_inflated_bytes=self.max_inflated_bytes,
        )


def parse_key_pairs(text: str) -> list[tuple[str, str]]:
    """Split ``role:key,role:key`` (or one pair per line) into (role, key); blank parts and # comments skipped."""
    pairs = []
    for raw in re.split(r"[,\n]", text):
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        role, sep, key = item.partition(":")
        if not sep or not key.strip():  # never quote the entry: without ':' it is the secret itself
            raise ValueError(f"entry {len(pairs) + 1} is not role:key (no ':' or an empty key); write e.g. admin:KEY")
        pairs.append((role.strip().lower(), key.strip()))
    return pairs


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus ``overrides``) and fail with one clear message per invalid variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:  # a list or dict setting that is not JSON, raised before validation
        match = re.search(r'field "(\w+)"', str(exc))
        variable = ENV_PREFIX + match.group(1).upper() if match else "a RADINFER_ setting"
        raise ConfigError(f"invalid configuration: {variable} must be JSON (e.g. '[\"/data/eval\"]' for a list)"
                          ) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            field = str(err["loc"][0]) if err["loc"] else ""
            variable = ENV_PREFIX + field.upper() if field else "settings"
            problems.append(f"{variable}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
