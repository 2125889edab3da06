"""Models: the list and the model card."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import auth
from tests.api.test_errors import assert_problem


def test_models_list_shows_loaded_bundle_with_hash(client: TestClient) -> None:
    (model,) = client.get("/v1/models", headers=auth("read")).json()
    assert (model["name"], model["task"], model["state"], model["device"]) == ("tiny_ct", "segmentation", "ready", "cpu")
    assert len(model["weights_sha256"]) == 64
    assert model["runner"] == "torch" and model["providers"] is None


def test_model_summary_names_the_runner_and_the_providers_its_session_really_got() -> None:
    """A bundle configured for cuda whose ONNX Runtime session fell back to the CPU is reported on the CPU,
    through the batching and out-of-memory wrappers."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from api.routes.models import summary
    from inference.cuda import OomRetryRunner
    from inference.engine import BundleState, BundleStatus
    from inference.registry import Registry

    session = SimpleNamespace(name="onnx", device=torch.device("cpu"), providers=["CPUExecutionProvider"])
    batched = SimpleNamespace(name="onnx+batching", device=torch.device("cpu"), inner=OomRetryRunner(session))
    bundle = Registry([Path(__file__).resolve().parents[2] / "models"]).get("bone_age")  # configs read, not loaded
    bundle.device, bundle.runner = torch.device("cuda", 0), batched
    loaded = summary(bundle, BundleStatus("b", BundleState.ready))
    assert (loaded["device"], loaded["runner"], loaded["providers"]) == ("cpu", "onnx+batching", ["CPUExecutionProvider"])
    bundle.runner = None
    pending = summary(bundle, BundleStatus("b", BundleState.pending))
    assert (pending["device"], pending["runner"], pending["providers"]) == ("cuda:0", None, None)


def test_model_card_has_intended_use_io_and_readme(client: TestClient) -> None:
    card = client.get("/v1/models/tiny_ct", headers=auth("read")).json()
    assert card["intended_use"] == "API tests only." and card["trained_on_synthetic_data"] is True
    assert card["inputs"]["image"]["spatial_shape"] == [16, 16, 16]
    assert "channel_def" in card["outputs"]["pred"]
    assert card["selection"]["modalities"] == ["CT"]
    assert card["readme"].startswith("# tiny_ct")


def test_unknown_model_card_is_404_with_suggestion(client: TestClient) -> None:
    assert "tiny_ct" in assert_problem(client.get("/v1/models/tiny", headers=auth("read")), 404)["detail"]


@pytest.mark.parametrize("name", ["lung_nodule", "mammography", "bone_age"])
def test_shipped_model_cards_state_their_held_out_phantom_metrics(name: str) -> None:
    """The cards' figures come from each bundle's metadata (``eval_metrics``), labelled as synthetic."""
    from pathlib import Path

    from api.routes.models import card
    from inference.engine import BundleState, BundleStatus
    from inference.registry import Registry

    bundle = Registry([Path(__file__).resolve().parents[2] / "models"]).get(name)
    metrics = card(bundle, BundleStatus(name, BundleState.pending)).metrics
    assert metrics and all(key.endswith("synthetic_held_out") for key in metrics)
