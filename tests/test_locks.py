"""`tfsim.locks`: one holder at a time across processes, re-entrant in one, free again when the holder
dies, and never through a planted link."""

import os
import subprocess
import sys

import pytest

from tfsim import locks
from tfsim.errors import UserInputError

HOLD = "import sys, time; from tfsim import locks; locks.folder_lock(sys.argv[1], 'run folder').acquire(); " \
       "print('held', flush=True); time.sleep(60)"


def test_a_second_process_is_refused_with_the_holders_pid_and_takes_over_after_a_kill(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.LockHeld, match=rf"run folder .* in use by another tfsim process \(pid {holder.pid} "):
            locks.folder_lock(tmp_path, "run folder").acquire()
        assert locks.holder(tmp_path / ".lock")["pid"] == holder.pid
    finally:
        holder.kill()  # (SIGKILL: the kernel drops the flock with the process)
        holder.wait()
    assert locks.holder(tmp_path / ".lock") is None
    with locks.folder_lock(tmp_path, "run folder"):
        with locks.folder_lock(tmp_path, "run folder"):  # re-entrant in one process
            pass
        assert locks.holder(tmp_path / ".lock")["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's data\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(UserInputError, match=r"lock file .*\.lock' is not a regular file"):
        locks.folder_lock(run, "run folder").acquire()
    assert victim.read_text() == "the user's data\n" and (run / ".lock").is_symlink()
    (run / ".lock").unlink()
    (run / ".lock").mkdir()  # a folder where the file should be
    with pytest.raises(UserInputError, match="is not a regular file"):
        locks.folder_lock(run, "run folder").acquire()
