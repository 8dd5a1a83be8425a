import pytest

from strokeray.datasets.layouts import (
    LabelsTable,
    apply_labels_csv,
    detect_layout,
    file_group,
    label_listing,
    parse_label,
)
from strokeray.io.sources import SourceEntry


def entries(*names):
    return [SourceEntry(uri=f"/r/{n}", name=n, size=1) for n in names]


def test_detect_layouts():
    assert detect_layout(["Training/KANAMA/DICOM/1.dcm", "Test/inmeyok/PNG/2.png"]) == "teknofest"
    assert detect_layout(["Dataset/Normal/1 (1).jpg", "Dataset/Stroke/2 (1).jpg"]) == "class_folders"
    assert detect_layout(["scans/a.dcm", "b.dcm"]) == "unlabelled"


def test_teknofest_rows():
    lab = label_listing(
        entries(
            "Training/Hemorrhagic/DICOM/00001_02.dcm",
            "Training/Hemorrhagic/PNG/00001_02.png",
            "Training/Hemorrhagic/MASK/00001_02.png",
            "Training/Hemorrhagic/OVERLAY/00001_02.png",
            "Test/ISKEMI/PNG/00009_01.png",
            "Test/ISKEMI/OVERLAY/00009_01.png",
            "Test/Non-Stroke/DICOM/00004_00.dcm",
        )
    )
    assert lab.layout == "teknofest"
    by = {r.name: r for r in lab.rows}
    assert set(by) == {
        "Training/Hemorrhagic/DICOM/00001_02.dcm",
        "Test/ISKEMI/PNG/00009_01.png",
        "Test/Non-Stroke/DICOM/00004_00.dcm",
    }
    assert lab.dropped_duplicates == ["Training/Hemorrhagic/PNG/00001_02.png"]
    h = by["Training/Hemorrhagic/DICOM/00001_02.dcm"]
    assert (h.label, h.lesion, h.mask_kind, h.layout_split) == (1, 2, "MASK", "train")
    assert h.mask_uri.endswith("MASK/00001_02.png")
    i = by["Test/ISKEMI/PNG/00009_01.png"]
    assert (i.label, i.lesion, i.mask_kind, i.layout_split) == (1, 1, "OVERLAY", "test")
    n = by["Test/Non-Stroke/DICOM/00004_00.dcm"]
    assert (n.label, n.lesion, n.mask_uri) == (0, 0, "")
    # File-name patient rule: both slices of patient 00001 share one pseudonymous key.
    assert h.group and h.group_rule == "underscore_name" and "00001" not in h.group


def test_class_folders_and_ctich_names():
    lab = label_listing(
        entries("Dataset/Normal/100 (1).jpg", "Dataset/Normal/100 (2).jpg", "Dataset/Stroke/58 (10).jpg")
    )
    rows = {r.name: r for r in lab.rows}
    assert rows["Dataset/Normal/100 (1).jpg"].label == 0
    assert (rows["Dataset/Stroke/58 (10).jpg"].label, rows["Dataset/Stroke/58 (10).jpg"].lesion) == (1, -1)
    assert rows["Dataset/Normal/100 (1).jpg"].group == rows["Dataset/Normal/100 (2).jpg"].group
    assert file_group("x/58 (10).jpg") == ("58", "ctich_name")
    assert file_group("x/scan.dcm") == ("", "")


def test_masks_in_a_mask_folder_pair_with_their_images():
    """CT-ICH's DICOM release: hemo_subset/<p>_<s>.dcm beside Masks_subset/<p>_<s>.dcm."""
    names = ("hemo_subset/049_21.dcm", "Masks_subset/049_21.dcm", "hemo_subset/050_24.dcm", "other/050_24.dcm")
    lab = label_listing(entries(*names), mask_lesion=2)
    by = {r.name: r for r in lab.rows}
    assert set(by) == {"hemo_subset/049_21.dcm", "hemo_subset/050_24.dcm", "other/050_24.dcm"}  # masks are no images
    paired = by["hemo_subset/049_21.dcm"]
    assert (paired.label, paired.lesion, paired.mask_uri, paired.mask_kind) == (
        1,
        2,
        "/r/Masks_subset/049_21.dcm",
        "MASK",
    )
    assert (by["hemo_subset/050_24.dcm"].mask_uri, by["hemo_subset/050_24.dcm"].label) == ("", -1)
    # Without a class the pairing still holds; the records say the mask needs one.
    plain = {r.name: r for r in label_listing(entries(*names)).rows}["hemo_subset/049_21.dcm"]
    assert (plain.label, plain.lesion, plain.mask_kind) == (-1, -1, "MASK")
    # TEKNOFEST keeps its own MASK/ siblings and does not pair across class folders.
    tek = label_listing(entries("KANAMA/DICOM/1_1.dcm", "KANAMA/MASK/1_1.png", "masks/1_1.png"), mask_lesion=1)
    assert {r.name: r.lesion for r in tek.rows}["KANAMA/DICOM/1_1.dcm"] == 2


def test_labels_csv_overrides_by_path_suffix():
    lab = label_listing(entries("root/Dataset/Normal/49 (1).jpg", "root/Dataset/Normal/50 (1).jpg"))
    csv = b"path,status,pid\nDataset/Normal/49 (1).jpg,ICH,49\n"
    matched = apply_labels_csv(lab.rows, csv, LabelsTable(label_col="status", patient_col="pid"))
    assert matched == 1
    r49, r50 = lab.rows
    assert (r49.label, r49.lesion, r49.group_rule) == (1, -1, "labels_csv")
    assert (r50.label, r50.lesion) == (0, 0)
    with pytest.raises(ValueError):
        apply_labels_csv(lab.rows, b"file,label\nx,1\n")
    with pytest.raises(ValueError):
        parse_label("maybe")


def test_labels_csv_in_utf16_reads_like_utf8():
    text = "path,label,patient\nDataset/Normal/49 (1).jpg,ICH,49\n"
    for data in (text.encode("utf-8"), text.encode("utf-16"), b"\xef\xbb\xbf" + text.encode("utf-8")):
        lab = label_listing(entries("root/Dataset/Normal/49 (1).jpg"), data)
        assert (lab.rows[0].label, lab.labels_matched) == (1, 1)


@pytest.mark.parametrize(
    "csv,message",
    [
        (b"path,label\n\xff\xfe\xfa,1\n", "labels.csv: not UTF-8 or UTF-16"),
        (b"path,label,lesion\na.jpg,1,7\n", "line 2: lesion '7' is not 0"),
        (b"path,label,lesion\na.jpg,1,1\nb.jpg,0,2\n", "line 3: label '0' contradicts lesion 2"),
        (b"path,label,lesion\na.jpg,1,0\n", "line 2: label '1' contradicts lesion 0"),
        (b"path,label\na.jpg,1\na.jpg,0\n", "line 3: 'a.jpg' is listed twice"),
        (b"path,label\nelsewhere/z.jpg,1\n", "matched none of the 1 files"),
    ],
)
def test_bad_labels_csv_is_an_error_naming_file_and_line(csv, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        label_listing(entries("a.jpg"), csv, labels_source="labels.csv")
