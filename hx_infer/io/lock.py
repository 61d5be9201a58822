"""One hx-infer run per OUTPUT at a time: a lock file, OUTPUT/.hx-lock, holding the pid.

Two runs writing into one OUTPUT would each take the other's temporaries for a killed run's and
remove them at start-up. The lock is an flock(2) on the file, which the kernel drops when the
process ends however it ends, so a lock left by `kill -9` (or a power cut) is stale by
construction and the next run takes it over. Where the file system has no flock (some network
mounts), the pid in the file decides: a lock whose process is gone is stale.
"""
from __future__ import annotations

import datetime
import errno
import os
import socket
from pathlib import Path

LOCK_NAME = ".hx-lock"


class LockError(Exception):
    """OUTPUT is in use by another run. str(e) is one line naming OUTPUT and the holder; `holder`
    is the holder alone (pid, host, start), for a caller that words its own message (hx-train fit)."""

    def __init__(self, message: str, holder: str = ""):
        super().__init__(message)
        self.holder = holder


class OutputLock:
    """`with OutputLock(output_dir):` holds OUTPUT for this process; released (and the file
    removed) on exit. Raises LockError when another live process holds it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        if self._fd is None:  # (claim_output hands over a lock it already holds)
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise self._in_use(holder) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                self._by_pid(fd)  # no flock here: the pid decides
            # The file may have been removed by its last holder between our open and our lock:
            # then we hold a lock on a name nobody else will open. Start again on the new file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
        self._fd = fd

    def _by_pid(self, fd: int) -> None:
        holder = _read(fd)
        pid = _pid_of(holder)
        if pid is not None and pid != os.getpid() and _alive(pid):
            os.close(fd)
            raise self._in_use(holder)

    def _in_use(self, holder: str) -> LockError:
        who = holder or "a process that has not written its pid yet"
        return LockError(f"OUTPUT {self.folder} is in use by another hx-infer run ({who}; lock file "
                         f"{self.path}); wait for it to finish or choose another OUTPUT", who)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # before closing: whoever opens it next makes a new one
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 512).decode(errors="replace").strip()
    except OSError:
        return ""


def _pid_of(holder: str) -> int | None:
    parts = holder.split()
    if len(parts) >= 2 and parts[0] == "pid" and parts[1].isdigit():
        return int(parts[1])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True
