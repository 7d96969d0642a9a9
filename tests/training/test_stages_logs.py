"""What a run says after its last epoch: one line as each stage starts, nothing twice, no
TensorFlow chatter; and the names of the sample images it leaves."""

import re

import numpy as np
import pytest

from tests.images import class_folders
from tests.reliability.helpers import cli
from tfsim.data import sources
from tfsim.training import stages


def test_sample_names_say_the_class_once_and_are_unique(tmp_path):
    assert stages.sample_name("purple_text_A", "/data/purple_text_A/purple_text_A_00.png") == "purple_text_a_00"
    assert stages.sample_name("cats", "/data/cats/IMG_0042.jpg") == "cats_img_0042"
    assert stages.sample_name("cars", "cars196:test:17") == "cars_17"
    assert stages.sample_name("Big cats/lions", "x/Big cats/lions/lion 1.png") == "big_cats-lions_lion_1"
    assert stages.sample_name("a", "a/ab_1.png") == "a_ab_1"  # "ab" is not the class "a"

    # Class "a" holds a_b_0.png, class "a_b" holds a_b_0.png too: both would be "a_b_0".
    images = np.zeros((3, 4, 4, 3), np.uint8)
    test = sources.ImageSet(labels=np.array([0, 1, 2], np.int32), class_names=("a", "a_b", "c"),
                            ids=np.array(["a/a_b_0.png", "a_b/a_b_0.png", "c/C_1.png"]), images=images)
    written = stages.write_samples(test, tmp_path / "samples")
    assert [p.name for p in written] == ["a_b_0.png", "a_b_0_2.png", "c_1.png"]
    assert all(p.is_file() for p in written)


@pytest.mark.slow
def test_own_folder_run_announces_each_stage_once_without_tensorflow_chatter(tmp_path):
    """A tiny own-folder run, as a user starts it (stdout to a file): each stage after training says
    what it starts, in order; the whitening warning once; no retracing warning, no absl sharding
    timing; the epochs as plain lines; samples named once by class."""
    folder = class_folders(tmp_path / "photos", ["red_a", "green_b", "blue_c", "cyan_d", "pink_e", "gray_f"],
                           20, seed=0, size=32)
    result = cli("train", "--set", "data.source=folder", "--set", f"data.path={folder}",
                 "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3", "--set", "model.width=8",
                 "--set", "model.embedding_dim=16", "--set", "sampler.classes_per_batch=3",
                 "--set", "sampler.examples_per_class=4", "--set", f"run.root={tmp_path / 'runs'}",
                 "--set", f"export.root={tmp_path / 'exports'}", env={"PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    starts = ["Fitting the whitening on 60 training embeddings...",
              "Computing the baselines (the untrained network, raw pixels) on 60 held-out images...",
              "Evaluating on 60 held-out images...",
              "Exporting the SavedModel to ",
              "Building the ScaNN index of 60 held-out images..."]
    at = [log.find(line) for line in starts]
    assert -1 not in at and at == sorted(at), (at, log[-4000:])
    assert all(log.count(line) == 1 for line in starts)
    assert log.count("Whitening is fitted on 60 images for 16 dimensions") == 1
    assert "retracing" not in log
    assert "Sharding callback" not in log and "Assets written to" not in log
    assert "Exported SavedModel to " in log
    assert "__array__ implementation doesn't accept a copy keyword" not in log  # (checkpoint saves)

    out = result.stdout
    assert "\x1b" not in out and "\r" not in out
    assert len(re.findall(r"^3/3 - ", out, flags=re.M)) == 2  # one line per epoch
    samples = sorted(p.name for p in (tmp_path / "runs" / "photos" / "samples").glob("*.png"))
    assert samples and all(re.fullmatch(r"[a-z]+_[a-z]_\d+\.png", name) for name in samples), samples
