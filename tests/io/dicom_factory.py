"""Small DICOM objects built in memory for decoder tests."""

from __future__ import annotations

import numpy as np
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from strokeray.io.dicom_encode import CTHeader, encode_ct, uid_from


def head_like(shape=(64, 64), seed=0) -> np.ndarray:
    """Air around a disc of brain-like HU with a bone ring: passes every plausibility check."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2) / (min(shape) / 2)
    hu = np.where(r < 0.8, 30.0, -1000.0) + rng.normal(0, 3, shape)
    hu[(r > 0.7) & (r < 0.8)] = 900.0
    return np.rint(hu).astype(np.float32)


def header(name="Doe^Jane", pid="MRN-0042", **kw) -> CTHeader:
    base = dict(
        patient_id=pid,
        patient_name=name,
        study_uid=uid_from("study"),
        series_uid=uid_from("series"),
        sop_uid=uid_from("sop"),
        instance_number=3,
        position_mm=(-100.0, -100.0, 42.5),
        spacing_mm=(0.45, 0.45),
        thickness_mm=5.0,
    )
    base.update(kw)
    return CTHeader(**base)


def ct_bytes(hu=None, syntax="explicit", **kw) -> bytes:
    return encode_ct(head_like() if hu is None else hu, header(**kw), syntax)


def edit(data: bytes, delete=(), **changes) -> bytes:
    """Re-save a DICOM object with some attributes changed or deleted."""
    ds = dcmread(DicomBytesIO(data))
    for key in delete:
        if key in ds:
            delattr(ds, key)
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
