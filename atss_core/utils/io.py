"""Reading JSON with errors that name the file, and atomic writes: a crash or a
kill never leaves a truncated result behind.

Each writer writes a temporary file in the destination folder, flushes it to
disk and renames it over the destination (``os.replace`` is atomic on POSIX
and Windows)."""
import contextlib
import json
import os
import tempfile

import torch


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


@contextlib.contextmanager
def _atomic_path(path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions of a plain open().
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path):
    """``torch.save(obj, path)``, atomically."""
    with _atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text, path):
    with _atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def atomic_write_json(obj, path, **kwargs):
    atomic_write_text(json.dumps(obj, **kwargs), path)
