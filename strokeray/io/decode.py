"""Pick the decoder for a file by its bytes (and name): DICOM or a PNG/JPG export."""

from __future__ import annotations

from strokeray.imaging.windows import BRAIN, Window
from strokeray.io.ct_slice import CTSlice
from strokeray.io.dicom_decode import DecodeConfig, decode_dicom
from strokeray.io.raster import RASTER_SUFFIXES, decode_raster

_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def is_raster(data: bytes, name: str = "") -> bool:
    """True for PNG/JPG/BMP/TIFF content (by magic bytes, or by suffix when the bytes are empty).

    DICOM wins: a Part-10 file's 128-byte preamble may legally be a TIFF header.
    """
    if data[128:132] == b"DICM":
        return False
    if data[:8].startswith(_RASTER_MAGIC):
        return True
    return not data and name.lower().endswith(RASTER_SUFFIXES)


def decode_slices(
    data: bytes, source: str = "", dicom: DecodeConfig = DecodeConfig(), raster_window: Window = BRAIN
) -> list[CTSlice]:
    """Slices of one file, whatever its format; raises DecodeError with a reason otherwise."""
    if is_raster(data, source):
        return [decode_raster(data, source, raster_window)]
    return decode_dicom(data, source, dicom)
