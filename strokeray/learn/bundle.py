"""Model bundles: a folder (local or any fsspec URL, e.g. s3://) with ``model.safetensors`` and
``model.json``. Loading never unpickles anything: weights are safetensors, everything else is JSON."""

from __future__ import annotations

import json
from dataclasses import asdict

import fsspec
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from strokeray import __version__
from strokeray.learn.models import ModelConfig, build_model

BUNDLE_VERSION = 1


def save_bundle(path: str, model: nn.Module, cfg: ModelConfig, meta: dict) -> str:
    """Write ``model`` as a bundle; ``meta`` adds input size, windows, class names, metrics, card..."""
    fs, base = fsspec.core.url_to_fs(str(path))
    fs.makedirs(base, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with fs.open(f"{base}/model.safetensors", "wb") as fh:
        fh.write(save_safetensors(state))
    doc = {"bundle_version": BUNDLE_VERSION, "strokeray_version": __version__, "model": asdict(cfg), **meta}
    with fs.open(f"{base}/model.json", "w") as fh:  # written last: its presence marks a whole bundle
        fh.write(json.dumps(doc, indent=2, default=str))
    return str(path)


def read_bundle_doc(path: str) -> dict:
    """A bundle's JSON description alone (no weights)."""
    with fsspec.open(f"{str(path).rstrip('/')}/model.json", "r") as fh:
        doc = json.load(fh)
    if doc.get("bundle_version") != BUNDLE_VERSION:
        raise ValueError(f"{path}: bundle version {doc.get('bundle_version')} is not {BUNDLE_VERSION}")
    return doc


def load_bundle(path: str) -> tuple[nn.Module, dict]:
    """(model in eval mode, its JSON description)."""
    doc = read_bundle_doc(path)
    cfg = ModelConfig(**{**doc["model"], "weights": None})
    model = build_model(cfg)
    with fsspec.open(f"{str(path).rstrip('/')}/model.safetensors", "rb") as fh:
        model.load_state_dict(load_safetensors(fh.read()))
    return model.eval(), doc
