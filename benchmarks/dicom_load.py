"""(a) DICOM series load: radinfer vs monai LoadImage(PydicomReader) vs a pydicom loop vs raw bytes.

All four start from the same files with a warm page cache (one untimed run first) and end with the
series in memory: raw bytes; pydicom's decoded pixel arrays stacked and rescaled to float32; monai's
float32 MetaTensor; ours: header pass + build_volume (decode, order by geometry, checks, float32 HU).
``radinfer_header_pass`` times the header pass alone (its share of ours). ``float32_floor`` is the least any
loader of this series into a float32 volume must do, with no header parsing at all: read each file, take its
last rows x columns x 2 bytes as int16 and rescale them into a newly allocated float32 volume (whose page faults
alone cost more than reading the bytes from a warm cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ct_series, timed


def run(*, slices: int, size: int, repeats: int) -> dict[str, Any]:
    from monai.transforms import LoadImage
    from pydicom import dcmread

    from dicom_io.limits import Limits
    from dicom_io.reader import read_headers
    from dicom_io.volume import build_volume

    paths = ct_series(slices, size)
    folder = paths[0].parent
    limits = Limits()

    def raw() -> int:
        return sum(len(Path(p).read_bytes()) for p in paths)

    def pydicom_loop() -> np.ndarray:
        slabs = []
        for p in paths:
            ds = dcmread(p)
            slabs.append(
                ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            )
        return np.stack(slabs)

    def float32_floor() -> np.ndarray:
        volume = np.empty((slices, size, size), dtype=np.float32)
        for k, p in enumerate(paths):
            data = Path(p).read_bytes()
            stored = np.frombuffer(data, dtype="<i2", offset=len(data) - 2 * size * size).reshape(size, size)
            np.copyto(volume[k], stored, casting="unsafe")
            volume[k] -= 1024.0
        return volume

    def header_pass() -> object:
        return read_headers(list(paths), limits)

    def ours() -> np.ndarray:
        study = read_headers(list(paths), limits)
        return build_volume(study.series[0], limits).array

    loader = LoadImage(reader="PydicomReader", image_only=True)

    def monai() -> Any:
        return loader(str(folder))

    volume = ours()
    assert volume.shape == (slices, size, size) and volume.dtype == np.float32
    floor = float32_floor()
    assert np.array_equal(volume, floor) or np.array_equal(volume, floor[::-1]), "the floor must load the same values"
    results = {
        "raw_bytes": timed(raw, repeats=repeats),
        "float32_floor": timed(float32_floor, repeats=repeats),
        "pydicom_loop": timed(pydicom_loop, repeats=repeats),
        "radinfer_header_pass": timed(header_pass, repeats=repeats),
        "radinfer_build_volume": timed(ours, repeats=repeats),
        "monai_LoadImage_PydicomReader": timed(monai, repeats=max(1, repeats // 2)),
    }
    ours_s = results["radinfer_build_volume"].median_s
    return {
        "series": {"slices": slices, "rows": size, "columns": size, "bytes": raw(), "files": len(paths)},
        "timings": {name: t.as_dict() for name, t in results.items()},
        "ratios": {
            "monai_over_ours": results["monai_LoadImage_PydicomReader"].median_s / ours_s,
            "ours_over_raw_bytes": ours_s / results["raw_bytes"].median_s,
            "ours_over_pydicom_loop": ours_s / results["pydicom_loop"].median_s,
            "ours_over_float32_floor": ours_s / results["float32_floor"].median_s,
            "float32_floor_over_raw_bytes": results["float32_floor"].median_s / results["raw_bytes"].median_s,
        },
        "targets": {"monai_over_ours": ">= 10", "ours_over_raw_bytes": "<= 4"},
    }
