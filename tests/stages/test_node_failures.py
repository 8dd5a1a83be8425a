"""Losing a node mid-run, on a real multi-node Ray cluster on this machine (``ray.cluster_utils``):
a head that takes no work and two 1-CPU worker nodes, in a child process (see multinode_child.py).
Ingest and scoring each lose a worker node, killed without warning as a lost spot node, as soon as
their first chunk is done, and a fresh node joins. Both must finish with every slice exactly once:
the same ids (and for scoring the same probabilities) as an undisturbed run on the same cluster.
Training (one worker per node) loses a node after its first checkpoint and must resume from it;
so must a trial of a two-trial search. The nodes added mid-run must get work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import tiny_bundle

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1500)]


def test_ingest_and_scoring_survive_a_lost_worker_node(phantom_archive, tmp_path):
    archive, _ = phantom_archive
    classifier, segmenter = tiny_bundle(tmp_path / "cls", "classify"), tiny_bundle(tmp_path / "seg", "segment")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A neutral working directory: Ray workers import strokeray from the checkout the driver names.
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.stages.multinode_child",
            str(archive),
            str(tmp_path / "work"),
            classifier,
            segmenter,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    events = result["events"]
    # the node went while the run was under way: after its first chunk, before the last
    ingest = result["ingest"]
    assert 1 <= events["ingest_done_at_removal"] < ingest["chunks"] and events["ingest_added_node"]
    assert ingest["hit_slices"] == ingest["ref_slices"] > 0
    assert len(ingest["hit_ids"]) == len(set(ingest["hit_ids"])) == ingest["hit_slices"]  # none twice
    assert sorted(ingest["hit_ids"]) == sorted(ingest["ref_ids"])  # none lost
    assert ingest["hit_quarantined"] == ingest["ref_quarantined"]  # the planted bad files, no more
    score = result["score"]
    assert events["score_done_at_removal"] >= 1 and events["score_added_node"]
    assert score["hit_slices"] == score["ref_slices"] > 0
    assert len(set(score["hit"]["id"])) == len(score["hit"]["id"]) == score["hit_slices"]
    ref = dict(zip(score["ref"]["id"], score["ref"]["stroke_probability"]))
    hit = dict(zip(score["hit"]["id"], score["hit"]["stroke_probability"]))
    assert ref.keys() == hit.keys() and all(abs(ref[k] - hit[k]) < 1e-5 for k in ref)
    train = result["train"]
    # the node went after the first checkpoint and before the last; every epoch ran once, the
    # epochs after the loss resumed from a checkpoint instead of starting over, and a bundle came out
    assert 1 <= events["train_done_at_removal"] < 5 and events["train_added_node"]
    assert train["epochs"] == [1, 2, 3, 4, 5] and train["started_at"][0] == 0 and train["started_at"][-1] >= 1
    assert train["bundle"]
    # A node added mid-run gets work: ingest's ran decode tasks of the chunks left, scoring's ran
    # decoding or scoring (the lost node's scorer restarts where a CPU is free), and training's
    # holds a worker of the restarted group (two 1-CPU nodes are needed for its two workers).
    added = result["added_work"]

    def ran(node: str, *names: str) -> int:
        return sum(n for task, n in added[node]["tasks"].items() if any(x in task for x in names))

    assert ran("ingest", "process_batch") >= 1, added
    assert ran("score", "process_batch", "score") >= 1, added
    assert added["train"]["train_workers"] >= 1, added
    # A search loses the node of one of its two trials after a first checkpoint: both trials still
    # run every epoch once (the hit one resuming from its checkpoint) and the best is published.
    search = result["search"]
    assert 1 <= events["search_done_at_removal"] and events["search_added_node"]
    assert [r["status"] for r in search["rows"]] == ["complete", "complete"], search
    assert sorted(search["epochs"].values()) == [[1, 2, 3, 4]] * 2, search
    assert any(s[-1] >= 1 for s in search["started_at"].values()), search  # a resume, not a restart
    assert search["bundle"]
