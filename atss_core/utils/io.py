"""Reading JSON with errors that name the file, and atomic writes: a crash or a
kill never leaves a truncated result behind.

Each writer writes a temporary file in the destination folder, flushes it to
disk and renames it over the destination (``os.replace`` is atomic on POSIX
and Windows). The temporary file is ``.<destination name>.<random>.tmp``
(:data:`TEMPORARY_NAME`); it is removed when writing fails, but a process
killed while writing leaves it behind (:func:`remove_stale_temporaries`).

A write that fails because the disk (or the quota) is full raises
:class:`DiskFullError` saying where, how much was needed and how much is free;
the destination keeps its previous content.
"""
import contextlib
import errno
import json
import os
import re
import shutil
import tempfile

import torch

# The temporary files of the writers below: "." + destination name + "." +
# tempfile's random part + ".tmp", e.g. ".model_0005000.pth.k2j4_x9a.tmp".
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<random>[a-z0-9_]{8})\.tmp$")

# What a full disk looks like when torch's C++ writer reports it (it loses the
# errno): "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0",
# "PytorchStreamWriter failed writing file data/3: file write failed".
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|PytorchStreamWriter failed writing|file write failed")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A file could not be written because its disk (or quota) is full. The
    destination keeps its previous content and no temporary file is left."""

    def __init__(self, message, folder=None, needed_bytes=None, free_bytes=None):
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.folder, self.needed_bytes, self.free_bytes = folder, needed_bytes, free_bytes


def read_json(path, what, error=ValueError, unreadable_error=None):
    """The parsed content of the JSON file ``path``.

    ``what`` describes the file in messages, path included (e.g.
    ``f"results file {path}"``). A file that cannot be opened raises
    ``unreadable_error`` (default: ``error``) "cannot read the <what>: <reason>";
    invalid JSON raises ``error`` "the <what> is not valid JSON: <reason>".
    """
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise (unreadable_error or error)(f"cannot read the {what}: {e}") from None
    except ValueError as e:
        raise error(f"the {what} is not valid JSON: {e}") from None


def format_bytes(n):
    """``1536`` -> ``"1.5 KiB"``."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _is_disk_full(error):
    """True for ENOSPC / EDQUOT anywhere in ``error``'s chain, and for torch's
    C++ writer failures (which do not keep the errno)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        if isinstance(error, RuntimeError) and _TORCH_WRITE_FAILED.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _disk_full_error(path, folder, needed_bytes, error):
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    what = "checkpoint" if path.endswith((".pth", ".pt")) else "file"
    need = f"the {what} needs about {format_bytes(needed_bytes)}" if needed_bytes is not None else None
    have = f"{format_bytes(free)} are free there" if free is not None else None
    sizes = "; ".join(filter(None, [need, have]))
    if isinstance(error, OSError) and error.errno == errno.EDQUOT:
        cause = "the disk quota is exceeded"
    elif isinstance(error, OSError) or free is None or needed_bytes is None or free < needed_bytes:
        cause = "the disk is full"
    else:  # torch's writer failed while there seems to be room now: say what we know
        cause = "writing failed, most likely because the disk was full (or a quota was reached)"
    message = (
        f"cannot write {path}: {cause} in {folder}"
        + (f" ({sizes})" if sizes else "")
        + f". Nothing was written: {os.path.basename(path)} keeps its previous content (if any) and "
        "no temporary file is left. Free space in that folder (e.g. delete old model_*.pth "
        "checkpoints) or write to another disk, then restart"
        + (f" [{type(error).__name__}: {error}]" if str(error) else "")
    )
    return DiskFullError(message, folder=folder, needed_bytes=needed_bytes, free_bytes=free)


@contextlib.contextmanager
def _atomic_path(path, needed_bytes=None):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        if _is_disk_full(e):
            raise _disk_full_error(path, folder, needed_bytes, e) from e
        raise
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions of a plain open().
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # delayed-allocation file systems report a full disk here
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, Exception) and _is_disk_full(e):
            raise _disk_full_error(path, folder, needed_bytes, e) from e
        raise


def tensor_bytes(obj):
    """Bytes of the tensor storages in ``obj`` (nested dicts, lists, tuples),
    each storage counted once: about the size of ``torch.save(obj)``."""
    storages = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[(item.device.type, storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(storages.values())


def atomic_torch_save(obj, path):
    """``torch.save(obj, path)``, atomically; :class:`DiskFullError` when the
    disk is full (the previous file at ``path`` is then intact)."""
    with _atomic_path(path, needed_bytes=tensor_bytes(obj)) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text, path):
    with _atomic_path(path, needed_bytes=len(text.encode())) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def atomic_write_json(obj, path, **kwargs):
    atomic_write_text(json.dumps(obj, **kwargs), path)


def stale_temporaries(folder, names):
    """Temporary files of the writers above in ``folder`` (not below it) whose
    destination name matches the regular expression ``names`` (a
    ``re.fullmatch``), sorted."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        match = TEMPORARY_NAME.match(entry)
        if match and re.fullmatch(names, match.group("name")):
            path = os.path.join(folder, entry)
            if os.path.isfile(path) and not os.path.islink(path):
                found.append(path)
    return sorted(found)


def remove_stale_temporaries(folder, names):
    """Remove the temporaries :func:`stale_temporaries` lists; returns
    ``[(path, size in bytes)]`` of those removed. Call it only while no other
    process can be writing these files (e.g. holding the folder's run lock)."""
    removed = []
    for path in stale_temporaries(folder, names):
        try:
            size = os.path.getsize(path)
            os.remove(path)
        except FileNotFoundError:
            continue
        removed.append((path, size))
    return removed
