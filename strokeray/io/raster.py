"""PNG/JPG exports (already windowed, no HU) and mask images, in and out.

An export holds display values, not HU. We map them back through the window the export was made
with (the brain window unless told otherwise), giving "pseudo-HU" that the same preprocessing
can use; values the export clipped stay clipped, and the slice is marked ``is_hu=False``.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from strokeray.imaging.overlay import lesion_mask_from_overlay
from strokeray.imaging.windows import BRAIN, Window
from strokeray.io.ct_slice import CTSlice
from strokeray.io.errors import DecodeError, Reason
from strokeray.io.pseudonym import pseudonym

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# A CT export is at most a few thousand pixels wide; a header claiming more is refused before decoding.
MAX_RASTER_PIXELS = 64 * 1024 * 1024
# A windowed CT slice has hundreds of grey levels; fewer than this is a drawing or a binary image.
MIN_GREY_LEVELS = 16


def claimed_pixels(data: bytes) -> int | None:
    """Pixels an image's header claims (read without decoding), or None when no header parses."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: we check the size ourselves
            with Image.open(io.BytesIO(data)) as im:
                return int(im.size[0]) * int(im.size[1])
    except Image.DecompressionBombError:
        return MAX_RASTER_PIXELS + 1
    except Exception:  # noqa: BLE001 - no header Pillow knows: OpenCV's decode says why
        return None


def decode_image(data: bytes, source: str = "") -> np.ndarray:
    """Decode image bytes to an array: (H, W) greyscale or (H, W, 3) RGB; raises not_image."""
    if not data:
        raise DecodeError(Reason.NOT_IMAGE, "empty file", source)
    pixels = claimed_pixels(data)
    if pixels is not None and pixels > MAX_RASTER_PIXELS:
        raise DecodeError(Reason.OVERSIZED_IMAGE, f"{pixels} pixels, over the limit of {MAX_RASTER_PIXELS}", source)
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DecodeError(Reason.NOT_IMAGE, "not a readable PNG/JPG/BMP/TIFF image", source)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
        elif arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        else:
            arr = arr[..., 0]
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 8:
        raise DecodeError(Reason.UNSUPPORTED_IMAGE, f"image of shape {arr.shape}", source)
    return arr


def to_grey(arr: np.ndarray) -> np.ndarray:
    """Greyscale of an image; colour images must be (near) grey already, as CT exports are."""
    if arr.ndim == 2:
        return arr
    rgb = arr[..., :3].astype(np.int16)
    return np.rint(rgb.mean(axis=2)).astype(arr.dtype)


def grey_to_pseudo_hu(grey: np.ndarray, window: Window = BRAIN) -> np.ndarray:
    """Invert the export's window: 0 -> window low, full scale -> window high (float32)."""
    full = 65535.0 if grey.dtype == np.uint16 else 255.0
    return (np.float32(window.low) + grey.astype(np.float32) * np.float32(window.width / full)).astype(np.float32)


def decode_raster(data: bytes, source: str = "", window: Window = BRAIN) -> CTSlice:
    """One windowed PNG/JPG export as a CTSlice of pseudo-HU; the id is a hash of its bytes."""
    arr = decode_image(data, source)
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.int16)
        chroma = float(np.mean(rgb.max(axis=2) - rgb.min(axis=2)))
        if chroma > 8.0:
            raise DecodeError(
                Reason.UNSUPPORTED_IMAGE, f"colour image (mean chroma {chroma:.1f}): not a CT export", source
            )
    grey = to_grey(arr)
    levels = np.unique(grey[:: max(1, grey.shape[0] // 256), :: max(1, grey.shape[1] // 256)]).size
    if levels < MIN_GREY_LEVELS:
        raise DecodeError(
            Reason.NOT_CT, f"only {levels} grey levels: a binary image or drawing, not a CT export", source
        )
    digest = hashlib.sha256(data).hexdigest()
    return CTSlice(
        hu=grey_to_pseudo_hu(grey, window),
        is_hu=False,
        instance_key=pseudonym(digest, "instance"),
        modality="CT",
        photometric="MONOCHROME2",
        transfer_syntax="raster",
        hu_rule=f"window:{window.name}:{window.level:g}:{window.width:g}",
        export_window=(window.low, window.high),
    )


def decode_mask_image(data: bytes, lesion_class: int | None, source: str = "") -> np.ndarray:
    """A uint8 class mask from a mask image.

    Greyscale: non-zero pixels are the lesion, of ``lesion_class`` when given, else the grey
    values are taken as class indices. Colour: a colour overlay, decoded by its paint.
    """
    arr = decode_image(data, source)
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.int16)
        if float(np.max(rgb.max(axis=2) - rgb.min(axis=2))) >= 40:
            return lesion_mask_from_overlay(arr, lesion_class=lesion_class)
        arr = to_grey(arr)
    if lesion_class is not None:
        return np.where(arr > 0, lesion_class, 0).astype(np.uint8)
    if arr.max() > 2:
        raise DecodeError(
            Reason.UNSUPPORTED_IMAGE,
            f"mask values up to {int(arr.max())} without a lesion class: expected 0/1/2 class indices",
            source,
        )
    return arr.astype(np.uint8)


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a greyscale (H, W) or RGB (H, W, 3) uint8/uint16 array."""
    a = np.asarray(arr)
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise ValueError(f"cannot encode array of shape {a.shape} and dtype {a.dtype} as PNG")
    return buf.tobytes()
