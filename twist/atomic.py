"""Writing files so that a crash leaves either the old file or the new one, never a partial one, and a write
that the system refuses (a full disk, a read-only folder) ends in one line naming the path and what to do."""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Callable


class OutputError(OSError):
    """A file that could not be written, with a message that names it and says what to do."""

    def __init__(self, err_no: int | None, message: str, path: str):
        super().__init__(err_no, message, path)
        self.message = message

    def __str__(self) -> str:
        return self.message


def output_error(err: OSError, path: str) -> OutputError:
    """``err``, raised while writing ``path``, as an :class:`OutputError` that says what to do about it."""
    folder = os.path.dirname(os.path.abspath(path))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        message = (f"{what} while writing '{path}': free space on that disk (or write somewhere else), then "
                   f"run the command again")
    elif err.errno == errno.EROFS:
        message = f"cannot write '{path}': the folder '{folder}' is on a read-only file system; write somewhere else"
    elif err.errno in (errno.EACCES, errno.EPERM):
        message = (f"cannot write '{path}': permission denied in the folder '{folder}' (read-only or not "
                   f"yours); make it writable or write somewhere else")
    elif err.errno == errno.ENOENT and not os.path.isdir(folder):
        message = f"cannot write '{path}': the folder '{folder}' does not exist; create it or write somewhere else"
    else:
        message = f"cannot write '{path}': {err.strerror or err}"
    return OutputError(err.errno, message, path)


def as_output_error(err: OSError, folder: str) -> OutputError | None:
    """``err`` as an :class:`OutputError` when it is one or names a path in the output ``folder``, else None."""
    if isinstance(err, OutputError):
        return err
    root = os.path.abspath(folder)
    for name in (err.filename, err.filename2):
        if name is not None and not isinstance(name, int):
            path = os.fsdecode(name)
            if os.path.abspath(path) == root or os.path.abspath(path).startswith(root + os.sep):
                return output_error(err, path)
    return None


@contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an OS error raised inside the block into an :class:`OutputError` about writing ``path``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise output_error(err, path) from err


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
