"""Nothing non-finite reaches disk: a diverging run stops before writing, naming the last finite checkpoint."""
import os
import re

import pytest
import torch

from tests.parts import twin_model
from twist.config import load_config
from twist.engine.checkpoint import CheckpointError, load_weights_only, nonfinite_tensors
from twist.engine.trainer import FiniteCheckpoints, TrainingDiverged, export_backbones, train

# An lr of 1e30 turns the weights NaN at the first step it is used; the warmup's first step has lr 0.
DIVERGE = ["optim.lr=1e30", "train.checkpoint_every=1"]


def _nonfinite_files(out):
    return {name: nonfinite_tensors(load_weights_only(os.path.join(out, name)))
            for name in os.listdir(out) if name.endswith(".pth")}


@pytest.mark.parametrize("log_every", [1, 1000])  # the per-step loss check, or only the checkpoint's
def test_a_diverging_run_writes_nothing_non_finite_and_names_the_last_finite_checkpoint(
        tmp_path, tiny_overrides, log_every):
    out = str(tmp_path / "run")
    cfg = load_config(None, tiny_overrides + DIVERGE + [f"train.log_every={log_every}"])
    with pytest.raises(TrainingDiverged) as diverged:
        train(cfg, out)
    message = str(diverged.value)
    path = os.path.join(out, "checkpoint.pth")
    on_disk = load_weights_only(path)
    assert f"the last finite checkpoint is {path} (step {on_disk['step']})" in message
    stopped_at = int(re.search(r"at step (\d+)", message).group(1))
    assert on_disk["step"] < stopped_at
    assert _nonfinite_files(out) == {"checkpoint.pth": []}  # and no backbone exported


def test_diverging_before_any_checkpoint_says_there_is_none(tmp_path, tiny_overrides):
    out = str(tmp_path / "run")
    cfg = load_config(None, tiny_overrides + ["optim.lr=1e30", "optim.warmup_epochs=0", "train.log_every=1000"])
    with pytest.raises(TrainingDiverged, match="no finite checkpoint"):
        train(cfg, out)
    assert _nonfinite_files(out) == {}


def test_a_non_finite_checkpoint_is_not_resumed(tmp_path, tiny_overrides):
    out = str(tmp_path / "run")
    cfg = load_config(None, tiny_overrides)
    train(cfg, out, max_steps=1)
    path = os.path.join(out, "checkpoint.pth")
    state = load_weights_only(path)
    state["model"]["backbone.conv1.weight"][0, 0, 0, 0] = float("nan")  # as an older version could write
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"model\.backbone\.conv1\.weight"):
        train(cfg, out)
    assert load_weights_only(path)["step"] == 1


def test_a_non_finite_backbone_is_not_exported(tmp_path, tiny_config):
    model = twin_model(tiny_config)
    with torch.no_grad():
        model.backbone.layer1[0].conv1.weight[0, 0, 0, 0] = float("inf")
    finite = FiniteCheckpoints(str(tmp_path / "checkpoint.pth"), torch.device("cpu"), collective=False)
    with pytest.raises(TrainingDiverged, match=r"layer1\.0\.conv1\.weight.*backbone\.pth was not written.*"
                                               r"no finite checkpoint"):
        export_backbones(str(tmp_path), model, None, finite, step=3)
    assert os.listdir(tmp_path) == []
