"""Barlow Twins and W-MSE through the whole engine: they train, resume exactly (W-MSE's random
sub-batches included), export the same backbone layout as TWIST, and fail with clear errors."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from twist.cli.train import main as train_main
from twist.config import ConfigError, load_config
from twist.engine.checkpoint import load_weights_only
from twist.engine.logging import read_log
from twist.engine.trainer import train

METHODS = {
    "barlow_twins": ["method=barlow_twins", "barlow_twins.hidden_dim=32", "barlow_twins.out_dim=16",
                     "model.zero_init_residual=true"],
    # Three positives, two whitening splits per step, Adam.
    "wmse": ["method=wmse", "wmse.hidden_dim=32", "wmse.out_dim=3", "wmse.w_size=4", "wmse.w_iter=2",
             "wmse.num_samples=3", "wmse.w_eps=0.01", "optim.name=adam", "optim.lr=0.001"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_resume_gives_identical_weights(tmp_path, tiny_overrides, method):
    overrides = tiny_overrides + METHODS[method]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    assert train(load_config(None, overrides), straight)["finished"]
    losses = [r["loss"] for r in read_log(os.path.join(straight, "log.jsonl")) if r.get("kind") == "train"]
    assert len(losses) == 8 and np.isfinite(losses).all()
    assert train(load_config(None, overrides), resumed, max_steps=3)["step"] == 3
    train(load_config(None, overrides), resumed)
    a, b = (load_weights_only(os.path.join(d, "checkpoint.pth"))["model"] for d in (straight, resumed))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The exported backbone has the layout every converter and twist-eval read.
    exported = load_weights_only(os.path.join(straight, "backbone.pth"))
    assert {k for k in a if k.startswith("backbone.")} == {f"backbone.{k}" for k in exported}


def test_barlow_twins_zero_init_residual_starts_each_block_at_the_identity(tiny_overrides):
    from tests.parts import twin_model

    model = twin_model(load_config(None, tiny_overrides + METHODS["barlow_twins"]))
    last_norms = [m.bn2 for m in model.backbone.modules() if hasattr(m, "bn2") and not hasattr(m, "bn3")]
    assert last_norms and all(torch.count_nonzero(bn.weight) == 0 for bn in last_norms)


def test_twist_only_features_are_refused_for_the_other_methods(tiny_overrides):
    for extra, named in [("self_label.enabled=true", "self_label.enabled"), ("eval.enabled=true", "eval.enabled"),
                         ("augment.local_crops=2", "augment.local_crops")]:
        with pytest.raises(ConfigError, match=named):
            load_config(None, tiny_overrides + METHODS["barlow_twins"] + [extra, "self_label.start_epoch=1"])
    for method in METHODS:  # a batch that loses unreadable images would differ in size across ranks
        with pytest.raises(ConfigError, match="'data.skip_corrupt' drops unreadable images"):
            load_config(None, tiny_overrides + METHODS[method] + ["data.skip_corrupt=true"])


def test_a_global_batch_that_is_not_a_multiple_of_w_size_is_refused(tmp_path, tiny_overrides):
    with pytest.raises(ConfigError, match=r"global batch \(8 x 1 processes = 8\) must be a multiple of "
                                          r"wmse.w_size \(5\)"):
        train(load_config(None, tiny_overrides + METHODS["wmse"] + ["wmse.w_size=5"]), str(tmp_path))


def test_a_covariance_that_cannot_be_whitened_stops_the_run_with_advice(tmp_path, capsys):
    """Identical black images give identical embeddings: a zero covariance, which Cholesky cannot factor."""
    for cls in ("a", "b"):
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "data" / "train" / cls / f"{i}.png")
    overrides = [o for o in METHODS["wmse"] if not o.startswith("wmse.w_eps")] + [
        "device=cpu", "data.dataset=folder", f"data.path={tmp_path / 'data'}", "data.image_size=16",
        "data.num_workers=0", "model.backbone=resnet18", "train.batch_size=8", "train.epochs=1",
        "train.progress_bar=false", "optim.warmup_epochs=0"]
    (tmp_path / "wmse.yaml").write_text("method: wmse\n")
    assert train_main(["--config", str(tmp_path / "wmse.yaml"), "--output-dir", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err
    assert "not positive definite" in err and "wmse.w_eps" in err and "wmse.w_size" in err
    assert "Traceback" not in err and "nan" not in err.lower()
