"""Weights & Biases beside log.jsonl: an offline run written under the run folder, with the resolved
config, the run folder's name and the scalars; nothing leaves the machine."""
import glob
import json
import os

import pytest

from tests.conftest import TINY
from twist.config import load_config
from twist.engine.trainer import train


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the run folder's wandb/
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_settings"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    return wandb


def offline_run(folder):
    [run] = glob.glob(os.path.join(folder, "wandb", "offline-run-*"))
    return run


def test_an_offline_run_holds_the_config_the_folder_name_and_the_scalars(tmp_path, offline_wandb):
    out = str(tmp_path / "my-run")
    train(load_config(None, TINY + ["logging.wandb=true", "logging.wandb_mode=offline", "monitor.probe=true",
                                    "optim.lr=0.25"]), out)
    # An offline run keeps everything in its record stream (wandb sync uploads it): the config's values
    # as JSON, key by key.
    [stream] = glob.glob(os.path.join(offline_run(out), "*.wandb"))
    data = open(stream, "rb").read()
    assert b"run_folder" in data and json.dumps(os.path.abspath(out)).encode() in data
    assert b'"lr":0.25' in data and b'"probe":true' in data
    assert b"my-run" in data
    for key in (b"train/loss", b"monitor/probe_top1", b"train/lr"):
        assert key in data


def test_off_by_default_no_wandb_folder(tmp_path, offline_wandb):
    out = str(tmp_path / "run")
    train(load_config(None, TINY), out)
    assert not os.path.exists(os.path.join(out, "wandb"))
