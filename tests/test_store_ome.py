"""The store's OME-NGFF 0.5 metadata, read back by the reference reader (``ome-zarr``).

Why a real reader: our own tests only check the attributes we wrote against what we meant to
write; napari, QuPath or OMERO users open a case group with ``ome-zarr``, so this test opens it
the same way and checks that the image, the label image, the axes and the voxel spacing come
out as stored.
"""

from __future__ import annotations

import numpy as np
import ome_zarr.io as ome_io
import ome_zarr.reader as ome_reader
import pytest

from action_ray.store import CaseMeta, create_store
from action_ray.store.schema import case_key


@pytest.fixture()
def case_group(tmp_path):
    url = str(tmp_path / "store.zarr")
    store = create_store(url, name="ome", modality="MR", layout="folder",
                         classes={0: "background", 1: "myo", 2: "lv"})
    label = np.zeros((3, 16, 20), np.uint8)
    label[:, 4:8, 5:9] = 1
    label[:, 10:12, 10:14] = 2
    image = (label * 40 + np.arange(20, dtype=np.float32)).astype(np.float32)
    spacing = (5.0, 1.5, 1.25)
    store.write_case(CaseMeta("case1", "patient1", "train", spacing, np.eye(4).tolist(), {"image": "x"}),
                     image, label)
    return f"{url}/{case_key('case1')}", image, label, spacing


def test_the_reference_reader_sees_the_image_and_its_label_image(case_group):
    path, image, label, spacing = case_group
    location = ome_io.parse_url(path)
    assert location is not None and location.version == "0.5"
    nodes = list(ome_reader.Reader(location)())
    image_node = nodes[0]
    assert any(isinstance(spec, ome_reader.Multiscales) for spec in image_node.specs)
    np.testing.assert_array_equal(np.asarray(image_node.data[0]), image)
    axes = image_node.metadata["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"] and {a["unit"] for a in axes} == {"millimeter"}
    assert image_node.metadata["coordinateTransformations"][0] == [{"type": "scale", "scale": list(spacing)}]

    label_nodes = [n for n in nodes if any(isinstance(s, ome_reader.Label) for s in n.specs)]
    assert len(label_nodes) == 1
    np.testing.assert_array_equal(np.asarray(label_nodes[0].data[0]), label)
    assert sorted(label_nodes[0].metadata["color"]) == [0, 1, 2]  # one colour per class of the store
