"""The tune command's library: grid parsing and checks, validation classes, the report, and
searches on the shipped data (in-process: trials, failures, resume, what the trials embed)."""

import csv
import json

import keras
import numpy as np
import pytest

from tfsim import config
from tfsim.errors import UserInputError
from tfsim.training import tuning, tuning_report
from tfsim.training.callbacks import ResumableCheckpoint, StopOnNonFiniteLoss, TrainingDiverged
from tfsim.training.fit import Split, load_split


@pytest.fixture(scope="module")
def base():
    return config.load("default", ["sampler.classes_per_batch=4"])


@pytest.fixture(scope="module")
def split(base):
    return load_split(base)


# --- grid ---------------------------------------------------------------------------------------

def test_grid_values_are_typed_by_the_config(base):
    grid = tuning.parse_grid(base, ["loss.margin=0.2, 1", "model.embedding_dim=32,64", "data.flip=true,false",
                                    "loss.name=triplet_hard,lifted_struct", "loss.soft=null,true"])
    assert grid == {"loss.margin": [0.2, 1.0], "model.embedding_dim": [32, 64], "data.flip": [True, False],
                    "loss.name": ["triplet_hard", "lifted_struct"], "loss.soft": [None, True]}
    assert all(type(v) is float for v in grid["loss.margin"]) and all(type(v) is int for v in grid["model.embedding_dim"])


@pytest.mark.parametrize("item, message", [
    ("loss.margn=0.1,0.2", "Unknown config key `loss.margn` in --grid: expected one of ['loss.name', 'loss.margin'"),
    ("los.margin=0.1", "Unknown config key `los.margin` in --grid: expected a key of a section among ['data'"),
    ("model.embedding_dim=32,big", "Invalid value for `model.embedding_dim`: expected an integer. Received: model.embedding_dim='big'"),
    ("train.learning_rate=0.1,inf", "Invalid value for `train.learning_rate`: expected a finite number"),
    ("run.name=a,b", "`run.name` cannot be searched"),
    ("data.test_classes=1,2;3,4", "`data.test_classes` cannot be searched"),
    ("eval.similarity=cosine,dot", "`eval.similarity` cannot be searched"),
    ("loss.margin=0.2,0.2", "a value is listed twice"),
    ("loss.margin=", "none empty"),
    ("loss.margin", "expected KEY=V1,V2"),
])
def test_bad_grid_items_fail_with_the_key(base, item, message):
    with pytest.raises(UserInputError, match=None) as err:
        tuning.parse_grid(base, [item])
    assert message in str(err.value)


def test_a_key_twice_and_an_empty_grid_are_errors(base):
    with pytest.raises(UserInputError, match="`loss.margin` is given twice"):
        tuning.parse_grid(base, ["loss.margin=0.1", "loss.margin=0.2"])
    with pytest.raises(UserInputError, match="Nothing to search"):
        tuning.parse_grid(base, [])


def test_space_encoding_round_trips():
    grid = {"a": [1, 2], "b": [0.5, 1], "c": [None, 0.5], "d": [True, False], "e": ["x", "y"]}
    space = tuning.encode_space(grid)
    assert space == {"a": [1, 2], "b": [0.5, 1.0], "c": ["null", "0.5"], "d": [True, False], "e": ["x", "y"]}
    for i in range(2):
        hp_values = {k: v[i] for k, v in space.items()} | {"tuner/epochs": 3}
        assert tuning.decode_values(grid, hp_values) == {k: v[i] for k, v in grid.items()}


def test_trial_and_best_configs(base):
    trial = tuning.trial_config(base, {"loss.margin": 0.3, "model.embedding_dim": 32}, "07", epochs=2)
    assert (trial.loss.margin, trial.model.embedding_dim, trial.train.epochs) == (0.3, 32, 2)
    assert trial.run.name == "trial_07" and not trial.export.enabled and not trial.index.enabled
    assert not trial.eval.baselines
    best = tuning.best_config(base, {"loss.margin": 0.3}, "search")
    assert best.run.name == "search_best" and best.export.enabled and best.eval.baselines
    assert best.train.epochs == base.train.epochs and best.loss.margin == 0.3


# --- validation classes -----------------------------------------------------------------------------

def test_validation_classes_come_from_training_classes_only(base, split):
    train_classes = set(np.unique(split.train.labels).tolist())
    trial = tuning.validation_split(split, base.tune)
    val = set(np.unique(trial.test.labels).tolist())
    fit = set(np.unique(trial.train.labels).tolist())
    assert len(val) == 2 and val | fit == train_classes and not val & fit  # round(0.25 * 6) = 2
    assert not (val | fit) & set(base.data.test_classes)
    again = tuning.validation_split(split, base.tune)
    assert np.array_equal(again.test.ids, trial.test.ids)  # seeded
    picks = {tuple(np.unique(tuning.validation_split(split, config.load("default", [f"tune.seed={s}"]).tune)
                             .test.labels)) for s in range(6)}
    assert len(picks) > 1  # the seed chooses which classes
    explicit = tuning.validation_split(split, config.load("default", ["tune.val_classes=0,3"]).tune)
    assert sorted(np.unique(explicit.test.labels).tolist()) == [0, 3]


def test_validation_class_errors(split):
    with pytest.raises(UserInputError, match=r"`tune.val_classes`: expected training classes.*Received \[2\]"):
        tuning.validation_split(split, config.load("default", ["tune.val_classes=0,2"]).tune)
    with pytest.raises(UserInputError, match="2 left to train on"):
        tuning.validation_split(split, config.load("default", ["tune.val_fraction=0.9"]).tune)
    with pytest.raises(UserInputError, match="tune.val_fraction"):
        config.load("default", ["tune.val_fraction=1.5"])
    with pytest.raises(UserInputError, match=r"`tune.objective`: expected one of \['recall@1'"):
        config.load("default", ["tune.objective=recall@16"])


def test_search_checks_combinations_before_any_trial(base, split):
    trial_split = tuning.validation_split(split, base.tune)
    ok = tuning.parse_grid(base, ["sampler.kind=pk,random", "sampler.classes_per_batch=null,2"])
    assert tuning.check_search(base, ok, trial_split) == 4  # (random, 2) fails, but each value works somewhere
    bad = tuning.parse_grid(base, ["sampler.classes_per_batch=2,5"])
    with pytest.raises(UserInputError, match=r"--grid sampler.classes_per_batch=5 fails in every combination.*"
                                             r"only 4 classes. Expected 2..4.*trials train on 4 classes"):
        tuning.check_search(base, bad, trial_split)
    none = tuning.parse_grid(config.load("default"), ["loss.margin=0.2,0.5"])
    with pytest.raises(UserInputError, match="Every combination of the search fails before training: Invalid value "
                                             "for `sampler.classes_per_batch`: a P x K batch holds P distinct"):
        tuning.check_search(config.load("default"), none, trial_split)


# --- report -----------------------------------------------------------------------------------------

def test_report_is_sorted_best_first_with_failures_last(tmp_path):
    rows = [{"trial": "0", "status": "ok", "m": 0.2, "map@r": 0.3, "seconds": 61.5078},
            {"trial": "1", "status": "failed", "m": 0.5, "reason": "boom | bad", "seconds": 0.1},
            {"trial": "2", "status": "ok", "m": 1.0, "map@r": 0.5, "seconds": 1.0},
            {"trial": "3", "status": "ok", "m": 2.0, "map@r": 0.3, "seconds": 1.0}]
    tuning_report.write_tables(tmp_path, rows, ["m"], ["map@r"], "map@r", header="H")
    table = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["trial"] for r in table] == ["2", "0", "3", "1"]  # ties by trial id
    assert table[3]["status"] == "failed" and table[3]["reason"] == "boom | bad"
    assert table[1]["seconds"] == "61.5078"  # full precision in the CSV
    md = (tmp_path / "trials.md").read_text().splitlines()
    assert md[0] == "H" and md[2].startswith("| trial | status | m | **map@r** |") and len(md) == 2 + 2 + 4
    assert "boom / bad" in md[-1]
    assert md[5] == "| 0 | ok | 0.2000 | 0.3000 | 62 |  |"  # whole seconds in the table
    assert md[-1].endswith("| 0 | boom / bad |")
    png = tuning_report.plot_objective(tmp_path / "objective.png", rows, ["m"], "map@r")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_a_trial_line_names_the_trial_by_its_folder_number_and_both_scores():
    record = {"trial": "0", "status": "ok", "metrics": {"map@r": 0.325}, "unwhitened": {"map@r": 0.3033},
              "seconds": 23.4}
    assert tuning.trial_message(record, "map@r") == (
        "Trial 0 done in 23 s: map@r 0.3250 on the validation classes (its model with whitening, as exported; "
        "before whitening, as in the epoch lines: 0.3033).")
    del record["unwhitened"]
    assert tuning.trial_message(record, "map@r") == "Trial 0 done in 23 s: map@r 0.3250 on the validation classes."
    assert tuning.trial_name("s", "07") == "s/trial_07"


def test_hparams_trial_holds_the_experiment_session_and_metrics(tmp_path):
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    space = {"loss.margin": [0.1, 0.5], "loss.name": ["a", "b"]}
    tuning_report.write_hparams_trial(tmp_path, "s/trial_1", {"loss.margin": 0.5, "loss.name": "a", "tuner/epochs": 2},
                                      {"map@r": 0.25, "recall@1": 0.5}, space)
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    content = {t: plugin_data_pb2.HParamsPluginData.FromString(c) for t, c in acc.PluginTagToContent("hparams").items()}
    experiment = content["_hparams_/experiment"].experiment
    infos = {h.name: h for h in experiment.hparam_infos}
    assert set(infos) == {"loss.margin", "loss.name", "tuner/epochs"}
    assert [v.number_value for v in infos["loss.margin"].domain_discrete.values] == [0.1, 0.5]
    assert not infos["tuner/epochs"].HasField("domain_discrete")
    assert [m.name.tag for m in experiment.metric_infos] == ["tune/map@r", "tune/recall@1"]
    start = content["_hparams_/session_start_info"].session_start_info
    assert start.group_name == "s/trial_1" and start.hparams["loss.name"].string_value == "a"
    assert float(tf.make_ndarray(acc.Tensors("tune/map@r")[0].tensor_proto)) == pytest.approx(0.25)


def test_plot_handles_categories_and_no_finished_trial(tmp_path):
    rows = [{"trial": "0", "status": "ok", "loss.name": "a", "x": 0.001, "map@r": 0.3},
            {"trial": "1", "status": "ok", "loss.name": "b", "x": 0.1, "map@r": 0.4}]
    assert tuning_report.plot_objective(tmp_path / "p.png", rows, ["loss.name", "x"], "map@r").is_file()
    assert tuning_report.plot_objective(tmp_path / "q.png", [{"trial": "0", "status": "failed"}], ["x"], "map@r") is None


# --- the NaN stop -------------------------------------------------------------------------------------

def test_non_finite_loss_stops_at_that_step_keeping_the_last_checkpoint(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    poisoned = keras.Variable(1.0, trainable=False)  # becomes NaN at step 3 of epoch 2
    model.compile("sgd", loss=lambda y, p: keras.ops.mean((p - y) ** 2) * poisoned)

    class Poison(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            Poison.steps += 1
            if Poison.steps == 6:  # 4 steps per epoch: after step 2 of epoch 2
                poisoned.assign(float("nan"))

    x, y = np.ones((16, 2), np.float32), np.ones((16, 1), np.float32)
    ckpt = tmp_path / "checkpoints"
    with pytest.raises(TrainingDiverged, match=r"loss was nan at step 3 of epoch 2\. The last good checkpoint "
                                               r"\(epoch-0001.keras, epoch 1\) is kept"):
        model.fit(x, y, epochs=4, batch_size=4, verbose=0,
                  callbacks=[StopOnNonFiniteLoss(ckpt), ResumableCheckpoint(ckpt), Poison()])
    assert Poison.steps == 6  # stopped at the NaN step, not at the end of the epoch
    assert [e for _, e in ResumableCheckpoint.checkpoints(ckpt)] == [1]
    restored = keras.models.load_model(ResumableCheckpoint.latest(ckpt)[0], compile=False, safe_mode=False)
    assert all(np.isfinite(w).all() for w in restored.get_weights())


# --- searches (train models) --------------------------------------------------------------------------

TINY = ["train.epochs=1", "train.steps_per_epoch=4", "model.width=8", "model.embedding_dim=16",
        "sampler.classes_per_batch=4", "eval.every_epoch=false"]


def tiny(tmp_path, *extra):
    return config.load("default", TINY + [f"run.root={tmp_path / 'runs'}", f"export.root={tmp_path / 'exports'}",
                                          *extra])


@pytest.mark.slow
def test_grid_search_end_to_end_and_resume(tmp_path, monkeypatch):
    from tfsim.data import pipeline
    from tfsim.evaluation import embed as embed_module

    seen = {"eval": [], "train": []}
    for module in (pipeline, embed_module):
        original = module.eval_dataset
        monkeypatch.setattr(module, "eval_dataset",
                            lambda images, *a, _o=original, **k: seen["eval"].append(set(images.ids)) or _o(images, *a, **k))
    original_train = pipeline.train_dataset
    monkeypatch.setattr(pipeline, "train_dataset",
                        lambda images, *a, **k: seen["train"].append(set(images.ids)) or original_train(images, *a, **k))

    cfg = tiny(tmp_path, "eval.every_epoch=true")
    result = tuning.tune(cfg, ["loss.margin=0.1,0.5", "train.learning_rate=0.0005,0.003"], final=False)
    assert result.new_trials == 4 and len(result.rows) == 4 and result.final is None
    scores = [r["map@r"] for r in result.rows]
    assert all(r["status"] == "ok" for r in result.rows) and scores == sorted(scores, reverse=True)
    assert {(r["loss.margin"], r["train.learning_rate"]) for r in result.rows} == {
        (m, lr) for m in (0.1, 0.5) for lr in (0.0005, 0.003)}

    # No test-class image was embedded or trained on during the search; trials trained on
    # the training classes minus the validation classes and were scored on the latter.
    split = load_split(cfg)
    test_ids, train_ids = set(split.test.ids), set(split.train.ids)
    val = tuning.validation_split(split, cfg.tune)
    val_ids = set(val.test.ids)
    assert seen["eval"] and all(ids <= train_ids for ids in seen["eval"])
    assert all(not ids & test_ids for ids in seen["eval"] + seen["train"])
    assert all(ids == set(val.train.ids) for ids in seen["train"])
    assert any(ids == val_ids for ids in seen["eval"])

    d = result.tune_dir
    md = (d / "trials.md").read_text()
    assert md.count("| ok |") == 4 and "validation classes" in md
    assert (d / "objective.png").stat().st_size > 5000
    best = config.load(str(d / "best.json"))
    top = result.rows[0]
    assert (best.loss.margin, best.train.learning_rate) == (top["loss.margin"], top["train.learning_rate"])
    assert best.run.name == "fashion_mnist_small_best" and best.train.epochs == 1 and best.eval.baselines
    assert result.best_config == best

    # TensorBoard: in each trial's run, the search's experiment and one session named after the
    # trial, with its values and metrics; nothing in the search's own folder (not a run).
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    def hparams_content(path):
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.TENSORS: 0})
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        return {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}, acc

    assert not list(d.glob("events.out.tfevents.*"))
    for row in result.rows:
        session, acc = hparams_content(d / f"trial_{row['trial']}" / "run" / "tensorboard")
        assert {h.name for h in session["_hparams_/experiment"].experiment.hparam_infos} == {
            "loss.margin", "train.learning_rate"}
        start = session["_hparams_/session_start_info"].session_start_info
        assert start.group_name == f"fashion_mnist_small/trial_{row['trial']}"
        assert start.hparams["loss.margin"].number_value == pytest.approx(row["loss.margin"])
        import tensorflow as tf
        value = float(tf.make_ndarray(acc.Tensors("tune/map@r")[0].tensor_proto))
        assert value == pytest.approx(row["map@r"], abs=1e-6)

    # The same search again: nothing new runs; the final run trains the best config on all
    # training classes and scores it on the test classes.
    seen["eval"].clear()
    again = tuning.tune(cfg, ["loss.margin=0.1,0.5", "train.learning_rate=0.0005,0.003"], final=True)
    assert again.new_trials == 0 and again.rows == result.rows
    assert again.final.test_classes == ["Pullover", "Coat", "Sandal", "Sneaker"]
    assert again.final.metrics["num_queries"] == len(split.test)
    assert again.final.run_dir == tmp_path / "runs" / "fashion_mnist_small_best"
    assert again.final.metrics["baselines"]["untrained"]

    with pytest.raises(UserInputError, match="holds a different search"):
        tuning.tune(cfg, ["loss.margin=0.1,0.3"], final=False)


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    real_train = tuning.train

    def train_or_run_out_of_memory(cfg, *args, **kwargs):
        if cfg.loss.margin == 0.3:
            raise MemoryError("out of memory (simulated)")
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(tuning, "train", train_or_run_out_of_memory)
    # An impossible combination, found when its trial starts: (random, classes_per_batch=2) sets an
    # option of another sampler. (pk, null) leaves P to tfsim: the 4 classes the trials train on.
    result = tuning.tune(tiny(tmp_path), ["sampler.kind=pk,random", "sampler.classes_per_batch=null,2",
                                          "loss.margin=0.2,0.3"], final=False)
    assert len(result.rows) == 8
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


def test_grid_oracle_state_survives_a_reload(tmp_path, base):
    """keras-tuner's GridSearchOracle forgets its grid order on reload (keras-team/keras-tuner#1055)."""
    import keras_tuner as kt

    grid = tuning.parse_grid(base, ["loss.margin=0.1,0.2,0.3", "train.learning_rate=0.001,0.01"])

    def oracle():
        o = tuning._make_oracle(base, grid, 6)
        o._set_project_dir(str(tmp_path), "p")
        return o

    first = oracle()
    seen = []
    for tuner in ("a", "b"):  # two trials started, one finished, then the process dies
        trial = first.create_trial(tuner)
        seen.append(tuple(sorted(trial.hyperparameters.values.items())))
    done = first.ongoing_trials["a"]
    first.update_trial(done.trial_id, {"map@r": 0.5})
    done.status = kt.engine.trial.TrialStatus.COMPLETED
    first.end_trial(done)
    first.save()  # as BaseTuner.on_trial_end does

    second = oracle()
    second.reload()
    while True:
        trial = second.create_trial("a")
        if trial.status == "STOPPED":
            break
        values = tuple(sorted(trial.hyperparameters.values.items()))
        if trial.trial_id != "1":  # trial 1 (killed) is handed out again, first
            seen.append(values)
        second.update_trial(trial.trial_id, {"map@r": 0.1})
        trial.status = kt.engine.trial.TrialStatus.COMPLETED
        second.end_trial(trial)
        second.save()
    assert len(seen) == 6 and len(set(seen)) == 6  # every combination exactly once


@pytest.mark.slow
@pytest.mark.parametrize("tuner", ["random", "bayesian", "hyperband"])
def test_other_tuners_search_the_same_space(tmp_path, tuner):
    cfg = tiny(tmp_path, f"tune.tuner={tuner}", "tune.max_trials=2", f"train.epochs={2 if tuner == 'hyperband' else 1}")
    result = tuning.tune(cfg, ["loss.margin=0.1,0.5", "model.embedding_dim=16,32"], final=False)
    assert result.rows and all(r["status"] == "ok" for r in result.rows)
    assert all(r["loss.margin"] in (0.1, 0.5) and r["model.embedding_dim"] in (16, 32) for r in result.rows)
    if tuner == "hyperband":  # trials at the budgets the oracle gives, up to train.epochs
        assert {r["epochs"] for r in result.rows} <= {1, 2} and "epochs" in (result.tune_dir / "trials.md").read_text()
        assert result.best_config.train.epochs == 2  # the best values, trained at the full budget
    else:
        assert len(result.rows) == 2
