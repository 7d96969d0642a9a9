"""Run folders, export roots and config files under hostile conditions: names that climb
out of the roots, a full disk, damaged checkpoints, two processes on one run folder, a folder that
is not a tfsim run, what a killed export leaves, config files that name each other as `base`.

Training is the slow part, so the training cases share one run, driven step by step through the
real train command (a fresh process each time) by the module fixture `story`:

  1. two identical train commands start together on an empty run root (a 400 KB tmpfs, so that
     epoch 1's checkpoint fits and epoch 2's does not);
  2. the run root is enlarged ("space freed"), the same command again: it resumes and trains, and
     the export root (a tmpfs holding a previous export plus 200 KB) is full at the export;
  3. a kill -9 is simulated mid-write (a process that holds the run folder's and the export
     name's locks and has begun a checkpoint and an export, killed with SIGKILL), the last
     checkpoint is truncated to half, the export root enlarged, and the same command again.

Without root (no tmpfs) the disks are plain folders: step 1's winner finishes, step 2 is left out
and the disk-full test is skipped. The error cases that need no training, and `evaluate` on
damaged copies of the run, run in one process through `tfsim.pipelines._cli.run` (one TensorFlow
start), as tests/e2e/test_pipeline.py does; one of them also through `python -m`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.reliability.helpers import ENV, Result, assert_clean_error, cli, tiny_export, tree_snapshot

SLOW = pytest.mark.slow  # trains a model / runs CLIs in subprocesses
REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = {"PYTHONPATH": str(REPO)}

# The smallest run that trains: 2 epochs of 1 step, a 4-wide ResNet on 16 px images, two held-out
# classes (1,200 images), nothing after training but the evaluation, the projector and the export.
TINY = ["train.epochs=2", "train.steps_per_epoch=1", "model.width=4", "model.blocks_per_stage=1",
        "model.embedding_dim=8", "model.image_size=16", "eval.baselines=false", "eval.every_epoch=false",
        "whitening.enabled=false", "index.enabled=false", "data.test_classes=2,4", "run.root=R", "export.root=E",
        "run.name=r"]
TRAIN = ["--quiet"] + [a for s in TINY for a in ("--set", s)]


def _mount(path: Path, size: str) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def _both_at_once(args: list[str], cwd: Path) -> list[tuple[int, Result]]:
    """Starts the same train command twice at once; `(pid, result)` of each."""
    procs = [subprocess.Popen([sys.executable, "-m", "tfsim.pipelines.train", *args], cwd=cwd,
                              env={**ENV, **PYTHONPATH}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        out.append((proc.pid, Result(proc.returncode, stdout, stderr, 0.0)))
    return out


# A process killed with SIGKILL in the middle of writing a checkpoint and an export: it holds the
# run folder's and the export name's locks, has begun both files, and is killed.
KILLED_MIDWAY = r'''
import time
from pathlib import Path
from tfsim import locks
locks.folder_lock("R/r", "run folder").acquire()
locks.folder_lock("E/r", "export name").acquire()
Path("R/r/checkpoints/.tmp-epoch-0002.keras").write_bytes(b"partial" * 1000)
Path("E/r/.tmp-2-deadbeef/variables").mkdir(parents=True)
Path("E/r/.tmp-2-deadbeef/saved_model.pb").write_bytes(b"partial" * 1000)
print("ready", flush=True)
time.sleep(600)
'''


def _killed_midway(cwd: Path) -> int:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MIDWAY], cwd=cwd, env={**ENV, **PYTHONPATH},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


def _overwrite(path: Path, at: float, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start:start + size] = b"\xff" * size
    path.write_bytes(bytes(data))


def _hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    from tfsim.runs import checkpoint_problem

    s = types.SimpleNamespace()
    s.cwd = cwd = tmp_path_factory.mktemp("story")
    run, export = cwd / "R", cwd / "E"
    run.mkdir()
    export.mkdir()
    mounted = [p for p, size in ((run, "400k"), (export, "16m")) if _mount(p, size)]
    s.tmpfs = len(mounted) == 2
    try:
        tiny_export(export, "r")  # a previous export under the run's name: E/r/1
        if s.tmpfs:  # room for 200 KB more: not for another version (about 500 KB)
            _remount(export, f"{shutil.disk_usage(export).used // 1024 + 200}k")
        s.exports_before = tree_snapshot(export)

        # 1. Two identical commands at once.
        s.pair = _both_at_once(TRAIN, cwd)
        ckpts = run / "r" / "checkpoints"
        s.after_pair = {"checkpoints": sorted(p.name for p in ckpts.iterdir()),
                        "valid": {p.name: checkpoint_problem(p) for p in ckpts.glob("*.keras")},
                        "events": sorted(p.name for p in (run / "r" / "tensorboard").glob("events.out.tfevents.*")),
                        "hidden": _hidden(run), "cwd": sorted(p.name for p in cwd.iterdir())}

        # 2. Space freed on the run root; the export root is full.
        if s.tmpfs:
            _remount(run, "16m")
            s.export_full = cli("train", *TRAIN, cwd=cwd, env=PYTHONPATH)
            s.after_export_full = {"exports": tree_snapshot(export), "hidden": _hidden(export)}

        # 3. A process killed while writing, a truncated last checkpoint, space freed: the same command.
        last = ckpts / "epoch-0002.keras"
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        s.killed_pid = _killed_midway(cwd)
        s.left_behind = _hidden(cwd)
        if s.tmpfs:
            _remount(export, "16m")
        s.rerun = cli("train", *TRAIN, cwd=cwd, env=PYTHONPATH)
        s.after_rerun = {"checkpoints": sorted(p.name for p in ckpts.iterdir()),
                         "valid": {p.name: checkpoint_problem(p) for p in ckpts.glob("*.keras")},
                         "exports": tree_snapshot(export), "hidden": _hidden(cwd),
                         "cwd": sorted(p.name for p in cwd.iterdir())}
        yield s
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# Many commands in one process (one TensorFlow start), each through the CLIs' handler `_cli.run`,
# each in its own folder, its log lines captured with its stderr.
IN_ONE_PROCESS = r'''
import contextlib, importlib, io, json, logging, os, sys
from tfsim.pipelines import _cli
results = {}
for name, cwd, module, args in json.loads(sys.argv[1]):
    os.chdir(cwd)
    main = importlib.import_module(f"tfsim.pipelines.{module}").main
    out, err = io.StringIO(), io.StringIO()
    logging.root.handlers.clear()  # (so that `_cli.run` logs to this command's stderr)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            _cli.run(main, args)
            code = 0
        except SystemExit as exit:
            code = exit.code
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def user_folders(tmp_path_factory):
    """A working folder with config files naming each other as base and a folder of the user's."""
    cwd = tmp_path_factory.mktemp("user") / "work"
    (cwd / "mine").mkdir(parents=True)
    (cwd / "a.json").write_text(json.dumps({"base": "b.json", "train": {"epochs": 1}}))
    (cwd / "b.json").write_text(json.dumps({"base": "a.json"}))
    (cwd / "mine" / "config.json").write_text('{"learning_rate": 0.1, "my": "settings"}\n')
    (cwd / "mine" / "metrics.json").write_text('{"accuracy": 0.93}\n')
    return cwd


@pytest.fixture(scope="module")
def in_process(story, user_folders, tmp_path_factory):
    """Every case that needs no training, and `evaluate` on damaged copies of the story's run."""
    copies = tmp_path_factory.mktemp("copies")
    for name in ("overwritten", "none_valid"):
        shutil.copytree(story.cwd / "R" / "r", copies / name, ignore=shutil.ignore_patterns(".*"))
    _overwrite(copies / "overwritten" / "checkpoints" / "epoch-0002.keras", 0.5)  # 4 KB in the weights
    _overwrite(copies / "none_valid" / "checkpoints" / "epoch-0002.keras", 0.0)  # 4 KB at the start
    ckpt = copies / "none_valid" / "checkpoints" / "epoch-0001.keras"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    u, c = str(user_folders), str(copies)
    cases = [
        ("run_name", u, "train", ["--set", "run.name=.."]),
        ("export_name", u, "train", ["--set", "export.name=../../escaped"]),
        ("tune_name", u, "tune", ["--name", "../t", "--grid", "loss.margin=0.1,0.2"]),
        ("base_cycle", u, "train", ["--config", "a.json"]),
        ("not_a_run", u, "train", ["--run-dir", "mine", *TRAIN]),
        ("eval_skips", c, "evaluate", ["--model", "overwritten", "--out", "eval1"]),
        ("eval_damaged_file", c, "evaluate", ["--model", "overwritten/checkpoints/epoch-0002.keras", "--out", "eval2"]),
        ("eval_none_valid", c, "evaluate", ["--model", "none_valid", "--out", "eval3"]),
        ("train_none_valid", c, "train", ["--run-dir", "none_valid", *TRAIN]),
    ]
    proc = subprocess.run([sys.executable, "-c", IN_ONE_PROCESS, json.dumps(cases)], cwd=copies,
                          env={**ENV, **PYTHONPATH}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return types.SimpleNamespace(copies=copies, **{k: Result(code, out, err, 0.0)
                                                   for k, (code, out, err) in results.items()})


@SLOW
def test_names_are_one_folder_inside_their_root(in_process, user_folders):
    """run.name=.. and export.name=../../escaped (and tune.name) are refused by config validation,
    before anything is written: nothing appears in the working folder or above it."""
    direct = cli("train", "--set", "run.name=..", cwd=user_folders, env=PYTHONPATH)  # through `python -m` too
    for result in (direct, in_process.run_name):
        assert_clean_error(result, 2, "Invalid value for `run.name`: expected one folder name under run.root",
                           "not starting with '.'", "Received: run.name='..'")
    assert_clean_error(in_process.export_name, 2, "Invalid value for `export.name`", "inside the root",
                       "Received: export.name='../../escaped'")
    assert_clean_error(in_process.tune_name, 2, "Invalid value for `tune.name`", "Received: tune.name='../t'")
    # (`runs/..` is the working folder, `saved_models/../../escaped` is beside it)
    assert sorted(tree_snapshot(user_folders.parent)) == ["work/a.json", "work/b.json", "work/mine/config.json",
                                                          "work/mine/metrics.json"]


@SLOW
def test_full_disk_is_one_line_keeps_what_was_there_and_the_same_command_continues(story):
    """Full disks are tmpfs mounts (root only): a 400 KB run root, where epoch 1's checkpoint
    (213 KB) fits and epoch 2's temporary file does not; then an export root holding a previous
    export plus 200 KB, too little for a new version (~500 KB). "Space freed" = remounted larger."""
    if not story.tmpfs:
        pytest.skip("simulating a full disk needs root to mount a small tmpfs")
    # The checkpoint: one line naming the folder, the size needed and what is kept.
    winner = next(r for _, r in story.pair if "in use by another" not in r.stderr)
    assert_clean_error(winner, 2, "No space left on device in 'R/r/checkpoints'", "writing the checkpoint of epoch 2",
                       "needs about 21", "the previous checkpoint epoch-0001.keras is kept",
                       "run the same command again: it resumes from epoch 1")
    assert story.after_pair["checkpoints"] == ["epoch-0001.keras"]  # no .tmp-epoch-0002.keras
    assert story.after_pair["valid"] == {"epoch-0001.keras": None}
    # Space freed: the same command resumes, trains, and the export root is full.
    assert "Resuming R/r from epoch 1" in story.export_full.stderr
    assert_clean_error(story.export_full, 2, "No space left on device in 'E/r'", "a new version of 'r'", "needs about",
                       "the earlier versions are untouched", "run the same command again")
    assert story.after_export_full["exports"] == story.exports_before  # version 1 and models.config as they were
    assert story.after_export_full["hidden"] == []  # no .tmp-* folder, no lock
    # Space freed again: the same command publishes version 2 (without training), version 1 untouched.
    assert story.rerun.returncode == 0, story.rerun.stderr[-3000:]
    after = story.after_rerun["exports"]
    assert {k: v for k, v in after.items() if k.startswith("r/1/")} == \
        {k: v for k, v in story.exports_before.items() if k.startswith("r/1/")}
    assert "r/2/saved_model.pb" in after and 'name: "r"' in (Path(story.cwd) / "E" / "models.config").read_text()


@SLOW
def test_damaged_checkpoints_are_skipped_with_a_reason_or_refused_in_one_line(story, in_process):
    """The last checkpoint truncated to half (train resumes from the one before and retrains it);
    4 KB overwritten inside its weights (evaluate skips it, or refuses it when named); both
    checkpoints damaged (evaluate and train refuse in one line)."""
    rerun = story.rerun
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr[-3000:]
    assert "Skipped checkpoint R/r/checkpoints/epoch-0002.keras (damaged: not a complete zip archive" in rerun.stderr
    assert "using epoch-0001.keras instead" in rerun.stderr and "Resuming R/r from epoch 1" in rerun.stderr
    assert story.after_rerun["valid"] == {"epoch-0001.keras": None, "epoch-0002.keras": None}  # retrained
    # evaluate on the run folder: the overwritten checkpoint is skipped, the one before evaluated.
    skips = in_process.eval_skips
    assert skips.returncode == 0 and "Traceback" not in skips.stderr, skips.stderr[-3000:]
    assert "epoch-0002.keras (damaged: the checksum of model.weights.h5 inside it does not match" in skips.stderr
    assert "checkpoint epoch-0001.keras of" in skips.stdout
    assert_clean_error(in_process.eval_damaged_file, 2, "Cannot load the checkpoint",
                       "epoch-0002.keras': damaged: the checksum of model.weights.h5")
    for result in (in_process.eval_none_valid, in_process.train_none_valid):
        assert_clean_error(result, 2, "No valid checkpoint in 'none_valid/checkpoints'",
                           "epoch-0002.keras: damaged", "epoch-0001.keras: damaged")
    # Nothing was deleted or rewritten by the refusals.
    assert sorted(p.name for p in (in_process.copies / "none_valid" / "checkpoints").iterdir()) == \
        ["epoch-0001.keras", "epoch-0002.keras"]


@SLOW
def test_second_process_on_a_run_folder_is_refused_and_a_dead_ones_lock_taken_over(story):
    """Two identical train commands started together: one trains, the other is refused with the
    first one's pid, and one TensorBoard event file is written. A lock left by a process killed with
    SIGKILL (see KILLED_MIDWAY) is taken over by the next command, which says so."""
    (pid_a, a), (pid_b, b) = story.pair
    loser, winner_pid = (a, pid_b) if "in use by another" in a.stderr else (b, pid_a)
    assert_clean_error(loser, 2, "The run folder 'R/r' is in use by another tfsim process",
                       f"(pid {winner_pid} on ", "-m tfsim.pipelines.train --quiet --set", f"kill {winner_pid}")
    assert len(story.after_pair["events"]) == 1  # one TensorBoard writer
    assert story.after_pair["hidden"] == []  # no lock or temporary file left
    assert "R/r/.lock" in story.left_behind and "E/r/.lock" in story.left_behind  # the killed process's
    assert (f"Took over the lock on the run folder 'R/r' left by pid {story.killed_pid} on ") in story.rerun.stderr
    assert "which is no longer running" in story.rerun.stderr
    assert story.rerun.returncode == 0
    assert not [p for p in story.after_rerun["hidden"] if p.endswith(".lock")]


@SLOW
def test_run_dir_that_is_not_a_tfsim_run_is_refused_untouched(in_process, user_folders):
    """--run-dir into a folder of the user's (its own config.json and metrics.json)."""
    mine = user_folders / "mine"
    assert_clean_error(in_process.not_a_run, 2, "Invalid run folder 'mine' (--run-dir)",
                       "expected an empty folder or a tfsim run", "config.json, metrics.json")
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "metrics.json"]  # not even a lock file
    assert (mine / "config.json").read_text() == '{"learning_rate": 0.1, "my": "settings"}\n'
    assert (mine / "metrics.json").read_text() == '{"accuracy": 0.93}\n'


def test_runs_of_older_tfsim_versions_are_still_runs(tmp_path):
    """What marks a run: a config.json of tfsim's sections (older versions wrote fewer of them)."""
    from tfsim.runs import check_run_folder, is_run_folder

    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.keras").write_bytes(b"")
    (old / "config.json").write_text(json.dumps({"run": {"name": "old"}, "data": {}, "model": {}, "train": {}}))
    assert is_run_folder(old)
    check_run_folder(old, "--run-dir")
    check_run_folder(tmp_path / "missing", "--run-dir")
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty", "--run-dir")
    (old / "config.json").write_text(json.dumps({"run": {}, "model": {}, "optimizer": "adam"}))
    assert not is_run_folder(old)


@SLOW
def test_leftovers_of_a_killed_export_and_checkpoint_are_removed_and_logged(story):
    """The killed process of KILLED_MIDWAY (SIGKILL) left `E/r/.tmp-2-deadbeef/` and
    `R/r/checkpoints/.tmp-epoch-0002.keras`; the next train command removes both and says so."""
    assert "E/r/.tmp-2-deadbeef" in story.left_behind
    assert "R/r/checkpoints/.tmp-epoch-0002.keras" in story.left_behind
    err = story.rerun.stderr
    assert "Removed 1 temporary files left in R/r by an interrupted run: .tmp-epoch-0002.keras" in err
    assert f"Took over the lock on the export name 'E/r' left by pid {story.killed_pid} on " in err
    assert "Removed E/r/.tmp-2-deadbeef, left by an export that was interrupted" in err
    assert story.after_rerun["hidden"] == []  # nothing hidden anywhere: no .tmp-*, no lock
    assert story.after_rerun["cwd"] == ["E", "R"]  # nothing written beside the roots
    assert {k: v for k, v in story.after_rerun["exports"].items() if k.startswith("r/1/")} == \
        {k: v for k, v in story.exports_before.items() if k.startswith("r/1/")}


@SLOW
def test_config_files_naming_each_other_as_base_name_the_cycle(in_process):
    assert_clean_error(in_process.base_cycle, 2, "Config files name each other as `base`: a.json -> b.json -> a.json",
                       "remove one of these `base` entries")


def _raise(err):
    def main(argv):
        raise err
    return main


def test_disk_full_from_keras_or_tensorflow_without_a_file_name_is_one_line(capsys):
    """A full disk the writer did not report itself: Keras' `model.save` raises `OSError(EFBIG)` with
    no file name, TensorFlow's savers `ResourceExhaustedError` with the path in the message."""
    import errno

    import tensorflow as tf

    from tfsim.pipelines import _cli

    tf_error = tf.errors.ResourceExhaustedError(
        None, None, "{{function_node __wrapped__SaveV2_dtypes_3_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
        "/data/E/m/.tmp-2-ab/variables/variables_temp/part-00000-of-00001.data; No space left on device [Op:SaveV2]")
    cases = [(OSError(errno.EFBIG, os.strerror(errno.EFBIG)), "error: File too large: raise the file-size limit"),
             (tf_error, "error: No space left on device while writing '/data/E/m/.tmp-2-ab/variables/variables_temp' "
                        "(part-00000-of-00001.data): free some space there")]
    for err, line in cases:
        with pytest.raises(SystemExit) as exit:
            _cli.run(_raise(err), [])
        assert exit.value.code == 2
        assert capsys.readouterr().err.strip().startswith(line)
    with pytest.raises(OSError):  # any other OSError without a path is still a bug, with its traceback
        _cli.run(_raise(OSError(errno.EIO, "I/O error")), [])
