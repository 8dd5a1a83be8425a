"""The whole pipeline on the embedded default: a demo archive of phantoms, then its preview.

Each step skips work already done (the demo archive is kept when its synth.json matches), so a
re-run is cheap. Later stages (ingest, train, tune, score, report) join here as they land.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import fsspec

from strokeray.datasets.synth import SynthConfig, write_archive
from strokeray.stages.preview import PreviewConfig, PreviewSummary, run_preview


@dataclass(frozen=True)
class PipelineConfig:
    """Where the run lives and what the demo data is."""

    out: str = "runs/demo"
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(patients=12, bad_files=True))
    preview: PreviewConfig = field(default_factory=PreviewConfig)


@dataclass
class PipelineResult:
    archive: str
    archive_reused: bool
    preview: PreviewSummary


def _archive_matches(fs, path: str, cfg: SynthConfig) -> bool:
    if not fs.exists(f"{path}/synth.json"):
        return False
    with fs.open(f"{path}/synth.json", "r") as fh:
        meta = json.load(fh)
    return meta.get("config") == json.loads(json.dumps(asdict(cfg)))


def run_pipeline(cfg: PipelineConfig = PipelineConfig(), log=print) -> PipelineResult:
    """Generate (or reuse) the demo archive under ``out/archive`` and preview it into ``out/preview``."""
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
    summary = run_preview(archive, f"{cfg.out.rstrip('/')}/preview", cfg.preview)
    log(
        f"[preview] {summary.slices} slices from {summary.files} files, {summary.quarantined} quarantined"
        f" {summary.reasons}, brain found in {summary.brain_found}, {summary.seconds:.1f}s"
        f" -> {cfg.out.rstrip('/')}/preview"
    )
    return PipelineResult(archive=archive, archive_reused=reused, preview=summary)
