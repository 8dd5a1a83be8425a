"""Naming conventions of the TEKNOFEST-2021 layout: class folders and annotation subfolders."""

from __future__ import annotations

from strokeray.imaging.overlay import BACKGROUND, HEMORRHAGIC, ISCHEMIC

# Class folder names, English and Turkish, compared case-insensitively.
CLASS_NAMES = {
    "non-stroke": BACKGROUND,
    "nonstroke": BACKGROUND,
    "normal": BACKGROUND,
    "inmeyok": BACKGROUND,
    "ischemic": ISCHEMIC,
    "iskemi": ISCHEMIC,
    "hemorrhagic": HEMORRHAGIC,
    "kanama": HEMORRHAGIC,
}
IMAGE_DIRS = ("DICOM", "PNG")
ANNOTATION_DIRS = ("MASK", "OVERLAY")  # MASK holds class indices and wins over OVERLAY
