"""Bundle discovery and routing: which bundle (and which series) handles a study.

Routing uses ``selection`` in each bundle's configs/radinfer.json; an empty list means "any"::

    {"modalities": ["CT"], "body_parts": ["CHEST"], "sop_classes": ["1.2.840.10008.5.1.4.1.1.2"],
     "image_types_any": ["AXIAL"], "min_slices": 16, "dimensions": 3}

``dimensions`` 3 accepts series that form a volume (at least two frames; the one with most slices wins);
2 accepts series of single-frame projection images (all matching series are handed to the task). When no model
is named, the bundles are tried by descending radinfer.json ``priority`` (default 0), then by name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_io.types import Series, Study
from inference.bundle import Bundle
from inference.errors import BundleError, ModelNotFoundError, NoModelForStudyError


@dataclass(frozen=True)
class SelectionRules:
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    image_types_any: tuple[str, ...] = ()
    min_slices: int = 1
    dimensions: int = 3

    @classmethod
    def from_config(cls, config: Any, bundle: str) -> SelectionRules:
        if not isinstance(config, dict):
            raise BundleError(f"Bundle {bundle!r}: configs/radinfer.json needs a 'selection' object.")
        unknown = set(config) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise BundleError(
                f"Bundle {bundle!r}: unknown selection rule(s) {sorted(unknown)} in radinfer.json."
            )
        lists = {}
        for key in ("modalities", "body_parts", "sop_classes", "image_types_any"):
            value = config.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BundleError(
                    f"Bundle {bundle!r}: selection.{key} must be a list of strings, got {value!r}."
                )
            lists[key] = tuple(v.strip() if key == "sop_classes" else v.strip().upper() for v in value)
        min_slices, dimensions = config.get("min_slices", 1), config.get("dimensions", 3)
        if not isinstance(min_slices, int) or min_slices < 1:
            raise BundleError(f"Bundle {bundle!r}: selection.min_slices must be a positive integer.")
        if dimensions not in (2, 3):
            raise BundleError(f"Bundle {bundle!r}: selection.dimensions must be 2 or 3, got {dimensions!r}.")
        return cls(**lists, min_slices=min_slices, dimensions=dimensions)

    def rejections(self, series: Series) -> list[str]:
        """Why ``series`` fails these rules (empty when it is accepted)."""
        reasons = []
        if self.modalities and series.modality.upper() not in self.modalities:
            reasons.append(f"modality {series.modality or '(none)'} not in [{', '.join(self.modalities)}]")
        if self.body_parts and series.body_part not in self.body_parts:
            reasons.append(f"body part {series.body_part or '(none)'} not in [{', '.join(self.body_parts)}]")
        if self.sop_classes and series.sop_class_uid not in self.sop_classes:
            reasons.append(f"SOP class {series.sop_class_uid} not in [{', '.join(self.sop_classes)}]")
        if self.image_types_any and not set(series.image_type) & set(self.image_types_any):
            image_type = "\\".join(series.image_type) or "(none)"
            reasons.append(f"image type {image_type} has none of [{', '.join(self.image_types_any)}]")
        frames = series.num_frames
        if self.dimensions == 3 and frames < max(2, self.min_slices):
            reasons.append(f"{frames} slice(s), a volume needs at least {max(2, self.min_slices)}")
        if self.dimensions == 2:
            multi = sum(1 for h in series.instances if int(h.dataset.get("NumberOfFrames", 1) or 1) > 1)
            if multi:
                reasons.append(f"{multi} multi-frame instance(s), this model reads single projection images")
            elif frames < self.min_slices:
                reasons.append(f"{frames} image(s), fewer than {self.min_slices}")
        return reasons


class Registry:
    """Bundles found in ``bundle_dirs``: each directory is a bundle itself or holds bundles as sub-folders.

    ``pins`` maps bundle name -> expected weights sha256 (from the caller's settings). A folder that looks
    like a bundle but cannot be read is kept out of routing and listed in ``errors`` (name -> message);
    two bundles with the same folder name raise BundleError.
    """

    def __init__(self, bundle_dirs: Iterable[Path], *, pins: Mapping[str, str] | None = None) -> None:
        pins = dict(pins or {})
        self.bundles: dict[str, Bundle] = {}
        self.rules: dict[str, SelectionRules] = {}
        self.errors: dict[str, str] = {}
        self._priority: dict[str, int] = {}
        for path in _bundle_paths(bundle_dirs):
            if path.name in self.bundles or path.name in self.errors:
                raise BundleError(
                    f"Two bundles are named {path.name!r} (second at {path}); rename one folder."
                )
            try:
                bundle = Bundle(path, expected_sha256=pins.get(path.name))
                rules = SelectionRules.from_config(bundle.radinfer.get("selection"), bundle.name)
                priority = bundle.radinfer.get("priority", 0)
                if not isinstance(priority, int) or isinstance(priority, bool):
                    raise BundleError(f"Bundle {bundle.name!r}: radinfer.json 'priority' must be an integer.")
            except BundleError as exc:
                self.errors[path.name] = str(exc)
                continue
            self.bundles[bundle.name] = bundle
            self.rules[bundle.name] = rules
            self._priority[bundle.name] = priority
        unknown_pins = set(pins) - set(self.bundles) - set(self.errors)
        if unknown_pins:
            raise BundleError(
                f"Weights pins name unknown bundle(s) {sorted(unknown_pins)}; check the pin settings."
            )

    def names(self) -> list[str]:
        return sorted(self.bundles)

    def get(self, name: str) -> Bundle:
        if name in self.bundles:
            return self.bundles[name]
        if name in self.errors:
            raise BundleError(self.errors[name])
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelNotFoundError(
            f"Unknown model {name!r}; {hint}available: {', '.join(self.names()) or '(none installed)'}."
        )

    def route(self, study: Study, model: str | None = None) -> tuple[Bundle, list[Series]]:
        """The bundle for ``study`` (``model`` if named) and the series it should read, best first."""
        candidates = (
            [self.get(model)]
            if model
            else sorted(self.bundles.values(), key=lambda b: (-self._priority[b.name], b.name))
        )
        if not candidates:
            raise NoModelForStudyError("No model is installed; add bundles to the models directory.")
        if not study.series:
            skipped = f" Skipped: {study.skipped_summary()}." if study.skipped else ""
            raise NoModelForStudyError(f"The study contains no image series any model could read.{skipped}")
        problems = []
        for bundle in candidates:
            rules = self.rules[bundle.name]
            accepted = []
            near_miss = False  # a series of the bundle's modality, refused for another reason
            for series in study.series:
                reasons = rules.rejections(series)
                if reasons:
                    near_miss = near_miss or not rules.modalities or series.modality.upper() in rules.modalities
                    problems.append(
                        f"{bundle.name}: series {series.series_instance_uid} ({series.modality}) rejected: "
                        + "; ".join(reasons)
                    )
                else:
                    accepted.append(series)
            if accepted:
                accepted.sort(key=lambda s: s.num_frames, reverse=True)
                return bundle, accepted[:1] if rules.dimensions == 3 else accepted
            note = bundle.radinfer.get("selection_note")
            if isinstance(note, str) and (model or near_miss):  # the bundle's own advice on what it needs
                problems.append(f"{bundle.name}: {note.rstrip('.')}")
        raise NoModelForStudyError("No model accepts this study: " + " | ".join(problems) + ".")


def _bundle_paths(bundle_dirs: Iterable[Path]) -> list[Path]:
    paths = []
    for directory in map(Path, bundle_dirs):
        if _is_bundle(directory):
            paths.append(directory)
        elif directory.is_dir():
            paths.extend(sorted(p for p in directory.iterdir() if _is_bundle(p)))
        else:
            raise BundleError(f"Bundle directory {directory} does not exist; fix the models path setting.")
    return paths


def _is_bundle(path: Path) -> bool:
    return (path / "configs" / "metadata.json").is_file()
