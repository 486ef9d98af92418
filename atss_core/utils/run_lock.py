"""One training run per output folder.

Two trainings writing into the same ``OUTPUT_DIR`` overwrite each other's
checkpoints, ``last_checkpoint``, log and metrics. A run therefore holds an
exclusive lock on ``OUTPUT_DIR/.lock`` (``fcntl.flock``) for its lifetime, and
a second run in the same folder stops at once with a message naming the
process that holds it (pid, host, start time, command line: written into the
lock file by the holder).

The operating system releases the lock when the holding process ends, however
it ends: a run killed with ``kill -9`` (or by the out-of-memory killer, or a
crashed machine) leaves nothing stuck, and the next run in the folder simply
takes the lock. The lock file itself stays (emptied when a run ends
normally); its content is only informative. Processes forked by the holder
(data-loader workers) do not keep the lock alive after the holder dies: their
copy of the descriptor is closed right after the fork.

In a distributed run only the main process locks; it tells the other
processes whether it got the lock, so that all of them stop together.
"""
import datetime
import errno
import json
import logging
import os
import shlex
import socket
import sys
import time

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected there
    fcntl = None

LOCK_NAME = ".lock"

logger = logging.getLogger(__name__)

# Descriptors of the locks this process holds: closed in forked children.
_HELD_FDS = set()


def _close_in_child():
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLockError(RuntimeError):
    """The output folder is in use by another run."""


def _command_line():
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def read_lock_info(path):
    """What the holder of the lock file ``path`` wrote: ``{"pid", "host",
    "started", "command"}`` (``{}`` when empty or unreadable)."""
    try:
        with open(path) as f:
            text = f.read()
        info = json.loads(text) if text.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(info):
    if not info:
        return "another process (it has not written its details yet)"
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    parts = [f"process {info.get('pid', '?')}{where}"]
    if info.get("started"):
        parts.append(f"started {info['started']}")
    description = ", ".join(parts)
    if info.get("command"):
        description += f": {info['command']}"
    return description


class RunLock:
    """Exclusive lock on ``folder/.lock`` for one run.

    ``acquire()`` raises :class:`RunLockError` when another process holds it;
    ``release()`` (or leaving the ``with`` block) gives it back. Used as a
    context manager it acquires on entry.
    """

    def __init__(self, folder, purpose="training run"):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.purpose = purpose
        self.fd = None

    @property
    def held(self):
        return self.fd is not None

    def acquire(self):
        if self.fd is not None:
            return self
        if fcntl is None:
            logger.warning("cannot lock %s on this platform: a second run in this folder "
                           "would not be detected", self.folder)
            return self
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockError(self._in_use_message()) from None
            # A file system without locks (some network mounts): run unprotected.
            logger.warning("cannot lock %s (%s): a second run in this folder would not be "
                           "detected", self.path, e)
            return self
        self.fd = fd
        _HELD_FDS.add(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": _command_line(),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as e:  # e.g. a full disk: the lock holds all the same
            logger.warning("could not write the run's details into %s: %s", self.path, e)
        return self

    def _in_use_message(self):
        # The holder writes its details right after locking: give it a moment.
        info = {}
        for _ in range(20):
            info = read_lock_info(self.path)
            if info:
                break
            time.sleep(0.05)
        return (
            f"OUTPUT_DIR {self.folder} is in use by another {self.purpose}: "
            f"{describe_holder(info)}. Two runs in one folder overwrite each other's checkpoints "
            "and logs: wait for that run to end (or stop it), or set OUTPUT_DIR to another folder. "
            f"(The lock is {self.path}; it is released when that process ends, even if killed.)"
        )

    def release(self):
        fd, self.fd = self.fd, None
        if fd is None:
            return
        _HELD_FDS.discard(fd)
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def lock_output_dir(folder, purpose="training run"):
    """Lock ``folder`` for this run: on the main process, a held
    :class:`RunLock` (release it when the run ends); on the other processes of
    a distributed run, ``None``. Raises :class:`RunLockError` on every process
    when the folder is in use (the main process's message is shared, so that
    all processes stop together)."""
    from atss_core.utils.comm import all_gather, get_world_size, is_main_process

    lock, message = None, None
    if is_main_process():
        lock = RunLock(folder, purpose)
        try:
            lock.acquire()
        except RunLockError as e:
            lock, message = None, str(e)
    if get_world_size() > 1:
        message = all_gather(message)[0]
    if message is not None:
        if lock is not None:
            lock.release()
        raise RunLockError(message)
    return lock
