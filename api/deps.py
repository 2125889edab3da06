"""``Annotated`` dependency aliases: the only way routes reach settings, services and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import Principal, Right, require
from api.config import Settings
from api.services import Services
from inference.jobs.files import JobFiles
from inference.jobs.store import JobStore
from inference.jobs.worker import Worker


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings(request: Request) -> Settings:
    return request.app.state.services.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.services.store


def get_files(request: Request) -> JobFiles:
    return request.app.state.services.files


def get_worker(request: Request) -> Worker:
    return request.app.state.services.worker


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
FilesDep = Annotated[JobFiles, Depends(get_files)]
WorkerDep = Annotated[Worker, Depends(get_worker)]

Submitter = Annotated[Principal, Depends(require(Right.submit))]
JobReader = Annotated[Principal, Depends(require(Right.read_job))]
JobLister = Annotated[Principal, Depends(require(Right.list_jobs))]
JobAdmin = Annotated[Principal, Depends(require(Right.delete_job))]
ModelReader = Annotated[Principal, Depends(require(Right.read_models))]
MetricsReader = Annotated[Principal, Depends(require(Right.metrics))]
