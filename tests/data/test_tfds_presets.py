"""The TFDS presets on TFDS's own mock data, through the real loading code: each dataset's
published protocol (Cars196, CUB: second half of the classes held out; Stanford Dogs: test
images query a database of the training images). (SOP's class split through TFDS is the list
logic of `splits.list_test_classes`, tested on the list stand-in: the mock's random labels put
classes on both sides.)"""

import numpy as np
import pytest

from tfsim import config
from tfsim.training.task import load_split


@pytest.fixture
def mock_tfds(monkeypatch):
    """TFDS's mock data. Its random boxes can have min > max, which TFDS's own BBoxFeature then
    rejects when the examples are encoded (as tfsim reads them: encoded bytes); order them."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.features import bounding_boxes

    encode = bounding_boxes.BBoxFeature.encode_example

    def ordered(self, bbox):
        y0, x0, y1, x1 = np.asarray(bbox, np.float64)
        return encode(self, np.array([min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1)]))

    monkeypatch.setattr(bounding_boxes.BBoxFeature, "encode_example", ordered)
    with tfds.testing.mock_data(num_examples=12):
        yield


@pytest.mark.parametrize("preset, classes", [("cars196_resnet50", 196), ("cub200_resnet50", 200)])
def test_second_half_of_the_classes_is_held_out(mock_tfds, tmp_path, preset, classes):
    split = load_split(config.load(preset, [f"data.data_dir={tmp_path}"]))
    assert len(split.dataset.class_names) == classes and len(split.dataset) == 24  # train + test parts
    assert split.train.labels.max() < split.test.labels.min()  # held-out classes come after, in label order
    assert split.dataset.paths[0].startswith(str(tmp_path))  # streamed from the encoded-bytes cache


def test_dogs_database_query(mock_tfds, tmp_path):
    split = load_split(config.load("dogs_resnet50", [f"data.data_dir={tmp_path}"]))
    assert len(split.train) == 12 and (split.test.splits == "query").sum() == 12
    assert set(split.test.ids[split.test.splits == "gallery"]) == set(split.train.ids)
