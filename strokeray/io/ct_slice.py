"""The decoded slice: pixels in Hounsfield units plus the metadata later stages need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CTSlice:
    """One 2-D CT image (one frame of a DICOM object, or one PNG/JPG export).

    Identifiers are pseudonyms (see ``io.pseudonym``): no raw names, IDs or UIDs are kept.
    ``hu`` is float32 Hounsfield units for DICOM; for windowed exports (``is_hu`` False) it holds
    pseudo-HU mapped back through the export's assumed window.
    """

    hu: np.ndarray
    is_hu: bool = True
    instance_key: str = ""  # pseudonym of SOPInstanceUID + frame: a stable slice id
    patient_key: str = ""
    study_key: str = ""
    series_key: str = ""
    frame: int = 0
    n_frames: int = 1
    instance_number: int | None = None
    position_mm: tuple[float, float, float] | None = None  # ImagePositionPatient of the frame
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient (6 direction cosines)
    spacing_mm: tuple[float, float] | None = None  # (row, column) pixel spacing
    thickness_mm: float | None = None
    modality: str = ""
    sop_class_uid: str = ""
    photometric: str = ""
    transfer_syntax: str = ""
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    hu_rule: str = ""  # how HU were obtained: rescale_tags, functional_groups, identity, window
    export_window: tuple[float, float] | None = None  # (low, high) HU of a windowed export
    padding_pixels: int = 0  # pixels set to air because they held PixelPaddingValue
    notes: list[str] = field(default_factory=list)  # tolerated oddities, for the dataset card

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def describe(self) -> dict:
        """Metadata without pixels, safe to print or log (pseudonymous keys only)."""
        out = {k: v for k, v in self.__dict__.items() if k != "hu"}
        out["shape"] = list(self.shape)
        out["hu_min"] = float(np.min(self.hu))
        out["hu_max"] = float(np.max(self.hu))
        return out
