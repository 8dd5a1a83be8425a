"""Naming conventions of the TEKNOFEST-2021 layout: class folders and annotation subfolders."""

from __future__ import annotations

from pathlib import PurePosixPath

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


def is_annotation(path: str) -> bool:
    """True for files inside a MASK or OVERLAY folder (labels, not images)."""
    return any(part.upper() in ANNOTATION_DIRS for part in PurePosixPath(path).parts[:-1])


def lesion_class_of(path: str) -> int | None:
    """Lesion class from the nearest class folder in the path, or None when there is none."""
    for part in reversed(PurePosixPath(path).parts[:-1]):
        cls = CLASS_NAMES.get(part.lower())
        if cls is not None:
            return cls
    return None


def annotation_candidates(path: str) -> list[tuple[str, str]]:
    """Where a slice's annotation may lie, best first: (kind, path) with kind MASK or OVERLAY.

    ``<class>/DICOM/x.dcm`` and ``<class>/PNG/x.png`` look for ``<class>/MASK/x.png`` and then
    ``<class>/OVERLAY/x.png``.
    """
    p = PurePosixPath(path)
    if p.parent.name.upper() not in IMAGE_DIRS:
        return []
    return [(kind, str(p.parent.parent / kind / f"{p.stem}.png")) for kind in ANNOTATION_DIRS]
