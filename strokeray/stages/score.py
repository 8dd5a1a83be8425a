"""Score whole archives: every slice gets a stroke probability, positive slices a lesion mask,
every study a decision and lesion volumes.

Ray Data reads and decodes the archive in CPU tasks (the ingest's per-file work, with the
classifier bundle's preprocessing), then the run's scoring actors (``stages.cascade``) run the
cascade: each loads the classifier and the segmenter once per run (one actor per GPU on a GPU
cluster) and segments only the slices its classifier calls positive. Chunks of files are
written, promoted and marked done as in ingest, so an interrupted run re-run scores only what is
missing.

OUT/
  slices.parquet      one row per source slice (no images): probability, decision, lesion class
                      and areas, the mask run-length encoded (segmentation view), model versions;
                      ``duplicate_of`` names the first source of a slice that the archive holds twice
  studies.parquet     one row per study/series: slices, max probability, decision, volumes
  submission.csv      ID (file stem; the path where stems repeat), label: the competition's shape
  quarantine.parquet  every object that could not be scored, with its reason
  overlays/<id>.png   positive slices with the predicted lesion painted (--overlays)
  source_masks/<id>.png  positive slices' classes (0/1/2) on the source pixel grid (--source-masks)
  summary.json        counts, timings, models, settings
  dicom.json          with --dicom-out/--dicom-store: what went out per positive series (pseudonymous;
                      the SEG and SR themselves hold real UIDs and never go into OUT: stages.dicom_results)
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from strokeray.checks import check_positive, check_range
from strokeray.datasets.slice_records import RecordConfig
from strokeray.io.csv_cells import safe_cell
from strokeray.learn.accel import precision_name
from strokeray.learn.tasks import CLASSIFY, SEGMENT, Task
from strokeray.stages.stage_dir import StageDir, overlap, settings_digest

# Everything score writes in OUT (what --overwrite may remove); anything else there is left alone.
SUMMARY = "summary.json"  # written last: the run is complete
SCORE_OUTPUTS = (
    "manifest.parquet",
    "manifest.json",
    "_parts",
    "_state",
    "slices.parquet",
    "studies.parquet",
    "submission.csv",
    "quarantine.parquet",
    "overlays",
    "source_masks",
    "dicom.json",
    SUMMARY,
)
STUDY_SCHEMA = pa.schema(
    [
        ("study", pa.string()),
        ("series", pa.string()),
        ("patient", pa.string()),
        ("slices", pa.int64()),
        ("max_probability", pa.float64()),
        ("most_suspicious_id", pa.string()),
        ("most_suspicious_source", pa.string()),
        ("ischemia_ml", pa.float64()),
        ("hemorrhage_ml", pa.float64()),
        ("positive_slices", pa.int64()),
        ("decision", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ScoreConfig:
    # stroke probability at or above which a slice is positive (None: the classifier bundle's own,
    # chosen on its validation split; 0.5 for bundles without one)
    threshold: float | None = None
    batch_size: int | None = None  # slices per model call (None: 16 on a CPU, by free memory on a GPU)
    # scoring actors (None: with use_gpu one per files_per_chunk files, up to one per GPU the cluster
    # can hold; else 1)
    actors: int | None = None
    use_gpu: bool = False
    cpus_per_actor: float = 1.0  # CPUs each scoring actor reserves
    # Torch threads of a CPU actor (None: the cluster's CPUs shared by the actors). More than it
    # reserves on purpose: the models are the bottleneck and decoding needs a fraction of a core.
    threads_per_actor: int | None = None
    overlays: bool = False
    source_masks: bool = False  # source_masks/<id>.png: a positive slice's classes on its source pixel grid
    files_per_chunk: int = 1000  # the work an interruption can lose
    files_per_task: int = 64
    num_cpus: int | None = None  # for the local Ray; ignored on a cluster
    overwrite: bool = False
    records: RecordConfig = field(default_factory=RecordConfig)
    # DICOM SEG + SR of every positive series, for a PACS (they hold the real UIDs: never in OUT)
    dicom_out: str | None = None  # a folder for them
    dicom_store: str | None = None  # a DICOMweb root to store them to with STOW-RS

    def __post_init__(self) -> None:
        check_range("threshold", self.threshold, 0.0, 1.0)
        check_positive(
            batch_size=self.batch_size,
            actors=self.actors,
            cpus_per_actor=self.cpus_per_actor,
            threads_per_actor=self.threads_per_actor,
            files_per_chunk=self.files_per_chunk,
            files_per_task=self.files_per_task,
            num_cpus=self.num_cpus,
        )


@dataclass
class ScoreSummary:
    out: str
    objects: int = 0
    slices: int = 0
    positive_slices: int = 0
    studies: int = 0
    positive_studies: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    chunks_done: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0
    reused: bool = False  # the run had already finished: nothing was written
    dicom: dict = field(default_factory=dict)  # --dicom-out/--dicom-store: what was delivered (OUT/dicom.json)
    models: dict[str, str] = field(default_factory=dict)
    batch_size: int = 0  # slices per model call (0: every chunk was already done)


def source_mask(row: Mapping) -> np.ndarray:
    """A slices.parquet row's predicted classes on its source pixel grid (uint8: 0 background,
    1 ischemic, 2 hemorrhagic), from the view mask (``mask_rle``) and the view's box."""
    from strokeray.imaging.geometry import Box, mask_to_source
    from strokeray.imaging.rle import decode_rle

    rows, cols = (int(v) for v in row["source_shape"])
    view = decode_rle(row["mask_rle"]) if row["mask_rle"] else np.zeros((1, 1), np.uint8)
    return mask_to_source(view, Box(*(int(v) for v in row["seg_box"])), (rows, cols))


def resolve_models(
    classifier: str | None, segmenter: str | None, registry: str | None, segment: bool = True
) -> tuple[str, str | None]:
    """The bundles to score with: those given, else the registry's current best."""
    from strokeray.stages import registry as reg

    if classifier is None:
        if registry is None:
            raise ValueError("no classifier: pass --classifier BUNDLE or --registry DIR")
        classifier = reg.best_bundle(registry, CLASSIFY.name)
    if segment and segmenter is None:
        if registry is None:
            raise ValueError("no segmenter: pass --segmenter BUNDLE, --registry DIR or --no-segmenter")
        segmenter = reg.best_bundle(registry, SEGMENT.name)
    return classifier, segmenter if segment else None


def _digest(manifest_digest: str, versions: dict, cfg: ScoreConfig) -> str:
    """What a finished or resumed run must share. The device counts through its arithmetic: GPU
    actors score under fp16 autocast, CPU ones in fp32, and slices near the operating point can
    change sides, so a run is not resumed on the other kind (CPU runs keep their digest of before)."""
    keep = {
        k: v
        for k, v in asdict(cfg).items()
        if k
        not in (
            "overwrite",
            "num_cpus",
            "actors",
            "use_gpu",
            "cpus_per_actor",
            "batch_size",
            "dicom_out",
            "dicom_store",
        )
    }
    precision = {"precision": precision_name("cuda")} if cfg.use_gpu else {}
    return settings_digest({"manifest": manifest_digest, "models": versions, "cfg": keep, **precision})


def submission_ids(sources: list[str], frames: list[int]) -> list[str]:
    """The competition's IDs: the file's stem (with the frame for multi-frame objects); where two
    sources share a stem, their paths without suffix, so that every row keeps its own ID."""

    def stem(source: str, path: bool) -> str:
        p = PurePosixPath(source.rsplit("::", 1)[-1])
        return str(p.with_suffix("")) if path else p.stem

    stems = [stem(s, False) for s in sources]
    sources_of: dict[str, set[str]] = {}
    for st, src in zip(stems, sources):
        sources_of.setdefault(st, set()).add(src)
    ids = []
    for st, src, frame in zip(stems, sources, frames):
        base = st if len(sources_of[st]) == 1 else stem(src, True)
        ids.append(base if int(frame) == 0 else f"{base}_{int(frame)}")
    return ids


def duplicate_of(ids: list[str], sources: list[str]) -> list[str]:
    """For each row, the first source (in name order) holding the same slice, or "" for that first
    one: archives hold copies, and a copy must not count twice in a study's volumes."""
    first: dict[str, str] = {}
    out = []
    for i, src in sorted(zip(ids, sources), key=lambda t: t[1]):
        first.setdefault(i, src)
    for i, src in zip(ids, sources):
        out.append("" if first[i] == src else first[i])
    return out


def studies_table(slices: pa.Table, threshold: float) -> pa.Table:
    """One row per study and series (per patient key for exports that carry neither)."""
    if slices.num_rows == 0:
        return pa.Table.from_pylist([], schema=STUDY_SCHEMA)
    cols = slices.select(
        [
            "id",
            "source",
            "patient",
            "study",
            "series",
            "stroke_probability",
            "decision",
            "thickness_mm",
            "ischemic_area_mm2",
            "hemorrhagic_area_mm2",
            "duplicate_of",
        ]
    ).to_pydict()
    groups: dict[tuple, dict] = {}
    for i in range(slices.num_rows):
        if cols["duplicate_of"][i]:
            continue  # a copy of a slice already counted
        key = (cols["study"][i] or f"patient:{cols['patient'][i]}", cols["series"][i])
        g = groups.setdefault(
            key,
            {
                "patient": cols["patient"][i],
                "slices": 0,
                "max_probability": -1.0,
                "most_suspicious_id": "",
                "most_suspicious_source": "",
                "ischemia_ml": 0.0,
                "hemorrhage_ml": 0.0,
                "positive_slices": 0,
            },
        )
        g["slices"] += 1
        g["positive_slices"] += int(cols["decision"][i])
        p = float(cols["stroke_probability"][i])
        if p > g["max_probability"]:
            g.update(max_probability=p, most_suspicious_id=cols["id"][i], most_suspicious_source=cols["source"][i])
        t = cols["thickness_mm"][i]
        # area (mm^2) x thickness (mm) = mm^3; / 1000 = mL. Unknown spacing or thickness: NaN.
        g["ischemia_ml"] += cols["ischemic_area_mm2"][i] * t / 1000.0
        g["hemorrhage_ml"] += cols["hemorrhagic_area_mm2"][i] * t / 1000.0
    rows = []
    for (study, series), g in sorted(groups.items()):
        rows.append({"study": study, "series": series, **g, "decision": int(g["max_probability"] >= threshold)})
    return pa.Table.from_pylist(rows, schema=STUDY_SCHEMA)


def check_bundles(classifier: str, segmenter: str | None, cfg: ScoreConfig, log=print) -> ScoreConfig:
    """``cfg`` with the bundles' preprocessing and threshold, after checking that they fit together
    (and saying when the threshold was chosen in other arithmetic than this run scores in)."""
    from strokeray.imaging.views import PreprocessConfig
    from strokeray.learn.bundle import read_bundle_doc

    docs: dict[Task, dict] = {CLASSIFY: read_bundle_doc(classifier)}
    if segmenter:
        docs[SEGMENT] = read_bundle_doc(segmenter)
    for task, doc in docs.items():
        if doc["task"] != task.name:
            raise ValueError(
                f"{classifier if task is CLASSIFY else segmenter} is a {doc['task']} bundle, not a {task.title.lower()}"
            )
    if docs[CLASSIFY].get("context_slices", 0):
        raise ValueError(
            f"{classifier} is a 2.5-D classifier (context_slices={docs[CLASSIFY]['context_slices']}): archive "
            "scoring feeds single slices; evaluate it on shards with `strokeray evaluate` instead"
        )
    pre = PreprocessConfig.from_dict(docs[CLASSIFY]["preprocess"])
    if SEGMENT in docs and PreprocessConfig.from_dict(docs[SEGMENT]["preprocess"]) != pre:
        raise ValueError("the classifier and the segmenter were trained on differently preprocessed views")
    threshold = cfg.threshold if cfg.threshold is not None else float(docs[CLASSIFY].get("threshold", 0.5))
    chosen_in, runs_in = (
        docs[CLASSIFY].get("precision", precision_name("cpu")),
        precision_name("cuda" if cfg.use_gpu else "cpu"),
    )
    if cfg.threshold is None and chosen_in != runs_in:
        log(
            f"[score] the classifier's operating point was chosen on {chosen_in} validation scores and this run "
            f"scores in {runs_in}: slices within rounding of the threshold can change sides"
        )
    return replace(cfg, threshold=threshold, records=replace(cfg.records, preprocess=pre))


def finished_summary(stage, same: bool, listing, log) -> ScoreSummary | None:
    """The summary of a finished run over the same listing, models and settings, else None (and a
    summary over another listing is removed: the run is incomplete until rewritten)."""
    done = stage.finished() if same else None
    if done is None or done.get("listing") != listing:
        if done is not None:
            stage.fs.rm(stage.path(SUMMARY))
        return None
    log(f"[score] {stage.url} is complete ({done['slices']} slices); nothing to do")
    known = {f.name for f in fields(ScoreSummary)}
    return ScoreSummary(**{k: v for k, v in done.items() if k in known and k != "reused"}, reused=True)


def scorer_pool(cfg: ScoreConfig, capacity: dict, now: dict) -> tuple[int, int, int]:
    """(fewest, most scoring actors, torch threads each) on a cluster of ``capacity`` (what is up
    or can be added: ``runtime.capacity``) with ``now`` up.

    GPU: from one actor up to one per GPU the cluster can hold, so a GPU group scaling from zero
    gets an actor per node as its nodes come (sized from what is up, it got one for good); the
    model runs on the GPU, so the actor's own CPUs are its threads. CPU: a fixed pool sharing the
    CPUs that are up (more threads than the actor reserves, on purpose: the model is the bottleneck
    and decoding needs a fraction of a core).
    """
    from strokeray.stages.runtime import need_gpus

    if cfg.use_gpu:
        threads = cfg.threads_per_actor or max(1, int(cfg.cpus_per_actor))
        if cfg.actors:  # asked for: a fixed pool
            return cfg.actors, cfg.actors, threads
        return 1, need_gpus(capacity, 1, "scoring actor"), threads
    actors = cfg.actors or 1
    return actors, actors, cfg.threads_per_actor or max(1, int(now.get("CPU", 1) // actors))


def start_scorers(classifier: str, segmenter: str | None, cfg: ScoreConfig, out: str, files: int):
    """The run's ``ScorerPool``: with ``use_gpu`` one actor per ``files_per_chunk`` files to score,
    between ``scorer_pool``'s fewest and most (a small archive does not start every GPU node the
    cluster could hold); on CPUs the fixed pool, each actor with its share of the CPUs as threads."""
    import ray

    from strokeray.stages.cascade import ScorerPool
    from strokeray.stages.runtime import cluster_capacity

    fewest, most, threads = scorer_pool(cfg, cluster_capacity(), ray.cluster_resources())
    actors = min(most, max(fewest, -(-files // cfg.files_per_chunk)))
    out = out.rstrip("/")
    kwargs = {
        "classifier": classifier,
        "segmenter": segmenter,
        "threshold": cfg.threshold,
        "overlays": f"{out}/overlays" if cfg.overlays else None,
        "source_masks": f"{out}/source_masks" if cfg.source_masks else None,
        "use_gpu": cfg.use_gpu,
        "threads": threads,
    }
    return ScorerPool.start(actors, kwargs, cfg.cpus_per_actor, cfg.use_gpu, cfg.batch_size)


def collect_slices(fs, base: str, out: str) -> pa.Table:
    """Every chunk's scored slices in source order, with ``duplicate_of`` and ``submission_id``."""
    tables = []
    for path in sorted(fs.glob(f"{base}/_parts/slices/*.parquet")):
        with fs.open(path, "rb") as fh:
            tables.append(pq.read_table(fh))
    slices = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    if not slices.num_rows:
        return slices
    slices = slices.sort_by([("source", "ascending"), ("frame", "ascending")])
    sources, frames = slices.column("source").to_pylist(), slices.column("frame").to_pylist()
    if len(set(zip(sources, frames))) != slices.num_rows:  # each chunk's parts are promoted once
        raise RuntimeError(f"{out}: a slice was scored twice in the parts; re-run with --overwrite")
    slices = slices.append_column(
        "duplicate_of", pa.array(duplicate_of(slices.column("id").to_pylist(), sources), pa.string())
    )
    return slices.append_column("submission_id", pa.array(submission_ids(sources, frames), pa.string()))


def submission_csv(slices: pa.Table) -> str:
    """The competition's CSV: ID, label (0/1), sorted by ID; no cell can start a formula."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["ID", "label"])
    if slices.num_rows:
        for sid, d in sorted(zip(slices.column("submission_id").to_pylist(), slices.column("decision").to_pylist())):
            writer.writerow([safe_cell(sid), int(d)])
    return buf.getvalue()


def write_results(fs, base: str, slices: pa.Table, studies: pa.Table) -> None:
    for name, table in (("slices", slices), ("studies", studies)):
        with fs.open(f"{base}/{name}.parquet", "wb") as fh:
            pq.write_table(table, fh)
    with fs.open(f"{base}/submission.csv", "w") as fh:
        fh.write(submission_csv(slices))


def _positives(table: pa.Table) -> int:
    return int(pc.sum(table.column("decision")).as_py() or 0) if table.num_rows else 0


def run_score(
    src: str,
    out: str,
    classifier: str | None = None,
    segmenter: str | None = None,
    registry: str | None = "runs/registry",
    cfg: ScoreConfig = ScoreConfig(),
    segment: bool = True,
    log=print,
) -> ScoreSummary:
    """Score ``src`` into ``out``; see the module docstring."""
    from strokeray.learn.predict import bundle_version
    from strokeray.stages.manifest import ManifestConfig, build_manifest, check_source, options_digest
    from strokeray.stages.runtime import absolute

    started = time.perf_counter()
    check_source(src)
    if cfg.dicom_out and overlap(cfg.dicom_out, out):
        raise ValueError(
            f"--dicom-out {cfg.dicom_out} {overlap(cfg.dicom_out, out)} OUT {out}: the DICOM results hold real UIDs "
            "and OUT stays pseudonymous; write them to a folder outside it"
        )
    classifier, segmenter = resolve_models(classifier, segmenter, registry, segment)
    # The actors load the bundles wherever Ray places them: no relative paths.
    classifier, segmenter = absolute(classifier), absolute(segmenter) if segmenter else None
    cfg = check_bundles(classifier, segmenter, cfg, log)
    versions = {"classifier": bundle_version(classifier), "segmenter": bundle_version(segmenter) if segmenter else ""}
    labels = ManifestConfig(read_headers=False)  # scoring has no split: decoding reads the patient keys
    stage = StageDir(out, "score", SCORE_OUTPUTS, done=SUMMARY)
    same = stage.claim(
        [src, classifier, *([segmenter] if segmenter else [])],
        _digest(options_digest(src, labels, None), versions, cfg),
        cfg.overwrite,
    )
    pool = early_scorers(stage, same, (classifier, segmenter), cfg, out)
    try:
        manifest = build_manifest(src, out, labels, log, cfg.files_per_chunk, cfg.num_cpus)
        done = finished_summary(stage, same, manifest.listing, log)
        if not done:
            handed, pool = pool, None  # score_chunks stops it
            done = _score(manifest, out, (classifier, segmenter), versions, cfg, started, stage, log, handed)
    finally:
        if pool is not None:  # not handed over: the manifest failed, or the run had finished
            pool.stop()
    if cfg.dicom_out or cfg.dicom_store:
        from strokeray.io.dicom_results import Provenance
        from strokeray.stages.dicom_results import DicomResultsConfig, run_dicom_results

        prov = Provenance(versions["classifier"], versions["segmenter"], float(cfg.threshold or 0.0))
        done.dicom = asdict(run_dicom_results(out, DicomResultsConfig(cfg.dicom_out, cfg.dicom_store), prov, log))
    return done


def early_scorers(stage: StageDir, same: bool, models: tuple, cfg: ScoreConfig, out: str):
    """A CPU run with work ahead starts its scorers before the manifest is built, so that loading
    torch and both bundles (about 6 s of a core here) overlaps the listing and the first chunk's
    plan instead of holding up its first decoded batch; else None. A GPU pool is sized from the
    manifest's file count, and a finished run (same settings, summary written) may need nothing."""
    from strokeray.stages.runtime import ensure_ray

    if cfg.use_gpu or (same and stage.finished() is not None):
        return None
    ensure_ray(cfg.num_cpus)
    classifier, segmenter = models
    return start_scorers(classifier, segmenter, cfg, out, 0)  # on CPUs the pool is not sized by files


def _score(manifest, out: str, models: tuple, versions: dict, cfg: ScoreConfig, started: float, stage, log, pool=None):
    from strokeray.stages.ingest import IngestConfig
    from strokeray.stages.runtime import ensure_ray

    classifier, segmenter = models
    ensure_ray(cfg.num_cpus)
    ingest_cfg = IngestConfig(
        records=cfg.records, files_per_chunk=cfg.files_per_chunk, files_per_task=cfg.files_per_task
    )
    summary = ScoreSummary(
        out=out,
        objects=manifest.rows,
        models={
            "classifier": classifier,
            "segmenter": segmenter or "",
            **{f"{k}_version": v for k, v in versions.items()},
        },
    )
    score_chunks(manifest, out, ingest_cfg, (classifier, segmenter), cfg, summary, log, pool)
    return finish_score(stage, manifest, summary, cfg, started, log)


def score_chunks(
    manifest, out: str, ingest_cfg, models: tuple, cfg: ScoreConfig, summary: ScoreSummary, log=print, pool=None
):
    """Decode and score every unfinished chunk; the scoring actors (``pool``, started early, which
    this stops) start with the first chunk that runs if not given (none when every chunk is done)
    and serve every chunk after it."""
    from strokeray.stages.ingest import run_chunk, run_chunks

    pools: list = [pool] if pool is not None else []

    def scored(ds):
        if not pools:
            pools.append(start_scorers(*models, cfg, out, manifest.rows))
        return pools[0].extend(ds)

    try:
        summary.chunks_done, summary.chunks_skipped = run_chunks(
            manifest,
            out,
            lambda index, table, run: run_chunk(
                index, table, out, run, ingest_cfg, dest="_parts/slices", extend=scored
            ),
            "score",
            "_parts/slices",
            log,
        )
    except Exception:
        for pool in pools:  # the actors' own error, when that is why the chunk failed
            pool.raise_if_unloaded()
        raise
    finally:
        for pool in pools:
            summary.batch_size = pool.batch_size
            pool.stop()


def finish_score(stage: StageDir, manifest, summary: ScoreSummary, cfg: ScoreConfig, started: float, log=print):
    """Merge the chunks' slices and quarantine, write the results and the summary (last)."""
    from strokeray.stages.ingest import merge_quarantine

    fs, base, out = stage.fs, stage.base, summary.out
    quarantine = merge_quarantine(fs, base, manifest)
    slices = collect_slices(fs, base, out)
    assert cfg.threshold is not None  # check_bundles filled it in
    studies = studies_table(slices, cfg.threshold)
    write_results(fs, base, slices, studies)
    summary.slices, summary.positive_slices = slices.num_rows, _positives(slices)
    summary.studies, summary.positive_studies = studies.num_rows, _positives(studies)
    summary.quarantined = quarantine.num_rows
    summary.reasons = dict(Counter(quarantine.column("reason").to_pylist()))
    summary.seconds = round(time.perf_counter() - started, 2)
    stage.finish(
        {
            **asdict(summary),
            "threshold": cfg.threshold,
            "precision": precision_name("cuda" if cfg.use_gpu else "cpu"),
            "listing": manifest.listing,
        }
    )
    log(
        f"[score] {summary.slices} slices ({summary.positive_slices} positive) in {summary.studies} studies "
        f"({summary.positive_studies} positive), {summary.quarantined} quarantined {summary.reasons}, "
        f"{summary.chunks_skipped} chunks already done -> {out} in {summary.seconds:.1f}s"
    )
    return summary
