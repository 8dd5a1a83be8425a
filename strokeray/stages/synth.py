"""Write synthetic data into a folder that is strokeray's to write (see StageDir): a phantom
archive, or lesions synthesised on the lesion-free slices of a real one."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

from strokeray import __version__
from strokeray.datasets.lesion_synth import PROVENANCE, LesionSynthConfig, LesionSynthSummary, write_lesion_archive
from strokeray.datasets.synth import CLASS_FOLDERS, SPLIT_FOLDERS, SYNTH_JSON, SynthConfig, SynthSummary, write_archive
from strokeray.io.sources import read_bytes
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


LESION_JSON = "lesion_synth.json"
LESION_OUTPUTS = (*CLASS_FOLDERS.values(), PROVENANCE, LESION_JSON)


def run_lesion_synth(
    src: str, out: str, cfg: LesionSynthConfig = LesionSynthConfig(), overwrite: bool = False
) -> LesionSynthSummary | None:
    """Lesions synthesised on the lesion-free slices of ``src``, into ``out``; None when ``out``
    already holds the same (finished) one. Same folder rules as ``run_synth``; ``out`` must not
    overlap ``src``."""
    stage = StageDir(out, "lesion-synth", LESION_OUTPUTS, done=LESION_JSON)
    labels = hashlib.sha256(read_bytes(cfg.labels)).hexdigest() if cfg.labels else ""
    inputs = (src, cfg.labels) if cfg.labels else (src,)
    settings = {k: v for k, v in asdict(cfg).items() if k != "workers"}  # the bytes do not depend on it
    same = stage.claim(inputs, settings_digest({"src": src, "labels": labels, "cfg": settings}), overwrite)
    if same and stage.finished() is not None:
        return None
    stage.clear()
    summary = write_lesion_archive(src, out, cfg)
    stage.finish({"strokeray_version": __version__, "source": src, "config": asdict(cfg), **asdict(summary)})
    return summary
