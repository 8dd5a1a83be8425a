import json

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from strokeray.io.dicom_decode import DecodeConfig, decode_dicom, decode_dicom_mask
from strokeray.io.dicom_encode import WRITE_SYNTAXES
from strokeray.io.errors import DecodeError, Reason

from .dicom_factory import ct_bytes, edit, head_like


def reason_of(data: bytes, cfg: DecodeConfig = DecodeConfig()) -> str:
    with pytest.raises(DecodeError) as err:
        decode_dicom(data, "x.dcm", cfg)
    return err.value.reason.value


@pytest.mark.parametrize("syntax", sorted(WRITE_SYNTAXES))
def test_lossless_syntaxes_round_trip_exactly(syntax):
    hu = head_like()
    (ct,) = decode_dicom(ct_bytes(hu, syntax))
    assert np.array_equal(ct.hu, hu)
    assert ct.hu.dtype == np.float32 and ct.hu_rule == "rescale_tags"
    assert ct.spacing_mm == (0.45, 0.45) and ct.thickness_mm == 5.0
    assert ct.position_mm == (-100.0, -100.0, 42.5) and ct.instance_number == 3


def test_rescale_slope_and_intercept_are_applied():
    hu = head_like()
    (ct,) = decode_dicom(ct_bytes(hu, intercept=-2048.0, slope=0.5))
    assert np.array_equal(ct.hu, hu)
    assert (ct.rescale_slope, ct.rescale_intercept) == (0.5, -2048.0)


def test_padding_value_becomes_air():
    hu = head_like()
    hu[:4, :] = -3024.0  # outside the scan FOV, flagged by PixelPaddingValue
    stored_pad = int(-3024 + 1024)
    (ct,) = decode_dicom(ct_bytes(hu, padding_value=stored_pad))
    assert ct.padding_pixels == 4 * 64
    assert np.all(ct.hu[:4] == -1024.0)
    assert np.array_equal(ct.hu[4:], hu[4:])


def test_monochrome1_ct_keeps_standard_hu():
    hu = head_like()
    data = edit(ct_bytes(hu), PhotometricInterpretation="MONOCHROME1")
    (ct,) = decode_dicom(data)
    assert ct.photometric == "MONOCHROME1"
    assert np.array_equal(ct.hu, hu)


def test_no_preamble_no_file_meta_decodes():
    hu = head_like()
    ds = dcmread(DicomBytesIO(ct_bytes(hu, "implicit")))
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    raw = buf.getvalue()
    assert raw[128:132] != b"DICM"
    (ct,) = decode_dicom(raw)
    assert np.array_equal(ct.hu, hu)


def test_missing_photometric_and_samples_get_defaults():
    hu = head_like()
    (ct,) = decode_dicom(edit(ct_bytes(hu), delete=("PhotometricInterpretation", "SamplesPerPixel")))
    assert np.array_equal(ct.hu, hu) and ct.photometric == "MONOCHROME2"


def test_secondary_capture_signed_hu_without_rescale_is_identity():
    hu = head_like()
    data = edit(
        ct_bytes(hu),
        delete=("RescaleSlope", "RescaleIntercept"),
        Modality="OT",
        SOPClassUID="1.2.840.10008.5.1.4.1.1.7",
    )
    # Stored values are HU - intercept: shift them back so the SC holds HU directly.
    ds = dcmread(DicomBytesIO(data))
    ds.PixelData = hu.astype(np.int16).tobytes()
    buf = DicomBytesIO()
    ds.save_as(buf)
    (ct,) = decode_dicom(buf.getvalue())
    assert ct.hu_rule == "identity"
    assert np.array_equal(ct.hu, hu)


def test_values_without_rescale_that_are_not_hu_are_refused():
    # Signed stored values 0..1900 (HU + 1024) without rescale tags: no air, so not HU; no guess.
    data = edit(ct_bytes(), delete=("RescaleSlope", "RescaleIntercept"))
    assert reason_of(data) == Reason.UNCALIBRATED_PIXELS.value


def test_unsigned_without_rescale_is_refused():
    ds = dcmread(DicomBytesIO(ct_bytes()))
    del ds.RescaleSlope, ds.RescaleIntercept
    arr = np.clip(ds.pixel_array.astype(np.int32), 0, None).astype(np.uint16)
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    buf = DicomBytesIO()
    ds.save_as(buf)
    assert reason_of(buf.getvalue()) == "uncalibrated_pixels"


def test_secondary_capture_can_be_disabled():
    data = edit(ct_bytes(), Modality="OT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    assert reason_of(data, DecodeConfig(accept_secondary_capture=False)) == "not_ct"


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "not_dicom"),
        (b"hello, this is a text file\n" * 20, "not_dicom"),
        (b"\x00" * 300, "not_dicom"),
    ],
)
def test_garbage_is_not_dicom(data, reason):
    assert reason_of(data) == reason


def test_typed_errors_for_bad_objects():
    good = ct_bytes()
    assert reason_of(edit(good, delete=("PixelData",))) == "no_pixel_data"
    assert reason_of(edit(good, Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")) == "not_ct"
    assert reason_of(edit(good, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])) == "not_axial"
    assert reason_of(edit(good, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])) == "not_axial"
    assert reason_of(good[: len(good) // 2]) == "corrupt_pixel_data"
    assert reason_of(edit(good, SamplesPerPixel=3, PhotometricInterpretation="RGB")) == "unsupported_image"


def test_gantry_tilt_is_still_axial():
    (ct,) = decode_dicom(edit(ct_bytes(), ImageOrientationPatient=[1, 0, 0, 0, 0.927, -0.375]))
    assert ct.orientation[4] == pytest.approx(0.927)


def test_unsupported_transfer_syntax():
    ds = dcmread(DicomBytesIO(ct_bytes()))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    buf = DicomBytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError) as err:
        decode_dicom(buf.getvalue())
    assert err.value.reason is Reason.UNSUPPORTED_TRANSFER_SYNTAX
    assert "MPEG2" in err.value.detail


def test_garbage_pixel_stream_is_corrupt(rng):
    ds = dcmread(DicomBytesIO(ct_bytes()))
    ds.PixelData = rng.integers(-32768, 32767, (64, 64)).astype(np.int16).tobytes()
    buf = DicomBytesIO()
    ds.save_as(buf)
    assert reason_of(buf.getvalue()) == "corrupt_pixel_data"


def test_no_phi_in_decoded_metadata():
    data = ct_bytes(name="Doe^Jane", pid="MRN-0042")
    (ct,) = decode_dicom(data)
    text = json.dumps(ct.describe(), default=str)
    ds = dcmread(DicomBytesIO(data))
    for secret in ("Doe", "Jane", "MRN-0042", str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)):
        assert secret not in text
    assert len(ct.patient_key) == 16 and ct.patient_key == decode_dicom(data)[0].patient_key


def test_error_str_carries_reason_and_source():
    err = DecodeError(Reason.NOT_CT, "modality MR", "a/b.dcm")
    assert str(err) == "not_ct: modality MR [a/b.dcm]"


def test_dicom_mask_reader():
    ds = dcmread(DicomBytesIO(ct_bytes()))
    m = np.full((64, 64), -32768, np.int16)
    m[10:20, 10:30] = 32767
    ds.PixelData = m.tobytes()
    buf = DicomBytesIO()
    ds.save_as(buf)
    mask = decode_dicom_mask(buf.getvalue())
    assert mask.dtype == bool and mask.sum() == 200 and mask[15, 15]


def test_claimed_geometry_is_checked_before_anything_is_allocated():
    """A 5 KB RLE object claiming 4096 frames of 65535 x 65535 would ask for 35 TB."""
    bomb = edit(ct_bytes(syntax="rle"), Rows=65535, Columns=65535, NumberOfFrames=4096)
    assert len(bomb) < 10_000 and reason_of(bomb) == "oversized_image"
    # Within the pixel limit but more than an RLE stream of this length can expand to.
    assert reason_of(edit(ct_bytes(syntax="rle"), Rows=4096, Columns=4096)) == "corrupt_pixel_data"
    # An uncompressed stream shorter than its geometry.
    assert reason_of(edit(ct_bytes(), Rows=128, Columns=128)) == "corrupt_pixel_data"
    assert reason_of(ct_bytes(), DecodeConfig(max_pixels=64 * 64 - 1)) == "oversized_image"


def test_every_plugins_reason_is_kept():
    """The preferred JPEG-LS decoder's failure is reported beside the fallbacks', not dropped."""
    good = ct_bytes(syntax="jpegls")
    at = good.find(b"\xff\xd8\xff\xf7") + 40
    bad = good[:at] + bytes(b ^ 0xA5 for b in good[at:-20]) + good[-20:]
    with pytest.raises(DecodeError) as err:
        decode_dicom(bad, "x.dcm")
    assert err.value.reason == Reason.CORRUPT_PIXEL_DATA
    assert "pyjpegls:" in err.value.detail and "other plugins:" in err.value.detail
