"""The FastAPI application: ``create_app(settings)`` wires routers, error handlers, auth and the lifespan.

Start with ``radinfer serve`` (or ``uvicorn --factory api.main:create_app``). Start-up refuses an invalid
configuration (bad variable, non-loopback host without API keys) before anything is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.auth import load_keyring
from api.config import Settings, load_settings
from api.errors import install_error_handlers
from api.logging import configure_logging
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.routes import docs, health, jobs, metrics, models, studies
from api.routes.dicomweb import create_dicomweb_router, create_pull_router
from api.routes.evaluations import evaluations_router
from api.services import Services
from dicom_io.network.stow import StowLimits

DESCRIPTION = (
    "Medical-imaging AI inference: submit a DICOM study, poll the job, fetch findings (JSON) and DICOM results. "
    "Every route except /healthz and /readyz needs an API key (`Authorization: Bearer KEY` or `X-API-Key`). "
    "Research use only: the bundled models are trained on synthetic phantoms and are not for clinical use."
)

UPLOAD_PATHS = ("/v1/studies", "/dicomweb/studies")
"""Routes that stream a study to disk under RADINFER_MAX_UPLOAD_BYTES; every other body is small JSON."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; with no ``settings`` they are read from the RADINFER_* environment."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    keyring = load_keyring(settings)
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(
        title="radinfer", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,  # served by api.routes.docs, behind a key
    )
    app.state.services = services
    app.state.keyring = keyring
    app.add_middleware(BodyLimitMiddleware, upload_limit=settings.max_upload_bytes, upload_paths=UPLOAD_PATHS)
    app.add_middleware(RequestContextMiddleware)  # added last: outermost, so the 413s above carry a request id
    install_error_handlers(app)
    for router in (health.router, studies.router, jobs.router, models.router, metrics.router, docs.router):
        app.include_router(router)
    stow_limits = StowLimits(
        max_parts=settings.stow_max_parts,
        max_part_bytes=settings.stow_max_part_bytes,
        max_total_bytes=settings.max_upload_bytes,
    )
    app.include_router(
        create_dicomweb_router(
            services.pacs.accept, scratch_dir=services.pacs.scratch_dir, limits=services.limits, stow_limits=stow_limits
        )
    )
    app.include_router(create_pull_router(services.pacs.pull))
    app.include_router(
        evaluations_router(
            allowed_roots=settings.evaluation_roots,
            output_dir=settings.data_dir / "evaluations",
            workers=services.concurrency,
        )
    )
    return app
