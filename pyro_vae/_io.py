"""Files that survive a kill: atomic writes (a temporary file beside the target, fsync, ``os.replace``,
fsync of the folder) and the lock that keeps two processes out of one run directory.

A process killed at any moment leaves either the old file or the new one at
the path, never a mixture, and removes its temporary file when it can.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temporary binary file, then move it to ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path, text: str) -> Path:
    """``path.write_text(text)``, atomically (UTF-8)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunInUse(OSError):
    """Another process holds the run directory's lock (it is training or resuming into it)."""


class RunLock:
    """An OS file lock on a run directory, held while one process writes it and released on any exit.

    ``flock`` on ``RUN_DIR/.lock``: the kernel drops the lock when its process dies, however it dies, so the
    file a killed process leaves behind stops no one (where ``fcntl`` is missing, the file is created
    exclusively and a holder that is no longer alive counts as gone). The file records who holds it, so a
    refusal can name the process; it is removed on release.
    """

    NAME = ".lock"

    def __init__(self, run_dir):
        self.path = Path(run_dir) / self.NAME
        self._fh = None

    def acquire(self, what: str = "pyro-vae") -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        if fcntl is None:  # pragma: no cover - Windows
            self._acquire_exclusive()
        else:
            fh = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = ""
                for _ in range(20):  # the holder writes who it is just after it locks: give it a moment
                    fh.seek(0)
                    holder = fh.read().strip()
                    if holder:
                        break
                    time.sleep(0.05)
                fh.close()
                raise RunInUse(self._refusal(holder)) from None
            self._fh = fh
        self._write(what)
        return self

    def _acquire_exclusive(self) -> None:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = self.path.read_text(encoding="utf-8").strip()
            if _alive(holder):
                raise RunInUse(self._refusal(holder)) from None
            self.path.unlink(missing_ok=True)  # a stale lock of a process that is gone
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        self._fh = os.fdopen(fd, "w", encoding="utf-8")

    def _write(self, what: str) -> None:
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                                   "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        self._fh.flush()

    def _refusal(self, holder: str) -> str:
        try:
            who = json.loads(holder)
            by = f"process {who['pid']} on {who['host']} ({who['command']}, since {who['since']})"
        except (ValueError, KeyError, TypeError):
            by = "another process"
        return (f"{self.path.parent} is in use by {by}: wait for it to finish, or choose another run directory "
                "with --out")

    def release(self) -> None:
        if self._fh is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiting process then makes a fresh file
        self._fh.close()  # closing drops the lock
        self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _alive(holder: str) -> bool:  # pragma: no cover - Windows
    try:
        os.kill(int(json.loads(holder)["pid"]), 0)
    except (ValueError, KeyError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
