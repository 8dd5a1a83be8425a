"""The whole pipeline on the embedded default: a demo archive of phantoms, its Parquet shards,
and a preview of what the models will see.

Each step skips work already done (the archive is kept when its synth.json matches, ingest skips
finished chunks), so a re-run is cheap. Train, tune, score and report join here as they land.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import fsspec

from strokeray.datasets.synth import SynthConfig, write_archive
from strokeray.stages.ingest import IngestConfig, IngestSummary, run_ingest
from strokeray.stages.preview import PreviewConfig, PreviewSummary, run_preview


@dataclass(frozen=True)
class PipelineConfig:
    """Where the run lives and what the demo data is."""

    out: str = "runs/demo"
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(patients=12, bad_files=True))
    ingest: IngestConfig = field(default_factory=IngestConfig)
    preview: PreviewConfig = field(default_factory=lambda: PreviewConfig(limit=40))


@dataclass
class PipelineResult:
    archive: str
    archive_reused: bool
    ingest: IngestSummary
    preview: PreviewSummary


def _archive_matches(fs, path: str, cfg: SynthConfig) -> bool:
    if not fs.exists(f"{path}/synth.json"):
        return False
    with fs.open(f"{path}/synth.json", "r") as fh:
        meta = json.load(fh)
    return meta.get("config") == json.loads(json.dumps(asdict(cfg)))


def run_pipeline(cfg: PipelineConfig = PipelineConfig(), log=print) -> PipelineResult:
    """Demo archive (``out/archive``) -> shards (``out/shards``) -> preview (``out/preview``)."""
    fs, base = fsspec.core.url_to_fs(cfg.out)
    archive = f"{cfg.out.rstrip('/')}/archive"
    reused = _archive_matches(fs, f"{base.rstrip('/')}/archive", cfg.synth)
    if reused:
        log(f"[synth] reusing {archive}")
    else:
        if fs.exists(f"{base.rstrip('/')}/archive"):
            fs.rm(f"{base.rstrip('/')}/archive", recursive=True)
        s = write_archive(archive, cfg.synth)
        log(f"[synth] {s.slices} slices of {s.patients} patients -> {archive} ({len(s.planted)} planted bad files)")
    ingested = run_ingest(archive, f"{cfg.out.rstrip('/')}/shards", cfg.ingest, log)
    summary = run_preview(archive, f"{cfg.out.rstrip('/')}/preview", cfg.preview)
    log(
        f"[preview] {summary.slices} slices from {summary.files} files, {summary.quarantined} quarantined"
        f" {summary.reasons}, brain found in {summary.brain_found}, {summary.seconds:.1f}s"
        f" -> {cfg.out.rstrip('/')}/preview"
    )
    return PipelineResult(archive=archive, archive_reused=reused, ingest=ingested, preview=summary)
