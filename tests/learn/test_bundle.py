import pickle

import torch

from strokeray.learn.bundle import load_bundle, save_bundle
from strokeray.learn.models import ModelConfig, build_model


def test_bundle_round_trip_without_unpickling(tmp_path, monkeypatch):
    cfg = ModelConfig(task="segment", backbone="resnet18", num_classes=3)
    model = build_model(cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    out = save_bundle(str(tmp_path / "b"), model, cfg, {"task": "segment", "input_size": 64})
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["model.json", "model.safetensors"]

    def no_pickle(*a, **k):
        raise AssertionError("loading a bundle must not unpickle")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded, doc = load_bundle(out)
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    assert doc["task"] == "segment" and doc["model"]["backbone"] == "resnet18"


def test_bundle_round_trip_through_an_fsspec_url():
    cfg = ModelConfig(task="classify", backbone="resnet18", num_classes=2)
    model = build_model(cfg).eval()
    save_bundle("memory://bundles/b1", model, cfg, {"task": "classify", "input_size": 64})
    loaded, doc = load_bundle("memory://bundles/b1")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert doc["bundle_version"] == 1 and doc["model"]["num_classes"] == 2
