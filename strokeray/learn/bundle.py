"""Model bundles: a directory with ``model.safetensors`` and ``model.json``. Loading never
unpickles anything: weights are safetensors, everything else is JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file, save_file

from strokeray import __version__
from strokeray.learn.models import ModelConfig, build_model

BUNDLE_VERSION = 1


def save_bundle(path: str | Path, model: nn.Module, cfg: ModelConfig, meta: dict) -> Path:
    """Write ``model`` as a bundle; ``meta`` adds input size, windows, class names, metrics, card..."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    doc = {"bundle_version": BUNDLE_VERSION, "strokeray_version": __version__, "model": asdict(cfg), **meta}
    (out / "model.json").write_text(json.dumps(doc, indent=2, default=str))
    return out


def load_bundle(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, its JSON description)."""
    src = Path(path)
    doc = json.loads((src / "model.json").read_text())
    if doc.get("bundle_version") != BUNDLE_VERSION:
        raise ValueError(f"{src}: bundle version {doc.get('bundle_version')} is not {BUNDLE_VERSION}")
    cfg = ModelConfig(**{**doc["model"], "weights": None})
    model = build_model(cfg)
    model.load_state_dict(load_file(str(src / "model.safetensors")))
    return model.eval(), doc
