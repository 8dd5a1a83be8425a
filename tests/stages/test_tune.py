"""Ray Tune search on phantom shards: ASHA, the registry export, re-runs and an interrupted search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from strokeray.io.shard_schema import tensor_array
from strokeray.learn.bundle import load_bundle
from strokeray.stages import registry
from strokeray.stages.tune import SearchConfig, SearchSpace, concurrency, param_space, run_search

from ..conftest import phantom_shards

# Each trial takes about a minute to start on 2 CPUs (driver, Train controller, worker, Ray Data), so
# the two searches below run about 10 minutes each here.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(1500)]

# Cheap trials (64 px, ~70 training slices). The validation loss is the metric: continuous, so
# ASHA's comparisons never tie, which makes "some trial is stopped early" reliable with 8 trials.
SPACE = SearchSpace(
    backbones=("resnet18", "resnet34"), lr=(1e-4, 3e-3), batch_size=(8,), augment=(0.0,), input_size=(64,)
)


@pytest.fixture(scope="module")
def shards(ray_local, tmp_path_factory) -> str:
    return phantom_shards(tmp_path_factory.mktemp("tune"), seed=7)


def test_concurrency_fits_the_cluster():
    cpu = SearchConfig(samples=2)
    trials, per_worker = concurrency(cpu, {"CPU": 2.0})
    assert trials == 2 and 2 * (per_worker + 0.01) <= 1.0 + 1e-9  # a whole CPU left for Ray Data
    assert concurrency(cpu, {"CPU": 16.0}) == (4, 1.0)  # no more than there are trials
    assert concurrency(SearchConfig(samples=8, workers_per_trial=2), {"CPU": 16.0}) == (7, 1.0)
    gpu = SearchConfig(samples=4, workers_per_trial=2, use_gpu=True)
    assert concurrency(gpu, {"CPU": 32.0, "GPU": 8.0})[0] == 4
    with pytest.raises(RuntimeError, match="GPU"):
        concurrency(gpu, {"CPU": 32.0, "GPU": 1.0})


def test_a_checkpoint_cut_off_mid_copy_is_never_exported(tmp_path):
    """A node lost while its checkpoint was copied to storage left a full state.json beside a
    truncated model (seen in the node-failure test): such a folder is not a checkpoint."""
    from strokeray.stages.train import LoopState, write_checkpoint
    from strokeray.stages.tune import trial_checkpoints

    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    run = tmp_path / "train" / "trial-t1"
    for epoch, name in ((1, "checkpoint_a"), (2, "checkpoint_b"), (3, "checkpoint_c")):
        (run / name).mkdir(parents=True)
        state = LoopState(epoch, 0.5, [{"epoch": epoch, "val_score": 0.5}])
        write_checkpoint(str(run / name), model, optimizer, scaler, state, epoch)
    weights = run / "checkpoint_b" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # the copy cut off
    state_c = run / "checkpoint_c" / "state.json"
    state_c.write_text(state_c.read_text()[:40])
    (run / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray Train's own file, matched by the glob
    (run / "checkpoint_d").mkdir()  # a kill before state.json was written
    (run / "checkpoint_d" / "model.safetensors").write_bytes(weights.read_bytes())
    assert [c["epoch"] for c in trial_checkpoints(str(tmp_path / "train"), "t1")] == [1]


def test_search_space_from_json_rejects_unknown_keys():
    s = SearchSpace.from_json('{"backbones": ["resnet18"], "lr": [0.001, 0.01], "seg_loss": [[1, 1, 0]]}')
    assert s.backbones == ("resnet18",) and s.lr == (0.001, 0.01) and s.seg_loss == ((1, 1, 0),)
    with pytest.raises(ValueError, match="unknown"):
        SearchSpace.from_json('{"learning_rate": [1, 2]}')
    with pytest.raises(ValueError, match="lr must be a range"):
        SearchSpace.from_json('{"lr": [0.001]}')
    with pytest.raises(ValueError, match="lr must be a range"):
        SearchSpace(lr=(1e-2, 1e-3))
    assert param_space(SearchConfig(space=SearchSpace(lr=(1e-3, 1e-3))))["lr"] == 1e-3  # a fixed rate, not sampled


def test_search_stops_early_exports_the_best_trial_and_reuses_a_finished_search(shards, tmp_path):
    reg = str(tmp_path / "registry")
    cfg = SearchConfig(
        task="classify",
        space=SPACE,
        samples=4,
        max_epochs=3,
        grace_period=1,
        reduction_factor=2,
        metric="val_loss",
        seed=3,
    )
    r = run_search(shards, str(tmp_path / "tune"), cfg, registry=reg, log=lambda *_: None)
    rows = r.rows
    assert len(rows) == 8 and {row["param_backbone"] for row in rows} == {"resnet18", "resnet34"}
    assert all(row["status"] in ("complete", "stopped_early") for row in rows), rows
    assert any(row["status"] == "stopped_early" for row in rows), [row["epochs_run"] for row in rows]
    assert any(row["status"] == "complete" and row["epochs_run"] == 3 for row in rows)
    # The published bundle is the trial with the best validation score in the table...
    best = max(rows, key=lambda row: row["best_score"])
    assert r.best["trial_id"] == best["trial_id"]
    assert best["best_score"] == pytest.approx(-best["best_val_loss"])  # a loss is minimised
    assert registry.versions(reg, "classify") == ["v0001"] and r.current
    assert registry.best_bundle(reg, "classify") == r.bundle
    model, doc = load_bundle(r.bundle)
    assert doc["model"]["backbone"] == best["param_backbone"] and doc["score_metric"] == "val_loss"
    assert doc["metrics"]["val_loss"] == pytest.approx(best["best_val_loss"])
    # ...holding exactly the weights of that trial's best checkpoint...
    ref = load_file(str(Path(best["checkpoint"]) / "model.safetensors"))
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    with fsspec.open(f"{r.bundle}/search.json", "r") as fh:
        assert len(json.load(fh)["rows"]) == 8
    assert (Path(r.bundle) / "results.csv").read_text().count("\n") == 9
    # ...and it predicts on the shards.
    table = pq.read_table(next(iter(sorted(Path(shards, "shards").glob("*.parquet")))), columns=["cls_image"])
    x = torch.from_numpy(tensor_array(table["cls_image"], (3, 224, 224))[:4]).float() / 255
    with torch.no_grad():
        prob = model(torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear")).softmax(1)
    assert prob.shape == (4, 2) and torch.allclose(prob.sum(1), torch.ones(4))
    # Running the finished search again runs and publishes nothing.
    again = run_search(shards, str(tmp_path / "tune"), cfg, registry=reg, log=lambda *_: None)
    assert again.reused and again.version == "v0001" and registry.versions(reg, "classify") == ["v0001"]
    # Other settings under the same name are refused, not silently started over.
    with pytest.raises(ValueError, match="other inputs or settings"):
        run_search(
            shards,
            str(tmp_path / "tune"),
            SearchConfig(task="classify", space=SPACE, samples=1),
            registry=reg,
            log=lambda *_: None,
        )


def _trial_states(search: Path) -> dict[str, str]:
    """trial id -> status, from the newest experiment state Tune saved (what a restore reads)."""
    files = sorted(search.glob("experiment_state-*.json"))  # named by the session start time
    if not files:
        return {}
    try:
        doc = json.loads(files[-1].read_text())
    except (json.JSONDecodeError, OSError):  # caught mid-write
        return {}
    states = {}
    for trial_json, _ in doc["trial_data"]:
        t = json.loads(trial_json)
        states[t["trial_id"]] = t["status"]
    return states


def test_interrupted_search_resumes_without_rerunning_finished_trials(shards, tmp_path):
    out, reg = tmp_path / "tune", tmp_path / "registry"
    # --data relative to the working directory: trials run in their own directories, so it must be resolved.
    cmd = [
        sys.executable,
        "-m",
        "strokeray.cli",
        "tune",
        "classify",
        "--data",
        Path(shards).name,
        "--out",
        str(out),
        "--registry",
        str(reg),
        "--name",
        "s",
        "--backbones",
        "resnet18,resnet34",
        "--samples",
        "2",
        "--max-epochs",
        "3",
        "--grace-period",
        "3",
        "--seed",
        "1",
    ]
    cmd += ["--space", json.dumps({"batch_size": [8], "augment": [0.0], "input_size": [64]})]  # inline JSON
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    cwd = Path(shards).parent
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if "TERMINATED" in _trial_states(out / "s").values():
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    finished = {t for t, s in _trial_states(out / "s").items() if s == "TERMINATED"}
    assert finished, "no trial finished in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "s" / "published.json").exists()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["resumed"] is True and summary["version"] == "v0001"
    states = _trial_states(out / "s")
    assert len(states) == 4 and set(states.values()) == {"TERMINATED"}
    # Every trial ran to its 3 epochs; those finished before the kill were never started again.
    with open(out / "s" / "published.json") as fh:
        rows = json.load(fh)["rows"]
    assert sorted(r["epochs_run"] for r in rows) == [3, 3, 3, 3]
    attempts = {}
    for log in (out / "s").glob("*/attempts.log"):
        attempts[log.parent.name] = len(log.read_text().splitlines())
    finished_dirs = [d for d in attempts if any(t in d for t in finished)]
    assert len(finished_dirs) == len(finished)
    assert all(attempts[d] == 1 for d in finished_dirs), attempts
    assert np.isfinite([r["best_score"] for r in rows]).all()


# What param_space samples for every trial (a trial's params before heads and schedules were searched).
SAMPLED = {"backbone": "resnet18", "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 8, "augment": 0.5, "input_size": 64}


def test_classifier_dropout_and_head_are_searched_and_reach_the_model():
    from ray import tune

    from strokeray.stages.tune import param_space, trial_train_config

    cfg = SearchConfig(task="classify", space=SearchSpace(dropout=(0.0, 0.3), head=("study", "linear")))
    space = param_space(cfg)
    assert isinstance(space["dropout"], tune.search.sample.Categorical) and space["dropout"].categories == [0.0, 0.3]
    assert space["head"].categories == ["study", "linear"]
    params = {**SAMPLED, "dropout": 0.3}
    assert trial_train_config(cfg, params, 0.5).model.dropout == 0.3
    assert trial_train_config(cfg, params, 0.5).model.head == "study"  # a trial from before heads were searched
    assert trial_train_config(cfg, {**params, "head": "linear"}, 0.5).model.head == "linear"
    assert "dropout" not in param_space(SearchConfig(task="segment"))
    assert "head" not in param_space(SearchConfig(task="segment"))
    assert SearchSpace.from_json('{"dropout": [0.1]}').dropout == (0.1,)
    assert SearchSpace.from_json('{"head": ["linear"]}').head == ("linear",)


def test_the_lr_schedule_is_searched_and_reaches_the_trial():
    from strokeray.stages.tune import param_space, trial_train_config

    cfg = SearchConfig(task="classify", space=SearchSpace(schedule=("constant", "cosine")))
    assert param_space(cfg)["schedule"].categories == ["constant", "cosine"]
    params = dict(SAMPLED)
    assert trial_train_config(cfg, params, 0.5).schedule == "constant"  # a trial from before schedules were searched
    assert trial_train_config(cfg, {**params, "schedule": "cosine"}, 0.5).schedule == "cosine"
    assert SearchSpace.from_json('{"schedule": ["cosine"]}').schedule == ("cosine",)
    with pytest.raises(ValueError, match="schedule must name"):
        SearchSpace(schedule=("onecycle",))


def test_a_deterministic_search_compares_trials_by_their_settings_only(shards, tmp_path):
    """--deterministic: two trials of the same sampled settings, trained side by side, report the
    same history and keep the same weights, bit for bit; a search made without the flag keeps the
    settings digest it had before the flag existed. (On these few phantom rows the default path
    happened to repeat too, so the flag reaching each trial's TrainConfig is checked directly.)"""
    from strokeray.datasets.shard_set import ShardSet
    from strokeray.stages.tune import search_settings, trial_train_config

    space = SearchSpace(
        backbones=("resnet18",),
        lr=(1e-3, 1e-3),
        weight_decay=(1e-4,),
        batch_size=(8,),
        augment=(0.5,),
        input_size=(64,),
    )
    cfg = SearchConfig(task="classify", space=space, samples=2, max_epochs=2, grace_period=2, deterministic=True)
    assert trial_train_config(cfg, SAMPLED, 0.5).deterministic
    assert not trial_train_config(SearchConfig(task="classify"), SAMPLED, 0.5).deterministic
    r = run_search(shards, str(tmp_path / "tune"), cfg, registry=str(tmp_path / "registry"), log=lambda *_: None)
    assert len(r.rows) == 2 and all(row["epochs_run"] == 2 for row in r.rows), r.rows
    a, b = r.rows
    params = [{k: v for k, v in row.items() if k.startswith("param_")} for row in r.rows]
    assert params[0] == params[1] and a["trial_id"] != b["trial_id"]  # nothing sampled differs
    assert a["best_score"] == b["best_score"]
    weights = [load_file(str(Path(row["checkpoint"]) / "model.safetensors")) for row in r.rows]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    data = ShardSet.open(shards)
    assert "deterministic" not in search_settings(data, SearchConfig())["config"]
    assert search_settings(data, cfg)["config"]["deterministic"] is True
