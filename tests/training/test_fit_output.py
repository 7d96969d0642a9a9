"""What training prints: a progress bar on a terminal, one clean line per epoch elsewhere; short
name lists; checkpoints saved without NumPy deprecation warnings."""

import io
import re
import sys
import warnings

import keras
import numpy as np
import pytest

from tfsim import config
from tfsim.training.task import Task

from tfsim.training import loop as fit_module


class Stdout(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self):
        return self.terminal


@pytest.mark.parametrize("terminal, expected", [(True, {"auto": 1, 1: 1, 2: 2, 0: 0}),
                                                (False, {"auto": 2, 1: 2, 2: 2, 0: 0})])
def test_progress_bar_only_on_a_terminal(monkeypatch, terminal, expected):
    monkeypatch.setattr(sys, "stdout", Stdout(terminal))
    assert {v: fit_module.progress_verbosity(v) for v in expected} == expected


def test_progress_verbosity_refuses_other_values():
    with pytest.raises(ValueError, match=r"expected 0, 1, 2 or 'auto'. Received: verbose=3"):
        fit_module.progress_verbosity(3)


def test_summarize_names():
    names = [f"class_{i}" for i in range(500)]
    assert fit_module.summarize_names(names[:3]) == "class_0, class_1, class_2"
    assert fit_module.summarize_names(names[:8]) == ", ".join(names[:8])
    assert fit_module.summarize_names(names, full_list="data_report.json") == (
        "class_0, class_1, class_2, class_3, class_4, class_5, class_6, class_7, ... and 492 more "
        "(all in data_report.json)")
    assert fit_module.summarize_names(names, limit=2) == "class_0, class_1, ... and 498 more"
    assert fit_module.summarize_names([]) == ""


def test_saving_a_checkpoint_raises_no_numpy_copy_deprecation(tmp_path):
    from tfsim import runs
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    value = model.layers[0].kernel.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (Keras 3.15: one DeprecationWarning per variable per save)
        runs.save_model(model, tmp_path / "m.keras")
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "m.keras").layers[0].kernel.numpy(), value)


TINY = ["train.epochs=2", "train.steps_per_epoch=3", "model.width=8", "model.blocks_per_stage=1",
        "model.embedding_dim=8", "export.enabled=false", "eval.every_epoch=true"]


@pytest.mark.slow
@pytest.mark.parametrize("terminal", [False, True])
def test_fit_prints_a_bar_on_a_terminal_and_plain_epoch_lines_elsewhere(tmp_path, monkeypatch, terminal):
    cfg = config.resolve(config.load("default", TINY))
    split = Task(cfg).build_inputs()
    out = Stdout(terminal)
    monkeypatch.setattr(sys, "stdout", out)
    fit_module.fit(cfg, tmp_path / "run", split, verbose="auto")
    text = out.getvalue()
    if terminal:  # every step drawn over the last, the bar's line ended before the epoch-end logs
        # (Keras skips redrawing a step that comes within 50 ms of the last drawing: step 2 may not show)
        assert all(f"\r\x1b[1m{step}/3\x1b[0m" in text for step in (1, 3)), repr(text[:2000])
        # (a line Keras redraws shorter than the one before is padded with spaces)
        assert len(re.findall(r"loss: [0-9.e+-]+ *\n", text)) == 2, repr(text)
    else:
        assert "\x1b" not in text and "\r" not in text and "\b" not in text, repr(text[:2000])
        assert len(re.findall(r"^3/3 - .*val_map_at_r", text, flags=re.M)) == 2, text
        assert text.count("\n") == 4, text  # "Epoch i/2" and its line, twice
