"""Faults of the operating system, simulated where tests cannot cause them for real (a full disk, a
read-only file system: tests run as root, which chmod does not stop). They replace the OS calls, never
the code under test."""
from __future__ import annotations

import builtins
import errno
import os


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def disk_full_when_syncing(monkeypatch, name_part: str = "") -> None:
    """``os.fsync`` of a file whose path contains ``name_part`` fails as on a full disk."""
    real_fsync = os.fsync

    def fsync(fd):
        if name_part in _fd_path(fd if isinstance(fd, int) else fd.fileno()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def read_only_folder(monkeypatch, folder) -> None:
    """Creating or writing any file or folder under ``folder`` fails as on a read-only file system."""
    folder = os.path.abspath(str(folder))
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def refuse(path) -> None:
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(folder + os.sep):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def open_(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
