import torch

from strokeray.learn.augment import AugmentConfig, augment_batch


def _scene(n=4, size=64):
    x = torch.zeros(n, 3, size, size)
    m = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = 10 + 5 * i, 20 + 3 * i
        x[i, :, r : r + 12, c : c + 9] = 1.0
        m[i, r : r + 12, c : c + 9] = 2
    return x, m


def test_masks_move_with_images():
    x, m = _scene()
    cfg = AugmentConfig(p_rot90=1, p_flip=1, p_affine=1, p_elastic=1, p_grid=1, p_intensity=0)
    for seed in range(5):
        xa, ma = augment_batch(x, m, cfg, torch.Generator().manual_seed(seed))
        bright = xa[:, 0] > 0.5
        lesion = ma == 2
        inter = (bright & lesion).sum().item()
        union = (bright | lesion).sum().item()
        assert inter / union > 0.8
        assert set(torch.unique(ma).tolist()) <= {0, 2}  # nearest neighbour: no invented classes


def test_exact_transforms_are_exact():
    x, m = _scene()
    cfg = AugmentConfig(p_rot90=1, p_flip=1, p_affine=0, p_elastic=0, p_grid=0, p_intensity=0)
    xa, ma = augment_batch(x, m, cfg, torch.Generator().manual_seed(3))
    assert torch.equal((xa[:, 0] > 0.5), ma == 2)
    assert xa.sum() == x.sum()


def test_strength_zero_is_identity_and_intensity_spares_masks():
    x, m = _scene()
    xa, ma = augment_batch(x, m, AugmentConfig(strength=0.0))
    assert xa is x and ma is m
    cfg = AugmentConfig(p_rot90=0, p_flip=0, p_affine=0, p_elastic=0, p_grid=0, p_intensity=1)
    xi, mi = augment_batch(x, m, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(mi, m) and not torch.equal(xi, x)
    assert xi.min() >= 0 and xi.max() <= 1


def test_flips_preset_only_mirrors_left_right():
    x, m = _scene(n=16)
    cfg = AugmentConfig.preset("flips", p_flip=1.0)
    xa, ma = augment_batch(x, m, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(xa, torch.flip(x, dims=(-1,))) and torch.equal(ma, torch.flip(m, dims=(-1,)))
    assert AugmentConfig.preset("full") == AugmentConfig()
    assert AugmentConfig.preset("flips", strength=0.5).strength == 0.5
    try:
        AugmentConfig.preset("heavy")
    except ValueError as err:
        assert "flips" in str(err)
    else:
        raise AssertionError("an unknown preset was accepted")


def test_augmentation_never_waits_on_the_device():
    """On a "meta" device a tensor has a shape and no data, so anything that reads a value back to
    the host (``.any()`` in an ``if``, ``.item()``, ``int()``) raises: on a GPU each of those would be
    a host-device sync that stalls the queue. Every transform on, masks included."""
    images = torch.empty(4, 3, 32, 32, device="meta")
    masks = torch.empty(4, 32, 32, dtype=torch.long, device="meta")
    cfg = AugmentConfig(p_affine=1.0, p_elastic=1.0, p_grid=1.0, p_intensity=1.0)
    x, m = augment_batch(images, masks, cfg, torch.Generator().manual_seed(0))
    assert x.device.type == m.device.type == "meta" and x.shape == images.shape and m.shape == masks.shape
