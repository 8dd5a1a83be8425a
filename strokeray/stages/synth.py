"""Write a phantom archive into a folder that is strokeray's to write (see StageDir)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from strokeray.datasets.synth import SPLIT_FOLDERS, SynthConfig, SynthSummary, write_archive
from strokeray.stages.stage_dir import StageDir

SYNTH_OUTPUTS = (*SPLIT_FOLDERS, "synth.json")


def run_synth(out: str, cfg: SynthConfig = SynthConfig(), overwrite: bool = False) -> SynthSummary | None:
    """Generate the archive into ``out``; None when ``out`` already holds the same one (complete).
    Another archive there is replaced only with ``overwrite``; a folder strokeray did not make never."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]
    stage = StageDir(out, "synth", SYNTH_OUTPUTS)
    same = stage.claim(digest=digest, overwrite=overwrite)
    if same and stage.fs.exists(stage.path("synth.json")):  # written last: the archive is whole
        return None
    stage.clear()  # an interrupted generation: start clean
    return write_archive(out, cfg)
