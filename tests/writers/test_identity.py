"""Result UIDs derived from what produced the results, so that a re-analysis gives the same ones, and the
UIDs the SEG and SR derive from their own (tracking UIDs) stay consistent between them."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom import config
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from dicom_io.writers.identity import ResultSet
from dicom_io.writers.seg import SegmentSpec, binary_segmentation
from dicom_io.writers.sr import MeasurementGroupSpec, SegmentROI, WholeImage, measurement_report


def test_result_uids_are_the_same_for_the_same_sources_model_and_role(ct_series, provenance):
    results = ResultSet.of(provenance, ct_series)
    again = ResultSet.of(provenance, reversed(ct_series))  # the order the instances came in does not matter
    assert results.series_uid("sr") == again.series_uid("sr")
    assert results.instance_uid("sc:1") == again.instance_uid("sc:1")
    uids = {results.series_uid("sr"), results.instance_uid("sr"), results.series_uid("sc"),
            results.instance_uid("sc:1"), results.instance_uid("sc:2"),
            ResultSet.of(provenance, ct_series[1:]).instance_uid("sr"),
            ResultSet.of(dataclasses.replace(provenance, weights_sha256="cd" * 32), ct_series).instance_uid("sr"),
            ResultSet.of(dataclasses.replace(provenance, version="0.1.1"), ct_series).instance_uid("sr")}
    assert len(uids) == 8  # another role, level, source set, weights or model version: another UID
    for uid in uids:
        validate_value("UI", uid, config.RAISE)


def _seg(ct_series, provenance, sop_instance_uid):
    mask = np.zeros((6, 16, 20), np.uint8)
    mask[2:4, 3:6, 4:8] = 1
    return binary_segmentation(ct_series, mask, [SegmentSpec(1, "Nodule 1", tracking_id="Nodule 1")],
                               provenance=provenance, series_instance_uid=generate_uid(), series_number=1,
                               sop_instance_uid=sop_instance_uid, description="AI SEG")


def _sr(ct_series, seg, provenance, sop_instance_uid):
    groups = [MeasurementGroupSpec(SegmentROI(seg, 1), "Nodule 1", codes.SCT.Nodule),
              MeasurementGroupSpec(WholeImage(ct_series[0]), "Study", codes.SCT.Lung)]
    sr = measurement_report(ct_series, groups, provenance=provenance, series_instance_uid=generate_uid(),
                            series_number=2, sop_instance_uid=sop_instance_uid, description="AI SR")
    return hd.sr.Comprehensive3DSR.from_dataset(sr)


def test_tracking_uids_follow_the_seg_and_sr_uids_and_the_sr_references_the_seg_ones(ct_series, provenance):
    seg_uid, sr_uid = generate_uid(), generate_uid()
    segs = [_seg(ct_series, provenance, seg_uid) for _ in range(2)]
    srs = [_sr(ct_series, seg, provenance, sr_uid) for seg in segs]
    tracking = [seg.get_segment_description(1).tracking_uid for seg in segs]
    assert tracking[0] == tracking[1] and tracking[0] != _seg(ct_series, provenance, generate_uid()) \
        .get_segment_description(1).tracking_uid
    groups = [sr.content.get_volumetric_roi_measurement_groups() + sr.content.get_image_measurement_groups()
              for sr in srs]
    assert [g.tracking_uid for g in groups[0]] == [g.tracking_uid for g in groups[1]]
    assert groups[0][0].tracking_uid == tracking[0]  # the SR tracks the SEG's segment
    assert groups[0][1].tracking_uid not in (tracking[0], sr_uid, seg_uid)


def test_every_result_has_the_series_date_and_time_it_is_given_or_now(ct_series, provenance):
    started = datetime(2026, 1, 2, 3, 4, 5, 600000)
    mask = np.zeros((6, 16, 20), np.uint8)
    mask[2, 3:6, 4:8] = 1
    seg = binary_segmentation(ct_series, mask, [SegmentSpec(1, "n")], provenance=provenance,
                              series_instance_uid=generate_uid(), series_number=1, description="AI SEG",
                              series_datetime=started)
    sr = measurement_report(ct_series, [MeasurementGroupSpec(WholeImage(ct_series[0]), "s", codes.SCT.Lung)],
                            provenance=provenance, series_instance_uid=generate_uid(), series_number=2,
                            description="AI SR", series_datetime=started)
    for result in (seg, sr):
        assert (str(result.SeriesDate), str(result.SeriesTime)) == ("20260102", "030405.600000")
        assert str(result.ContentDate) >= "20260102"
    now = measurement_report(ct_series, [MeasurementGroupSpec(WholeImage(ct_series[0]), "s", codes.SCT.Lung)],
                             provenance=provenance, series_instance_uid=generate_uid(), series_number=2,
                             description="AI SR")
    assert str(now.SeriesDate) == datetime.now().strftime("%Y%m%d") and now.SeriesTime

