"""Image columns stored as fixed-size binary: what is written reads back byte for byte."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from strokeray.io.shard_schema import stored_layout, stored_tensor, tensor_array


def image_table(images: np.ndarray) -> pa.Table:
    column, array = stored_tensor("cls_image", images)
    ids = pa.array(np.arange(len(images)))
    return pa.Table.from_arrays([ids, array], schema=pa.schema([pa.field("id", pa.int64()), column]))


def test_stored_images_round_trip_through_parquet(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 5, 4), dtype=np.uint8)
    pq.write_table(image_table(images), tmp_path / "s.parquet")
    # a filtered read of one column keeps the field's layout
    back = pq.read_table(tmp_path / "s.parquet", columns=["cls_image"], filters=[("id", ">=", 2)])
    assert stored_layout(back.schema.field("cls_image")) == ((3, 5, 4), np.dtype(np.uint8))
    assert np.array_equal(tensor_array(back["cls_image"], (3, 5, 4)), images[2:])
    # a slice starts at its own row, not at the buffer's start
    assert np.array_equal(tensor_array(back["cls_image"].slice(1, 2), (3, 5, 4)), images[3:5])
    assert tensor_array(back["cls_image"].slice(0, 0), (3, 5, 4)).shape == (0, 3, 5, 4)
    mine = tensor_array(back["cls_image"], (3, 5, 4))
    mine[0] = 0  # an array of its own: writable, and the table keeps its bytes
    assert np.array_equal(tensor_array(back["cls_image"], (3, 5, 4)), images[2:])


def test_other_binary_columns_are_not_images():
    table = pa.table({"blob": pa.array([b"ab", b"cd"], pa.binary(2))})
    assert stored_layout(table.schema.field("blob")) is None


def test_schema_2_storage_still_reads():
    images = np.arange(2 * 4, dtype=np.uint8).reshape(2, 2, 2)
    lists = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 4)
    assert np.array_equal(tensor_array(lists, (2, 2)), images)
