"""DICOM bytes in, CT slices in Hounsfield units out (one per frame), or a typed DecodeError.

Tolerant like pydicom itself: files without preamble or file meta, big-endian and deflated
syntaxes, Enhanced CT with rescale only in functional groups, padding values. Strict about what
comes out: HU are checked for plausibility, so a stream that decodes to garbage is quarantined.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.utils import get_j2k_parameters
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from strokeray.io import dicom_pixels
from strokeray.io.ct_slice import CTSlice
from strokeray.io.errors import DecodeError, Reason
from strokeray.io.pseudonym import pseudonym

CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
SECONDARY_CAPTURE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
}

NATIVE_SYNTAXES = {
    ImplicitVRLittleEndian: "Implicit VR Little Endian",
    ExplicitVRLittleEndian: "Explicit VR Little Endian",
    ExplicitVRBigEndian: "Explicit VR Big Endian",
    DeflatedExplicitVRLittleEndian: "Deflated Explicit VR Little Endian",
}
COMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4, 12-bit)",
    "1.2.840.10008.1.2.4.53": "JPEG Spectral Selection (Process 6 & 8, retired)",
    "1.2.840.10008.1.2.4.55": "JPEG Full Progression (Process 10 & 12, retired)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless (Process 14, SV1)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}
SUPPORTED_SYNTAXES: dict[str, str] = {**{str(k): v for k, v in NATIVE_SYNTAXES.items()}, **COMPRESSED_SYNTAXES}

# pydicom tries GDCM first. Measured on 512x512 CT (see the ingest benchmark): GDCM is the
# fastest for JPEG 2000 (19 ms vs 28 ms for openjpeg) and pylibjpeg-rle already leads for RLE, but
# CharLS (pyjpegls) decodes JPEG-LS in 5.4 ms against GDCM's 7.8 ms. Any failure of the preferred
# plugin falls back to pydicom's own order, so a stream only one decoder understands still decodes.
PREFERRED_PLUGIN = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
}


@dataclass(frozen=True)
class DecodeConfig:
    """Rules for turning stored values into HU; the defaults suit clinical head CT."""

    # Secondary Captures (Modality OT) are accepted when their signed pixels verify as HU.
    accept_secondary_capture: bool = True
    padding_hu: float = -1024.0  # what PixelPaddingValue pixels become (outside the scan = air)
    # Plausible HU span: -3100 admits the -3024/-2048 that scanners write outside the FOV,
    # 4100 admits dense bone and most metal on the 12-bit scale.
    plausible_hu: tuple[float, float] = (-3100.0, 4100.0)
    min_plausible_fraction: float = 0.97  # less than this in span = garbage stream
    # Only axial slices: scouts (ImageType LOCALIZER) and reformats whose plane normal is more
    # than 45 degrees from the patient's z axis are rejected as not_axial.
    axial_only: bool = True
    max_frames: int = 4096
    # Pixels of one object, all frames: 512 Mpx is 2,000 frames of 512x512 (2 GiB as float32 HU).
    # A header claiming more is refused before anything is allocated.
    max_pixels: int = 512 * 1024 * 1024


def _is_part10(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dataset(data: bytes, source: str = "") -> Dataset:
    """Parse DICOM bytes, with or without preamble and file meta; raises not_dicom otherwise.

    A file cut short inside its pixel data raises corrupt_pixel_data (pydicom only warns and
    returns a partial data set).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=not _is_part10(data))
            keys = [e.tag for e in ds]  # evaluate deferred elements so a text file fails here
        except Exception as exc:  # pydicom raises many types on garbage; all mean "not DICOM"
            raise DecodeError(Reason.NOT_DICOM, f"cannot parse DICOM: {exc}", source) from exc
    truncated = [str(w.message) for w in caught if _TRUNCATION_HINTS.search(str(w.message))]
    if truncated:
        header = _header_only(data)
        if header is not None and "Rows" in header:
            raise DecodeError(
                Reason.CORRUPT_PIXEL_DATA, f"file ends inside the pixel data (truncated): {truncated[0]}", source
            )
        raise DecodeError(Reason.NOT_DICOM, f"file ends inside the header (truncated): {truncated[0]}", source)
    if not keys or not any(t in ds for t in (0x00080016, 0x00080060, 0x00280010, 0x7FE00010)):
        raise DecodeError(Reason.NOT_DICOM, "no DICOM data elements found", source)
    _repair_file_meta(ds)
    return ds


_TRUNCATION_HINTS = re.compile(r"End of file reached|bytes, only \d+|unexpected end|truncat", re.I)


def _header_only(data: bytes) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        except Exception:  # a header that does not parse is simply not there
            return None


def _repair_file_meta(ds: Dataset) -> None:
    """Give objects without file meta a transfer syntax matching how they were actually read."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _float(value, default: float | None = None) -> float | None:
    try:
        if value is None or value == "":
            return default
        return float(value)
    except (TypeError, ValueError):
        return default


def _functional_group(ds: Dataset, frame: int, seq: str, attr: str):
    """An attribute from the per-frame functional group of ``frame``, else the shared group."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq_of_groups = ds.get(groups)
        if not seq_of_groups or len(seq_of_groups) <= index:
            continue
        item = seq_of_groups[index].get(seq)
        if item and attr in item[0]:
            return item[0].get(attr)
    return None


def _frame_attr(ds: Dataset, frame: int, seq: str, attr: str):
    value = ds.get(attr)
    return value if value not in (None, "") else _functional_group(ds, frame, seq, attr)


def _check_modality(ds: Dataset, source: str) -> bool:
    """Raise not_ct for non-CT objects; return True when HU must be verified (Secondary Capture)."""
    modality = str(ds.get("Modality", "") or "").upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    if sop in CT_SOP_CLASSES or (modality == "CT" and sop not in SECONDARY_CAPTURE_SOP_CLASSES):
        return False
    if sop in SECONDARY_CAPTURE_SOP_CLASSES and modality in ("OT", "CT", ""):
        return True
    if not modality and not sop:  # a bare object with pixels: only verified HU will pass
        return True
    name = getattr(UID(sop), "name", sop) if sop else "no SOP class"
    raise DecodeError(Reason.NOT_CT, f"modality {modality or '?'} ({name}) is not CT", source)


def _check_axial(ds: Dataset, source: str) -> None:
    """Raise not_axial for localizers and sagittal/coronal planes (gantry tilt is fine)."""
    image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        raise DecodeError(Reason.NOT_AXIAL, "ImageType LOCALIZER (a scout, not a slice)", source)
    iop = _frame_attr(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    if _valid_seq(iop, 6):
        row, col = np.array([float(v) for v in iop[:3]]), np.array([float(v) for v in iop[3:]])
        normal = np.cross(row, col)
        norm = float(np.linalg.norm(normal))
        if norm > 0 and abs(normal[2]) / norm < np.cos(np.deg2rad(45.0)):
            raise DecodeError(
                Reason.NOT_AXIAL, f"plane normal {np.round(normal / norm, 3).tolist()} is not axial", source
            )


# RLE Lossless packs at most 128 equal bytes into 2: a stream can expand 64-fold, no more.
RLE_MAX_EXPANSION = 64


def check_claimed_size(ds: Dataset, ts: str, n_frames: int, max_pixels: int, source: str) -> None:
    """Refuse a header whose geometry is impossible for its stream, before decoding allocates it:
    more pixels than ``max_pixels`` (oversized_image), more than an uncompressed stream holds or
    than RLE can expand to (corrupt_pixel_data)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    pixels = rows * cols * n_frames
    if pixels > max_pixels:
        raise DecodeError(
            Reason.OVERSIZED_IMAGE,
            f"{n_frames} frame(s) of {rows}x{cols} = {pixels} pixels, over the limit of {max_pixels}",
            source,
        )
    need = pixels * ((int(ds.BitsAllocated) + 7) // 8)
    stream = len(ds.PixelData or b"")
    if ts in NATIVE_SYNTAXES and int(ds.BitsAllocated) >= 8 and stream < need:
        raise DecodeError(
            Reason.CORRUPT_PIXEL_DATA, f"pixel data holds {stream} bytes, the header needs {need}", source
        )
    if ts == "1.2.840.10008.1.2.5" and need > RLE_MAX_EXPANSION * stream + 64 * n_frames:
        raise DecodeError(
            Reason.CORRUPT_PIXEL_DATA,
            f"RLE stream of {stream} bytes cannot hold the {need} bytes the header claims",
            source,
        )


def _stored_pixels(ds: Dataset, ts: str, n_frames: int, source: str) -> np.ndarray:
    """Decoded stored values as (frames, rows, cols)."""
    try:
        if ts in dicom_pixels.GDCM_ONLY_SYNTAXES or (ts == dicom_pixels.JPEG_EXTENDED_12 and int(ds.BitsStored) > 8):
            arr = dicom_pixels.decode_jpeg_with_gdcm(ds, n_frames)
        else:
            arr = _pydicom_pixels(ds, ts)
    except MemoryError as exc:
        raise DecodeError(Reason.OVERSIZED_IMAGE, f"decoding ran out of memory: {exc}", source) from exc
    except Exception as exc:  # decoder plugins raise many types; all mean the stream is unusable
        raise DecodeError(
            Reason.CORRUPT_PIXEL_DATA,
            f"{SUPPORTED_SYNTAXES.get(ts, ts)} pixel data failed to decode: {_first_line(exc)}",
            source,
        ) from exc
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != n_frames:
        raise DecodeError(Reason.UNSUPPORTED_IMAGE, f"pixel array of shape {arr.shape} for {n_frames} frame(s)", source)
    if ts in dicom_pixels.J2K_SYNTAXES and arr.dtype.kind == "u" and int(ds.get("PixelRepresentation", 0)) == 0:
        # The codestream is authoritative: Toshiba writes signed J2K under PixelRepresentation 0.
        if get_j2k_parameters(dicom_pixels.first_frame_bytes(ds, n_frames)).get("is_signed"):
            arr = arr.view(np.dtype(f"i{arr.dtype.itemsize}"))
    return arr


def _pydicom_pixels(ds: Dataset, ts: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preferred = PREFERRED_PLUGIN.get(ts)
        if not preferred:
            return ds.pixel_array
        try:
            ds.pixel_array_options(decoding_plugin=preferred)
            return ds.pixel_array
        except Exception as first:  # noqa: BLE001 - the preferred plugin refused this stream; let pydicom try all
            ds.pixel_array_options(decoding_plugin="")
            try:
                return ds.pixel_array
            except Exception as rest:  # noqa: BLE001 - keep both reasons, as pydicom does for its plugins
                raise ValueError(f"{preferred}: {_first_line(first)}; other plugins: {_first_line(rest)}") from rest


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return " ".join(lines[:3])[:300] if lines else type(exc).__name__


def _padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Pixels equal to PixelPaddingValue (or within the padding range), in the stored domain."""
    pad = ds.get("PixelPaddingValue")
    if pad is None or isinstance(pad, (bytes, list)):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    info = np.iinfo(stored.dtype) if stored.dtype.kind in "iu" else None
    bits = stored.dtype.itemsize * 8

    def as_stored(v: int) -> int:
        # Padding is often written with the wrong signedness (US vs SS); reinterpret its bits.
        v = int(v)
        if info is not None and not (info.min <= v <= info.max):
            v = v & ((1 << bits) - 1) if v < 0 else v - (1 << bits)
        return v

    lo = as_stored(pad)
    if limit is None or isinstance(limit, (bytes, list)):
        return stored == lo
    hi = as_stored(limit)
    lo, hi = min(lo, hi), max(lo, hi)
    return (stored >= lo) & (stored <= hi)


def _verify_hu(hu: np.ndarray, valid: np.ndarray | None, cfg: DecodeConfig, need_air: bool) -> str | None:
    """Why these values are not plausible HU, or None when they are."""
    values = hu if valid is None else hu[valid]
    if values.size == 0:
        return None
    sample = values.ravel()[:: max(1, values.size // 65536)]
    lo, hi = cfg.plausible_hu
    inside = float(np.mean((sample >= lo) & (sample <= hi)))
    if inside < cfg.min_plausible_fraction:
        return f"only {inside:.0%} of pixels lie in the plausible HU range [{lo:g}, {hi:g}]"
    if need_air and float(np.percentile(sample, 1)) > -500.0:
        return (
            "no rescale tags and no air below -500 in the stored values, so they are not HU"
            f" (1st percentile {float(np.percentile(sample, 1)):g})"
        )
    return None


def decode_dicom(data: bytes, source: str = "", cfg: DecodeConfig = DecodeConfig()) -> list[CTSlice]:
    """Decode one DICOM object into CT slices in HU, one per frame.

    HU rule: RescaleSlope/Intercept from the top level, else from the frame's functional groups,
    else identity (DICOM's meaning of an absent Modality LUT) accepted only for signed pixels that
    verify as HU (air present, values in range). MONOCHROME1 does not change HU: it is a display
    instruction applied after the Modality LUT (PS3.3 C.7.6.3.1.2).
    """
    if not data:
        raise DecodeError(Reason.NOT_DICOM, "empty file", source)
    ds = read_dataset(data, source)
    verify_identity = _check_modality(ds, source)
    if "PixelData" not in ds:
        alt = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        raise DecodeError(
            Reason.NO_PIXEL_DATA if not alt else Reason.UNSUPPORTED_IMAGE,
            "object has no Pixel Data element" if not alt else f"{alt[0]} is not supported",
            source,
        )
    if verify_identity and not cfg.accept_secondary_capture:
        raise DecodeError(Reason.NOT_CT, "Secondary Capture objects are disabled by configuration", source)
    if cfg.axial_only:
        _check_axial(ds, source)
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ts not in SUPPORTED_SYNTAXES:
        name = getattr(UID(ts), "name", "") or "unknown"
        raise DecodeError(Reason.UNSUPPORTED_TRANSFER_SYNTAX, f"transfer syntax {ts} ({name})", source)
    for tag, default in (("SamplesPerPixel", 1), ("PhotometricInterpretation", "MONOCHROME2")):
        if tag not in ds:
            ds.add_new(tag, "US" if tag == "SamplesPerPixel" else "CS", default)
    photometric = str(ds.PhotometricInterpretation).upper()
    if int(ds.SamplesPerPixel) != 1 or not photometric.startswith("MONOCHROME"):
        raise DecodeError(
            Reason.UNSUPPORTED_IMAGE,
            f"{ds.SamplesPerPixel} samples per pixel, {photometric}: not a greyscale CT image",
            source,
        )
    for tag in ("Rows", "Columns", "BitsAllocated"):
        if not ds.get(tag):
            raise DecodeError(Reason.CORRUPT_PIXEL_DATA, f"missing or zero {tag}", source)
    if "BitsStored" not in ds:
        ds.BitsStored = ds.BitsAllocated
    n_frames = int(_float(ds.get("NumberOfFrames"), 1) or 1)
    if not 1 <= n_frames <= cfg.max_frames:
        raise DecodeError(Reason.UNSUPPORTED_IMAGE, f"{n_frames} frames", source)
    check_claimed_size(ds, ts, n_frames, cfg.max_pixels, source)

    stored = _stored_pixels(ds, ts, n_frames, source)
    padding = _padding_mask(ds, stored)

    sop_uid = str(ds.get("SOPInstanceUID", "") or "") or hashlib.sha256(data).hexdigest()
    patient = pseudonym(ds.get("PatientID"), "patient")
    study = pseudonym(ds.get("StudyInstanceUID"), "study")
    series = pseudonym(ds.get("SeriesInstanceUID"), "series")
    instance_number = ds.get("InstanceNumber")
    top_spacing = ds.get("PixelSpacing")
    out: list[CTSlice] = []
    for f in range(n_frames):
        slope = _float(ds.get("RescaleSlope"))
        intercept = _float(ds.get("RescaleIntercept"))
        rule = "rescale_tags"
        if slope is None or intercept is None:
            fg_slope = _float(_functional_group(ds, f, "PixelValueTransformationSequence", "RescaleSlope"))
            fg_intercept = _float(_functional_group(ds, f, "PixelValueTransformationSequence", "RescaleIntercept"))
            if fg_slope is not None and fg_intercept is not None:
                slope, intercept, rule = fg_slope, fg_intercept, "functional_groups"
            else:
                slope, intercept, rule = 1.0, 0.0, "identity"
        need_air = rule == "identity"
        if need_air and stored.dtype.kind == "u":
            raise DecodeError(
                Reason.UNCALIBRATED_PIXELS,
                "unsigned pixels without RescaleSlope/RescaleIntercept: HU cannot be known (no offset is guessed)",
                source,
            )
        frame_pad = padding[f] if padding is not None else None
        hu = stored[f].astype(np.float32)
        if slope != 1.0:
            hu *= np.float32(slope)
        if intercept != 0.0:
            hu += np.float32(intercept)
        valid = None if frame_pad is None else ~frame_pad
        problem = _verify_hu(hu, valid, cfg, need_air=need_air)
        if problem:
            reason = Reason.UNCALIBRATED_PIXELS if need_air else Reason.CORRUPT_PIXEL_DATA
            if photometric == "MONOCHROME1":
                problem += "; photometric MONOCHROME1"
            raise DecodeError(reason, f"frame {f}: {problem}", source)
        n_pad = 0
        if frame_pad is not None:
            n_pad = int(frame_pad.sum())
            hu[frame_pad] = cfg.padding_hu
        spacing = _frame_attr(ds, f, "PixelMeasuresSequence", "PixelSpacing") if top_spacing is None else top_spacing
        thickness = _float(_frame_attr(ds, f, "PixelMeasuresSequence", "SliceThickness"))
        position = _frame_attr(ds, f, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _frame_attr(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
        out.append(
            CTSlice(
                hu=hu,
                is_hu=True,
                instance_key=pseudonym(f"{sop_uid}:{f}", "instance"),
                patient_key=patient,
                study_key=study,
                series_key=series,
                frame=f,
                n_frames=n_frames,
                instance_number=int(instance_number) if _float(instance_number) is not None else None,
                position_mm=_triple(position),
                orientation=tuple(float(v) for v in orientation) if _valid_seq(orientation, 6) else None,
                spacing_mm=_spacing(spacing),
                thickness_mm=thickness if thickness and thickness > 0 else None,
                modality=str(ds.get("Modality", "") or ""),
                sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
                photometric=photometric,
                transfer_syntax=ts,
                rescale_slope=float(slope),
                rescale_intercept=float(intercept),
                hu_rule=rule,
                padding_pixels=n_pad,
            )
        )
    return out


def _valid_seq(value, n: int) -> bool:
    try:
        return value is not None and len(value) == n and all(_float(v) is not None for v in value)
    except TypeError:
        return False


def _triple(value) -> tuple[float, float, float] | None:
    return tuple(float(v) for v in value) if _valid_seq(value, 3) else None  # type: ignore[return-value]


def _spacing(value) -> tuple[float, float] | None:
    if not _valid_seq(value, 2):
        return None
    row, col = (float(v) for v in value)
    return (row, col) if row > 0 and col > 0 else None


def decode_dicom_mask(data: bytes, source: str = "") -> np.ndarray:
    """A binary lesion mask stored as DICOM pixels (first frame): True where the value is above
    the mask's background (its minimum), e.g. CT-ICH's -32768 background / 32767 lesion."""
    ds = read_dataset(data, source)
    if "PixelData" not in ds:
        raise DecodeError(Reason.NO_PIXEL_DATA, "mask object has no Pixel Data element", source)
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ts not in SUPPORTED_SYNTAXES:
        raise DecodeError(Reason.UNSUPPORTED_TRANSFER_SYNTAX, f"transfer syntax {ts}", source)
    for tag, default in (("SamplesPerPixel", 1), ("PhotometricInterpretation", "MONOCHROME2")):
        if tag not in ds:
            ds.add_new(tag, "US" if tag == "SamplesPerPixel" else "CS", default)
    n_frames = int(_float(ds.get("NumberOfFrames"), 1) or 1)
    for tag in ("Rows", "Columns", "BitsAllocated"):
        if not ds.get(tag):
            raise DecodeError(Reason.CORRUPT_PIXEL_DATA, f"mask: missing or zero {tag}", source)
    check_claimed_size(ds, ts, n_frames, DecodeConfig.max_pixels, source)
    stored = _stored_pixels(ds, ts, n_frames, source)[0]
    return stored > stored.min() if stored.max() > stored.min() else np.zeros(stored.shape, dtype=bool)


def dicom_patient_key(data: bytes) -> tuple[str, str]:
    """(pseudonymous patient key, the tag it came from) from a DICOM header (the first bytes of a
    file suffice): PatientID, else the study, else the series UID; ("", "") when none parses.
    Only a PatientID names a patient; the UIDs are a fallback for files with nothing better."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            for tag, kind in (("PatientID", "patient"), ("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series")):
                value = str(ds.get(tag, "") or "").strip()
                if value:
                    key = pseudonym(value, "patient") if kind == "patient" else pseudonym(f"{kind}:{value}", "patient")
                    return key, tag
        except Exception:  # a header we cannot parse has no patient; decoding will say why
            return "", ""
    return "", ""
