"""The Parquet shard contract: column names, meanings and the schema version.

Image columns are fixed-shape tensors stored as one fixed-size binary value a row, C order, with
their shape and dtype in the field's metadata (``strokeray.tensor``); readers turn them into
arrays with ``tensor_array`` (Ray Data readers: ``stages.runtime.with_tensors``). (A fixed-size list,
Ray's own storage, costs Parquet a value and a level per pixel: about 3 ms of CPU a slice to
write, against 0.4-0.5 ms for the same bytes, the same size on disk; benchmark row (e).) Identifiers are
pseudonyms, never raw IDs.
"""

import json

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 3  # 2: source_shape; 3: image columns as fixed-size binary (older shards still read)
TENSOR_META = b"strokeray.tensor"

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


def stored_tensor(name: str, values: np.ndarray) -> tuple[pa.Field, pa.Array]:
    """(N, *shape) ``values`` as a shard image column: one fixed-size binary value a row."""
    values = np.ascontiguousarray(values)
    width = int(np.prod(values.shape[1:])) * values.itemsize
    meta = {TENSOR_META: json.dumps({"shape": list(values.shape[1:]), "dtype": values.dtype.str}).encode()}
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(values)])
    return pa.field(name, pa.binary(width), nullable=False, metadata=meta), array


def stored_layout(field: pa.Field) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of a stored image column's rows, or None for any other column."""
    if not (pa.types.is_fixed_size_binary(field.type) and field.metadata and TENSOR_META in field.metadata):
        return None
    doc = json.loads(field.metadata[TENSOR_META])
    return tuple(doc["shape"]), np.dtype(doc["dtype"])


def binary_rows(column, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A fixed-size binary column's rows as (N, *shape) ``dtype``: a read-only view of its buffer."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.empty((0, *shape), dtype)
    width = array.type.byte_width
    flat = np.frombuffer(array.buffers()[1], np.uint8, count=len(array) * width, offset=array.offset * width)
    return flat.view(dtype).reshape(-1, *shape)


def tensor_array(column, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """A tensor column read back as (N, *shape): stored as fixed-size binary (schema 3), as Ray's
    tensor type, or as its storage (one flat list per row, schema 2 read without Ray); the same
    bytes either way, in a writable array of their own."""
    if pa.types.is_fixed_size_binary(column.type):
        return binary_rows(column, shape, dtype).copy()
    return np.stack(column.to_numpy(zero_copy_only=False)).reshape(-1, *shape)
