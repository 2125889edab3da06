"""Ground-truth labels for an evaluation, with an account of every label problem instead of a crash.

``load_labels(path)`` picks the format by what ``path`` is; ``FORMATS`` describes them (shown by
``radinfer evaluate --help``). A case whose label is unusable is not scored and is reported once with its
reason.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.evaluation.metrics import Nodule

MASK_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".npz")
_VALUE_COLUMNS = ("value", "label", "class", "target")
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_AXIS_TOLERANCE = 1e-3  # direction cosines (unitless)
_OFFSET_TOLERANCE = 1e-2  # voxels

_FORMATS_TEXT = """\
Label formats (--labels):

CSV (.csv), for classification, multiclass and regression: a header row; the case id in the column named
case_id (else the first column); the value in the column named value, label, class or target (else the
second column): a number for regression, 0/1 or a class name for classification (name the positive class
with --positive). Case ids are the entries of --data without .zip/.dcm. Cases with an empty, NaN or (for
regression) non-numeric value, or without a label, are not scored; labels of unknown cases are ignored; of
duplicate rows the first is used. Each problem is reported.

Nodule JSON (.json), for detection: {"cases": {"<case id>": [nodule, ...]}} (or the inner mapping alone); an
empty list is a case without nodules. A nodule is {"center_lps": [x, y, z], "diameter_mm": d} or
{"box_lps": [[x0, y0, z0], [x1, y1, z1]]} (centre of the box, diameter its longest side), in patient LPS mm,
with optional "exclude": true (LUNA16 irrelevant finding: neither a target nor a false positive). 2D images
(e.g. mammography) use pixels: {"center_rc": [row, column], "diameter_px": d} or {"box_rc": [[r0, c0],
[r1, c1]]}; one file is all 3D or all 2D. A case with any invalid nodule is not scored.

Folder of masks, for segmentation: one file per case named <case id>.nii.gz or .nii (NIfTI), .dcm (DICOM
SEG; segment numbers become label values) or .npz (radinfer's mask.npz: "mask" [k, j, i] and "affine"
(k, j, i) -> LPS mm). A mask must lie on the image series' voxel grid (same spacing, axes may be permuted or
flipped); it is not resampled.
"""
FORMATS = "\n\n".join(" ".join(paragraph.split()) for paragraph in _FORMATS_TEXT.split("\n\n"))


MODEL_FAILURE = "model_failure"  # the account's one kind that is not a label problem


@dataclass(frozen=True)
class LabelIssue:
    """One label problem. ``kind``: missing_label, unknown_case, invalid_value, implausible_value (scored, but
    outside the model's declared output range), duplicate, unreadable, geometry_mismatch, or model_failure
    (the case could not be evaluated)."""

    kind: str
    case_id: str | None
    detail: str

    def as_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "case_id": self.case_id, "detail": self.detail}


class LabelError(ValueError):
    """A case's label cannot be used (unreadable file, geometry mismatch); ``kind`` as in LabelIssue."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass
class LabelSet:
    """Labels by case id. ``format`` is table, nodules or masks; ``issues`` lists the file-level problems."""

    source: Path
    format: str
    values: dict[str, float | str] = field(default_factory=dict)
    nodules: dict[str, list[Nodule]] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    issues: list[LabelIssue] = field(default_factory=list)

    def case_ids(self) -> set[str]:
        return set(self.values) | set(self.nodules) | set(self.masks)

    def reconcile(self, case_ids: list[str]) -> list[LabelIssue]:
        """Issues for data cases without a label and labels naming no data case.

        A case whose label line is already reported as invalid (NaN, empty) is not also "missing": one
        problem per case, so the counts add up to the data set, as for an invalid class name.
        """
        known = set(case_ids)
        labelled = self.case_ids()
        invalid = {i.case_id for i in self.issues if i.kind == "invalid_value"}
        missing = [
            LabelIssue(
                "missing_label", c, f"case {c!r} has no label in {self.source.name}; it is not scored."
            )
            for c in sorted(known - labelled - invalid)
        ]
        unknown = [
            LabelIssue(
                "unknown_case",
                c,
                f"{self.source.name} labels case {c!r}, which is not in the data "
                "folder; check the case id spelling.",
            )
            for c in sorted(labelled - known)
        ]
        return missing + unknown

    def keep_numbers(self) -> None:
        """Drop the table values that are not numbers (a regression needs numbers), each with an issue."""
        for case, value in list(self.values.items()):
            if isinstance(value, str):
                del self.values[case]
                self.issues.append(
                    LabelIssue(
                        "invalid_value",
                        case,
                        f"value {value!r} of case {case!r} is not a number; it is not scored.",
                    )
                )

    def flag_implausible(self, low: float, high: float, source: str) -> None:
        """An ``implausible_value`` issue for each number outside [low, high], the range ``source`` declares;
        those cases are still scored."""
        for case, value in self.values.items():
            if isinstance(value, float) and not low <= value <= high:
                self.issues.append(
                    LabelIssue(
                        "implausible_value",
                        case,
                        f"value {value:g} of case {case!r} is outside {low:g} to {high:g} ({source}); it is scored "
                        "as given: check the label.",
                    )
                )

    def binary_classes(self, positive: str | None) -> tuple[dict[str, int], list[LabelIssue]]:
        """Table values as 0/1: numbers 0 and 1 as they are, class names with ``positive`` as 1."""
        out: dict[str, int] = {}
        issues: list[LabelIssue] = []
        names = {str(v) for v in self.values.values()}
        if positive is None and not names <= {"0", "1", "0.0", "1.0"}:
            raise LabelError(
                "invalid_value",
                f"{self.source.name}: class labels {sorted(names)[:5]} are not 0/1; "
                "name the positive class with --positive.",
            )
        for case, value in self.values.items():
            text = str(value)
            if positive is not None:
                out[case] = int(text == positive)
            elif text in ("0", "1", "0.0", "1.0"):
                out[case] = int(float(text))
            else:
                issues.append(
                    LabelIssue("invalid_value", case, f"class {text!r} of case {case!r} is not 0 or 1.")
                )
        if positive is not None and positive not in names:
            raise LabelError(
                "invalid_value",
                f"{self.source.name}: no case has the positive class {positive!r}; "
                f"classes present: {', '.join(sorted(names)[:10])}.",
            )
        return out, issues


def load_labels(path: Path) -> LabelSet:
    """Read labels from a CSV, a nodule JSON or a folder of masks (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return _load_mask_folder(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Labels {path} do not exist; pass a CSV, a nodule JSON or a folder of masks."
        )
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".json":
        return _load_nodules(path)
    raise ValueError(f"Labels {path.name}: unknown format {suffix!r}; use .csv, .json or a folder of masks.")


def _load_csv(path: Path) -> LabelSet:
    labels = LabelSet(path, "table")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise ValueError(f"Labels {path.name} is not UTF-8 text; save the CSV as UTF-8.") from None
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit(): a broken or wrong file
        raise ValueError(f"Labels {path.name} is not a readable CSV ({exc}).") from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise ValueError(
            f"Labels {path.name}: expected a header row and at least two columns (case id, value)."
        )
    header = [h.strip().lower() for h in rows[0]]
    id_col = header.index("case_id") if "case_id" in header else 0
    value_col = next((header.index(c) for c in _VALUE_COLUMNS if c in header), 1 if id_col != 1 else 0)
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(id_col, value_col):
            labels.issues.append(
                LabelIssue("invalid_value", None, f"{path.name} line {line}: too few columns.")
            )
            continue
        case, raw = row[id_col].strip(), row[value_col].strip()
        if not case or not raw:
            labels.issues.append(
                LabelIssue("invalid_value", case or None, f"{path.name} line {line}: empty case id or value.")
            )
            continue
        if case in labels.values:
            labels.issues.append(
                LabelIssue(
                    "duplicate",
                    case,
                    f"{path.name} line {line}: case {case!r} is labelled again; the first label is used.",
                )
            )
            continue
        try:
            number = float(raw)
        except ValueError:
            labels.values[case] = raw
            continue
        if not math.isfinite(number):
            labels.issues.append(
                LabelIssue(
                    "invalid_value", case, f"{path.name} line {line}: value {raw!r} is not a finite number."
                )
            )
            continue
        labels.values[case] = number
    return labels


def _load_nodules(path: Path) -> LabelSet:
    labels = LabelSet(path, "nodules")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_Pairs)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Labels {path.name} is not valid JSON ({exc}).") from None
    cases = dict(data).get("cases", data) if isinstance(data, _Pairs) else None
    if not isinstance(cases, _Pairs):
        raise ValueError(f'Labels {path.name}: expected {{"cases": {{case_id: [nodules]}}}}.')  # noqa: TRY004
    seen: set[str] = set()
    for case, items in cases:
        if case in seen:
            labels.issues.append(
                LabelIssue(
                    "duplicate",
                    case,
                    f"{path.name}: case {case!r} is listed again; the first entry is used.",
                )
            )
            continue
        seen.add(case)
        if not isinstance(items, list):
            labels.issues.append(
                LabelIssue(
                    "invalid_value",
                    case,
                    f"case {case!r}: expected a list of nodules; the case is not scored.",
                )
            )
            continue
        nodules, problems = [], []
        for n, item in enumerate(items):
            try:
                nodules.append(_nodule(item))
            except ValueError as exc:
                problems.append(f"nodule {n}: {exc}")
        if problems:  # scoring the valid rest would turn the detections of the bad ones into false positives
            detail = f"case {case!r}: {'; '.join(problems)}; the case is not scored."
            labels.issues.append(LabelIssue("invalid_value", case, detail))
            continue
        labels.nodules[case] = nodules
    if len({len(n.center) for found in labels.nodules.values() for n in found}) > 1:
        raise ValueError(f"Labels {path.name} mixes 2D (_rc) and 3D (_lps) nodules; use one kind per file.")
    return labels


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs: ``json.loads`` into a dict keeps only the last of duplicate
    case ids silently, so duplicates could not be reported."""


def _nodule(item: Any) -> Nodule:
    """One nodule entry of the JSON; ValueError says what is wrong with it."""
    if isinstance(item, _Pairs):
        item = dict(item)
    if not isinstance(item, dict):
        raise ValueError(  # noqa: TRY004 -- a label problem, reported like the others
            "expected an object with center_lps and diameter_mm, or box_lps (2D: _rc and _px)"
        )
    dims, suffix, unit = (2, "rc", "px") if "center_rc" in item or "box_rc" in item else (3, "lps", "mm")
    if f"box_{suffix}" in item:
        corners = _numbers(item, f"box_{suffix}", (2, dims), f"two corners of {dims} numbers")
        center, diameter = corners.mean(axis=0), float(np.abs(corners[1] - corners[0]).max())
        if diameter <= 0:
            raise ValueError(f"box_{suffix} is empty (its corners coincide)")
    else:
        center = _numbers(item, f"center_{suffix}", (dims,), f"{dims} numbers")
        diameter = float(_numbers(item, f"diameter_{unit}", (), "a number"))
        if diameter <= 0:
            raise ValueError(f"diameter_{unit} must be positive")
    exclude = item.get("exclude", False)
    if not isinstance(exclude, bool):
        raise ValueError("exclude must be true or false")  # noqa: TRY004
    return Nodule(tuple(float(v) for v in center), diameter, exclude)


def _numbers(item: dict[str, Any], key: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``item[key]`` as finite floats of ``shape``; ValueError "<key> is missing" or "<key> needs <what>"."""
    if key not in item:
        raise ValueError(f"{key} is missing")
    try:
        array = np.asarray(item[key])
    except ValueError:  # ragged nested lists
        array = np.asarray(None)
    if array.dtype.kind not in "iuf" or array.shape != shape or not np.all(np.isfinite(array)):
        raise ValueError(f"{key} needs {what}")
    return array.astype(float)


def _load_mask_folder(path: Path) -> LabelSet:
    labels = LabelSet(path, "masks")
    for file in sorted(path.iterdir()):
        suffix = next((s for s in MASK_SUFFIXES if file.name.lower().endswith(s)), None)
        if suffix is None or not file.is_file():
            continue
        case = file.name[: -len(suffix)]
        if case in labels.masks:
            labels.issues.append(
                LabelIssue(
                    "duplicate",
                    case,
                    f"case {case!r} has masks {labels.masks[case].name} and {file.name}; the first is used.",
                )
            )
            continue
        labels.masks[case] = file
    if not labels.masks:
        raise ValueError(f"Labels folder {path} holds no mask ({', '.join(MASK_SUFFIXES)} named by case id).")
    return labels


# --- masks ------------------------------------------------------------------------------------------


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """(label array, affine index -> LPS mm, whether it may cover only part of the image) of a mask file."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            image = nib.load(str(path))
            array = np.asanyarray(image.dataobj)
            while array.ndim > 3 and array.shape[-1] == 1:
                array = array[..., 0]
            return np.rint(array).astype(np.int32), _LPS_FROM_RAS @ image.affine, False
        if name.endswith(".npz"):
            with np.load(path) as data:
                return data["mask"].astype(np.int32), np.asarray(data["affine"], dtype=float), False
        import highdicom as hd

        volume = hd.seg.segread(path).get_volume(combine_segments=True, relabel=False)
        return np.asarray(volume.array).astype(np.int32), np.asarray(volume.affine, dtype=float), True
    except Exception as exc:  # noqa: BLE001 -- any reader failure is this case's label problem
        raise LabelError(
            "unreadable", f"mask {path.name} could not be read ({type(exc).__name__}: {exc})."
        ) from None


def align_mask(
    array: np.ndarray,
    affine: np.ndarray,
    ref_affine: np.ndarray,
    ref_shape: tuple[int, ...],
    *,
    partial: bool = False,
    name: str = "mask",
) -> np.ndarray:
    """``array`` (index -> LPS by ``affine``) on the reference grid, without resampling.

    The grids must share their lattice: same spacing, axes that differ only by order and sign, whole-voxel
    offsets. A full-volume mask (``partial`` False) must also cover the reference grid exactly; a DICOM SEG
    may omit slices (they are background). Anything else raises LabelError(geometry_mismatch).
    """
    if array.ndim != 3:
        raise LabelError("geometry_mismatch", f"{name} has {array.ndim} dimensions; a 3D mask is needed.")
    mapping = np.linalg.inv(affine) @ ref_affine  # reference index -> mask index
    linear, offset = mapping[:3, :3], mapping[:3, 3]
    rounded = np.rint(linear)
    is_permutation = (
        np.allclose(linear, rounded, atol=_AXIS_TOLERANCE)
        and np.all(np.abs(rounded).sum(axis=0) == 1)
        and np.all(np.abs(rounded).sum(axis=1) == 1)
    )
    if not is_permutation or not np.allclose(offset, np.rint(offset), atol=_OFFSET_TOLERANCE):
        ref_spacing = np.linalg.norm(ref_affine[:3, :3], axis=0)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        raise LabelError(
            "geometry_mismatch",
            f"{name} is not on the image grid (mask spacing {np.round(spacing, 3).tolist()} mm, image spacing "
            f"{np.round(ref_spacing, 3).tolist()} mm, or its axes/origin are not aligned); resample it onto the "
            "image series first.",
        )
    source_axis = [
        int(np.flatnonzero(rounded[:, r])[0]) for r in range(3)
    ]  # mask axis feeding reference axis r
    sign = [int(rounded[source_axis[r], r]) for r in range(3)]
    start = np.rint(offset).astype(int)
    moved = np.transpose(array, source_axis)
    indices = [sign[r] * np.arange(ref_shape[r]) + start[source_axis[r]] for r in range(3)]
    valid = [(idx >= 0) & (idx < moved.shape[r]) for r, idx in enumerate(indices)]
    covers = all(v.all() for v in valid) and tuple(moved.shape) == tuple(ref_shape)
    if not partial and not covers:
        raise LabelError(
            "geometry_mismatch",
            f"{name} has shape {tuple(moved.shape)} on the image's lattice but the image has {tuple(ref_shape)}; "
            "the mask must cover the whole series.",
        )
    out = np.zeros(ref_shape, dtype=np.int32)
    out[np.ix_(*valid)] = moved[np.ix_(*(idx[v] for idx, v in zip(indices, valid, strict=True)))]
    if np.count_nonzero(out) != np.count_nonzero(array):
        raise LabelError("geometry_mismatch", f"{name} has foreground outside the image series' extent.")
    return out
