"""TID 1500 Measurement Report (Comprehensive 3D SR) results built with highdicom.

Each finding is one measurement group with a tracking identifier, the model's Algorithm Identification
(TID 4019) and one region of interest, which is one of:

- ``SegmentROI``: a volumetric ROI given by a segment of a radinfer SEG (TID 1411),
- ``PlanarROI``: a point, polyline or rectangle on one image (TID 1410),
- ``WholeImage``: an image-level measurement such as a bone age (TID 1501 with a source image reference).

The observer is a DEVICE named after the model. Study-level qualitative findings, comments and the research-use /
synthetic-training statement go into the TID 1500 "Qualitative Evaluations" container (row 12: CODE and TEXT
items), which ``dciodvfy`` accepts. A report may have no group at all (a study where the model found nothing):
TID 1500 then holds the Qualitative Evaluations container without an Imaging Measurements one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io.writers.identity import derived_uid, series_date_time
from dicom_io.writers.provenance import MANUFACTURER, ModelProvenance
from dicom_io.writers.source import result_source

CodeLike = Code | hd.sr.CodedConcept

IMAGING_PROCEDURE = codes.SCT.ImagingProcedure  # SCT 363679005
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
COMMENT = codes.DCM.Comment  # DCM 121106
PRIVATE_SCHEMES = {"99RADINFER": "radinfer private codes: the findings, categories and measurements of its models"}
"""The private coding schemes ("99" prefix) radinfer's codes use, and what each is: declared in every SR that uses
one (Coding Scheme Identification Sequence, SOP Common module), so that a receiver can tell whose codes they are."""


@dataclass(frozen=True)
class SegmentROI:
    """A volumetric ROI: segment ``segment_number`` of the SEG dataset ``segmentation``."""

    segmentation: Dataset
    segment_number: int


@dataclass(frozen=True)
class PlanarROI:
    """A region on one image (``frame`` 1-based for multi-frame images).

    ``points_rc`` are (row, column) positions in DICOM image coordinates, where the top-left corner of the
    top-left pixel is (0, 0) and pixel (r, c) spans [r, r + 1] x [c, c + 1]; so the centre of array element
    [r, c] is (r + 0.5, c + 0.5). ``graphic_type``: "POINT" (one point) or "POLYLINE" (closed automatically).
    """

    image: Dataset
    graphic_type: str
    points_rc: tuple[tuple[float, float], ...]
    frame: int | None = None

    @classmethod
    def rectangle(
        cls,
        image: Dataset,
        top_left_rc: tuple[int, int],
        bottom_right_rc: tuple[int, int],
        frame: int | None = None,
    ) -> PlanarROI:
        """The outline of array elements [r0:r1, c0:c1] (inclusive-exclusive indices) as a closed polyline."""
        (r0, c0), (r1, c1) = top_left_rc, bottom_right_rc
        corners = ((r0, c0), (r0, c1), (r1, c1), (r1, c0))
        return cls(image, "POLYLINE", tuple((float(r), float(c)) for r, c in corners), frame)

    @classmethod
    def point(cls, image: Dataset, index_rc: tuple[float, float], frame: int | None = None) -> PlanarROI:
        """The centre of array element [r, c]."""
        return cls(image, "POINT", ((float(index_rc[0]) + 0.5, float(index_rc[1]) + 0.5),), frame)


@dataclass(frozen=True)
class WholeImage:
    """An image-level measurement on ``image`` (e.g. bone age on a hand radiograph)."""

    image: Dataset


@dataclass(frozen=True)
class MeasurementGroupSpec:
    """One finding: ROI, tracking identifiers, finding type/site, measurements and qualitative evaluations.

    ``measurements``: (name code, value, UCUM unit code) triples,
    e.g. ``(codes.SCT.Diameter, 6.2, codes.UCUM.Millimeter)``.
    ``qualitative_evaluations``: (name code, value code) pairs.
    ``tracking_uid`` defaults to the segment's Tracking UID for a ``SegmentROI``, else to a UID derived from the
    SR's SOP Instance UID and the group.
    ``finding_site_laterality`` (e.g. SCT Right) qualifies ``finding_site`` for paired organs.
    """

    roi: SegmentROI | PlanarROI | WholeImage
    tracking_id: str
    finding_type: CodeLike
    measurements: Sequence[tuple[CodeLike, float, CodeLike]] = ()
    qualitative_evaluations: Sequence[tuple[CodeLike, CodeLike]] = ()
    finding_site: CodeLike | None = None
    tracking_uid: str | None = None
    finding_category: CodeLike | None = None
    finding_site_laterality: CodeLike | None = None


def _segment_tracking_uid(roi: SegmentROI) -> str | None:
    for item in roi.segmentation.SegmentSequence:
        if int(item.SegmentNumber) == roi.segment_number:
            return str(item.TrackingUID) if "TrackingUID" in item else None
    raise ValueError(
        f"segment {roi.segment_number} is not in the SEG's SegmentSequence; "
        "reference an existing segment number."
    )


def _referenced_segment(roi: SegmentROI) -> hd.sr.ReferencedSegment:
    """The segment with the source images its frames derive from (or the source series if it has no frames).

    Not highdicom's ``ReferencedSegment.from_segmentation``: it wants SegmentIdentificationSequence per frame,
    which highdicom 0.28 moves into the shared functional groups of a single-segment SEG.
    """
    seg = roi.segmentation
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared_number = (
        int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if "SegmentIdentificationSequence" in shared
        else None
    )
    sources: dict[str, tuple[str, set[int]]] = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        identification = frame.get("SegmentIdentificationSequence")
        number = int(identification[0].ReferencedSegmentNumber) if identification else shared_number
        if number != roi.segment_number:
            continue
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                _, frames = sources.setdefault(
                    str(source.ReferencedSOPInstanceUID), (str(source.ReferencedSOPClassUID), set())
                )
                if "ReferencedFrameNumber" in source:
                    value = source.ReferencedFrameNumber
                    frames.update(
                        int(v) for v in (value if source["ReferencedFrameNumber"].VM > 1 else [value])
                    )
    common = {
        "sop_class_uid": str(seg.SOPClassUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
        "segment_number": roi.segment_number,
    }
    if not sources:
        series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        return hd.sr.ReferencedSegment(source_series=hd.sr.SourceSeriesForSegmentation(series_uid), **common)
    images = [
        hd.sr.SourceImageForSegmentation(class_uid, instance_uid, sorted(frames) or None)
        for instance_uid, (class_uid, frames) in sources.items()
    ]
    return hd.sr.ReferencedSegment(source_images=images, **common)


def _image_region(roi: PlanarROI) -> hd.sr.ImageRegion:
    points = np.asarray(roi.points_rc, dtype=np.float64).reshape(-1, 2)[
        :, ::-1
    ]  # (row, col) -> (x=col, y=row)
    graphic_type = roi.graphic_type.upper()
    if graphic_type == "POINT" and len(points) != 1:
        raise ValueError(f"a POINT region needs exactly one point, got {len(points)}.")
    if graphic_type == "POLYLINE":
        if len(points) < 3:
            raise ValueError(f"a POLYLINE region needs at least 3 points, got {len(points)}.")
        if not np.array_equal(points[0], points[-1]):
            points = np.vstack([points, points[:1]])
    elif graphic_type != "POINT":
        raise ValueError(
            f"graphic_type must be 'POINT' or 'POLYLINE' (use PlanarROI.rectangle), got {roi.graphic_type!r}."
        )
    frames = [roi.frame] if roi.frame is not None else None
    source = hd.sr.SourceImageForRegion.from_source_image(roi.image, referenced_frame_numbers=frames)
    return hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=points, source_image=source)


def _group(spec: MeasurementGroupSpec, algorithm: hd.sr.AlgorithmIdentification, default_tracking_uid: str):
    roi = spec.roi
    tracking_uid = spec.tracking_uid
    if tracking_uid is None and isinstance(roi, SegmentROI):
        tracking_uid = _segment_tracking_uid(roi)
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=tracking_uid or default_tracking_uid, identifier=spec.tracking_id
        ),
        "finding_type": spec.finding_type,
        "finding_category": spec.finding_category,
        "algorithm_id": algorithm,
        "finding_sites": [hd.sr.FindingSite(spec.finding_site, laterality=spec.finding_site_laterality)]
        if spec.finding_site is not None
        else None,
        "measurements": [
            hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)
            for name, value, unit in spec.measurements
        ]
        or None,
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(name=name, value=value)
            for name, value in spec.qualitative_evaluations
        ]
        or None,
    }
    if isinstance(roi, SegmentROI):
        _segment_tracking_uid(roi)  # validates the segment number
        segment = _referenced_segment(roi)
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)
    if isinstance(roi, PlanarROI):
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=_image_region(roi), **common
        )
    source = hd.sr.SourceImageForMeasurementGroup.from_source_image(roi.image)
    return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=[source], **common)


def _qualitative_evaluations(
    findings: Sequence[tuple[CodeLike, CodeLike]], comments: Sequence[str]
) -> hd.sr.ContainerContentItem | None:
    """TID 1500 row 12: study-level coded findings, then comments (the research-use statement last) as TEXT
    items."""
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for name, value in findings
    ]
    items += [
        hd.sr.TextContentItem(name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for text in comments
        if text
    ]
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _unique_by_uid(datasets: Sequence[Dataset]) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    for ds in datasets:
        seen.setdefault(str(ds.SOPInstanceUID), ds)
    return list(seen.values())


def measurement_report(
    evidence: Sequence[Dataset],
    groups: Sequence[MeasurementGroupSpec],
    *,
    provenance: ModelProvenance,
    series_instance_uid: str,
    series_number: int,
    description: str,
    procedure_code: CodeLike | None = None,
    qualitative_study_findings: Sequence[tuple[CodeLike, CodeLike]] = (),
    study_comments: Sequence[str] = (),
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
    series_datetime: datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR holding a TID 1500 Measurement Report with one group per ``groups`` item.

    ``evidence``: the source images the report is about (headers suffice); SEG datasets and images referenced
    by the groups are added to the evidence automatically. ``procedure_code`` defaults to SCT "Imaging
    procedure". ``qualitative_study_findings`` and ``study_comments`` (TEXT) are study-level; with no
    ``groups`` they are the report (with the research-use statement, which is always added when there is one).
    ``series_datetime``: the Series Date/Time (default now).
    """
    comments = [*study_comments, provenance.statement()]
    qualitative = _qualitative_evaluations(qualitative_study_findings, comments)
    if not groups and qualitative is None:
        raise ValueError(
            "measurement_report needs a MeasurementGroupSpec or a study-level finding or comment (TID 1500 "
            "requires imaging measurements or qualitative evaluations)."
        )
    sop_instance_uid = sop_instance_uid or generate_uid()
    algorithm = hd.sr.AlgorithmIdentification(
        name=provenance.name[:64],
        version=provenance.version[:64],
        family=codes.cid7162.ArtificialIntelligence,
        manufacturer=MANUFACTURER,
        parameters=[f"weights_sha256={provenance.weights_sha256}"] if provenance.weights_sha256 else None,
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(
                entropy_srcs=[MANUFACTURER, provenance.name, provenance.version, provenance.weights_sha256]
            ),
            name=provenance.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=provenance.name[:64],
            serial_number=provenance.device_serial_number,
        ),
    )
    content = _report_content(
        hd.sr.ObservationContext(observer_device_context=observer),
        procedure_code or IMAGING_PROCEDURE,
        [
            _group(spec, algorithm, derived_uid(sop_instance_uid, "group", str(n), spec.tracking_id))
            for n, spec in enumerate(groups, start=1)
        ],
    )
    if qualitative is not None:
        content.ContentSequence.append(qualitative)
    referenced = [
        spec.roi.segmentation if isinstance(spec.roi, SegmentROI) else spec.roi.image for spec in groups
    ]
    first, *others = _unique_by_uid([*evidence, *referenced])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[result_source(first), *others],
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[provenance.contributing_equipment()],
        series_description=description[:64],
        **series_date_time(series_datetime),
        **provenance.equipment_kwargs(),
    )
    _declare_private_schemes(sr)
    return sr


def _report_content(
    observation_context: hd.sr.ObservationContext, procedure_code: CodeLike, groups: Sequence[Any]
) -> hd.sr.ContainerContentItem:
    """The TID 1500 root container, with an Imaging Measurements container only when there are ``groups``.

    highdicom's MeasurementReport requires a group, TID 1500 only one of Imaging Measurements, Derived Imaging
    Measurements and Qualitative Evaluations. Without groups the report is built with a stand-in group whose
    Imaging Measurements container is then taken out, so that the rest is highdicom's own."""
    stand_in = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="stand-in")
    )] if not groups else []
    content = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_code,
        imaging_measurements=[*groups, *stand_in],
    )[0]
    if not groups:
        content.ContentSequence = hd.sr.ContentSequence(
            [item for item in content.ContentSequence if item.name != codes.DCM.ImagingMeasurements]
        )
    return content


def _declare_private_schemes(sr: Dataset) -> None:
    used = sorted(_designators(sr.ContentSequence) & PRIVATE_SCHEMES.keys())
    if not used:
        return
    items = []
    for designator in used:
        item = Dataset()
        item.CodingSchemeDesignator = designator
        item.CodingSchemeName = PRIVATE_SCHEMES[designator]
        item.CodingSchemeResponsibleOrganization = MANUFACTURER
        items.append(item)
    sr.CodingSchemeIdentificationSequence = items


def _designators(items: Sequence[Dataset]) -> set[str]:
    """Every CodingSchemeDesignator in a content tree (concept names, coded values, units, modifiers)."""
    found: set[str] = set()
    for item in items:
        for element in item:
            if element.VR == "SQ":
                found |= _designators(element.value)
            elif element.keyword == "CodingSchemeDesignator":
                found.add(str(element.value))
    return found
