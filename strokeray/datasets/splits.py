"""Patient-grouped train/val/test splits: a patient never sits in two splits.

Two modes, both deterministic for a seed:
- ``hash`` (default): a patient's split is a function of its key alone, so adding files or
  patients never moves anyone; class balance holds in expectation.
- ``stratified``: within each class stratum (a patient's highest label), patients ordered by
  their hash are cut at the ratios, so small sets get exact proportions; adding patients can
  move others.
Split folders of the layout (Training/Test) win when present; a validation share is then carved
out of the layout's training patients, by hash or per class (stratified).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitConfig:
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    mode: str = "hash"  # hash | stratified
    seed: int = 0
    use_layout_splits: bool = True

    def __post_init__(self) -> None:
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {self.ratios}")
        if self.mode not in ("hash", "stratified"):
            raise ValueError(f"split mode must be hash or stratified, got {self.mode!r}")


def unit_hash(group: str, seed: int) -> float:
    """A uniform number in [0, 1) from a group key and seed."""
    digest = hashlib.sha256(f"{seed}\x00{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _by_ratio(u: float, ratios: tuple[float, float, float]) -> str:
    if u < ratios[0]:
        return "train"
    if u < ratios[0] + ratios[1]:
        return "val"
    return "test"


def _carve_val(train: dict[str, int], share: float, cfg: SplitConfig) -> set[str]:
    """The layout's training patients that become validation: by hash, or (stratified) the same
    share of every class, at least one of a class with two or more patients, so that validation
    holds every class the training folders hold."""
    if cfg.mode == "hash":
        return {g for g in train if unit_hash(g, cfg.seed) < share}
    out: set[str] = set()
    for stratum in set(train.values()):
        members = sorted((g for g, s in train.items() if s == stratum), key=lambda g: unit_hash(g, cfg.seed))
        n_val = max(int(round(len(members) * share)), 1 if share > 0 and len(members) >= 2 else 0)
        out.update(members[:n_val])
    return out


def assign_splits(
    groups: dict[str, int], cfg: SplitConfig = SplitConfig(), layout_splits: dict[str, str] | None = None
) -> dict[str, str]:
    """Split of every group. ``groups`` maps group key -> stratum (class); ``layout_splits`` maps
    group key -> train/val/test from the layout's own folders, where it has them."""
    out: dict[str, str] = {}
    layout_splits = layout_splits or {}
    if cfg.use_layout_splits and layout_splits:
        train, val = cfg.ratios[0], cfg.ratios[1]
        val_share = val / (train + val) if train + val > 0 else 0.0
        carved = _carve_val({g: groups[g] for g in groups if layout_splits.get(g) == "train"}, val_share, cfg)
        for g in groups:
            s = "val" if g in carved else layout_splits.get(g, "")
            out[g] = s or _by_ratio(unit_hash(g, cfg.seed), cfg.ratios)
        return out
    if cfg.mode == "hash":
        return {g: _by_ratio(unit_hash(g, cfg.seed), cfg.ratios) for g in groups}
    strata: dict[int, list[str]] = {}
    for g, stratum in groups.items():
        strata.setdefault(stratum, []).append(g)
    for members in strata.values():
        members.sort(key=lambda g: unit_hash(g, cfg.seed))
        n = len(members)
        n_train = int(round(n * cfg.ratios[0]))
        n_val = int(round(n * cfg.ratios[1]))
        if cfg.ratios[2] > 0 and n >= 3 and n_train + n_val >= n:
            n_train = max(1, n_train - (n_train + n_val - n + 1))  # keep at least one test patient
        for i, g in enumerate(members):
            out[g] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def assign_folds(groups: dict[str, int], folds: int, seed: int = 0) -> dict[str, int]:
    """Fold (0..folds-1) of every group for patient-grouped, stratified cross-validation: within
    each stratum, groups ordered by their hash are dealt round the folds, each stratum starting
    where the last one stopped, so fold sizes differ by at most one group."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(groups) < folds:
        raise ValueError(f"{len(groups)} patients cannot fill {folds} folds")
    out: dict[str, int] = {}
    for stratum in sorted(set(groups.values())):
        members = sorted((g for g, s in groups.items() if s == stratum), key=lambda g: unit_hash(g, seed))
        for g in members:
            out[g] = len(out) % folds
    return out


def fold_splits(
    groups: dict[str, int], fold_of: dict[str, int], fold: int, val_share: float, seed: int = 0
) -> dict[str, str]:
    """train/val/test of every group for one fold: the fold is the test split, and ``val_share`` of
    every class of the other folds' groups is validation (checkpoint and threshold choice)."""
    rest = {g: s for g, s in groups.items() if fold_of[g] != fold}
    val = _carve_val(rest, val_share, SplitConfig(mode="stratified", seed=seed))
    return {g: "test" if fold_of[g] == fold else "val" if g in val else "train" for g in groups}
