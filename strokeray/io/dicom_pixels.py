"""Pixel-stream helpers pydicom lacks: GDCM for 12-bit and retired JPEG; J2K syntaxes, first-frame bytes."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

# JPEG processes pydicom's plugins refuse (12-bit extended) or have no decoder for (retired
# spectral-selection and progressive processes), all of which GDCM's bundled IJG decodes.
JPEG_EXTENDED_12 = "1.2.840.10008.1.2.4.51"
JPEG_SPECTRAL = "1.2.840.10008.1.2.4.53"
JPEG_PROGRESSIVE = "1.2.840.10008.1.2.4.55"
GDCM_ONLY_SYNTAXES = frozenset({JPEG_SPECTRAL, JPEG_PROGRESSIVE})

J2K_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)


def _gdcm():
    import gdcm  # imported lazily: loading GDCM costs ~100 ms and most files never need it

    gdcm.Trace.WarningOff()
    gdcm.Trace.ErrorOff()
    return gdcm


def decode_jpeg_with_gdcm(ds: Dataset, n_frames: int) -> np.ndarray:
    """Decode encapsulated JPEG frames through GDCM; returns (frames, rows, cols)."""
    gdcm = _gdcm()
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits_alloc, bits_stored = int(ds.BitsAllocated), int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_alloc // 8}")
    ts_type = gdcm.TransferSyntax.GetTSType(str(ds.file_meta.TransferSyntaxUID))
    pi = gdcm.PhotometricInterpretation.GetPIType(str(ds.get("PhotometricInterpretation", "MONOCHROME2")))
    frames = []
    for src in generate_frames(ds.PixelData, number_of_frames=n_frames):
        fragment = gdcm.Fragment()
        fragment.SetByteStringValue(src)
        fragments = gdcm.SequenceOfFragments.New()
        fragments.AddFragment(fragment)
        elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
        elem.SetValue(fragments.__ref__())
        img = gdcm.Image()
        img.SetNumberOfDimensions(2)
        img.SetDimensions((cols, rows, 1))
        img.SetDataElement(elem)
        img.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
        img.SetTransferSyntax(gdcm.TransferSyntax(ts_type))
        img.SetPixelFormat(gdcm.PixelFormat(1, bits_alloc, bits_stored, bits_stored - 1, int(signed)))
        buf = img.GetBuffer()
        if buf is None:
            raise ValueError("GDCM returned no pixels for a frame")
        raw = buf.encode("utf-8", "surrogateescape")
        if len(raw) != rows * cols * dtype.itemsize:
            raise ValueError(f"GDCM returned {len(raw)} bytes for a {rows}x{cols} frame")
        frames.append(np.frombuffer(raw, dtype=dtype).reshape(rows, cols))
    if len(frames) != n_frames:
        raise ValueError(f"found {len(frames)} JPEG frames, expected {n_frames}")
    return np.stack(frames)


def first_frame_bytes(ds: Dataset, n_frames: int) -> bytes:
    """The encoded bytes of the first frame of encapsulated pixel data."""
    return next(generate_frames(ds.PixelData, number_of_frames=n_frames))
