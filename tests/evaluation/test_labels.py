"""Label loaders: formats, masks aligned to the image grid, and the account of bad labels."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_io.limits import Limits
from dicom_io.reader import read_headers
from dicom_io.synthetic import write_ct_series
from dicom_io.volume import build_volume
from dicom_io.writers.provenance import ModelProvenance
from dicom_io.writers.seg import SegmentSpec, binary_segmentation
from inference.evaluation.labels import LabelError, align_mask, load_labels, read_mask

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _affine(spacing=(2.5, 0.8, 0.8), origin=(-10.0, -20.0, 30.0)):
    """Axial (k, j, i) -> LPS: k along +z, j along +y, i along +x."""
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2] = spacing
    affine[:3, 3] = origin
    affine[3, 3] = 1
    return affine


def _mask(shape=(6, 10, 12)):
    mask = np.zeros(shape, np.int32)
    mask[2:4, 3:6, 4:9] = 1
    mask[4, 7:9, 1:3] = 2
    return mask


def test_csv_account_names_missing_unknown_duplicate_and_invalid(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("case_id,value\ncase1,120\ncase2,nan\ncase3,96\ncase3,97\nghost,50\ncase5,\n")
    labels = load_labels(path)
    issues = labels.issues + labels.reconcile(["case1", "case3", "case4"])
    found = {(i.kind, i.case_id) for i in issues}
    assert labels.values == {"case1": 120.0, "case3": 96.0, "ghost": 50.0}
    assert found == {
        ("invalid_value", "case2"),
        ("duplicate", "case3"),
        ("invalid_value", "case5"),
        ("missing_label", "case4"),
        ("unknown_case", "ghost"),
    }
    assert all(i.detail for i in issues)


def test_csv_class_names_need_the_positive_class(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("id,class\na,malignant\nb,benign\nc,benign\n")
    labels = load_labels(path)
    with pytest.raises(LabelError, match="--positive"):
        labels.binary_classes(None)
    assert labels.binary_classes("malignant")[0] == {"a": 1, "b": 0, "c": 0}


def test_nodule_json_centres_boxes_and_bad_entries(tmp_path):
    path = tmp_path / "nodules.json"
    path.write_text(
        json.dumps(
            {
                "cases": {
                    "scan1": [
                        {"center_lps": [1, 2, 3], "diameter_mm": 6},
                        {"box_lps": [[0, 0, 0], [4, 10, 2]]},
                    ],
                    "scan2": [
                        {"center_lps": [1, 2], "diameter_mm": 6},
                        {"center_lps": [0, 0, 0], "diameter_mm": -1},
                        {"center_lps": [9, 9, 9], "diameter_mm": 5, "exclude": True},
                    ],
                    "scan3": "nodule",
                }
            }
        )
    )
    labels = load_labels(path)
    assert labels.nodules["scan1"][1].center == (2.0, 5.0, 1.0)
    assert labels.nodules["scan1"][1].diameter_mm == 10.0
    assert labels.nodules["scan1"][0].exclude is False
    # scan2's valid nodule alone would make the detections of the other two false positives: not scored
    assert set(labels.nodules) == {"scan1"}
    assert sorted((i.kind, i.case_id) for i in labels.issues) == [
        ("invalid_value", "scan2"),
        ("invalid_value", "scan3"),
    ]
    scan2 = next(i.detail for i in labels.issues if i.case_id == "scan2")
    assert "nodule 0: center_lps needs 3 numbers" in scan2
    assert "nodule 1: diameter_mm must be positive" in scan2
    assert scan2.endswith("the case is not scored.")
    assert labels.reconcile(["scan1", "scan2", "scan3"]) == []  # reported once, not also as missing


@pytest.mark.parametrize(
    ("nodule", "message"),
    [
        ({"diameter_mm": "x"}, "center_lps is missing"),
        ({"center_lps": [1, 2, 3]}, "diameter_mm is missing"),
        ({"center_lps": [1, 2, 3], "diameter_mm": "5"}, "diameter_mm needs a number"),
        ({"center_lps": ["1", "2", "3"], "diameter_mm": 5}, "center_lps needs 3 numbers"),
        ({"center_lps": [1, 2, float("nan")], "diameter_mm": 5}, "center_lps needs 3 numbers"),
        ({"box_lps": [[0, 0, 0], [1, 1]]}, "box_lps needs two corners of 3 numbers"),
        ({"box_lps": [[1, 1, 1], [1, 1, 1]]}, "box_lps is empty"),
        ({"center_lps": [1, 2, 3], "diameter_mm": 5, "exclude": "no"}, "exclude must be true or false"),
        ([1, 2, 3], "expected an object with center_lps"),
    ],
)
def test_nodule_json_messages_say_what_is_wrong(tmp_path, nodule, message):
    path = tmp_path / "nodules.json"
    path.write_text(json.dumps({"cases": {"a": [{"center_lps": [0, 0, 0], "diameter_mm": 4}, nodule]}}))
    labels = load_labels(path)
    assert labels.nodules == {}
    [issue] = labels.issues
    assert issue.kind == "invalid_value" and issue.case_id == "a"
    assert f"nodule 1: {message}" in issue.detail
    assert "KeyError" not in issue.detail and "'" not in issue.detail.split("nodule 1:")[1]


def test_nodule_json_in_pixels_for_2d_images(tmp_path):
    path = tmp_path / "lesions.json"
    path.write_text(
        json.dumps(
            {"mg1": [{"box_rc": [[10, 20], [30, 28]]}], "mg2": [{"center_rc": [5, 5], "diameter_px": 4}]}
        )
    )
    labels = load_labels(path)
    assert labels.nodules["mg1"][0].center == (20.0, 24.0)
    assert labels.nodules["mg1"][0].diameter_mm == 20.0  # pixels for 2D labels
    mixed = tmp_path / "mixed.json"
    mixed.write_text(
        json.dumps(
            {
                "a": [{"center_rc": [1, 1], "diameter_px": 3}],
                "b": [{"center_lps": [1, 1, 1], "diameter_mm": 3}],
            }
        )
    )
    with pytest.raises(ValueError, match="mixes 2D"):
        load_labels(mixed)


def test_unknown_label_format_is_a_clear_error(tmp_path):
    path = tmp_path / "labels.xlsx"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown format '.xlsx'"):
        load_labels(path)


def _nifti_like_monai(mask, affine, path):
    """Save the way NIfTI tools do: array (i, j, k) with an RAS affine, here also flipped along i."""
    array = mask.transpose(2, 1, 0)[::-1]
    nifti_affine = LPS_TO_RAS @ affine[:, [2, 1, 0, 3]]
    nifti_affine[:3, 3] += nifti_affine[:3, 0] * (array.shape[0] - 1)
    nifti_affine[:3, 0] *= -1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array).astype(np.uint8), nifti_affine), str(path))


def test_nifti_mask_in_other_axis_order_aligns_exactly(tmp_path):
    mask, affine = _mask(), _affine()
    _nifti_like_monai(mask, affine, tmp_path / "case1.nii.gz")
    array, nifti_affine, partial = read_mask(tmp_path / "case1.nii.gz")
    np.testing.assert_array_equal(align_mask(array, nifti_affine, affine, mask.shape, partial=partial), mask)


@pytest.mark.parametrize(
    ("spacing", "shape", "match"),
    [((2.5, 0.8, 1.6), (6, 10, 12), "not on the image grid"), ((2.5, 0.8, 0.8), (5, 10, 12), "must cover")],
    ids=["other-spacing", "other-extent"],
)
def test_nifti_mask_geometry_mismatch_is_a_label_error(tmp_path, spacing, shape, match):
    _nifti_like_monai(_mask(shape), _affine(spacing), tmp_path / "case1.nii.gz")
    array, nifti_affine, partial = read_mask(tmp_path / "case1.nii.gz")
    with pytest.raises(LabelError, match=match) as info:
        align_mask(array, nifti_affine, _affine(), (6, 10, 12), partial=partial)
    assert info.value.kind == "geometry_mismatch"


def test_unreadable_mask_is_a_label_error(tmp_path):
    (tmp_path / "case1.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(LabelError) as info:
        read_mask(tmp_path / "case1.nii.gz")
    assert info.value.kind == "unreadable"


def test_dicom_seg_with_omitted_empty_frames_aligns_to_ct_volume(tmp_path):
    hu = np.full((6, 10, 12), -50, np.int16)
    paths = write_ct_series(hu, tmp_path / "ct", spacing=(2.5, 0.8, 0.8), origin=(-10.0, -20.0, 30.0))
    study = read_headers(paths, Limits())
    volume = build_volume(study.series[0], Limits())
    by_uid = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    sources = [by_uid[ref.sop_instance_uid] for ref in volume.slice_refs]
    mask = _mask()
    provenance = ModelProvenance(
        name="m",
        version="1",
        weights_sha256="ab" * 32,
        trained_on_synthetic_data=True,
        disclaimer="Research use only.",
    )
    seg = binary_segmentation(
        sources,
        mask,
        [SegmentSpec(1, "a"), SegmentSpec(2, "b")],
        provenance=provenance,
        series_instance_uid=generate_uid(),
        series_number=900,
        description="truth",
    )
    seg.save_as(tmp_path / "case1.dcm", enforce_file_format=True)
    labels = load_labels(tmp_path)
    array, seg_affine, partial = read_mask(labels.masks["case1"])
    assert partial and array.shape[0] < mask.shape[0]  # empty frames omitted
    np.testing.assert_array_equal(
        align_mask(array, seg_affine, volume.affine, volume.shape, partial=partial), mask
    )


def test_bone_age_labels_outside_the_declared_output_range_are_flagged(tmp_path):
    """The bone-age bundle's metadata.json declares its output as "bone age (months)" in [0, 240]: -5 and 1e9
    months are scored as given but reported, and the unit labels the plots."""
    from pathlib import Path

    from inference.evaluation.evaluate import check_inputs, regression_output
    from inference.registry import Registry

    bundle = Registry([Path(__file__).resolve().parents[2] / "models"]).get("bone_age")
    assert regression_output(bundle) == {
        "quantity": "bone age (months)",
        "unit": "months",
        "value_range": [0, 240],
    }
    for case in ("a", "b", "c", "d"):
        (tmp_path / "data" / case).mkdir(parents=True)
    labels = tmp_path / "ages.csv"
    labels.write_text("case_id,value\na,-5\nb,1e9\nc,120\nd,abc\n")
    _cases, label_set, _spec = check_inputs(bundle, tmp_path / "data", labels)
    assert sorted(label_set.values) == ["a", "b", "c"]
    assert [(i.kind, i.case_id) for i in label_set.issues] == [
        ("invalid_value", "d"),
        ("implausible_value", "a"),
        ("implausible_value", "b"),
    ]
    assert "outside 0 to 240" in label_set.issues[2].detail and "1e+09" in label_set.issues[2].detail
