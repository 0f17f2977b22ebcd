"""The SLURM launcher: the job runs `train` with the torch.distributed variables taken from SLURM's,
and asks submitit to resubmit itself when interrupted (the resubmitted job resumes from the checkpoint)."""
import os

import pytest

submitit = pytest.importorskip("submitit")

from tests.conftest import TINY  # noqa: E402
from twist_tools.submit_slurm import TrainingJob, main  # noqa: E402


def test_job_resubmits_itself_on_preemption():
    job = TrainingJob("configs/demo/digits.yaml", "/runs/x", ["optim.lr=0.1"])
    resubmission = job.checkpoint()
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    again = resubmission.function
    assert isinstance(again, TrainingJob)
    assert (again.config, again.output_dir, again.overrides) == (job.config, job.output_dir, job.overrides)


def test_job_trains_as_a_one_task_slurm_job(tmp_path, monkeypatch):
    # Registered with monkeypatch so that what the job writes into os.environ is undone afterwards.
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "localhost")
    out = tmp_path / "run"
    TrainingJob("configs/demo/digits.yaml", str(out), TINY + ["train.epochs=1", "eval.enabled=false"])()
    assert (out / "checkpoint.pth").exists() and os.environ["WORLD_SIZE"] == "1"
    # Run again, as a requeued job would: it resumes and has nothing left to do.
    TrainingJob("configs/demo/digits.yaml", str(out), TINY + ["train.epochs=1", "eval.enabled=false"])()


def test_bad_config_is_refused_before_submission(tmp_path, capsys):
    assert main(["--config", "configs/demo/digits.yaml", "--output-dir", str(tmp_path), "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
