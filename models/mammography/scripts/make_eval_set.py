"""Write held-out four-view phantom screening studies as MG DICOM, with their truth, for `radinfer evaluate`.

Run from the bundle folder: ``python -m scripts.make_eval_set OUT_DIR [--n 60] [--seed 424242]``. Case k is the
study folder ``OUT_DIR/cases/case_NNN/`` (R_CC, R_MLO, L_CC, L_MLO ``.dcm``; MONOCHROME1 for about a third of
the studies) written by :func:`write_study` with seed ``seed + k`` (never used in training). Label files:

- ``labels.csv``: case id and 1 if the study has a lesion, else 0 (kind ``classification``: the suspicion);
- ``density_labels.csv``: case id and the density category A-D (kind ``multiclass``);
- ``truth.json``: every study's :class:`StudyTruth` (views, lesion boxes in pixels of the written images).

For tests: ``write_study(out_dir, seed, lesion_probability=1.0, lesion_type="round_mass")`` writes one
study with a known lesion and returns where it is.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicom_io.synthetic import write_projection_image
from scripts.phantom import DENSITY_CLASSES, Phantom, generate_study

SIZE = 256
PIXEL_SPACING_MM = 0.9375  # 256 px = 240 mm, a 24 cm detector
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
MONOCHROME1_SHARE = 1 / 3


@dataclass(frozen=True)
class ViewTruth:
    """One written image. ``boxes``: lesions as (row0, col0, row1, col1), end-exclusive, in pixels of the
    written image (the same grid the DICOM pixel data has; rows down, columns right)."""

    file: str
    view: str  # "CC" or "MLO"
    laterality: str  # "R" or "L"
    boxes: list[tuple[int, int, int, int]]
    lesion_types: list[str]


@dataclass(frozen=True)
class StudyTruth:
    """A written study: density category (the same on all views), photometric, the breast with the lesion
    (None: no lesion), and its four views."""

    density: str  # "A".."D"
    photometric: str
    lesion_laterality: str | None
    study_instance_uid: str
    views: list[ViewTruth]

    @property
    def suspicious(self) -> bool:
        """True when the study has a lesion (the study-level truth for the suspicion score)."""
        return self.lesion_laterality is not None

    def as_dict(self) -> dict:
        return {**asdict(self), "suspicious": self.suspicious}


def _view_code(view: str) -> Sequence:
    value, meaning = VIEW_CODES[view]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    item.ViewModifierCodeSequence = Sequence([])
    return Sequence([item])


def write_study(
    out_dir: Path,
    seed: int,
    *,
    lesion_probability: float = 0.5,
    density: str | None = None,
    lesion_type: str | None = None,
    photometric: str | None = None,
) -> StudyTruth:
    """Write one phantom screening study (four MG 'For Presentation' views, 256 x 256, one series) as
    ``out_dir/{R,L}_{CC,MLO}.dcm`` and return its truth.

    ``seed`` fixes everything (the pixels do not depend on ``photometric``); ``lesion_probability`` 1.0 / 0.0
    forces a lesion in one breast / none;
    ``density`` ("A"-"D"), ``lesion_type`` (round_mass, spiculated_mass, calcifications) and ``photometric``
    (MONOCHROME1/2) default to random choices from the seed.
    """
    rng = np.random.default_rng(seed)
    drawn = "MONOCHROME1" if rng.random() < MONOCHROME1_SHARE else "MONOCHROME2"  # drawn always: same pixels
    photometric = photometric or drawn
    views = generate_study(rng, lesion_probability=lesion_probability, lesion_type=lesion_type, size=SIZE,
                           density=None if density is None else DENSITY_CLASSES.index(density))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    truths = []
    for number, phantom in enumerate(views, start=1):
        name = f"{phantom.laterality}_{phantom.view}.dcm"
        write_projection_image(
            phantom.image, out_dir / name, modality="MG", photometric=photometric,
            pixel_spacing=(PIXEL_SPACING_MM, PIXEL_SPACING_MM), tags=_tags(phantom, study_uid, series_uid, number),
        )
        truths.append(ViewTruth(name, phantom.view, phantom.laterality, [tuple(d["box"]) for d in phantom.lesions],
                                [d["type"] for d in phantom.lesions]))
    lesion_sides = {v.laterality for v in truths if v.boxes}
    return StudyTruth(DENSITY_CLASSES[views[0].density], photometric, lesion_sides.pop() if lesion_sides else None,
                      study_uid, truths)


def _tags(phantom: Phantom, study_uid: str, series_uid: str, number: int) -> dict:
    return {
        "ViewPosition": phantom.view,
        "ViewCodeSequence": _view_code(phantom.view),
        "ImageLaterality": phantom.laterality,
        "PatientOrientation": phantom.patient_orientation,
        "BodyPartExamined": "BREAST",
        "PatientSex": "F",
        "StudyDescription": "Synthetic screening mammogram phantom",
        "SeriesDescription": "Synthetic MG phantom, 4 views",
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "InstanceNumber": number,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=424242)
    args = parser.parse_args()
    suspicion, density, truth = ["case_id,value"], ["case_id,value"], {}
    for k in range(args.n):
        case = f"case_{k:03d}"
        study = write_study(args.out / "cases" / case, args.seed + k)
        suspicion.append(f"{case},{int(study.suspicious)}")
        density.append(f"{case},{study.density}")
        truth[case] = study.as_dict()
    (args.out / "labels.csv").write_text("\n".join(suspicion) + "\n")
    (args.out / "density_labels.csv").write_text("\n".join(density) + "\n")
    (args.out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"wrote {args.n} studies, labels.csv, density_labels.csv and truth.json to {args.out}")


if __name__ == "__main__":
    main()
