"""Bundle discovery and routing rules, and the messages of routing errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_io.types import SkippedInstance, Study
from inference.errors import BundleError, ModelNotFoundError, NoModelForStudyError
from inference.registry import Registry, SelectionRules

DX_BONE_AGE = {"modalities": ["DX", "CR"], "body_parts": ["HAND"], "dimensions": 2}


def _registry(kit, **selections) -> Registry:
    for name, selection in selections.items():
        kit.bundle(name, radinfer=kit.radinfer(selection=selection, priority=selection.pop("priority", 0)))
    return Registry([kit.models])


def _study(*series) -> Study:
    return Study(series[0].study_instance_uid if series else "1.2.3", list(series))


def test_registry_discovers_bundle_folders_and_single_bundle_dirs(kit):
    kit.bundle("b_model")
    extra = kit.workdir / "extra"
    extra.mkdir()
    from_extra = kit.bundle("a_model").rename(extra / "a_model")
    registry = Registry([kit.models, from_extra])
    assert registry.names() == ["a_model", "b_model"]


def test_registry_keeps_invalid_bundle_out_of_routing_with_its_error(kit):
    kit.bundle("good")
    kit.bundle("broken", radinfer={"task": "segmentation"})
    registry = Registry([kit.models])
    assert registry.names() == ["good"]
    assert "intended_use" in registry.errors["broken"]
    with pytest.raises(BundleError, match="intended_use"):
        registry.get("broken")


def test_registry_duplicate_bundle_names_raise(kit):
    kit.bundle("same")
    other = kit.workdir / "other"
    other.mkdir()
    kit.bundle("same2").rename(other / "same")
    with pytest.raises(BundleError, match="Two bundles are named 'same'"):
        Registry([kit.models, other])


def test_get_unknown_model_suggests_closest_name(kit):
    registry = _registry(kit, lung_nodule={"modalities": ["CT"]}, bone_age=dict(DX_BONE_AGE))
    with pytest.raises(ModelNotFoundError, match=r"Unknown model 'lung_nodul'; did you mean 'lung_nodule'\?"):
        registry.get("lung_nodul")


def test_route_no_match_says_which_rule_rejected_which_series(kit):
    registry = _registry(kit, lung_nodule={"modalities": ["CT"], "min_slices": 16})
    mr = kit.make_series("MR", 30, uid="1.2.3")
    short_ct = kit.make_series("CT", 5, uid="1.2.4")
    with pytest.raises(NoModelForStudyError) as caught:
        registry.route(_study(mr, short_ct))
    message = str(caught.value)
    assert "lung_nodule: series 1.2.3 (MR) rejected: modality MR not in [CT]" in message
    assert "lung_nodule: series 1.2.4 (CT) rejected: 5 slice(s), a volume needs at least 16" in message


@pytest.mark.parametrize(
    ("rules", "series_args", "reason"),
    [
        ({"body_parts": ["CHEST"]}, {"body_part": "ABDOMEN"}, "body part ABDOMEN not in [CHEST]"),
        ({"sop_classes": ["1.2.840.10008.5.1.4.1.1.2.1"]}, {}, "SOP class 1.2.840.10008.5.1.4.1.1.2 not in"),
        (
            {"image_types_any": ["AXIAL"]},
            {"image_type": ("DERIVED", "SECONDARY", "LOCALIZER")},
            "image type DERIVED\\SECONDARY\\LOCALIZER has none of [AXIAL]",
        ),
        ({"min_slices": 40}, {}, "20 slice(s), a volume needs at least 40"),
        ({"dimensions": 2}, {"frames_per_instance": 3}, "multi-frame instance(s)"),
    ],
    ids=["body-part", "sop-class", "image-type", "min-slices", "2d-rejects-multiframe"],
)
def test_selection_rules_reject_with_reason(kit, rules, series_args, reason):
    series = kit.make_series("CT", 20, **series_args)
    assert any(reason in r for r in SelectionRules.from_config(rules, "m").rejections(series))


def test_selection_rules_accept_matching_series_case_insensitively(kit):
    rules = SelectionRules.from_config(
        {"modalities": ["ct"], "body_parts": ["chest"], "image_types_any": ["axial"]}, "m"
    )
    assert rules.rejections(kit.make_series("CT", 20, body_part="CHEST")) == []


def test_selection_rules_unknown_key_is_bundle_error():
    with pytest.raises(BundleError, match="unknown selection rule"):
        SelectionRules.from_config({"modality": ["CT"]}, "m")


def test_route_volume_picks_series_with_most_slices(kit):
    registry = _registry(kit, ct_seg={"modalities": ["CT"], "min_slices": 8})
    thin, thick, scout = kit.make_series("CT", 120), kit.make_series("CT", 40), kit.make_series("CT", 1)
    bundle, series = registry.route(_study(thick, scout, thin))
    assert bundle.name == "ct_seg" and series == [thin]


def test_route_projection_returns_all_matching_images(kit):
    registry = _registry(kit, bone_age=dict(DX_BONE_AGE))
    hand1, hand2 = kit.make_series("DX", 1, body_part="HAND"), kit.make_series("CR", 2, body_part="HAND")
    chest = kit.make_series("DX", 1, body_part="CHEST")
    bundle, series = registry.route(_study(hand1, chest, hand2))
    assert bundle.name == "bone_age" and series == [hand2, hand1]


def test_route_without_model_uses_priority_then_name(kit):
    registry = _registry(
        kit,
        a_generic={"modalities": ["CT"]},
        b_specific={"modalities": ["CT"], "priority": 5},
    )
    assert registry.route(_study(kit.make_series("CT", 20)))[0].name == "b_specific"


def test_route_named_model_applies_only_its_rules(kit):
    registry = _registry(kit, ct_seg={"modalities": ["CT"]}, bone_age=dict(DX_BONE_AGE))
    ct = kit.make_series("CT", 20)
    assert registry.route(_study(ct), "ct_seg")[0].name == "ct_seg"
    with pytest.raises(
        NoModelForStudyError, match=r"bone_age: series .* rejected: modality CT not in"
    ) as caught:
        registry.route(_study(ct), "bone_age")
    assert "ct_seg" not in str(caught.value)


def test_route_empty_study_is_clear(kit):
    registry = _registry(kit, ct_seg={"modalities": ["CT"]})
    with pytest.raises(NoModelForStudyError, match="no image series"):
        registry.route(Study("1.2.3", []))


def test_route_of_a_study_with_only_skipped_instances_says_why_they_were_skipped(kit):
    """A client that sent an SR, or CT headers without pixel data, is told so (counts, no file names)."""
    registry = _registry(kit, ct_seg={"modalities": ["CT"]})
    skipped = [SkippedInstance(f"slice{i}.dcm", "no pixel data (SOP class CT Image Storage)") for i in range(3)]
    skipped.append(SkippedInstance("report.dcm", "not an image (SOP class Comprehensive SR Storage)"))
    with pytest.raises(NoModelForStudyError) as caught:
        registry.route(Study("1.2.3", [], skipped))
    message = str(caught.value)
    assert "Skipped: 3 x no pixel data (SOP class CT Image Storage); 1 x not an image" in message
    assert "slice0.dcm" not in message


@pytest.mark.parametrize("model", ["bone_age", None])
def test_route_refusal_carries_the_bundles_selection_note(tmp_path, model):
    """A radiograph of the right modality and another body part: the refusal says how to fix it."""
    import numpy as np

    from dicom_io.limits import Limits
    from dicom_io.reader import read_headers
    from dicom_io.synthetic import write_projection_image

    path = write_projection_image(np.full((160, 160), 900.0), tmp_path / "hand.dcm", modality="DX",
                                  pixel_spacing=(0.5, 0.5), tags={"ViewPosition": "PA"})
    registry = Registry([Path(__file__).resolve().parents[2] / "models" / "bone_age"])
    with pytest.raises(NoModelForStudyError, match=r"body part CHEST not in .HAND.*Set BodyPartExamined=HAND.*worklist\)\.$"):
        registry.route(read_headers([path], Limits()), model)
