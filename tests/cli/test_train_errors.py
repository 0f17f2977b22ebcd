"""twist-train's errors that are the user's or the system's: one line naming the path or option, exit 2."""
import os

import pytest
import torch

from tests.conftest import TINY
from tests.engine.test_unsafe_pickles import RunsShell
from tests.os_faults import disk_full_when_syncing, read_only_folder
from twist.cli.train import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("data: {dataset: synthetic}\n")
    return str(path)


def test_a_full_disk_while_checkpointing(tmp_path, capsys, config, monkeypatch):
    out = tmp_path / "run"
    disk_full_when_syncing(monkeypatch, "checkpoint.pth")
    assert main(["--config", config, "--output-dir", str(out), *TINY]) == 2
    err = _one_error_line(capsys)
    assert "no space left on device" in err and str(out / "checkpoint.pth") in err
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_a_read_only_output_folder(tmp_path, capsys, config, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    read_only_folder(monkeypatch, out)
    assert main(["--config", config, "--output-dir", str(out), *TINY]) == 2
    err = _one_error_line(capsys)
    assert f"'{out}'" in err and "read-only" in err


def test_a_foreign_pickle_in_the_run_folder_names_no_option_train_lacks(tmp_path, capsys, config):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": {}, "extra": RunsShell(tmp_path / "MARKER")}, out / "checkpoint.pth")
    assert main(["--config", config, "--output-dir", str(out), *TINY]) == 2
    err = _one_error_line(capsys)
    assert "posix.system" in err and "--trust-checkpoint" not in err
    assert "not a checkpoint twist-train wrote" in err and "move it out of" in err
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("content, expected", [(None, "is a directory; a YAML file is expected"),
                                               ("", "is empty: pass a config"),
                                               ("- data\n", "holds a list, not a mapping of sections")])
def test_config_paths_that_are_not_a_config(tmp_path, capsys, content, expected):
    path = tmp_path / "configs"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    assert main(["--config", str(path), "--output-dir", str(tmp_path / "run"), *TINY]) == 2
    err = _one_error_line(capsys)
    assert f"'{path}' {expected}" in err and not (tmp_path / "run").exists()
