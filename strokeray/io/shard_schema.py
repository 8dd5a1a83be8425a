"""The Parquet shard contract: column names, meanings and the schema version.

Image columns are fixed-shape tensors (Ray's tensor extension type; the storage is a plain
fixed-size list that any Arrow reader can open). Identifiers are pseudonyms, never raw IDs.
"""

import numpy as np

SCHEMA_VERSION = 2  # 2: source_shape (a version-1 ingest is redone with --overwrite)

# Scalar columns in order, with their meaning; the tensor columns follow.
SCALAR_COLUMNS = {
    "id": "stable slice id: HMAC of SOPInstanceUID + frame (DICOM) or of the file's bytes (exports)",
    "source": "object name relative to the ingested root (archive members: archive/member)",
    "patient": "pseudonymous patient key (the split group)",
    "study": "pseudonymous study key ('' for exports)",
    "series": "pseudonymous series key ('' for exports)",
    "split": "train, val or test (patient-grouped)",
    "label": "-1 unknown, 0 non-stroke, 1 stroke",
    "lesion": "-1 unknown, 0 none, 1 ischemic, 2 hemorrhagic",
    "has_mask": "whether seg_mask is a real annotation (else zeros)",
    "instance_number": "DICOM InstanceNumber (-1 when absent)",
    "frame": "frame index within a multi-frame object",
    "z_mm": "slice position along the patient axis (NaN when unknown)",
    "source_spacing_mm": "source pixel spacing, row (NaN when unknown)",
    "thickness_mm": "slice thickness (NaN when unknown)",
    "cls_spacing_mm": "classification view pixel size in mm (NaN when the source spacing is unknown)",
    "seg_spacing_mm": "segmentation view pixel size in mm (NaN when unknown)",
    "is_hu": "true for DICOM HU, false for windowed exports (pseudo-HU)",
    "hu_rule": "how HU were obtained",
    "transfer_syntax": "source transfer syntax UID, or 'raster'",
    "brain_found": "whether a brain mask was found (no: skull base, vertex, neck)",
    "brain_area_mm2": "brain area in the source slice (NaN when the spacing is unknown)",
    "seg_box": "segmentation view box in source pixels: row0, col0, height, width",
    "cls_box": "classification view box in source pixels",
    "source_shape": "source slice rows, columns: with seg_box, maps a view mask back to the source grid",
}
TENSOR_COLUMNS = {
    "cls_image": "classification view, (channels, 224, 224) uint8, channels = HU windows",
    "seg_image": "segmentation view, (channels, 256, 256) uint8",
    "seg_mask": "lesion classes in the segmentation view, (256, 256) uint8",
}
QUARANTINE_COLUMNS = ("source", "stage", "reason", "detail")


def tensor_array(column, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor column read back as (N, *shape): Ray's extension type when Ray registered it, else
    its storage (one flat list per row); either way the same bytes."""
    return np.stack(column.to_numpy(zero_copy_only=False)).reshape(-1, *shape)
