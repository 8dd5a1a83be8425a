import numpy as np
import pytest

from strokeray.imaging.overlay import HEMORRHAGIC, paint_overlay
from strokeray.imaging.windows import BRAIN, SUBDURAL
from strokeray.io.decode import decode_slices, is_raster
from strokeray.io.errors import DecodeError
from strokeray.io.raster import decode_mask_image, decode_raster, encode_png, grey_to_pseudo_hu

from .dicom_factory import ct_bytes


def test_grey_maps_back_through_the_window():
    grey = np.array([[0, 128, 255]], np.uint8)
    assert grey_to_pseudo_hu(grey, BRAIN)[0].tolist() == pytest.approx([0.0, 40.156863, 80.0])
    assert grey_to_pseudo_hu(grey, SUBDURAL)[0, -1] == pytest.approx(180.0)


def test_png_export_decodes_as_pseudo_hu():
    grey = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    ct = decode_raster(encode_png(grey), "a.png")
    assert not ct.is_hu and ct.export_window == (0.0, 80.0)
    assert ct.hu.min() == 0.0 and ct.hu.max() == 80.0
    # Same bytes, same id; different bytes, different id.
    assert ct.instance_key == decode_raster(encode_png(grey)).instance_key
    assert ct.instance_key != decode_raster(encode_png(grey[::-1])).instance_key


def test_colour_image_is_not_a_ct_export():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    with pytest.raises(DecodeError) as err:
        decode_raster(encode_png(rgb))
    assert err.value.reason.value == "unsupported_image"


def test_broken_image_is_not_image():
    with pytest.raises(DecodeError) as err:
        decode_raster(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    assert err.value.reason.value == "not_image"


def test_mask_images():
    m = np.zeros((20, 20), np.uint8)
    m[5:10, 5:10] = 255
    assert (decode_mask_image(encode_png(m), HEMORRHAGIC) == HEMORRHAGIC).sum() == 25
    cls = np.zeros((20, 20), np.uint8)
    cls[1:3, 1:3] = 1
    cls[10:12, 10:12] = 2
    assert np.array_equal(decode_mask_image(encode_png(cls), None), cls)
    with pytest.raises(DecodeError):
        decode_mask_image(encode_png(m), None)  # 255 without a class is ambiguous
    overlay = paint_overlay(np.full((20, 20), 90, np.uint8), (m > 0).astype(np.uint8) * HEMORRHAGIC)
    assert (decode_mask_image(encode_png(overlay), None) == HEMORRHAGIC).sum() == 25


def test_dispatch_by_content_not_name():
    png = encode_png(np.arange(256, dtype=np.uint8).reshape(16, 16))
    dcm = ct_bytes()
    assert is_raster(png, "x.dcm") and not is_raster(dcm, "x.png")
    assert decode_slices(png, "misnamed.dcm")[0].transfer_syntax == "raster"
    assert decode_slices(dcm, "misnamed.png")[0].is_hu
    # A Part-10 file whose preamble is a TIFF header is still DICOM.
    tiff_preamble = b"II*\x00" + dcm[4:]
    assert not is_raster(tiff_preamble)


def _png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_huge_claimed_size_is_refused_before_decoding():
    with pytest.raises(DecodeError) as err:
        decode_raster(_png_header_only(60000, 60000), "bomb.png")
    assert err.value.reason.value == "oversized_image"


def test_a_one_bit_image_is_not_a_ct_export():
    import io

    from PIL import Image

    noise = np.random.default_rng(0).random((128, 128)) > 0.5
    buf = io.BytesIO()
    Image.fromarray(noise).convert("1").save(buf, format="PNG")
    with pytest.raises(DecodeError) as err:
        decode_raster(buf.getvalue(), "noise.png")
    assert err.value.reason.value == "not_ct" and "2 grey levels" in err.value.detail
