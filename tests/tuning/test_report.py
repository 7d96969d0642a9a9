"""What a search leaves for a person: rows from the oracle, tables, plot, TensorBoard hparams and
the console line of a trial."""

import csv
import json
import types

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tfsim.tuning import report


def test_report_is_sorted_best_first_with_failures_last(tmp_path):
    rows = [{"trial": "0", "status": "ok", "m": 0.2, "map@r": 0.3, "seconds": 61.5078},
            {"trial": "1", "status": "failed", "m": 0.5, "reason": "boom | bad", "seconds": 0.1},
            {"trial": "2", "status": "ok", "m": 1.0, "map@r": 0.5, "seconds": 1.0},
            {"trial": "3", "status": "ok", "m": 2.0, "map@r": 0.3, "seconds": 1.0}]
    report.write_tables(tmp_path, rows, ["m"], ["map@r"], "map@r", header="H")
    table = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["trial"] for r in table] == ["2", "0", "3", "1"]  # ties by trial id
    assert table[3]["status"] == "failed" and table[3]["reason"] == "boom | bad"
    assert table[1]["seconds"] == "61.5078"  # full precision in the CSV
    md = (tmp_path / "trials.md").read_text().splitlines()
    assert md[0] == "H" and md[2].startswith("| trial | status | m | **map@r** |") and len(md) == 2 + 2 + 4
    assert md[5] == "| 0 | ok | 0.2000 | 0.3000 | 62 |  |"  # whole seconds in the table
    assert md[-1].endswith("| 0 | boom / bad |")
    png = report.plot_objective(tmp_path / "objective.png", rows, ["m"], "map@r")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objective.png", "trials.csv", "trials.md"]  # no temporaries


def _trial(values, status, metrics=None, message=None):
    tracked = metrics or {}
    return types.SimpleNamespace(
        hyperparameters=types.SimpleNamespace(values=values), status=status, message=message,
        metrics=types.SimpleNamespace(exists=lambda m: m in tracked, get_last_value=lambda m: tracked[m]))


def test_rows_from_the_oracle_and_the_trial_records(tmp_path):
    grid = {"loss.margin": [0.1, 0.5], "loss.soft": [None, True]}
    oracle = types.SimpleNamespace(trials={
        "1": _trial({"loss.margin": 0.5, "loss.soft": "null"}, "FAILED", message="Traceback\nMemoryError: oom\n"),
        "0": _trial({"loss.margin": 0.1, "loss.soft": "True", "tuner/epochs": 2}, "COMPLETED", {"map@r": 0.25}),
        "2": _trial({"loss.margin": 0.1, "loss.soft": "null"}, "RUNNING"),
        "3": _trial({"other": 1}, "COMPLETED"),  # not a point of this grid
    })
    report.write_trial_record(tmp_path / "trial_0", {"trial": "0", "status": "ok", "seconds": 3.5})
    rows = report.rows_from_oracle(oracle, tmp_path, grid, ["map@r", "recall@1"])
    assert rows == [
        {"trial": "0", "loss.margin": 0.1, "loss.soft": True, "epochs": 2, "status": "ok", "map@r": 0.25,
         "seconds": 3.5},
        {"trial": "1", "loss.margin": 0.5, "loss.soft": None, "status": "failed", "reason": "oom", "seconds": None},
        {"trial": "2", "loss.margin": 0.1, "loss.soft": None, "status": "running", "seconds": None}]
    assert json.loads((tmp_path / "trial_0" / report.TRIAL_RECORD).read_text())["seconds"] == 3.5
    assert report.read_trial_record(tmp_path / "trial_9") == {}


def test_a_trial_line_names_the_trial_by_its_folder_number_and_both_scores():
    record = {"trial": "0", "status": "ok", "metrics": {"map@r": 0.325}, "unwhitened": {"map@r": 0.3033},
              "seconds": 23.4}
    assert report.trial_message(record, "map@r") == (
        "Trial 0 done in 23 s: map@r 0.3250 on the validation classes (its model with whitening, as exported; "
        "before whitening, as in the epoch lines: 0.3033).")
    del record["unwhitened"]
    assert report.trial_message(record, "map@r") == "Trial 0 done in 23 s: map@r 0.3250 on the validation classes."
    assert report.trial_name("s", "07") == "s/trial_07"


def test_hparams_trial_holds_the_experiment_session_and_metrics(tmp_path):
    space = {"loss.margin": [0.1, 0.5], "loss.name": ["a", "b"]}
    report.write_hparams_trial(tmp_path, "s/trial_1", {"loss.margin": 0.5, "loss.name": "a", "tuner/epochs": 2},
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
    assert report.plot_objective(tmp_path / "p.png", rows, ["loss.name", "x"], "map@r").is_file()
    assert report.plot_objective(tmp_path / "q.png", [{"trial": "0", "status": "failed"}], ["x"], "map@r") is None
