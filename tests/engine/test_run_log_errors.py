"""The run log on a full disk or in a read-only folder: one line naming log.jsonl, not a traceback; and
closing it twice."""
import os

import pytest

from tests.os_faults import read_only_folder
from twist.atomic import OutputError
from twist.engine.logging import RunLog


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_a_full_disk_names_the_log(tmp_path):
    os.symlink("/dev/full", tmp_path / "log.jsonl")  # the kernel answers every write with ENOSPC
    log = RunLog(str(tmp_path), tensorboard=False)
    with pytest.raises(OutputError) as err:
        log.write({"kind": "train", "step": 1, "loss": 0.5})
    message = str(err.value)
    assert "log.jsonl" in message and "no space left on device" in message and "\n" not in message


def test_a_read_only_folder_names_it(tmp_path, monkeypatch):
    read_only_folder(monkeypatch, tmp_path)
    with pytest.raises(OutputError, match=rf"log.jsonl': the folder '{tmp_path}' is on a read-only file system"):
        RunLog(str(tmp_path), tensorboard=False)


def test_closing_twice_finishes_the_wandb_run_once(tmp_path):
    class CountingWandb:
        finished = 0

        def finish(self):
            self.finished += 1

    wandb = CountingWandb()
    log = RunLog(str(tmp_path), tensorboard=False, wandb=wandb)
    log.close()
    log.close()  # as the run's exit stack does after finish() closed it
    assert wandb.finished == 1
