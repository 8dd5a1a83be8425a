"""Ray Train on phantom shards: 2 CPU workers (DDP over gloo), bundles, and a killed worker."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from strokeray.benchmarks.train import plain_loop, training_rows
from strokeray.datasets.shard_set import ShardSet
from strokeray.imaging.rle import decode_rle
from strokeray.io.shard_schema import tensor_array
from strokeray.learn.augment import AugmentConfig
from strokeray.learn.bundle import load_bundle
from strokeray.learn.models import ModelConfig, build_model
from strokeray.learn.tasks import get_task
from strokeray.stages.evaluate import evaluate_on_cluster, run_evaluate
from strokeray.stages.train import Feed, TrainConfig, concat_rows, datasets_for, in_id_order, run_train

from ..conftest import phantom_shards, ray_processes

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def shards(ray_local, tmp_path_factory) -> str:
    return phantom_shards(tmp_path_factory.mktemp("train"), seed=5)


def small(task: str, epochs: int) -> TrainConfig:
    # "Does the loop learn", made reliable: ~70 training slices split over 2 workers need small
    # batches for enough optimizer steps, and augmentation and dropout only add noise to the check.
    return TrainConfig(
        task=task,
        model=ModelConfig(backbone="resnet18", dropout=0.0),
        epochs=epochs,
        batch_size=4,
        input_size=64,
        lr=3e-4,
        num_workers=2,
        seed=1,
        augment=AugmentConfig(strength=0.0),
    )


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_ddp_training_learns_and_bundles(shards, tmp_path, task):
    r = run_train(shards, str(tmp_path / "runs"), small(task, 4), log=lambda *_: None)
    losses = [h["train_loss"] for h in r.history]
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 4]
    # It learns: some later epoch is well below the first (a last-epoch bounce on ~70 slices is noise).
    assert min(losses[1:]) < 0.85 * losses[0], losses
    key = "val_accuracy" if task == "classify" else "val_mean_lesion_iou"
    assert key in r.best_metrics and "val_loss" in r.best_metrics
    # The bundle holds exactly the best checkpoint's weights and reproduces its outputs.
    model, doc = load_bundle(r.bundle)
    ref = build_model(ModelConfig(**{**doc["model"], "weights": None})).eval()
    ref.load_state_dict(load_file(str(Path(r.best_checkpoint) / "model.safetensors")))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert doc["task"] == task and doc["input_size"] == 64 and len(doc["windows"]) == 3
    assert doc["precision"] == "fp32"  # validated on the CPU: the operating point's arithmetic
    assert doc["dataset_card"]["slices"] > 0 and doc["history"][-1]["epoch"] == 4
    # Evaluating the bundle on val, in one process, agrees with what the DDP workers reported.
    ev = run_evaluate(r.bundle, shards, "val", predictions=str(tmp_path / "pred.parquet"), log=lambda *_: None)
    # The same as a Ray task (what the pipeline and crossval run, off a head that holds no CPU).
    assert evaluate_on_cluster(r.bundle, shards, "val").metrics == ev.metrics
    pred = pq.read_table(tmp_path / "pred.parquet")
    assert pred.num_rows == ev.slices and len(set(pred["id"].to_pylist())) == ev.slices
    if task == "classify":
        # The bundle carries the operating point chosen on val; AUC does not depend on it.
        assert doc["threshold"] == pytest.approx(r.best_metrics["val_threshold"]) == ev.metrics["threshold"]
        assert ev.metrics["slice_auc"] == pytest.approx(r.best_metrics["val_auc"])
        assert ev.metrics["slice_n"] == r.best_metrics["val_n"]
        at = np.asarray(pred["probability"]) >= doc["threshold"]
        assert ev.metrics["slice_accuracy"] == pytest.approx((at == np.asarray(pred["label"])).mean())
        assert 0.0 <= r.history[-1]["train_accuracy"] <= 1.0
    else:
        assert 0.0 <= ev.metrics["competition_iou"] <= 1.0 and "iou_hemorrhagic" in ev.metrics
        assert "threshold" not in doc and "train_mean_lesion_iou" in r.history[-1]
        masks = [decode_rle(t) for t in pred["mask_rle"].to_pylist()]
        assert [int((m == 2).sum()) for m in masks] == pred["pred_hemorrhagic_pixels"].to_pylist()
        # The pooled IoU with its patient interval is the meter's IoU over the same slices.
        value, low, high = ev.intervals["iou_hemorrhagic"]
        assert value == pytest.approx(ev.metrics["iou_hemorrhagic"]) and low <= value <= high
        every = run_evaluate(r.bundle, shards, "all", log=lambda *_: None)  # external data: every split
        assert every.slices > ev.slices
    # The benchmark's plain loop iterates the same training rows the workers shared (Ray's equal
    # split may drop fewer rows than there are workers) and runs the same steps.
    rows = training_rows(shards, task)
    n = len(rows[next(iter(rows))])
    assert n - 2 < r.history[0]["train_images"] <= n
    assert r.history[0]["train_images_per_s"] > 0 and r.history[0]["torch_threads"] >= 1
    cfg = small(task, 2)
    cfg = replace(cfg, model=replace(cfg.model, task=task, num_classes=2 if task == "classify" else 3))
    assert plain_loop({k: v[:8] for k, v in rows.items()}, cfg, threads=1, epochs=2) > 0


def test_an_ordered_feed_deals_every_rank_its_rows_of_the_same_global_batches(ray_local):
    """Feed(ordered=True): each rank draws the same shuffled global batches and keeps every
    world-th row: as many steps on every rank (DDP), disjoint rows, the same on a second pass,
    shuffled across the whole split (not within a buffer: a split stored class by class)."""
    import ray

    ds = ray.data.range(101, override_num_blocks=7)
    ds.context.execution_options.preserve_order = True
    ranks = [Feed(rank, 2, ordered=True) for rank in range(2)]
    passes = [[[b["id"].tolist() for b in f.batches(ds, 5, shuffle_buffer=16, seed=3)] for f in ranks] for _ in (0, 1)]
    first, second = passes
    assert first == second
    assert len(first[0]) == len(first[1]) == 10 and all(len(b) == 5 for r in first for b in r)
    seen = sum((b for r in first for b in r), [])
    assert len(seen) == len(set(seen)) == 100  # the last global batch, one row, is too small for two ranks
    assert seen != sorted(seen) and first[0][0] != first[1][0]
    assert max(first[0][0]) - min(first[0][0]) > 30  # one step draws from across the split
    other_epoch = [b["id"].tolist() for b in ranks[0].batches(ds, 5, shuffle_buffer=16, seed=4)]
    assert other_epoch != first[0]
    # bags of differing sizes stay rows of an object column
    bags = concat_rows([np.zeros((1, 3, 2)), np.asarray([np.zeros((2, 2)), np.zeros((3, 2))], dtype=object)])
    assert bags.dtype == object and [b.shape for b in bags] == [(3, 2), (2, 2), (3, 2)]
    # unordered: the shard Ray streamed to this worker, as it comes
    assert sum(len(b["id"]) for b in Feed().batches(ds, 5)) == 101


def class_by_class(shards: str, root: Path, rows: int = 800) -> ShardSet:
    """``shards``' training rows, repeated to ``rows`` rows (each its own patient), stored
    negatives first in two files, as a folder-per-class export lands."""
    import pyarrow as pa

    src = ShardSet.open(shards)
    table = pa.concat_tables(pq.read_table(f) for f in src.files())
    table = table.filter(pa.compute.equal(table["split"], "train")).sort_by("label")
    table = pa.concat_tables([table] * (rows // table.num_rows + 1)).slice(0, rows).sort_by("label")
    table = table.set_column(
        table.column_names.index("patient"), "patient", pa.array([f"r{i:04d}" for i in range(rows)])
    )
    (root / "shards").mkdir(parents=True)
    files = []
    for k, part in enumerate((table.slice(0, rows // 2), table.slice(rows // 2))):
        files.append({"file": f"part-{k}.parquet"})
        pq.write_table(part, root / "shards" / files[-1]["file"])
    return ShardSet(str(root), {**src.card, "shards": files})


def test_a_cached_training_split_stored_class_by_class_reaches_every_ddp_rank_mixed(shards, tmp_path):
    """Cached as read, a split stored class by class reached Ray Train's ranks one class each;
    ``datasets_for`` caches it in small blocks made by the read and deals them in a new random
    order every epoch: each rank gets both classes, every row once an epoch."""
    stored = class_by_class(shards, tmp_path)
    labels = pq.read_table(stored.files()[0], columns=["label"])["label"].to_numpy()
    assert labels.max() == 0  # the first file holds negatives only: read as stored, a rank gets one class

    def deal(ds, epochs: int = 2) -> list[list[tuple]]:
        """Each epoch, each rank's rows as Ray Train's workers draw them (streaming split, buffer)."""
        ranks = ds.streaming_split(2, equal=True)

        def drain(r: int, got: dict) -> None:
            batches = ranks[r].iter_batches(batch_size=16, batch_format="numpy", local_shuffle_buffer_size=64)
            got[r] = [(b["patient"], b["label"]) for b in batches]

        out = []
        for _ in range(epochs):
            got: dict[int, list] = {}
            threads = [threading.Thread(target=drain, args=(r, got)) for r in (0, 1)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            out.append([got[r] for r in (0, 1)])
        return out

    train = datasets_for(stored, get_task("classify"), cache=True, seed=0)["train"]
    assert train.materialize().num_blocks() >= 40  # ~16 rows a block, made by the read
    share = lambda rank: np.concatenate([label for _, label in rank]).mean()  # noqa: E731
    epochs = deal(train)
    for ranks in epochs:
        patients = np.concatenate([p for rank in ranks for p, _ in rank])
        assert sorted(patients.tolist()) == [f"r{i:04d}" for i in range(800)]
        # ~50 blocks, each of one class but two, dealt at random: a rank's share is within 0.25 of
        # the split's (about a half) but for about one draw in a thousand
        assert all(0.25 < share(rank) < 0.75 for rank in ranks)
    assert [p.tolist() for p, _ in epochs[0][0]] != [p.tolist() for p, _ in epochs[1][0]]


def test_a_patients_rows_reach_the_grouped_function_in_id_order_whatever_order_they_came_in():
    group = {"id": np.asarray(["s2", "s0", "s1"], dtype=object), "x": np.asarray([2, 0, 1])}
    assert in_id_order(group, lambda g: g["x"].tolist()) == [0, 1, 2]
    assert in_id_order({k: v[::-1] for k, v in group.items()}, lambda g: g["id"].tolist()) == ["s0", "s1", "s2"]


def _deterministic_config() -> TrainConfig:
    # flips draw from the steps generator, dropout from torch's: both streams are in play
    cfg = replace(small("classify", 3), deterministic=True, augment=AugmentConfig.preset("flips"))
    return replace(cfg, model=replace(cfg.model, dropout=0.2))


@pytest.fixture(scope="module")
def deterministic_run(shards, tmp_path_factory):
    """One uninterrupted --deterministic run, the reference of the two tests below."""
    return run_train(
        shards, str(tmp_path_factory.mktemp("deterministic")), _deterministic_config(), log=lambda *_: None
    )


def _same_run(a, b) -> None:
    """``a`` and ``b`` trained alike: the same losses every epoch and the same best weights, bit for bit."""
    histories = [[(h["train_loss"], h["val_loss"], h["train_images"]) for h in r.history] for r in (a, b)]
    assert histories[0] == histories[1]
    weights = [load_file(str(Path(r.best_checkpoint) / "model.safetensors")) for r in (a, b)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_deterministic_run_repeats_itself_weight_for_weight(shards, deterministic_run, tmp_path):
    """--deterministic with 2 DDP workers, flips, dropout and a shuffled feed: the same config twice
    gives the same history and the same best weights, bit for bit."""
    _same_run(deterministic_run, run_train(shards, str(tmp_path), _deterministic_config(), log=lambda *_: None))
    rows = training_rows(shards, "classify")
    n = len(rows[next(iter(rows))])
    assert n - 2 < deterministic_run.history[0]["train_images"] <= n  # every training slice, as the split feed


def test_a_deterministic_run_that_lost_a_worker_ends_where_the_uninterrupted_one_does(
    shards, deterministic_run, tmp_path
):
    """Killed after its first checkpoint, the run resumes with that checkpoint's weights, optimizer
    and random streams, and trains the later epochs exactly as the run that was not killed (with
    the streams seeded afresh on resuming, the later epochs' flips and dropout masks differ)."""
    killed = _kill_a_training_worker_after_its_first_checkpoint(tmp_path)
    resumed = run_train(shards, str(tmp_path), _deterministic_config(), log=lambda *_: None)
    assert killed, "no training worker was found to kill"
    assert resumed.history[-1]["started_at_epoch"] >= 1  # it did resume
    _same_run(deterministic_run, resumed)


def _kill_a_training_worker_after_its_first_checkpoint(out: Path) -> list[int]:
    """Start a thread that kills one Ray Train worker once a run under ``out`` has checkpointed;
    the returned list gets the killed pid."""
    killed: list[int] = []

    def killer():
        deadline = time.time() + 240
        while time.time() < deadline and not list(out.glob("*/checkpoint_*")):
            time.sleep(0.2)
        time.sleep(4)  # the folder appears before the controller has registered the checkpoint
        for proc in ray_processes():  # this test's Ray only: another Ray on the machine is not ours to kill
            try:
                text = proc.name() + " ".join(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
            if "RayTrainWorker" in text:
                proc.kill()
                killed.append(proc.pid)
                return

    threading.Thread(target=killer, daemon=True).start()
    return killed


def test_killed_worker_resumes_from_checkpoint(shards, tmp_path):
    out = tmp_path / "runs"
    killed = _kill_a_training_worker_after_its_first_checkpoint(out)
    r = run_train(shards, str(out), small("classify", 3), log=lambda *_: None)
    assert killed, "no training worker was found to kill"
    assert [h["epoch"] for h in r.history] == [1, 2, 3]  # every epoch once, none repeated
    # The first epoch ran from scratch; the restarted workers began from the checkpoint, not over.
    assert r.history[0]["started_at_epoch"] == 0
    assert r.history[-1]["started_at_epoch"] >= 1
    assert np.isfinite(r.history[-1]["train_loss"])


def test_a_checkpoint_round_trips_weights_optimizer_loop_and_amp_scaler(tmp_path):
    """What resuming reads back is what was written: weights, AdamW moments, loop state, the random
    streams and the AMP loss scale (lost before, so a resumed AMP run restarted at 2**16), all onto the CPU."""
    from ray.train import Checkpoint

    from strokeray.stages.train import LoopState, restore, write_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", head="linear"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for _ in range(2):
        optimizer.zero_grad()
        scaler.scale(model(torch.rand(2, 3, 64, 64)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    streams = {"rank0.torch": torch.get_rng_state(), "rank0.steps": torch.Generator().manual_seed(5).get_state()}
    state = LoopState(start_epoch=0, best=0.75, history=[{"epoch": 1, "val_loss": 0.5}], streams=streams)
    write_checkpoint(str(tmp_path), model, optimizer, scaler, state, epoch=1)

    fresh = build_model(ModelConfig(backbone="resnet18", head="linear"))
    loop, optimizer_state, scaler_state = restore(fresh, Checkpoint.from_directory(str(tmp_path)))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert (loop.start_epoch, loop.best, loop.history) == (1, 0.75, state.history)
    assert loop.streams.keys() == streams.keys() and all(torch.equal(loop.streams[k], streams[k]) for k in streams)
    sizes = json.loads((tmp_path / "state.json").read_text())["sizes"]
    assert "random_streams.safetensors" in sizes  # so a copy cut off mid-file is seen
    resumed = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    resumed.load_state_dict(optimizer_state)
    first = next(iter(optimizer.state.values()))
    again = resumed.state[resumed.param_groups[0]["params"][0]]
    assert again["exp_avg"].device.type == "cpu" and torch.equal(again["exp_avg"], first["exp_avg"])
    resumed_scaler = torch.amp.GradScaler("cpu")
    resumed_scaler.load_state_dict(scaler_state)
    assert resumed_scaler.state_dict() == scaler.state_dict() and resumed_scaler.get_scale() != 2.0**16


def test_a_local_weights_file_reaches_the_workers_as_an_absolute_path(shards, tmp_path, monkeypatch):
    """``--weights runs/x/model.safetensors`` (relative, as a user types it) must load in Train
    workers that run in other folders; a missing file is a clear error before anything starts."""
    from safetensors.torch import save_file

    from strokeray.datasets.shard_set import ShardSet
    from strokeray.stages.train import with_model_shape

    monkeypatch.chdir(tmp_path)
    model = build_model(ModelConfig(task="segment", backbone="resnet18", num_classes=3))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "start.safetensors")
    data = ShardSet.open(shards)
    cfg = with_model_shape(
        TrainConfig(task="segment", model=ModelConfig(backbone="resnet18", weights="start.safetensors")), data
    )
    assert cfg.model.weights == str(tmp_path / "start.safetensors") and cfg.model.in_channels == 3
    loaded = build_model(cfg.model)  # what each worker does with it
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        with_model_shape(TrainConfig(task="segment", model=ModelConfig(weights="missing.safetensors")), data)


def test_a_saturated_validation_score_goes_to_the_lower_loss():
    """Accuracy 1.0 at two epochs: the better-fitted one (lower validation loss) ranks first, and
    no loss can outweigh a real difference in accuracy."""
    from strokeray.stages.train import TrainConfig

    cfg = TrainConfig(task="classify")
    early = cfg.score_of({"val_accuracy": 1.0, "val_loss": 0.45})
    later = cfg.score_of({"val_accuracy": 1.0, "val_loss": 0.08})
    assert later > early and abs(later - 1.0) < 1e-5
    assert cfg.score_of({"val_accuracy": 1.0, "val_loss": 50.0}) > cfg.score_of(
        {"val_accuracy": 0.9999, "val_loss": 0.0}
    )
    assert cfg.score_of({"val_accuracy": float("nan")}) == -1.0
    assert TrainConfig(task="classify", score_metric="val_loss").score_of({"val_loss": 0.3}) == -0.3


def test_the_patient_objective_trains_on_whole_patients_across_ddp_workers(shards, tmp_path):
    """--objective patient: the train split grouped into one row per patient, bags dealt to the 2
    DDP workers (equal counts, or a rank would wait forever in an all-reduce), every slice of every
    bag seen once an epoch when no cap applies, a bundle that scores slices as any other."""
    from strokeray.datasets.shard_set import ShardSet
    from strokeray.learn.tasks import CLASSIFY

    table = ShardSet.open(shards).rows("train", CLASSIFY, ["patient", "label", "split"])
    slices = {p: table["patient"].to_pylist().count(p) for p in set(table["patient"].to_pylist())}
    cfg = replace(small("classify", 2), objective="patient", batch_size=2, bag_slices=64)
    r = run_train(shards, str(tmp_path / "runs"), cfg, name="mil", log=lambda *_: None)
    assert [h["epoch"] for h in r.history] == [1, 2]
    for h in r.history:
        # the train pass counts patients in its loss and slices in its throughput; an equal split of
        # an odd number of bags may leave one bag out
        assert len(slices) - 1 <= h["train_patients"] <= len(slices), (h, slices)
        assert h["train_images"] in {sum(slices.values()) - n for n in [0, *slices.values()]}
        assert 0.0 <= h["train_accuracy"] <= 1.0 and np.isfinite(h["train_loss"])
    _, doc = load_bundle(r.bundle)
    assert doc["train"]["objective"] == "patient"
    ev = run_evaluate(r.bundle, shards, "test", log=lambda *_: None)
    assert ev.slices > 0 and "patient_auc" in ev.metrics


def test_2_5d_input_stacks_each_series_neighbours_from_training_to_evaluation(shards, tmp_path):
    """--context-slices 1: the train and val datasets carry each slice with its neighbours as
    channels (every slice once), the model takes windows x 3 channels, the bundle says so, and
    evaluation scores every test slice through the same stacking; archive scoring refuses it."""
    from strokeray.datasets.shard_set import ShardSet
    from strokeray.learn.tasks import CLASSIFY
    from strokeray.stages.score import ScoreConfig, check_bundles
    from strokeray.stages.train import datasets_for

    data = ShardSet.open(shards)
    windows = len(data.preprocess.windows)
    ds = datasets_for(data, CLASSIFY, context=1)
    rows = ds["train"].take_all()
    assert len(rows) == data.rows("train", CLASSIFY).num_rows
    assert {r["cls_image"].shape for r in rows} == {(3 * windows, 224, 224)}
    assert set(rows[0]) == set(CLASSIFY.columns)  # the ordering columns are dropped again
    # the middle block is the slice itself: the stacked set of centres is the set of slices
    plain = {v.tobytes() for v in tensor_array(data.rows("train", CLASSIFY)["cls_image"], (windows, 224, 224))}
    centres = {r["cls_image"][windows : 2 * windows].tobytes() for r in rows}
    assert centres == plain

    r = run_train(shards, str(tmp_path / "runs"), replace(small("classify", 1), context_slices=1), log=lambda *_: None)
    model, doc = load_bundle(r.bundle)
    assert doc["context_slices"] == 1 and doc["model"]["in_channels"] == 3 * windows
    ev = run_evaluate(r.bundle, shards, "test", log=lambda *_: None)
    assert ev.slices == data.rows("test", CLASSIFY).num_rows and "slice_auc" in ev.metrics
    with pytest.raises(ValueError, match="2.5-D"):
        check_bundles(r.bundle, None, ScoreConfig())
