"""The shipped mammography bundle through the HTTP API on held-out phantom studies (scripts/make_eval_set.py).

The studies are written once per module with seeds that training and the model card's evaluation never used;
they are submitted together (two workers), so their four-view requests share the device queue's batches.
Accuracy is compared with the model card's own figures (docs/evaluation.json), each with a stated margin for
the smaller sample here.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from api.config import Settings
from api.main import create_app
from dicom_io.synthetic import write_ct_series
from inference.tasks.mammography_views import breast_region

from .conftest import BUNDLE, write_study

ADMIN = "admin-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
N_STUDIES = 24  # half with a lesion in one breast; about 30 s through the API on a shared 2-core CPU
SEED = 6_100_000  # training draws from seed 20251122, the card's evaluation from 880001 and 990001
AUC_MARGIN = 0.15  # about 1.5 standard errors of a 24-study AUC
DENSITY_MARGIN = 0.10

pytestmark = pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(),
                                reason="models/mammography has no trained weights yet")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((BUNDLE / "docs" / "evaluation.json").read_text())["test"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    models = root / "models"
    models.mkdir()
    (models / "mammography").symlink_to(BUNDLE)
    settings = Settings(data_dir=root / "data", models_dir=models, bundled_models=False, device="cpu",
                        api_keys=f"admin:{ADMIN}", workers=2)
    with TestClient(create_app(settings)) as test_client:
        deadline = time.monotonic() + 120  # models load in the background: never leave with a load running
        while (ready := test_client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline and not ready.json()["error"], ready.json()
            time.sleep(0.05)
        yield test_client


def _submit(client: TestClient, folder: Path) -> str:
    files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(folder.glob("*.dcm"))]
    response = client.post("/v1/studies", files=files, headers=HEADERS)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _result(client: TestClient, job_id: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while client.get(f"/v1/jobs/{job_id}", headers=HEADERS).json()["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish"
        time.sleep(0.05)
    response = client.get(f"/v1/jobs/{job_id}/result", headers=HEADERS)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def held_out(client, tmp_path_factory):
    root = tmp_path_factory.mktemp("held_out")
    truths = [write_study(root / f"s{k}", SEED + k, lesion_probability=float(k % 2)) for k in range(N_STUDIES)]
    jobs = [_submit(client, root / f"s{k}") for k in range(N_STUDIES)]
    return root, truths, jobs, [_result(client, job) for job in jobs]


def test_held_out_studies_reach_the_model_cards_auc_and_density_accuracy(held_out, card):
    _, truths, _, reports = held_out
    for report in reports:  # partial only where a flagged view's Grad-CAM map is empty
        assert report["status"] == "complete" or all(r.startswith("Heat map") for r in report["reasons"]), report
        assert report["model"]["trained_on_synthetic_data"] and "synthetic" in report["disclaimer"]
        assert report["summary"]["result"] in ("flag for attention", "no flag")
        assert "Second reader's suggestion" in report["summary"]["suggestion"]
    labels = [int(t.suspicious) for t in truths]
    scores = [r["summary"]["suspicion_probability"] for r in reports]
    auc = roc_auc_score(labels, scores)
    breast_density = [(f["attributes"]["density"], t.density) for t, r in zip(truths, reports, strict=True)
                      for f in r["findings"] if f["label"] == "breast"]
    accuracy = np.mean([predicted == true for predicted, true in breast_density])
    assert auc >= card["suspicion"]["study"]["auc"] - AUC_MARGIN, (auc, card["suspicion"]["study"])
    assert accuracy >= card["density"]["breast"]["accuracy"] - DENSITY_MARGIN, (accuracy, breast_density)


def test_summary_quotes_the_operating_point_of_the_bundle(held_out):
    radinfer = json.loads((BUNDLE / "configs" / "radinfer.json").read_text())
    point = radinfer["operating_point"]
    for report in held_out[3]:
        s = report["summary"]
        assert s["operating_threshold"] == point["threshold"]
        assert s["operating_sensitivity"] == point["sensitivity"]
        assert (s["result"] == "flag for attention") == (s["suspicion_probability"] >= point["threshold"])


def test_heat_map_maximum_falls_inside_the_lesion_box_far_more_often_than_chance(held_out):
    """Every flagged lesion view of the held-out studies: is the heat map's maximum inside the lesion's box?

    Chance: a maximum anywhere in the breast lands in the box with probability (box area in the breast) /
    (breast area), a few per cent; a one-sided binomial test against that rate must reject at p < 0.001.
    """
    root, truths, _, reports = held_out
    hits, chance = [], []
    for k, (truth, report) in enumerate(zip(truths, reports, strict=True)):
        regions = {(f["attributes"]["laterality"], f["attributes"]["view"]): f
                   for f in report["findings"] if f["label"] == "suspicious_region"}
        for view in (v for v in truth.views if v.boxes and (v.laterality, v.view) in regions):
            row, col = regions[(view.laterality, view.view)]["location"]["pixel_rc"]
            r0, c0, r1, c1 = view.boxes[0]
            hits.append(r0 <= row < r1 and c0 <= col < c1)
            ds = pydicom.dcmread(root / f"s{k}" / view.file)
            pixels = ds.pixel_array.astype(np.float32)
            breast, _ = breast_region(pixels.max() - pixels if ds.PhotometricInterpretation == "MONOCHROME1"
                                      else pixels)
            chance.append(breast[r0:r1, c0:c1].sum() / breast.sum())
    assert len(hits) >= 5, "too few flagged lesion views with a heat map to judge localisation"
    test = binomtest(sum(hits), len(hits), float(np.mean(chance)), alternative="greater")
    assert test.pvalue < 1e-3, (sum(hits), len(hits), np.mean(chance))


def test_known_lesion_phantom_gets_its_heat_map_maximum_inside_the_lesion_box(client, tmp_path):
    """Seed 0 with a round mass: one of the seeds the model card lists as flagged and localised."""
    truth = write_study(tmp_path / "lesion", 0, lesion_probability=1.0, lesion_type="round_mass")
    report = _result(client, _submit(client, tmp_path / "lesion"))
    assert report["summary"]["result"] == "flag for attention", report["summary"]
    regions = {(f["attributes"]["laterality"], f["attributes"]["view"]): f
               for f in report["findings"] if f["label"] == "suspicious_region"}
    lesion_views = [v for v in truth.views if v.boxes and (v.laterality, v.view) in regions]
    assert lesion_views, (regions.keys(), truth.views)
    for view in lesion_views:
        row, col = regions[(view.laterality, view.view)]["location"]["pixel_rc"]
        r0, c0, r1, c1 = view.boxes[0]
        assert r0 <= row < r1 and c0 <= col < c1, (view, regions[(view.laterality, view.view)]["location"])


def test_flagged_study_artifacts_come_back_over_http(client, held_out):
    _, _, jobs, reports = held_out
    job_id, report = next((j, r) for j, r in zip(jobs, reports, strict=True)
                          if any(f["label"] == "suspicious_region" for f in r["findings"]))
    regions = [f for f in report["findings"] if f["label"] == "suspicious_region"]
    names = {a["name"] for a in report["artifacts"]}
    for region in regions:
        stem = f"mammography_heatmap_{region['attributes']['laterality']}_{region['attributes']['view']}"
        assert {f"{stem}.dcm", f"{stem}.png"} <= names
        png = client.get(f"/v1/jobs/{job_id}/artifacts/{stem}.png", headers=HEADERS)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    sr = pydicom.dcmread(io.BytesIO(client.get(f"/v1/jobs/{job_id}/artifacts/mammography_sr.dcm",
                                               headers=HEADERS).content))
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert len(parsed.content.get_planar_roi_measurement_groups()) == len(regions)
    assert len(parsed.content.get_image_measurement_groups()) == 4


def test_ct_study_sent_to_the_mammography_model_is_refused_with_the_reason(client, tmp_path):
    paths = write_ct_series(np.zeros((4, 32, 32), np.int16), tmp_path / "ct")
    files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    response = client.post("/v1/studies?model=mammography", files=files, headers=HEADERS)
    assert response.status_code == 422, response.text
    assert "modality CT not in [MG]" in response.json()["detail"]
