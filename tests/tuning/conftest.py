import pytest

from tfsim import config
from tfsim.training.task import load_split


@pytest.fixture(scope="package")
def base():
    """The default preset at P = 4: the trials train on 4 of its 6 training classes."""
    return config.load("default", ["sampler.classes_per_batch=4"])


@pytest.fixture(scope="package")
def split(base):
    return load_split(base)
