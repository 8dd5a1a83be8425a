"""Write HU images as CT Image Storage DICOM, uncompressed or in a lossless compressed syntax.

Used by the phantom generator and by tests that need odd files; real archives are only read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

# Syntaxes we can write, by short name (all lossless, so HU survive exactly).
WRITE_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "bigendian": ExplicitVRBigEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
}

UID_ROOT = "1.2.826.0.1.3680043.10.1522."  # strokeray synthetic objects (under pydicom's root)


@dataclass
class CTHeader:
    """Per-slice header values; UIDs are generated deterministically from the given seeds."""

    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int
    position_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float]
    thickness_mm: float
    intercept: float = -1024.0
    slope: float = 1.0
    padding_value: int | None = None  # stored value written outside the head's FOV, if any


def uid_from(seed: str) -> str:
    """A deterministic DICOM UID from a seed string (same seed, same UID)."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[seed])


def encode_ct(hu: np.ndarray, header: CTHeader, syntax: str = "explicit", monochrome1: bool = False) -> bytes:
    """Part-10 DICOM bytes of one CT slice; ``hu`` is rounded to the stored integer grid."""
    if syntax not in WRITE_SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}; choose from {', '.join(WRITE_SYNTAXES)}")
    ts = WRITE_SYNTAXES[syntax]
    stored = np.rint((np.asarray(hu, dtype=np.float64) - header.intercept) / header.slope)
    stored = np.clip(stored, -32768, 32767).astype(np.int16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(header.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts.is_compressed else ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = header.sop_uid
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "strokeray phantom"
    ds.PatientID = header.patient_id
    ds.PatientName = header.patient_name
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.FrameOfReferenceUID = uid_from(header.study_uid + "/for")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = header.instance_number
    ds.BodyPartExamined = "HEAD"
    ds.ImagePositionPatient = [f"{v:.3f}" for v in header.position_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{header.position_mm[2]:.3f}"
    ds.PixelSpacing = [f"{v:.6g}" for v in header.spacing_mm]
    ds.SliceThickness = f"{header.thickness_mm:g}"
    ds.KVP = "120"
    ds.RescaleIntercept = f"{header.intercept:g}"
    ds.RescaleSlope = f"{header.slope:g}"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if header.padding_value is not None:
        ds.add_new(0x00280120, "SS", int(header.padding_value))  # PixelPaddingValue
    # PixelData is written as given, so big-endian syntaxes need big-endian bytes.
    ds.PixelData = stored.astype(">i2" if not ts.is_little_endian else "<i2").tobytes()
    ds.set_original_encoding(ts.is_implicit_VR, ts.is_little_endian)
    if ts.is_compressed:
        ds.compress(ts, stored, generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, little_endian=ts.is_little_endian, implicit_vr=ts.is_implicit_VR)
    return buf.getvalue()
