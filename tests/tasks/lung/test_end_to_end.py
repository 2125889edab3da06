"""The shipped lung_nodule bundle through inference.pipeline.analyze on a phantom written as DICOM files:
nodules found and measured as constructed, Lung-RADS suggestion, SEG/SR/key images valid and consistent, and
the same findings whatever the file order, instance numbering or transfer syntax."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless

from dicom_io import validate
from dicom_io.limits import Limits
from inference.findings import FindingsReport
from inference.pipeline import analyze
from tests.tasks.lung.accuracy import (
    assert_each_nodule_found_within_one_voxel,
    assert_nodules_measured_as_constructed,
)


def _analyze(paths: list[Path], engine, workdir: Path) -> FindingsReport:
    return analyze([paths[0].parent], engine, model="lung_nodule", limits=Limits(), workdir=workdir)


@pytest.fixture(scope="module")
def reference(lung_engine, write_phantom, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("job")
    return _analyze(write_phantom("plain"), lung_engine, workdir), workdir


def test_each_constructed_nodule_is_found_within_one_voxel(reference, lung_phantom, nodule_specs):
    assert_each_nodule_found_within_one_voxel(reference[0], lung_phantom, nodule_specs)


def test_nodules_have_constructed_type_side_size_and_category(reference, lung_phantom, nodule_specs):
    assert_nodules_measured_as_constructed(reference[0], lung_phantom, nodule_specs)


def test_seg_segments_map_to_the_source_frames_of_their_nodules(reference, lung_phantom):
    report, workdir = reference
    seg = hd.seg.segread(workdir / "seg.dcm")
    assert seg.SeriesInstanceUID != report.series[0].series_instance_uid
    assert seg.StudyInstanceUID == report.study_instance_uid
    assert len(seg.SegmentSequence) == len(report.findings)
    for finding in report.findings:
        _, j, i = (round(v) for v in finding.location.voxel_kji)
        source_uid = finding.location.source.sop_instance_uid
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source_uid], segment_numbers=[finding.segment_number],
            combine_segments=False,
        )
        assert pixels[0, j, i, 0], finding.segment_number


def test_sr_groups_reference_the_seg_segments_and_resolve(reference):
    report, workdir = reference
    sr = hd.sr.srread(workdir / "sr.dcm")
    seg = dcmread(workdir / "seg.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(report.findings)
    referenced = {(g.referenced_segment.referenced_sop_instance_uid, n)
                  for g in groups for n in g.referenced_segment.referenced_segment_numbers}
    assert referenced == {(seg.SOPInstanceUID, f.segment_number) for f in report.findings}
    evidence = {item.SeriesInstanceUID: {ref.ReferencedSOPInstanceUID for ref in item.ReferencedSOPSequence}
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for item in study.ReferencedSeriesSequence}
    assert seg.SOPInstanceUID in evidence[seg.SeriesInstanceUID]
    assert report.series[0].series_instance_uid in evidence
    names = {m.name.meaning for g in groups for m in g.get_measurements()}
    assert {"Long axis", "Short axis", "Diameter", "Volume"} <= names


def test_key_images_are_written_per_nodule(reference):
    report, workdir = reference
    names = {a.name for a in report.artifacts}
    for finding in report.findings:
        n = finding.segment_number
        assert {f"key_nodule_{n}.dcm", f"key_nodule_{n}.png"} <= names
        sc = dcmread(workdir / f"key_nodule_{n}.dcm")
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == finding.location.source.sop_instance_uid


@pytest.mark.skipif(not validate.available(), reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("name", ["seg.dcm", "sr.dcm", "key_nodule_1.dcm"])
def test_result_objects_pass_dciodvfy_without_errors(reference, name):
    _, workdir = reference
    result = validate.dciodvfy(workdir / name)
    assert result.errors == [], result.errors


def _summary(report: FindingsReport) -> list[tuple]:
    return sorted(
        (tuple(np.round(f.location.patient_lps_mm, 1)), f.attributes["type"], f.attributes["lung_rads_suggestion"],
         tuple(round(m.value, 1) for m in f.measurements))
        for f in report.findings
    )


@pytest.mark.parametrize(
    "options",
    [{"shuffle": True, "reverse_instance_numbers": True}, {"transfer_syntax": JPEGLSLossless, "shuffle": True}],
    ids=["shuffled-reversed-numbers", "jpegls-lossless-shuffled"],
)
def test_file_order_numbering_and_transfer_syntax_give_the_same_findings(
    reference, lung_engine, write_phantom, tmp_path, options
):
    report, _ = reference
    variant = _analyze(write_phantom("variant", **options), lung_engine, tmp_path / "job")
    assert _summary(variant) == _summary(report)
    assert variant.summary["lung_rads_suggestion"] == report.summary["lung_rads_suggestion"]
