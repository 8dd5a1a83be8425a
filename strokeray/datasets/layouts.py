"""Turn a listing into labelled manifest rows: which layout, which class, which mask, which patient.

Layouts, recognised from folder names alone:
- ``teknofest``: class folders (Non-Stroke/INMEYOK, Ischemic/ISKEMI, Hemorrhagic/KANAMA, any case)
  holding DICOM/ or PNG/ images and MASK/ or OVERLAY/ annotations, optionally under split
  folders (Training/Train/Egitim, Validation/Val, Test/Testing). When a slice exists both as
  DICOM and as PNG, the DICOM (real HU) is used and the PNG dropped.
- ``class_folders``: images under Normal/ and Stroke/ (or the TEKNOFEST class names) without
  DICOM/PNG subfolders, as in the CT-ICH Kaggle release.
- ``unlabelled``: anything else; every object gets label -1.

Outside TEKNOFEST, a folder whose name holds "mask" (``masks/``, ``Masks_subset/``) beside an image
folder pairs its files with the images of the same stem (``hemo/049_21.dcm`` with
``masks/049_21.dcm``), as CT-ICH's DICOM release and most segmentation sets are laid out. Binary
masks (DICOM or greyscale) need the lesion class they mark (``mask_lesion``); a slice with a mask
is then a stroke slice of that class.

Patient group keys (for splitting), first rule that applies: the labels CSV's patient column;
DICOM PatientID (read from the header later, see stages.manifest, and overriding the file-name
rules set here); the CT-ICH file name rule ``<patient> (<slice>).jpg``; the phantom/TEKNOFEST rule
``<patient>_<slice>.ext``; else the file itself. Keys are pseudonymised like DICOM PatientIDs.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from strokeray.datasets.teknofest import ANNOTATION_DIRS, CLASS_NAMES, IMAGE_DIRS
from strokeray.imaging.overlay import BACKGROUND, HEMORRHAGIC, ISCHEMIC
from strokeray.io.pseudonym import pseudonym
from strokeray.io.sources import SourceEntry

UNKNOWN = -1
SPLIT_NAMES = {
    "training": "train",
    "train": "train",
    "egitim": "train",
    "validation": "val",
    "val": "val",
    "valid": "val",
    "dogrulama": "val",
    "test": "test",
    "testing": "test",
}
# Class folder names of every layout (TEKNOFEST's English and Turkish ones among them): label, lesion.
FOLDER_CLASSES = {
    "normal": (0, BACKGROUND),
    "non-stroke": (0, BACKGROUND),
    "nonstroke": (0, BACKGROUND),
    "inmeyok": (0, BACKGROUND),
    "stroke": (1, UNKNOWN),
    "inme": (1, UNKNOWN),
    "ischemic": (1, ISCHEMIC),
    "iskemi": (1, ISCHEMIC),
    "hemorrhagic": (1, HEMORRHAGIC),
    "kanama": (1, HEMORRHAGIC),
}
LABEL_WORDS = {
    "0": 0,
    "1": 1,
    "normal": 0,
    "non-stroke": 0,
    "stroke": 1,
    "no_ich": 0,
    "ich": 1,
    "false": 0,
    "true": 1,
    "no": 0,
    "yes": 1,
    "negative": 0,
    "positive": 1,
}
CTICH_NAME = re.compile(r"^(?P<patient>.+?)\s*\((?P<slice>\d+)\)$")
UNDERSCORE_NAME = re.compile(r"^(?P<patient>\d+)_(?P<slice>\d+)$")
MASK_FOLDER = re.compile(r"mask", re.IGNORECASE)


# The group rule of a DICOM row whose patient key is left to decoding (scoring reads no header first).
DEFERRED_RULE = "dicom_at_decode"


@dataclass
class ManifestRow:
    """One input object, labelled; ``group`` is a pseudonymous patient key (may be filled later)."""

    uri: str
    name: str
    size: int
    label: int = UNKNOWN  # -1 unknown, 0 non-stroke, 1 stroke
    lesion: int = UNKNOWN  # -1 unknown, 0 none, 1 ischemic, 2 hemorrhagic
    mask_uri: str = ""
    mask_kind: str = ""  # MASK or OVERLAY
    group: str = ""
    group_rule: str = ""
    layout_split: str = ""  # train/val/test from the layout's own folders
    split: str = ""
    stamp: str = ""  # the source's change stamp, with its mask's: a changed one is processed again


@dataclass(frozen=True)
class LabelsTable:
    """An explicit labels CSV: path relative to the source, optional label, lesion and patient."""

    path_col: str = "path"
    label_col: str = "label"
    lesion_col: str = "lesion"
    patient_col: str = "patient"


@dataclass
class Labelled:
    layout: str
    rows: list[ManifestRow]
    dropped_duplicates: list[str] = field(default_factory=list)  # PNGs shadowed by their DICOM
    labels_matched: int = 0  # rows the labels CSV applied to


def _parts(name: str) -> list[str]:
    return [p for p in PurePosixPath(name).parts[:-1]]


def detect_layout(names: list[str]) -> str:
    """teknofest, class_folders or unlabelled, from the folder names of the listing."""
    teknofest = plain = 0
    for name in names[:5000]:
        parts = [p.lower() for p in _parts(name)]
        upper = [p.upper() for p in _parts(name)]
        has_class = any(p in CLASS_NAMES for p in parts)
        if has_class and any(d in upper for d in IMAGE_DIRS + ANNOTATION_DIRS):
            teknofest += 1
        elif any(p in FOLDER_CLASSES for p in parts):
            plain += 1
    if teknofest and teknofest >= plain:
        return "teknofest"
    if plain:
        return "class_folders"
    return "unlabelled"


def _layout_split(parts: list[str]) -> str:
    for p in parts:
        split = SPLIT_NAMES.get(p.lower())
        if split:
            return split
    return ""


def _class_of(parts: list[str], table: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
    for p in reversed(parts):
        hit = table.get(p.lower())
        if hit is not None:
            return hit
    return None


def file_group(name: str) -> tuple[str, str]:
    """(raw patient key, rule) from a file name, or ("", "") when no rule applies."""
    stem = PurePosixPath(name).stem
    for rule, pattern in (("ctich_name", CTICH_NAME), ("underscore_name", UNDERSCORE_NAME)):
        m = pattern.match(stem)
        if m:
            return m.group("patient").strip(), rule
    return "", ""


def paired_masks(entries: list[SourceEntry]) -> dict[str, SourceEntry]:
    """Image name -> its mask, for masks in a "mask" folder beside the image's folder (same stem)."""
    masks: dict[tuple[PurePosixPath, str], SourceEntry] = {}
    for e in entries:
        p = PurePosixPath(e.name)
        if len(p.parts) > 1 and MASK_FOLDER.search(p.parent.name):
            masks[(p.parent.parent, p.stem)] = e
    pairs = {}
    for e in entries:
        p = PurePosixPath(e.name)
        if len(p.parts) > 1 and not MASK_FOLDER.search(p.parent.name):
            mask = masks.get((p.parent.parent, p.stem))
            if mask is not None:
                pairs[e.name] = mask
    return pairs


def label_listing(
    entries: list[SourceEntry],
    labels_csv: bytes | None = None,
    table: LabelsTable = LabelsTable(),
    labels_source: str = "labels CSV",
    mask_lesion: int | None = None,
) -> Labelled:
    """Manifest rows for a listing: layout labels, masks, file-name patient keys, CSV overrides.

    ``mask_lesion`` (ISCHEMIC or HEMORRHAGIC) is the class of paired binary masks outside TEKNOFEST.
    """
    names = [e.name for e in entries]
    layout = detect_layout(names)
    by_name = {e.name: e for e in entries}
    pairs = paired_masks(entries) if layout != "teknofest" else {}
    mask_names = {m.name for m in pairs.values()}
    rows: list[ManifestRow] = []
    dropped: list[str] = []
    for e in entries:
        if e.name in mask_names:
            continue  # attached to its image below
        parts = _parts(e.name)
        upper = [p.upper() for p in parts]
        row = ManifestRow(uri=e.uri, name=e.name, size=e.size, layout_split=_layout_split(parts), stamp=e.stamp)
        if layout == "teknofest":
            if any(d in upper for d in ANNOTATION_DIRS):
                continue  # annotations are attached to their images below
            cls = _class_of(parts, FOLDER_CLASSES)
            if cls is not None:
                row.label, row.lesion = cls
            p = PurePosixPath(e.name)
            if p.parent.name.upper() == "PNG" and _sibling(p, "DICOM", by_name) is not None:
                dropped.append(e.name)  # the DICOM twin carries real HU
                continue
            if row.lesion in (ISCHEMIC, HEMORRHAGIC):
                for kind in ANNOTATION_DIRS:
                    candidate = _sibling(p, kind, by_name)
                    if candidate is not None:
                        row.mask_uri, row.mask_kind = candidate.uri, kind
                        row.stamp = f"{e.stamp}|{candidate.stamp}"
                        break
        elif layout == "class_folders":
            cls = _class_of(parts, FOLDER_CLASSES)
            if cls is not None:
                row.label, row.lesion = cls
        if e.name in pairs:
            mask = pairs[e.name]
            row.mask_uri, row.mask_kind, row.stamp = mask.uri, "MASK", f"{e.stamp}|{mask.stamp}"
            if mask_lesion is not None and row.label != 0:
                row.label, row.lesion = 1, mask_lesion
        raw, rule = file_group(e.name)
        if raw:
            row.group, row.group_rule = pseudonym(raw, "patient"), rule
        rows.append(row)
    matched = 0
    if labels_csv is not None:
        matched = apply_labels_csv(rows, labels_csv, table, labels_source)
        if rows and not matched:
            raise ValueError(
                f"labels CSV {labels_source} matched none of the {len(rows)} files (CSV paths are relative"
                f" to the source, e.g. {rows[0].name!r}); check its {table.path_col!r} column"
            )
    return Labelled(layout, rows, dropped, matched)


_SUFFIXES = {
    "DICOM": (".dcm", ".DCM", ".dicom", ""),
    "MASK": (".png", ".PNG", ".bmp"),
    "OVERLAY": (".png", ".PNG", ".jpg"),
}


def _sibling(p: PurePosixPath, kind: str, by_name: dict[str, SourceEntry]) -> SourceEntry | None:
    """The file of the same stem in the class folder's ``kind`` subfolder (DICOM, MASK, OVERLAY)."""
    folder = p.parent.parent
    for sub in (kind, kind.lower(), kind.capitalize()):
        for suffix in _SUFFIXES[kind]:
            hit = by_name.get(str(folder / sub / f"{p.stem}{suffix}"))
            if hit is not None:
                return hit
    return None


def parse_label(value: str) -> int:
    key = str(value).strip().lower()
    if key not in LABEL_WORDS:
        raise ValueError(f"label {value!r} is not one of {sorted(LABEL_WORDS)}")
    return LABEL_WORDS[key]


def _decode_csv(data: bytes, source: str) -> str:
    """CSV text from bytes: UTF-8 (with or without BOM) or UTF-16 with its BOM, as spreadsheets save."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"labels CSV {source}: not UTF-8 or UTF-16 text ({exc}); save it as UTF-8 CSV") from None


def read_labels_csv(data: bytes, table: LabelsTable = LabelsTable(), source: str = "labels CSV") -> dict[str, dict]:
    """The CSV's rows by normalised path, each value checked; raises ValueError naming the line.

    A label of 0 with a lesion (or 1 with lesion 0), a lesion outside 0/1/2 and a path given twice
    with different values are errors: silently keeping one of them would train on a wrong label.
    """
    reader = csv.DictReader(io.StringIO(_decode_csv(data, source)))
    if reader.fieldnames is None or table.path_col not in reader.fieldnames:
        raise ValueError(
            f"labels CSV {source} has no {table.path_col!r} column (columns: {reader.fieldnames});"
            " name it with --labels-path-col"
        )
    entries: dict[str, dict] = {}
    for line, rec in enumerate(reader, start=2):
        where = f"labels CSV {source}, line {line}"
        path = (rec.get(table.path_col) or "").strip().lstrip("./")
        if not path:
            raise ValueError(f"{where}: empty {table.path_col!r}")
        label = rec.get(table.label_col) or ""
        lesion = (rec.get(table.lesion_col) or "").strip()
        try:
            value: dict[str, int | str | None] = {"label": parse_label(label) if label.strip() else None}
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if lesion:
            if lesion not in ("0", "1", "2"):
                raise ValueError(f"{where}: lesion {lesion!r} is not 0 (none), 1 (ischemic) or 2 (hemorrhagic)")
            value["lesion"] = int(lesion)
            if value["label"] is not None and (value["label"] == 0) != (value["lesion"] == BACKGROUND):
                raise ValueError(f"{where}: label {label.strip()!r} contradicts lesion {lesion}")
        patient = (rec.get(table.patient_col) or "").strip()
        if patient:
            value["patient"] = patient
        if path in entries and entries[path] != value:
            raise ValueError(f"{where}: {path!r} is listed twice with different values")
        entries[path] = value
    return entries


def apply_labels_csv(
    rows: list[ManifestRow], data: bytes, table: LabelsTable = LabelsTable(), source: str = "labels CSV"
) -> int:
    """Override labels/lesions/patients from a CSV keyed by path (relative, or a suffix of the name).

    Returns how many rows it matched. Unknown columns are ignored; bad values raise ValueError.
    """
    entries = read_labels_csv(data, table, source)
    matched = 0
    for row in rows:
        rec = entries.get(row.name)
        if rec is None:
            # Match by the longest path suffix: CSVs written relative to another root still apply.
            parts = PurePosixPath(row.name).parts
            for i in range(1, len(parts)):
                rec = entries.get(str(PurePosixPath(*parts[i:])))
                if rec is not None:
                    break
        if rec is None:
            continue
        matched += 1
        if rec["label"] is not None:
            row.label = rec["label"]
            if row.label == 0:
                row.lesion = BACKGROUND
            elif row.lesion == BACKGROUND:
                row.lesion = UNKNOWN
        if "lesion" in rec:
            row.lesion = rec["lesion"]
        if "patient" in rec:
            row.group, row.group_rule = pseudonym(rec["patient"], "patient"), "labels_csv"
    return matched
