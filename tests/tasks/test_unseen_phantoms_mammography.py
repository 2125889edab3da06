"""Mammography on studies the other tests do not build: a spot compression view and For Processing images
beside the four screening views, and the shipped bundle's SR read back against the findings JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicom_io.limits import Limits
from dicom_io.reader import read_headers
from dicom_io.synthetic import write_projection_image
from inference.engine import Engine
from inference.pipeline import analyze
from inference.registry import Registry
from inference.tasks.mammography_views import select_views

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "mammography"
sys.path.insert(0, str(BUNDLE))
from scripts.phantom import generate_view

sys.path.remove(str(BUNDLE))
for _name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
    del sys.modules[_name]  # the bundle loader imports its own ``scripts`` package

SCREENING = (("R", "CC", None), ("R", "MLO", None), ("L", "CC", "round_mass"), ("L", "MLO", "round_mass"))
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def _view_code(view: str, modifier: tuple[str, str] | None = None) -> Sequence:
    item = _code(*VIEW_CODES[view])
    item.ViewModifierCodeSequence = Sequence([_code(*modifier)] if modifier else [])
    return Sequence([item])


def write_study(folder: Path, extra: list[dict] = (), seed: int = 77) -> dict[str, dict]:
    """The four screening views (a mass in the left breast) plus ``extra`` images: dicts with ``laterality``,
    ``view`` and ``tags`` (they get a later InstanceNumber). Returns SOP Instance UID -> what was written."""
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    written = {}
    items = [{"laterality": lat, "view": view, "lesion": lesion, "tags": {}} for lat, view, lesion in SCREENING]
    for number, item in enumerate([*items, *extra], start=1):
        phantom = generate_view(rng, density=2, view=item["view"], laterality=item["laterality"],
                                lesion=item.get("lesion"), size=256)
        tags = {"ViewPosition": item["view"], "ViewCodeSequence": _view_code(item["view"]),
                "ImageLaterality": item["laterality"], "PatientOrientation": phantom.patient_orientation,
                "BodyPartExamined": "BREAST", "PatientSex": "F", "StudyInstanceUID": study,
                "SeriesInstanceUID": series, "InstanceNumber": number, "SOPInstanceUID": generate_uid(),
                **item["tags"]}
        pixels = item.get("pixels", lambda image: image)(phantom.image)
        write_projection_image(pixels, folder / f"{number:02d}.dcm", modality="MG", pixel_spacing=(0.2, 0.2),
                               tags=tags)
        written[tags["SOPInstanceUID"]] = item
    return written


def _selected(folder: Path):
    study = read_headers(sorted(folder.iterdir()), Limits())
    return select_views(study.series, Limits())


def test_a_later_spot_compression_view_does_not_replace_the_screening_view(tmp_path):
    spot = {"laterality": "L", "view": "CC", "tags": {
        "ViewCodeSequence": _view_code("CC", ("399055006", "Spot Compression")), "ContentTime": "130000"}}
    written = write_study(tmp_path, [spot])
    selection = _selected(tmp_path)
    chosen = {view.label: written[view.instance.sop_instance_uid] for view in selection.views}
    assert set(chosen) == {"R CC", "R MLO", "L CC", "L MLO"}
    assert chosen["L CC"].get("lesion") == "round_mass"  # the screening image, not the spot view
    assert selection.duplicates == []
    assert len(selection.rejected) == 1 and "Spot Compression" in selection.rejected[0]


def test_for_processing_images_are_not_read_as_mammograms(tmp_path):
    raw = [{"laterality": lat, "view": view, "pixels": lambda image: 4095 - image,  # exposure-like: breast dark
            "tags": {"PresentationIntentType": "FOR PROCESSING"}} for lat, view, _ in SCREENING]
    written = write_study(tmp_path, raw)
    selection = _selected(tmp_path)
    assert [written[v.instance.sop_instance_uid].get("pixels") for v in selection.views] == [None] * 4
    assert len(selection.rejected) == 4 and all("For Processing" in why for why in selection.rejected)


def test_for_processing_images_alone_are_rejected(tmp_path):
    study = generate_uid()
    for number, (lat, view, _) in enumerate(SCREENING, start=1):
        path = write_projection_image(np.full((96, 96), 1000.0), tmp_path / f"{number}.dcm", modality="MG",
                                      tags={"ImageLaterality": lat, "ViewPosition": view, "StudyInstanceUID": study,
                                            "PresentationIntentType": "FOR PROCESSING"})
        assert path.exists()
    selection = _selected(tmp_path)
    assert selection.views == [] and len(selection.rejected) == 4
    assert all("For Processing" in why for why in selection.rejected)


@pytest.fixture(scope="module")
def shipped_report(tmp_path_factory):
    source = tmp_path_factory.mktemp("mg")
    write_study(source)
    models = tmp_path_factory.mktemp("models")
    (models / BUNDLE.name).symlink_to(BUNDLE)
    engine = Engine(Registry([models]), "cpu")
    engine.load_all()
    workdir = tmp_path_factory.mktemp("job")
    return analyze([source], engine, model="mammography", limits=Limits(), workdir=workdir), workdir


def test_sr_suspicion_scores_are_the_findings_json_values(shipped_report):
    report, workdir = shipped_report
    sr = hd.sr.srread(workdir / "mammography_sr.dcm")
    groups = [*sr.content.get_image_measurement_groups(), *sr.content.get_planar_roi_measurement_groups()]
    written = {str(g.tracking_identifier): [float(m.value) for m in g.get_measurements()] for g in groups}
    expected = {}
    for finding in report.findings:
        if finding.label in ("mammogram_view", "suspicious_region"):
            kind = "view" if finding.label == "mammogram_view" else "region"
            label = f"{finding.attributes['laterality']} {finding.attributes['view']} {kind}"
            expected[label] = [m.value for m in finding.measurements if m.name == "suspicion_probability"]
    assert written == expected
    assert any(report.summary.get(k) for k in ("heat_maps",)), "the study's mass should be flagged"
