import json
import os
import subprocess
import sys

import torch
from torchvision.models import resnet18

from tests.conftest import TINY
from twist.cli.train import main


def test_end_to_end_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text("eval:\n  enabled: true\n  kmeans_baseline: true\n")
    proc = subprocess.run([sys.executable, "-m", "twist.cli.train", "--config", str(config), "--output-dir", str(out),
                           *TINY], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "kmeans on raw pixels" in proc.stdout and "TWIST (head argmax)" in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]  # its own time, for the reader to set beside the machine's speed
    assert last.startswith("twist-train: at step 8 after ") and " s (this invocation: " in last

    files = set(os.listdir(out))
    assert {"checkpoint.pth", "backbone.pth", "config.yaml", "log.jsonl", "metrics.json",
            "training_curves.png", "tensorboard"} <= files
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tensorboard"))

    # The backbone file is a plain tensor dict with torchvision's names.
    backbone = torch.load(out / "backbone.pth", weights_only=True)
    assert set(backbone) == {k for k in resnet18().state_dict() if not k.startswith("fc.")}
    full = torch.load(out / "checkpoint.pth", weights_only=True)
    assert {"model", "optimizer", "scaler", "epoch", "step", "rng", "config"} <= set(full)
    assert full["step"] == 8 and full["config"]["data"]["dataset"] == "synthetic"

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("nmi", "ami", "ari", "acc"):
        assert 0.0 <= metrics[key] <= 1.0 or key == "ari"
        assert key in metrics["baseline"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 9))
    assert all({"loss", "consistency", "sharpness", "diversity", "lr", "images_per_s"} <= set(r) for r in train_records)

    # Running again finds the finished checkpoint, trains no more and re-evaluates.
    again = subprocess.run([sys.executable, "-m", "twist.cli.train", "--config", str(config), "--output-dir",
                            str(out), *TINY], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resumed from" in again.stdout


def test_bad_config_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  lerning_rate: 0.1\n")
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "optim.lerning_rate" in err and str(config) in err
    assert "Traceback" not in err


def test_missing_image_folder_names_the_path(tmp_path, capsys):
    config = tmp_path / "folder.yaml"
    config.write_text(f"data:\n  dataset: folder\n  path: {tmp_path / 'nowhere'}\n")
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
