"""The DICOMweb client's framing and the filesystem's addressing (no server: see tests/pacs)."""

import pytest

from strokeray.io.dicomweb import DicomwebError, first_value, multipart_body, multipart_parts
from strokeray.io.dicomweb_fs import DicomwebFileSystem, is_dicomweb
from strokeray.io.sources import _full_uri


def test_multipart_round_trip_keeps_binary_payloads_exactly():
    payloads = [b"DICM\r\n\r\n--x\x00\xff" * 50, b"", b"\r\n"]
    content_type, body = multipart_body(payloads)
    assert list(multipart_parts(content_type, body)) == payloads


def test_multipart_with_quoted_boundary_and_preamble():
    body = b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nABC\r\n--b1--\r\n"
    assert list(multipart_parts('multipart/related; type="application/dicom"; boundary="b1"', body)) == [b"ABC"]


def test_a_plain_dicom_answer_is_one_part():
    assert list(multipart_parts("application/dicom", b"DICM")) == [b"DICM"]


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("multipart/related; boundary=b1", b"--b1\r\nContent-Type: application/dicom\r\n\r\nABC"),  # cut off
        ("multipart/related; boundary=b1", b"--b1\r\nno separator--b1--"),
        ("multipart/related", b"--b1--"),  # no boundary
    ],
)
def test_broken_multipart_is_an_error_not_a_short_instance(content_type, body):
    with pytest.raises(DicomwebError):
        list(multipart_parts(content_type, body))


def test_dicom_json_first_value():
    d = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00080060": {"vr": "CS"}}
    assert first_value(d, "0020000D") == "1.2.3"
    assert first_value(d, "00080060") == "" and first_value(d, "00080018") == ""


def test_paths_split_into_service_root_query_and_uids():
    split = DicomwebFileSystem._split
    assert split("h:8042/dicom-web") == ("h:8042/dicom-web", {}, [])
    assert split("h:8042/dicom-web?ModalitiesInStudy=CT&StudyDate=20260101-") == (
        "h:8042/dicom-web",
        {"ModalitiesInStudy": "CT", "StudyDate": "20260101-"},
        [],
    )
    assert split("h/studies/1.2/series/3.4/instances/5.6") == ("h", {}, ["1.2", "3.4", "5.6"])
    assert split("h/wado/studies/1.2") == ("h/wado", {}, ["1.2"])
    with pytest.raises(ValueError):
        split("h/studies/1.2/instances/5.6")


def test_instances_are_named_by_pseudonyms_and_addressed_with_their_scheme():
    fs = DicomwebFileSystem(scheme="https")
    path = "pacs:443/dicom-web/studies/1.2.840.1/series/1.2.840.2/instances/1.2.840.3"
    name = fs.entry_name(path)
    assert "1.2.840" not in name and name.endswith(".dcm") and name.count("/") == 2
    assert fs.entry_name(path.replace("840.3", "840.4")) != name
    assert _full_uri(fs, path) == f"dicomweb+https://{path}"
    assert fs._strip_protocol(f"dicomweb+https://{path}/") == path
    assert is_dicomweb("dicomweb+http://h/dicom-web") and not is_dicomweb("http://h/dicom-web")
