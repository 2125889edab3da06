"""Source datasets as highdicom's constructors read them.

highdicom's SEG and SR constructors copy the Patient and General Study attributes from the first source image
by attribute access, so a source that omits one of these Type 2 attributes (PatientSex and PatientBirthDate
are often absent in real data) makes them raise AttributeError. The result objects must still be written: the
attributes are Type 2 in the result too, so an absent source value becomes an empty one.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

# Patient and General Study module attributes (Type 2) that highdicom reads from the source unguarded.
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def with_type2_attributes(source: Dataset) -> Dataset:
    """``source`` itself when it holds every ``TYPE2_COPIED`` attribute, else a copy (the source is not
    changed) where the absent ones are present and empty."""
    missing = [keyword for keyword in TYPE2_COPIED if keyword not in source]
    if not missing:
        return source
    copy = Dataset()
    copy.update(source)
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta
    for keyword in missing:
        setattr(copy, keyword, None)
    return copy
