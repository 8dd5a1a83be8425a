"""Write a phantom archive into a folder that is strokeray's to write (see StageDir)."""

from __future__ import annotations

from dataclasses import asdict

from strokeray.datasets.synth import SPLIT_FOLDERS, SYNTH_JSON, SynthConfig, SynthSummary, write_archive
from strokeray.stages.stage_dir import StageDir, settings_digest

SYNTH_OUTPUTS = (*SPLIT_FOLDERS, SYNTH_JSON)


def run_synth(out: str, cfg: SynthConfig = SynthConfig(), overwrite: bool = False) -> SynthSummary | None:
    """Generate the archive into ``out``; None when ``out`` already holds the same one (complete).
    Another archive there is replaced only with ``overwrite``; a folder strokeray did not make never."""
    stage = StageDir(out, "synth", SYNTH_OUTPUTS, done=SYNTH_JSON)  # write_archive writes it last
    same = stage.claim(digest=settings_digest(asdict(cfg)), overwrite=overwrite)
    if same and stage.finished() is not None:
        return None
    stage.clear()  # an interrupted generation: start clean
    return write_archive(out, cfg)
