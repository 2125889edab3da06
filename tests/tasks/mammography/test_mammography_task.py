"""The mammography task through inference.pipeline.analyze on random-weight bundles and phantom MG studies."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Resized, SpatialPadd

from dicom_io import validate
from dicom_io.limits import Limits
from dicom_io.synthetic import write_ct_series
from inference.errors import NoModelForStudyError
from inference.findings import ReportStatus
from inference.pipeline import analyze
from inference.tasks.mammography import (
    BREAST_COMPOSITION,
    DENSITY_CODES,
    FLAG,
    NO_FLAG,
    SUSPICION,
    SUSPICION_FLAG,
    SUSPICIOUS_REGION,
    BreastResult,
    ImageResult,
    OperatingPoint,
    OutputSpec,
    aggregate,
    apply_operating_point,
    study_summary,
    to_source_grid,
    top_region,
)

from .conftest import load_engine, write_mammo_study, write_test_bundle


def _run(engine, tmp_path, paths, name="job", model=None):
    return analyze(paths, engine, model=model, limits=Limits(), workdir=tmp_path / name)


def _by_label(report, label):
    return [f for f in report.findings if f.label == label]


# -- aggregation and the operating point (no network) ------------------------------------------------------


class _FakeView:
    def __init__(self, laterality: str, view: str) -> None:
        self.laterality, self.view, self.label = laterality, view, f"{laterality} {view}"


def _result(laterality, view, density, suspicion):
    return ImageResult(_FakeView(laterality, view), None, np.asarray(density, float), suspicion)


SPEC = OutputSpec(slice(0, 4), 4, ("A", "B", "C", "D"))
POINT = OperatingPoint(0.4, 0.85, 0.9, "held-out phantoms")


def test_breast_density_is_mean_of_its_views_and_suspicion_the_maximum():
    images = [_result("R", "CC", [0.7, 0.1, 0.1, 0.1], 0.2), _result("R", "MLO", [0.1, 0.5, 0.3, 0.1], 0.6),
              _result("L", "CC", [0.0, 0.0, 0.2, 0.8], 0.1)]
    right, left = aggregate(images)
    assert (right.laterality, left.laterality) == ("R", "L")
    np.testing.assert_allclose(right.density_probabilities, [0.4, 0.3, 0.2, 0.1])
    assert right.suspicion == 0.6 and left.suspicion == 0.1 and right.views == ["CC", "MLO"]


def test_flag_at_threshold_is_inclusive_and_study_result_is_the_most_suspicious_breast():
    images = [_result("R", "CC", [1, 0, 0, 0], 0.39), _result("L", "CC", [0, 0, 1, 0], 0.4),
              _result("L", "MLO", [0, 0, 0, 1], 0.1)]
    flagged = apply_operating_point(images, POINT)
    assert [r.view.label for r in flagged] == ["L CC"]
    summary = study_summary(images, aggregate(images), POINT, SPEC)
    assert summary["result"] == "flag for attention" and summary["most_suspicious_breast"] == "L"
    assert summary["suspicion_probability"] == 0.4
    assert "Second reader's suggestion" in summary["suggestion"]
    assert "sensitivity 0.85" in summary["suggestion"] and "specificity 0.90" in summary["suggestion"]
    # BI-RADS: the study's density is the denser breast's (left: mean of C and D ties to C, right A).
    assert summary["density"] == "C" and summary["density_right"] == "A"


def test_below_threshold_everywhere_is_no_flag():
    images = [_result("R", "CC", [1, 0, 0, 0], 0.2), _result("L", "CC", [1, 0, 0, 0], 0.39)]
    assert apply_operating_point(images, POINT) == []
    summary = study_summary(images, aggregate(images), POINT, SPEC)
    assert summary["result"] == "no flag" and summary["most_suspicious_breast"] == "L"
    assert summary["flagged_images"] is None


def test_density_only_summary_has_no_flag():
    images = [_result("R", "CC", [0, 1, 0, 0], None)]
    spec = OutputSpec(slice(0, 4), None, ("A", "B", "C", "D"))
    summary = study_summary(images, [BreastResult("R", np.array([0, 1.0, 0, 0]), None, ["CC"])], None, spec)
    assert summary["result"] is None and "Density only" in summary["suggestion"] and summary["density"] == "B"


def test_top_region_box_holds_the_peak_inside_the_breast():
    heat = np.zeros((60, 80))
    heat[10:20, 30:45] = 0.8
    heat[14, 40] = 1.0
    heat[50:55, 5:10] = 1.0  # brighter blob outside the breast is ignored
    breast = np.zeros((60, 80), bool)
    breast[:40, 20:] = True
    box, peak = top_region(heat, breast)
    assert box == (10, 30, 20, 45) and peak == (14, 40)


def test_heat_map_goes_back_to_the_source_grid_through_the_inverted_preprocessing():
    preprocessing = Compose([Resized(keys="image", spatial_size=64, size_mode="longest", mode="area"),
                             SpatialPadd(keys="image", spatial_size=[64, 64])])
    source = np.zeros((100, 50), np.float32)
    prepared = preprocessing({"image": MetaTensor(torch.from_numpy(source)[None])})["image"]
    heat = torch.zeros(1, 64, 64)
    heat[:, 32:, 16:32] = 1.0  # lower half, left half of the 32-wide image padded by 16 on each side
    back = to_source_grid(heat, prepared, preprocessing, source.shape)
    assert back.shape == (100, 50)
    assert back[60:, :23].mean() > 0.95 and back[:45].max() < 0.05 and back[:, 27:].max() < 0.05


# -- end to end on random-weight bundles ---------------------------------------------------------------------


def test_flagged_study_gets_per_view_and_per_breast_findings_heat_maps_and_boxes(flag_all_engine, tmp_path):
    paths = write_mammo_study(tmp_path / "study", seed=1)
    report = _run(flag_all_engine, tmp_path, paths)
    assert report.status is ReportStatus.complete, report.reasons
    s = report.summary
    assert s["result"] == "flag for attention" and s["views_analysed"] == "R CC, R MLO, L CC, L MLO"
    assert s["operating_threshold"] == 0.5 and s["operating_sensitivity"] == 0.9
    views = _by_label(report, "mammogram_view")
    assert len(views) == 4 and all(f.attributes["flagged"] for f in views)
    for breast in _by_label(report, "breast"):
        mine = [f for f in views if f.attributes["laterality"] == breast.attributes["laterality"]]
        assert breast.confidence == pytest.approx(max(f.confidence for f in mine), abs=1e-4)
        for name in ("density_probability_A", "density_probability_D"):
            value = {m.name: m.value for m in breast.measurements}[name]
            assert value == pytest.approx(np.mean([{m.name: m.value for m in f.measurements}[name]
                                                   for f in mine]), abs=2e-4)
    regions = _by_label(report, "suspicious_region")
    assert len(regions) == 4
    for region in regions:
        (r0, c0), (r1, c1) = region.location.bounding_box_rc
        assert 0 <= r0 < r1 <= 128 and 0 <= c0 < c1 <= 128
        assert r0 <= region.location.pixel_rc[0] < r1 and c0 <= region.location.pixel_rc[1] < c1
    names = {a.name for a in report.artifacts}
    assert {"mammography_sr.dcm", "mammography_heatmap_R_CC.dcm", "mammography_heatmap_L_MLO.png"} <= names
    assert report.model.trained_on_synthetic_data and "synthetic" in report.disclaimer


def test_sr_and_heat_map_secondary_captures_read_back_and_pass_dciodvfy(flag_all_engine, tmp_path):
    paths = write_mammo_study(tmp_path / "study", seed=2, photometric="MONOCHROME1")
    report = _run(flag_all_engine, tmp_path, paths)
    workdir = tmp_path / "job"
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(workdir / "mammography_sr.dcm"))
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 4 and {g.source_images[0].referenced_sop_instance_uid for g in groups} == set(sources)
    for group in groups:
        (density,) = group.get_qualitative_evaluations(name=BREAST_COMPOSITION)
        assert density.value.value in {c.value for c in DENSITY_CODES.values()}
        (flag,) = group.get_qualitative_evaluations(name=SUSPICION_FLAG)
        assert flag.value.value == FLAG.value
    regions = sr.content.get_planar_roi_measurement_groups()
    assert len(regions) == 4
    findings = {f.location.source.sop_instance_uid: f for f in _by_label(report, "suspicious_region")}
    for group in regions:
        assert group.finding_type.value == SUSPICIOUS_REGION.value
        region = group.roi
        assert region.graphic_type.value == "POLYLINE"
        (selected_from,) = region.ContentSequence  # SELECTED FROM the source image
        uid = selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        (r0, c0), (r1, c1) = findings[uid].location.bounding_box_rc
        points = region.value
        assert np.array_equal(points[0], points[-1])  # closed
        assert points[:, 0].min() == c0 and points[:, 0].max() == c1
        assert points[:, 1].min() == r0 and points[:, 1].max() == r1
        (score,) = group.get_measurements(name=SUSPICION)
        assert score.value == pytest.approx(findings[uid].confidence, abs=1e-3)
    text = str(pydicom.dcmread(workdir / "mammography_sr.dcm"))
    assert "synthetic" in text
    for artifact in (a for a in report.artifacts if a.name.startswith("mammography_heatmap") and
                     a.name.endswith(".dcm")):
        sc = hd.imread(workdir / artifact.name)
        source = pydicom.dcmread(sources[sc.SourceImageSequence[0].ReferencedSOPInstanceUID],
                                 stop_before_pixels=True)
        assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.Laterality == source.ImageLaterality
        assert sc.get_frame(1).shape == (source.Rows, source.Columns, 3)
    if not validate.available():
        pytest.skip("dciodvfy (dicom3tools) is not installed; SR/SC read back but were not validated")
    for artifact in (a for a in report.artifacts if a.media_type == "application/dicom"):
        result = validate.dciodvfy(workdir / artifact.name)
        assert result.ok, (artifact.name, result.errors)
        assert not [w for w in result.warnings if "Laterality" in w], result.warnings


def test_unflagged_study_has_no_heat_map_and_says_no_flag(flag_none_engine, tmp_path):
    report = _run(flag_none_engine, tmp_path, write_mammo_study(tmp_path / "study", seed=3))
    assert report.status is ReportStatus.complete and report.summary["result"] == "no flag"
    assert [a.name for a in report.artifacts] == ["mammography_sr.dcm"]
    assert not _by_label(report, "suspicious_region")
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(tmp_path / "job" / "mammography_sr.dcm"))
    for group in sr.content.get_image_measurement_groups():
        (flag,) = group.get_qualitative_evaluations(name=SUSPICION_FLAG)
        assert flag.value.value == NO_FLAG.value


def test_monochrome1_and_monochrome2_give_the_same_reading(flag_none_engine, tmp_path):
    values = []
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        paths = write_mammo_study(tmp_path / photometric, seed=4, photometric=photometric)
        report = _run(flag_none_engine, tmp_path, paths, photometric)
        values.append([f.confidence for f in _by_label(report, "mammogram_view")])
    assert values[0] == pytest.approx(values[1], abs=1e-3)


# -- input checks -------------------------------------------------------------------------------------------


def test_missing_views_give_partial_and_the_rest_is_analysed(flag_none_engine, tmp_path):
    paths = write_mammo_study(tmp_path / "study", seed=5, views=(("R", "CC"), ("R", "MLO"), ("L", "CC")))
    report = _run(flag_none_engine, tmp_path, paths)
    assert report.status is ReportStatus.partial
    assert any("Views missing: L MLO" in r for r in report.reasons), report.reasons
    assert report.summary["views_analysed"] == "R CC, R MLO, L CC" and report.summary["result"] == "no flag"


def test_duplicated_view_uses_the_latest_image_and_says_which(flag_none_engine, tmp_path):
    views = (("R", "CC"), ("R", "MLO"), ("L", "CC"), ("L", "MLO"), ("L", "CC"))
    paths = write_mammo_study(tmp_path / "study", seed=6, views=views, tags={4: {"InstanceNumber": 9}})
    report = _run(flag_none_engine, tmp_path, paths)
    assert report.status is ReportStatus.partial
    latest = pydicom.dcmread(paths[4], stop_before_pixels=True).SOPInstanceUID
    earlier = pydicom.dcmread(paths[2], stop_before_pixels=True).SOPInstanceUID
    (reason,) = [r for r in report.reasons if "present 2 times" in r]
    assert f"used image {latest}" in reason and f"ignored {earlier}" in reason and "L CC" in reason
    used = {f.location.source.sop_instance_uid for f in _by_label(report, "mammogram_view")}
    assert latest in used and earlier not in used and len(used) == 4


@pytest.mark.parametrize(
    ("tags", "pixels", "words"),
    [({"ImageLaterality": None}, None, ["ImageLaterality", "not R or L"]),
     ({"ViewPosition": None, "ViewCodeSequence": None}, None, ["ViewPosition", "not CC or MLO"]),
     ({"ViewPosition": "XCCL"}, None, ["XCCL"]),
     ({}, np.full((128, 128), 2000.0) + np.random.default_rng(0).normal(0, 5, (128, 128)),
      ["nearly uniform"]),
     ({}, np.random.default_rng(0).uniform(0, 4095, (128, 128)), ["no breast region"])],
    ids=["no-laterality", "no-view", "not-a-screening-view", "uniform", "noise"],
)
def test_non_mammogram_image_is_rejected_with_reason_and_the_rest_analysed(flag_none_engine, tmp_path, tags,
                                                                           pixels, words):
    paths = write_mammo_study(tmp_path / "study", seed=7, tags={3: tags},
                              pixels=None if pixels is None else {3: pixels})
    report = _run(flag_none_engine, tmp_path, paths)
    assert report.status is ReportStatus.partial
    bad = pydicom.dcmread(paths[3], stop_before_pixels=True).SOPInstanceUID
    (reason,) = [r for r in report.reasons if bad in r]
    assert all(word in reason for word in words), reason
    assert any("Views missing: L MLO" in r for r in report.reasons)
    assert len(_by_label(report, "mammogram_view")) == 3


def test_study_with_no_usable_mammogram_is_rejected(flag_none_engine, tmp_path):
    paths = write_mammo_study(tmp_path / "study", seed=8, views=(("R", "CC"), ("L", "CC")),
                              tags={0: {"ImageLaterality": "B"}, 1: {"ViewPosition": "SPOT"}})
    report = _run(flag_none_engine, tmp_path, paths)
    assert report.status is ReportStatus.rejected and not report.findings and not report.summary
    assert len(report.reasons) == 2 and "ImageLaterality" in report.reasons[0] and "SPOT" in report.reasons[1]


def test_study_without_mg_images_is_not_accepted_with_the_reason(flag_none_engine, tmp_path):
    paths = write_ct_series(np.zeros((4, 32, 32), np.int16), tmp_path / "ct")
    with pytest.raises(NoModelForStudyError, match=r"modality CT not in \[MG\]"):
        _run(flag_none_engine, tmp_path, paths, model="mammo_test")


# -- bundles without a suspicion output or an operating point ----------------------------------------------


def test_density_only_three_channel_bundle_runs_through_the_same_path(tmp_path):
    """Like the MONAI zoo breast_density_classification bundle: 299 x 299 x 3 input, logits for A-D."""
    engine = load_engine(write_test_bundle(tmp_path / "bundles", "density_only", density_only=True, size=299))
    report = _run(engine, tmp_path, write_mammo_study(tmp_path / "study", seed=9))
    assert report.status is ReportStatus.complete, report.reasons
    assert report.summary["result"] is None and "suspicion_probability" not in report.summary
    assert report.summary["density"] in "ABCD"
    assert [a.name for a in report.artifacts] == ["mammography_sr.dcm"]
    for finding in _by_label(report, "mammogram_view"):
        assert finding.confidence is None and finding.attributes["flagged"] is None
        assert sum(m.value for m in finding.measurements) == pytest.approx(1.0, abs=1e-3)
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(tmp_path / "job" / "mammography_sr.dcm"))
    for group in sr.content.get_image_measurement_groups():
        assert group.get_qualitative_evaluations(name=SUSPICION_FLAG) == []
        assert len(group.get_qualitative_evaluations(name=BREAST_COMPOSITION)) == 1


def test_bundle_without_operating_point_gives_scores_but_no_flag(tmp_path):
    engine = load_engine(write_test_bundle(tmp_path / "bundles", "no_point", operating_point=False))
    report = _run(engine, tmp_path, write_mammo_study(tmp_path / "study", seed=10))
    assert report.status is ReportStatus.partial and "operating_point" in report.reasons[0]
    assert report.summary["result"] is None and report.summary["suspicion_probability"] is not None
