import pytest

from strokeray.datasets.splits import SplitConfig, assign_splits


def groups(n, strata=(0, 1)):
    return {f"g{i}": strata[i % len(strata)] for i in range(n)}


def test_hash_splits_are_stable_when_patients_are_added():
    small = assign_splits(groups(200))
    big = assign_splits(groups(400))
    assert all(big[g] == s for g, s in small.items())
    shares = {s: sum(v == s for v in big.values()) / 400 for s in ("train", "val", "test")}
    assert abs(shares["train"] - 0.7) < 0.08 and abs(shares["test"] - 0.15) < 0.06


def test_stratified_splits_are_exact_per_class():
    out = assign_splits(groups(40), SplitConfig(mode="stratified"))
    for stratum in (0, 1):
        members = [g for g, s in groups(40).items() if s == stratum]
        got = [out[g] for g in members]
        assert (got.count("train"), got.count("val"), got.count("test")) == (14, 3, 3)


def test_seed_changes_assignment():
    a = assign_splits(groups(100), SplitConfig(seed=1))
    b = assign_splits(groups(100), SplitConfig(seed=2))
    assert a != b


def test_layout_splits_win_and_val_comes_from_train():
    g = groups(200)
    layout = {k: ("test" if i % 4 == 0 else "train") for i, k in enumerate(g)}
    out = assign_splits(g, SplitConfig(), layout)
    assert all(out[k] == "test" for k, v in layout.items() if v == "test")
    from_train = [out[k] for k, v in layout.items() if v == "train"]
    assert "val" in from_train and "test" not in from_train
    assert assign_splits(g, SplitConfig(use_layout_splits=False), layout) == assign_splits(g)


def test_stratified_validation_from_a_small_layout_holds_every_class():
    """The demo's case: 18 training patients of the layout, 3 of them stroke. By hash the validation
    share can miss the stroke class (then threshold and checkpoint choice see one class);
    stratified carves the same share of each class, at least one patient of each."""
    g = {f"p{i}": int(i < 3) for i in range(18)}
    layout = dict.fromkeys(g, "train")
    for seed in range(20):
        out = assign_splits(g, SplitConfig(mode="stratified", seed=seed), layout)
        val = [g[k] for k, s in out.items() if s == "val"]
        assert sorted(val) == [0, 0, 0, 1] and "test" not in out.values()  # 15 x 0.18 and 3 x 0.18, rounded
    missed = sum(1 not in [g[k] for k, s in assign_splits(g, SplitConfig(seed=seed), layout).items() if s == "val"]
                 for seed in range(20))
    assert missed > 0  # what hash mode does to a small class on some seeds


@pytest.mark.parametrize("kw", [{"ratios": (0.5, 0.5, 0.5)}, {"ratios": (1.0, 0.0)}, {"mode": "random"}])
def test_bad_split_config(kw):
    with pytest.raises(ValueError):
        SplitConfig(**kw)
