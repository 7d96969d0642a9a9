"""The tune command as users run it: killed mid-search and run again, and distributed over a
chief and two workers on 127.0.0.1 (keras-tuner's own distributed tuning)."""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the CLI in subprocesses (see pyproject.toml)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
TINY = ["--set", "train.steps_per_epoch=4", "--set", "model.width=8", "--set", "model.embedding_dim=16",
        "--set", "sampler.classes_per_batch=4", "--set", "eval.every_epoch=false", "--set", "export.enabled=false",
        "--set", "index.enabled=false", "--set", "eval.baselines=false",
        "--grid", "loss.margin=0.1,0.5", "--grid", "train.learning_rate=0.0005,0.003"]


# The tune command, standing still once the trial folder named by STOP_IN_TRIAL has written its checkpoint
# of epoch 1 (after touching the file STOPPED) until it is killed: a kill at a known point, at any speed.
STOPPING_TUNE = """
import os, runpy, threading
from pathlib import Path
from tfsim.training.callbacks import ResumableCheckpoint
save = ResumableCheckpoint.on_epoch_end
def on_epoch_end(self, epoch, logs=None):
    save(self, epoch, logs)
    if epoch == 0 and Path(self.directory).parent.parent.name == os.environ["STOP_IN_TRIAL"]:
        Path(os.environ["STOPPED"]).touch()
        threading.Event().wait()
ResumableCheckpoint.on_epoch_end = on_epoch_end
runpy.run_module("tfsim.pipelines.tune", run_name="__main__", alter_sys=True)
"""


def tune_cmd(tmp_path, *extra):
    return [sys.executable, "-m", "tfsim.pipelines.tune", "--set", f"run.root={tmp_path / 'runs'}", *TINY, *extra]


def wait_for(condition, proc, what, seconds=600):
    """Waits until `condition()` holds; fails at once if `proc` exits first, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        try:
            proc.wait(timeout=0.2)  # the pause between looks, and a check that the process still runs
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"the command exited ({proc.returncode}) before {what}")


def table(tune_dir):
    return list(csv.DictReader((tune_dir / "trials.csv").open()))


def test_killed_search_continues_without_rerunning_finished_trials(tmp_path):
    tune_dir = tmp_path / "runs" / "tune" / "fashion_mnist_small"
    cmd = tune_cmd(tmp_path, "--set", "train.epochs=2", "--no-final", "--quiet")
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-c", STOPPING_TUNE, *cmd[3:]], cwd=tmp_path,
                            env={**ENV, "STOP_IN_TRIAL": "trial_1", "STOPPED": str(stopped)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill -9 once trial 0 is finished and trial 1 has checkpointed its first epoch
        wait_for(stopped.is_file, proc, "trial 1's first checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = json.loads((tune_dir / "trial_0" / "tfsim_trial.json").read_text())
    assert first["status"] == "ok" and not (tune_dir / "trial_1" / "tfsim_trial.json").exists()
    assert sorted(p.name for p in (tune_dir / "trial_1" / "run" / "checkpoints").iterdir()) == ["epoch-0001.keras"]
    finished_at = (tune_dir / "trial_0" / "tfsim_trial.json").stat().st_mtime_ns

    again = subprocess.run(cmd[:-1], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tune_dir / "trial_0" / "tfsim_trial.json").stat().st_mtime_ns == finished_at  # not run again
    assert again.stderr.count("Training on 2,400 images") == 3  # trials 1 (resumed), 2 and 3
    assert re.search(r"Resuming \S*trial_1\S* from epoch 1\b", again.stderr)  # from the checkpoint at the kill
    rows = table(tune_dir)
    assert sorted(r["trial"] for r in rows) == ["0", "1", "2", "3"] and {r["status"] for r in rows} == {"ok"}
    assert "4 trials (4 ok, 0 failed, 3 run now)" in again.stdout
    # The console numbers trials as their folders and the tables do (keras-tuner's "Running Trial #2" is not
    # printed), and says which score is which.
    assert "Running Trial" not in again.stdout and "Trial 0:" not in again.stderr
    for trial in ("1", "2", "3"):
        assert re.search(rf"Trial {trial}: loss\.margin=\S+, train\.learning_rate=\S+ \(\S+/trial_{trial}\)",
                         again.stderr)
        assert re.search(rf"Trial {trial} done in \d+ s: map@r 0\.\d{{4}} on the validation classes \(its model with "
                         rf"whitening, as exported; before whitening, as in the epoch lines: 0\.\d{{4}}\)",
                         again.stderr)
    md = (tune_dir / "trials.md").read_text()
    assert "before whitening" in md
    seconds = [line.split("|")[-3].strip() for line in md.splitlines() if line.startswith("| ") and "| ok |" in line]
    assert len(seconds) == 4 and all(s.isdigit() for s in seconds), seconds  # whole seconds
    assert not list(tune_dir.glob("events.out.tfevents.*"))  # TensorBoard: each trial's run, not the search folder

    rerun = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "0 run now" in rerun.stdout and "Training on" not in rerun.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts_connections(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


def test_distributed_search_chief_and_two_workers(tmp_path):
    port = free_port()
    cmd = tune_cmd(tmp_path, "--set", "train.epochs=1", "--quiet")
    procs = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = {**ENV, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
               "KERASTUNER_ORACLE_PORT": str(port)}
        procs[tuner_id] = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
        if tuner_id == "chief":  # the oracle server listens before the workers ask it for trials
            wait_for(lambda: accepts_connections(port), procs["chief"], f"oracle server on port {port}")
    outputs = {k: p.communicate(timeout=600) for k, p in procs.items()}
    for tuner_id, p in procs.items():
        assert p.returncode == 0, f"{tuner_id}: {outputs[tuner_id][1][-3000:]}"
    trained = {k: out[1].count("Training on 2,400 images") for k, out in outputs.items()}
    assert trained["tuner0"] + trained["tuner1"] == 4 and trained["chief"] == 0  # each trial ran exactly once
    assert "worker finished" in outputs["tuner0"][0] and "worker finished" in outputs["tuner1"][0]
    tune_dir = tmp_path / "runs" / "tune" / "fashion_mnist_small"
    rows = table(tune_dir)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    scores = [float(r["map@r"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # The chief trained the best config on all training classes and scored it on the test classes.
    assert "on 4 test classes (Pullover, Coat, Sandal, Sneaker):" in outputs["chief"][0]
    assert (tmp_path / "runs" / "fashion_mnist_small_best" / "metrics.json").is_file()
