"""The scoring cascade's actors: loaded once per scoring run, fed by every chunk.

Each chunk of a scoring run is its own Ray Data run (so it can be written, promoted and marked
done on its own), and an actor pool inside it would load both bundles, and on a GPU create a
CUDA context, once per chunk. Instead ``ScorerPool`` starts the ``CascadeScorer`` actors once
(Ray restarts one that dies, on any node, and retries its calls), and each chunk's pipeline ends
in cheap ``score_batch`` tasks that send a scorer only the columns the models read and put the
carried columns back on what returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

# Per-slice columns carried from decoding into the output (identifiers are pseudonyms).
CARRIED = (
    "id",
    "source",
    "patient",
    "study",
    "series",
    "instance_number",
    "frame",
    "z_mm",
    "thickness_mm",
    "seg_spacing_mm",
    "brain_found",
    "seg_box",
    "source_shape",
)
# What the scorer reads: both views, the spacing (lesion areas), the id (overlay file names).
SCORER_INPUTS = ("id", "cls_image", "seg_image", "seg_spacing_mm", "seg_box", "source_shape")
CPU_BATCH = 16  # slices per model call on a CPU: larger batches run no faster per slice there


def batch_for_memory(free_bytes: int, bytes_per_slice: float, fewest: int = 16, most: int = 512) -> int:
    """Slices per model call on a GPU: the largest power of two whose activations fit half the free
    memory (the rest for the allocator's slack and the other model), within [fewest, most]."""
    if bytes_per_slice <= 0:
        return most
    fits = int(free_bytes * 0.5 // bytes_per_slice)
    size = fewest
    while size * 2 <= min(fits, most):
        size *= 2
    return size


class CascadeScorer:
    """One scoring actor: classifier on every slice, segmenter on the positive ones."""

    def __init__(
        self,
        classifier: str,
        segmenter: str | None,
        threshold: float,
        overlays: str | None,
        use_gpu: bool,
        threads: int,
        source_masks: str | None = None,
    ) -> None:
        import torch

        from strokeray.learn.predict import BundlePredictor

        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        device = "cuda" if use_gpu else "cpu"
        self.classifier = BundlePredictor(classifier, device)
        self.segmenter = BundlePredictor(segmenter, device) if segmenter else None
        self.threshold = threshold
        self.overlays = overlays
        self.source_masks = source_masks

    def batch_size(self) -> int:
        """Slices per call: ``CPU_BATCH`` on a CPU; on a GPU by the memory one slice takes through
        both models (measured on a probe batch) against what is free."""
        import torch

        if self.classifier.device.type != "cuda":
            return CPU_BATCH
        probe = CPU_BATCH
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for predictor in (self.classifier, self.segmenter):
            if predictor is not None:  # views as they arrive: the view's size, one channel per window
                size = int(predictor.doc["preprocess"][predictor.task.view]["size"])
                channels = int(predictor.doc["model"]["in_channels"])
                predictor.predict(np.zeros((probe, channels, size, size), np.uint8))
        per_slice = (torch.cuda.max_memory_allocated() - base) / probe
        free, _ = torch.cuda.mem_get_info()
        return batch_for_memory(free, per_slice)

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The cascade's columns for a batch of ``SCORER_INPUTS``."""
        from strokeray.imaging.rle import encode_rle
        from strokeray.learn.tasks import LESION_NAMES  # here: it imports torch, which score_batch's workers never need

        prob = self.classifier.stroke_probability(batch["cls_image"])
        positive = prob >= self.threshold
        n, size = len(prob), batch["seg_image"].shape[-1]
        masks = np.zeros((n, size, size), np.uint8)
        if self.segmenter is not None and positive.any():
            masks[positive] = self.segmenter.lesion_classes(batch["seg_image"][positive])
        px_mm2 = np.asarray(batch["seg_spacing_mm"], dtype=np.float64) ** 2  # NaN when the spacing is unknown
        out: dict[str, np.ndarray] = {"stroke_probability": prob, "decision": positive.astype(np.int8)}
        pixels = {c: (masks == c).reshape(n, -1).sum(1) for c in LESION_NAMES}
        for c, name in LESION_NAMES.items():
            out[f"{name}_pixels"] = pixels[c].astype(np.int32)
            out[f"{name}_area_mm2"] = pixels[c] * px_mm2
        both = np.stack([pixels[1], pixels[2]], 1)
        out["lesion_class"] = np.where(both.sum(1) > 0, both.argmax(1) + 1, 0).astype(np.int8)
        out["segmented"] = positive & (self.segmenter is not None)
        out["mask_rle"] = np.asarray([encode_rle(m) if p else "" for m, p in zip(masks, positive)], dtype=object)
        out["classifier_version"] = np.full(n, self.classifier.version, dtype=object)
        out["segmenter_version"] = np.full(n, self.segmenter.version if self.segmenter else "", dtype=object)
        if self.overlays:
            self._write_overlays(batch, masks, positive)
        if self.source_masks:
            self._write_source_masks(batch, masks, positive)
        return out

    def _write_source_masks(self, batch, masks, positive) -> None:
        import fsspec

        from strokeray.imaging.geometry import Box, mask_to_source
        from strokeray.io.raster import encode_png

        fs, base = fsspec.core.url_to_fs(self.source_masks)
        fs.makedirs(base, exist_ok=True)
        for i in np.flatnonzero(positive):
            rows, cols = (int(v) for v in batch["source_shape"][i])
            mask = mask_to_source(masks[i], Box(*(int(v) for v in batch["seg_box"][i])), (rows, cols))
            with fs.open(f"{base}/{batch['id'][i]}.png", "wb") as fh:
                fh.write(encode_png(mask))

    def _write_overlays(self, batch, masks, positive) -> None:
        import fsspec

        from strokeray.imaging.overlay import paint_overlay
        from strokeray.io.raster import encode_png

        fs, base = fsspec.core.url_to_fs(self.overlays)
        fs.makedirs(base, exist_ok=True)
        for i in np.flatnonzero(positive):
            grey = batch["seg_image"][i, 0]  # the first window (brain)
            with fs.open(f"{base}/{batch['id'][i]}.png", "wb") as fh:
                fh.write(encode_png(np.concatenate([np.stack([grey] * 3, -1), paint_overlay(grey, masks[i])], 1)))


def score_batch(batch: dict[str, np.ndarray], scorers: list) -> dict[str, np.ndarray]:
    """Ray Data task at the end of a chunk's pipeline: one of the run's scorers scores the batch
    (chosen by the batch's first slice id, which spreads batches evenly over many), and the carried
    columns go back on. A task, not an actor: tasks reuse warm worker processes, where an actor
    pool would start processes for every chunk."""
    import zlib

    import ray

    scorer = scorers[zlib.crc32(str(batch["id"][0]).encode()) % len(scorers)] if len(batch["id"]) else scorers[0]
    scored = ray.get(scorer.score.remote({k: batch[k] for k in SCORER_INPUTS}))
    return {**{k: batch[k] for k in CARRIED}, **scored}


def scorer_options(cpus_per_actor: float, use_gpu: bool) -> dict:
    """Ray options of a scoring actor. A lost node or a killed process: restart it, redo the call.

    On CPUs the actor runs more torch threads than the CPUs it reserves, beside the decode tasks;
    OpenMP's default busy-wait then burns the core a descheduled thread needs at every barrier, so
    its threads sleep instead (512-slice scoring on 2 CPUs: 4 of 4 interleaved pairs faster, by 1-12 %).
    A policy the user set in the job's environment is kept."""
    options: dict = {
        "num_cpus": cpus_per_actor,
        "num_gpus": 1 if use_gpu else 0,
        "max_restarts": -1,
        "max_task_retries": -1,
    }
    if not use_gpu and "OMP_WAIT_POLICY" not in os.environ:
        options["runtime_env"] = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    return options


@dataclass
class ScorerPool:
    """The run's scoring actors (``start``), the slices each takes per call, and a reference that
    resolves once the first has loaded its models (``ready``)."""

    scorers: list
    batch_size: int
    ready: Any

    @classmethod
    def start(
        cls, actors: int, scorer_kwargs: dict, cpus_per_actor: float, use_gpu: bool, batch_size: int | None = None
    ) -> ScorerPool:
        """Start ``actors`` scorers. On a GPU, wait for the first, whose ``batch_size()`` sizes the
        calls (unless ``batch_size`` is given); on CPUs calls take ``CPU_BATCH`` and nothing waits:
        the chunk's decoding starts while the actors load (measured: 7.7 s of a 512-slice run here).
        An error in the constructor is not restarted; ``raise_if_unloaded`` says it."""
        import ray

        remote = ray.remote(CascadeScorer).options(**scorer_options(cpus_per_actor, use_gpu))
        scorers = [remote.remote(**scorer_kwargs) for _ in range(actors)]
        ready = scorers[0].batch_size.remote()  # type: ignore[attr-defined]
        if batch_size is None and use_gpu:
            batch_size = ray.get(ready)
        return cls(scorers, batch_size or CPU_BATCH, ready)

    def raise_if_unloaded(self) -> None:
        """Raise, with its cause, if the first scorer could not load the models (a run that failed
        on that would otherwise say only that an actor died)."""
        import ray

        try:
            ray.get(self.ready, timeout=5)  # loaded, or died loading: at once
        except ray.exceptions.GetTimeoutError:
            return
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"the scoring actors could not load the models: {e}") from e

    def extend(self, ds):
        """``ds`` (a chunk's decoded slices) scored by this pool."""
        # No CPU reserved: the scorers hold the CPUs (or GPUs) the work needs; two batches in flight
        # per scorer, so that each has the next one waiting.
        return ds.map_batches(
            score_batch,
            fn_kwargs={"scorers": self.scorers},  # type: ignore[arg-type]
            batch_size=self.batch_size,
            batch_format="numpy",
            num_cpus=0,
            concurrency=2 * len(self.scorers),
        )

    def stop(self) -> None:
        import ray

        for actor in self.scorers:
            ray.kill(actor)
