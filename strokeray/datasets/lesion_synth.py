"""Lesions synthesised on real anatomy: lesion-free slices of a real archive with a hemorrhage or an
infarct drawn in, written in the TEKNOFEST layout with exact masks.

Phantom anatomy is too clean for a segmenter to transfer to real CT; these slices keep the real
skull, texture, noise and export of their source. Every usable source slice gives one
hemorrhagic slice (the kind drawn per slice: intraparenchymal, subdural, epidural,
intraventricular), one ischemic slice and, unchanged, one Non-Stroke slice, all three under one
pseudonymous patient number so that a patient-grouped split keeps them together. Output names are
``<patient>_<slice>.png`` (the file-name patient rule of ingest); ``provenance.csv`` names each
output's source file. Same seed and sources, same bytes.
"""

from __future__ import annotations

import csv
import io
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np

from strokeray.checks import check_positive
from strokeray.datasets.layouts import LabelsTable, label_listing
from strokeray.datasets.synth import CLASS_FOLDERS, write_file
from strokeray.imaging.brain_mask import BrainMaskConfig, brain_mask, for_export
from strokeray.imaging.lesion_insert import HEMORRHAGE_KINDS, LesionRanges, insert_hemorrhage, insert_infarct
from strokeray.imaging.overlay import BACKGROUND, HEMORRHAGIC, ISCHEMIC
from strokeray.imaging.windows import BRAIN, apply_window
from strokeray.io.decode import decode_slices
from strokeray.io.errors import DecodeError
from strokeray.io.raster import encode_png
from strokeray.io.sources import SourceError, SourceLimits, list_inputs, read_bytes

PROVENANCE = "provenance.csv"


@dataclass(frozen=True)
class LesionSynthConfig:
    seed: int = 0
    labels: str | None = None  # labels CSV: only slices it (or the layout) marks label 0 are used
    labels_table: LabelsTable = field(default_factory=LabelsTable)
    ranges: LesionRanges = field(default_factory=LesionRanges)
    # Pixel size assumed where a file carries none: CT-ICH's 650 px exports of ~0.43 mm 512 px
    # scans; their brain sections then measure up to ~17,000 mm2, as adult brains do.
    pixel_mm: float = 0.34
    min_brain_mm2: float = 3000.0  # smaller brain sections (skull base, vertex) are skipped
    limit: int | None = None  # at most this many source slices (in name order)
    workers: int | None = None  # processes (None: all CPUs)

    def __post_init__(self) -> None:
        check_positive(pixel_mm=self.pixel_mm, min_brain_mm2=self.min_brain_mm2, limit=self.limit, workers=self.workers)


@dataclass
class LesionSynthSummary:
    sources: int = 0  # lesion-free source slices offered
    used: int = 0  # of them with enough brain
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> slices
    written: dict[str, int] = field(default_factory=dict)  # class folder -> slices
    kinds: dict[str, int] = field(default_factory=dict)  # hemorrhage kind -> slices


def lesion_free_sources(src: str, cfg: LesionSynthConfig) -> list[tuple[str, str, str]]:
    """(uri, name, patient group) of every object labelled lesion-free (label 0), in name order."""
    labels = read_bytes(cfg.labels) if cfg.labels else None
    entries = list_inputs(src, SourceLimits()).entries
    rows = label_listing(entries, labels, cfg.labels_table, cfg.labels or "").rows
    chosen = sorted((r.name, r.uri, r.group or r.name) for r in rows if r.label == 0)
    if cfg.limit:
        chosen = chosen[: cfg.limit]
    return [(uri, name, group) for name, uri, group in chosen]


def synthesise(data: bytes, name: str, seed: int, cfg: LesionSynthConfig) -> tuple[str, dict[int, tuple]]:
    """("" and {lesion class: (grey PNG bytes, mask PNG bytes or None, kind)}) for one source file,
    or (reason, {}) when it cannot be used."""
    try:
        (ct, *_) = decode_slices(data, name)
    except DecodeError as err:
        return err.reason.value, {}
    spacing = ct.spacing_mm or (cfg.pixel_mm, cfg.pixel_mm)
    px_mm = float(np.sqrt(spacing[0] * spacing[1]))
    bcfg = BrainMaskConfig() if ct.export_window is None else for_export(BrainMaskConfig(), *ct.export_window)
    brain = brain_mask(ct.hu, spacing, bcfg)
    if brain.sum() * px_mm * px_mm < cfg.min_brain_mm2:
        return "little_brain", {}
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    # Brain-window PNGs, as the exports are (and as ingest reads a PNG): HU sources lose the rest.
    out: dict[int, tuple] = {BACKGROUND: (encode_png(apply_window(ct.hu, BRAIN)), None, "")}
    start = int(rng.integers(len(HEMORRHAGE_KINDS)))
    for k in range(len(HEMORRHAGE_KINDS)):  # the next kind where this one has no room
        kind = HEMORRHAGE_KINDS[(start + k) % len(HEMORRHAGE_KINDS)]
        drawn = insert_hemorrhage(ct.hu, brain, kind, rng, px_mm, cfg.ranges)
        if drawn is not None:
            out[HEMORRHAGIC] = (*_pngs(drawn, HEMORRHAGIC), kind)
            break
    drawn = insert_infarct(ct.hu, brain, rng, px_mm, cfg.ranges)
    if drawn is not None:
        out[ISCHEMIC] = (*_pngs(drawn, ISCHEMIC), "infarct")
    return "", out


def _pngs(drawn: tuple[np.ndarray, np.ndarray], lesion: int) -> tuple[bytes, bytes]:
    hu, mask = drawn
    return encode_png(apply_window(hu, BRAIN)), encode_png(mask.astype(np.uint8) * np.uint8(lesion))


def _work(item: tuple[str, str, int, LesionSynthConfig]) -> tuple[str, dict[int, tuple]]:
    uri, name, seed, cfg = item
    try:
        return synthesise(read_bytes(uri), name, seed, cfg)
    except SourceError as err:
        return err.reason, {}


def write_lesion_archive(src: str, out: str, cfg: LesionSynthConfig = LesionSynthConfig()) -> LesionSynthSummary:
    """Synthesise from every lesion-free slice of ``src`` into ``out`` (TEKNOFEST layout)."""
    sources = lesion_free_sources(src, cfg)
    if not sources:
        raise ValueError(f"{src} holds no slice labelled lesion-free (label 0): give a labels CSV or class folders")
    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    patients = {g: i for i, g in enumerate(sorted({g for _, _, g in sources}))}
    counter: dict[str, int] = {}
    summary = LesionSynthSummary(sources=len(sources))
    provenance = io.StringIO()
    log = csv.writer(provenance)
    log.writerow(["file", "source", "lesion", "kind"])
    items = [(uri, name, cfg.seed, cfg) for uri, name, _ in sources]
    with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
        for (_, name, group), (reason, drawn) in zip(sources, pool.map(_work, items, chunksize=4)):
            if reason:
                summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
                continue
            summary.used += 1
            counter[group] = counter.get(group, 0) + 1
            stem = f"{patients[group]:05d}_{counter[group]:03d}"
            for lesion, (grey, mask, kind) in drawn.items():
                folder = f"{base}/{CLASS_FOLDERS[lesion]}"
                write_file(fs, f"{folder}/PNG/{stem}.png", grey)
                if mask is not None:
                    write_file(fs, f"{folder}/MASK/{stem}.png", mask)
                summary.written[CLASS_FOLDERS[lesion]] = summary.written.get(CLASS_FOLDERS[lesion], 0) + 1
                if kind and lesion == HEMORRHAGIC:
                    summary.kinds[kind] = summary.kinds.get(kind, 0) + 1
                log.writerow([f"{CLASS_FOLDERS[lesion]}/PNG/{stem}.png", name, CLASS_FOLDERS[lesion], kind])
    write_file(fs, f"{base}/{PROVENANCE}", provenance.getvalue().encode())
    return summary
