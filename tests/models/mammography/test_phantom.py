"""The mammography bundle's phantom generator and its DICOM study writer (write_study)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.image2d import load_image2d
from dicom_io.limits import Limits
from dicom_io.reader import read_header

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "mammography"
sys.path.insert(0, str(BUNDLE))
from scripts.make_eval_set import write_study
from scripts.phantom import DENSITY_FRACTION, generate_view

sys.path.remove(str(BUNDLE))
for _name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
    del sys.modules[_name]  # the bundle loader imports its own ``scripts`` package


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_write_study_headers_match_truth(tmp_path: Path, photometric: str) -> None:
    truth = write_study(tmp_path, 11, lesion_probability=1.0, lesion_type="round_mass", density="C",
                        photometric=photometric)
    assert truth.density == "C" and truth.suspicious and truth.photometric == photometric
    assert [(v.laterality, v.view) for v in truth.views] == [("R", "CC"), ("R", "MLO"), ("L", "CC"), ("L", "MLO")]
    for view in truth.views:
        ds = pydicom.dcmread(tmp_path / view.file)
        assert (ds.Modality, ds.ViewPosition, ds.ImageLaterality) == ("MG", view.view, view.laterality)
        assert ds.BodyPartExamined == "BREAST" and ds.PhotometricInterpretation == photometric
        assert ds.StudyInstanceUID == truth.study_instance_uid
        assert ds.ViewCodeSequence[0].CodeMeaning == {"CC": "cranio-caudal", "MLO": "medio-lateral oblique"}[view.view]
        assert ds.PatientOrientation[0] == ("A" if view.laterality == "L" else "P")
        assert bool(view.boxes) == (view.laterality == truth.lesion_laterality)


def test_lesion_box_is_brighter_than_its_surroundings_in_display_sense(tmp_path: Path) -> None:
    truth = write_study(tmp_path, 5, lesion_probability=1.0, lesion_type="calcifications", photometric="MONOCHROME1")
    view = next(v for v in truth.views if v.boxes)
    image = load_image2d(read_header(tmp_path / view.file, Limits()), Limits()).array.astype(np.float64)
    r0, c0, r1, c1 = view.boxes[0]
    ring = image[max(0, r0 - 12):r1 + 12, max(0, c0 - 12):c1 + 12]
    assert image[r0:r1, c0:c1].max() > np.percentile(ring, 90)


def test_chest_wall_is_on_the_image_side_of_the_laterality() -> None:
    rng = np.random.default_rng(0)
    for laterality, chest_wall_col in (("L", 0), ("R", -1)):
        image = generate_view(rng, density=1, view="CC", laterality=laterality).image.astype(float)
        assert image[:, chest_wall_col].mean() > image[:, -1 - chest_wall_col].mean()


def test_denser_category_has_more_bright_tissue() -> None:
    rng = np.random.default_rng(1)
    means = [np.mean([generate_view(rng, density=d, view="CC", laterality="L").image.mean() for _ in range(3)])
             for d in range(len(DENSITY_FRACTION))]
    assert means == sorted(means)
