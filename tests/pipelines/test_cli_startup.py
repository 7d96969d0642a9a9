"""The first seconds of every command: a mistake in the config or the arguments is reported as
one line, exit status 2, before TensorFlow is imported (about 6 s); `--list-configs` lists the
presets just as fast."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfsim import config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}

# (command, arguments, the error line): config keys, types, values, presets, --set syntax, arguments.
MISTAKES = [
    ("train", ["--set", "train.epochs=abc"], r"Invalid value for `train.epochs`: expected an integer. "
                                             r"Received: train.epochs='abc'"),
    ("train", ["--set", "train.epocs=3"], r"Unknown config key `train.epocs`"),
    ("train", ["--set", "train.epochs"], r"Invalid override 'train.epochs': expected the form section.key=value"),
    ("train", ["--set", "loss.margin=-1"], r"Invalid value for `loss.margin`: expected a number >= 0"),
    ("train", ["--set", "model.backbone=resnet50", "--set", "model.width=8"], r"`model.width`: expected null for "
                                                                                r"backbone 'resnet50'"),
    ("train", ["--config", "cars196"], r"Unknown config 'cars196' \(did you mean cars196_resnet50\?\)"),
    ("tune", ["--set", "sampler.examples_per_class=1", "--grid", "loss.margin=0.1,0.2"],
     r"`sampler.examples_per_class`: expected an integer >= 2"),
    ("tune", ["--config", "nope"], r"Unknown config 'nope'"),
    ("tune", ["--max-trials", "abc"], r"Invalid value for `tune.max_trials`: expected an integer"),
    ("evaluate", ["--model", "nowhere", "--ks", "0"], r"Invalid --ks '0': expected integers >= 1"),
    ("index", ["--model", "m", "--data", "d", "--out", "o", "--target-recall", "2"],
     r"Invalid value for `index.target_recall`: expected a recall in \(0, 1\]"),
    ("index", ["--add", "d"], r"--add DATA needs --index DIR"),
    ("search", ["--image", "q.png", "--top-k", "0"], r"Invalid value for `--top-k`: expected an integer >= 1"),
]


def _run(*args, importtime=False):
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("command,args,message", MISTAKES)
def test_a_mistake_is_one_line_before_tensorflow_is_imported(command, args, message):
    out = _run("-m", f"tfsim.pipelines.{command}", *args, importtime=True)
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    lines = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(message, lines[0]), lines[0]
    assert "tfsim.errors" in imported  # (what -X importtime lists is what was imported)
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]


@pytest.mark.slow  # imports TensorFlow in a subprocess
def test_mistakes_are_reported_in_a_fraction_of_the_time_tensorflow_takes_to_import():
    def seconds(*args):
        start = time.perf_counter()
        out = _run(*args)
        return time.perf_counter() - start, out

    tensorflow, out = seconds("-c", "import tensorflow")
    assert out.returncode == 0, out.stderr[-2000:]
    for command, args, _ in MISTAKES[:1] + [m for m in MISTAKES if m[0] != "train"]:
        took, out = seconds("-m", f"tfsim.pipelines.{command}", *args)
        assert out.returncode == 2
        # Measured together, so the machine's speed cancels: about 0.05x on a 2-core machine.
        assert took < 0.5 * tensorflow, (command, args, round(took, 2), round(tensorflow, 2))


@pytest.mark.parametrize("command", ["train", "tune"])
def test_list_configs_prints_each_preset_with_its_description(command):
    out = _run("-m", f"tfsim.pipelines.{command}", "--list-configs")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Presets (--config NAME")
    described = config.preset_descriptions()
    assert [line.split()[0] for line in lines[1:]] == list(described) == config.presets()
    for line, (name, text) in zip(lines[1:], described.items()):
        assert line.strip() == f"{name}{' ' * (line.strip().index(text) - len(name))}{text}"
    assert "--list-configs" in _run("-m", f"tfsim.pipelines.{command}", "--help").stdout
