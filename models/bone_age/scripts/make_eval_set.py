"""Write a held-out set of phantom hand radiographs as DICOM files plus a labels CSV, for `radinfer evaluate`.

Run from the bundle folder: ``python -m scripts.make_eval_set OUT_DIR [--n 60] [--seed 424242]``. Each case is
``OUT_DIR/cases/case_NNN.dcm`` (CR or DX, MONOCHROME1 or MONOCHROME2, complete bone-age request tags);
``OUT_DIR/labels.csv`` maps case id to the phantom's bone age in months. The seed is never used in training.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

from dicom_io.synthetic import write_projection_image
from scripts.phantom import hand_scale, render, sample_params

STUDY_DATE = dt.date(2024, 6, 15)
SIZE = 320


def write_case(path: Path, rng: np.random.Generator, k: int) -> float:
    sex = "MF"[k % 2]
    params = sample_params(rng, sex=sex, bone_age_months=float(rng.uniform(12, 192)))
    image = render(params, SIZE, rng)
    fov_mm = hand_scale(params) * 250.0 * params.fov_factor
    birth = STUDY_DATE - dt.timedelta(days=round(params.chronological_age_months * 365.2425 / 12))
    write_projection_image(
        image * 4095.0, path, modality="CR" if k % 3 else "DX",
        photometric="MONOCHROME1" if k % 2 else "MONOCHROME2", pixel_spacing=(fov_mm / SIZE, fov_mm / SIZE),
        tags={"PatientSex": sex, "PatientBirthDate": birth.strftime("%Y%m%d"),
              "StudyDate": STUDY_DATE.strftime("%Y%m%d"), "BodyPartExamined": "HAND", "ViewPosition": "PA",
              "ImageLaterality": params.laterality},
    )
    return params.bone_age_months


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=424242)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    (args.out / "cases").mkdir(parents=True, exist_ok=True)
    rows = ["case_id,value"]
    for k in range(args.n):
        age = write_case(args.out / "cases" / f"case_{k:03d}.dcm", rng, k)
        rows.append(f"case_{k:03d},{age:.2f}")
    (args.out / "labels.csv").write_text("\n".join(rows) + "\n")
    print(f"wrote {args.n} cases and labels.csv to {args.out}")


if __name__ == "__main__":
    main()
