"""Write phantom patients as an archive in the TEKNOFEST layout, optionally with planted bad files.

Layout (the original competition's, with exact masks added)::

    <root>/<Training|Test>/<Non-Stroke|Ischemic|Hemorrhagic>/DICOM/<patient>_<slice>.dcm
                                                          /PNG/<patient>_<slice>.png      brain window
                                                          /OVERLAY/<patient>_<slice>.png  lesion painted
                                                          /MASK/<patient>_<slice>.png     class indices
    <root>/synth.json    config, counts and every planted file with the outcome it must get

A slice goes to the folder of what it shows: slices of a stroke patient that miss the lesion are
Non-Stroke, as in the competition's per-image labels. Splits are by patient.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import fsspec
import numpy as np

from strokeray import __version__
from strokeray.checks import check_positive, check_range
from strokeray.datasets.phantom import PhantomConfig, draw_patient, render_slice, slice_z
from strokeray.imaging.overlay import BACKGROUND, HEMORRHAGIC, ISCHEMIC, paint_overlay
from strokeray.imaging.windows import BRAIN, apply_window
from strokeray.io.dicom_encode import CTHeader, encode_ct, uid_from
from strokeray.io.raster import encode_png

CLASS_FOLDERS = {BACKGROUND: "Non-Stroke", ISCHEMIC: "Ischemic", HEMORRHAGIC: "Hemorrhagic"}
SPLIT_FOLDERS = ("Training", "Test")
SYNTH_JSON = "synth.json"


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; the defaults make the small demo archive."""

    patients: int = 12
    seed: int = 0
    test_fraction: float = 0.25
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    # Transfer syntaxes drawn per patient (repeats weight the draw).
    syntaxes: tuple[str, ...] = ("explicit", "explicit", "rle", "jpegls", "j2k")
    png: bool = True  # also write the brain-window PNG export of every slice
    overlays: bool = True  # colour overlays for lesion slices, as TEKNOFEST shipped them
    masks: bool = True  # exact class masks (PNG of 0/1/2)
    bad_files: bool = False  # plant odd and corrupt files for robustness runs

    def __post_init__(self) -> None:
        check_positive(patients=self.patients)
        check_range("test_fraction", self.test_fraction, 0.0, 1.0)


@dataclass
class SynthSummary:
    root: str
    slices: int = 0
    patients: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    per_split: dict[str, int] = field(default_factory=dict)
    planted: list[dict] = field(default_factory=list)


def patient_kind(index: int) -> int:
    """Lesion class of patient ``index``: classes rotate so every class appears in small runs."""
    return (BACKGROUND, ISCHEMIC, HEMORRHAGIC)[index % 3]


def held_out_patients(patients: int, seed: int, test_fraction: float) -> set[int]:
    """The patients in Test: ``test_fraction`` of each lesion class (rounded, at least one of a
    class with two or more patients when the fraction is above 0), drawn per seed. Stratified, so a
    small archive's test split holds every class and its AUCs are defined."""
    rng = np.random.default_rng([seed, 7])
    chosen: set[int] = set()
    for kind in (BACKGROUND, ISCHEMIC, HEMORRHAGIC):
        members = [i for i in range(patients) if patient_kind(i) == kind]
        n = round(test_fraction * len(members))
        if test_fraction > 0 and len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        chosen.update(int(i) for i in rng.permutation(members)[:n])
    return chosen


def write_file(fs, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` on ``fs``, making its folder first."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        fh.write(data)


def write_archive(root: str, cfg: SynthConfig = SynthConfig()) -> SynthSummary:
    """Generate ``cfg.patients`` phantom patients under ``root`` (a local path or fsspec URL)."""
    fs, base = fsspec.core.url_to_fs(root)
    base = base.rstrip("/")
    summary = SynthSummary(root=root)
    pc = cfg.phantom
    good_example: tuple[str, bytes, CTHeader, np.ndarray] | None = None
    testing = held_out_patients(cfg.patients, cfg.seed, cfg.test_fraction)
    for i in range(cfg.patients):
        rng = np.random.default_rng([cfg.seed, i])
        kind = patient_kind(i)
        spec = draw_patient(i, kind, rng, pc)
        split = SPLIT_FOLDERS[1] if i in testing else SPLIT_FOLDERS[0]
        syntax = cfg.syntaxes[int(rng.integers(len(cfg.syntaxes)))]
        pid = f"SYN{cfg.seed}-{i:05d}"
        study = uid_from(f"{pid}/study")
        series = uid_from(f"{pid}/series")
        for k in range(pc.slices):
            hu, mask = render_slice(spec, k, pc, rng)
            cls = kind if mask.any() else BACKGROUND
            folder = f"{base}/{split}/{CLASS_FOLDERS[cls]}"
            name = f"{i:05d}_{k:02d}"
            header = CTHeader(
                patient_id=pid,
                patient_name=f"Phantom^Patient{i:05d}",
                study_uid=study,
                series_uid=series,
                sop_uid=uid_from(f"{pid}/{k}"),
                instance_number=k + 1,
                position_mm=(-pc.size * spec.spacing_mm / 2, -pc.size * spec.spacing_mm / 2, slice_z(spec, k, pc)),
                spacing_mm=(spec.spacing_mm, spec.spacing_mm),
                thickness_mm=pc.thickness_mm,
            )
            dcm = encode_ct(hu, header, syntax)
            write_file(fs, f"{folder}/DICOM/{name}.dcm", dcm)
            grey = apply_window(hu, BRAIN)
            if cfg.png:
                write_file(fs, f"{folder}/PNG/{name}.png", encode_png(grey))
            if cls != BACKGROUND and cfg.overlays:
                write_file(fs, f"{folder}/OVERLAY/{name}.png", encode_png(paint_overlay(grey, mask)))
            if cls != BACKGROUND and cfg.masks:
                write_file(fs, f"{folder}/MASK/{name}.png", encode_png(mask))
            summary.slices += 1
            summary.per_class[CLASS_FOLDERS[cls]] = summary.per_class.get(CLASS_FOLDERS[cls], 0) + 1
            summary.per_split[split] = summary.per_split.get(split, 0) + 1
            if good_example is None:
                good_example = (folder, dcm, header, hu)
        summary.patients += 1
    if cfg.bad_files and good_example is not None:
        summary.planted = plant_bad_files(fs, base, good_example)
    meta = {
        "strokeray_version": __version__,
        "config": asdict(cfg),
        "slices": summary.slices,
        "patients": summary.patients,
        "per_class": summary.per_class,
        "per_split": summary.per_split,
        "planted": summary.planted,
    }
    write_file(fs, f"{base}/{SYNTH_JSON}", json.dumps(meta, indent=2).encode())  # last: the archive is whole
    return summary


def plant_bad_files(fs, base: str, example: tuple[str, bytes, CTHeader, np.ndarray]) -> list[dict]:
    """Odd and corrupt files next to good ones; each entry says what decoding must conclude."""
    import dataclasses

    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    folder, good, header, hu = example
    dicom_dir = f"{folder}/DICOM"
    planted: list[dict] = []

    def plant(name: str, data: bytes, expect: str, why: str) -> None:
        write_file(fs, f"{dicom_dir}/{name}", data)
        planted.append({"path": f"{dicom_dir}/{name}", "expect": expect, "why": why})

    plant("zz_truncated.dcm", good[: len(good) * 2 // 3], "corrupt_pixel_data", "file cut short")
    plant("zz_notes.dcm", b"Patient was moved to ward 3.\nNo images here.\n" * 4, "not_dicom", "a text file")
    plant("zz_empty.dcm", b"", "not_dicom", "zero bytes")

    def variant(**changes) -> bytes:
        ds = dcmread(DicomBytesIO(good))
        for key, value in changes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        buf = DicomBytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    plant("zz_no_pixels.dcm", variant(PixelData=None), "no_pixel_data", "header only")
    plant("zz_mr.dcm", variant(Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4"), "not_ct", "an MR image")
    plant("zz_scout.dcm", variant(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), "not_axial", "a localizer")
    # Valid oddities that must decode to the same HU as their plain twin.
    odd = dataclasses.replace(header, sop_uid=uid_from(header.sop_uid + "/mono1"))
    plant("zz_monochrome1.dcm", encode_ct(hu, odd, "explicit", monochrome1=True), "ok", "MONOCHROME1 CT")
    raw = dcmread(
        DicomBytesIO(encode_ct(hu, dataclasses.replace(header, sop_uid=uid_from(header.sop_uid + "/raw")), "implicit"))
    )
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, raw)  # the bare data set: no preamble, no "DICM", no file meta
    plant("zz_no_meta.dcm", buf.getvalue(), "ok", "no preamble, no file meta")
    return planted
