"""One typed error for every input that cannot become a CT slice, with a short reason code, and
one for a source that cannot serve at all."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Quarantine reason codes; the value is what lands in quarantine tables."""

    NOT_DICOM = "not_dicom"  # no DICOM structure could be parsed
    NO_PIXEL_DATA = "no_pixel_data"  # a DICOM object without an image (SR, PR, DICOMDIR ...)
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # no decoder for its encoding
    CORRUPT_PIXEL_DATA = "corrupt_pixel_data"  # the pixel stream fails to decode or is garbage
    NOT_CT = "not_ct"  # a radiograph, MR, ... : not a CT image
    NOT_AXIAL = "not_axial"  # a localizer/scout or a sagittal/coronal reformat
    UNSUPPORTED_IMAGE = "unsupported_image"  # colour CT, odd geometry, non-2-D frames
    UNCALIBRATED_PIXELS = "uncalibrated_pixels"  # no rescale and the values are not HU
    NOT_IMAGE = "not_image"  # a PNG/JPG export that does not open as an image
    OVERSIZED_IMAGE = "oversized_image"  # claims more pixels than any CT object has (checked before allocating)


class DecodeError(Exception):
    """Raised for any input that cannot be turned into slices; carries a reason code and detail."""

    def __init__(self, reason: Reason, detail: str, source: str = "") -> None:
        self.reason = Reason(reason)
        self.detail = detail
        self.source = source
        super().__init__(f"{self.reason.value}: {detail}" + (f" [{source}]" if source else ""))


class SourceUnavailable(ConnectionError):
    """The source itself cannot serve now (a PACS refusing or timing out): not one object's fault.

    Never quarantined: it stops the run, whose finished chunks are kept, so a re-run resumes."""
