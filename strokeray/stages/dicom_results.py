"""After scoring, on request: a DICOM SEG and SR for every positive series, written to a folder
(``--dicom-out``) and/or stored in a PACS with STOW-RS (``--dicom-store``).

These objects carry the source's real UIDs (that is what lets a viewer lay the SEG over the CT),
so they never go into OUT: the folder and the PACS are the hospital's. OUT gets only
``dicom.json``: counts, and per series its pseudonymous key and what happened. Their UIDs derive
from the source series and the models, so a re-run (or one killed half-way) makes the same objects
again and the PACS keeps one of each; series already delivered are recorded in
OUT/_state/dicom and skipped.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import fsspec
import pyarrow.compute as pc
import pyarrow.parquet as pq

from strokeray.io.errors import SourceUnavailable
from strokeray.io.json_files import read_marker, write_json_at
from strokeray.stages.stage_dir import settings_digest

DICOM_SUMMARY = "dicom.json"
STATE = "_state/dicom"


@dataclass(frozen=True)
class DicomResultsConfig:
    out_dir: str | None = None  # a folder (local or fsspec URL) for the SEG and SR files
    store: str | None = None  # a DICOMweb root to STOW-RS them to (http(s):// or dicomweb+http(s)://)
    workers: int = 4  # series handled at once (reading headers and storing are I/O)

    @property
    def wanted(self) -> bool:
        return bool(self.out_dir or self.store)


@dataclass
class DicomResultsSummary:
    positive_series: int = 0
    delivered: int = 0  # series whose SEG (when it has a lesion) and SR were written or stored now
    already: int = 0  # delivered by an earlier run with the same models
    segmentations: int = 0
    reports: int = 0
    failed: list[dict] = field(default_factory=list)  # series key, reason (no UIDs)
    # delivered with an SR but no SEG although a lesion was found (series key, reason)
    without_segmentation: list[dict] = field(default_factory=list)


def stow_root(url: str) -> str:
    return url.removeprefix("dicomweb+")


def _slices_of_series(slices, study: str, series: str):
    mask = pc.and_(
        pc.and_(pc.equal(slices.column("study"), study), pc.equal(slices.column("series"), series)),
        pc.equal(slices.column("duplicate_of"), ""),
    )
    return slices.filter(mask).to_pylist()


def _header(uri: str):
    import pydicom

    from strokeray.io.sources import read_bytes

    with warnings.catch_warnings():  # odd but readable headers were scored; they are read the same way
        warnings.simplefilter("ignore", UserWarning)
        return pydicom.dcmread(io.BytesIO(read_bytes(uri)), stop_before_pixels=True)


def _series_objects(study_row: dict, rows: list[dict], uris: dict[str, str], prov) -> tuple[list, str]:
    """The SEG (when a positive slice holds a lesion and the source geometry allows one) and the SR
    of one positive series, and why there is no SEG when a lesion was found ('' otherwise)."""
    from strokeray.io.dicom_results import ScoredSlice, SeriesFinding, series_report, series_segmentation
    from strokeray.stages.score import source_mask

    if not rows:
        raise ValueError("no DICOM series: image exports carry no UIDs for a SEG or SR to reference")
    if any(int(r["frame"]) != 0 for r in rows):
        raise ValueError("multi-frame sources are not supported yet")
    headers = {r["id"]: _header(uris[r["source"]]) for r in rows}
    scored = [
        ScoredSlice(headers[r["id"]], float(r["stroke_probability"]), source_mask(r) if r["segmented"] else None)
        for r in rows
    ]
    try:
        seg, no_seg = series_segmentation(scored, prov), ""
    except ValueError as err:  # e.g. sources without a Frame of Reference: the SR still reports
        seg, no_seg = None, f"{type(err).__name__}: {err}"
    finding = SeriesFinding(
        probability=float(study_row["max_probability"]),
        positive=bool(study_row["decision"]),
        most_suspicious=headers[study_row["most_suspicious_id"]],
        volumes_ml={1: float(study_row["ischemia_ml"]), 2: float(study_row["hemorrhage_ml"])},
    )
    evidence = [s.header for s in scored if s.classes is not None and s.classes.any()]
    if finding.most_suspicious not in evidence:
        evidence.append(finding.most_suspicious)
    sr = series_report(finding, seg, prov, evidence)
    return [o for o in (seg, sr) if o is not None], no_seg


def _scrub(text: str, rows: list[dict], uris: dict[str, str]) -> str:
    """An error message without the series' UIDs (highdicom or a PACS may quote them): those in its
    PACS addresses, and anything shaped like a UID."""
    for r in rows:
        for uid in re.findall(r"(?:studies|series|instances)/([^/?]+)", uris.get(r["source"], "")):
            text = text.replace(uid, "<uid>")
    return re.sub(r"\b\d+(?:\.\d+){3,}\b", "<uid>", text)[:500]


def run_dicom_results(
    out: str, cfg: DicomResultsConfig, prov, log: Callable[[str], object] = print
) -> DicomResultsSummary:
    """Make and deliver the SEG and SR of every positive series of the finished scores in ``out``."""
    from strokeray.io.dicomweb import DicomwebError, session, store_instances

    fs, base = fsspec.core.url_to_fs(out)
    base = base.rstrip("/")
    slices = pq.read_table(f"{base}/slices.parquet", filesystem=fs)
    studies = pq.read_table(f"{base}/studies.parquet", filesystem=fs).to_pylist()
    manifest = pq.read_table(f"{base}/manifest.parquet", columns=["name", "uri"], filesystem=fs).to_pydict()
    uris = dict(zip(manifest["name"], manifest["uri"]))
    # Delivered means delivered to these destinations: another folder or PACS gets everything.
    digest = settings_digest([*prov.key(), cfg.out_dir or "", stow_root(cfg.store or "")])
    summary = DicomResultsSummary()
    todo = []
    for row in studies:
        if not row["decision"]:
            continue
        summary.positive_series += 1
        marker = f"{base}/{STATE}/{row['study']}-{row['series']}.json"
        if (read_marker(fs, marker) or {}).get("digest") == digest:
            summary.already += 1
            continue
        todo.append((row, marker))
    sink = fsspec.core.url_to_fs(cfg.out_dir) if cfg.out_dir else None
    if sink:
        sink[0].makedirs(sink[1], exist_ok=True)
    http = session() if cfg.store else None

    def deliver(item) -> dict:
        row, marker = item
        rows = _slices_of_series(slices, row["study"], row["series"])
        try:
            objects, no_seg = _series_objects(row, rows, uris, prov)
        except Exception as err:  # noqa: BLE001 - one series' odd headers must not stop the others
            return {"series": row["series"], "reason": f"{type(err).__name__}: {_scrub(str(err), rows, uris)}"}
        blobs = []
        for ds in objects:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            blobs.append((str(ds.SOPInstanceUID), str(ds.Modality), buf.getvalue()))
        if sink:
            for uid, _, data in blobs:
                with sink[0].open(f"{sink[1].rstrip('/')}/{uid}.dcm", "wb") as fh:
                    fh.write(data)
        if http is not None:
            try:
                store_instances(http, f"{stow_root(cfg.store or '').rstrip('/')}/studies", [b for _, _, b in blobs])
            except DicomwebError as err:  # refused (not unavailable, which stops the run): this series only
                return {"series": row["series"], "reason": f"stow_refused: {_scrub(str(err), rows, uris)}"}
        fs.makedirs(f"{base}/{STATE}", exist_ok=True)
        write_json_at(fs, marker, {"digest": digest, "objects": [m for _, m, _ in blobs]}, indent=None)
        done = {"series": row["series"], "objects": [m for _, m, _ in blobs]}
        return {**done, "no_segmentation": _scrub(no_seg, rows, uris)} if no_seg else done

    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        try:
            results = list(pool.map(deliver, todo))
        except SourceUnavailable as err:  # the PACS (to store to, or to read headers from) stopped answering
            raise SourceUnavailable(
                f"delivering the DICOM results stopped: {err}. The scores in {out} are complete and the series "
                "delivered so far are recorded: re-run the same command to deliver the rest."
            ) from err
        for result in results:
            if "reason" in result:
                summary.failed.append(result)
                log(f"[dicom] series {result['series']}: {result['reason']}")
                continue
            summary.delivered += 1
            if "no_segmentation" in result:
                summary.without_segmentation.append({"series": result["series"], "reason": result["no_segmentation"]})
            summary.segmentations += result["objects"].count("SEG")
            summary.reports += result["objects"].count("SR")
    write_json_at(fs, f"{base}/{DICOM_SUMMARY}", asdict(summary), indent=1)
    where = " and ".join(
        x for x in (cfg.out_dir and f"written to {cfg.out_dir}", cfg.store and f"stored in {cfg.store}") if x
    )
    log(
        f"[dicom] {summary.positive_series} positive series: {summary.delivered} delivered now "
        f"({summary.segmentations} SEG, {summary.reports} SR) {where}, {summary.already} before, "
        f"{len(summary.failed)} failed, {len(summary.without_segmentation)} with a lesion but no SEG"
    )
    return summary
