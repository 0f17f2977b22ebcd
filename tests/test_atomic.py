"""Atomic writes that fail (a full disk, a read-only or missing folder) raise one line naming the path and
what to do, and leave neither a partial file nor a temporary one."""
import errno
import os

import pytest

from tests.os_faults import disk_full_when_syncing, read_only_folder
from twist.atomic import OutputError, atomic_write


def test_a_full_disk_names_the_file_and_keeps_the_previous_version(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.json")
    atomic_write(path, lambda f: f.write("old"), binary=False)
    disk_full_when_syncing(monkeypatch)
    with pytest.raises(OutputError) as err:
        atomic_write(path, lambda f: f.write("new"), binary=False)
    message = str(err.value)
    assert path in message and "no space left on device" in message and "free" in message and "\n" not in message
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert os.listdir(tmp_path) == ["metrics.json"] and open(path).read() == "old"


def test_a_write_that_fails_midway_on_a_full_disk(tmp_path):
    def writes_then_fails(f):
        f.write(b"part of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what f.write raises when the disk fills

    with pytest.raises(OutputError, match="no space left on device"):
        atomic_write(str(tmp_path / "checkpoint.pth"), writes_then_fails)
    assert os.listdir(tmp_path) == []


def test_a_read_only_folder_names_the_folder(tmp_path, monkeypatch):
    read_only_folder(monkeypatch, tmp_path)
    with pytest.raises(OutputError) as err:
        atomic_write(str(tmp_path / "results.json"), lambda f: f.write("{}"), binary=False)
    message = str(err.value)
    assert f"'{tmp_path}'" in message and "read-only" in message and "\n" not in message
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(OutputError, match=rf"folder '{tmp_path / 'nowhere'}' does not exist"):
        atomic_write(str(tmp_path / "nowhere" / "out.pkl"), lambda f: f.write(b"x"))
