"""Searches on the shipped data, in-process: what the trials train on and embed, the report,
failed trials, resume, the best config's run, and the other oracles."""

import json
import types

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tfsim import config
from tfsim.data import pipeline
from tfsim.evaluation import embed as embed_module
from tfsim.errors import UserInputError
from tfsim.training import stages
from tfsim.training.task import load_split
from tfsim.tuning import search, trial
from tfsim.tuning.trial import validation_split

pytestmark = pytest.mark.slow  # every test trains models

# Whitening and export off: no test here looks at them (tests/e2e/test_tune_cli.py reads the trials' whitened
# and unwhitened scores).
TINY = ["train.epochs=1", "train.steps_per_epoch=4", "model.width=8", "model.embedding_dim=16",
        "sampler.classes_per_batch=4", "eval.every_epoch=false", "whitening.enabled=false", "export.enabled=false"]
# 8 combinations: 3 train; 4 fail at their start (margin 0.3, see `searched`); (random, classes_per_batch=2) is an
# impossible combination, found when its trial starts: it sets an option of another sampler. (pk, null) leaves P
# to tfsim: the 4 classes the trials train on.
GRID = ["sampler.kind=pk,random", "sampler.classes_per_batch=null,2", "loss.margin=0.2,0.3"]


def tiny(tmp_path, *extra):
    return config.load("default", TINY + [f"run.root={tmp_path / 'runs'}", f"export.root={tmp_path / 'exports'}",
                                          *extra])


def recording(make_dataset, seen: list):
    """`make_dataset` that first notes the ids of the images it is given."""
    def wrapper(images, *args, **kwargs):
        seen.append(set(images.ids))
        return make_dataset(images, *args, **kwargs)
    return wrapper


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The grid search of GRID (evaluating every epoch), whose trials at margin 0.3 run out of memory
    (simulated), with the ids of the images every dataset of the search was made of. `.cfg`, `.result`,
    `.seen` ({"train": [...], "eval": [...]}), `.root`."""
    root = tmp_path_factory.mktemp("search")
    seen = {"eval": [], "train": []}
    real_train = trial.train

    def train_or_run_out_of_memory(cfg, *args, **kwargs):
        if cfg.loss.margin == 0.3:
            raise MemoryError("out of memory (simulated)")
        return real_train(cfg, *args, **kwargs)

    cfg = tiny(root, "eval.every_epoch=true")
    with pytest.MonkeyPatch.context() as patch:
        for module in (pipeline, embed_module):
            patch.setattr(module, "eval_dataset", recording(module.eval_dataset, seen["eval"]))
        patch.setattr(pipeline, "train_dataset", recording(pipeline.train_dataset, seen["train"]))
        patch.setattr(trial, "train", train_or_run_out_of_memory)
        result = search.tune(cfg, GRID, train_best=False)
    return types.SimpleNamespace(cfg=cfg, result=result, seen=seen, root=root)


def test_trials_train_on_the_training_classes_and_are_scored_on_validation_classes(searched):
    # No test-class image was embedded or trained on during the search; trials trained on
    # the training classes minus the validation classes and were scored on the latter.
    seen, split = searched.seen, load_split(searched.cfg)
    test_ids, train_ids = set(split.test.ids), set(split.train.ids)
    val = validation_split(split, searched.cfg.tune)
    val_ids = set(val.test.ids)
    assert seen["eval"] and all(ids <= train_ids for ids in seen["eval"])
    assert all(not ids & test_ids for ids in seen["eval"] + seen["train"])
    assert seen["train"] and all(ids == set(val.train.ids) for ids in seen["train"])
    assert any(ids == val_ids for ids in seen["eval"])


def test_grid_search_report_best_config_and_tensorboard(searched):
    result = searched.result
    assert result.new_trials == 8 and len(result.rows) == 8 and result.best_run is None
    keys = ("sampler.kind", "sampler.classes_per_batch", "loss.margin")
    assert {tuple(r[k] for k in keys) for r in result.rows} == {
        (kind, p, m) for kind in ("pk", "random") for p in (None, 2) for m in (0.2, 0.3)}
    ok = [r for r in result.rows if r["status"] == "ok"]
    scores = [r["map@r"] for r in ok]
    assert len(ok) == 3 and scores == sorted(scores, reverse=True)

    d = result.tune_dir
    md = (d / "trials.md").read_text()
    assert md.count("| ok |") == 3 and "validation classes" in md
    assert (d / "objective.png").stat().st_size > 5000
    best = config.load(str(d / "best.json"))
    top = result.rows[0]
    assert (best.sampler.kind, best.sampler.classes_per_batch, best.loss.margin) == tuple(top[k] for k in keys)
    assert best.run.name == "fashion_mnist_small_best" and best.train.epochs == 1 and best.eval.baselines
    assert result.best_config == config.load(str(d / "best.json"), resolved=False)  # as written, before resolve

    # TensorBoard: in each trial's run, the search's experiment and one session named after the
    # trial, with its values and metrics; nothing in the search's own folder (not a run).
    def hparams_content(path):
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.TENSORS: 0})
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        return {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}, acc

    assert not list(d.glob("events.out.tfevents.*"))
    for row in ok:
        session, acc = hparams_content(d / f"trial_{row['trial']}" / "run" / "tensorboard")
        assert {h.name for h in session["_hparams_/experiment"].experiment.hparam_infos} == set(keys)
        start = session["_hparams_/session_start_info"].session_start_info
        assert start.group_name == f"fashion_mnist_small/trial_{row['trial']}"
        assert start.hparams["loss.margin"].number_value == pytest.approx(row["loss.margin"])
        value = float(tf.make_ndarray(acc.Tensors("tune/map@r")[0].tensor_proto))
        assert value == pytest.approx(row["map@r"], abs=1e-6)


def test_failing_trials_are_recorded_and_the_search_goes_on(searched):
    result = searched.result
    failed = {(r["sampler.kind"], r["sampler.classes_per_batch"], r["loss.margin"]): r["reason"]
              for r in result.rows if r["status"] == "failed"}
    assert set(failed) == {("random", 2, 0.2)} | {
        (k, p, 0.3) for k in ("pk", "random") for p in (None, 2)}
    assert failed[("random", 2, 0.2)].startswith("Invalid value for `sampler.classes_per_batch`: expected null for "
                                                 "sampler.kind='random'")
    assert failed[("pk", 2, 0.3)] == "MemoryError: out of memory (simulated)"
    assert [r["status"] for r in result.rows] == ["ok"] * 3 + ["failed"] * 5
    auto = next(r for r in result.rows if (r["sampler.kind"], r["sampler.classes_per_batch"]) == ("pk", None))
    chosen = json.loads((result.tune_dir / f"trial_{auto['trial']}" / "run" / "config.json").read_text())
    assert chosen["sampler"]["classes_per_batch"] == 4
    md = (result.tune_dir / "trials.md").read_text()
    assert md.count("| failed |") == 5 and "MemoryError: out of memory (simulated)" in md


def test_the_same_search_again_runs_no_trial_and_trains_the_best_config(searched, monkeypatch):
    # The best config is trained on all training classes and scored on the test classes. (Raw-pixel baselines
    # off: their 2,352-dim whitening is the slowest stage; the untrained network's baseline is the one read here.)
    monkeypatch.setattr(stages, "MAX_RAW_PIXEL_BYTES", 0)
    again = search.tune(searched.cfg, GRID, train_best=True)
    assert again.new_trials == 0 and again.rows == searched.result.rows
    split = load_split(searched.cfg)
    assert again.best_run.test_classes == ["Pullover", "Coat", "Sandal", "Sneaker"]
    assert again.best_run.metrics["num_queries"] == len(split.test)
    assert again.best_run.run_dir == searched.root / "runs" / "fashion_mnist_small_best"
    assert again.best_run.metrics["baselines"]["untrained"]

    with pytest.raises(UserInputError, match="holds a different search"):
        search.tune(searched.cfg, ["loss.margin=0.1,0.3"], train_best=False)


@pytest.mark.parametrize("tuner", ["random", "bayesian", "hyperband"])
def test_other_tuners_search_the_same_space(tmp_path, tuner):
    cfg = tiny(tmp_path, f"tune.tuner={tuner}", "tune.max_trials=2", f"train.epochs={2 if tuner == 'hyperband' else 1}")
    result = search.tune(cfg, ["loss.margin=0.1,0.5", "model.embedding_dim=16,32"], train_best=False)
    assert result.rows and all(r["status"] == "ok" for r in result.rows)
    assert all(r["loss.margin"] in (0.1, 0.5) and r["model.embedding_dim"] in (16, 32) for r in result.rows)
    if tuner == "hyperband":  # trials at the budgets the oracle gives, up to train.epochs
        assert {r["epochs"] for r in result.rows} <= {1, 2} and "epochs" in (result.tune_dir / "trials.md").read_text()
        assert result.best_config.train.epochs == 2  # the best values, trained at the full budget
    else:
        assert len(result.rows) == 2
