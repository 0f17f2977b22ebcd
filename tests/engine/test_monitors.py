"""The monitors of a pretraining run: the kNN monitor is twist-eval knn at that step, the online probe
learns on detached features, and neither changes what the run trains."""
import json
import os

import torch
from torch import nn

from tests.conftest import TINY
from twist.cli.eval import main as eval_main
from twist.config import load_config
from twist.distributed import DistEnv
from twist.engine.logging import curve_panels
from twist.engine.monitors import MonitorConfig, OnlineProbe
from twist.engine.trainer import train

KNN = ["monitor.knn_every=1", "monitor.k=5", "monitor.temperature=0.2", "monitor.max_train_images=0",
       "monitor.max_val_images=0"]


def _records(out, kind):
    return [r for r in (json.loads(line) for line in open(os.path.join(out, "log.jsonl"))) if r["kind"] == kind]


def test_the_knn_monitor_is_twist_eval_knn_on_the_checkpoint_of_that_step(tmp_path):
    out = str(tmp_path / "run")
    train(load_config(None, TINY + KNN), out, max_steps=4)  # one epoch of 4 steps, then a checkpoint
    [record] = [r for r in _records(out, "monitor") if r["monitor"] == "knn"]
    assert record["step"] == 4 and record["num_train"] == 32 and record["seconds"] > 0
    code = eval_main(["knn", "--checkpoint", f"{out}/checkpoint.pth", "--output-dir", str(tmp_path / "knn"),
                      "knn.k=5", "knn.temperature=0.2", "data.train_split=train", "data.val_split=val",
                      "progress_bar=false", "data.num_workers=0"])
    assert code == 0
    results = json.load(open(tmp_path / "knn" / "results.json"))
    assert results["num_val"] == record["num_val"]
    assert (record["knn_top1"], record["knn_top5"]) == (results["top1"], results["top5"])


def test_the_cap_on_images_bounds_the_monitor(tmp_path):
    out = str(tmp_path / "run")
    train(load_config(None, TINY + KNN + ["monitor.max_train_images=10", "monitor.max_val_images=6"]), out,
          max_steps=4)
    [record] = _records(out, "monitor")
    assert (record["num_train"], record["num_val"]) == (10, 6)


def test_the_monitors_leave_the_training_bit_identical(tmp_path):
    """Batch-norm statistics, gradients and the random stream (dropout) untouched by both monitors."""
    common = TINY + ["model.head.dropout=0.2", "eval.enabled=false"]
    plain, monitored = str(tmp_path / "plain"), str(tmp_path / "monitored")
    train(load_config(None, common), plain)
    train(load_config(None, common + KNN + ["monitor.probe=true"]), monitored)
    ours, theirs = (torch.load(f"{d}/checkpoint.pth", weights_only=True)["model"] for d in (plain, monitored))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert [r["loss"] for r in _records(plain, "train")] == [r["loss"] for r in _records(monitored, "train")]
    kinds = {r["monitor"] for r in _records(monitored, "monitor")}
    assert kinds == {"knn", "probe"}
    assert not _records(plain, "monitor")


def test_the_probe_records_cover_every_training_image(tmp_path):
    out = str(tmp_path / "run")
    train(load_config(None, TINY + ["monitor.probe=true", "train.log_every=2"]), out)
    probe = [r for r in _records(out, "monitor") if r["monitor"] == "probe"]
    assert [r["step"] for r in probe] == [2, 4, 6, 8]
    assert sum(r["images"] for r in probe) == 8 * 8
    assert all(0 <= r["probe_top1"] <= 1 and r["probe_loss"] > 0 for r in probe)
    assert set(curve_panels(_records(out, "monitor"))) == {"probe_top1"}


class _Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_the_probe_learns_on_detached_features_and_no_gradient_reaches_the_backbone():
    torch.manual_seed(0)
    backbone = nn.Sequential(_Flatten(), nn.Linear(6, 6))
    cfg = load_config(None, TINY + ["monitor.probe=true", "monitor.probe_lr=0.5"])
    probe = OnlineProbe(MonitorConfig.from_config(cfg), cfg["seed"], backbone, 6, 3, torch.device("cpu"), DistEnv())
    centres = torch.randn(3, 6) * 3
    accuracies = []
    for step in range(60):
        labels = torch.randint(0, 3, (16,))
        images = centres[labels] + 0.3 * torch.randn(16, 6)
        probe.expect_features(8)  # the first view's rows: the first half of the batch
        out = backbone(torch.cat([images[:8], images[8:]]))
        probe.step(labels[:8])
        assert all(p.grad is None for p in backbone.parameters())
        assert out.requires_grad  # the backbone's own graph is still there for its loss
        if step % 20 == 19:
            accuracies.append(probe.record(step, 0)["probe_top1"])
    probe.close()
    assert accuracies[-1] > 0.9 and accuracies[-1] > accuracies[0] - 1e-9
    backbone(images)  # the hook is gone: nothing is kept
    assert probe._features is None
