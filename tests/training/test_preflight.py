"""Library errors name their own arguments; the pipeline reports them as config keys."""

import numpy as np
import pytest

from tfsim import config
from tfsim.data import samplers, splits, sources
from tfsim.errors import UserInputError, rename_keys
from tfsim.training import preflight


def test_library_errors_name_their_arguments_and_the_pipeline_renames_them(tmp_path):
    with pytest.raises(UserInputError, match=r"^Invalid value for `root`: .* Received: root="):
        sources.load_folder(str(tmp_path / "missing"))
    with pytest.raises(UserInputError, match=r"Invalid value for `data.path`: .* Received: data.path="):
        with preflight.config_keys(**preflight.DATA_KEYS):
            sources.load_folder(str(tmp_path / "missing"))
    images = sources.load_default()
    with pytest.raises(UserInputError, match=r"^Invalid value for `test_classes`"):
        splits.class_disjoint_split(images, (1, 99))
    with pytest.raises(UserInputError, match=r"^Invalid value for `data.test_classes`"):
        with preflight.config_keys(**preflight.DATA_KEYS):
            splits.class_disjoint_split(images, (1, 99))


def test_rename_keys_touches_whole_arguments_only():
    message = "Invalid value for `name`: bad. Received: name='x', tfds_name='y'"
    assert rename_keys(message, {"name": "data.tfds_name"}) == (
        "Invalid value for `data.tfds_name`: bad. Received: data.tfds_name='x', tfds_name='y'")


def test_preflight_checks_sampler_and_replicas_in_config_terms():
    cfg = config.load("default", ["sampler.classes_per_batch=5"])
    labels = np.repeat(np.arange(6), 20)
    preflight.check(cfg, labels, replicas=1)
    with pytest.raises(UserInputError, match=r"`sampler.classes_per_batch`: expected a multiple of the 2 replicas"):
        preflight.check(cfg, labels, replicas=2)
    with pytest.raises(UserInputError, match=r"Lower `sampler.classes_per_batch` to at most 3"):
        preflight.check(config.load("default", ["sampler.classes_per_batch=4"]), np.repeat(np.arange(3), 20), 1)
    with pytest.raises(UserInputError, match=r"Lower `classes_per_batch` to at most 3"):
        samplers.check_pk(np.repeat(np.arange(3), 20), 4, 2)  # the library's own words


def test_a_data_error_leaves_no_run_folder(tmp_path):
    from tfsim.training import train
    with pytest.raises(UserInputError, match=r"Invalid value for `data.test_classes`"):
        train(config.load("default", ["data.test_classes=1,99"]), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()
