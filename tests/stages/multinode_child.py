"""Run by test_node_failures in a child process (its Ray is not the suite's shared one): a head
that takes no work and two 1-CPU worker nodes on this machine (``ray.cluster_utils.Cluster``).
Ingest and score a phantom archive undisturbed, then again while, as soon as the first chunk is
done, one worker node is removed (its processes killed, as a lost spot node) and a fresh one
added; then train with one worker on each node and remove one of the nodes after the first
checkpoint; then a two-trial search loses the node of a running trial's worker. Prints one JSON
line: what each run produced, what was done to the cluster and what the added nodes ran."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def ids_of(folder: str) -> list[str]:
    import pyarrow.parquet as pq

    return [
        i for p in sorted(Path(folder).glob("*.parquet")) for i in pq.read_table(p, columns=["id"])["id"].to_pylist()
    ]


def first_chunk_done(out: Path):
    marker = out / "_state" / "done" / "chunk-00000.json"
    return lambda: len(list(marker.parent.glob("chunk-*.json"))) if marker.exists() else 0


def checkpoints(run_dir: Path):
    return lambda: len(list(run_dir.glob("checkpoint_*")))


def work_on(node_id: str) -> dict:
    """What ran on a node: its finished tasks by function name, and its Ray Train worker actors."""
    from ray.util.state import list_actors, list_tasks

    tasks: dict[str, int] = {}
    for t in list_tasks(filters=[("node_id", "=", node_id)], limit=10000, raise_on_missing_output=False):
        tasks[t.name] = tasks.get(t.name, 0) + 1
    actors = list_actors(filters=[("node_id", "=", node_id)], limit=1000, raise_on_missing_output=False)
    return {"tasks": tasks, "train_workers": sum(a.class_name == "RayTrainWorker" for a in actors)}


def disturbed(run, cluster, victim, progress, events: dict, key: str, settle: float = 0.0):
    """``run()`` (a stage) in a thread while this, the main thread (``add_node`` must run in it),
    removes ``victim`` ``settle`` seconds after ``progress()`` (finished chunks, or checkpoints) is
    above zero and adds a fresh node; the stage's result."""
    outcome: dict = {}

    def stage() -> None:
        try:
            outcome["result"] = run()
        except BaseException as err:  # re-raised below, in the main thread
            outcome["error"] = err

    thread = threading.Thread(target=stage, daemon=True)
    thread.start()
    deadline = time.time() + 300
    while not progress() and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    events[f"{key}_done_at_removal"] = progress()
    cluster.remove_node(victim() if callable(victim) else victim, allow_graceful=False)
    events[f"{key}_added_node"] = cluster.add_node(num_cpus=1).node_id
    thread.join(600)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def search_losing_a_node(cluster, work: str, log, events: dict) -> dict:
    """A two-trial search, one trial per 1-CPU node, losing a node after the first checkpoint of
    either trial: every trial must still complete its epochs and the best be published."""
    from strokeray.stages.tune import SearchConfig, SearchSpace, run_search

    cfg = SearchConfig(
        task="classify",
        space=SearchSpace(
            backbones=("resnet18",),
            lr=(1e-3, 1e-3),
            weight_decay=(1e-4,),
            batch_size=(8,),
            augment=(0.0,),
            input_size=(48,),
            dropout=(0.0,),
        ),
        samples=2,
        max_epochs=4,
        grace_period=4,  # no early stop: both trials must run every epoch
        cpus_per_worker=0.75,
    )
    train_dir = Path(work) / "search" / "classify-search" / "train"

    def victim():
        """The node of the training worker now running: the loss must hit a trial's own work."""
        from ray.util.state import list_actors

        alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        nodes = {a.node_id for a in alive}
        return next(n for n in cluster.worker_nodes if n.node_id in nodes)

    found = disturbed(
        lambda: run_search(f"{work}/ingest-ref", f"{work}/search", cfg, registry=f"{work}/registry", log=log),
        cluster,
        victim,
        lambda: len(list(train_dir.glob("trial-*/checkpoint_*"))),
        events,
        "search",
        settle=4.0,
    )
    histories = {}
    for run in sorted(train_dir.glob("trial-*")):
        states = sorted(run.glob("checkpoint_*/state.json"))
        if states:
            histories[run.name] = json.loads(states[-1].read_text())["history"]
    attempts = {
        p.parent.name: len(p.read_text().split())
        for p in (Path(work) / "search" / "classify-search").glob("*/attempts.log")
    }
    return {
        "rows": [{k: r.get(k) for k in ("trial_id", "status", "epochs_run", "error")} for r in found.rows],
        "bundle": Path(found.bundle, "model.safetensors").exists(),
        "started_at": {k: [h["started_at_epoch"] for h in v] for k, v in histories.items()},
        "epochs": {k: [h["epoch"] for h in v] for k, v in histories.items()},
        "attempts": sorted(attempts.values()),
    }


def main(archive: str, work: str, classifier: str, segmenter: str) -> None:
    """The runs on a fresh cluster, which is shut down however they end (a cluster left up, or its
    address file left behind, would be joined by later local runs on this machine)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        runs(cluster, archive, work, classifier, segmenter)
    finally:
        ray.shutdown()
        cluster.shutdown()


def runs(cluster, archive: str, work: str, classifier: str, segmenter: str) -> None:
    import ray

    from strokeray.learn.augment import AugmentConfig
    from strokeray.learn.models import ModelConfig
    from strokeray.stages.ingest import IngestConfig, run_ingest
    from strokeray.stages.score import ScoreConfig, run_score
    from strokeray.stages.train import TrainConfig, run_train

    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    def quiet(*args) -> None:  # progress on stderr, for the test's failure message
        print(*args, file=sys.stderr, flush=True)

    ingest = IngestConfig(files_per_chunk=6, files_per_task=2)
    score = ScoreConfig(files_per_chunk=12, files_per_task=4, batch_size=4)
    # One worker per node (0.75 of a 1-CPU node each, a quarter left to the data tasks feeding it).
    train = TrainConfig(
        task="classify",
        model=ModelConfig(backbone="resnet18", dropout=0.0),
        epochs=5,
        batch_size=8,
        input_size=48,
        num_workers=2,
        cpus_per_worker=0.75,
        augment=AugmentConfig(strength=0.0),
    )
    events: dict = {}
    result: dict = {}

    ref = run_ingest(archive, f"{work}/ingest-ref", ingest, quiet)
    hit = disturbed(
        lambda: run_ingest(archive, f"{work}/ingest-hit", ingest, quiet),
        cluster,
        workers[1],
        first_chunk_done(Path(work) / "ingest-hit"),
        events,
        "ingest",
    )
    result["ingest"] = {
        "ref_slices": ref.slices,
        "hit_slices": hit.slices,
        "chunks": hit.chunks_done,
        "ref_ids": ids_of(f"{work}/ingest-ref/shards"),
        "hit_ids": ids_of(f"{work}/ingest-hit/shards"),
        "ref_quarantined": ref.quarantined,
        "hit_quarantined": hit.quarantined,
    }

    import pyarrow.parquet as pq

    sref = run_score(archive, f"{work}/score-ref", classifier, segmenter, registry=None, cfg=score, log=quiet)
    survivor = [n for n in cluster.worker_nodes if n is not workers[1]][0]
    shit = disturbed(
        lambda: run_score(archive, f"{work}/score-hit", classifier, segmenter, registry=None, cfg=score, log=quiet),
        cluster,
        survivor,
        first_chunk_done(Path(work) / "score-hit"),
        events,
        "score",
    )
    ref_rows = pq.read_table(f"{work}/score-ref/slices.parquet", columns=["id", "stroke_probability"]).to_pydict()
    hit_rows = pq.read_table(f"{work}/score-hit/slices.parquet", columns=["id", "stroke_probability"]).to_pydict()
    result["score"] = {"ref_slices": sref.slices, "hit_slices": shit.slices, "ref": ref_rows, "hit": hit_rows}

    # Training loses the node of one of its two workers after the first checkpoint: the group restarts
    # on the nodes left (and the fresh one) from that checkpoint.
    victim = [n for n in cluster.worker_nodes if n.node_id != events["score_added_node"]][0]
    trained = disturbed(
        lambda: run_train(f"{work}/ingest-ref", f"{work}/train", train, name="hit", log=quiet),
        # a checkpoint's folder appears before the controller has registered it
        cluster,
        victim,
        checkpoints(Path(work) / "train" / "hit"),
        events,
        "train",
        settle=4.0,
    )
    # What the nodes added mid-run were given (the state API keeps finished tasks and dead actors).
    result["added_work"] = {k: work_on(events[f"{k}_added_node"]) for k in ("ingest", "score", "train")}
    result["train"] = {
        "epochs": [h["epoch"] for h in trained.history],
        "started_at": [h["started_at_epoch"] for h in trained.history],
        "bundle": Path(trained.bundle, "model.safetensors").exists(),
    }
    result["search"] = search_losing_a_node(cluster, work, quiet, events)
    result["events"] = events
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
