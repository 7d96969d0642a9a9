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
    with pytest.raises(UserInputError, match=r"^Invalid value for `sampler.classes_per_batch`: a P x K batch holds P "
                                             r"distinct classes, and the training set has only 3 classes. Expected "
                                             r"2..3. Received: sampler.classes_per_batch=4$"):
        preflight.check(config.load("default", ["sampler.classes_per_batch=4"]), np.repeat(np.arange(3), 20), 1)
    with pytest.raises(UserInputError, match=r"Invalid value for `classes_per_batch`: .* Expected 2..3. "):
        samplers.check_pk(np.repeat(np.arange(3), 20), 4, 2)  # the library's own words


def test_a_data_error_leaves_no_run_folder(tmp_path):
    from tfsim.training import train
    with pytest.raises(UserInputError, match=r"Invalid value for `data.test_classes`"):
        train(config.load("default", ["data.test_classes=1,99"]), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_unwritable_outputs_stop_the_run_before_any_work(tmp_path, monkeypatch):
    from tfsim.training import train

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    loaded = []
    from tfsim.training import task
    monkeypatch.setattr(task, "load_split", lambda cfg: loaded.append(1))
    with pytest.raises(UserInputError, match=r"Cannot write the folder .*a_file/fashion_mnist_small' \(run.root\): "
                                             r".*a_file' is a file, not a folder. Set run.root to a folder"):
        train(config.load("default", [f"run.root={blocker}"]))
    with pytest.raises(UserInputError, match=r"\(export.root\): .*a_file' is a file"):
        train(config.load("default", [f"run.root={tmp_path / 'runs'}", f"export.root={blocker / 'sub'}"]))
    assert loaded == [] and not (tmp_path / "runs").exists()  # nothing loaded, no folder left behind
    preflight.check_writable(tmp_path / "new" / "deeper", "run.root")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()


def test_read_only_folder_is_refused(tmp_path):
    import os
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")  # root ignores permission bits: nothing to test then
            pytest.skip("running as a user who can write read-only folders")
        except PermissionError:
            pass
        with pytest.raises(UserInputError, match=r"'.*ro' is not writable \(Permission denied\)"):
            preflight.check_writable(ro / "runs", "run.root")
    finally:
        os.chmod(ro, 0o755)


def test_cli_reports_os_errors_on_paths_in_one_line(capsys):
    from tfsim.pipelines import _cli

    def main(argv):
        raise PermissionError(13, "Permission denied", "/srv/exports/model")

    with pytest.raises(SystemExit) as exit_info:
        _cli.run(main, [])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: Permission denied: '/srv/exports/model'\n"

    def bug(argv):
        raise OSError("no path involved")

    with pytest.raises(OSError, match="no path involved"):  # not a path problem: the traceback stays
        _cli.run(bug, [])


def test_split_report_counts_small_and_single_image_classes():
    cfg = config.load("default", ["sampler.examples_per_class=4", "sampler.small_classes=skip"])
    train_labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    test_labels = np.array([3, 3, 4, 5, 5])
    report = preflight.split_report(cfg, train_labels, test_labels, ["a", "b", "c", "d", "e", "f"])
    assert report == {"training_classes": 3, "training_images": 10, "held_out_classes": 3, "held_out_images": 5,
                      "held_out_classes_with_one_image": ["e"], "training_classes_with_one_image": [],
                      "pk_classes_below_k": {"k": 4, "count": 2, "policy": "skip", "classes": ["b", "c"]}}
    with pytest.raises(UserInputError, match=r"`sampler.small_classes`: expected one of \['replace', 'skip'\]"):
        config.load("default", ["sampler.small_classes=drop"])
    with pytest.raises(UserInputError, match=r"`sampler.small_classes`: expected null for sampler.kind='random'"):
        config.load("default", ["sampler.kind=random", "sampler.small_classes=skip"])


def _unresolved(*overrides):
    return config.load("default", list(overrides), resolved=False)


def test_pk_left_unset_is_lowered_to_what_the_training_classes_allow(caplog):
    three = np.repeat(np.arange(3), 20)  # a 6-class folder with half the classes held out
    cfg = _unresolved()
    unset = preflight.unset_pk_keys(cfg)
    assert unset == ("classes_per_batch", "examples_per_class")
    resolved = config.resolve(cfg)
    with pytest.raises(UserInputError):  # the preset's P = 6 cannot be drawn from 3 classes
        preflight.check(resolved, three, replicas=1)
    with caplog.at_level("INFO", logger="tfsim.training.preflight"):
        chosen = preflight.choose_pk(resolved, three, 1, unset)
    assert (chosen.sampler.classes_per_batch, chosen.sampler.examples_per_class) == (3, 10)
    preflight.check(chosen, three, replicas=1)
    assert [r.getMessage() for r in caplog.records] == [
        "Chose sampler.classes_per_batch=3 (P, default 6): the training set has 3 classes. Set these keys to "
        "choose yourself."]
    # Enough classes: nothing changes and nothing is said.
    caplog.clear()
    with caplog.at_level("INFO", logger="tfsim.training.preflight"):
        assert preflight.choose_pk(resolved, np.repeat(np.arange(8), 20), 1, unset) == resolved
    assert not caplog.records


def test_pk_choice_respects_replicas_small_sets_skip_and_explicit_keys():
    five = np.repeat(np.arange(5), 3)  # 5 classes, 15 images
    resolved = config.resolve(_unresolved())
    both = ("classes_per_batch", "examples_per_class")
    # P: 5 classes -> 4 on two replicas; K: 4 x 10 > 15 images -> 3
    chosen = preflight.choose_pk(resolved, five, 2, both).sampler
    assert (chosen.classes_per_batch, chosen.examples_per_class) == (4, 3)
    preflight.check(preflight.choose_pk(resolved, five, 2, both), five, replicas=2)
    # K set by the user: only P moves, and check still refuses the batch the user asked for
    only_p = preflight.choose_pk(resolved, five, 1, ("classes_per_batch",))
    assert (only_p.sampler.classes_per_batch, only_p.sampler.examples_per_class) == (5, 10)
    with pytest.raises(UserInputError, match=r"Lower `sampler.examples_per_class` to at most 3"):
        preflight.check(only_p, five, replicas=1)
    # small_classes=skip: P counts only the classes with at least K images
    skip = config.resolve(_unresolved("sampler.small_classes=skip"))
    labels = np.concatenate([np.repeat(np.arange(3), 12), np.repeat(np.arange(3, 7), 4)])
    assert preflight.choose_pk(skip, labels, 1, both).sampler.classes_per_batch == 3
    # Set explicitly (CLI, preset or JSON file): never changed, refused with the key to lower.
    explicit = _unresolved("sampler.classes_per_batch=6", "sampler.examples_per_class=10")
    assert preflight.unset_pk_keys(explicit) == ()
    assert preflight.choose_pk(config.resolve(explicit), five, 1, ()) == config.resolve(explicit)
    assert preflight.unset_pk_keys(_unresolved("sampler.kind=random")) == ()
