"""``twist-eval ... --wandb offline``: the results in an offline W&B run beside results.json."""
import glob
import json

import pytest

from tests.conftest import TINY
from twist.cli.eval import main as eval_main
from twist.config import load_config
from twist.engine.trainer import train


def test_knn_results_go_to_an_offline_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"),
                        ("WANDB_CONFIG_DIR", str(tmp_path / "settings")), ("WANDB_CACHE_DIR", str(tmp_path / "cache"))):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    run = str(tmp_path / "run")
    train(load_config(None, TINY + ["eval.enabled=false"]), run)
    out = tmp_path / "knn-eval"
    assert eval_main(["knn", "--checkpoint", f"{run}/checkpoint.pth", "--output-dir", str(out), "--wandb", "offline",
                      "knn.k=3", "progress_bar=false", "data.num_workers=0"]) == 0
    results = json.load(open(out / "results.json"))
    [stream] = glob.glob(str(out / "wandb" / "offline-run-*" / "*.wandb"))
    data = open(stream, "rb").read()
    assert b"eval/top1" in data and b"eval-knn" in data and b"knn-eval" in data
    assert json.dumps(results["top1"]).encode() in data
    assert b'"k":3' in data  # the resolved evaluation config
