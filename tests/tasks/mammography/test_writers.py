"""The writer additions the mammography task uses: SC laterality, the heat-map overlay, SR finding-site
laterality."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_io import validate
from dicom_io.writers.provenance import ModelProvenance
from dicom_io.writers.sc import heat_map_overlay, secondary_capture
from dicom_io.writers.sr import MeasurementGroupSpec, WholeImage, measurement_report

from .conftest import write_mammo_study

PROVENANCE = ModelProvenance("mammo_test", "0.0.1", "ab" * 32, True, "Synthetic phantoms only.")


@pytest.fixture(scope="module")
def mg_image(tmp_path_factory) -> pydicom.Dataset:
    (path,) = write_mammo_study(tmp_path_factory.mktemp("mg"), views=(("R", "CC"),))
    return pydicom.dcmread(path)


@pytest.mark.parametrize(
    ("image_laterality", "series_laterality", "expected"),
    [("R", None, {"Laterality": "R"}), (None, "L", {"Laterality": "L"}), ("B", None, {"ImageLaterality": "B"}),
     (None, None, {"Laterality": None})],
    ids=["image-R", "series-L", "both", "unknown"],
)
def test_secondary_capture_copies_laterality_without_dciodvfy_errors_or_laterality_warnings(
        mg_image, image_laterality, series_laterality, expected):
    source = mg_image.copy()
    for keyword, value in (("ImageLaterality", image_laterality), ("Laterality", series_laterality)):
        if value is None:
            source.pop(keyword, None)
        else:
            setattr(source, keyword, value)
    sc = secondary_capture(source, np.zeros((source.Rows, source.Columns, 3), np.uint8), provenance=PROVENANCE,
                           series_instance_uid=generate_uid(), series_number=9401, description="heat map")
    for keyword, value in expected.items():
        assert keyword in sc and (sc[keyword].value or None) == value
    assert ("Laterality" in sc) != ("ImageLaterality" in sc)
    if validate.available():
        result = validate.dciodvfy(sc)
        assert result.ok, result.errors
        if expected != {"Laterality": None}:  # empty is right when unknown, but dciodvfy still warns
            assert not [w for w in result.warnings if "Laterality" in w], result.warnings


def test_heat_map_overlay_blends_the_map_draws_the_box_and_puts_text_in_the_chosen_corner():
    display = np.full((200, 300), 100, np.uint8)
    heat = np.zeros((200, 300))
    heat[150:, 200:] = 1.0
    picture = heat_map_overlay(display, heat, ["text"], box_rc=(100, 50, 120, 80), text_corner="right")
    assert picture.shape == (200, 300, 3) and picture.dtype == np.uint8
    assert (picture[10, 5] == 100).all() and not (picture[10, 295] == 100).all()  # text box on the right
    assert picture[180, 280, 0] != picture[180, 280, 2] and (picture[50, 150] == 100).all()  # heat, no heat
    assert tuple(picture[100, 60]) == (0, 255, 0) and tuple(picture[119, 79]) == (0, 255, 0)  # box outline
    assert (picture[110, 65] == 100).all()  # inside the box untouched


def test_sr_finding_site_carries_laterality(mg_image):
    group = MeasurementGroupSpec(roi=WholeImage(mg_image), tracking_id="R CC view", finding_type=codes.SCT.Finding,
                                 finding_site=codes.SCT.Breast, finding_site_laterality=codes.SCT.Right)
    sr = measurement_report([mg_image], [group], provenance=PROVENANCE, series_instance_uid=generate_uid(),
                            series_number=9403, description="test")
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    (site,) = parsed.content.get_image_measurement_groups()[0].finding_sites
    assert site.value == codes.SCT.Breast and site.laterality == codes.SCT.Right
    if validate.available():
        assert validate.dciodvfy(sr).ok
