"""Write held-out chest-CT phantoms as multi-file DICOM series plus a nodule JSON, for `radinfer evaluate`.

Run from the bundle folder: ``python -m scripts.make_eval_set OUT_DIR [--n 8] [--seed 910000]``. Each case is a
folder ``OUT_DIR/cases/case_NN/`` of CT slices; ``OUT_DIR/nodules.json`` lists every constructed nodule's centre
(patient LPS, mm) and diameter in the format `radinfer evaluate --kind detection` reads. Seeds never used in training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dicom_io.synthetic import write_ct_series
from scripts.phantom import generate_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=910000)
    args = parser.parse_args()
    labels: dict[str, list[dict]] = {}
    for k in range(args.n):
        case = f"case_{k:02d}"
        phantom = generate_phantom(seed=args.seed + k, shape=(96, 224, 224))
        write_ct_series(phantom.hu, args.out / "cases" / case, spacing=phantom.spacing, origin=phantom.origin)
        labels[case] = [{"center_lps": list(n.center_lps), "diameter_mm": n.diameter_mm} for n in phantom.nodules]
    (args.out / "nodules.json").write_text(json.dumps({"cases": labels}, indent=1))
    print(f"wrote {args.n} cases with {sum(map(len, labels.values()))} nodules to {args.out}")


if __name__ == "__main__":
    main()
