import numpy as np

from strokeray.imaging.geometry import Box, bbox, box_around, crop_padded, mask_to_source, resample


def test_crop_padded_fills_outside():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = crop_padded(img, Box(-1, -1, 3, 3), fill=-5)
    assert out.tolist() == [[-5, -5, -5], [-5, 0, 1], [-5, 4, 5]]


def test_box_around_is_physical():
    box = box_around((100, 100), 50.0, (0.5, 0.25))
    assert (box.height, box.width) == (100, 200)


def test_bbox_end_exclusive():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    assert bbox(m) == (2, 3, 5, 8)
    assert bbox(np.zeros((3, 3), bool)) is None


def test_mask_resample_and_back_round_trips():
    mask = np.zeros((200, 300), np.uint8)
    mask[60:120, 140:220] = 2
    box = Box(20, 90, 180, 180)
    view = resample(mask, box, 128, fill=0, nearest=True)
    back = mask_to_source(view, box, mask.shape)
    inter = np.logical_and(back == 2, mask == 2).sum()
    union = np.logical_or(back == 2, mask == 2).sum()
    assert inter / union > 0.95


def test_image_and_mask_resample_align():
    img = np.zeros((300, 300), np.float32)
    img[100:140, 180:230] = 1.0
    box = Box(50, 60, 220, 220)
    vi = resample(img, box, 100, fill=0)
    vm = resample((img > 0).astype(np.uint8), box, 100, fill=0, nearest=True)
    assert np.all(vi[vm == 1] > 0.4)


def test_mask_to_source_keeps_classes_and_leaves_outside_the_box_background():
    view = np.full((8, 8), 2, np.uint8)
    view[:, :4] = 1  # no background pixel in the view at all
    back = mask_to_source(view, Box(10, 20, 16, 16), (40, 50))
    assert back.dtype == np.uint8 and set(np.unique(back)) == {0, 1, 2}
    assert (back[10:26, 20:36] > 0).all() and (back[:10] == 0).all() and (back[:, 36:] == 0).all()
    assert (back[10:26, 20:28] == 1).all() and (back[10:26, 28:36] == 2).all()
