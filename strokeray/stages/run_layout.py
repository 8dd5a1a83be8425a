"""Where each stage of a pipeline run keeps its outputs, so the pipeline writes and the report
reads the same places (local folders or fsspec URLs)."""

from __future__ import annotations

from dataclasses import dataclass

from strokeray.learn.tasks import Task


@dataclass(frozen=True)
class RunLayout:
    out: str

    def path(self, *parts: str) -> str:
        return "/".join([self.out.rstrip("/"), *parts])

    @property
    def archive(self) -> str:  # the generated demo archive (absent when the run scores a given source)
        return self.path("archive")

    @property
    def shards(self) -> str:  # ingest OUT: shards/, manifest, quarantine, card.json
        return self.path("shards")

    @property
    def preview(self) -> str:
        return self.path("preview")

    @property
    def tune(self) -> str:  # Tune experiments, one per task: tune/<task>-search
        return self.path("tune")

    def search(self, task: Task) -> str:
        return self.path("tune", f"{task.name}-search")

    @property
    def crossval(self) -> str:  # cross-validations: crossval/<name>/crossval.json (`strokeray crossval --out`)
        return self.path("crossval")

    @property
    def registry(self) -> str:
        return self.path("registry")

    def evaluation(self, task: Task) -> str:  # test-split metrics (JSON)
        return self.path("evaluation", f"{task.name}.json")

    def predictions(self, task: Task) -> str:  # test-split per-slice predictions (Parquet)
        return self.path("evaluation", f"{task.name}-predictions.parquet")

    def bundle(self, task: Task, version: str) -> str:  # a published model in this run's registry
        return self.path("registry", task.name, version)

    @property
    def score(self) -> str:
        return self.path("score")

    @property
    def report(self) -> str:
        return self.path("report")
