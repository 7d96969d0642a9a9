"""The names of the sample images a run leaves. (What a run says after its last epoch, stage by
stage, is checked on the README's own-folder command: tests/e2e/test_own_folder.py.)"""


import numpy as np

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
