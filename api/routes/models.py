"""Installed models and their model cards."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import ModelReader, ServicesDep
from api.errors import PROBLEM_JSON, Problem
from inference.bundle import Bundle
from inference.engine import BundleStatus
from inference.runners import session_providers

router = APIRouter(prefix="/v1/models", tags=["models"])

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}} for code in (401, 403, 404)
}


class ModelSummary(BaseModel):
    name: str = Field(examples=["lung_nodule"])
    version: str = Field(examples=["0.1.0"])
    task: str = Field(examples=["lung_nodules"])
    state: str = Field(description="pending, ready or failed", examples=["ready"])
    device: str = Field(
        examples=["cuda:0"], description="Where the model runs once loaded (the configured device before)"
    )
    runner: str | None = Field(
        default=None, description="torch, torchscript or onnx (+batching), once loaded", examples=["onnx"]
    )
    providers: list[str] | None = Field(
        default=None,
        description="ONNX Runtime execution providers the session got, best first",
        examples=[["CUDAExecutionProvider", "CPUExecutionProvider"]],
    )
    weights_sha256: str | None = Field(default=None, description="Known once the weights were loaded and hashed")
    trained_on_synthetic_data: bool
    error: str | None = None


class ModelCard(ModelSummary):
    intended_use: str
    selection: dict[str, Any] = Field(description="Routing rules from configs/radinfer.json")
    description: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict, description="network_data_format.inputs of metadata.json")
    outputs: dict[str, Any] = Field(default_factory=dict, description="network_data_format.outputs of metadata.json")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation results stated by the bundle")
    metadata: dict[str, Any] = Field(description="configs/metadata.json as shipped")
    readme: str | None = Field(default=None, description="docs/README.md of the bundle (the model card text)")


def summary(bundle: Bundle, status: BundleStatus) -> dict[str, Any]:
    return {
        "name": bundle.name,
        "version": bundle.version,
        "task": bundle.task,
        "state": status.state.value,
        "device": str(bundle.runs_on),
        "runner": getattr(bundle.runner, "name", None),
        "providers": session_providers(bundle.runner),
        "weights_sha256": bundle.weights_sha256,
        "trained_on_synthetic_data": bundle.trained_on_synthetic_data,
        "error": status.error,
    }


def card(bundle: Bundle, status: BundleStatus) -> ModelCard:
    data_format = bundle.metadata.get("network_data_format", {})
    readme = bundle.path / "docs" / "README.md"
    return ModelCard(
        **summary(bundle, status),
        intended_use=bundle.intended_use,
        selection=bundle.radinfer.get("selection", {}),
        description=str(bundle.metadata.get("description", "")),
        inputs=data_format.get("inputs", {}),
        outputs=data_format.get("outputs", {}),
        metrics=(bundle.radinfer.get("metrics") or bundle.metadata.get("performance")
                 or bundle.metadata.get("eval_metrics") or {}),
        metadata=bundle.metadata,
        readme=readme.read_text(encoding="utf-8") if readme.is_file() else None,
    )


@router.get("", response_model=list[ModelSummary], summary="Installed models and their state", responses=_PROBLEMS)
def list_models(_: ModelReader, services: ServicesDep) -> list[ModelSummary]:
    statuses = services.engines.status()
    return [ModelSummary(**summary(b, statuses[n])) for n, b in sorted(services.registry.bundles.items())]


@router.get("/{name}", response_model=ModelCard, summary="The model card of one model", responses=_PROBLEMS)
def get_model(name: str, _: ModelReader, services: ServicesDep) -> ModelCard:
    bundle = services.registry.get(name)
    return card(bundle, services.engines.status()[bundle.name])
