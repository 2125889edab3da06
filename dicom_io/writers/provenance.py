"""Model provenance for DICOM result objects (IHE AI Results style equipment and algorithm identification)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

MANUFACTURER = "radinfer"


def radinfer_version() -> str:
    try:
        return metadata.version("radinfer")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class ModelProvenance:
    """What produced a result: the model, its weights, whether it is research-only or synthetic-trained."""

    name: str
    version: str
    weights_sha256: str
    trained_on_synthetic_data: bool
    disclaimer: str

    @classmethod
    def from_model_info(cls, info: Any) -> ModelProvenance:
        """Build from any object with ``name, version, weights_sha256, trained_on_synthetic_data, disclaimer``
        attributes (e.g. ``inference.findings.ModelInfo``)."""
        return cls(
            name=str(info.name),
            version=str(info.version),
            weights_sha256=str(info.weights_sha256),
            trained_on_synthetic_data=bool(info.trained_on_synthetic_data),
            disclaimer=str(info.disclaimer),
        )

    @property
    def software_versions(self) -> list[str]:
        return [f"{self.name} {self.version}"[:64], f"radinfer {radinfer_version()}"[:64]]

    @property
    def device_serial_number(self) -> str:
        """The weights' sha256 prefix: identifies the exact weights that produced the result."""
        return f"sha256:{self.weights_sha256[:16]}" if self.weights_sha256 else "sha256:unknown"

    def statement(self) -> str:
        """The not-for-clinical-use text put into every result object ('' when nothing to declare)."""
        parts = []
        if self.disclaimer:
            parts.append(self.disclaimer.strip())
        if self.trained_on_synthetic_data and "synthetic" not in self.disclaimer.lower():
            parts.append("Model trained only on synthetic data; outputs have no clinical validity.")
        return " ".join(parts)

    def equipment_kwargs(self) -> dict[str, Any]:
        """General Equipment module keyword arguments for highdicom SOP class constructors."""
        return {
            "manufacturer": MANUFACTURER,
            "manufacturer_model_name": self.name[:64],
            "software_versions": self.software_versions,
            "device_serial_number": self.device_serial_number,
        }

    def algorithm_identification(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.name[:64],
            family=codes.cid7162.ArtificialIntelligence,
            version=self.version[:64],
            source=MANUFACTURER,
            parameters={"weights_sha256": self.weights_sha256[:16]} if self.weights_sha256 else None,
        )

    def contributing_equipment(self) -> hd.ContributingEquipment:
        """A Contributing Equipment item ('Processing Equipment') naming the model."""
        return hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.name[:64],
            software_versions=self.software_versions,
            device_serial_number=self.device_serial_number,
            contribution_description=(self.statement() or f"radinfer model {self.name}")[:1024],
        )


def add_image_comments(dataset: Dataset, provenance: ModelProvenance) -> None:
    """Put the research-use statement into ImageComments (LT) when the model is research-only."""
    text = provenance.statement()
    if text:
        dataset.ImageComments = text[:10240]
