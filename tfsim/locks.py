"""Exclusive locks on folders (a run folder, an export name, an index folder) between processes.

A lock is a small file (by default `<folder>/.lock`) held with an exclusive, non-blocking
`fcntl.flock`. While held it records who holds it (pid, host, command, start time) as JSON, so
a second process is refused with one line naming the holder:

    with locks.folder_lock(run_dir, "run folder"):
        ...  # only this process writes run_dir

Stale locks: `flock` belongs to the open file, and the kernel releases it when the holder
exits for any reason (kill -9, OOM, a crash), so a lock left by a dead process is simply
free. The file itself may remain with the dead holder's details in it; the next process
takes the lock, logs that it took over from that pid, and overwrites the details. There is
no pid-liveness guessing and no timeout.

Releasing unlinks the file while still holding the lock; a process that opened the old file
just before the unlink finds, after locking, that its file is no longer the one at the path
and tries again (the usual flock + unlink protocol), so two processes never both hold a lock.

The lock is re-entrant within one process (a nested `acquire` of the same file only counts),
so a command that locks a run folder can call code that locks it again.

Limits: `flock` is advisory (it stops tfsim processes, not `rm`), and on network file systems
it may be local to one machine (NFS clients emulate it with byte-range locks since Linux 2.6.12;
some SMB mounts do not lock across hosts at all). The recorded host says where the holder runs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Optional

from tfsim.errors import UserInputError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# lock file (real path) -> [fd, depth]: the locks this process holds (re-entrancy)
_HELD: dict[str, list] = {}


class LockHeld(UserInputError):
    """Another live process holds the lock; `holder` is what it recorded (pid, host, command, since)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has just started and not yet written its pid)"
    since = holder.get("since")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    command = f": {holder['command']}" if holder.get("command") else ""
    return f"pid {holder['pid']} on {holder.get('host', '?')}{when}{command}"


def _command() -> str:
    """This process's command line as typed (`python -m tfsim.pipelines.train --set ...`)."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    if argv:
        argv[0] = os.path.basename(argv[0])
    command = " ".join(" ".join(argv).split())  # one line (a `python -c` script has several)
    return command if len(command) <= 300 else command[:297] + "..."


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode("utf-8", errors="replace")
        holder = json.loads(text) if text.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


class Lock:
    """An exclusive inter-process lock held through the file `path` (see module doc).

    Args:
        path: the lock file (created with its folder if missing).
        what: what it guards, for messages, e.g. "run folder 'runs/a'".

    Raises:
        LockHeld: (from `acquire`) another live process holds it.
    """

    def __init__(self, path: os.PathLike, what: str):
        self.path = Path(path)
        self.what = what
        self._key: Optional[str] = None

    def acquire(self) -> "Lock":
        key = os.path.join(os.path.realpath(self.path.parent), self.path.name)
        if key in _HELD:
            _HELD[key][1] += 1
            self._key = key
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:  # never through a link: a planted `.lock -> ../victim` must not be truncated or deleted
                fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise UserInputError(
                    f"Cannot lock the {self.what}: its lock file {str(self.path)!r} is not a regular file "
                    f"({err.strerror}; a symbolic link?). Remove it and run the command again.") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise UserInputError(f"Cannot lock the {self.what}: its lock file {str(self.path)!r} is not a regular "
                                     "file. Remove it and run the command again.")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise LockHeld(
                    f"The {self.what} is in use by another tfsim process ({_describe(holder)}). Wait for it to "
                    f"finish or stop it{' (kill ' + str(holder['pid']) + ')' if holder.get('pid') else ''}; "
                    f"a lock left by a process that died is free and taken over (lock file {str(self.path)!r}).",
                    holder) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                opened, current = os.fstat(fd), os.lstat(key)
                same = (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released (and unlinked) it between our open and flock: retry
        previous = _read(fd)
        if previous.get("pid"):
            log.warning("Took over the lock on the %s left by %s, which is no longer running.", self.what,
                        _describe(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())
        _HELD[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None or key not in _HELD:
            return
        _HELD[key][1] -= 1
        if _HELD[key][1] > 0:
            return
        fd = _HELD.pop(key)[0]
        try:  # while still locked (see the module doc), and only if the path is still our file
            opened, current = os.fstat(fd), os.lstat(key)
            if (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino):
                os.unlink(key)
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: os.PathLike) -> Optional[dict]:
    """What the live holder of the lock file `path` recorded, or None if nobody holds it (missing,
    never locked, or left by a dead process). Held by this process counts as held.

    The probe takes a shared lock for an instant: a process calling `acquire` at that very instant
    is refused as if the lock were held. Use it to report or to skip, not to decide before acquiring.
    """
    path = Path(path)
    if os.path.join(os.path.realpath(path.parent), path.name) in _HELD:
        return {"pid": os.getpid(), "host": socket.gethostname(), "command": _command()}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        return None
    finally:
        os.close(fd)


def folder_lock(folder: os.PathLike, what: str) -> Lock:
    """The lock `<folder>/.lock` (the folder is created when acquired); `what` names it in messages,
    e.g. `folder_lock(run_dir, "run folder")` -> "The run folder 'runs/a' is in use ..."."""
    return Lock(Path(folder) / LOCK_NAME, f"{what} {str(folder)!r}")


def sibling_lock(path: os.PathLike, what: str) -> Lock:
    """The lock `<parent>/.<name>.lock`, for a folder replaced by renames (an index updated by
    `index --add`), where a lock file inside it would move away with the old folder."""
    path = Path(path)
    return Lock(path.parent / f".{path.name}.lock", f"{what} {str(path)!r}")
